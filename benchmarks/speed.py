"""lossdsl's fused kernels beside PyTorch (eager, torch.compile), JAX and NumPy, with a roofline.

Run: python benchmarks/speed.py [--repeats 7] [--quick]. float32, value and gradient with
respect to the prediction, reduction "mean". Each case times every available implementation
in one process, interleaved (harness.py); missing peers are skipped with a note. The same run
measures the machine's memory bandwidth (a STREAM-like triad) and reports each lossdsl time as
GB/s of compulsory traffic and as a fraction of that roofline. Then start-up (import, a cached
load, a cold compile, each in a fresh process) and float32 accuracy of a mean over 1e8 elements.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import textwrap

import numba
import numpy as np

import lossdsl
from harness import machine, median_times
from peers import PEERS, available_peers


def triad_gbs(n: int = 20_000_000, repeats: int = 7) -> float:
    """Memory bandwidth of a parallel a = b + s*c over float32 (12 bytes an element)."""

    @numba.njit(parallel=True)
    def triad(a, b, c, s):
        for i in numba.prange(a.size):
            a[i] = b[i] + s * c[i]

    a, b, c = np.empty(n, np.float32), np.ones(n, np.float32), np.ones(n, np.float32)
    seconds = median_times({"triad": lambda: triad(a, b, c, np.float32(0.5))}, repeats)["triad"]
    return 12 * n / seconds / 1e9


def cases(quick: bool):
    """(case name, catalogue loss, float32 inputs, compulsory bytes moved)."""
    rng = np.random.default_rng(0)
    sizes = [1_000, 10_000, 100_000, 1_000_000] + ([] if quick else [10_000_000])  # 1e3: call overhead
    for name in ("huber", "mse"):
        for n in sizes:
            pred, target = rng.normal(size=n).astype(np.float32), rng.normal(size=n).astype(np.float32)
            yield f"{name} N={n:.0e}", name, (pred, target), 12 * n
    n = 1_000_000 if quick else 10_000_000
    logits, labels = rng.normal(size=n).astype(np.float32), (rng.uniform(size=n) > 0.5).astype(np.float32)
    for name in ("bce_with_logits", "sigmoid_focal"):
        yield f"{name} N={n:.0e}", name, (logits, labels), 12 * n
    yield f"log_cosh N={n:.0e}", "log_cosh", (logits, labels), 12 * n
    for rows, classes in [(8192, 1000), (65536, 128)] + ([] if quick else [(1024, 32000)]):
        x = rng.normal(size=(rows, classes)).astype(np.float32)
        y = rng.integers(0, classes, rows)
        yield f"cross_entropy {rows}x{classes}", "cross_entropy", (x, y), 8 * rows * classes
    # a segmentation batch in PyTorch's layout, (N, C, H, W) with the classes on axis 1 (Pascal VOC's 21)
    x = rng.normal(size=(8, 21, 128, 128) if quick else (8, 21, 256, 256)).astype(np.float32)
    y = rng.integers(0, 21, (x.shape[0], *x.shape[2:]))
    yield f"cross_entropy {'x'.join(map(str, x.shape))}", "cross_entropy", (x, y), 8 * x.size
    a, p, q = (rng.normal(size=(65536, 128)).astype(np.float32) for _ in range(3))
    yield "triplet 65536x128", "triplet", (a, p, q), 24 * a.size


def time_cases(args, roofline: float) -> None:
    peers = available_peers()
    missing = sorted(set(PEERS) - set(peers))
    if missing:
        print(f"(not installed, skipped: {', '.join(missing)})")
    names = ["lossdsl", *peers]
    print(f"\n| case | {' | '.join(names)} | lossdsl GB/s | of triad |")
    print("|---|" + "---|" * (len(names) + 2))
    for case, name, inputs, traffic in cases(args.quick):
        if args.only and name not in args.only:
            continue
        loss = lossdsl.load(name)
        runners = {"lossdsl": lambda loss=loss, inputs=inputs: loss.value_and_grad(*inputs)}
        for peer, make in peers.items():
            runner = make(name, inputs)
            if runner is not None:
                runners[peer] = runner
        size = inputs[0].size
        repeats = args.repeats if size >= 100_000 else 10 * args.repeats  # short calls: more samples
        times = median_times(runners, repeats, settle=0.02 if size >= 1_000_000 else 0.0)
        ours = times["lossdsl"]
        cells = [f"{ours * 1e3:.3g} ms"] + [f"{times[p] * 1e3:.3g} ms ({times[p] / ours:.2g}x)" if p in times
                                             else "—" for p in peers]
        gbs = traffic / ours / 1e9
        print(f"| {case} | {' | '.join(cells)} | {gbs:.1f} | {gbs / roofline:.0%} |")


def startup() -> None:
    """Fresh processes: import, a cached catalogue loss ready, a cold compile; and, for scale,
    the first call of a one-line cached Numba kernel (Numba's own start-up, paid by any user)."""
    probe = textwrap.dedent("""
        import sys, time
        t0 = time.perf_counter(); import numba; t1 = time.perf_counter()
        import numpy as np, lossdsl; t2 = time.perf_counter()
        after_import = ("sympy" in sys.modules, "lark" in sys.modules)
        loss = lossdsl.load("huber"); loss.value_and_grad(np.ones(3, np.float32), np.zeros(3, np.float32))
        t3 = time.perf_counter()
        print(t1 - t0, t2 - t1, t3 - t2, *after_import)
    """)
    floor = textwrap.dedent("""
        import sys, time
        import numba, numpy as np
        sys.path.insert(0, sys.argv[1])
        t0 = time.perf_counter(); import one_line; one_line.f(np.ones(3)); print(time.perf_counter() - t0)
    """)
    with tempfile.TemporaryDirectory() as cold:
        env = {**os.environ, "LOSSDSL_CACHE_DIR": cold}
        runs = [subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
                for _ in range(2)]
        with open(os.path.join(cold, "one_line.py"), "w", encoding="utf-8") as module:
            module.write("import numba\n\n@numba.njit(cache=True)\ndef f(a):\n    return a.sum()\n")
        numba_first = [subprocess.run([sys.executable, "-c", floor, cold], capture_output=True, text=True,
                                      check=True).stdout for _ in range(2)][1]
    (numba_s, import_s, cold_s, *_), (_, import_warm, warm_s, sympy_loaded, lark_loaded) = (
        r.stdout.split() for r in runs)
    ready = float(import_warm) + float(warm_s)
    print(f"\nstart-up: import numba {float(numba_s):.2f} s; import lossdsl {float(import_warm):.2f} s after it "
          f"(SymPy imported: {sympy_loaded}, Lark: {lark_loaded}); cached huber loaded and called in "
          f"{float(warm_s):.2f} s, so ready {ready:.2f} s after import numba, of which Numba's own first call of "
          f"a cached one-line kernel takes {float(numba_first):.2f} s (lossdsl's part: "
          f"{ready - float(numba_first):.2f} s); cold compile + first call {float(import_s) + float(cold_s):.2f} s "
          f"(import lossdsl included)")


def accuracy(n: int = 100_000_000) -> None:
    """A float32 mean over 1e8 huber elements against a float64 reference."""
    rng = np.random.default_rng(1)
    pred = rng.normal(size=n).astype(np.float32)
    target = rng.normal(size=n).astype(np.float32)
    value = lossdsl.load("huber")(pred, target)
    chunks = []
    for start in range(0, n, 10_000_000):
        d = np.abs(pred[start:start + 10_000_000].astype(np.float64) - target[start:start + 10_000_000])
        chunks.append(np.where(d < 1, 0.5 * d * d, d - 0.5).sum())
    reference = sum(chunks) / n
    print(f"\naccuracy: float32 huber mean over {n:.0e} elements {float(value)!r} vs float64 {reference!r}: "
          f"relative error {abs(float(value) - reference) / reference:.1e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, no start-up or accuracy runs")
    parser.add_argument("--only", nargs="*", metavar="LOSS", help="time only these catalogue losses")
    args = parser.parse_args()
    versions = [f"numpy {np.__version__}", f"numba {numba.__version__}"]
    for module in ("torch", "jax"):
        if importlib.util.find_spec(module):
            versions.append(f"{module} {__import__(module).__version__}")
    print(f"{machine()}; {numba.get_num_threads()} threads; Python {sys.version.split()[0]}; {', '.join(versions)}")
    roofline = triad_gbs()
    print(f"triad (a = b + s*c, float32, {numba.get_num_threads()} threads): {roofline:.1f} GB/s")
    time_cases(args, roofline)
    if not args.quick and not args.only:
        startup()
        accuracy()


if __name__ == "__main__":
    main()
