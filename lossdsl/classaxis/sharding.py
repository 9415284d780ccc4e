"""A loss over a class axis whose classes are split across processes (tensor-parallel vocabularies).

Each process holds the logits of a slice of the classes, [class_start, class_start + C_local),
and the same labels. The loss's block plan (lossdsl.classaxis.partials) says what each level of its
reductions needs; a process computes its slice's partials, and `levels.reduce_level` makes them whole
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

import dataclasses
import math

import numpy as np

from ..errors import LossInputError
from ..runtime import buffers
from ..runtime.layout import axis_span, by_name, float_dtype, reduced
from ..runtime.protocol import MEANS, LossKind, Signature
from .blocked import BlockRun
from .levels import AllReduce, sweep

def describe(plan) -> str:
    """The collectives of `plan` (a lossdsl.classaxis.partials.BlockPlan), level by level, with what each
    carries per row."""
    lines = []
    for level in range(plan.levels):
        nodes = plan.at(level)
        shifts = [n for n in nodes if n.op == "logsumexp"]
        extremes = [n for n in nodes if n.op in ("max", "min")]
        summed = [n for n in nodes if n.op not in ("max", "min")]
        lines.append(f"level {level}:")
        lines += [f"  {_named(n, plan)}" for n in nodes if n.op not in ("load", "list_load")]
        if shifts or extremes:
            lines.append(f"  all-reduce MAX  {len(shifts) + 2 * len(extremes)} float64 per row: " + ", ".join(
                [f"shift of {n.symbol}" for n in shifts] + [f"{n.symbol} and whether a NaN" for n in extremes]))
        lists = sum(n.op == "list_load" for n in summed)
        count = f"{len(summed) - lists}" + (f" + {lists} x K" if lists else "")
        lines.append(f"  all-reduce SUM  {count} float64 per row: " + ", ".join(
            f"exp-sum of {n.symbol}" if n.op == "logsumexp" else _label(n) for n in summed))
        if extremes:
            lines.append(f"  all-reduce MAX  {len(extremes)} float64 per row: first position of "
                         + ", ".join(str(n.symbol) for n in extremes))
    total = sum(2 if n.op == "logsumexp" else 3 if n.op in ("max", "min") else 1
                for n in plan.nodes if n.op != "list_load")
    listed = sum(n.op == "list_load" for n in plan.nodes)
    rounds = sum(1 + any(n.op in ("logsumexp", "max", "min") for n in plan.at(k))
                 + any(n.op in ("max", "min") for n in plan.at(k)) for k in range(plan.levels))
    per_row = f"{8 * total}" + (f" + {8 * listed} x K" if listed else "")
    lines.append(f"{rounds} all-reduces, {per_row} bytes per row; then the value on every process and each "
                 "process's gradient slice, with no more communication")
    return "\n".join(lines)


def _label(node) -> str:
    source = node.source
    if node.op == "list_load":
        return f"{source.input}[{source.label}] (K of them: one per position of the list axis)"
    return f"{source.input}[{source.label}]" if node.op == "load" else str(node.symbol)


def _named(node, plan) -> str:
    """A node as a formula: x[y], or op(body, c) with the loads and earlier reductions it uses by name."""
    source = node.source
    if node.op == "load":
        return f"{source.input}[{source.label}]"
    import sympy  # a block plan's formulas: describing one is the CLI's `show --plan`, not a call
    from ..symbolic.derive import to_text
    names = {n.symbol: sympy.Symbol(_label(n)) for n in plan.nodes}
    names[plan.plan.length] = sympy.Symbol(f"len({plan.plan.position})")
    return f"{source.symbol} = {source.op}({to_text(source.body.xreplace(names))}, {plan.plan.position})"


def _list_length(loss, arrays: dict, axis) -> int:
    """K, the length of the list axis (where the class axis is in its inputs), or 0 for a loss without one."""
    spec = loss.signature
    listed = [arrays[i.name] for i in spec.inputs if i.axis and i.axis == spec.list_axis and arrays[i.name] is not None]
    if not listed:
        return 0
    low, _ = axis_span(loss.name, arrays[spec.inputs[0].name].shape, axis, spec.axis_position)
    return int(listed[0].shape[low])


def shard_arrays(loss, arrays: dict, class_start: int, classes: int, axis) -> dict:
    """`loss`'s inputs by name as one process holds them (None where left out), with a whole
    per-class vector cut to this process's slice; the slice must lie within the classes."""
    spec = loss.signature
    arrays = {i.name: arrays.get(i.name) for i in spec.inputs}
    first = arrays[spec.inputs[0].name]
    low, high = axis_span(loss.name, first.shape, axis, spec.axis_position)
    local = math.prod(first.shape[low:high + 1])
    if not (0 <= class_start and class_start + local <= classes):
        raise LossInputError(f"{loss.name}: classes {class_start}..{class_start + local - 1} of this slice are not "
                             f"within the {classes} classes")
    for spec_input in spec.inputs:
        value = arrays[spec_input.name]
        if spec_input.axis and value is not None and value.shape == (classes,) and classes != local:
            arrays[spec_input.name] = value[class_start:class_start + local]
    return arrays


class ShardedLoss:
    """`loss` over a class axis of which this process holds the slice starting at `class_start`, of
    `classes` in all; `all_reduce` combines across the processes (see the module docstring)."""

    def __init__(self, loss, all_reduce: AllReduce):
        spec = getattr(loss, "signature", None)
        if spec is None or spec.kind is not LossKind.ROWS or spec.axis_position == "all":
            raise LossInputError(f"{getattr(loss, 'name', loss)}: sharding needs a loss over a class axis")
        self.loss, self.all_reduce = loss, all_reduce

    name = property(lambda self: self.loss.name)

    @property
    def signature(self) -> Signature:
        return dataclasses.replace(self.loss.signature, kind=LossKind.SHARDED)

    def plan(self) -> str:
        return describe(self.loss.block_plan())

    def value_and_grad(self, *inputs, class_start: int, classes: int, reduction: str = "mean", sample_weight=None,
                       axis=None, **named_inputs):
        """(the loss, the same on every process; the gradient of this process's slice of the first input).

        Inputs as the loss takes them, with the class axis holding this slice: the logits
        (..., C_local, ...), probability targets likewise; a per-class vector either whole (C,) or
        sliced (C_local,); labels and per-row inputs whole, the same on every process."""
        spec = self.signature
        spec.check_reduction(reduction)
        names = [i.name for i in spec.inputs]
        given = by_name(self.loss.name, names, [i.name for i in spec.inputs if i.default is None], inputs,
                        named_inputs, self.loss.bound)
        arrays = {name: None if given.get(name) is None else np.asarray(given[name]) for name in names}
        dtype = float_dtype([arrays[n] for n in spec.wrt], spec.wrt)
        shards = shard_arrays(self.loss, arrays, class_start, classes, axis)
        run = BlockRun(self.loss, int(classes), dtype, list_length=_list_length(self.loss, shards, axis))
        block = run.call(shards, sample_weight, axis)
        done = sweep(run.levels, run.levels.empty(block.rows),
                     lambda level, done: run.add_partials(block, class_start, done, level), self.all_reduce)
        values, norms = run.value(block, done)
        divisor = float(norms.sum())
        value = values if reduction == "none" else reduced(values.sum(dtype=np.float64), divisor, reduction, dtype)
        grad = buffers.empty(block.grad_size, dtype)  # recycled: a fresh slice-sized array costs page faults
        run.gradient(block, class_start, done, grad, 1.0 / divisor if reduction in MEANS and divisor else 1.0)
        return value, grad.reshape(block.full)
