"""A loss's reductions over its class axis, computed a block of classes at a time.

When a row's classes are not all in one place (a linear head computing its logits a block of
classes at a time, or, later, a class axis split across processes), each reduction of the
row plan (reductions.RowPlan) is computed as partials, one per block, that combine into the
whole:

    sum, mean, norm   a running sum (of the body, or of |body|^p)     partials add
    logsumexp         (shift, sum of exp(body - shift)), shift its     sums rescaled to the
                      block's maximum (0 where that is infinite)       larger shift, then add
    max, min          (first extreme, its position along the axis)    the extreme wins; a tie
                                                                       keeps the earlier block
    x[y] (a load)     the value where the block holds y, else 0        partials add

A reduction whose body uses another reduction (the exp-sum of a softmax that needs its
logsumexp, a backward sum that needs them all) must wait for that one to be whole: the nodes
fall into levels, each level one sweep over the blocks. The kernels (codegen/blocks.py) read
combined partials of the earlier levels, finish them (logsumexp = shift + log(sum), mean =
sum / C, ...) and write their own level's partials; `combine` merges a block's partials into
the running ones. What is combined is only ever these slots, so a collective operation over
processes could merge them the same way.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import sympy

from ..symbolic.reductions import Load, Reduction, RowPlan, arg_symbol, needed

# the slots of each kind of node, and what an empty block holds in them
_SLOTS = {"sum": ("sum",), "mean": ("sum",), "norm": ("sum",), "load": ("sum",),
          "logsumexp": ("shift", "exp_sum"), "max": ("max", "position"), "min": ("min", "position")}
_EMPTY = {"sum": 0.0, "exp_sum": 0.0, "shift": -np.inf, "max": -np.inf, "min": np.inf, "position": 0.0}


@dataclass(frozen=True)
class Node:
    """A reduction or a load, with its level and its first slot in the partials array."""

    symbol: sympy.Symbol
    op: str  # a reduction's op, or "load"
    level: int
    slot: int
    source: Reduction | Load

    @property
    def slots(self) -> tuple[str, ...]:
        return _SLOTS[self.op]


@dataclass(frozen=True)
class BlockPlan:
    """The nodes of a row plan in levels, and where each keeps its partials (float64 slots per row)."""

    plan: RowPlan
    nodes: tuple[Node, ...]
    levels: int
    width: int  # slots per row
    outputs: bool  # whether the spec's `output` values are computed too

    def at(self, level: int) -> tuple[Node, ...]:
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


def block_plan(plan: RowPlan, outputs: bool = False) -> BlockPlan:
    """Levels and slots for the forward reductions the loss, its gradient (and with `outputs` the
    spec's `output` values) need, the loads and the backward sums. (The `ignore` rule reads no
    reduction or load: resolve refuses that, so a kernel can decide it before any pass.)"""
    sources: list[Reduction | Load] = [*plan.loads, *needed(plan, True, outputs), *plan.backward]
    extremes = {arg_symbol(s): s.symbol for s in sources if isinstance(s, Reduction) and s.op in ("max", "min")}
    level: dict[sympy.Symbol, int] = {}
    nodes, slot = [], 0
    for source in sources:  # loads first, then reductions in dependency order
        if isinstance(source, Load):
            depth, op = 0, "load"
        else:
            used = source.body.free_symbols | (source.order.free_symbols if source.order is not None else set())
            deps = {extremes.get(s, s) for s in used} & set(level)
            depth, op = max((level[d] + 1 for d in deps), default=0), source.op
        level[source.symbol] = depth
        nodes.append(Node(source.symbol, op, depth, slot, source))
        slot += len(_SLOTS[op])
    return BlockPlan(plan, tuple(nodes), max(level.values(), default=-1) + 1, slot, outputs)
