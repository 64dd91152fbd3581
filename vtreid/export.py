"""python -m vtreid.export: the embedding network of a checkpoint as ONNX, checked against PyTorch.

    python -m vtreid.export --checkpoint runs/hc-synthetic-.../checkpoints/best.pt --onnx model.onnx

The graph is the network's inference path (eval mode: BatchNorm running statistics, no dropout) with two
inputs, ``visible`` [Bv, 3, H, W] and ``infrared`` [Bi, 3, H, W], each with its own dynamic batch
dimension, and one output ``embedding`` [Bv + Bi, E], visible rows first: exactly what the PyTorch
network returns. Every network has both inputs, so one graph serves single-stream networks (SphereReID,
expAT: both batches go through the one backbone) and two-stream ones (HSME / D-HSME, TSLFN, LCCRF's
modality-specific stem: each batch goes through its own stream). Give a modality no images with a batch of
0 rows; that runs in onnxruntime (the test checks it), but a runtime that refuses empty tensors needs a
batch of at least one row in each input. H x W is fixed: the checkpoint's test image size (the inputs are
what the test transform gives: RGB resized to H x W, scaled to [0, 1] and normalised with the ImageNet
mean and std; infrared images as three identical channels). The model's metadata records these.

The export uses torch.onnx's TorchScript-based exporter (``dynamo=False``, needs only the ``onnx``
package). When onnxruntime is installed the command runs a random batch through both and prints the
largest difference, relative to the largest feature magnitude where that is above 1 (``--tolerance``,
default 1e-4, makes a larger one an error).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from vtreid import _cli as cli
from vtreid.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from vtreid.extract import Loaded, load_checkpoint

INPUTS = ("visible", "infrared")
OPSET = 17


def _pool_matrix(size: int, out: int, like: torch.Tensor) -> torch.Tensor:
    """[out, size]: row i averages input positions floor(i * size / out) .. ceil((i + 1) * size / out) - 1,
    adaptive average pooling's windows."""
    m = torch.zeros(out, size, dtype=like.dtype, device=like.device)
    for i in range(out):
        start, end = (i * size) // out, math.ceil((i + 1) * size / out)
        m[i, start:end] = 1.0 / (end - start)
    return m


@contextlib.contextmanager
def exportable_adaptive_pooling():
    """The exporter refuses adaptive_avg_pool2d whose output size does not divide the input size (TSLFN's
    6 stripes of an 8-row map); inside this context such a pooling is the same average written as two
    products with constant window matrices (the spatial size is fixed in the graph)."""
    original = F.adaptive_avg_pool2d

    def pool(x, output_size):
        h, w = int(x.shape[-2]), int(x.shape[-1])
        oh, ow = (output_size, output_size) if isinstance(output_size, int) else output_size
        oh, ow = oh or h, ow or w
        if h % oh == 0 and w % ow == 0:
            return original(x, output_size)
        return _pool_matrix(h, oh, x) @ x @ _pool_matrix(w, ow, x).T

    F.adaptive_avg_pool2d = pool
    try:
        yield
    finally:
        F.adaptive_avg_pool2d = original


def missing_extra(module: str) -> str:
    return f"{module} is not installed: pip install 'vtreid[export]' (or pip install onnx onnxruntime)"


