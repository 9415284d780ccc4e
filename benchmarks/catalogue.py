"""Every catalogue loss, lossdsl beside PyTorch eager and torch.compile: float32, value and gradient, mean.

Run: python benchmarks/catalogue.py [--quick] [--repeats 5] [--only NAME[,NAME]] [--spatial]. Inputs and PyTorch
formulas come from the test tables, so nothing is written twice: elementwise losses are sampled by
tests/references.py at N = 1e7 elements (--quick: 1e5) and computed in PyTorch by
tests/test_references_torch.py (per element, then .mean()); losses over an axis are sampled by
tests/axis_references.py as (65536, 128) rows x classes, the axis last (--quick: (2048, 128)), and computed
by tests/test_axis_torch.py with reduction "mean". Each table's first parameter setting (the defaults) is
used; float inputs are cast to float32, labels stay integer. lossdsl calls loss.value_and_grad(*inputs)
(required inputs only); PyTorch sets each differentiated input's .grad to None, computes the mean loss and
calls backward, torch.compile compiling the forward. The implementations of one loss run interleaved and
each time is the median of --repeats runs (harness.py). Losses without a PyTorch formula in the tests are
timed for lossdsl alone; losses neither table can sample are named and skipped.
--spatial times the losses over PyTorch's class axis 1 in a segmentation model's layout instead: (8, 21,
256, 256) as (N, C, H, W), 21 classes (Pascal VOC's), beside PyTorch where its function takes (N, C, d...).
"""
from __future__ import annotations

import argparse
import datetime
import os
import sys
import warnings
from typing import Callable

import numba
import numpy as np
import torch

import lossdsl
from harness import machine, median_times

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "tests"))
from axis_references import AXIS_REFERENCES, Geometry  # noqa: E402
from references import REFERENCES  # noqa: E402
from test_axis_torch import TORCH as AXIS_TORCH  # noqa: E402
from test_references_torch import TORCH as ELEMENT_TORCH  # noqa: E402

CLASSES = 128
SPATIAL = (8, 21, 256, 256)  # (N, C, H, W); --quick: (2, 21, 64, 64)
NO_FORMULA = "no PyTorch formula"
COMPILE_FAILED = "compile failed"


class Case:
    """One catalogue loss at benchmark size: its inputs and, where the tests have one, its PyTorch mean loss."""

    def __init__(self, name: str, quick: bool, rng: np.random.Generator, spatial: bool = False) -> None:
        if spatial:
            ref = AXIS_REFERENCES[name]
            self.static = ref.static or {}
            params = {**self.static, **ref.params[0]}
            shape = (2, 21, 64, 64) if quick else SPATIAL
            geometry = Geometry.of(shape, None, 1)
            sampled = ref.sample(rng, geometry.rows, geometry.length, params)
            arrays = [np.ascontiguousarray(geometry.to_call(a)) if input_name in ref.along else a
                      for input_name, a in zip(ref.inputs, sampled)]
            self.size = "x".join(map(str, shape))
            axis = AXIS_TORCH.get(name)
            takes_spatial = axis is not None and any(len(s) > 2 for s in axis[1])
            self.torch_mean = (lambda *t: axis[0](*t, None, "mean", **params)) if takes_spatial else None
        elif name in REFERENCES:
            ref = REFERENCES[name]
            self.static: dict = {}
            params = ref.params[0]
            n = 100_000 if quick else 10_000_000
            arrays = ref.sample(rng, (n,))
            self.size = f"{n:,}"
            element = ELEMENT_TORCH.get(name)
            self.torch_mean = None if element is None else lambda *t: element(*t, **params).mean()
        else:
            ref = AXIS_REFERENCES[name]
            self.static = ref.static or {}
            params = {**self.static, **ref.params[0]}
            rows = 2048 if quick else 65536
            arrays = ref.sample(rng, (rows,), CLASSES, params)
            self.size = f"{rows}x{CLASSES}"
            axis = AXIS_TORCH.get(name)
            self.torch_mean = None if axis is None else lambda *t: axis[0](*t, None, "mean", **params)
        self.inputs = [a.astype(np.float32) if a.dtype.kind == "f" else a for a in arrays]
        self.wrt = [input_name in ref.wrt for input_name in ref.inputs[:len(arrays)]]


def torch_runner(forward: Callable[..., torch.Tensor], tensors: list[torch.Tensor]) -> Callable[[], None]:
    """A fresh gradient of the mean loss `forward` gives for `tensors`."""
    def run() -> None:
        for t in tensors:
            t.grad = None
        forward(*tensors).backward()
    return run


