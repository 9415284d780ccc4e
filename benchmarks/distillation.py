"""Two-head distillation: lossdsl's linear_distill_soft (student and teacher linear heads, neither's logits
whole) beside PyTorch eager (two linear layers, the divergence on log_softmax, backward) and torch.compile
of the same: time of the value and the student's three gradients, and peak extra memory.

Run: python benchmarks/distillation.py [--repeats 3] [--small]. float32, both heads with a bias, the
teacher not differentiated, temperature 2, reduction "mean"; divergences "jsd" (beta 0.5) and
"forward_kl". Times: median of interleaved repeats in one process (harness.py). Memory: each runner once
in a fresh process, its peak resident memory above what it had before, less the student gradients every
runner returns, as a share of one N x C float32 logits matrix (linear_heads.py's measure). "products"
is the floor: the four matrix products any such head does (both heads' logits, the student's input and
weight gradients), NumPy's BLAS into buffers made beforehand. `--small` shrinks the shapes (a smoke test).
"""
from __future__ import annotations

import importlib.util

import numpy as np

from harness import autograd_call, machine, median_times, shape_arguments
from linear_heads import fresh_peak

SHAPES = [(4096, 512, 32000), (1024, 512, 128256)]
SMALL = [(256, 64, 2000), (64, 64, 8000)]
TEMPERATURE = 2.0


def inputs(rows: int, width: int, classes: int):
    """Student and teacher hidden states (the teacher 1.5 times wider), weights and biases."""
    rng = np.random.default_rng(0)
    teacher_width = width + width // 2
    xs = rng.normal(size=(rows, width)).astype(np.float32)
    ws = (rng.normal(size=(classes, width)) / np.sqrt(width)).astype(np.float32)
    xt = rng.normal(size=(rows, teacher_width)).astype(np.float32)
    wt = (rng.normal(size=(classes, teacher_width)) / np.sqrt(teacher_width)).astype(np.float32)
    return xs, ws, np.zeros(classes, np.float32), xt, wt, np.zeros(classes, np.float32)


def _torch_loss(divergence: str):
    import torch

    def loss(xs, ws, bs, xt, wt, bt):
        s = torch.nn.functional.linear(xs, ws, bs) / TEMPERATURE
        with torch.no_grad():
            t = torch.nn.functional.linear(xt, wt, bt) / TEMPERATURE
        ls, lt = torch.log_softmax(s, -1), torch.log_softmax(t, -1)
        if divergence == "forward_kl":
            return (lt.exp() * (lt - ls)).sum(-1).mean()
        lm = torch.log(0.5 * ls.exp() + 0.5 * lt.exp())
        return (0.5 * (lt.exp() * (lt - lm)).sum(-1) + 0.5 * (ls.exp() * (ls - lm)).sum(-1)).mean()
    return loss


def runners(divergence: str, xs, ws, bs, xt, wt, bt) -> dict:
    """name → a call computing the loss and the student's input, weight and bias gradients."""
    import lossdsl
    head = lossdsl.load("linear_distill_soft", divergence=divergence, temperature=TEMPERATURE)
    found = {"lossdsl": lambda: head.value_and_grad(xs, ws, xt, wt, student_bias=bs, teacher_bias=bt)}
    if importlib.util.find_spec("torch"):
        import torch
        student = [torch.tensor(a, requires_grad=True) for a in (xs, ws, bs)]
        teacher = [torch.tensor(a) for a in (xt, wt, bt)]
        eager, compiled = _torch_loss(divergence), torch.compile(_torch_loss(divergence))

        found["torch eager"] = autograd_call(eager, student, teacher)
        found["torch.compile"] = autograd_call(compiled, student, teacher)
    return found


def products(xs, ws, bs, xt, wt, bt):
    """The floor: both heads' logits, the student's input gradient and its weight gradient."""
    student, teacher = np.empty((xs.shape[0], ws.shape[0]), np.float32), np.empty((xt.shape[0], wt.shape[0]), np.float32)
    d_input, d_weight = np.empty_like(xs), np.empty_like(ws)

    def call():
        np.matmul(xs, ws.T, out=student)
        np.matmul(xt, wt.T, out=teacher)
        np.matmul(student, ws, out=d_input)
        np.matmul(student.T, xs, out=d_weight)
    return call


def peak_extra_bytes(shape, divergence: str, name: str) -> int:
    """linear_heads.fresh_peak of one runner, less the student gradients it returns."""
    rows, width, classes = shape
    return fresh_peak("distillation", name, shape, f"{divergence!r}, ") - 4 * (rows * width + classes * width + classes)


def main() -> None:
    args = shape_arguments(__doc__)
    print(machine())
    print("\n| (N, D, C) | divergence | runner | time | vs lossdsl | products' share | peak extra memory "
          "| of one N x C logits |")
    print("|---|---|---|---|---|---|---|---|")
    for shape in SMALL if args.small else SHAPES:
        made = inputs(*shape)
        floor = median_times({"products": products(*made)}, args.repeats)["products"]
        for divergence in ("jsd", "forward_kl"):
            found = runners(divergence, *made)
            times = median_times(found, args.repeats, settle=0.02)
            logits = 4 * shape[0] * shape[2]
            for name, seconds in times.items():
                extra = peak_extra_bytes(shape, divergence, name)
                print(f"| {shape} | {divergence} | {name} | {seconds:.3g} s | {seconds / times['lossdsl']:.2f}x | "
                      f"{floor / seconds:.0%} | {extra / 2**20:.0f} MiB | {extra / logits:.1%} |", flush=True)
            del found
        print(f"| {shape} | | 4 products | {floor:.3g} s | | | | |", flush=True)
        del made


if __name__ == "__main__":
    main()
