"""The partials of a class-axis loss as the runtime sees them: no SymPy, only slots and levels.

A block plan (lossdsl.classaxis.partials) is made once, when the block kernels are generated, and
written into their module as the literal `PARTIALS`: for each reduction or load, its op, its level
and its first slot in a row of float64 partials. `Levels` reads that literal back, so a cached loss
runs in block mode (a linear head, a sharded loss, the JAX adapter) without importing SymPy.

`sweep` is the one loop over levels that all of them run. For each level, the caller's blocks are
combined into the running partials (`combine`). With `all_reduce`, they are then combined with
every other process's partials (`reduce_level`: the collectives on NumPy or jax.numpy arrays).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

# the slots of each kind of node, and what an empty block holds in them
SLOTS = {"sum": ("sum",), "mean": ("sum",), "norm": ("sum",), "load": ("sum",), "list_load": ("sum",),
         "logsumexp": ("shift", "exp_sum"), "max": ("max", "position"), "min": ("min", "position")}
_EMPTY = {"sum": 0.0, "exp_sum": 0.0, "shift": -np.inf, "max": -np.inf, "min": np.inf, "position": 0.0}

AllReduce = Callable[[object, str], object]  # an array reduced over every process, op "sum" or "max"


@dataclass(frozen=True)
class Slot:
    """One reduction or load: its op ("load" or a reduction's), its level, its first slot."""
    op: str
    level: int
    slot: int

    @property
    def slots(self) -> tuple[str, ...]:
        return SLOTS[self.op]


@dataclass(frozen=True)
class Levels:
    """Every node's slots, in the order of the block plan; `width` float64 slots per row."""
    nodes: tuple[Slot, ...]

    @classmethod
    def of(cls, literal: tuple[tuple[str, int, int], ...], list_length: int = 0) -> "Levels":
        """From a generated module's PARTIALS. A list axis's load x[ids] ("list_load", its slot its ordinal)
        becomes `list_length` loads, one per position of k, after every other node's slots (where the block
        kernels write them: slot width + ordinal * K + k)."""
        fixed = tuple(Slot(*node) for node in literal if node[0] != "list_load")
        width = sum(len(n.slots) for n in fixed)
        listed = tuple(Slot("load", level, width + ordinal * list_length + k)
                       for op, level, ordinal in literal if op == "list_load" for k in range(list_length))
        return cls(fixed + listed)

    def literal(self) -> tuple[tuple[str, int, int], ...]:
        return tuple((n.op, n.level, n.slot) for n in self.nodes)

    @property
    def levels(self) -> int:
        return max((n.level for n in self.nodes), default=-1) + 1

    @property
    def width(self) -> int:
        return sum(len(n.slots) for n in self.nodes)

    def at(self, level: int) -> tuple[Slot, ...]:
        return tuple(n for n in self.nodes if n.level == level)

    def empty(self, rows: int) -> np.ndarray:
        """Partials of no block at all: (rows, width) float64."""
        partials = np.empty((rows, self.width))
        for node in self.nodes:
            for k, kind in enumerate(node.slots):
                partials[:, node.slot + k] = _EMPTY[kind]
        return partials

    def combine(self, running: np.ndarray, block: np.ndarray, level: int) -> None:
        """Merge one block's partials of `level` (rows, width) into the running ones, in place; blocks
        come in order along the axis (a tie between extremes keeps the earlier position)."""
        with np.errstate(invalid="ignore", over="ignore"):
            for node in self.at(level):
                k = node.slot
                if node.slots == ("sum",):
                    running[:, k] += block[:, k]
                elif node.op == "logsumexp":
                    _combine_exp_sums(running[:, k], running[:, k + 1], block[:, k], block[:, k + 1])
                else:
                    _combine_extremes(running[:, k:k + 2], block[:, k:k + 2], node.op)


def sweep(levels: Levels, done, add_level: Callable[[int, object], object], all_reduce: AllReduce | None = None,
          xp=np):
    """The partials `done` made whole, level by level: `add_level(level, done)` combines this process's
    blocks of that level into them, then `all_reduce` (if given) every process's."""
    for level in range(levels.levels):
        done = add_level(level, done)
        if all_reduce is not None:
            with np.errstate(invalid="ignore", over="ignore"):
                done = reduce_level(levels, done, level, all_reduce, xp)
    return done


def reduce_level(plan: Levels, partial, level: int, all_reduce: AllReduce, xp=np):
    """This process's partials (rows, slots) with those of `level` made whole over all processes: a new
    array. `xp` is the array module (NumPy, or jax.numpy with psum/pmax as `all_reduce`)."""
    nodes = plan.at(level)
    exp_sums = [n.slot for n in nodes if n.op == "logsumexp"]
    extremes = [n for n in nodes if n.op in ("max", "min")]
    sums = [n.slot for n in nodes if n.slots == ("sum",)]
    columns = [partial[:, k] for k in range(plan.width)]
    totals = [partial[:, k] for k in sums]
    if exp_sums or extremes:
        shifts = [xp.where(partial[:, k + 1] == 0, -xp.inf, partial[:, k]) for k in exp_sums]
        values = [_signed(partial[:, n.slot], n.op) for n in extremes]
        nans = [xp.isnan(v) for v in values]
        largest = all_reduce(xp.stack(shifts + [xp.where(nan, -xp.inf, v) for v, nan in zip(values, nans)]
                                      + [nan.astype(partial.dtype) for nan in nans], axis=1), "max")
        common = [largest[:, j] for j in range(len(exp_sums))]
        totals += [xp.where(partial[:, k + 1] == 0, 0.0, partial[:, k + 1] * xp.exp(shift - top))
                   for k, shift, top in zip(exp_sums, shifts, common)]
    reduced = all_reduce(xp.stack(totals, axis=1), "sum")
    for j, k in enumerate(sums):
        columns[k] = reduced[:, j]
    for j, k in enumerate(exp_sums):
        columns[k], columns[k + 1] = common[j], reduced[:, len(sums) + j]
    if extremes:
        count, first = len(extremes), len(exp_sums)
        best, any_nan = largest[:, first:first + count], largest[:, first + count:] > 0
        holds = [xp.where(any_nan[:, j], nans[j], values[j] == best[:, j]) for j in range(count)]
        positions = all_reduce(xp.stack([xp.where(held, -partial[:, n.slot + 1], -xp.inf)
                                         for held, n in zip(holds, extremes)], axis=1), "max")
        for j, node in enumerate(extremes):
            columns[node.slot] = xp.where(any_nan[:, j], xp.nan, _signed(best[:, j], node.op))
            columns[node.slot + 1] = -positions[:, j]
    return xp.stack(columns, axis=1)


def _signed(values: np.ndarray, op: str) -> np.ndarray:
    """A max as it is, a min negated: one MAX serves both."""
    return values if op == "max" else -values


def _combine_exp_sums(shift, total, block_shift, block_total) -> None:
    """(shift, sum of exp(x - shift)) pairs: both sums rescaled to the larger shift; a sum of 0
    (an empty or all -inf block, whose shift the kernel sets to 0) has no say in the shift and
    stays 0, and NaN and inf sums carry through."""
    new_shift = np.maximum(np.where(total == 0, -np.inf, shift), np.where(block_total == 0, -np.inf, block_shift))
    mine = np.where(total == 0, 0.0, total * np.exp(shift - new_shift))
    theirs = np.where(block_total == 0, 0.0, block_total * np.exp(block_shift - new_shift))
    total[:] = mine + theirs
    shift[:] = new_shift


def _combine_extremes(running: np.ndarray, block: np.ndarray, op: str) -> None:
    """(extreme, position) pairs: the block's wins if strictly more extreme, or NaN where the running
    one is not (NaN wins, as in torch.max)."""
    value, candidate = running[:, 0], block[:, 0]
    better = candidate > value if op == "max" else candidate < value
    wins = better | (np.isnan(candidate) & ~np.isnan(value))
    running[wins] = block[wins]
