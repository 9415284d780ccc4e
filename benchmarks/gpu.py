"""lossdsl's CUDA kernels beside PyTorch CUDA eager, with the GPU's memory bandwidth as the roofline.

Run on a machine with an NVIDIA GPU: python benchmarks/gpu.py [--repeats 20]. float32, value
and gradient with respect to the prediction, reduction "mean", inputs already on the device:
huber, bce_with_logits and focal over 1e8 elements, softmax cross-entropy at (8192, 32000) and
(65536, 1024), CTC at (T, N, C, S) = (200, 32, 32, 40) and (500, 16, 5000, 100) (log_probs on the
device, labels and lengths too: lossdsl checks them on the host, PyTorch may choose cuDNN).
The same run measures a device-to-device copy (bytes read + written per second)
and reports each lossdsl time as GB/s of compulsory traffic and as a fraction of that copy.
`--small` shrinks every case (for a smoke test, e.g. under NUMBA_ENABLE_CUDASIM=1, where the
timings mean nothing). PyTorch is optional: without it only lossdsl is timed.
"""
from __future__ import annotations

import argparse
import importlib.util
import statistics
import time

import numpy as np
from numba import cuda

import lossdsl


def _median_seconds(run, repeats: int) -> float:
    run()
    cuda.synchronize()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        cuda.synchronize()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def copy_gbs(n: int, repeats: int) -> float:
    """Bandwidth of a device-to-device copy of n float32 (4 bytes read + 4 written each)."""
    source, target = cuda.to_device(np.ones(n, np.float32)), cuda.device_array(n, np.float32)
    return 8 * n / _median_seconds(lambda: target.copy_to_device(source), repeats) / 1e9


def cases(small: bool):
    """(case, catalogue loss, host inputs, compulsory bytes, PyTorch formula or None)."""
    rng = np.random.default_rng(0)
    n = 2_000 if small else 100_000_000
    pred, target = rng.normal(size=n).astype(np.float32), rng.normal(size=n).astype(np.float32)
    labels = (rng.uniform(size=n) > 0.5).astype(np.float32)
    probabilities = rng.uniform(0.01, 0.99, n).astype(np.float32)
    yield f"huber N={n:.0e}", "huber", (pred, target), 12 * n, "huber"
    yield f"bce_with_logits N={n:.0e}", "bce_with_logits", (pred, labels), 12 * n, "bce_with_logits"
    yield f"focal N={n:.0e}", "focal", (probabilities, labels), 12 * n, "focal"
    for rows, classes in ([(4, 40), (16, 8)] if small else [(8192, 32000), (65536, 1024)]):
        logits = rng.normal(size=(rows, classes)).astype(np.float32)
        yield (f"cross_entropy {rows}x{classes}", "cross_entropy", (logits, rng.integers(0, classes, rows)),
               8 * rows * classes, "cross_entropy")
    for steps, batch, classes, longest in ([(8, 2, 5, 2)] if small else [(200, 32, 32, 40), (500, 16, 5000, 100)]):
        logits = rng.normal(size=(steps, batch, classes)).astype(np.float32)
        log_probs = logits - np.log(np.exp(logits).sum(axis=2, keepdims=True))
        labels = rng.integers(1, classes, (batch, longest))
        yield (f"ctc {(steps, batch, classes, longest)}", "ctc",
               (log_probs, labels, np.full(batch, steps), np.full(batch, longest)), 8 * log_probs.size, "ctc")


def torch_runner(formula: str, inputs):
    import torch
    import torch.nn.functional as functional
    first, second, *others = (torch.as_tensor(a, device="cuda") for a in inputs)
    first.requires_grad_(True)

    def focal(p, y):  # the catalogue's focal: alpha 0.25, gamma 2 on probabilities
        p_t = torch.where(y == 1, p, 1 - p)
        alpha_t = torch.where(y == 1, 0.25, 0.75)
        return (-alpha_t * (1 - p_t) ** 2 * torch.log(p_t.clamp_min(1e-12))).mean()

    losses = {"huber": lambda: functional.huber_loss(first, second),
              "bce_with_logits": lambda: functional.binary_cross_entropy_with_logits(first, second),
              "focal": lambda: focal(first, second),
              "cross_entropy": lambda: functional.cross_entropy(first, second),
              "ctc": lambda: functional.ctc_loss(first, second, *others)}

    def run():
        first.grad = None
        losses[formula]().backward()
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--small", action="store_true", help="tiny sizes: a smoke test, not a measurement")
    args = parser.parse_args()
    with_torch = importlib.util.find_spec("torch") is not None and __import__("torch").cuda.is_available()
    device = cuda.get_current_device().name if hasattr(cuda, "get_current_device") else "Numba's CUDA simulator"
    print(f"{device!s}; numba {__import__('numba').__version__}"
          + (f", torch {__import__('torch').__version__}" if with_torch else " (PyTorch CUDA not available: skipped)"))
    roofline = copy_gbs(2_000 if args.small else 256_000_000, args.repeats)
    print(f"device-to-device copy: {roofline:.0f} GB/s\n")
    print("| case | lossdsl | torch eager | lossdsl GB/s | of copy |\n|---|---|---|---|---|")
    for case, name, inputs, traffic, formula in cases(args.small):
        loss = lossdsl.load(name)
        on_device = [cuda.to_device(a) for a in inputs]
        ours = _median_seconds(lambda: loss.value_and_grad(*on_device), args.repeats)
        theirs = "—"
        if with_torch:
            seconds = _median_seconds(torch_runner(formula, inputs), args.repeats)
            theirs = f"{seconds * 1e3:.3g} ms ({seconds / ours:.2g}x)"
        gbs = traffic / ours / 1e9
        print(f"| {case} | {ours * 1e3:.3g} ms | {theirs} | {gbs:.0f} | {gbs / roofline:.0%} |")


if __name__ == "__main__":
    main()
