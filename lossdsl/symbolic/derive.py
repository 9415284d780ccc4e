"""Stage 3: resolved IR → SymPy → stable forms → derivatives → simplified, CSE'd plan.

SymPy expressions are built node by node from the IR (never from text). Every
symbol is real. The result is a `KernelPlan`: target-neutral formulas that the
code generators print, with common subexpressions shared between the loss and
all its gradients (that is what makes the kernel fused).

SymPy meets only what the resolver let through (at most `resolve.MAX_NODES` nodes, nested at
most `ir.MAX_DEPTH` deep), and what could still take it unbounded time is refused or defused:
a comparison of constants it cannot decide (it loops forever on `2 < abs(3)`) is refused, one of
if/else values is split into a comparison per branch (at most `MAX_CHOICES`), an exact power of
constants may have `MAX_EXACT_BITS` (`2^2^2^2^2^2` may not), lgamma of a large whole number is
taken in floating point (SymPy would compute the factorial), a derivative or lowered formula may
have `MAX_FORMULA_NODES` nodes written out (the chain rule through nested functions grows the
tree exponentially), and simplify() multiplies out at most `MAX_EXPANDED_TERMS` terms. Any
failure of SymPy on a local, RecursionError included, is a `LossSpecError` at that local's line.
"""
from __future__ import annotations

import itertools
import math
from contextlib import contextmanager
from dataclasses import dataclass, replace

import sympy
from sympy.printing.str import StrPrinter

from ..frontend import ir
from ..errors import SpecLimitError, SpecTypeError
from ..runtime.protocol import safe_name
from .functions import FUNCTIONS
from ..frontend.resolve import ResolvedLoss
from .rewrites import LOWERINGS, stabilize
from .sympy_functions import absolute, make_power, power_from_log, sign, whole_power

MAX_EXACT_BITS = 4096  # the largest exact power of two constants, in bits (float64 ends at 1024)
MAX_FORMULA_NODES = 20_000  # a derivative (or split condition) written out, in nodes (the catalogue's most: 416)
MAX_CHOICES = 64  # the branches a comparison of if/else values is split into (SymPy would solve them)
MAX_EXPANDED_TERMS = 256  # simplify() tries multiplying out a derivative only up to this many terms
_EXACT_LGAMMA = 1000  # lgamma of a whole (or half-whole) number above this is taken in floating point


@dataclass(frozen=True)
class KernelPlan:
    """Everything a code generator needs, independent of the target."""

    loss: ResolvedLoss
    params: tuple[sympy.Symbol, ...]  # numeric parameters: runtime arguments of the kernels
    value: sympy.Expr  # the loss of one element
    grads: tuple[sympy.Expr, ...]  # d value / d input, for each `wrt` input
    value_steps: tuple[tuple[sympy.Symbol, sympy.Expr], ...]  # CSE of the value alone
    value_result: sympy.Expr
    fused_steps: tuple[tuple[sympy.Symbol, sympy.Expr], ...]  # CSE shared by value and gradients
    fused_results: tuple[sympy.Expr, ...]  # value, then one gradient per `wrt` input
    local_values: tuple[tuple[str, sympy.Expr], ...]  # the spec's own locals, for display
    # where powers have runtime exponents: the same CSEs with each x^e a product of squarings, for calls where
    # every exponent is a small whole number (WholePowers), else None
    whole_powers: "WholePowers | None" = None
    # with `output` locals: the CSE of value, gradients and those locals (in that order), for the kernel that
    # stores them beside the gradient
    output_steps: tuple[tuple[sympy.Symbol, sympy.Expr], ...] = ()
    output_results: tuple[sympy.Expr, ...] = ()

    def readable(self) -> tuple[sympy.Expr, tuple[sympy.Expr, ...]]:
        """The loss and its gradients as formulas to show."""
        return self.value, self.grads

    @property
    def readable_locals(self) -> tuple[tuple[str, sympy.Expr], ...]:
        return self.local_values


@dataclass(frozen=True)
class WholePowers:
    """A kernel plan's value and fused CSEs with every runtime power x^e as whole_power(x, e), valid where each
    of `exponents` is a whole number the kernel's `fast_whole_exponent` accepts (kernel_math.MAX_WHOLE_POWER_*),
    checked once per call, outside the loop."""

    exponents: tuple[sympy.Expr, ...]
    value_steps: tuple[tuple[sympy.Symbol, sympy.Expr], ...]
    value_result: sympy.Expr
    fused_steps: tuple[tuple[sympy.Symbol, sympy.Expr], ...]
    fused_results: tuple[sympy.Expr, ...]


