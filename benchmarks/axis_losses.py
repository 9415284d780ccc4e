"""Losses over an axis, value and gradient, lossdsl beside PyTorch eager and torch.compile.

Run: python benchmarks/axis_losses.py [--reps 10]. Prints one line per loss and
implementation: the median of `reps` round-robin runs (harness.py) and the ratio to
lossdsl. float32, 2 threads.
Results with date and machine go in benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F

import lossdsl
from harness import machine, median_times


def cases(rng: np.random.Generator):
    """(name, lossdsl loss, the torch function, numpy inputs in the lossdsl loss's order)."""
    n, c = 8192, 1000
    logits, labels = rng.normal(size=(n, c)).astype(np.float32), rng.integers(0, c, n)
    yield "cross_entropy 8192x1000", lossdsl.load("cross_entropy"), F.cross_entropy, (logits, labels)
    n, d = 65536, 128
    a, p, q = (rng.normal(size=(n, d)).astype(np.float32) for _ in range(3))
    yield "triplet 65536x128", lossdsl.load("triplet"), F.triplet_margin_loss, (a, p, q)
    sign = rng.choice([-1.0, 1.0], n).astype(np.float32)
    yield ("cosine_embedding 65536x128", lossdsl.load("cosine_embedding"), F.cosine_embedding_loss,
           (a, p, sign))
    targets = (rng.uniform(size=(n, d)) > 0.5).astype(np.float32)
    yield ("multilabel_soft_margin 65536x128", lossdsl.load("multilabel_soft_margin"),
           F.multilabel_soft_margin_loss, (a, targets))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(2)
    rng = np.random.default_rng(0)
    print(f"{machine()}, torch {torch.__version__}, float32, value + gradient")
    for name, loss, torch_loss, inputs in cases(rng):
        tensors = [torch.tensor(x, requires_grad=input_name in loss.wrt) for input_name, x in zip(loss.inputs, inputs)]
        compiled = torch.compile(torch_loss)

        def run_torch(fn=torch_loss, tensors=tensors):
            for t in tensors:
                t.grad = None
            fn(*tensors).backward()

        runners = {"lossdsl": lambda: loss.value_and_grad(*inputs), "torch eager": run_torch,
                   "torch.compile": lambda: run_torch(compiled)}
        best = median_times(runners, args.reps)
        for impl, seconds in best.items():
            print(f"{name:<34} {impl:<14} {seconds * 1e3:8.2f} ms  {seconds / best['lossdsl']:5.2f}x lossdsl")


if __name__ == "__main__":
    main()
