"""Top-k distillation: lossdsl's topk_distill on a student linear head (its logits never whole) against a
teacher's cached top-k, beside PyTorch eager (linear, log_softmax, gather, the formula, backward) and
torch.compile of the same: time of the value and the student's three gradients, and peak extra memory.

Run: python benchmarks/topk_distillation.py [--repeats 3] [--small]. float32, the head with a bias, k = 64
teacher classes a row (distinct, holding 90 % of the teacher's mass), tail "bucket" (the student's full
softmax and the rest of each distribution as one more class), temperature 2, weight_hard = weight_soft =
0.5, reduction "mean". Times: median of interleaved repeats in one process (harness.py). Memory: each runner
once in a fresh process, its peak resident memory above what it had before, less the gradients every
runner returns, as a share of one N x C float32 logits matrix (linear_heads.fresh_peak). "products" is the
floor: the three matrix products of any such head (logits, input and weight gradients).
"""
from __future__ import annotations

import importlib.util

import numpy as np

from harness import autograd_call, machine, median_times, shape_arguments
from linear_heads import fresh_peak, products

SHAPES = [(4096, 512, 32000), (1024, 512, 128256)]
SMALL = [(256, 64, 2000), (64, 64, 8000)]
K, TEMPERATURE, TEACHER_MASS = 64, 2.0, 0.9


def inputs(rows: int, width: int, classes: int):
    """Hidden states, weight, bias, the teacher's k distinct classes a row, their log-probabilities, labels."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(rows, width)).astype(np.float32)
    weight = (rng.normal(size=(classes, width)) / np.sqrt(width)).astype(np.float32)
    ids = (rng.integers(0, classes, size=(rows, 1)) + np.arange(K) * (classes // K)) % classes
    scores = rng.normal(size=(rows, K))
    logp = np.log(TEACHER_MASS) + scores - np.log(np.exp(scores).sum(-1, keepdims=True))
    target = rng.integers(0, classes, size=rows)
    return x, weight, np.zeros(classes, np.float32), ids, logp.astype(np.float32), target


def _torch_loss():
    import torch
    F = torch.nn.functional

    def loss(x, weight, bias, ids, logp, target):
        logits = F.linear(x, weight, bias)
        hard = F.cross_entropy(logits, target)
        log_q = torch.gather(F.log_softmax(logits / TEMPERATURE, -1), -1, ids)
        p = logp.exp()
        rest_p, rest_q = 1 - p.sum(-1), 1 - log_q.exp().sum(-1)
        soft = (p * (logp - log_q)).sum(-1) + rest_p * (torch.log(rest_p) - torch.log(rest_q))
        return 0.5 * hard + 0.5 * soft.mean()
    return loss


def runners(x, weight, bias, ids, logp, target) -> dict:
    """name → a call computing the loss and the input, weight and bias gradients."""
    import lossdsl
    head = lossdsl.load("topk_distill", tail="bucket", temperature=TEMPERATURE).with_linear()
    found = {"lossdsl": lambda: head.value_and_grad(x, weight, ids, logp, target, linear_bias=bias)}
    if importlib.util.find_spec("torch"):
        import torch
        layer = [torch.tensor(a, requires_grad=True) for a in (x, weight, bias)]
        given = [torch.as_tensor(ids), torch.tensor(logp), torch.as_tensor(target)]
        eager, compiled = _torch_loss(), torch.compile(_torch_loss())

        found["torch eager"] = autograd_call(eager, layer, given)
        found["torch.compile"] = autograd_call(compiled, layer, given)
    return found


def peak_extra_bytes(shape, name: str) -> int:
    """linear_heads.fresh_peak of one runner, less the gradients it returns."""
    rows, width, classes = shape
    return fresh_peak("topk_distillation", name, shape) - 4 * (rows * width + classes * width + classes)


def main() -> None:
    args = shape_arguments(__doc__)
    print(machine())
    print("\n| (N, D, C) | runner | time | vs lossdsl | products' share | peak extra memory | of one N x C logits |")
    print("|---|---|---|---|---|---|---|")
    for shape in SMALL if args.small else SHAPES:
        made = inputs(*shape)
        floor = median_times({"products": products(*made[:2])}, args.repeats)["products"]
        times = median_times(runners(*made), args.repeats, settle=0.02)
        logits = 4 * shape[0] * shape[2]
        for name, seconds in times.items():
            extra = peak_extra_bytes(shape, name)
            print(f"| {shape} | {name} | {seconds:.3g} s | {seconds / times['lossdsl']:.2f}x | {floor / seconds:.0%} "
                  f"| {extra / 2**20:.0f} MiB | {extra / logits:.1%} |", flush=True)
        print(f"| {shape} | 3 products | {floor:.3g} s | | | | |", flush=True)
        del made


if __name__ == "__main__":
    main()
