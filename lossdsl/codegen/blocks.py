"""Stage 4 for losses over an axis met a block of classes at a time: a `BlockPlan` → CPU kernels.

The arrays a call passes hold one block of the axis, positions __lo .. __lo + __width - 1
of a row of length __C (the layout and steps of codegen/rows.py, with the block's width as
the axis length). Three kernels, serial and `nogil` over rows [start, stop):
- `loss_block_pass(..., __lo, __C, __level, __done, __partial)`: the partials of one level's
  reductions and loads over this block (lossdsl.classaxis.partials), written to __partial, reading the
  combined partials of the earlier levels from __done;
- `loss_block_value(..., __lo, __C, __done, __weight, __scale, __out, __norms, __bad, __extra)`: from
  the combined partials, each row's loss (weighted sum returned, each row in __out), what "mean"
  divides by (__norms), labels outside [0, __C) (__bad) and, in the plan made with outputs, the
  spec's `output` values (__extra, NaN for rows left out);
- `loss_block_grad(..., __lo, __C, __done, __weight, __scale, __gscale, grads...)`: this block's
  gradient. Every partial is whole by then, so the pass reads the logits at c and stores their
  gradient at c: the gradient may overwrite the logits.
Loads x[y] only read a block when y falls inside it, so no label is ever read out of range.
"""
from __future__ import annotations

import numpy as np
import sympy

from ..classaxis.partials import BlockPlan, Node
from ..symbolic.reductions import arg_symbol, gradient_parts, needed_list
from ..symbolic.derive import safe_name
from .printer import NumbaPrinter
from .elementwise import with_formula
from .rows import (_finish, _gradient_loop, keep_test, _list_loop, _list_passes, _list_scatter, _list_terms, _passes,
                   _prologue, _Writer, accumulator)
from .targets import CPU


def generate_blocks(blocks: BlockPlan, dtype: np.dtype, header: str) -> str:
    printer = NumbaPrinter()
    kernels = [_pass_kernel(blocks, printer), _value_kernel(blocks, printer), _grad_kernel(blocks, printer)]
    # each reduction's and load's (op, level, first slot), read by the runtime (lossdsl.classaxis.levels)
    data = f"PARTIALS = {blocks.layout.literal()!r}\n"
    return CPU.module(with_formula(header, blocks.plan), dtype, printer, kernels, data)


def _start(blocks: BlockPlan, printer: NumbaPrinter, name: str, extra: list[str], doc: str) -> _Writer:
    plan = blocks.plan
    w = _Writer(plan, printer, CPU, blocked=True)
    arrays = [f"_{safe_name(i.name)}_" for i in plan.loss.inputs]
    listed = ["__K"] if plan.listed is not None else []
    if plan.listed is not None:  # each list load's K slots, after the others' (lossdsl.classaxis.levels.Levels.of)
        w.list_done = {n.symbol: _list_slot(blocks, n) for n in blocks.nodes if n.op == "list_load"}
    arguments = [*arrays, "__steps", "__rows", "__width", "__inner", *listed, *(f"_{p.name}_" for p in plan.params),
                 "__lo", "__C", "__done", *extra]
    w.emit(0, CPU.kernel_decorator, f"def {name}({CPU.parameters(arguments)}):", f'    """{doc}"""')
    return w


def _list_slot(blocks: BlockPlan, node: Node) -> str:
    """Where a list load's partial at the list axis's position lies in a row of partials."""
    return f"{blocks.width} + {node.slot} * __K + {blocks.plan.listed.position}"


def _read_done(w: _Writer, indent: int, nodes) -> None:
    """Each node's combined partials, finished: its value as the row kernels name it."""
    for node in nodes:
        acc = accumulator(node)
        if node.op == "list_load":  # read position by position, by the loops over the list axis
            continue
        if node.op == "load":
            w.emit(indent, f"{node.symbol} = F(__done[__row, {node.slot}])")
            continue
        w.emit(indent, f"{acc} = __done[__row, {node.slot}]")
        if node.op == "logsumexp":
            w.emit(indent, f"{acc}_sum = __done[__row, {node.slot + 1}]")
        if node.op in ("max", "min"):
            w.emit(indent, f"{arg_symbol(node.source)} = int(__done[__row, {node.slot + 1}])")
        w.emit(indent, *_finish(node.source, w.plan, w))


def _store_partials(node: Node, slot_of: dict) -> list[str]:
    acc, k = accumulator(node), slot_of[node.symbol]
    second = {"logsumexp": f"{acc}_sum", "max": str(arg_symbol(node.source)), "min": str(arg_symbol(node.source))}
    lines = [f"__partial[__row, {k}] = {acc}"]
    if node.op in second:
        lines.append(f"__partial[__row, {k + 1}] = {second[node.op]}")
    return lines


