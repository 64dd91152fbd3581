"""Runs every native CUDA and Triton kernel forward and backward on awkward shapes, for
compute-sanitizer (scripts/gpu_check.sh). Exits non-zero if a result disagrees with the reference.

Usage: compute-sanitizer --tool memcheck python scripts/sanitize_kernels.py   (needs a CUDA GPU)"""
import argparse

import torch

import vtreid.ops as ops

SHAPES = [(1, 1, 1), (3, 47, 7), (65, 130, 129), (130, 65, 2048)]
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
METRICS = ("euclidean", "sqeuclidean", "cosine")


def close(a, b):
    return torch.allclose(a.float(), b.float(), atol=5e-2, rtol=5e-2)


def pairwise(backend, n, m, d, dtype, metric):
    x = torch.randn(n, d, device="cuda", dtype=dtype, requires_grad=True)
    y = torch.randn(m, d, device="cuda", dtype=dtype, requires_grad=True)
    out = ops.pairwise_distance(x, y, metric=metric, backend=backend)
    out.backward(torch.ones_like(out))
    return close(out, ops.pairwise_distance(x.detach(), y.detach(), metric=metric, backend="reference"))


def mining(backend, n, m, d, dtype, metric):
    a = torch.randn(n, d, device="cuda", dtype=dtype, requires_grad=True)
    c = torch.randn(m, d, device="cuda", dtype=dtype, requires_grad=True)
    la = torch.randint(0, 5, (n,), device="cuda")
    lc = torch.randint(0, 5, (m,), device="cuda")
    ma = torch.randint(0, 2, (n,), device="cuda")
    mc = torch.randint(0, 2, (m,), device="cuda")
    kw = dict(metric=metric, anchor_modality=ma, candidate_modality=mc, positive="cross", negative="any")
    out = ops.hard_mining(a, la, c, lc, backend=backend, **kw)
    (out.pos_dist.sum() - out.neg_dist.sum()).backward()
    ref = ops.hard_mining(a.detach(), la, c.detach(), lc, backend="reference", **kw)
    return close(out.pos_dist, ref.pos_dist) and close(out.neg_dist, ref.neg_dist) and torch.equal(out.valid, ref.valid)


def hetero_center(backend, n, m, d, dtype, metric):
    if metric == "euclidean":
        return True
    x = torch.randn(3, n + m, d, device="cuda", dtype=dtype, requires_grad=True)
    labels = torch.randint(0, 6, (n + m,), device="cuda")
    modality = torch.randint(0, 2, (n + m,), device="cuda")
    kw = dict(metric=metric, strong=True, margin=0.1)
    loss = ops.hetero_center_loss(x, labels, modality, backend=backend, **kw)
    loss.sum().backward()
    return close(loss, ops.hetero_center_loss(x.detach(), labels, modality, backend="reference", **kw))


def normalized_ce(backend, n, m, d, dtype, metric):
    if metric != "cosine":
        return True
    ok = True
    for classes in (m, m + 9000):  # saved x.W^T, and more than one native class chunk (recomputed)
        x = torch.randn(n, d, device="cuda", dtype=dtype, requires_grad=True)
        w = torch.randn(classes, d, device="cuda", dtype=dtype, requires_grad=True)
        target = torch.randint(0, classes, (n,), device="cuda")
        loss = ops.normalized_cross_entropy(x, w, target, scale=14.0, label_smoothing=0.1, backend=backend)
        loss.backward()
        ref = ops.normalized_cross_entropy(x.detach(), w.detach(), target, scale=14.0, label_smoothing=0.1,
                                           backend="reference")
        ok = close(loss, ref) and ok
    return ok


def main(argv=None):
    argparse.ArgumentParser(
        prog="scripts/sanitize_kernels.py",
        description="Run every native CUDA and Triton kernel forward and backward on awkward shapes and compare "
                    "with the reference; meant to run under compute-sanitizer (memcheck, racecheck) on a GPU "
                    "machine, as scripts/gpu_check.sh sanitize does.").parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("scripts/sanitize_kernels.py: needs a CUDA GPU (torch.cuda.is_available() is False)")
    bad = 0
    for backend in ("native", "triton"):
        ok, why = ops.availability(backend, torch.device("cuda"), torch.float32)
        if not ok:
            print(f"{backend}: unavailable ({why})")
            bad += 1
            continue
        for op in (pairwise, mining, hetero_center, normalized_ce):
            for n, m, d in SHAPES:
                for dtype in DTYPES:
                    for metric in METRICS:
                        if not op(backend, n, m, d, dtype, metric):
                            print(f"MISMATCH {op.__name__} {backend} {metric} {dtype} {(n, m, d)}")
                            bad += 1
    torch.cuda.synchronize()
    print("sanitize_kernels: done, mismatches:", bad)
    raise SystemExit(1 if bad else 0)


if __name__ == "__main__":
    main()