_RELATIONS = {"<": sympy.Lt, "<=": sympy.Le, ">": sympy.Gt, ">=": sympy.Ge, "==": sympy.Eq, "!=": sympy.Ne}
_FLOAT_MAX = sympy.Float(1.7976931348623157e308, 17)
# SymPy's real symbols are finite, so it folds `x == inf` to false; the values are floats that
# may be infinite (a CTC loss with no alignment): tests against ±inf become tests against ±max.
_AGAINST_INFINITY = {("==", 1): (">", 1), ("!=", 1): ("<=", 1), ("<", 1): ("<=", 1), (">=", 1): (">", 1),
                     ("==", -1): ("<", -1), ("!=", -1): (">=", -1), (">", -1): (">=", -1), ("<=", -1): ("<", -1)}
_FLIPPED = {"<": ">", "<=": ">=", ">": "<", ">=": "<=", "==": "==", "!=": "!="}


def against_infinity(relation: sympy.Basic) -> tuple[str, int] | None:
    """(op, ±1) where `relation` is a test against ±inf written as one against ±max (`x > max` is
    `x == inf`): printed back in that form, which also holds in float32, where max is inf."""
    for (op, side), (written, limit) in _AGAINST_INFINITY.items():
        if relation.rel_op == written and relation.rhs == limit * _FLOAT_MAX:
            return op, side
    return None


def _relation(op: str, left: sympy.Expr, right: sympy.Expr) -> sympy.Basic:
    """`left op right`, without what SymPy would spend unbounded time on: a comparison of constants it
    cannot decide is refused, and one of if/else values is split into a comparison per branch (SymPy
    would solve the choice into the condition)."""
    if not (left.free_symbols or right.free_symbols or (left.is_Number and right.is_Number)):
        written = f"{to_text(left)} {op} {to_text(right)}"
        if left.has(sympy.I, sympy.zoo, sympy.nan) or right.has(sympy.I, sympy.zoo, sympy.nan):
            raise TypeError(f"comparison of a non-real constant: {written}")
        raise TypeError(f"the condition {written} compares constants (it depends on no input or numeric "
                        "parameter): write its value instead")
    if left.has(sympy.Piecewise) or right.has(sympy.Piecewise):
        if _choices(left) * _choices(right) > MAX_CHOICES:
            raise TypeError(f"the condition {to_text(left)} {op} {to_text(right)} compares if/else values of more "
                            f"than {MAX_CHOICES} branches in all (lossdsl.symbolic.derive.MAX_CHOICES)")
        return bounded(sympy.Or(*[sympy.And(a_if, b_if, _relation(op, a, b))
                                  for a, a_if in _branches(left) for b, b_if in _branches(right)]), "a condition")
    if left in (sympy.oo, -sympy.oo) and right not in (sympy.oo, -sympy.oo):
        op, left, right = _FLIPPED[op], right, left
    sign = 1 if right == sympy.oo else -1 if right == -sympy.oo else 0
    if sign and (op, sign) in _AGAINST_INFINITY:
        op, sign = _AGAINST_INFINITY[op, sign]
        right = sign * _FLOAT_MAX
    return _RELATIONS[op](left, right)


def _choices(expr: sympy.Expr) -> int:
    """How many branches `_branches` gives: those of its if/else values, times each other's."""
    if isinstance(expr, sympy.Piecewise):
        return sum(_choices(value) for value, _ in expr.args)
    return math.prod(_choices(arg) for arg in expr.args)


def _branches(expr: sympy.Expr) -> list[tuple[sympy.Expr, sympy.Basic]]:
    """`expr` as (value without if/else, condition) pairs; exactly one condition holds."""
    if not expr.has(sympy.Piecewise):
        return [(expr, sympy.true)]
    if isinstance(expr, sympy.Piecewise):
        branches, before = [], []
        for value, cond in expr.args:  # the first condition that holds chooses
            chosen = sympy.And(cond, *[sympy.Not(c) for c in before])
            branches += [(v, sympy.And(chosen, c)) for v, c in _branches(value)]
            before.append(cond)
        return branches
    return [(expr.func(*(v for v, _ in parts)), sympy.And(*(c for _, c in parts)))
            for parts in itertools.product(*(_branches(arg) for arg in expr.args))]