def _pass_kernel(blocks: BlockPlan, printer: NumbaPrinter) -> str:
    w = _start(blocks, printer, "loss_block_pass", ["__level", "__partial"],
               "Partials over this block of the nodes of one level; rows left out keep theirs.")
    _prologue(w, CPU.row_loop())
    w.emit(2, f"if {keep_test(w.plan, w)}:")
    slot_of = {n.symbol: n.slot for n in blocks.nodes}
    node_of = {n.source: n for n in blocks.nodes}
    for level in range(blocks.levels):
        w.emit(3, f"{'if' if level == 0 else 'elif'} __level == {level}:")
        _read_done(w, 4, [n for n in blocks.nodes if n.level < level])
        here = blocks.at(level)
        for node in (n for n in here if n.op == "load"):
            load = node.source
            k, label = w.index_of[load.input], safe_name(load.label)
            w.emit(4, f"{node.symbol} = 0.0",
                   f"if __lo <= {label} and {label} < __lo + __width:",
                   f"    {node.symbol} = load(_{safe_name(load.input)}_, __b{k} + ({label} - __lo) * __t{k})",
                   f"__partial[__row, {node.slot}] = {node.symbol}")
        for node in (n for n in here if n.op == "list_load"):
            load = node.source
            k, label = w.index_of[load.input], safe_name(load.label)
            inner = _list_loop(w, 4, [w.plan.inputs[load.label]], loads=False)
            w.emit(inner, f"if __lo <= {label} and {label} < __lo + __width:",
                   f"    __partial[__row, {_list_slot(blocks, node)}] = "
                   f"load(_{safe_name(load.input)}_, __b{k} + ({label} - __lo) * __t{k})")
        reductions = [n.source for n in here if n.op not in ("load", "list_load")]
        _passes(w, 4, reductions, complete=lambda r, plan, writer: _store_partials(node_of[r], slot_of))
    w.emit(1, "return 0.0")
    return w.source()


def _value_kernel(blocks: BlockPlan, printer: NumbaPrinter) -> str:
    plan = blocks.plan
    w = _start(blocks, printer, "loss_block_value", ["__weight", "__scale", "__out", "__norms", "__bad", "__extra"],
               "Each row's loss from its whole partials, what the mean divides by, and labels out of range.")
    shown = [expr for _, expr in plan.outputs] if blocks.outputs else []
    w.emit(1, "__s = F(__scale)", "__weighted = __weight.size == __rows", "__total = 0.0")
    _prologue(w, CPU.row_loop())
    w.emit(2, "__w = __s * __weight[__row] if __weighted else __s", "__loss = 0.0", "__norms[__row] = 0.0",
           *(f"__extra[__row, {k}] = math.nan" for k in range(len(shown))))
    w.emit(2, f"if {keep_test(plan, w)}:")
    for label in plan.loss.labels:
        name = safe_name(label)
        w.emit(3, f"if {name} < 0 or {name} >= __C:", "    __bad[__row] = 1")
    for label in plan.loss.list_labels:  # the positions kept only
        name = safe_name(label)
        inner = _list_loop(w, 3, [plan.inputs[label]], loads=False)
        w.emit(inner, f"if {name} < 0 or {name} >= __C:", "    __bad[__row] = 1")
    weight = plan.mean_weight if plan.mean_weight is not None else sympy.S.One
    used = set().union(*(e.free_symbols for e in (plan.value, weight, *shown)))
    if plan.listed is not None:
        list_nodes = needed_list(plan, False, blocks.outputs)
        used |= set().union(*(n.body.free_symbols for n in list_nodes))
    _read_done(w, 3, [n for n in blocks.nodes if n.symbol in used])
    if plan.listed is not None:
        _list_passes(w, 3, list_nodes, ())
    value, norm, *values = w.statements(3, [], [plan.value, weight, *shown], row_locals=True)
    w.emit(3, f"__loss = ({value}) * __w", f"__norms[__row] = {norm}",
           *(f"__extra[__row, {k}] = {text}" for k, text in enumerate(values)))
    w.emit(2, "__out[__row] = __loss", "__total += __loss")
    w.emit(1, "return __total")
    return w.source()


def _grad_kernel(blocks: BlockPlan, printer: NumbaPrinter) -> str:
    plan = blocks.plan
    grads = [f"__grad_{safe_name(name)}" for name in plan.loss.wrt]
    w = _start(blocks, printer, "loss_block_grad", ["__weight", "__scale", "__gscale", *grads],
               "This block's gradients, times weight, scale and __gscale; each may be its own input.")
    w.emit(1, "__s = F(__scale)", "__gs = F(__gscale)", "__weighted = __weight.size == __rows")
    _prologue(w, CPU.row_loop())
    w.emit(2, "__gw = __s * __gs * (__weight[__row] if __weighted else F(1.0))",
           "__gb = __o * __width * __inner + __q")
    element = "__gb + __c * __inner"
    w.emit(2, f"if {keep_test(plan, w)}:")
    _read_done(w, 3, blocks.nodes)
    parts = gradient_parts(plan)
    if plan.listed is not None:
        _list_passes(w, 3, needed_list(plan, True), parts.list_backward)
    w.statements(3, list(parts.adjoints), [])
    scatters = plan.listed is not None and plan.listed.scatters
    if scatters:
        _list_terms(w, 3)
    w.unswitched(3, list(plan.grads), lambda at, exprs: _gradient_loop(w, at, exprs, grads, element))
    if scatters:
        _list_scatter(w, 3, grads)
    w.emit(2, "else:", "    " + w.axis_loop(), *[f"        store({g}, {element}, F(0.0))" for g in grads])
    w.emit(1, "return 0.0")
    return w.source()
