"""lossdsl's linear_cross_entropy head beside PyTorch's eager linear + cross_entropy and its chunked
linear_cross_entropy, and beside the three matrix products any head has to do: time of value and
all gradients, quiet and with one core busy, and peak extra memory against the N x C logits.

Run: python benchmarks/linear_heads.py [--repeats 3] [--small]. float32, integer targets, a bias,
reduction "mean". Times: median of interleaved repeats in one process, first on a quiet machine,
then with a competing process spinning on one core (started and stopped by the script, as a data
loader would share the cores of a training job). "3 products" is the floor: logits = x W^T, the input
gradient G W and the weight gradient G^T x, NumPy's BLAS into buffers made beforehand; "3 (or 4) products,
head's chunks" the same products in the chunks of rows (and blocks of classes) lossdsl's head picks to keep
its extra memory within 5 % of the logits, so the head's time over it is what the loss itself costs and the
chunks' time over "3 products" what the memory bound costs the BLAS; "torch 3 products"
the same through torch.mm (PyTorch's BLAS and threads), the part of eager's time that is compute-bound, so its
"busy / quiet" shows how much a busy core slows products alone (eager's own ratio mixes in the memory-bound
softmax over the whole logits, which a busy core slows less). Memory: each
runner once in a fresh process (the inputs made first), its peak memory above what it had before
(the larger of resident memory sampled every millisecond and NumPy's allocations), less the
gradients every runner returns (input, weight, bias), as a share of the N x C float32 logits.
`--small` shrinks the shapes (a smoke test, not a measurement).
"""
from __future__ import annotations

import contextlib
import importlib.util
import json
import resource
import subprocess
import sys
import threading
import time
import tracemalloc

import numpy as np

from harness import machine, median_times, shape_arguments

SHAPES = [(4096, 512, 32000), (1024, 512, 128256)]
SMALL = [(256, 64, 2000), (64, 64, 8000)]


def inputs(rows: int, width: int, classes: int):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(rows, width)).astype(np.float32)
    weight = (rng.normal(size=(classes, width)) / np.sqrt(width)).astype(np.float32)
    return x, weight, np.zeros(classes, np.float32), rng.integers(0, classes, rows)


def runners(x, weight, bias, target) -> dict:
    """name → a call computing the loss and the input, weight and bias gradients."""
    import lossdsl
    head = lossdsl.load("linear_cross_entropy")
    found = {"lossdsl": lambda: head.value_and_grad(x, weight, target, linear_bias=bias)}
    if importlib.util.find_spec("torch"):
        import torch
        import torch.nn.functional as functional
        tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, weight, bias))
        tt = torch.tensor(target)

        def run(loss):
            def call():
                for t in (tx, tw, tb):
                    t.grad = None
                loss().backward()
            return call

        found["torch eager"] = run(lambda: functional.cross_entropy(functional.linear(tx, tw, tb), tt))
        found["torch chunked"] = run(lambda: functional.linear_cross_entropy(
            tx, tw, tt, linear_bias=tb, options=torch.nn.LinearCrossEntropyOptions()))
    return found


def products(x, weight):
    """The floor: the three products of a linear head, into buffers made beforehand."""
    logits = np.empty((x.shape[0], weight.shape[0]), x.dtype)
    d_input, d_weight = np.empty_like(x), np.empty_like(weight)

    def call():
        np.matmul(x, weight.T, out=logits)
        np.matmul(logits, weight, out=d_input)
        np.matmul(logits.T, x, out=d_weight)
    return call


def chunked_products(x, weight):
    """(name, call): the products lossdsl's head does at the chunking it picks for these shapes, through NumPy's
    BLAS and its threads: three per chunk of rows where a chunk takes all classes; where it takes a block of
    classes at a time, each block's logits twice (the loss's partials, then the gradient) and two more, four."""
    import lossdsl
    from lossdsl.runtime import blas
    rows, classes = x.shape[0], weight.shape[0]
    step, block = lossdsl.load("linear_cross_entropy").chunking(rows, classes, x.dtype)
    block = block or classes
    logits = np.empty((min(step, rows), block), x.dtype)
    d_input, d_weight = np.empty_like(x), np.empty_like(weight)
    pieces = [(lo, min(classes, lo + block)) for lo in range(0, classes, block)]

    def call():
        for start in range(0, rows, step):
            part, out = x[start:start + step], logits[:min(step, rows - start)]
            if len(pieces) > 1:
                for lo, hi in pieces:
                    blas.multiply(out[:, :hi - lo], part, weight[lo:hi].T)
            for lo, hi in pieces:
                block_logits = out[:, :hi - lo]
                blas.multiply(block_logits, part, weight[lo:hi].T)
                blas.multiply(d_input[start:start + step], block_logits, weight[lo:hi], accumulate=lo > 0)
                blas.multiply(d_weight[lo:hi], block_logits.T, part, accumulate=start > 0)
    return f"{3 if len(pieces) == 1 else 4} products, head's chunks", call


