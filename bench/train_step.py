"""End-to-end training step per method: python -m bench.train_step [--quick] [--device cpu|cuda] [--methods ...]

One full step (forward, loss, backward, optimiser) of each method at its paper batch size, and the
loss side alone (the method's objective and its backward on the network's cached outputs), for the
providers reference (eager ops), compiled (reference ops, model and objective under torch.compile),
triton and native (the fused ops). Reported per provider: step time, loss-side time and its share of the
step, peak memory; JSON lines in bench/results/<device>.jsonl as the op benchmarks (op "train_step",
modes "step" and "loss").

On a GPU the defaults are the papers' networks and input sizes; on a CPU (and with --quick) the tiny
ResNet at 128 x 64, so that the whole run takes minutes: what the fused ops buy is the loss share.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json

import torch

from bench import harness
from vtreid import ops
from vtreid.methods import METHODS, VARIANTS, Batch, get_method
from vtreid.training.config import resolve

PROVIDERS = ("reference", "compiled", "triton", "native")
MODES = ("step", "loss")


class CachedOutputs(torch.nn.Module):
    """Stands in for the network: returns its outputs from one forward (as fresh leaves), so timing the
    objective measures the loss side only. Attributes (the classifier) come from the real network."""

    def __init__(self, model, outputs: dict):
        super().__init__()
        self.model, self.outputs = model, outputs

    def forward(self, visible, infrared):
        return {k: v.detach().requires_grad_(v.is_floating_point()) if isinstance(v, torch.Tensor) else v
                for k, v in self.outputs.items()}

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("model"), name)


def method_setup(name: str, device: torch.device, small: bool):
    overrides = ["model.arch=resnet_tiny", "input.size=[128, 64]"] if small else []
    cfg = resolve(name, "sysu", None, overrides, VARIANTS)
    num_classes = 395
    method = get_method(name)(cfg, num_classes)
    model = method.build_model().to(device)
    records = fake_records(num_classes, 4)
    sampler = method.sampler(records, seed=0)
    indices = next(iter(sampler))
    size = tuple(cfg["input"]["size"])
    visible = [i for i in indices if records[i].modality == 0]
    infrared = [i for i in indices if records[i].modality == 1]
    g = torch.Generator().manual_seed(0)
    raw = {"visible": torch.randn(len(visible), 3, *size, generator=g),
           "infrared": torch.randn(len(infrared), 3, *size, generator=g),
           "visible_labels": torch.tensor([records[i].label for i in visible]),
           "infrared_labels": torch.tensor([records[i].label for i in infrared])}
    return method, model, Batch(raw, device)


def fake_records(num_classes: int, per_modality: int):
    from vtreid.data import Record
    return [Record(f"{c}-{m}-{k}.jpg", c, c, 1 + 2 * m, m) for c in range(num_classes) for m in (0, 1)
            for k in range(per_modality)]


def step_callable(method, model, batch, provider: str, mode: str):
    optimizers = method.optimizers(model)
    backend = "reference" if provider == "compiled" else provider
    if mode == "loss":
        with torch.no_grad():
            torch.manual_seed(0)
            outputs = model(batch.visible, batch.infrared)
        target = CachedOutputs(model, outputs)
    else:
        target = model
    objective = method.objective
    if provider == "compiled":
        target = torch.compile(target) if mode == "step" else target
        objective = torch.compile(method.objective)

    def step():
        with ops.use_backend(backend):
            terms = objective(target, batch)
        for o in optimizers:
            o.zero_grad(set_to_none=True)
        sum(terms.values()).backward()
        if mode == "step":
            for o in optimizers:
                o.step()
    return step


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.train_step", description=__doc__.splitlines()[0],
                                     epilog=f"providers: {', '.join(PROVIDERS)}; modes: {', '.join(MODES)}")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="tiny backbone, one method per loss family")
    parser.add_argument("--methods", default=None, help=f"comma-separated subset of {', '.join(METHODS)}")
    parser.add_argument("--providers", default=None, help=f"comma-separated subset of {', '.join(PROVIDERS)}")
    parser.add_argument("--out", default=None, help="JSON lines file (default bench/results/<device>.jsonl)")
    parser.add_argument("--min-run-time", type=float, default=1.0, help="CPU: seconds of timing per case")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    methods = args.methods.split(",") if args.methods else (["hc", "expat"] if args.quick else list(METHODS))
    providers = args.providers.split(",") if args.providers else list(PROVIDERS)
    for name, choices, what in ((methods, METHODS, "methods"), (providers, PROVIDERS, "providers")):
        unknown = set(name) - set(choices)
        if unknown:
            raise SystemExit(f"unknown {what} {sorted(unknown)}; choose from {list(choices)}")
    if args.quick and args.providers is None:
        providers = ["reference", "native"] + (["triton"] if device.type == "cuda" else [])
    small = args.quick or device.type == "cpu"
    out = harness.RESULTS_DIR / f"{harness.device_slug(device)}.jsonl" if args.out is None else harness.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    env = harness.environment(device)
    stamp = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    print(f"# train_step on {env['device']} (torch {env['torch']}, commit {env['commit']}); "
          f"{'tiny ResNet 128x64' if small else 'paper networks and sizes'}")
    print(f"{'method':<13}{'provider':<11}{'step ms':>10}{'loss ms':>10}{'loss share':>11}{'x ref step':>11}{'peak MiB':>10}")
    for name in methods:
        method, model, batch = method_setup(name, device, small)
        ref_step = None
        for provider in providers:
            ok, why = (True, "") if provider in ("reference", "compiled") else ops._backend.availability(
                provider, device, torch.float32)
            if not ok:
                print(f"{name:<13}{provider:<11}  skipped: {why}")
                continue
            if device.type == "cpu" and provider == "triton":
                print(f"{name:<13}{provider:<11}  skipped: interpreted Triton times Python, not a kernel")
                continue
            timings = {}
            for mode in MODES:
                fn = step_callable(method, model, batch, provider, mode)
                timing = harness.time_callable(fn, device, args.min_run_time)
                memory = harness.peak_memory(fn, device)
                timings[mode] = (timing, memory)
                record = {"op": "train_step", "case": {"method": name, "batch": len(batch), "small": small},
                          "dtype": "float32", "mode": mode, "provider": provider, **timing, "peak_bytes": memory,
                          "time": stamp, **env}
                with out.open("a") as f:
                    f.write(json.dumps(record) + "\n")
            step_ms, loss_ms = timings["step"][0]["median_ms"], timings["loss"][0]["median_ms"]
            if provider == "reference":
                ref_step = step_ms
            memory = timings["step"][1]
            print(f"{name:<13}{provider:<11}{step_ms:10.2f}{loss_ms:10.2f}{loss_ms / step_ms:10.1%}"
                  f"{(ref_step / step_ms if ref_step else float('nan')):11.2f}"
                  f"{(f'{memory / 2**20:10.1f}' if memory is not None else f'{chr(45):>10}')}", flush=True)
    print(f"# appended to {out}")


if __name__ == "__main__":
    main()