def time_case(name: str, case: Case, repeats: int) -> tuple[float, float | str, float | str]:
    """Seconds per call of lossdsl, torch eager and torch.compile; a string for a peer that has none."""
    loss = lossdsl.load(name, **case.static)
    runners: dict[str, Callable[[], object]] = {"lossdsl": lambda: loss.value_and_grad(*case.inputs)}
    peers: dict[str, str] = {"eager": NO_FORMULA, "compile": NO_FORMULA}
    if case.torch_mean is not None:
        tensors = [torch.tensor(a, requires_grad=w) for a, w in zip(case.inputs, case.wrt)]
        runners["eager"] = torch_runner(case.torch_mean, tensors)
        torch._dynamo.reset()  # each loss compiles afresh: no recompile limit carried over
        compiled = torch_runner(torch.compile(case.torch_mean), tensors)
        try:
            for _ in range(2):  # compile, then the first call of the compiled graph
                compiled()
            runners["compile"] = compiled
        except Exception as error:  # torch.compile fails with many error types; any one fails the cell
            print(f"torch.compile failed for {name}: {type(error).__name__}", file=sys.stderr)
            peers["compile"] = COMPILE_FAILED
    settle = 0.02 if case.inputs[0].size >= 1_000_000 else 0.0
    times = {**peers, **median_times(runners, repeats, settle)}
    return times["lossdsl"], times["eager"], times["compile"]


def ratio(peer: float | str, ours: float) -> float | None:
    """The peer's time over lossdsl's; None where the peer has no time."""
    return peer / ours if isinstance(peer, float) else None


def cell(seconds: float | str) -> str:
    """Milliseconds, or the note that stands in for them."""
    return f"{seconds * 1e3:.2f}" if isinstance(seconds, float) else seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N = 1e5 and (2048, 128)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--only", type=lambda names: names.split(","), metavar="NAME[,NAME]",
                        help="time only these catalogue losses")
    parser.add_argument("--spatial", action="store_true",
                        help=f"losses over PyTorch's class axis 1 at {SPATIAL} (N, C, H, W)")
    args = parser.parse_args()
    names = lossdsl.catalogue()
    unknown = sorted(set(args.only or ()) - set(names))
    if unknown:
        parser.error(f"not in the catalogue: {', '.join(unknown)}")
    torch.set_num_threads(os.cpu_count())
    warnings.filterwarnings("ignore", "reduction: 'mean' divides the total loss")  # kl_div's notice
    print(f"{datetime.date.today()}; {machine()}; torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"numba {numba.__version__} ({numba.get_num_threads()} threads); float32, value and gradient, mean")

    rng = np.random.default_rng(0)
    rows, skipped = [], []
    if args.spatial:  # the table keys of losses over a class axis 1 (what PyTorch's (N, C, d...) means)
        names = [key for key, ref in AXIS_REFERENCES.items() if ref.default_axis == 1 and not ref.elementwise]
    for name in args.only or names:
        if name not in REFERENCES and name not in AXIS_REFERENCES:
            skipped.append(name)
            continue
        case = Case(name, args.quick, rng, args.spatial)
        print(f"timing {name} {case.size}", file=sys.stderr)
        ours, eager, compiled = time_case(name, case, args.repeats)
        rows.append((name, case.size, ours, eager, compiled))
    rows.sort(key=lambda row: (ratio(row[4], row[2]) is None, ratio(row[4], row[2]) or 0.0))

    print("\n| loss | size | lossdsl ms | torch eager ms | torch.compile ms | eager / lossdsl | compile / lossdsl |")
    print("|---|---|---|---|---|---|---|")
    for name, size, ours, eager, compiled in rows:
        ratios = [f"{r:.2f}" if r is not None else "—" for r in (ratio(eager, ours), ratio(compiled, ours))]
        print(f"| {name} | {size} | {cell(ours)} | {cell(eager)} | {cell(compiled)} | {' | '.join(ratios)} |")
    timed = [(ratio(compiled, ours), name) for name, _, ours, _, compiled in rows if isinstance(compiled, float)]
    if timed:
        worst, worst_name = min(timed)
        print(f"\nworst compile / lossdsl: {worst:.2f} ({worst_name})")
    short = [name for name, _, ours, _, _ in rows if ours < 0.005]
    if short and not args.quick:
        print(f"lossdsl under 5 ms: {', '.join(short)}")
    for name in skipped:
        print(f"skipped {name}: neither tests/references.py nor tests/axis_references.py can sample its inputs")


if __name__ == "__main__":
    main()