def _number(value: float) -> sympy.Expr:
    if value == float("inf"):
        return sympy.oo
    if value == float("-inf"):
        return -sympy.oo
    return sympy.Integer(int(value)) if float(value).is_integer() else sympy.Rational(repr(value))


def _power(base: sympy.Expr, exponent: sympy.Expr) -> sympy.Expr:
    """`base^exponent`, refusing an exact power of two rationals too large to compute (SymPy would try)."""
    if base.is_Rational and exponent.is_Rational and not (base.q == 1 and abs(base.p) <= 1):
        bits = abs(exponent) * max(abs(base.p).bit_length(), base.q.bit_length())
        if bits > MAX_EXACT_BITS:
            raise TypeError(f"the constant {sympy.Float(base, 4)}^{sympy.Float(exponent, 4)} is beyond the float range")
    return make_power(base, exponent)


def _function(name: str, args: list[sympy.Expr]) -> sympy.Expr:
    if name == "pow":
        return _power(*args)
    if name == "lgamma" and args[0].is_Rational and args[0].q <= 2 and args[0] > _EXACT_LGAMMA:
        args = [sympy.Float(args[0])]  # SymPy would take the log of the exact factorial
    return FUNCTIONS[name].builder()(*args)


def to_sympy(expr: ir.Expr, env: dict[str, sympy.Expr], node=None) -> sympy.Expr:
    """Build the SymPy expression of a resolved IR expression.

    `node(expr, env)` builds reductions and gathers (losses over an axis, see reductions.py).
    """
    if isinstance(expr, (ir.Reduce, ir.Gather)):
        if node is None:
            raise TypeError("reductions and gathers need a loss over an axis")
        return node(expr, env)
    if isinstance(expr, ir.Num):
        return _number(expr.value)
    if isinstance(expr, ir.Bool):
        return sympy.true if expr.value else sympy.false
    if isinstance(expr, ir.Name):
        return env[expr.id]
    if isinstance(expr, ir.Call):
        return _function(expr.func, [to_sympy(a, env, node) for a in expr.args])
    if isinstance(expr, ir.UnaryOp):
        operand = to_sympy(expr.operand, env, node)
        return sympy.Not(operand) if expr.op == "not" else -operand
    if isinstance(expr, ir.BinOp):
        left, right = to_sympy(expr.left, env, node), to_sympy(expr.right, env, node)
        if expr.op == "and":
            return sympy.And(left, right)
        if expr.op == "or":
            return sympy.Or(left, right)
        if expr.op == "^":
            return _power(left, right)
        return {"+": sympy.Add, "-": lambda a, b: a - b, "*": sympy.Mul, "/": lambda a, b: a / b}[expr.op](left, right)
    if isinstance(expr, ir.Compare):
        operands = [to_sympy(o, env, node) for o in expr.operands]
        return sympy.And(*[_relation(op, a, b) for op, a, b in zip(expr.ops, operands, operands[1:])])
    if isinstance(expr, ir.IfElse):
        return sympy.Piecewise((to_sympy(expr.then, env, node), to_sympy(expr.cond, env, node)),
                               (to_sympy(expr.orelse, env, node), True))
    raise TypeError(f"cannot build SymPy for {expr!r}")


def formulas(loss: ResolvedLoss) -> tuple[dict[str, sympy.Expr], dict[str, sympy.Expr], sympy.Expr]:
    """(symbols of inputs and numeric params, SymPy value of each local, the loss element)."""
    symbols = {name: sympy.Symbol(safe_name(name), real=True)
               for name in [i.name for i in loss.inputs] + list(loss.numeric_params)}
    env: dict[str, sympy.Expr] = dict(symbols)
    local_values: dict[str, sympy.Expr] = {}
    for local in loss.locals:
        with at(loss, local):
            env[local.name] = local_values[local.name] = _checked(_ours(to_sympy(local.expr, env)), loss, local)
    with at(loss, loss.locals[-1]):
        return symbols, local_values, stabilize(local_values[loss.name])


