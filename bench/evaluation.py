"""Benchmark of vtreid.eval against the AGW-style numpy loop: python -m bench.evaluation [--quick] [--large]

SYSU-MM01 all-search single-shot: 10 trials of 3803 infrared queries against a 301-image gallery,
D = 2048, random features and the release's sizes (96 identities). Providers: numpy (distances with
numpy, then the per-query loop of vtreid/eval/numpy_protocol.py, as the AGW code does) and vtreid
(vtreid.eval.rank_metrics on the device). --large: top-100 retrieval of Q = 10000 queries in a
gallery of G = 1,000,000 at D = 512 with vtreid.eval.topk, whose peak memory is the claim (the full
distance matrix would be 40 GB).

Targets (issue 8): on a GPU at least 20x faster than numpy; on CPU not slower; the large case under
4 GB of device memory.
"""
from __future__ import annotations

import numpy as np
import torch

from bench import harness
from vtreid.eval import numpy_protocol, rank_metrics, topk


def make_inputs(case, dtype, device, requires_grad):
    g = torch.Generator(device="cpu").manual_seed(0)
    if "K" in case:  # the large top-k case
        return {"query": torch.randn(case["Q"], case["D"], generator=g).to(device, dtype),
                "gallery": torch.randn(case["G"], case["D"], generator=g).to(device, dtype), "k": case["K"]}
    ids = 96
    q_ids = torch.randint(0, ids, (case["Q"],), generator=g)
    trials = []
    for _ in range(case["trials"]):
        g_ids = torch.arange(case["G"]) % ids
        trials.append({"g_ids": g_ids, "g_cams": torch.tensor([1, 2, 4, 5])[torch.randint(0, 4, (case["G"],), generator=g)],
                       "gallery": torch.randn(case["G"], case["D"], generator=g).to(device, dtype)})
    query = torch.randn(case["Q"], case["D"], generator=g).to(device, dtype)
    q_cams = torch.tensor([3, 6])[torch.randint(0, 2, (case["Q"],), generator=g)]
    return {"query": query, "q_ids": q_ids, "q_cams": q_cams, "trials": trials}


def numpy_loop(inputs):
    q = inputs["query"].float().cpu().numpy()
    out = []
    for t in inputs["trials"]:
        g = t["gallery"].float().cpu().numpy()
        dist = (q * q).sum(1)[:, None] + (g * g).sum(1)[None] - 2 * q @ g.T
        out.append(numpy_protocol.evaluate(dist, inputs["q_ids"].numpy(), t["g_ids"].numpy(), inputs["q_cams"].numpy(),
                                           t["g_cams"].numpy(), sysu_rules=True)[1])
    return np.mean(out)


def vtreid_eval(inputs):
    out = [rank_metrics(inputs["query"], t["gallery"], inputs["q_ids"], t["g_ids"], inputs["q_cams"], t["g_cams"],
                        sysu_rules=True)["mAP"] for t in inputs["trials"]]
    return torch.stack(out).mean()


def providers() -> list[harness.Provider]:
    large = lambda inputs: "K" in inputs  # noqa: E731
    return [
        harness.Provider("numpy", lambda inputs: (lambda: numpy_loop(inputs)),
                         lambda device, dtype: (True, "")),
        harness.Provider("vtreid", lambda inputs: (lambda: topk(inputs["query"], inputs["gallery"], inputs["k"])
                                                   if large(inputs) else vtreid_eval(inputs))),
    ]


def main(argv=None):
    def chosen_cases(device, args):
        if args.large:
            return [{"Q": 10000, "G": 1_000_000, "D": 512, "K": 100}], [torch.float16], ["forward"], {"numpy"}
        trials = 2 if args.quick else 10
        return [{"Q": 3803, "G": 301, "D": 2048, "trials": trials}], [torch.float32], ["forward"], set()

    parser_extra = lambda p: p.add_argument("--large", action="store_true", help="Q = 1e4, G = 1e6 top-100 memory case")  # noqa: E731
    harness.main("sysu_evaluation", __doc__, providers, make_inputs, chosen_cases, argv, module="bench.evaluation",
                 extra_args=parser_extra, baseline="numpy")


if __name__ == "__main__":
    main()
