"""Every Triton launch fills a GPU at the training shapes (Step 14): N = 256 samples, D = 2048 features,
C = 395 classes (SYSU-MM01), on a 132-SM H100 and on the largest part of every architecture the compile
table sweeps, for every GPU config the autotuner may pick there.

A kernel with too few programs leaves SMs idle whatever its tuning; these tests compute the grids with
the same pure functions the launchers use (no GPU needed), so a config list or a split rule that would
under-fill the GPU fails here. At large sizes every config must stay available to the tuner.
"""
import pytest
import torch

from support import compile_triton_script, launch_every_op, record_launches
from vtreid.kernels import _launch
from vtreid.kernels._launch import configs_for
from vtreid.kernels import hard_mining as k_mining
from vtreid.kernels import normalized_softmax as k_nce
from vtreid.kernels import pairwise_distance as k_pair

SMS = 132
N, D, C = 256, 2048, 395
#: The SM count of the largest part of each architecture the compile table sweeps
#: (scripts/compile_triton.py --arch): where a config list marked for that architecture must still give
#: every SM a program.
LARGEST_PART_SMS = {80: 108,   # A100
                    86: 84,    # A40, RTX A6000, RTX 3090 Ti
                    87: 16,    # Jetson AGX Orin
                    89: 142,   # L40, L40S
                    90: 132,   # H100 SXM, H200
                    100: 148,  # B200
                    103: 160,  # B300 (Blackwell Ultra's full 160; a part with fewer is covered by the count)
                    120: 188,  # RTX PRO 6000 Blackwell
                    121: 48}   # DGX Spark (GB10)
CPU = torch.empty(0)  # stands in for the launch's tensors: num_sms() of a CPU tensor is WAVE_SMS


def test_wave_target_is_an_h100():
    assert _launch.WAVE_SMS == SMS
    assert _launch.num_sms(torch.device("cpu")) == SMS


def _kept(kernel, args, dtype=torch.float32):
    """The configs the kernel's early_config_prune keeps at ``args`` for inputs of ``dtype`` (all GPU
    configs if it has none)."""
    prune = kernel.early_config_prune
    configs = list(kernel.gpu_configs)
    operand = torch.empty(0, dtype=dtype)
    return prune(configs, {"X": operand, "B": operand, **args}) if prune else configs


DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,m", [(N, N), (2 * N, N), (N, 4 * N)])
def test_pairwise_forward_fills_a_wave(n, m, dtype):
    kept = _kept(k_pair._pairwise_fwd_kernel, {"N": n, "M": m, "D": D}, dtype)
    assert kept, "no config left"
    for config in kept:
        assert k_pair.forward_grid(n, m, config.kwargs)[0] >= SMS, config


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,k", [(N, N), (N, 2 * N)])
def test_pairwise_backward_fills_a_wave(n, k, dtype):
    for side_rows in (n, k):
        kept = _kept(k_pair._pairwise_bwd_kernel, {"N": side_rows, "K": n + k - side_rows, "D": D}, dtype)
        assert kept
        for config in kept:
            gx, gd = k_pair.side_grid(side_rows, D, config.kwargs)
            assert gx * gd >= SMS, config
    bn, bm = k_pair.coef_blocks(n, k, SMS)
    tn, tm = k_pair.coef_grid(n, k, (bn, bm))
    assert tn * tm >= SMS


@pytest.mark.parametrize("rows", [N, 2 * N])
def test_pairwise_norm_pass_fills_a_wave(rows):
    block = k_pair.norm_block(rows, SMS)
    assert -(-rows // block) >= SMS


@pytest.mark.parametrize("dtype", DTYPES)
def test_large_products_keep_every_config_of_their_precision(dtype):
    """At 8192^2 x 2048 every config fills the GPU: none of the precision's list is pruned, so the largest
    tensor-core tiles stay candidates for half inputs, and a launch never gets the other precision's
    configs (those were not compiled for its dtype in the spill table)."""
    for kernel, args in ((k_pair._pairwise_fwd_kernel, {"N": 8192, "M": 8192, "D": D}),
                         (k_pair._pairwise_bwd_kernel, {"N": 8192, "K": 8192, "D": D})):
        own = configs_for(kernel.dtype_configs, dtype)
        kept = _kept(kernel, args, dtype)
        assert len(kept) == len(own) and all(any(c is o for o in own) for c in kept)
    half = configs_for(k_pair._pairwise_fwd_kernel.dtype_configs, torch.float16)
    assert any(c.kwargs["BLOCK_N"] * c.kwargs["BLOCK_M"] >= 64 * 128 for c in half)


def _tuned_kernels():
    from vtreid.kernels import hard_mining, normalized_softmax
    return {name: obj for module in (k_pair, hard_mining, normalized_softmax) for name, obj in vars(module).items()
            if hasattr(obj, "dtype_configs")}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(_tuned_kernels()))
def test_configs_marked_not_on_an_arch_are_never_tuned_there(monkeypatch, name, dtype):
    """A config marked not_on(80) (sm_80's ptxas spills it) is pruned on an sm_80 device at every size,
    likewise on every other architecture of the compile table, and stays a candidate on sm_90, where at
    large sizes the precision's whole list is kept. Every architecture keeps a config of the precision."""
    kernel = _tuned_kernels()[name]
    operand = torch.empty(0, dtype=dtype)
    own = configs_for(kernel.dtype_configs, dtype)
    for arch in LARGEST_PART_SMS:
        monkeypatch.setattr(_launch, "device_arch", lambda device, arch=arch: arch)
        for size in (N, 8192):
            args = {"X": operand, "A": operand, "B": operand, "N": size, "M": size, "K": size, "C": 100 * size,
                    "D": D}
            kept = kernel.early_config_prune(list(kernel.gpu_configs), args)
            assert kept and all(any(c is o for o in own) for c in kept)
            assert not any(arch in getattr(c, "not_on", ()) for c in kept), (arch, size)
            if size == 8192:
                assert len(kept) == len(configs_for(kernel.dtype_configs, dtype, arch))
    assert len(configs_for(kernel.dtype_configs, dtype, 90)) == len(own)  # nothing is marked off sm_90