def floors(x, weight) -> dict:
    """The three products through NumPy's BLAS, the same in the chunks of lossdsl's head, and the three through
    torch.mm where PyTorch is installed."""
    found = {"3 products": products(x, weight)}
    name, call = chunked_products(x, weight)
    found[name] = call
    if importlib.util.find_spec("torch"):
        import torch
        tx, tw = torch.from_numpy(x), torch.from_numpy(weight)
        logits, d_input, d_weight = torch.empty(x.shape[0], weight.shape[0]), torch.empty_like(tx), torch.empty_like(tw)

        def call():
            torch.mm(tx, tw.t(), out=logits)
            torch.mm(logits, tw, out=d_input)
            torch.mm(logits.t(), tx, out=d_weight)
        found["torch 3 products"] = call
    return found


@contextlib.contextmanager
def one_core_busy():
    """A competing process spinning on one core while the block runs."""
    rival = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        yield
    finally:
        rival.kill()
        rival.wait()


def resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


def measure_peak(run) -> int:
    """Peak memory while `run()` runs above what was held before it: the larger of the resident memory
    (sampled every ms; it misses pages malloc had already touched and reuses) and the peak of NumPy's own
    allocations (tracemalloc; it misses BLAS's workspace and other libraries')."""
    tracemalloc.start()
    traced_base = tracemalloc.get_traced_memory()[0]
    base, peak, done = resident_bytes(), [0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], resident_bytes())
            time.sleep(0.001)

    sampler = threading.Thread(target=sample)
    sampler.start()
    run()
    done.set()
    sampler.join()
    traced_peak = tracemalloc.get_traced_memory()[1] - traced_base
    tracemalloc.stop()
    return max(max(peak[0], resident_bytes()) - base, traced_peak)


def fresh_peak(module: str, name: str, shape, before: str = "", small=None) -> int:
    """Peak resident memory one runner of benchmarks/`module`.py adds, in a fresh process: first on inputs
    16 times smaller in rows and classes (or of the shape `small`: imports, and the kernels of the same way
    through, rows or class blocks, loaded), then once on the real ones. `before`: the text of runners'
    arguments before the inputs."""
    small = small or (shape[0] // 16, 8, shape[2] // 16)
    code = (f"import json, sys; sys.path.insert(0, 'benchmarks'); import {module} as b; "
            "from linear_heads import measure_peak; "
            f"b.runners({before}*b.inputs(*{small!r}))[{name!r}](); "
            f"r = b.runners({before}*b.inputs(*{shape!r}))[{name!r}]; print(json.dumps(measure_peak(r)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def peak_extra_bytes(shape, name: str) -> int:
    """`fresh_peak` of one runner, less the gradients it returns (every runner makes them)."""
    rows, width, classes = shape
    return fresh_peak("linear_heads", name, shape) - 4 * (rows * width + classes * width + classes)


def main() -> None:
    args = shape_arguments(__doc__)
    print(machine())
    print("\n| (N, D, C) | runner | time, quiet | vs lossdsl | one core busy | busy / quiet | peak extra memory "
          "| of the N x C logits |")
    print("|---|---|---|---|---|---|---|---|")
    for shape in SMALL if args.small else SHAPES:
        made = inputs(*shape)
        found = {**runners(*made), **floors(*made[:2])}
        quiet = median_times(found, args.repeats, settle=0.02)
        with one_core_busy():
            busy = median_times(found, args.repeats, settle=0.02)
        logits = 4 * shape[0] * shape[2]
        for name, seconds in quiet.items():
            memory = "| — | — |"
            if "products" not in name:
                extra = peak_extra_bytes(shape, name)
                memory = f"| {extra / 2**20:.0f} MiB | {extra / logits:.1%} |"
            print(f"| {shape} | {name} | {seconds:.3g} s | {seconds / quiet['lossdsl']:.2f}x | {busy[name]:.3g} s | "
                  f"{busy[name] / seconds:.2f}x {memory}")
        del found, made

if __name__ == "__main__":
    main()
