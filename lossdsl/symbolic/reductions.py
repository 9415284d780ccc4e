"""Stage 3 for losses over an axis: reductions as graph nodes, and the chain rule through them.

SymPy differentiates scalar expressions. A loss over a named axis is a scalar per row
built from two kinds of row-level values: reductions (a symbol standing for
`op(body, c)`, where `body` is an expression at one position `c` of the axis) and
loads (an input read at the position a label names, `x[y]`). Locals that vary along
the axis are expressions in the inputs' symbols and the position symbol.

Differentiation is reverse mode over the reductions, outermost first. A reduction's
adjoint a = d(loss)/d(reduction) is a row-level value; through its body it passes

    a * sum over c of  w(c) * d(body)/d(m)     to every row-level value m the body uses,
    a * w(c) * d(body)/d(x)                     to the gradient of each input x at c,

where w(c) = d(reduction)/d(body at c) is the reduction's own derivative: 1 for sum,
1/length for mean, softmax weights exp(body - logsumexp) for logsumexp, a one-hot at
the first arg-max (arg-min) for max and min (torch.max(x, dim), torch.argmax), and the p-norm's
|body|^(p-1) sign(body) / norm^(p-1) (0 where the norm is 0, as torch.norm). A load's
adjoint reaches the gradient as a one-hot at the label. Each sum over c above is a new
reduction (computed by the fused kernel in its own pass over the row), so nothing of
size rows x classes is ever materialised besides the gradient itself.

A list axis k (`ids[k]`: several labels per row, a teacher's top-k classes) adds row-level values of
the same two kinds: reductions over k, whose bodies read the class axis only at its labels (list
loads, `x[ids]`), and those loads. They come after every reduction over c (which cannot use them) and
are differentiated first: a reduction over k passes its adjoint to the row-level values its body uses
through a sum over k (one more short loop per row, no pass over c), and to the gradient of x as one
entry per position of k, added at the class its label names (a scatter of k terms per row).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import sympy

from ..frontend import ir
from ..frontend.resolve import ResolvedLoss
from .rewrites import stabilize
from .derive import _checked, _ours, at, bounded, representable, safe_name, simplify, to_sympy
from .derive import lowered  # noqa: F401 - the row kernels' generator imports it from here
from .sympy_functions import absolute, make_power, sign


@dataclass(frozen=True)
class Reduction:
    """`op(body, axis)` as one row-level symbol; `order` is norm's p."""

    symbol: sympy.Symbol
    op: str  # sum, mean, max, min, logsumexp, norm
    body: sympy.Expr
    order: sympy.Expr | None = None


@dataclass(frozen=True)
class Load:
    """The value of axis input `input` at the position that label input `label` names."""

    symbol: sympy.Symbol
    input: str
    label: str


@dataclass(frozen=True)
class ListPlan:
    """What a list axis adds to a row plan: its reductions and loads, the sums over k their gradient needs,
    and each gradient's entries at the labels (`scatters`: (index into wrt, label input, the coefficient
    at position k), added at class label[k])."""

    axis: str
    position: sympy.Symbol  # the position along the list axis inside a loop (an integer)
    length: sympy.Symbol  # how many positions of the row are kept (all K without `ignore k if`), a float
    forward: tuple[Reduction, ...]  # in dependency order (inner first)
    loads: tuple[Load, ...]  # x[ids]: their symbols vary along k
    backward: tuple[Reduction, ...]
    scatters: tuple[tuple[int, str, sympy.Expr], ...]
    ignore: sympy.Expr | None  # positions of k where this holds are left out


