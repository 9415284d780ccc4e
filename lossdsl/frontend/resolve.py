"""Stage 2: check a parsed loss and resolve its names into a self-contained IR.

Here every name is bound (input, parameter, earlier local, constant), every call
is checked against the function table or inlined from another loss (composition),
parameter values are validated against their constraints, and parameters that
choose between formulas (booleans, strings) are folded into the IR, so the
symbolic stage sees only numbers, inputs and numeric parameters.

Composition inlines, so a loss that calls another twice, which calls another twice, ...
grows exponentially. The resolver's work on one loss is bounded by `MAX_NODES` expression
nodes: each node it visits (a called loss's body once per call) and each expression it
inspects again (an argument of a called loss, the loss's own locals and rules written out in
full: calls inlined, earlier locals substituted) count. It measures every node once, from its
children, so its own work stays linear in what it counts; past the limit, or past
`ir.MAX_DEPTH` levels of nesting written out in full, a `SpecLimitError` points at the call
(or expression) in the loss being compiled that crosses it.
"""
from __future__ import annotations

import dataclasses
import operator
from dataclasses import dataclass, field
from typing import Callable, Mapping

from . import ir
from ..errors import LossParameterError, LossSpecError, SpecLimitError, SpecNameError, SpecTypeError
from ..symbolic.functions import CONSTANTS, FUNCTIONS, REDUCTIONS

MAX_NODES = 20_000  # the resolver's work on one loss, in expression nodes (the catalogue's most: 280)

Value = float | bool | str
Lookup = Callable[[str, str], "ir.LossDef | None"]  # (called name, file of the caller) → its definition


@dataclass(frozen=True)
class ParamInfo:
    name: str
    kind: str  # "number" (a runtime argument) or "bool" / "str" (chooses the formula)
    default: Value
    constraint: ir.Expr | None
    file: str
    pos: ir.Pos

    @property
    def static(self) -> bool:
        return self.kind != "number"


@dataclass(frozen=True)
class ResolvedLoss:
    """A loss whose IR refers only to its inputs, numeric parameters and earlier locals."""

    name: str
    inputs: tuple[ir.Input, ...]
    wrt: tuple[str, ...]
    params: tuple[ParamInfo, ...]
    values: tuple[tuple[str, Value], ...]  # the chosen value of every parameter
    locals: tuple[ir.Local, ...]  # the last one is the loss of one element
    doc: str
    aliases: tuple[str, ...]
    file: str
    # parameters of called losses set from this loss's parameters: (callee, its parameter, value, callee's values)
    passed_on: tuple[tuple[str, ParamInfo, ir.Expr, tuple[tuple[str, Value], ...]], ...] = ()
    # losses over an axis (None/empty for elementwise losses)
    axis: str | None = None  # the named axis of its inputs
    axis_position: int | str | None = None  # where that axis is when a call does not say (None: last; "all")
    labels: tuple[str, ...] = ()  # inputs used as gather indices: integers in [0, axis length)
    ignore: ir.Expr | None = None  # rows where this holds contribute nothing
    mean_weight: ir.Expr | None = None  # reduction="mean" divides by its sum over the rows not ignored
    outputs: tuple[str, ...] = ()  # locals a call may ask for beside the loss, one value per row
    # the list axis (`ids[k]`: several entries per row, such as a teacher's top-k classes), if any
    list_axis: str | None = None
    list_labels: tuple[str, ...] = ()  # inputs over the list axis used as gather indices (`x[ids]`)
    list_ignore: ir.Expr | None = None  # positions of the list axis where this holds are left out
    sequence: str | None = None  # `sequence mean`: "sum" or "mean", how a sequence's token log-probabilities add up
    source: str | None = field(default=None, compare=False, repr=False)  # the spec text, for errors' carets

    def error(self, cls, message: str, local: ir.Local) -> LossSpecError:
        """An error of a later stage, at `local` (a line of this loss's own text)."""
        return cls(message, self.file, local.pos.line, local.pos.column, self.source)

    @property
    def numeric_params(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params if not p.static)

    @property
    def static_values(self) -> dict[str, Value]:
        statics = {p.name for p in self.params if p.static}
        return {k: v for k, v in self.values if k in statics}

    def cache_text(self) -> str:
        """A canonical text of everything that shapes the generated code (numeric values excluded)."""
        return repr((self.name, self.inputs, self.wrt, self.locals, sorted(self.static_values.items()),
                     self.numeric_params, self.axis, self.labels, self.ignore, self.mean_weight, self.outputs,
                     self.list_axis, self.list_labels, self.list_ignore))


def resolve(loss: ir.LossDef, overrides: Mapping[str, Value] | None = None, lookup: Lookup = lambda name, file: None,
            source: str | None = None) -> ResolvedLoss:
    """Check `loss`, bind its names, apply parameter `overrides`, inline called losses."""
    return _Resolver(lookup, source).top(loss, dict(overrides or {}))


def check_values(params: tuple[ParamInfo, ...], overrides: Mapping[str, Value], loss_name: str,
                 passed_on: tuple = ()) -> dict[str, Value]:
    """Parameter values after `overrides`, each of the right kind and within its constraint,
    and so are the values they give to parameters of called losses (`passed_on`)."""
    values = {p.name: p.default for p in params}
    known = {p.name: p for p in params}
    for name, value in overrides.items():
        if name not in known:
            hint = f"; its parameters are {', '.join(known)}" if known else "; it has no parameters"
            raise LossParameterError(f"{loss_name} has no parameter {name!r}{hint}")
        values[name] = _coerce(known[name], value, loss_name)
    for p in params:
        if p.constraint is not None and evaluate(p.constraint, values, p.file) is not True:
            raise LossParameterError(f"{loss_name}: {p.name}={values[p.name]!r} breaks its constraint "
                                     f"`{ir.format_expr(p.constraint)}` ({p.file}:{p.pos.line})")
    for callee, info, expr, callee_values in passed_on:
        env = {**dict(callee_values), info.name: evaluate(expr, values, info.file)}
        if evaluate(info.constraint, env, info.file) is not True:
            raise LossParameterError(f"{loss_name}: passes {info.name}={env[info.name]!r} to {callee}, which "
                                     f"breaks its constraint `{ir.format_expr(info.constraint)}` "
                                     f"({info.file}:{info.pos.line})")
    return values


