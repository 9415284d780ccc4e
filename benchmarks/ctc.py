"""lossdsl's CTC beside PyTorch's CPU ctc_loss, forward + backward, float32.

Run: python benchmarks/ctc.py [--repeats 5]. Shapes (T, N, C, S) from issue 8; every sequence
uses its full input and target length; targets padded (N, S); reduction "mean". Two lossdsl
columns: the catalogue spec (`lossdsl.load("ctc").value_and_grad`, what users call: input checks,
the stages around the intrinsic) and its kernel alone (`ctc_value_and_grad`). PyTorch is needed
for the comparison (skipped with a note when absent).
"""
from __future__ import annotations

import argparse
import importlib.util

import numpy as np

import lossdsl
from harness import machine, median_times
from lossdsl.intrinsics.ctc import ctc_value_and_grad

SHAPES = [(200, 32, 32, 40), (500, 16, 5000, 100)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch = __import__("torch") if importlib.util.find_spec("torch") else None
    print(f"{machine()}" + (f"; torch {torch.__version__}" if torch else " (PyTorch not installed: lossdsl only)"))
    print("\n| (T, N, C, S) | lossdsl spec | kernel alone | torch ctc_loss | torch / lossdsl spec |")
    print("|---|---|---|---|---|")
    spec = lossdsl.load("ctc")
    for steps, batch, classes, longest in SHAPES:
        rng = np.random.default_rng(0)
        logits = rng.normal(size=(steps, batch, classes)).astype(np.float32)
        log_probs = logits - np.log(np.exp(logits).sum(axis=2, keepdims=True))
        targets = rng.integers(1, classes, (batch, longest))
        input_lengths, target_lengths = np.full(batch, steps), np.full(batch, longest)
        runners = {"lossdsl": lambda: spec.value_and_grad(log_probs, targets, input_lengths, target_lengths),
                   "kernel": lambda: ctc_value_and_grad(log_probs, targets, input_lengths, target_lengths)}
        if torch is not None:
            x = torch.tensor(log_probs, requires_grad=True)
            arguments = [torch.tensor(a) for a in (targets, input_lengths, target_lengths)]

            def pytorch():
                x.grad = None
                torch.nn.functional.ctc_loss(x, *arguments).backward()
            runners["torch"] = pytorch
        times = median_times(runners, args.repeats, settle=0.02)
        theirs = f"{times['torch'] * 1e3:.3g} ms" if "torch" in times else "—"
        ratio = f"{times['torch'] / times['lossdsl']:.2f}x" if "torch" in times else "—"
        print(f"| {(steps, batch, classes, longest)} | {times['lossdsl'] * 1e3:.3g} ms | {times['kernel'] * 1e3:.3g} ms "
              f"| {theirs} | {ratio} |")


if __name__ == "__main__":
    main()
