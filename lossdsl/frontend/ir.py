"""The typed IR between the parser and the symbolic stage.

Frozen dataclasses, so a spec's IR can be hashed and compared, and its `repr`
is a canonical text for cache keys. Every node carries the (line, column) of
the spec text it came from, so later stages can point at the source. `format_expr`
prints an expression back as DSL text (used for the comments in generated code).

`MAX_DEPTH` bounds how deeply expressions nest: the parser checks the text (`exp(exp(x))` is
3 deep, `a + b + c` is 3: a chain of operators nests), the resolver the expression of each
local once called losses are inlined and earlier locals written out, so that no stage (SymPy's
included) runs out of stack.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union


@dataclass(frozen=True)
class Pos:
    line: int
    column: int


NOWHERE = Pos(0, 0)

MAX_DEPTH = 64  # the deepest nesting of an expression (the catalogue's deepest, written out in full: 11)


@dataclass(frozen=True)
class Num:
    value: float
    pos: Pos = field(default=NOWHERE, compare=False, repr=False)


@dataclass(frozen=True)
class Str:
    value: str
    pos: Pos = field(default=NOWHERE, compare=False, repr=False)


@dataclass(frozen=True)
class Bool:
    value: bool
    pos: Pos = field(default=NOWHERE, compare=False, repr=False)


@dataclass(frozen=True)
class Name:
    id: str
    pos: Pos = field(default=NOWHERE, compare=False, repr=False)


@dataclass(frozen=True)
class Call:
    func: str
    args: tuple["Expr", ...]
    kwargs: tuple[tuple[str, "Expr"], ...] = ()
    pos: Pos = field(default=NOWHERE, compare=False, repr=False)


@dataclass(frozen=True)
class BinOp:
    """Arithmetic (`+ - * / ^`) and boolean (`and`, `or`) binary operators."""

    op: str
    left: "Expr"
    right: "Expr"
    pos: Pos = field(default=NOWHERE, compare=False, repr=False)


@dataclass(frozen=True)
class UnaryOp:
    op: str  # "-" or "not"
    operand: "Expr"
    pos: Pos = field(default=NOWHERE, compare=False, repr=False)


@dataclass(frozen=True)
class Compare:
    """A comparison chain: `0 <= q <= 1` has ops ("<=", "<=") and three operands."""

    ops: tuple[str, ...]
    operands: tuple["Expr", ...]
    pos: Pos = field(default=NOWHERE, compare=False, repr=False)


@dataclass(frozen=True)
class Member:
    """`x in (a, b, ...)`: used in parameter constraints."""

    value: "Expr"
    options: tuple["Expr", ...]
    pos: Pos = field(default=NOWHERE, compare=False, repr=False)


@dataclass(frozen=True)
class IfElse:
    cond: "Expr"
    then: "Expr"
    orelse: "Expr"
    pos: Pos = field(default=NOWHERE, compare=False, repr=False)


@dataclass(frozen=True)
class Gather:
    """`x[y]`: the entry of x's named axis that label y selects (axis losses)."""

    array: "Expr"
    index: "Expr"
    pos: Pos = field(default=NOWHERE, compare=False, repr=False)


@dataclass(frozen=True)
class Reduce:
    """A reduction over a named axis: `sum(x*w, c)`; `order` is the p of `norm(x, c, p)`.

    Built by the resolver from a call whose second argument is an axis name. It stays
    a node of its own through every stage (never unrolled into loops before code
    generation), so a later stage can split it, e.g. into a local partial sum and an
    all-reduce when the axis is sharded across processes.
    """

    op: str  # a key of lossdsl.symbolic.functions.REDUCTIONS
    body: "Expr"
    axis: str
    order: "Expr | None" = None
    pos: Pos = field(default=NOWHERE, compare=False, repr=False)


Expr = Union[Num, Str, Bool, Name, Call, BinOp, UnaryOp, Compare, Member, IfElse, Gather, Reduce]


@dataclass(frozen=True)
class Domain:
    """Where an input's values come from: an interval or a finite set."""

    low: float = float("-inf")
    high: float = float("inf")
    low_open: bool = True
    high_open: bool = True
    choices: tuple[float, ...] | None = None

    def describe(self) -> str:
        if self.choices is not None:
            return "{" + ", ".join(_num(c) for c in self.choices) + "}"
        return f"{'(' if self.low_open else '['}{_num(self.low)}, {_num(self.high)}{')' if self.high_open else ']'}"

    @property
    def unbounded(self) -> bool:
        return self.choices is None and self.low == float("-inf") and self.high == float("inf")


REAL = Domain()


@dataclass(frozen=True)
class Input:
    """An input; `axis` names its axis for losses over an axis (`logits[c]`), and an input
    with a `default` may be left out of a call (`weight[c] = 1`)."""

    name: str
    domain: Domain = REAL
    axis: str | None = None
    default: float | None = None
    optional: bool = False  # `= none`: may be left out, no default value (the lengths of a ragged input)
    pos: Pos = field(default=NOWHERE, compare=False, repr=False)


@dataclass(frozen=True)
class Param:
    name: str
    default: Expr
    constraint: Expr | None = None
    pos: Pos = field(default=NOWHERE, compare=False, repr=False)


@dataclass(frozen=True)
class Local:
    name: str
    expr: Expr
    pos: Pos = field(default=NOWHERE, compare=False, repr=False)