def _coerce(param: ParamInfo, value, loss_name: str) -> Value:
    kind = "bool" if isinstance(value, bool) else "str" if isinstance(value, str) else "number"
    if kind == "number":
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise LossParameterError(f"{loss_name}: {param.name} must be a {param.kind}, got {value!r}") from None
    if kind != param.kind:
        raise LossParameterError(f"{loss_name}: {param.name} must be a {param.kind}, got {value!r}")
    return value


# --- evaluating constant expressions (parameter defaults and constraints) -----

_ARITHMETIC = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv, "^": operator.pow}
_COMPARE = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge, "==": operator.eq,
            "!=": operator.ne}


def evaluate(expr: ir.Expr, env: Mapping[str, Value], file: str) -> Value:
    """Evaluate a constant expression over parameter values, with no access to Python."""

    def fail(message: str):
        raise SpecTypeError(message, file, expr.pos.line, expr.pos.column)

    if isinstance(expr, (ir.Num, ir.Str, ir.Bool)):
        return expr.value
    if isinstance(expr, ir.Name):
        if expr.id in env:
            return env[expr.id]
        if expr.id in CONSTANTS:
            return CONSTANTS[expr.id]
        fail(f"`{expr.id}` is not a parameter or constant here")
    if isinstance(expr, ir.UnaryOp):
        value = evaluate(expr.operand, env, file)
        if expr.op == "not":
            return not value
        if not isinstance(value, float):
            fail(f"cannot negate `{ir.format_expr(expr.operand)}`")
        return -value
    if isinstance(expr, ir.BinOp):
        left = evaluate(expr.left, env, file)
        if expr.op in ("and", "or"):
            if expr.op == "and":
                return left and evaluate(expr.right, env, file)
            return left or evaluate(expr.right, env, file)
        right = evaluate(expr.right, env, file)
        try:
            result = float(_ARITHMETIC[expr.op](left, right))
        except (ZeroDivisionError, OverflowError, TypeError, ValueError):
            result = float("nan")
        if result != result or isinstance(left, (bool, str)) or isinstance(right, (bool, str)):
            fail(f"`{ir.format_expr(expr)}` has no numeric value")
        return result
    if isinstance(expr, ir.Compare):
        values = [evaluate(o, env, file) for o in expr.operands]
        _same_kind(values, expr, fail)
        try:
            return all(_COMPARE[op](a, b) for op, a, b in zip(expr.ops, values, values[1:]))
        except TypeError:
            fail(f"cannot compare in `{ir.format_expr(expr)}`")
    if isinstance(expr, ir.Member):
        value, options = evaluate(expr.value, env, file), [evaluate(o, env, file) for o in expr.options]
        _same_kind([value, *options], expr, fail)
        return value in options
    if isinstance(expr, ir.IfElse):
        branch = expr.then if evaluate(expr.cond, env, file) else expr.orelse
        return evaluate(branch, env, file)
    fail(f"`{ir.format_expr(expr)}` is not a constant expression")


def _same_kind(values: list[Value], expr: ir.Expr, fail) -> None:
    """A string, a boolean and a number are never equal: comparing two kinds is a mistake in the spec."""
    kinds = {"a string" if isinstance(v, str) else "a boolean" if isinstance(v, bool) else "a number" for v in values}
    if len(kinds) > 1:
        fail(f"`{ir.format_expr(expr)}` compares {' with '.join(sorted(kinds))}")


# --- the resolver -------------------------------------------------------------


def map_children(expr: ir.Expr, fn: Callable[[ir.Expr], ir.Expr]) -> ir.Expr:
    """A copy of `expr` with `fn` applied to each direct sub-expression."""
    if isinstance(expr, ir.Call):
        return dataclasses.replace(expr, args=tuple(fn(a) for a in expr.args),
                                   kwargs=tuple((k, fn(v)) for k, v in expr.kwargs))
    if isinstance(expr, ir.BinOp):
        return dataclasses.replace(expr, left=fn(expr.left), right=fn(expr.right))
    if isinstance(expr, ir.UnaryOp):
        return dataclasses.replace(expr, operand=fn(expr.operand))
    if isinstance(expr, ir.Compare):
        return dataclasses.replace(expr, operands=tuple(fn(o) for o in expr.operands))
    if isinstance(expr, ir.Member):
        return dataclasses.replace(expr, value=fn(expr.value), options=tuple(fn(o) for o in expr.options))
    if isinstance(expr, ir.IfElse):
        return dataclasses.replace(expr, cond=fn(expr.cond), then=fn(expr.then), orelse=fn(expr.orelse))
    if isinstance(expr, ir.Gather):
        return dataclasses.replace(expr, array=fn(expr.array), index=fn(expr.index))
    if isinstance(expr, ir.Reduce):
        return dataclasses.replace(expr, body=fn(expr.body), order=None if expr.order is None else fn(expr.order))
    return expr


_LITERALS = (ir.Num, ir.Bool, ir.Str)