class FormulaTooLarge(Exception):
    """A formula past MAX_FORMULA_NODES; `at` makes it a SpecLimitError."""


class _TreeBound:
    """Refuses an expression whose tree, what SymPy walks, has more than MAX_FORMULA_NODES nodes. Sizes
    are counted once per distinct subexpression: the tree of a chain rule (or of nested conditions,
    or of nested lowerings) can grow exponentially while the expression itself grows linearly."""

    def __init__(self, what: str):
        self.what = what
        self.sizes: dict[sympy.Basic, int] = {}

    def __call__(self, expr: sympy.Basic) -> sympy.Basic:
        if self.size(expr) > MAX_FORMULA_NODES:
            raise FormulaTooLarge(f"{self.what} has more than {MAX_FORMULA_NODES:,} nodes written out "
                                  "(lossdsl.symbolic.derive.MAX_FORMULA_NODES)")
        return expr

    def size(self, expr: sympy.Basic) -> int:
        if expr not in self.sizes:
            self.sizes[expr] = 1 + sum(self.size(a) for a in expr.args)
        return self.sizes[expr]


def bounded(expr: sympy.Basic, what: str = "its derivative") -> sympy.Basic:
    """`expr` (a derivative, a condition split by branches) if its tree is within MAX_FORMULA_NODES."""
    return _TreeBound(what)(expr)


@contextmanager
def at(loss: ResolvedLoss, local: ir.Local):
    """SymPy's failures while working on `local` (too deep for its recursion, a construct it cannot
    handle or refuses, such as a comparison of a non-real constant) as errors at that line."""
    try:
        yield
    except RecursionError:
        raise loss.error(SpecLimitError, f"`{local.name}` is nested too deeply for the symbolic stage", local) from None
    except FormulaTooLarge as exc:
        raise loss.error(SpecLimitError, f"`{local.name}`: {exc}", local) from None
    except (TypeError, ValueError, ArithmeticError, LookupError, NotImplementedError) as exc:
        raise loss.error(SpecTypeError, f"`{local.name}`: {exc}", local) from None


def _ours(expr: sympy.Expr) -> sympy.Expr:
    """SymPy's own Abs and sign (its simplifier makes sqrt(x^2) into Abs(x)) as lossdsl's, with their conventions."""
    return expr.replace(sympy.Abs, absolute).replace(sympy.sign, sign)


def _checked(expr: sympy.Expr, loss: ResolvedLoss, local) -> sympy.Expr:
    """Reject constants with no real value (log(-1), x/0, inf - inf), or beyond the float range, where they are
    written."""
    if expr.has(sympy.zoo, sympy.nan, sympy.I):
        raise loss.error(SpecTypeError, f"`{local.name}` contains a constant with no real value (such as log(-1), "
                         "x/0 or inf - inf)", local)
    if not _in_float_range(expr):
        raise loss.error(SpecTypeError, f"`{local.name}` contains a constant beyond the float range (such as "
                         "1e300*1e300): write inf", local)
    return expr


def _in_float_range(expr: sympy.Expr) -> bool:
    return all(abs(number) <= _FLOAT_MAX for number in expr.atoms(sympy.Rational))


def representable(expr: sympy.Expr) -> sympy.Expr:
    """`expr`, a derivative, if its constants are floats: differentiating makes new ones (the derivative
    of 0^x has log(0), the second derivative of x^1e300 has 1e300*(1e300 - 1))."""
    if expr.has(sympy.zoo, sympy.nan, sympy.I) or not _in_float_range(expr):
        raise TypeError("its derivative has a constant with no real value or beyond the float range (as 0^x and "
                        "x^1e300 have)")
    return expr


def derive(loss: ResolvedLoss) -> KernelPlan:
    """The loss element, its stabilised and simplified gradients, and their shared CSE."""
    symbols, local_values, value = formulas(loss)
    with at(loss, loss.locals[-1]):
        grads = tuple(representable(simplify(stabilize(_ours(bounded(sympy.diff(value, symbols[name]))))))
                      for name in loss.wrt)
        # a temporary equal to a spec local (in the lowered form the kernel computes) takes the local's name
        names = {lowered(expr): safe_name(name) for name, expr in local_values.items() if name != loss.name}
        fused = [lowered(e) for e in (value, *grads)]
        value_steps, (value_result,) = _cse(fused[:1], names)
        fused_steps, fused_results = _cse(fused, names)
        whole = _whole_powers(fused, names, {symbols[p] for p in loss.numeric_params})
        shown = [lowered(stabilize(local_values[name])) for name in loss.outputs]
        output_steps, output_results = _cse(fused + shown, names) if shown else ((), ())
    return KernelPlan(loss, tuple(symbols[p] for p in loss.numeric_params), value, grads, value_steps, value_result,
                      fused_steps, tuple(fused_results),
                      tuple((n, e) for n, e in local_values.items() if n != loss.name and not e.is_Atom), whole,
                      tuple(output_steps), tuple(output_results))


