"""SymPy → Numba source text, shared by every target.

Numba compiles the same `math.*` calls for the CPU and for CUDA, so one printer
serves both; only the kernel skeletons differ. The printer is strict: anything
it has no rule for raises instead of emitting half-valid code. Every literal is
wrapped in `F(...)`, the module's float type, so float32 kernels compute in
float32 like the frameworks do (a bare Python float would promote to float64).
"""
from __future__ import annotations

import sympy
from sympy.printing.pycode import PythonCodePrinter

from ..symbolic.derive import against_infinity
from ..symbolic.functions import FUNCTIONS

# SymPy's own functions that can appear in a plan, by class name: the function table's (its `numba`
# templates), and those only derivatives and rewrites make
_NATIVE = {
    **{f.build.removeprefix("sympy."): f.numba for f in FUNCTIONS.values() if f.numba},
    "log1p": "fast_log1p({0})",
    "expm1": "fast_expm1({0})",
    "sinh": "math.sinh({0})",  # cosh's derivative
    "Abs": "abs({0})",  # stability rewrites and derivatives make it
}

DIGAMMA_HELPER = """
def _digamma(x):
    # Recurrence up to x >= 6, then the asymptotic series; reflection for x < 0.
    if x <= 0 and math.floor(x) == x:
        return F(math.nan)
    result = F(0.0)
    if x < 0:
        result = -F(math.pi) / math.tan(F(math.pi) * x)
        x = F(1.0) - x
    while x < 6:
        result -= F(1.0) / x
        x += F(1.0)
    f = F(1.0) / (x * x)
    series = f * (F(1 / 12) - f * (F(1 / 120) - f * (F(1 / 252) - f * (F(1 / 240) - f * F(1 / 132)))))
    return result + math.log(x) - F(0.5) / x - series
"""


class UnsupportedExpression(TypeError):
    """The printer met a SymPy construct it has no Numba translation for."""


class NumbaPrinter(PythonCodePrinter):
    """Prints plan expressions as Numba-compatible Python; collects the helpers they need."""

    def __init__(self):
        super().__init__({"fully_qualified_modules": False, "strict": True})
        self.helpers: dict[str, str] = {}

    def _print_Symbol(self, expr):
        return expr.name  # plan symbols are already safe identifiers; SymPy would rename some

    def _print(self, expr, **kwargs):
        # every function by this printer's rules: SymPy's has methods for some names (sign), and prints
        # the math functions it knows (atan, erf) as bare names Numba cannot resolve
        if isinstance(expr, sympy.Function) and f"_print_{type(expr).__name__}" not in NumbaPrinter.__dict__:
            return self._print_Function(expr)
        return super()._print(expr, **kwargs)

    def _print_not_supported(self, expr):
        raise UnsupportedExpression(f"no Numba translation for {type(expr).__name__}: {expr}")

    # --- numbers: always of the kernel's float type ---
    def _literal(self, value: float) -> str:
        if value == float("inf"):
            return "F(math.inf)"
        if value == float("-inf"):
            return "F(-math.inf)"
        if value != value:
            return "F(math.nan)"
        return f"F({float(value)!r})"

    def _print_Integer(self, expr):
        return self._literal(int(expr))

    def _print_Rational(self, expr):
        return self._literal(float(expr))

    def _print_Float(self, expr):
        return self._literal(float(expr))

    _print_Zero = _print_One = _print_NegativeOne = _print_Integer
    _print_Half = _print_Rational

    def _print_Infinity(self, expr):
        return self._literal(float("inf"))

    def _print_NegativeInfinity(self, expr):
        return self._literal(float("-inf"))

    def _print_NaN(self, expr):
        return self._literal(float("nan"))

    def _print_Pi(self, expr):
        return "F(math.pi)"

    def _print_Exp1(self, expr):
        return "F(math.e)"

    def _print_BooleanTrue(self, expr):
        return "True"

    def _print_BooleanFalse(self, expr):
        return "False"

    # --- powers: multiplications for small integer exponents, sqrt, pow ---
    def _print_Pow(self, expr):
        base, exponent = expr.args
        b = self.parenthesize(base, sympy.printing.precedence.PRECEDENCE["Atom"] - 1)
        if exponent == sympy.S.Half:
            return f"math.sqrt({self._print(base)})"
        if exponent == -sympy.S.Half:
            return f"(F(1.0) / math.sqrt({self._print(base)}))"
        if exponent.is_Integer and 1 <= abs(int(exponent)) <= 4:
            product = "*".join([b] * abs(int(exponent)))
            return f"({product})" if exponent > 0 else f"(F(1.0) / ({product}))"
        return f"fast_pow({self._print(base)}, {self._print(exponent)})"

    # --- functions: SymPy's own by table, lossdsl's by their `numba` template ---
    def _print_Function(self, expr):
        name = type(expr).__name__
        args = [self._print(a) for a in expr.args]
        template = getattr(type(expr), "numba", None) or _NATIVE.get(name)
        if template is None:
            return self._print_not_supported(expr)
        helper = getattr(type(expr), "helper", None)
        if helper:
            self.helpers[name] = helper
        return template.format(*args)

    def _print_polygamma(self, expr):
        order, x = expr.args
        if order != 0:
            return self._print_not_supported(expr)
        self.helpers["digamma"] = DIGAMMA_HELPER
        return f"_digamma({self._print(x)})"

    def _print_Piecewise(self, expr):
        *pieces, (last, last_cond) = expr.args
        if last_cond is not sympy.true:
            return self._print_not_supported(expr)
        text = self._print(last)
        for value, cond in reversed(pieces):
            text = f"({self._print(value)} if {self._print(cond)} else {text})"
        return text

    def _print_Relational(self, expr):
        infinite = against_infinity(expr)  # a test against ±inf, kept one in float32 too
        if infinite is not None:
            return f"({self._print(expr.lhs)} {infinite[0]} {self._literal(infinite[1] * float('inf'))})"
        op = {"==": "==", "!=": "!=", "<": "<", "<=": "<=", ">": ">", ">=": ">="}[expr.rel_op]
        return f"({self._print(expr.lhs)} {op} {self._print(expr.rhs)})"

    def _print_And(self, expr):
        return "(" + " and ".join(self._print(a) for a in expr.args) + ")"

    def _print_Or(self, expr):
        return "(" + " or ".join(self._print(a) for a in expr.args) + ")"

    def _print_Not(self, expr):
        return f"(not {self._print(expr.args[0])})"