class _Resolver:
    def __init__(self, lookup: Lookup, source: str | None):
        self.lookup = lookup
        self.source = source
        self.stack: list[str] = []
        self.values: dict[str, Value] = {}
        self.passed_on: list = []
        self.axis: str | None = None  # the top loss's named axis
        self.labels: list[str] = []
        self.axis_locals: set[str] = set()  # locals of the top loss that vary along the axis
        self.row_inputs: set[str] = set()
        self.axis_inputs: set[str] = set()
        self.list_axis: str | None = None  # the top loss's second named axis (`ids[k]`)
        self.list_inputs: set[str] = set()
        self.list_locals: set[str] = set()  # locals that vary along the list axis
        self.list_labels: list[str] = []
        self.top_loss: ir.LossDef | None = None
        self.wrt_names: tuple[str, ...] = ()
        self.work = 0  # expression nodes visited or inspected so far (at most MAX_NODES)
        self.measured: dict[int, tuple[int, int, ir.Expr]] = {}  # id → (nodes, depth, the node itself)
        self.kinds: dict[int, tuple[str, ir.Expr]] = {}  # id → (kind, the node itself)
        self.local_sizes: dict[str, tuple[int, int]] = {}  # the top loss's locals: (nodes, depth) written out
        self.callees: dict[int, tuple[ir.LossDef, tuple[ParamInfo, ...], int]] = {}  # id → (loss, params, cost)

    def error(self, cls, message: str, file: str, pos: ir.Pos) -> LossSpecError:
        in_top_loss = len(self.stack) <= 1  # the source text shown is the top loss's; inlined ones live elsewhere
        return cls(message, file, pos.line, pos.column, self.source if in_top_loss else None)

    def charge(self, nodes: int, loss: ir.LossDef, pos: ir.Pos) -> None:
        """Count `nodes` of work against MAX_NODES."""
        self.work += nodes
        if self.work > MAX_NODES:
            raise self.error(SpecLimitError, f"more than {MAX_NODES:,} expression nodes once called losses are "
                             "inlined (lossdsl.frontend.resolve.MAX_NODES)", loss.file, pos)

    def measure(self, expr: ir.Expr) -> tuple[int, int]:
        """(nodes, depth) of `expr` written out in full: calls inlined, the top loss's locals substituted.
        Each node is measured once, from its children (shared subexpressions are not walked again)."""
        known = self.measured.get(id(expr))
        if known is not None and known[2] is expr:
            return known[0], known[1]
        if isinstance(expr, ir.Name) and expr.id in self.local_sizes:
            nodes, depth = self.local_sizes[expr.id]
        else:
            parts = [self.measure(child) for child in ir.children(expr)]
            nodes, depth = 1 + sum(p[0] for p in parts), 1 + max((p[1] for p in parts), default=0)
        self.measured[id(expr)] = (nodes, depth, expr)
        return nodes, depth

    def inspect(self, expr: ir.Expr, loss: ir.LossDef, pos: ir.Pos) -> int:
        """Charge a walk over all of `expr` (written out); its number of nodes."""
        nodes = self.measure(expr)[0]
        self.charge(nodes, loss, pos)
        return nodes

    # The loss being compiled: inputs and numeric parameters stay symbolic.
    def top(self, loss: ir.LossDef, overrides: dict[str, Value]) -> ResolvedLoss:
        self.stack = [loss.name]
        self.top_loss = loss
        params = self.params(loss)
        values = check_values(params, overrides, loss.name)
        self.values = values  # to check the constraints of called losses' parameters
        self.axis, self.list_axis = self.check_axis(loss)
        self.row_inputs = {i.name for i in loss.inputs if i.axis is None}
        self.axis_inputs = {i.name for i in loss.inputs if i.axis is not None and i.axis == self.axis}
        self.list_inputs = {i.name for i in loss.inputs if i.axis is not None and i.axis == self.list_axis}
        self.wrt_names = self.wrt(loss)
        scope: dict[str, ir.Expr] = {i.name: ir.Name(i.name) for i in loss.inputs}
        for axis in (self.axis, self.list_axis):
            if axis:
                scope[axis] = ir.Name(axis)
        for p in params:
            scope[p.name] = ir.Name(p.name) if not p.static else _literal(values[p.name])
        locals_ = self.body(loss, scope, keep_locals=True)
        if self.varies(locals_[-1].expr):
            raise self.error(SpecTypeError, f"the loss must have one value per row: reduce over {self.axis} "
                             f"(e.g. sum(..., {self.axis})) or gather (x[y])", loss.file, locals_[-1].pos)
        if self.varies_list(locals_[-1].expr):
            raise self.error(SpecTypeError, f"the loss must have one value per row: reduce over {self.list_axis} "
                             f"(e.g. sum(..., {self.list_axis}))", loss.file, locals_[-1].pos)
        wrt = self.wrt_names
        rules = {}
        for rule in ("ignore", "mean_weight"):
            expr = getattr(loss, rule)
            if expr is not None:
                rules[rule] = self.row_rule(rule, expr, scope, loss)
        if loss.list_ignore is not None:
            rules["list_ignore"] = self.list_rule(loss.list_ignore, scope, loss)
        check_values(params, overrides, loss.name, tuple(self.passed_on))
        position = loss.axis_position[1] if loss.axis_position else None
        return ResolvedLoss(loss.name, loss.inputs, wrt, params, tuple(values.items()), tuple(locals_),
                            loss.doc, loss.aliases, loss.file, tuple(self.passed_on), self.axis, position,
                            tuple(dict.fromkeys(self.labels)), outputs=self.outputs(loss, locals_),
                            list_axis=self.list_axis, list_labels=tuple(dict.fromkeys(self.list_labels)),
                            sequence=self.sequence(loss, values), source=self.source, **rules)

    def sequence(self, loss: ir.LossDef, values: dict[str, Value]) -> str | None:
        """`sequence mean`: "sum" or "mean", chosen by parameters only (a call's inputs cannot change it)."""
        if loss.sequence is None:
            return None
        pos = loss.sequence.pos
        if self.axis is not None:
            raise self.error(SpecTypeError, f"`sequence` is for a loss of whole sequences, elementwise in their "
                             f"log-probabilities; {loss.name} is over the axis {self.axis} (a loss over tokens adds "
                             "up with sample_weight, e.g. lossdsl.token_weights)", loss.file, pos)
        names = sorted(ir.names_in(loss.sequence))
        unknown = [n for n in names if n not in values and n not in ("sum", "mean")]
        if unknown:
            raise self.error(SpecNameError, f"`sequence` chooses sum or mean by parameters; {unknown[0]} is not a "
                             f"parameter of {loss.name}", loss.file, pos)
        numeric = [n for n in names if n in values and not isinstance(values[n], (str, bool))]
        if numeric:
            raise self.error(SpecTypeError, f"`sequence` chooses by parameters that are strings or booleans; "
                             f"{numeric[0]} is a number", loss.file, pos)
        chosen = evaluate(loss.sequence, {"sum": "sum", "mean": "mean", **values}, loss.file)
        if chosen not in ("sum", "mean"):
            raise self.error(SpecTypeError, f"`sequence {ir.format_expr(loss.sequence)}` must choose sum or mean; "
                             f"it gives {chosen!r}", loss.file, pos)
        return chosen

    def outputs(self, loss: ir.LossDef, locals_: list[ir.Local]) -> tuple[str, ...]:
        """`output a, b`: locals standing beside the loss, one value per row of a loss over an axis, one per
        element of an elementwise loss."""
        known = {local.name: local for local in locals_[:-1]}
        for name in loss.outputs:
            if name.id not in known:
                raise self.error(SpecNameError, f"`output {name.id}`: {name.id} is not a local of {loss.name} "
                                 "(the loss itself is always returned)", loss.file, name.pos)
            if name.id in self.axis_locals or name.id in self.list_locals:
                raise self.error(SpecTypeError, f"`output {name.id}` varies along {self.axis}: an output has one "
                                 "value per row", loss.file, name.pos)
        return tuple(dict.fromkeys(name.id for name in loss.outputs))

    def check_axis(self, loss: ir.LossDef) -> tuple[str | None, str | None]:
        """The loss's class axis (the first one named) and list axis (a second), checked against `axis c = k`,
        `ignore k if` and optional inputs."""
        axes = list(dict.fromkeys(i.axis for i in loss.inputs if i.axis))
        if len(axes) > 2:
            third = next(i for i in loss.inputs if i.axis == axes[2])
            raise self.error(SpecTypeError, f"a loss has at most two named axes (a class axis and a list axis); "
                             f"{third.name}[{axes[2]}] is a third", loss.file, third.pos)
        list_axis = axes[1] if len(axes) > 1 else None
        if loss.list_ignore is not None and loss.list_ignore[0] != list_axis:
            raise self.error(SpecNameError, f"`ignore {loss.list_ignore[0]} if ...` names no list axis of "
                             f"{loss.name} (its second named axis)", loss.file, loss.list_ignore[1].pos)
        optional = False
        for i in loss.inputs:
            if i.default is None and optional:
                raise self.error(SpecTypeError, f"input {i.name} needs a default: it follows one that has one",
                                 loss.file, i.pos)
            optional = optional or i.default is not None
        axis = axes[0] if axes else None
        if loss.axis_position is not None and loss.axis_position[0] != axis:
            where = (" (the list axis lies where the class axis does)" if loss.axis_position[0] == list_axis
                     else "")
            raise self.error(SpecNameError, f"`axis {loss.axis_position[0]} = ...` names no class axis of "
                             f"{loss.name}'s inputs{where}", loss.file, loss.pos)
        if axis is None and (loss.ignore is not None or loss.mean_weight is not None):
            raise self.error(SpecTypeError, "`ignore if` and `mean weighted by` are for losses over a named axis",
                             loss.file, (loss.ignore or loss.mean_weight).pos)
        return axis, list_axis

    def list_rule(self, rule: tuple[str, ir.Expr], scope: dict[str, ir.Expr], loss: ir.LossDef) -> ir.Expr:
        """`ignore k if ...`: a condition at each position of the list axis, read before any reduction."""
        expr = rule[1]
        resolved = self.expr(expr, scope, loss)
        self.inspect(resolved, loss, expr.pos)
        if _contains(resolved, (ir.Reduce, ir.Gather)):
            raise self.error(SpecTypeError, f"`ignore {rule[0]} if` may not reduce or gather: the labels it leaves "
                             "out may be out of range", loss.file, expr.pos)
        if self.kind(resolved, loss) != "bool" or self.varies(resolved):
            raise self.error(SpecTypeError, f"`{ir.format_expr(expr)}` must be a condition at each position of "
                             f"{rule[0]} (without the axis {self.axis})", loss.file, expr.pos)
        return resolved

    def row_rule(self, rule: str, expr: ir.Expr, scope: dict[str, ir.Expr], loss: ir.LossDef) -> ir.Expr:
        """`ignore if ...` (a condition) or `mean weighted by ...` (a number), one value per row."""
        resolved = self.expr(expr, scope, loss)
        self.inspect(resolved, loss, expr.pos)
        if _contains(resolved, ir.Reduce):
            raise self.error(SpecTypeError, f"`{ir.format_expr(expr)}` may not reduce: it is computed before "
                             "any pass over the axis", loss.file, expr.pos)
        if rule == "ignore" and _contains(resolved, ir.Gather):
            raise self.error(SpecTypeError, "`ignore if` cannot gather: the labels of ignored rows may be out of "
                             "range", loss.file, expr.pos)
        wanted = "bool" if rule == "ignore" else "number"
        if self.kind(resolved, loss) != wanted or self.varies(resolved):
            what = "a condition" if wanted == "bool" else "a number"
            raise self.error(SpecTypeError, f"`{ir.format_expr(expr)}` must be {what} with one value per row "
                             "(reduce or gather what varies along the axis)", loss.file, expr.pos)
        return resolved

    def varies(self, expr: ir.Expr) -> bool:
        """Whether a resolved expression varies along the named axis (outside reductions and gathers)."""
        if isinstance(expr, (ir.Reduce, ir.Gather)):
            return False
        if isinstance(expr, ir.Name):
            return expr.id == self.axis or expr.id in self.axis_locals or expr.id in self.axis_inputs
        return any(self.varies(child) for child in ir.children(expr))

    def varies_list(self, expr: ir.Expr) -> bool:
        """Whether a resolved expression varies along the list axis (outside reductions): its inputs, and
        gathers at its labels (`x[ids]`)."""
        if self.list_axis is None or isinstance(expr, ir.Reduce):
            return False
        if isinstance(expr, ir.Gather):
            return isinstance(expr.index, ir.Name) and expr.index.id in self.list_inputs
        if isinstance(expr, ir.Name):
            return expr.id == self.list_axis or expr.id in self.list_locals or expr.id in self.list_inputs
        return any(self.varies_list(child) for child in ir.children(expr))

    def params(self, loss: ir.LossDef) -> tuple[ParamInfo, ...]:
        self.check_names(loss)
        infos = []
        for p in loss.params:
            default = evaluate(p.default, {}, loss.file)
            kind = "bool" if isinstance(default, bool) else "str" if isinstance(default, str) else "number"
            infos.append(ParamInfo(p.name, kind, default, p.constraint, loss.file, p.pos))
        defaults = {i.name: i.default for i in infos}
        for info in infos:  # a default that breaks its own constraint is a bug in the spec
            if info.constraint is not None and evaluate(info.constraint, defaults, loss.file) is not True:
                raise self.error(SpecTypeError, f"the default of {info.name} breaks its constraint", loss.file,
                                 info.pos)
        return tuple(infos)

    def callee_params(self, callee: ir.LossDef, caller: ir.LossDef, pos: ir.Pos) -> tuple[ParamInfo, ...]:
        """A called loss's parameters, checked once; each call charges its inputs and parameters' nodes."""
        known = self.callees.get(id(callee))
        if known is None or known[0] is not callee:
            cost = len(callee.inputs) + sum(_nodes(p.default) + _nodes(p.constraint) for p in callee.params)
            known = self.callees[id(callee)] = (callee, self.params(callee), cost)
        self.charge(known[2], caller, pos)
        return known[1]

    def wrt(self, loss: ir.LossDef) -> tuple[str, ...]:
        names = {i.name for i in loss.inputs}
        for index, name in enumerate(loss.wrt):
            if name not in names:
                raise self.error(SpecNameError, f"`wrt {name}`: {loss.name} has no input {name}", loss.file, loss.pos)
            if name in loss.wrt[:index]:
                raise self.error(SpecNameError, f"`wrt` names {name} twice", loss.file, loss.pos)
        wrt = loss.wrt or (loss.inputs[0].name,)
        first_axis = next((i.axis for i in loss.inputs if i.axis), None)
        axis_inputs = {i.name for i in loss.inputs if i.axis and i.axis == first_axis}
        for name in wrt:
            if axis_inputs and name not in axis_inputs:
                raise self.error(SpecTypeError, f"`wrt {name}`: a loss over an axis is differentiated with respect "
                                 f"to inputs that have its class axis [{first_axis}]", loss.file, loss.pos)
        return wrt

    def check_names(self, loss: ir.LossDef) -> None:
        seen: dict[str, str] = {}
        entries = ([(i.name, "input", i.pos) for i in loss.inputs] + [(p.name, "parameter", p.pos) for p in loss.params]
                   + [(lo.name, "local", lo.pos) for lo in loss.locals])
        axes = {i.axis: i for i in loss.inputs if i.axis}
        entries[:0] = [(name, "axis", i.pos) for name, i in axes.items()]
        for name, what, pos in entries:
            if name in seen:
                raise self.error(SpecNameError, f"duplicate name `{name}` (already a {seen[name]})", loss.file, pos)
            if (name in FUNCTIONS and name != loss.name) or name in CONSTANTS or name in REDUCTIONS:
                raise self.error(SpecNameError, f"`{name}` is a built-in name; choose another", loss.file, pos)
            seen[name] = what
        if not loss.locals or loss.locals[-1].name != loss.name:
            raise self.error(SpecNameError, f"the last line of loss {loss.name} must be `{loss.name} = ...`",
                             loss.file, loss.locals[-1].pos if loss.locals else loss.pos)

    def body(self, loss: ir.LossDef, scope: dict[str, ir.Expr], keep_locals: bool) -> list[ir.Local]:
        """Resolve each local in order; `keep_locals` leaves references to earlier locals as names."""
        resolved: list[ir.Local] = []
        scope = dict(scope)
        for local in loss.locals:
            expr = self.expr(local.expr, scope, loss)
            if self.kind(expr, loss) != "number":
                raise self.error(SpecTypeError, f"`{local.name}` must be a number, not a condition", loss.file,
                                 local.pos)
            resolved.append(ir.Local(local.name, expr, local.pos))
            if keep_locals:  # the symbolic stage writes each out in full
                self.local_sizes[local.name] = self.inspect(expr, loss, local.pos), self.measure(expr)[1]
                if self.varies(expr):
                    self.axis_locals.add(local.name)
                if self.varies_list(expr):
                    self.list_locals.add(local.name)
            scope[local.name] = ir.Name(local.name) if keep_locals else expr
        return resolved

    def expr(self, expr: ir.Expr, scope: dict[str, ir.Expr], loss: ir.LossDef) -> ir.Expr:
        """`expr` resolved in `scope`: one node of work, and at most MAX_DEPTH deep written out."""
        self.charge(1, loss, expr.pos)
        resolved = self.build(expr, scope, loss)
        if self.measure(resolved)[1] > ir.MAX_DEPTH:
            raise self.error(SpecLimitError, f"expression nested too deeply once called losses are inlined and "
                             f"locals written out: more than {ir.MAX_DEPTH} levels (lossdsl.frontend.ir.MAX_DEPTH)",
                             loss.file, expr.pos)
        return resolved

    def build(self, expr: ir.Expr, scope: dict[str, ir.Expr], loss: ir.LossDef) -> ir.Expr:
        if isinstance(expr, ir.Name):
            if expr.id in scope:
                bound = scope[expr.id]  # a plain name or constant keeps the position it is used at
                return dataclasses.replace(bound, pos=expr.pos) if isinstance(bound, (ir.Name, *_LITERALS)) else bound
            if expr.id in CONSTANTS:
                return ir.Num(CONSTANTS[expr.id], expr.pos)
            raise self.error(SpecNameError, f"undefined name `{expr.id}`", loss.file, expr.pos)
        if isinstance(expr, ir.Gather):
            return self.gather(expr, scope, loss)
        if isinstance(expr, ir.Call):
            return self.call(expr, scope, loss)
        resolved = map_children(expr, lambda e: self.expr(e, scope, loss))
        try:
            return _fold(resolved, loss.file)
        except SpecTypeError as exc:  # again, with the line shown
            raise self.error(SpecTypeError, exc.message, loss.file, resolved.pos) from None

    def gather(self, gather: ir.Gather, scope: dict[str, ir.Expr], loss: ir.LossDef) -> ir.Expr:
        """`x[y]`: x varies along the axis, y is an integer label input (one per row)."""
        if self.axis is None:
            raise self.error(SpecTypeError, "`x[y]` gathers along a named axis; this loss declares none "
                             "(declare one on an input: logits[c])", loss.file, gather.pos)
        array = self.expr(gather.array, scope, loss)
        index = self.expr(gather.index, scope, loss)
        listed = isinstance(index, ir.Name) and index.id in self.list_inputs
        if not (isinstance(index, ir.Name) and (index.id in self.row_inputs or listed)
                and index.id not in self.wrt_names):
            along = f", or several along the list axis {self.list_axis}" if self.list_axis else ""
            raise self.error(SpecTypeError, f"the index in `{ir.format_expr(gather)}` must be an input that holds "
                             f"integer labels, one per row (without the axis {self.axis}){along}", loss.file,
                             gather.pos)
        self.inspect(array, loss, gather.pos)
        if self.varies_list(array) or _contains(array, ir.Reduce):
            raise self.error(SpecTypeError, f"`{ir.format_expr(gather)}` gathers from an input over {self.axis} "
                             "(or an expression of one), not from a reduction or a value along "
                             f"{self.list_axis}", loss.file, gather.pos)
        if not self.varies(array):  # the same at every position (a class weight left at its default)
            return array
        (self.list_labels if listed else self.labels).append(index.id)
        return ir.Gather(array, index, gather.pos)

    def names_axis(self, call: ir.Call, scope: dict[str, ir.Expr]) -> bool:
        """Whether the call's second argument is the axis: max(x, c) reduces, max(0, x) does not."""
        return (len(call.args) >= 2 and isinstance(call.args[1], ir.Name) and self.axis is not None
                and scope.get(call.args[1].id) in (ir.Name(self.axis), ir.Name(self.list_axis or self.axis)))

    def reduce(self, call: ir.Call, scope: dict[str, ir.Expr], loss: ir.LossDef) -> ir.Expr:
        """`sum(body, c)`, ... and `norm(body, c, p)`: a reduction over the named axis."""
        most = 3 if call.func == "norm" else 2
        if call.kwargs or not 2 <= len(call.args) <= most:
            usage = f"{call.func}(x, axis{', p' if call.func == 'norm' else ''})"
            raise self.error(SpecTypeError, f"{call.func}() reduces over a named axis: {usage}", loss.file, call.pos)
        if self.axis is None:
            raise self.error(SpecTypeError, f"{call.func}() reduces over a named axis; this loss declares none "
                             "(declare one on an input: logits[c])", loss.file, call.pos)
        axis = call.args[1]
        axes = (self.axis, self.list_axis) if self.list_axis else (self.axis,)
        named = scope.get(axis.id) if isinstance(axis, ir.Name) else None
        if not isinstance(named, ir.Name) or named.id not in axes:
            raise self.error(SpecTypeError, f"the second argument of {call.func}() must name the axis it reduces "
                             f"over ({' or '.join(axes)})", loss.file, axis.pos)
        body = self.expr(call.args[0], scope, loss)
        order = self.expr(call.args[2], scope, loss) if len(call.args) == 3 else None
        if order is not None:
            self.inspect(order, loss, call.pos)
        for part in (body, order):
            if part is not None and self.kind(part, loss) != "number":
                raise self.error(SpecTypeError, f"{call.func}() reduces numbers, not conditions", loss.file, call.pos)
        if order is not None and (self.varies(order) or _contains(order, (ir.Reduce, ir.Gather))):
            raise self.error(SpecTypeError, "the order p of norm() must be a number, parameter or input without "
                             "the axis (it is not differentiated)", loss.file, call.pos)
        if named.id == self.list_axis:
            return self.list_reduce(call, body, order, loss)
        if self.varies_list(body) or _contains_reduce(body, self.list_axis):
            raise self.error(SpecTypeError, f"a reduction over {self.axis} cannot use values along {self.list_axis} "
                             f"or their reductions (reduce over {self.list_axis} outside it)", loss.file, call.pos)
        return ir.Reduce(call.func, body, self.axis, order, call.pos)

    def list_reduce(self, call: ir.Call, body: ir.Expr, order: ir.Expr | None, loss: ir.LossDef) -> ir.Expr:
        """`sum(body, k)`: a reduction over the list axis, whose body reads the class axis only by gathers."""
        if call.func not in LIST_REDUCTIONS:
            raise self.error(SpecTypeError, f"{call.func}() does not reduce over the list axis {self.list_axis}; "
                             f"these do: {', '.join(LIST_REDUCTIONS)}", loss.file, call.pos)
        if self.varies(body):
            raise self.error(SpecTypeError, f"a reduction over {self.list_axis} reads the class axis {self.axis} "
                             f"only at its labels (x[ids]); reduce over {self.axis} first", loss.file, call.pos)
        return ir.Reduce(call.func, body, self.list_axis, order, call.pos)

    def call(self, call: ir.Call, scope: dict[str, ir.Expr], loss: ir.LossDef) -> ir.Expr:
        if call.func in REDUCTIONS and (call.func not in FUNCTIONS or self.names_axis(call, scope)):
            return self.reduce(call, scope, loss)
        args = tuple(self.expr(a, scope, loss) for a in call.args)
        kwargs = tuple((k, self.expr(v, scope, loss)) for k, v in call.kwargs)
        function = FUNCTIONS.get(call.func)
        if function is not None:
            if kwargs:
                raise self.error(SpecTypeError, f"{call.func}() takes no keyword arguments", loss.file, call.pos)
            if len(args) != function.arity:
                raise self.error(SpecTypeError, f"{call.func}() takes {function.arity} argument"
                                 f"{'s' if function.arity != 1 else ''}, got {len(args)}", loss.file, call.pos)
            for index, arg in enumerate(args):
                wanted = "bool" if index in function.condition_args else "number"
                if self.kind(arg, loss) != wanted:
                    what = "a condition" if wanted == "bool" else "a number"
                    raise self.error(SpecTypeError, f"argument {index + 1} of {call.func}() must be {what}",
                                     loss.file, call.pos)
            if call.func == "where" and isinstance(args[0], ir.Bool):
                return args[1] if args[0].value else args[2]
            return ir.Call(call.func, args, (), call.pos)
        if call.func == loss.name:
            raise self.error(SpecNameError, f"loss {loss.name} calls itself", loss.file, call.pos)
        callee = self.lookup(call.func, loss.file)
        if callee is None:
            raise self.error(SpecNameError, f"unknown function or loss `{call.func}`", loss.file, call.pos)
        return self.inline(callee, args, dict(kwargs), loss, call.pos)

    def inline(self, callee: ir.LossDef, args, kwargs: dict[str, ir.Expr], caller: ir.LossDef, pos) -> ir.Expr:
        """The called loss's element formula, with the caller's arguments in place of its inputs."""
        if callee.name in self.stack:
            raise self.error(SpecNameError, f"losses call each other in a cycle: {' -> '.join(self.stack)} -> "
                             f"{callee.name}", caller.file, pos)
        required = sum(i.default is None for i in callee.inputs)
        if not required <= len(args) <= len(callee.inputs):
            count = str(required) if required == len(callee.inputs) else f"{required} to {len(callee.inputs)}"
            raise self.error(SpecTypeError, f"{callee.name}() takes {count} inputs "
                             f"({', '.join(i.name for i in callee.inputs)}), got {len(args)}", caller.file, pos)
        self.stack.append(callee.name)
        try:
            result = self.inlined(callee, args, kwargs, caller, pos)
        except SpecLimitError as exc:  # the call crosses the limit, not the called loss's text: point at the call
            self.stack.pop()
            raise self.error(SpecLimitError, exc.message, caller.file, pos) from None
        self.stack.pop()
        return result

    def inlined(self, callee: ir.LossDef, args, kwargs: dict[str, ir.Expr], caller: ir.LossDef, pos) -> ir.Expr:
        params = self.callee_params(callee, caller, pos)
        if callee.list_ignore is not None and self.top_loss.list_ignore is None:
            raise self.error(SpecTypeError, f"{callee.name} leaves positions of its list axis out (`ignore "
                             f"{callee.list_ignore[0]} if ...`), which only the loss being compiled can say: "
                             f"declare that rule in {self.top_loss.name} too", caller.file, pos)
        args = args + tuple(ir.Num(i.default) for i in callee.inputs[len(args):])
        scope: dict[str, ir.Expr] = {i.name: a for i, a in zip(callee.inputs, args)}
        callee_axes = list(dict.fromkeys(i.axis for i in callee.inputs if i.axis))
        if callee_axes:
            if self.axis is None or (len(callee_axes) > 1 and self.list_axis is None):
                raise self.error(SpecTypeError, f"{callee.name} is a loss over {len(callee_axes)} named axes; "
                                 f"{caller.name} declares fewer", caller.file, pos)
            for callee_axis, axis in zip(callee_axes, (self.axis, self.list_axis)):
                scope[callee_axis] = ir.Name(axis)
        constants: dict[str, Value] = {}  # values the spec fixes: checked now, a bad one is the spec's fault
        computed: list[ParamInfo] = []  # values made from the top loss's parameters: checked on every change
        for name, value in kwargs.items():
            info = next((p for p in params if p.name == name), None)
            if info is None:
                raise self.error(SpecNameError, f"{callee.name} has no parameter {name!r}", caller.file, pos)
            if info.static and not isinstance(value, _LITERALS):
                raise self.error(SpecTypeError, f"{callee.name}'s {name} chooses a formula: it needs a constant",
                                 caller.file, pos)
            self.inspect(value, caller, pos)
            if not ir.names_in(value):
                constants[name] = value.value if isinstance(value, _LITERALS) else evaluate(value, {}, caller.file)
                continue
            try:
                evaluate(value, self.values, caller.file)
            except SpecTypeError:
                continue  # it depends on the inputs: there is no single value to check
            if info.constraint is not None:
                computed.append(info)
        try:
            values = check_values(params, constants, callee.name)
        except LossParameterError as exc:
            raise self.error(SpecTypeError, str(exc), caller.file, pos) from None
        self.passed_on += [(callee.name, info, kwargs[info.name], tuple(values.items())) for info in computed]
        for p in params:
            scope[p.name] = kwargs.get(p.name, _literal(values[p.name]))
        return self.body(callee, scope, keep_locals=False)[-1].expr

    def kind(self, expr: ir.Expr, loss: ir.LossDef) -> str:
        """"number", "bool" or "str"; raises where an operator gets the wrong kind. Each node is checked once."""
        known = self.kinds.get(id(expr))
        if known is not None and known[1] is expr:
            return known[0]
        kind = self.check_kind(expr, loss)
        self.kinds[id(expr)] = (kind, expr)
        return kind

    def check_kind(self, expr: ir.Expr, loss: ir.LossDef) -> str:
        def need(sub: ir.Expr, wanted: str, what: str) -> None:
            if self.kind(sub, loss) != wanted:
                raise self.error(SpecTypeError, f"{what} needs {'a condition' if wanted == 'bool' else 'a number'}: "
                                 f"`{ir.format_expr(sub)}`", loss.file, sub.pos)

        if isinstance(expr, ir.Num):
            return "number"
        if isinstance(expr, ir.Bool):
            return "bool"
        if isinstance(expr, ir.Str):
            raise self.error(SpecTypeError, "a string can only be compared with a parameter that chooses a formula",
                             loss.file, expr.pos)
        if isinstance(expr, (ir.Name, ir.Call, ir.Reduce, ir.Gather)):
            return "number"
        if isinstance(expr, ir.UnaryOp):
            wanted = "bool" if expr.op == "not" else "number"
            need(expr.operand, wanted, f"`{expr.op}`")
            return wanted
        if isinstance(expr, ir.BinOp):
            wanted = "bool" if expr.op in ("and", "or") else "number"
            need(expr.left, wanted, f"`{expr.op}`")
            need(expr.right, wanted, f"`{expr.op}`")
            return wanted
        if isinstance(expr, ir.Compare):
            for operand in expr.operands:
                need(operand, "number", "a comparison")
            return "bool"
        if isinstance(expr, ir.IfElse):
            need(expr.cond, "bool", "`if`")
            then, orelse = self.kind(expr.then, loss), self.kind(expr.orelse, loss)
            if then != orelse:
                raise self.error(SpecTypeError, "both branches of `if` must be numbers", loss.file, expr.pos)
            return then
        if isinstance(expr, ir.Member):
            raise self.error(SpecTypeError, "`in` only tests parameters that choose a formula", loss.file, expr.pos)
        raise self.error(SpecTypeError, f"unsupported expression `{ir.format_expr(expr)}`", loss.file, expr.pos)