@dataclass(frozen=True)
class RowPlan:
    """Everything a row-kernel generator needs, independent of the target."""

    loss: ResolvedLoss
    params: tuple[sympy.Symbol, ...]
    position: sympy.Symbol  # the position along the axis inside a pass (an integer)
    length: sympy.Symbol  # the axis length, as a float
    inputs: dict[str, sympy.Symbol]  # every input's symbol (labels are integers)
    value: sympy.Expr  # the loss of one row, over reductions, loads, row inputs and parameters
    forward: tuple[Reduction, ...]  # in dependency order (inner first)
    loads: tuple[Load, ...]
    backward: tuple[Reduction, ...]  # sums over the axis the gradient needs (adjoint sums)
    adjoints: tuple[tuple[sympy.Symbol, sympy.Expr], ...]  # row-level, each over earlier ones
    grads: tuple[sympy.Expr, ...]  # per `wrt` input, at position `position`, over the adjoint symbols
    ignore: sympy.Expr | None
    mean_weight: sympy.Expr | None
    display: dict = field(compare=False, repr=False)  # readable formulas for `explain`
    outputs: tuple[tuple[str, sympy.Expr], ...] = ()  # `output` locals: (name, row-level expression)
    # the spec's other row-level locals (smooth = lse*mean(w, c) - ...), which the kernels compute by name
    row_locals: tuple[tuple[sympy.Symbol, sympy.Expr], ...] = ()
    listed: ListPlan | None = None  # the list axis's part, if the loss has one

    def readable(self) -> tuple[sympy.Expr, tuple[sympy.Expr, ...]]:
        """The loss and its gradients as formulas to show: reductions as op(body, c), x[y], softmax, onehot."""
        return self.display["value"], self.display["grads"]

    @property
    def readable_locals(self) -> tuple[tuple[str, sympy.Expr], ...]:
        return self.display["locals"]


class _Graph:
    """Builds reductions and loads while the IR is turned into SymPy."""

    def __init__(self, loss: ResolvedLoss, env: dict[str, sympy.Expr], position: sympy.Symbol):
        self.loss, self.env, self.position = loss, env, position
        self.axis_inputs = {i.name: env[i.name] for i in loss.inputs if i.axis}
        self.varying = set(self.axis_inputs.values()) | {position}
        self.length = sympy.Symbol("_len", positive=True)
        self.reductions: list[Reduction] = []
        self.loads: list[Load] = []
        self.local: ir.Local | None = None  # the local being built: a reduction that is all of it takes its name
        self.list_axis = loss.list_axis
        self.list_position = sympy.Symbol(safe_name(loss.list_axis), integer=True) if loss.list_axis else None
        self.list_length = sympy.Symbol("_klen", positive=True)
        self.list_inputs = {i.name: env[i.name] for i in loss.inputs if i.axis and i.axis == loss.list_axis}
        self.axis_inputs = {n: s for n, s in self.axis_inputs.items() if n not in self.list_inputs}
        self.varying = set(self.axis_inputs.values()) | {position}
        self.list_fixed = set(self.list_inputs.values()) | ({self.list_position} if loss.list_axis else set())
        self.list_reductions: list[Reduction] = []
        self.list_loads: list[Load] = []

    @property
    def list_varying(self) -> set:
        """What varies along the list axis: its position, its inputs and the list loads made so far."""
        return self.list_fixed | {load.symbol for load in self.list_loads}

    def node(self, expr: ir.Expr, env: dict[str, sympy.Expr]) -> sympy.Expr:
        if isinstance(expr, ir.Reduce):
            listed = expr.axis == self.list_axis
            body = _prepare(to_sympy(expr.body, env, self.node))
            order = None if expr.order is None else to_sympy(expr.order, env, self.node)
            varying, length = (self.list_varying, self.list_length) if listed else (self.varying, self.length)
            if not _varies(body, varying):
                return _constant_reduction(expr.op, body, order, length)
            known = self.list_reductions if listed else self.reductions
            for existing in known:  # the same reduction written twice is computed once
                if (existing.op, existing.body, existing.order) == (expr.op, body, order):
                    return existing.symbol
            symbol = sympy.Symbol(self.reduction_name(expr), real=True)
            known.append(Reduction(symbol, expr.op, body, order))
            return symbol
        array = to_sympy(expr.array, env, self.node)
        label = expr.index.id
        listed = label in self.loss.list_labels
        swaps: dict[sympy.Expr, sympy.Expr] = {self.position: self.env[label]}
        for name, symbol in self.axis_inputs.items():
            if symbol in array.free_symbols:
                swaps[symbol] = self.load(name, label, self.list_loads if listed else self.loads)
        return array.xreplace(swaps)

    def reduction_name(self, expr: ir.Reduce) -> str:
        """The local's own name where the reduction is all of it (`lse = logsumexp(x, c)`), so kernels
        read like the spec; `_r<n>` otherwise, or where that name is taken."""
        fallback = f"_r{len(self.reductions) + len(self.list_reductions)}"
        if self.local is None or expr is not self.local.expr:
            return fallback
        name = safe_name(self.local.name)
        taken = _symbol_names(self.env.values()) | {r.symbol.name for r in (*self.reductions, *self.list_reductions)}
        return fallback if name.startswith("_") or name in taken else name

    def load_name(self, name: str, label: str) -> str:
        """`logits_y` for logits[y], so kernels read like the spec; `_g<n>` where a spec name has it."""
        fallback = f"_g{len(self.loads) + len(self.list_loads)}"
        wanted = safe_name(f"{name}_{label}")
        taken = (_symbol_names(self.env.values()) | {safe_name(local.name) for local in self.loss.locals}
                 | {g.symbol.name for g in (*self.loads, *self.list_loads)})
        return fallback if wanted.startswith("_") or wanted in taken else wanted

    def load(self, name: str, label: str, known: list[Load]) -> sympy.Symbol:
        """x[y] (a row value; `known` is the graph's loads) or x[ids] (one per position of k: its list loads)."""
        for existing in known:
            if (existing.input, existing.label) == (name, label):
                return existing.symbol
        symbol = sympy.Symbol(self.load_name(name, label), real=True)
        known.append(Load(symbol, name, label))
        return symbol

    def list_plan(self, reversed_parts) -> ListPlan | None:
        if self.list_axis is None:
            return None
        backward, scatters = reversed_parts
        ignore = self.loss.list_ignore
        return ListPlan(self.list_axis, self.list_position, self.list_length, tuple(self.list_reductions),
                        tuple(self.list_loads), backward, scatters,
                        None if ignore is None else to_sympy(ignore, self.env, self.node))