def export_onnx(loaded: Loaded, path: str | Path, *, opset: int = OPSET, batch: tuple[int, int] = (2, 2)) -> Path:
    """Write ``loaded``'s network as an ONNX graph with dynamic batch on both inputs; returns the path."""
    try:
        import onnx
    except ImportError:
        raise RuntimeError(missing_extra("onnx")) from None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = loaded.model.eval()
    h, w = loaded.image_size
    example = tuple(torch.randn(b, 3, h, w, device=loaded.device) for b in batch)
    with warnings.catch_warnings(), torch.no_grad(), exportable_adaptive_pooling():
        warnings.simplefilter("ignore")   # the legacy exporter's deprecation and tracer warnings
        try:
            torch.onnx.export(model, example, str(path), input_names=list(INPUTS), output_names=["embedding"],
                              dynamo=False, opset_version=opset, do_constant_folding=True,
                              dynamic_axes={"visible": {0: "visible_batch"}, "infrared": {0: "infrared_batch"},
                                            "embedding": {0: "batch"}})
        except Exception as exc:  # noqa: BLE001 - the exporter's errors carry a whole graph dump
            lines = str(exc).strip().splitlines() or [type(exc).__name__]
            raise RuntimeError(f"{path}: ONNX export of the {loaded.cfg['method']} network failed: {lines[0]}") from exc
    graph = onnx.load(str(path))
    meta = {"vtreid.method": loaded.cfg["method"], "vtreid.dataset": loaded.cfg["dataset"]["name"],
            "vtreid.step": str(loaded.step), "vtreid.image_size": json.dumps([h, w]),
            "vtreid.mean": json.dumps(list(IMAGENET_MEAN)), "vtreid.std": json.dumps(list(IMAGENET_STD)),
            "vtreid.inputs": "visible [Bv,3,H,W], infrared [Bi,3,H,W] -> embedding [Bv+Bi,E], visible rows first"}
    for key, value in meta.items():
        entry = graph.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(graph, str(path))
    return path


def check_onnx(loaded: Loaded, path: str | Path, *, batch: tuple[int, int] = (3, 2), seed: int = 0) -> float:
    """The largest difference between onnxruntime and PyTorch on a random batch, relative to the largest
    feature magnitude where that is above 1 (unnormalised embeddings reach 1e3: float32 rounding alone
    differs by 1e-4 there)."""
    try:
        import onnxruntime
    except ImportError:
        raise RuntimeError(missing_extra("onnxruntime")) from None
    h, w = loaded.image_size
    g = torch.Generator().manual_seed(seed)
    inputs = [torch.randn(b, 3, h, w, generator=g) for b in batch]
    with torch.no_grad():
        expected = loaded.model.eval()(*(x.to(loaded.device) for x in inputs)).float().cpu()
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {name: x.numpy() for name, x in zip(INPUTS, inputs)})[0]
    if tuple(got.shape) != tuple(expected.shape):
        raise RuntimeError(f"{path}: onnxruntime gave shape {tuple(got.shape)}, PyTorch {tuple(expected.shape)}")
    if not expected.numel():
        return 0.0
    return float((torch.from_numpy(got) - expected).abs().max()) / max(1.0, float(expected.abs().max()))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vtreid.export", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="a training checkpoint")
    parser.add_argument("--onnx", required=True, type=cli.output_file, help="the ONNX file to write")
    parser.add_argument("--opset", type=cli.positive_int, default=OPSET)
    parser.add_argument("--device", type=cli.device, default="cpu", help="where the network is traced (default cpu)")
    parser.add_argument("--no-check", action="store_true", help="skip the onnxruntime comparison")
    parser.add_argument("--tolerance", type=float, default=1e-4,
                        help="largest difference accepted by the check (relative to the largest |feature| where above 1)")
    args = parser.parse_args(argv)
    try:
        loaded = load_checkpoint(args.checkpoint, args.device)
        path = export_onnx(loaded, args.onnx, opset=args.opset)
        h, w = loaded.image_size
        print(f"wrote {path}: {loaded.cfg['method']} embedding network, inputs visible/infrared [B, 3, {h}, {w}] "
              f"(dynamic B), output embedding [Bv + Bi, E]")
        if not args.no_check:
            try:
                diff = check_onnx(loaded, path)
            except RuntimeError as exc:
                if "not installed" not in str(exc):
                    raise
                print(f"not checked: {exc}")
            else:
                print(f"onnxruntime vs PyTorch on a random batch (3 visible + 2 infrared): largest difference "
                      f"{diff:.3g} (relative to the largest |feature| where above 1)")
                if not diff <= args.tolerance:
                    print(f"error: {path}: difference {diff:.3g} exceeds --tolerance {args.tolerance:g}",
                          file=sys.stderr)
                    return 1
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