def test_not_on_marks_only_the_architectures_named():
    config = _launch.not_on(k_pair._cfg(16, 16, 32, 4, 3), 80)
    assert not _launch.usable_on(config, 80)
    assert _launch.usable_on(config, 90) and _launch.usable_on(config, None)
    assert _launch.usable_on(k_pair._cfg(16, 16, 32, 4, 3), 80)
    # sm_103 and sm_121 spill where sm_100 and sm_120 do (their sweeps): a mark of one covers the other
    blackwell = _launch.not_on(k_pair._cfg(16, 16, 32, 4, 3), 100, 120)
    assert {a for a in (80, 86, 89, 90, 100, 103, 110, 120, 121) if not _launch.usable_on(blackwell, a)} == {
        100, 103, 120, 121}
    assert _launch.device_arch(torch.device("cpu")) is None


def test_autotune_keys_are_bucketed():
    """A new batch or gallery size inside a power-of-two bucket reuses the tuned config: the keys name
    the *_BUCKET arguments, never the exact sizes."""
    for kernel in (k_pair._pairwise_fwd_kernel, k_pair._pairwise_bwd_kernel):
        assert not {"N", "M", "K", "D", "C"} & set(kernel.keys), kernel.keys
        assert all(key.endswith("_BUCKET") or key.isupper() for key in kernel.keys)
    assert [_launch.bucket(n) for n in (1, 16, 17, 256, 300, 8192)] == [16, 16, 32, 256, 512, 8192]


# --- every launch of every op, as the launchers make them --------------------------------------------

# Kernels whose work at the training shapes is microseconds whatever their grid: O(N) merges of per-split
# states of N rows, and the class slots' 2 x N^2 integer comparisons (65536 at N = 256, on 8 programs).
SMALL_EPILOGUES = {"_nce_combine_kernel", "_mining_combine_kernel", "_slot_rank_kernel", "_slot_segments_kernel",
                   "_centers_combine_kernel"}


def test_the_wave_table_names_the_compile_tables_architectures():
    assert set(LARGEST_PART_SMS) == set(compile_triton_script().SHARED_LIMIT)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("arch", [None, *LARGEST_PART_SMS])
def test_every_launch_at_training_shapes_fills_a_wave(monkeypatch, arch, dtype):
    """Each op forward and backward at N = 256, D = 2048 (C = 395): every Triton launch, every config the
    tuner may pick there, at least one program per SM: on an H100 as the launchers see it off a GPU (arch
    None: nothing patched, WAVE_SMS and no architecture) and on the largest part of each architecture of
    the compile table (its not_on marks pruned, its SM count). Grids only: nothing runs."""
    sms = SMS if arch is None else LARGEST_PART_SMS[arch]
    if arch is not None:
        monkeypatch.setattr(_launch, "device_arch", lambda device: arch)
        for module in (_launch, k_pair, k_mining, k_nce):
            monkeypatch.setattr(module, "num_sms", lambda device: sms)
    launches = record_launches(monkeypatch)
    launch_every_op(N, N, D, C, dtype)
    seen = {launch.name for launch in launches}
    assert {"_pairwise_fwd_kernel", "_pairwise_bwd_kernel", "_centers_fwd_kernel", "_centers_bwd_kernel",
            "_nce_fwd_kernel", "_nce_grad_kernel", "_slot_rank_kernel", "_slot_segments_kernel"} <= seen, seen
    assert any(name.startswith("_mining") for name in seen), seen
    short = [launch[:3] for launch in launches if launch.programs < sms and launch.name not in SMALL_EPILOGUES]
    assert not short, f"launches below one wave of {sms} SMs: {short}"


@pytest.mark.parametrize("arch", [None, *LARGEST_PART_SMS])
@pytest.mark.parametrize("samples,classes,d", [(6 * 64, 6 * 4, 512),  # the HC preset: 6 stripes x 4 ids x 2 x 8
                                               (N, N // 4, D)])       # launch_every_op's labels
def test_hetero_center_forward_keeps_a_wave_busy(monkeypatch, arch, samples, classes, d):
    """The centre forward's grid has a program per class slot, and a batch has far fewer classes than
    samples: the slots past the last class exit at once. Counted are the programs that hold a class, at the
    HC preset's shape (TSLFN's 6 stripes flattened into one call) and at the training shape: one program per
    class (as before the feature slices) kept 24 of 132 SMs busy at the preset's."""
    from vtreid.kernels import hetero_center as k_center
    sms = SMS if arch is None else LARGEST_PART_SMS[arch]
    launches = record_launches(monkeypatch)
    labels = torch.arange(samples) % classes
    order, seg = torch.argsort(labels, stable=True), torch.zeros(samples + 1, dtype=torch.int64)
    k_center.forward(torch.zeros(1, samples, d), order, seg, (torch.arange(samples) % 2).int(), "sqeuclidean", False,
                     0.0)
    (fwd,) = [launch for launch in launches if launch.name == "_centers_fwd_kernel"]
    busy = fwd.programs // samples * classes  # grid (slots, sets, slices): the slots with a class
    assert busy >= sms, f"{busy} busy programs on {sms} SMs"