def _symbol_names(values) -> set[str]:
    """The names of those of `values` that are symbols (the graph's environment also holds expressions)."""
    return {s.name for s in values if isinstance(s, sympy.Symbol)}


def _prepare(expr: sympy.Expr) -> sympy.Expr:
    return stabilize(_ours(expr))


def _varies(expr: sympy.Expr, varying: set) -> bool:
    return bool(expr.free_symbols & varying)


def _constant_reduction(op: str, body: sympy.Expr, order, length: sympy.Symbol) -> sympy.Expr:
    """A reduction whose body is the same at every position needs no pass: sum(1, c) is the length."""
    if op == "sum":
        return length*body
    if op == "logsumexp":
        return body + sympy.log(length)
    if op == "norm":
        p = order if order is not None else sympy.Integer(2)
        return make_power(length, 1 / p)*absolute(body)
    return body  # mean, max, min


def derive_rows(loss: ResolvedLoss) -> RowPlan:
    """The row graph of an axis loss, its gradients by reverse mode, and readable forms of both."""
    position = sympy.Symbol(safe_name(loss.axis), integer=True)
    inputs = {i.name: sympy.Symbol(safe_name(i.name), integer=True) if i.name in loss.labels
              else sympy.Symbol(safe_name(i.name), real=True) for i in loss.inputs}
    params = {name: sympy.Symbol(safe_name(name), real=True) for name in loss.numeric_params}
    env: dict[str, sympy.Expr] = {**inputs, **params, loss.axis: position}
    if loss.list_axis:
        env[loss.list_axis] = sympy.Symbol(safe_name(loss.list_axis), integer=True)
    graph = _Graph(loss, env, position)
    length = graph.length
    local_values: dict[str, sympy.Expr] = {}
    for local in loss.locals:
        graph.local = local
        with at(loss, local):
            env[local.name] = local_values[local.name] = _checked(_ours(to_sympy(local.expr, env, graph.node)), loss,
                                                                  local)
    graph.local = None
    with at(loss, loss.locals[-1]):
        value = _prepare(local_values[loss.name])
        rules = {rule: None if getattr(loss, rule) is None else to_sympy(getattr(loss, rule), env, graph.node)
                 for rule in ("ignore", "mean_weight")}
        forward = tuple(graph.reductions)
        wrt = [inputs[name] for name in loss.wrt]
        kernel = _reverse(value, forward, graph.loads, wrt, position, length, graph.varying, display=False,
                          listed=graph)
        shown = _reverse(value, forward, graph.loads, wrt, position, length, graph.varying, display=True,
                         listed=graph)
        display = _display(loss, forward, graph.loads, local_values, value, shown[:3], position, length, graph)
        outputs = tuple((name, _prepare(local_values[name])) for name in loss.outputs)
        row_locals = _row_locals(loss, local_values, graph.varying | graph.list_varying,
                                 set(env.values()) | {length, graph.list_length})
        listed = graph.list_plan(kernel[3:])
    return RowPlan(loss, tuple(params.values()), position, length, inputs, value, forward, tuple(graph.loads),
                   *kernel[:3], rules["ignore"], rules["mean_weight"], display, outputs, row_locals, listed)


