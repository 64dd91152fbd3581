"""Runs every native CUDA and Triton kernel forward and backward on awkward shapes, for
compute-sanitizer (scripts/gpu_check.sh). Exits non-zero if a result disagrees with the reference."""
import torch

import vtreid.ops as ops

SHAPES = [(1, 1, 1), (3, 47, 7), (65, 130, 129), (130, 65, 2048)]


def main():
    assert torch.cuda.is_available(), "needs a GPU"
    bad = 0
    for backend in ("native", "triton"):
        ok, why = ops.availability(backend, torch.device("cuda"), torch.float32)
        if not ok:
            print(f"{backend}: unavailable ({why})")
            bad += 1
            continue
        for n, m, d in SHAPES:
            for dtype in (torch.float32, torch.float16, torch.bfloat16):
                for metric in ("euclidean", "sqeuclidean", "cosine"):
                    x = torch.randn(n, d, device="cuda", dtype=dtype, requires_grad=True)
                    y = torch.randn(m, d, device="cuda", dtype=dtype, requires_grad=True)
                    out = ops.pairwise_distance(x, y, metric=metric, backend=backend)
                    out.backward(torch.ones_like(out))
                    ref = ops.pairwise_distance(x.detach(), y.detach(), metric=metric, backend="reference")
                    if not torch.allclose(out.float(), ref.float(), atol=5e-2, rtol=5e-2):
                        print(f"MISMATCH {backend} {metric} {dtype} {(n, m, d)}")
                        bad += 1
    torch.cuda.synchronize()
    print("sanitize_kernels: done," , "mismatches:", bad)
    raise SystemExit(1 if bad else 0)


if __name__ == "__main__":
    main()
