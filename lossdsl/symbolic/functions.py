"""The DSL's functions: one table row each.

A row says what every stage needs: the name and arity the resolver checks, which
arguments are conditions, where the SymPy builder lives (a SymPy function, or a class
in `sympy_functions.py` whose `fdiff` states PyTorch's convention at kinks and whose
`numba` template says how it is printed), the interval the function-table tests sample
from, and a line of documentation. The table itself does not import SymPy, so the
resolver and a cached load never do.

Adding a function = a row here: for one of SymPy's, with its `numba` template; otherwise a class in
sympy_functions.py, which carries its own.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Function:
    name: str
    arity: int
    build: str  # the SymPy builder: "sympy.NAME", or a NAME in lossdsl.symbolic.sympy_functions
    doc: str
    domain: tuple[float, float] = (-3.0, 3.0)  # where tests/test_functions.py samples the first argument
    condition_args: tuple[int, ...] = ()  # argument positions that take a condition, not a number
    numba: str = ""  # for a SymPy function ("sympy.NAME"): how it is printed, e.g. "math.cosh({0})"

    def builder(self) -> Callable:
        """The callable that builds this function's SymPy expression (imports SymPy)."""
        import sympy

        from . import sympy_functions
        module, _, name = self.build.rpartition(".")
        return getattr(sympy if module == "sympy" else sympy_functions, name)


FUNCTIONS: dict[str, Function] = {f.name: f for f in [
    Function("abs", 1, "absolute", "|x|; derivative sign(x), 0 at 0"),
    Function("sqrt", 1, "sympy.sqrt", "square root", (0.1, 4.0)),  # a power: printed as one
    Function("exp", 1, "sympy.exp", "e^x", numba="fast_exp({0})"),  # the module binds its float type's exp
    Function("log", 1, "sympy.log", "natural logarithm", (0.1, 4.0), numba="fast_log({0})"),
    Function("log1p", 1, "log1p", "log(1 + x), accurate for small x", (-0.9, 3.0)),
    Function("expm1", 1, "expm1", "exp(x) - 1, accurate for small x"),
    Function("pow", 2, "make_power", "x^y (same as x^y)", (0.1, 3.0)),
    Function("min", 2, "minimum", "smaller of two; a tie splits the gradient (torch.minimum)"),
    Function("max", 2, "maximum", "larger of two; a tie splits the gradient (torch.maximum)"),
    Function("clamp", 3, "clamp", "clamp(x, lo, hi); gradient 1 on [lo, hi] (torch.clamp); lo/hi may be ±inf"),
    Function("sign", 1, "sign", "-1, 0 or 1; derivative 0"),
    Function("relu", 1, "relu", "max(x, 0); relu'(0) = 0"),
    Function("sigmoid", 1, "sigmoid", "1 / (1 + exp(-x)), stable for large |x|"),
    Function("log_sigmoid", 1, "log_sigmoid", "log(sigmoid(x)) = -softplus(-x), stable"),
    Function("softplus", 1, "softplus", "log(1 + exp(x)), stable"),
    Function("tanh", 1, "sympy.tanh", "hyperbolic tangent", numba="fast_tanh({0})"),
    Function("cosh", 1, "sympy.cosh", "hyperbolic cosine", numba="math.cosh({0})"),
    Function("log_cosh", 1, "log_cosh", "log(cosh(x)), stable for large |x|"),
    Function("xlogy", 2, "xlogy", "x*log(y), 0 where x = 0 (torch.xlogy)", (0.1, 3.0)),
    Function("erf", 1, "sympy.erf", "error function, 2/sqrt(pi) times the integral of exp(-t^2) from 0 to x",
             numba="math.erf({0})"),
    Function("lgamma", 1, "sympy.loggamma", "log|Gamma(x)|", (0.5, 5.0), numba="math.lgamma({0})"),
    Function("log_clamped", 1, "log_clamped", "max(log(x), -100); derivative 1/max(x, 1e-12) (PyTorch BCE)",
             (0.05, 0.95)),
    Function("bce_clamped", 2, "bce_clamped", "PyTorch's BCE of probability x against target y, logs clamped at -100; "
             "d/dx = (x - y)/max(x(1 - x), 1e-12) as PyTorch", (0.05, 0.95)),
    Function("detach", 1, "detach", "x, with derivative 0 (stop-gradient)"),
    Function("where", 3, "where", "where(c, a, b) = a if c else b", condition_args=(0,)),
]}

# Reductions over a named axis: `op(body, axis)`; norm also takes its order p (default 2).
# Their derivatives are the compiler's (derive.py), so they are not SymPy functions.
REDUCTIONS: dict[str, str] = {
    "sum": "sum over the axis",
    "mean": "sum / length of the axis",
    "max": "largest entry; the gradient goes to the first arg-max (torch.max(x, dim)); a NaN wins",
    "min": "smallest entry; the gradient goes to the first arg-min (torch.min(x, dim)); a NaN wins",
    "logsumexp": "log(sum(exp(x))), computed stably; gradient softmax(x)",
    "norm": "p-norm (sum(|x|^p))^(1/p), p = 2 unless given; gradient 0 where the norm is 0 (torch.norm)",
}

CONSTANTS: dict[str, float] = {"pi": 3.141592653589793, "e": 2.718281828459045, "inf": float("inf")}