def _row_locals(loss: ResolvedLoss, local_values: dict[str, sympy.Expr], varying: set, taken: set):
    """The locals that are one value per row and more than a name (not the loss itself, not a reduction that
    is all of a local and so already has its name), each as a symbol of its own name and its formula."""
    taken = _symbol_names(taken)
    named = []
    for name, expr in local_values.items():
        expr = _prepare(expr)
        symbol = safe_name(name)
        if name == loss.name or expr.is_Atom or _varies(expr, varying) or symbol in taken or symbol.startswith("_"):
            continue
        named.append((sympy.Symbol(symbol, real=True), expr))
    return tuple(named)


def needed(plan: RowPlan, gradient: bool, outputs: bool = False) -> list[Reduction]:
    """The forward reductions the loss (with `gradient`, its gradient; with `outputs`, the spec's
    `output` values) uses, directly or through other reductions, in plan order: a local the loss
    does not use (an `output` not asked for) costs no pass."""
    return _used(plan, gradient, outputs)[0]


def needed_list(plan: RowPlan, gradient: bool, outputs: bool = False) -> list[Reduction]:
    """The reductions over the list axis that `needed` finds used, in plan order."""
    return _used(plan, gradient, outputs)[1]


@dataclass(frozen=True)
class GradientParts:
    """What the gradients use of a plan's reverse mode: the adjoints (in plan order) and the sums over the
    class axis and over the list axis. A `wrt` input's gradient need not use them all: an adjoint of a
    reduction of an input that is not differentiated (a teacher's logsumexp) costs nothing."""

    adjoints: tuple[tuple[sympy.Symbol, sympy.Expr], ...]
    backward: tuple[Reduction, ...]
    list_backward: tuple[Reduction, ...]


def gradient_parts(plan: RowPlan) -> GradientParts:
    listed = plan.listed
    roots = [*plan.grads, *((e for _, _, e in listed.scatters) if listed is not None else ())]
    symbols = set().union(*(e.free_symbols for e in roots))
    for symbol, expr in reversed(plan.adjoints):  # each over earlier ones
        if symbol in symbols:
            symbols |= expr.free_symbols
    return GradientParts(tuple((s, e) for s, e in plan.adjoints if s in symbols),
                         tuple(n for n in plan.backward if n.symbol in symbols),
                         tuple(n for n in (listed.backward if listed is not None else ()) if n.symbol in symbols))