def _literal(value: Value) -> ir.Expr:
    if isinstance(value, bool):
        return ir.Bool(value)
    if isinstance(value, str):
        return ir.Str(value)
    return ir.Num(float(value))


LIST_REDUCTIONS = ("sum", "mean", "logsumexp", "max", "min")  # the reductions a list axis takes


def _contains_reduce(expr: ir.Expr, axis: str | None) -> bool:
    """Whether `expr` holds a reduction over `axis`."""
    return (isinstance(expr, ir.Reduce) and expr.axis == axis) or any(_contains_reduce(c, axis)
                                                                        for c in ir.children(expr))


def _contains(expr: ir.Expr, kind: type | tuple[type, ...]) -> bool:
    return isinstance(expr, kind) or any(_contains(child, kind) for child in ir.children(expr))


def _nodes(expr: ir.Expr | None) -> int:
    return 0 if expr is None else 1 + sum(_nodes(child) for child in ir.children(expr))


def _fold(expr: ir.Expr, file: str) -> ir.Expr:
    """Evaluate the parts of `expr` that involve only constants of formula-choosing parameters."""
    if isinstance(expr, ir.IfElse) and isinstance(expr.cond, ir.Bool):
        return expr.then if expr.cond.value else expr.orelse
    if isinstance(expr, ir.BinOp) and expr.op in ("and", "or"):
        for side, other in ((expr.left, expr.right), (expr.right, expr.left)):
            if isinstance(side, ir.Bool):
                decisive = side.value is (expr.op == "or")
                return ir.Bool(side.value, expr.pos) if decisive else other
        return expr
    if isinstance(expr, ir.UnaryOp) and expr.op == "not" and isinstance(expr.operand, ir.Bool):
        return ir.Bool(not expr.operand.value, expr.pos)
    if isinstance(expr, (ir.Compare, ir.Member)) and all(isinstance(c, _LITERALS) for c in ir.children(expr)):
        return ir.Bool(bool(evaluate(expr, {}, file)), expr.pos)
    if isinstance(expr, ir.UnaryOp) and expr.op == "-" and isinstance(expr.operand, ir.Num):
        return ir.Num(-expr.operand.value, expr.pos)
    return expr