@dataclass(frozen=True)
class Ragged:
    """`ragged x along AXIS by lengths [padded with V]`: x's axis AXIS (an expression of static
    parameters, e.g. a layout) holds one sequence per batch entry, `lengths` long (sequence losses)."""

    input: str
    along: Expr
    lengths: str
    padding: float | None = None
    pos: Pos = field(default=NOWHERE, compare=False, repr=False)


@dataclass(frozen=True)
class LossDef:
    """One `loss` block exactly as written (names not yet resolved)."""

    name: str
    inputs: tuple[Input, ...]
    wrt: tuple[str, ...]
    params: tuple[Param, ...]
    locals: tuple[Local, ...]
    doc: str
    aliases: tuple[str, ...]
    file: str = field(default="<string>", compare=False)
    pos: Pos = field(default=NOWHERE, compare=False, repr=False)
    axis_position: tuple[str, int | str] | None = None  # `axis c = 1` (or "all"): where axis c is by default
    ignore: Expr | None = None  # `ignore if y == ignore_index`: such rows contribute nothing
    mean_weight: Expr | None = None  # `mean weighted by weight[y]`: what reduction="mean" divides by
    ragged: tuple[Ragged, ...] = ()  # sequence losses: inputs that hold sequences of varying length
    mean_of: Expr | None = None  # `mean of EXPR`: what reduction="mean" averages in place of the loss
    head: str | None = None  # `head linear`: called with the linear layer's input and weight, not its logits
    head_inputs: tuple[Name, ...] = ()  # `head linear a, b`: the inputs that are heads (none named: the first)
    outputs: tuple[Name, ...] = ()  # `output lse, entropy`: locals a call may ask for, one value per row
    list_ignore: tuple[str, Expr] | None = None  # `ignore k if ids < 0`: positions of the list axis k left out
    sequence: Expr | None = None  # `sequence mean`: how a sequence's token log-probabilities become its own


# --- printing an expression back as DSL text --------------------------------

_PRECEDENCE = {"if": 1, "or": 2, "and": 3, "not": 4, "cmp": 5, "+": 6, "-": 6, "*": 7, "/": 7, "neg": 8, "^": 9}


def _num(value: float) -> str:
    if value == float("inf"):
        return "inf"
    if value == float("-inf"):
        return "-inf"
    return repr(int(value)) if float(value).is_integer() and abs(value) < 1e15 else repr(float(value))


def format_expr(expr: Expr, parent: int = 0) -> str:
    """DSL text of `expr`, parenthesised only where precedence needs it."""

    def wrap(text: str, prec: int) -> str:
        return f"({text})" if prec < parent else text

    if isinstance(expr, Num):
        return _num(expr.value)
    if isinstance(expr, Str):
        return '"' + expr.value + '"'
    if isinstance(expr, Bool):
        return "true" if expr.value else "false"
    if isinstance(expr, Name):
        return expr.id
    if isinstance(expr, Call):
        parts = [format_expr(a) for a in expr.args] + [f"{k}={format_expr(v)}" for k, v in expr.kwargs]
        return f"{expr.func}({', '.join(parts)})"
    if isinstance(expr, Gather):
        return f"{format_expr(expr.array, 10)}[{format_expr(expr.index)}]"
    if isinstance(expr, Reduce):
        order = f", {format_expr(expr.order)}" if expr.order is not None else ""
        return f"{expr.op}({format_expr(expr.body)}, {expr.axis}{order})"
    if isinstance(expr, UnaryOp):
        if expr.op == "not":
            return wrap("not " + format_expr(expr.operand, 4), 4)
        return wrap("-" + format_expr(expr.operand, 8), 8)
    if isinstance(expr, BinOp):
        prec = _PRECEDENCE[expr.op]
        if expr.op == "^":  # right-associative
            return wrap(f"{format_expr(expr.left, prec + 1)}^{format_expr(expr.right, prec)}", prec)
        return wrap(f"{format_expr(expr.left, prec)} {expr.op} {format_expr(expr.right, prec + 1)}", prec)
    if isinstance(expr, Compare):
        text = format_expr(expr.operands[0], 6)
        for op, operand in zip(expr.ops, expr.operands[1:]):
            text += f" {op} {format_expr(operand, 6)}"
        return wrap(text, 5)
    if isinstance(expr, Member):
        return wrap(f"{format_expr(expr.value, 6)} in ({', '.join(format_expr(o) for o in expr.options)})", 5)
    if isinstance(expr, IfElse):
        text = f"{format_expr(expr.then, 2)} if {format_expr(expr.cond, 2)} else {format_expr(expr.orelse, 1)}"
        return wrap(text, 1)
    raise TypeError(f"not an IR expression: {expr!r}")


def children(expr: Expr) -> tuple[Expr, ...]:
    """The direct sub-expressions of a node, for generic walks."""
    if isinstance(expr, Call):
        return expr.args + tuple(v for _, v in expr.kwargs)
    if isinstance(expr, BinOp):
        return (expr.left, expr.right)
    if isinstance(expr, UnaryOp):
        return (expr.operand,)
    if isinstance(expr, Compare):
        return expr.operands
    if isinstance(expr, Member):
        return (expr.value,) + expr.options
    if isinstance(expr, IfElse):
        return (expr.cond, expr.then, expr.orelse)
    if isinstance(expr, Gather):
        return (expr.array, expr.index)
    if isinstance(expr, Reduce):
        return (expr.body,) if expr.order is None else (expr.body, expr.order)
    return ()


def names_in(expr: Expr) -> set[str]:
    """Every name an expression reads (inputs, parameters, locals)."""
    if isinstance(expr, Name):
        return {expr.id}
    return set().union(*map(names_in, children(expr)))