def _used(plan: RowPlan, gradient: bool, outputs: bool) -> tuple[list[Reduction], list[Reduction]]:
    """(reductions over the class axis, over the list axis) that the loss and what it is asked for use."""
    listed = plan.listed
    exprs = [plan.value, *(e for _, e in plan.outputs if outputs)]
    if gradient:
        parts = gradient_parts(plan)
        exprs += [*plan.grads, *(e for _, e in parts.adjoints),
                  *(n.body for n in (*parts.backward, *parts.list_backward))]
        if listed is not None:
            exprs += [e for _, _, e in listed.scatters]
    symbols = set().union(*(e.free_symbols for e in exprs))
    chosen = []
    for nodes in (listed.forward if listed is not None else (), plan.forward):  # users before what they use
        for node in reversed(nodes):
            if node.symbol in symbols or arg_symbol(node) in symbols:
                symbols |= node.body.free_symbols | (node.order.free_symbols if node.order is not None else set())
        chosen.append([node for node in nodes if node.symbol in symbols or arg_symbol(node) in symbols])
    return chosen[1], chosen[0]


def arg_symbol(node: Reduction) -> sympy.Symbol:
    """Where a max or min reduction found its extreme: the kernel records it in the same pass."""
    return sympy.Symbol(f"{node.symbol.name}_arg", integer=True)


def _weight(node: Reduction, position: sympy.Symbol, length: sympy.Symbol, display: bool) -> sympy.Expr:
    """d node / d (its body at `position`): the reduction's own derivative."""
    body, result = node.body, node.symbol
    if node.op == "sum":
        return sympy.S.One
    if node.op == "mean":
        return 1 / length
    if node.op == "logsumexp":
        return sympy.Function("softmax")(body) if display else sympy.exp(body - result)
    if node.op in ("max", "min"):
        if display:
            return sympy.Function("onehot")(sympy.Function("argmax" if node.op == "max" else "argmin")(body))
        # the recorded position, not body == max: a body recomputed in another pass may round differently
        return sympy.Piecewise((1, sympy.Eq(position, arg_symbol(node))), (0, True))
    p = node.order if node.order is not None else sympy.Integer(2)
    if p == 2:
        share = body / result
    else:
        share = sign(body) * make_power(absolute(body), p - 1) / make_power(result, p - 1)
        if not p.is_Number:  # a runtime p: keep p = 2 free of pow()
            share = sympy.Piecewise((body / result, sympy.Eq(p, 2)), (share, True))
    return sympy.Piecewise((0, sympy.Eq(result, 0)), (share, True))


