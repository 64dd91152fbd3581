"""On a GPU: after ops.warmup at the job's shapes, each op's forward + backward is captured in a CUDA graph
(bench.harness.graphed, what `bench.<op> --cuda-graph` times) and its replays give the eager results:
Step 14's steady-state steps are capturable (no host synchronisation, no tuning left inside a call).
Skipped without CUDA; scripts/gpu_check.sh runs it on a lent GPU."""
import pytest
import torch

import vtreid.ops as ops
from bench.harness import graphed
from support import FUSED_BACKENDS, require_backend

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")

N, D, C = 64, 256, 37


def loss_of(op, backend, labels, modality):
    """loss(x, w) of ``op`` at fixed labels and modality."""
    return {
        "pairwise_distance": lambda x, w: ops.pairwise_distance(x, x, backend=backend).sum(),
        "hard_mining": lambda x, w: (lambda m: m.pos_dist.sum() + m.neg_dist.sum())(
            ops.hard_mining(x, labels, backend=backend)),
        "hetero_center_loss": lambda x, w: ops.hetero_center_loss(x, labels, modality, backend=backend),
        "normalized_cross_entropy": lambda x, w: ops.normalized_cross_entropy(x, w, labels % C, scale=14.0,
                                                                              backend=backend),
    }[op]


def eager_step(loss, x, w):
    x, w = x.detach().clone().requires_grad_(True), w.detach().clone().requires_grad_(True)
    value = loss(x, w)
    value.backward()
    return {"loss": value.detach(), "gx": x.grad, "gw": w.grad}


@pytest.mark.parametrize("op", ["pairwise_distance", "hard_mining", "hetero_center_loss", "normalized_cross_entropy"])
@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_warmed_up_ops_replay_from_a_cuda_graph(op, backend):
    """The replay reads the inputs where they are: new values copied into them give the eager result of
    the new values (loss and both gradients)."""
    require_backend(backend, "cuda", torch.float32)
    device = torch.device("cuda")
    # the mining as loss_of calls it
    ops.warmup(batch=N, dim=D, classes=C, mining=(("euclidean", "any", "any"),), device=device, backend=backend)
    x = torch.randn(N, D, device=device, requires_grad=True)
    w = torch.randn(C, D, device=device, requires_grad=True)
    labels = torch.arange(N, device=device) // 2
    modality = (torch.arange(N, device=device) % 2).to(torch.int32)
    loss = loss_of(op, backend, labels, modality)
    held = {}

    def step():
        x.grad = w.grad = None  # each replay writes fresh gradients, never accumulates
        value = loss(x, w)
        value.backward()
        held.update(loss=value, gx=x.grad, gw=w.grad)

    replay = graphed(step, device)
    with torch.no_grad():
        x.copy_(torch.randn(N, D, device=device))
        w.copy_(torch.randn(C, D, device=device))
    want = eager_step(loss, x, w)
    replay()
    torch.cuda.synchronize()
    for name, expected in want.items():
        got = held[name]
        assert (got is None) == (expected is None), name
        if expected is not None:
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5, msg=lambda s: f"{op} {name}: {s}")
