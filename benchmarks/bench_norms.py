"""Gradient-norm logging cost: one fused norm versus one device sync per parameter.

Prints the time per call of three ways to get the global gradient norm of a
resnet50, measured side by side in one run (these machines are noisy, so
compare the ratios, not the absolute times):

- ``fused``: ``autotimm.training.diagnostics.total_norm`` (what ImageClassifier logs),
- ``per-parameter .item()``: the norm of each gradient read back one by one,
  a device sync per parameter (the mistake of an earlier tool),
- ``lightning grad_norm``: ``lightning.pytorch.utilities.grad_norm`` read back
  as floats, as a logger would.

Run: ``make benchmark`` or ``python benchmarks/bench_norms.py [--device cuda]``.
"""

from __future__ import annotations

import argparse
import math
import time

import timm
import torch
from pytorch_lightning.utilities import grad_norm

from autotimm.training.diagnostics import total_norm


def _time(fn, repeats: int) -> float:
    fn()  # warm-up
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    model = timm.create_model("resnet50", num_classes=10).to(device)
    model(torch.randn(2, 3, 64, 64, device=device)).sum().backward()
    params = [p for p in model.parameters() if p.grad is not None]

    def fused() -> float:
        return total_norm(p.grad for p in params).item()

    def per_parameter() -> float:
        return math.sqrt(sum(p.grad.norm().item() ** 2 for p in params))

    def lightning() -> float:
        return float(grad_norm(model, norm_type=2)["grad_2.0_norm_total"])

    results = {}
    for name, fn in (("fused", fused), ("per-parameter .item()", per_parameter), ("lightning grad_norm", lightning)):
        results[name] = (_time(lambda fn=fn: (fn(), sync()), args.repeats), fn())
    base = results["fused"][0]
    print(f"global gradient norm of resnet50 ({len(params)} tensors) on {device}, best of {args.repeats}")
    for name, (seconds, value) in results.items():
        print(f"  {name:<24} {seconds * 1e3:8.3f} ms   {seconds / base:6.2f}x fused   norm={value:.6f}")


if __name__ == "__main__":
    main()