def _whole_powers(exprs: list[sympy.Expr], names: dict[sympy.Expr, str], params: set) -> WholePowers | None:
    """The plan's CSEs again with each power x^e (lowered: power_from_log) whose exponent is made of parameters
    alone, so the same for every element, as whole_power(x, e)."""
    powers = {p for e in exprs for p in e.atoms(power_from_log) if p.args[1].free_symbols <= params}
    if not powers:
        return None
    whole = {p: whole_power(p.args[0], p.args[1]) for p in powers}
    exprs = [e.xreplace(whole) for e in exprs]
    exponents = tuple(sorted({p.args[1] for p in powers}, key=sympy.default_sort_key))
    value_steps, (value_result,) = _cse(exprs[:1], names)
    fused_steps, fused_results = _cse(exprs, names)
    return WholePowers(exponents, value_steps, value_result, fused_steps, tuple(fused_results))


def derive_hessian(plan: KernelPlan) -> KernelPlan:
    """The plan of `loss_grad_hess`: value, gradient and second derivative with respect to the first
    `wrt` input (what gradient boosting asks of an objective), in one CSE."""
    loss = plan.loss
    symbols, local_values, value = formulas(loss)
    x = symbols[loss.wrt[0]]
    with at(loss, loss.locals[-1]):
        hessian = representable(simplify(stabilize(_ours(bounded(sympy.diff(plan.grads[0], x))))))
        names = {lowered(expr): safe_name(name) for name, expr in local_values.items() if name != loss.name}
        steps, results = _cse([lowered(e) for e in (value, plan.grads[0], hessian)], names)
    return replace(plan, grads=(plan.grads[0], hessian), fused_steps=steps, fused_results=tuple(results),
                   whole_powers=None)


def lowered(expr: sympy.Expr) -> sympy.Expr:
    """The form the kernel computes (sigmoid and friends as shared exp/log1p), within MAX_FORMULA_NODES:
    the lowered form of a nested tanh or x^y repeats its argument, so its tree can grow exponentially."""
    return stabilize(expr, LOWERINGS, _TreeBound("its kernel's formula"))


def simplify(expr: sympy.Expr) -> sympy.Expr:
    """A cheap, meaning-preserving simplification: the shortest of a few candidate forms.

    `sympy.simplify` is avoided: it is slow on piecewise expressions and may cancel
    x/x, which changes the value where x is 0 or inf. The expanded form is tried only where it has
    at most MAX_EXPANDED_TERMS terms: a product of n sums (the derivative of n nested tanh) has 2^n.
    """
    transforms = [sympy.factor_terms]
    if _expanded_terms(expr) <= MAX_EXPANDED_TERMS:
        transforms.append(lambda e: sympy.factor_terms(sympy.expand(e, deep=False)))
    candidates = [expr]
    for transform in transforms:
        try:
            candidates.append(transform(expr))
        except (TypeError, ValueError, NotImplementedError):
            continue
    return min(candidates, key=sympy.count_ops)


def _expanded_terms(expr: sympy.Expr) -> int:
    """At least as many terms as `sympy.expand(expr, deep=False)` gives: it multiplies out products and
    integer powers of sums."""
    if expr.is_Add:
        return sum(_expanded_terms(arg) for arg in expr.args)
    if expr.is_Mul:
        return math.prod(len(arg.args) if arg.is_Add else _expanded_terms(arg) for arg in expr.args)
    if expr.is_Pow and expr.base.is_Add and expr.exp.is_Integer:  # a multinomial: C(n + k - 1, k - 1) terms
        return math.comb(abs(int(expr.exp)) + len(expr.base.args) - 1, len(expr.base.args) - 1)
    return 1


