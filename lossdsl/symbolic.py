"""Stage 3: resolved IR → SymPy → stable forms → derivatives → simplified, CSE'd plan.

SymPy expressions are built node by node from the IR (never from text). Every
symbol is real. The result is a `KernelPlan`: target-neutral formulas that the
code generators print, with common subexpressions shared between the loss and
all its gradients (that is what makes the kernel fused).
"""
from __future__ import annotations

import hashlib
import keyword
from dataclasses import dataclass, replace

import sympy
from sympy.printing.str import StrPrinter

from . import ir
from .errors import SpecTypeError
from .functions import FUNCTIONS
from .resolve import ResolvedLoss
from .rewrites import LOWERINGS, stabilize
from .sympy_functions import absolute, make_power, sign

# Names the generated modules themselves use (CPU and CUDA); a spec name equal to one gets a trailing "_".
_TAKEN = set(keyword.kwlist) | {"F", "math", "np", "numba", "abs", "max", "min", "range", "FASTMATH", "kernel", "load",
                                "store", "fast_exp", "fast_log", "fast_log1p", "fast_tanh", "fast_tanh_exp", "fast_pow",
                                "fast_pow_log", "fast_pow_from_log", "cuda", "THREADS"}
LONGEST_NAME = 64  # longer spec names are shortened in generated code (LLVM mangles very long ones into clashes)


def safe_name(name: str) -> str:
    """A spec name as an identifier of generated code; one-to-one (`np` → `np_`, `np_` → `np__`, a name
    of over LONGEST_NAME characters → its first 32 and a hash: 46 characters ending in one `_`, a form
    no other rule makes)."""
    if len(name) > LONGEST_NAME:
        return f"{name[:32]}_{hashlib.sha256(name.encode()).hexdigest()[:12]}_"
    return name + "_" if name in _TAKEN or name.endswith("_") else name


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

    def readable(self) -> tuple[sympy.Expr, tuple[sympy.Expr, ...]]:
        """The loss and its gradients as formulas to show."""
        return self.value, self.grads

    @property
    def readable_locals(self) -> tuple[tuple[str, sympy.Expr], ...]:
        return self.local_values


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
    if left in (sympy.oo, -sympy.oo) and right not in (sympy.oo, -sympy.oo):
        op, left, right = _FLIPPED[op], right, left
    sign = 1 if right == sympy.oo else -1 if right == -sympy.oo else 0
    if sign and (op, sign) in _AGAINST_INFINITY:
        op, sign = _AGAINST_INFINITY[op, sign]
        right = sign * _FLOAT_MAX
    return _RELATIONS[op](left, right)


def _number(value: float) -> sympy.Expr:
    if value == float("inf"):
        return sympy.oo
    if value == float("-inf"):
        return -sympy.oo
    return sympy.Integer(int(value)) if float(value).is_integer() else sympy.Rational(repr(value))


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
        return FUNCTIONS[expr.func].builder()(*[to_sympy(a, env, node) for a in expr.args])
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
            return make_power(left, right)
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
        try:
            value = to_sympy(local.expr, env)
        except TypeError as exc:  # SymPy refuses, e.g. comparing a non-real constant
            raise SpecTypeError(f"`{local.name}`: {exc}", loss.file, local.pos.line, local.pos.column) from None
        env[local.name] = local_values[local.name] = _checked(_ours(value), loss, local)
    return symbols, local_values, stabilize(local_values[loss.name])


def _ours(expr: sympy.Expr) -> sympy.Expr:
    """SymPy's own Abs and sign (its simplifier makes sqrt(x^2) into Abs(x)) as lossdsl's, with their conventions."""
    return expr.replace(sympy.Abs, absolute).replace(sympy.sign, sign)


def _checked(expr: sympy.Expr, loss: ResolvedLoss, local) -> sympy.Expr:
    """Reject constants with no real value (log(-1), x/0, inf - inf) where they are written."""
    if expr.has(sympy.zoo, sympy.nan, sympy.I):
        raise SpecTypeError(f"`{local.name}` contains a constant with no real value (such as log(-1), x/0 or "
                            "inf - inf)", loss.file, local.pos.line, local.pos.column)
    return expr


def derive(loss: ResolvedLoss) -> KernelPlan:
    """The loss element, its stabilised and simplified gradients, and their shared CSE."""
    symbols, local_values, value = formulas(loss)
    grads = tuple(simplify(stabilize(_ours(sympy.diff(value, symbols[name])))) for name in loss.wrt)
    # a temporary equal to a spec local (in the lowered form the kernel computes) takes the local's name
    names = {stabilize(expr, LOWERINGS): safe_name(name) for name, expr in local_values.items() if name != loss.name}
    value_steps, (value_result,) = _cse([stabilize(value, LOWERINGS)], names)
    fused_steps, fused_results = _cse([stabilize(e, LOWERINGS) for e in (value, *grads)], names)
    return KernelPlan(loss, tuple(symbols[p] for p in loss.numeric_params), value, grads, value_steps, value_result,
                      fused_steps, tuple(fused_results),
                      tuple((n, e) for n, e in local_values.items() if n != loss.name and not e.is_Atom))


def derive_hessian(plan: KernelPlan) -> KernelPlan:
    """The plan of `loss_grad_hess`: value, gradient and second derivative with respect to the first
    `wrt` input (what gradient boosting asks of an objective), in one CSE."""
    loss = plan.loss
    symbols, local_values, value = formulas(loss)
    x = symbols[loss.wrt[0]]
    hessian = simplify(stabilize(_ours(sympy.diff(plan.grads[0], x))))
    names = {stabilize(expr, LOWERINGS): safe_name(name) for name, expr in local_values.items() if name != loss.name}
    steps, results = _cse([stabilize(e, LOWERINGS) for e in (value, plan.grads[0], hessian)], names)
    return replace(plan, grads=(plan.grads[0], hessian), fused_steps=steps, fused_results=tuple(results))


def simplify(expr: sympy.Expr) -> sympy.Expr:
    """A cheap, meaning-preserving simplification: the shortest of a few candidate forms.

    `sympy.simplify` is avoided: it is slow on piecewise expressions and may cancel
    x/x, which changes the value where x is 0 or inf.
    """
    candidates = [expr]
    for transform in (sympy.factor_terms, lambda e: sympy.factor_terms(sympy.expand(e, deep=False))):
        try:
            candidates.append(transform(expr))
        except (TypeError, ValueError, NotImplementedError):
            continue
    return min(candidates, key=sympy.count_ops)


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
