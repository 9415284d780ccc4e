"""A loss over a class axis whose classes are split across processes (tensor-parallel vocabularies).

Each process holds the logits of a slice of the classes, [class_start, class_start + C_local),
and the same labels. The loss's block plan (lossdsl.classaxis.partials) says what each level of its
reductions needs; a process computes its slice's partials, and `reduce_level` makes them whole
with collective operations that whoever runs the processes supplies (`all_reduce(array, op)`
returning the array reduced over all processes, op "sum" or "max": torch.distributed, JAX's
psum/pmax, MPI):

    one MAX    the logsumexp shifts (-inf where a slice's exp-sum is 0), the extremes (a min
               negated), and whether any process saw a NaN there
    one SUM    sums, means and norms, the gathered label entries (0 on processes without the
               label), and each exp-sum rescaled to the common shift
    one MAX    (only with max or min) the first position of the extreme, negated

Every process then computes the same loss from the whole partials, and its own slice of the
gradient with no further communication. `describe` prints the plan.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import sympy

from ..runtime import buffers
from .blocked import BlockRun
from ..errors import LossInputError
from ..runtime.layout import MEANS, axis_span, by_name, float_dtype, reduced
from .partials import BlockPlan
from ..symbolic.reductions import Load
from ..symbolic.derive import to_text

AllReduce = Callable[[object, str], object]  # an array reduced over every process, op "sum" or "max"


def reduce_level(plan: BlockPlan, partial, level: int, all_reduce: AllReduce, xp=np):
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


def describe(plan: BlockPlan) -> str:
    """The collectives of `plan`, level by level, with what each carries per row."""
    lines = []
    for level in range(plan.levels):
        nodes = plan.at(level)
        shifts = [n for n in nodes if n.op == "logsumexp"]
        extremes = [n for n in nodes if n.op in ("max", "min")]
        summed = [n for n in nodes if n.op not in ("max", "min")]
        lines.append(f"level {level}:")
        lines += [f"  {_named(n, plan)}" for n in nodes if not isinstance(n.source, Load)]
        if shifts or extremes:
            lines.append(f"  all-reduce MAX  {len(shifts) + 2 * len(extremes)} float64 per row: " + ", ".join(
                [f"shift of {n.symbol}" for n in shifts] + [f"{n.symbol} and whether a NaN" for n in extremes]))
        lines.append(f"  all-reduce SUM  {len(summed)} float64 per row: " + ", ".join(
            f"exp-sum of {n.symbol}" if n.op == "logsumexp" else _label(n) for n in summed))
        if extremes:
            lines.append(f"  all-reduce MAX  {len(extremes)} float64 per row: first position of "
                         + ", ".join(str(n.symbol) for n in extremes))
    total = sum(2 if n.op == "logsumexp" else 3 if n.op in ("max", "min") else 1 for n in plan.nodes)
    rounds = sum(1 + any(n.op in ("logsumexp", "max", "min") for n in plan.at(k))
                 + any(n.op in ("max", "min") for n in plan.at(k)) for k in range(plan.levels))
    lines.append(f"{rounds} all-reduces, {8 * total} bytes per row; then the value on every process and each "
                 "process's gradient slice, with no more communication")
    return "\n".join(lines)


def _label(node) -> str:
    source = node.source
    return f"{source.input}[{source.label}]" if isinstance(source, Load) else str(node.symbol)


def _named(node, plan: BlockPlan) -> str:
    """A node as a formula: x[y], or op(body, c) with the loads and earlier reductions it uses by name."""
    source = node.source
    if isinstance(source, Load):
        return f"{source.input}[{source.label}]"
    names = {n.symbol: sympy.Symbol(_label(n)) for n in plan.nodes}
    names[plan.plan.length] = sympy.Symbol(f"len({plan.plan.position})")
    return f"{source.symbol} = {source.op}({to_text(source.body.xreplace(names))}, {plan.plan.position})"


def shard_arrays(loss, arrays: dict, class_start: int, classes: int, axis) -> dict:
    """`loss`'s inputs by name as one process holds them (None where left out), with a whole
    per-class vector cut to this process's slice; the slice must lie within the classes."""
    resolved = loss._resolved
    arrays = {i.name: arrays.get(i.name) for i in resolved.inputs}
    first = arrays[resolved.inputs[0].name]
    low, high = axis_span(loss.name, first.shape, axis, resolved.axis_position)
    local = math.prod(first.shape[low:high + 1])
    if not (0 <= class_start and class_start + local <= classes):
        raise LossInputError(f"{loss.name}: classes {class_start}..{class_start + local - 1} of this slice are not "
                             f"within the {classes} classes")
    for spec_input in resolved.inputs:
        value = arrays[spec_input.name]
        if spec_input.axis and value is not None and value.shape == (classes,) and classes != local:
            arrays[spec_input.name] = value[class_start:class_start + local]
    return arrays


class ShardedLoss:
    """`loss` over a class axis of which this process holds the slice starting at `class_start`, of
    `classes` in all; `all_reduce` combines across the processes (see the module docstring)."""

    def __init__(self, loss, all_reduce: AllReduce):
        resolved = getattr(loss, "_resolved", None)
        if resolved is None or resolved.axis is None or resolved.axis_position == "all":
            raise LossInputError(f"{getattr(loss, 'name', loss)}: sharding needs a loss over a class axis")
        self.loss, self.all_reduce = loss, all_reduce

    def plan(self) -> str:
        return describe(self.loss._backend.block_plan())

    def value_and_grad(self, *inputs, class_start: int, classes: int, reduction: str = "mean", sample_weight=None,
                       axis=None, **named_inputs):
        """(the loss, the same on every process; the gradient of this process's slice of the first input).

        Inputs as the loss takes them, with the class axis holding this slice: the logits
        (..., C_local, ...), probability targets likewise; a per-class vector either whole (C,) or
        sliced (C_local,); labels and per-row inputs whole, the same on every process."""
        if reduction not in (*MEANS, "sum", "none"):
            raise LossInputError(f"{self.loss.name}: reduction must be 'mean', 'mean_or_zero', 'sum' or 'none'; "
                                 f"got {reduction!r}")
        resolved = self.loss._resolved
        names = [i.name for i in resolved.inputs]
        given = by_name(self.loss.name, names, [i.name for i in resolved.inputs if i.default is None], inputs,
                        named_inputs, self.loss.bound)
        arrays = {name: None if given.get(name) is None else np.asarray(given[name]) for name in names}
        dtype = float_dtype([arrays[n] for n in resolved.wrt], resolved.wrt)
        run = BlockRun(self.loss, int(classes), dtype)
        block = run.call(shard_arrays(self.loss, arrays, class_start, classes, axis), sample_weight, axis)
        done = run.plan.empty(block.rows)
        for level in range(run.plan.levels):
            with np.errstate(invalid="ignore", over="ignore"):
                done = reduce_level(run.plan, run.add_partials(block, class_start, done, level), level, self.all_reduce)
        values, norms = run.value(block, done)
        divisor = float(norms.sum())
        value = values if reduction == "none" else reduced(values.sum(dtype=np.float64), divisor, reduction, dtype)
        grad = buffers.empty(block.grad_size, dtype)  # recycled: a fresh slice-sized array costs page faults
        run.gradient(block, class_start, done, grad, 1.0 / divisor if reduction in MEANS and divisor else 1.0)
        return value, grad.reshape(block.full)