def _cse(exprs: list[sympy.Expr], local_names: dict[sympy.Expr, str]):
    """Joint CSE; temporaries that equal a spec local are named after it, the rest `_<n>`."""
    steps, results = sympy.cse(exprs, symbols=sympy.numbered_symbols("_"), order="canonical")
    expanded: dict[sympy.Symbol, sympy.Expr] = {}
    renames: dict[sympy.Symbol, sympy.Symbol] = {}
    for temp, definition in steps:
        expanded[temp] = full = definition.xreplace(expanded)
        name = local_names.get(full)
        if name is not None and name not in {r.name for r in renames.values()}:
            renames[temp] = sympy.Symbol(name, real=True)
    steps = tuple((renames.get(t, t), d.xreplace(renames)) for t, d in steps)
    return steps, [r.xreplace(renames) for r in results]


# --- formulas as people read them (`lossdsl show`, Loss.gradient_formula_text) ---



class _FormulaPrinter(StrPrinter):
    """SymPy → DSL-like text: `^` for powers, `a if c else b`, the DSL's function names."""

    def _print_Function(self, expr):
        name = type(expr).__name__
        if name == "power":
            return self._print(sympy.Pow(*expr.args, evaluate=False))
        if name == "gather":
            return f"{self._print(expr.args[0])}[{self._print(expr.args[1])}]"
        name = getattr(expr, "dsl_name", None) or ("lgamma" if name == "loggamma" else name)
        return f"{name}({', '.join(self._print(a) for a in expr.args)})"

    def _print_polygamma(self, expr):
        order, x = expr.args
        return f"digamma({self._print(x)})" if order == 0 else f"polygamma({order}, {self._print(x)})"

    def _print_Pow(self, expr, rational=False):
        text = super()._print_Pow(expr, rational)
        return text.replace("**", "^")

    def _print_Piecewise(self, expr):
        *pieces, (last, _) = expr.args
        text = self._print(last)
        for value, cond in reversed(pieces):
            text = f"({self._print(value)} if {self._print(cond)} else {text})"
        return text

    def _print_Relational(self, expr):
        infinite = against_infinity(expr)
        if infinite is not None:
            return f"{self._print(expr.lhs)} {infinite[0]} {'-' if infinite[1] < 0 else ''}inf"
        return f"{self._print(expr.lhs)} {expr.rel_op} {self._print(expr.rhs)}"

    def _print_And(self, expr):
        return " and ".join(self.parenthesize(a, 100) for a in expr.args)

    def _print_Or(self, expr):
        return " or ".join(self.parenthesize(a, 100) for a in expr.args)

    def _print_Float(self, expr):
        return repr(float(expr))

    def _print_Rational(self, expr):
        return super()._print_Rational(expr) if expr.q <= 1000 else repr(float(expr))

    def _print_Infinity(self, expr):
        return "inf"

    def _print_NegativeInfinity(self, expr):
        return "-inf"


def to_text(expr: sympy.Expr, local_values: tuple[tuple[str, sympy.Expr], ...] = ()) -> str:
    """A formula in the DSL's own notation, written with the spec's locals where they occur."""
    for name, value in reversed(local_values):
        expr = expr.xreplace({value: sympy.Symbol(name, real=True)})
    return _FormulaPrinter().doprint(expr)


def explain(plan, latex: bool = False) -> str:
    """The spec's locals, the loss and its derived gradients, one per line, as `lossdsl show` prints them.

    `plan` is a KernelPlan or a reductions.RowPlan: both give `readable()` and `readable_locals`.
    """
    loss = plan.loss
    value, grads = plan.readable()
    if latex:
        lines = [f"{loss.name} = {sympy.latex(value)}"]
        lines += [f"d{loss.name}/d{name} = {sympy.latex(grad)}" for name, grad in zip(loss.wrt, grads)]
        return "\n".join(lines)
    local_values = plan.readable_locals
    lines = [f"{name} = {to_text(expr, local_values[:index])}" for index, (name, expr) in enumerate(local_values)]
    lines.append(f"{loss.name} = {to_text(value, local_values)}")
    lines += [f"d{loss.name}/d{name} = {to_text(grad, local_values)}" for name, grad in zip(loss.wrt, grads)]
    return "\n".join(lines)
