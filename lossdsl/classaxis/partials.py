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
sum / C, ...) and write their own level's partials. What is combined is only ever these slots
(lossdsl.classaxis.levels, which the runtime reads without SymPy), so a collective operation over
processes merges them the same way.
"""
from __future__ import annotations

from dataclasses import dataclass

import sympy

from ..symbolic.reductions import Load, Reduction, RowPlan, arg_symbol, gradient_parts, needed
from .levels import SLOTS, Levels, Slot

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
        return SLOTS[self.op]


@dataclass(frozen=True)
class BlockPlan:
    """The nodes of a row plan in levels, and where each keeps its partials (float64 slots per row)."""

    plan: RowPlan
    nodes: tuple[Node, ...]
    levels: int
    width: int  # slots per row (before a list axis's loads: K slots each after these, known at call time)
    outputs: bool  # whether the spec's `output` values are computed too

    def at(self, level: int) -> tuple[Node, ...]:
        return tuple(n for n in self.nodes if n.level == level)

    @property
    def layout(self) -> Levels:
        """What the runtime needs of this plan, without SymPy: written into the block kernels' module."""
        return Levels(tuple(Slot(n.op, n.level, n.slot) for n in self.nodes))


def block_plan(plan: RowPlan, outputs: bool = False) -> BlockPlan:
    """Levels and slots for the forward reductions the loss, its gradient (and with `outputs` the
    spec's `output` values) need, the loads and the backward sums. (The `ignore` rule reads no
    reduction or load: resolve refuses that, so a kernel can decide it before any pass.)"""
    sources: list[Reduction | Load] = [*plan.loads, *needed(plan, True, outputs), *gradient_parts(plan).backward]
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
        slot += len(SLOTS[op])
    # a list axis's loads x[ids], level 0: K slots each, known at call time, after the others (levels.Levels.of)
    lists = tuple(Node(load.symbol, "list_load", 0, ordinal, load)
                  for ordinal, load in enumerate(plan.listed.loads if plan.listed is not None else ()))
    levels = max([*level.values(), *(0 for _ in lists)], default=-1) + 1
    return BlockPlan(plan, tuple(nodes) + lists, levels, slot, outputs)