def _reverse(value, forward, loads, wrt, position, length, varying: set, display: bool, listed: _Graph):
    """Reverse mode over the reductions: (backward sums, adjoints, gradient per `wrt` symbol, backward sums
    over the list axis, scatters) — the last two from `listed`'s list reductions and loads."""
    backward: list[Reduction] = []
    list_backward: list[Reduction] = []
    adjoint: dict[sympy.Symbol, sympy.Expr] = {}
    nodes = [r.symbol for r in forward] + [g.symbol for g in loads] + [r.symbol for r in listed.list_reductions]
    for symbol in nodes:
        adjoint[symbol] = _diff(value, symbol)

    def summed(body: sympy.Expr, over: sympy.Symbol, count: sympy.Symbol, along: set, known: list, prefix: str):
        if not _varies(body, along):
            return count*body
        if display:
            return sympy.Function("sum")(body, over)
        for existing in known:
            if existing.body == body:
                return existing.symbol
        symbol = sympy.Symbol(f"{prefix}{len(known)}", real=True)
        known.append(Reduction(symbol, "sum", representable(body)))
        return symbol

    def new_sum(body: sympy.Expr) -> sympy.Expr:
        return summed(body, position, length, varying, backward, "_s")

    grads = [sympy.S.Zero for _ in wrt]
    named: list[tuple[sympy.Symbol, sympy.Expr]] = []

    def name_of(expr: sympy.Expr) -> sympy.Expr:
        """Row-level adjoints become named values the kernel computes once per row."""
        if display or expr.is_Atom or expr.is_Number:
            return expr
        symbol = sympy.Symbol(f"_a{len(named)}", real=True)
        named.append((symbol, representable(expr)))
        return symbol

    scatter = {load.symbol: sympy.S.Zero for load in listed.list_loads}
    for node in reversed(listed.list_reductions):  # every reduction over c comes before them all
        a = adjoint.pop(node.symbol)
        if a == 0:
            continue
        a = name_of(a)
        w = _weight(node, listed.list_position, listed.list_length, display)
        for symbol in nodes:
            if symbol in node.body.free_symbols and symbol in adjoint:
                inner = _diff(node.body, symbol)
                if inner != 0:
                    adjoint[symbol] += a * summed(w * inner, listed.list_position, listed.list_length,
                                                  listed.list_varying, list_backward, "_ks")
        for load in listed.list_loads:
            if load.symbol in node.body.free_symbols:
                scatter[load.symbol] += a * w * _diff(node.body, load.symbol)
    scatters = []
    for load in listed.list_loads:
        for index, x in enumerate(wrt):
            if x.name == safe_name(load.input) and scatter[load.symbol] != 0:
                if display:  # the terms at the labels, added where each one points
                    grads[index] += sympy.Function("sum")(scatter[load.symbol] * sympy.Function("onehot")(
                        _label_symbol(load)), listed.list_position)
                else:
                    scatters.append((index, load.label, representable(simplify(bounded(scatter[load.symbol])))))
    for node in reversed(forward):
        a = adjoint.pop(node.symbol)
        if a == 0:
            continue
        a = name_of(a)
        w = _weight(node, position, length, display)
        for symbol in nodes:
            if symbol in node.body.free_symbols and symbol in adjoint:
                inner = _diff(node.body, symbol)
                if inner != 0:
                    adjoint[symbol] += a * new_sum(w * inner)
        for index, x in enumerate(wrt):
            inner = _diff(node.body, x)
            if inner != 0:
                grads[index] += a * w * inner
    for load in loads:
        a = adjoint.pop(load.symbol)
        if a == 0:
            continue
        for index, x in enumerate(wrt):
            if x.name == safe_name(load.input):
                onehot = (sympy.Function("onehot")(sympy.Symbol(safe_name(load.label))) if display else
                          sympy.Piecewise((1, sympy.Eq(position, _label_symbol(load))), (0, True)))
                grads[index] += name_of(a) * onehot
    grads = [g if display else representable(simplify(bounded(g))) for g in grads]
    return tuple(backward), tuple(named), tuple(grads), tuple(list_backward), tuple(scatters)


def _label_symbol(load: Load) -> sympy.Symbol:
    return sympy.Symbol(safe_name(load.label), integer=True)


def _diff(expr: sympy.Expr, symbol: sympy.Symbol) -> sympy.Expr:
    return representable(stabilize(_ours(bounded(sympy.diff(expr, symbol)))))


# --- readable formulas ------------------------------------------------------------


def _display(loss, forward, loads, local_values, value, shown, position, length, graph: _Graph) -> dict:
    """Formulas with reductions written as `op(body, c)` and loads as `x[y]`, for `explain`."""
    readable: dict[sympy.Symbol, sympy.Expr] = {}
    for load in (*loads, *graph.list_loads):
        readable[load.symbol] = sympy.Function("gather")(sympy.Symbol(safe_name(load.input)),
                                                         _label_symbol(load))
    nodes = [(node, position) for node in forward] + [(node, graph.list_position) for node in graph.list_reductions]
    for node, along in nodes:
        args = [node.body.xreplace(readable), along]
        if node.order is not None:
            args.append(node.order)
        readable[node.symbol] = sympy.Function(node.op)(*args)

    readable[length] = sympy.Function("len")(position)
    if graph.list_position is not None:
        readable[graph.list_length] = sympy.Function("len")(graph.list_position)

    def text(expr: sympy.Expr) -> sympy.Expr:
        return expr.xreplace(readable).xreplace(readable)

    _, _, grads = shown
    shown_locals = ((n, text(e)) for n, e in local_values.items() if n != loss.name)
    return {"locals": tuple((n, e) for n, e in shown_locals if not e.is_Atom),
            "value": text(value), "grads": tuple(text(g) for g in grads)}
