"""The SymPy side of the function table: functions SymPy lacks, with PyTorch's conventions.

Each class states its derivative (`fdiff`) with the convention PyTorch uses at kinks, and
how the code generator prints it (`numba`: an expression template; `helper`: source of a
small function emitted into the generated module). `functions.FUNCTIONS` names, for each
DSL function, the builder here or in SymPy. Only the symbolic stage imports this module,
so loading a cached loss never imports SymPy.
"""
from __future__ import annotations

import sympy
from sympy.codegen.cfunctions import expm1, log1p  # noqa: F401 - builders named by the function table



class _Real(sympy.Function):
    """A real-valued function of real arguments (no automatic evaluation)."""

    dsl_name: str | None = None  # the DSL's name, where the class needs another one

    def _eval_is_real(self):
        return True

    def _latex(self, printer, exp=None):
        args = ", ".join(printer._print(a) for a in self.args)
        name = (self.dsl_name or type(self).__name__).replace("_", r"\_")
        text = rf"\operatorname{{{name}}}\left({args}\right)"
        return rf"{text}^{{{exp}}}" if exp else text


def _step(cond) -> sympy.Expr:
    return sympy.Piecewise((sympy.S.One, cond), (sympy.S.Zero, True))


class sign(_Real):
    """sign(x) with sign(0) = 0; its derivative is 0 everywhere (no Dirac delta)."""

    nargs = 1
    numba = "_sign({0})"
    helper = """
def _sign(x):
    return F(1.0) if x > 0 else F(-1.0) if x < 0 else x * F(0.0)
"""

    def fdiff(self, argindex=1):
        return sympy.S.Zero


class absolute(_Real):
    """|x|; d|x|/dx = sign(x), so 0 at x = 0 (PyTorch's abs backward)."""

    nargs = 1
    dsl_name = "abs"
    numba = "abs({0})"

    def _latex(self, printer, exp=None):
        text = rf"\left|{printer._print(self.args[0])}\right|"
        return rf"{text}^{{{exp}}}" if exp else text

    def fdiff(self, argindex=1):
        return sign(self.args[0])

    @classmethod
    def eval(cls, x):
        if x.could_extract_minus_sign():  # |-x| = |x|, so CSE sees one value
            return cls(-x)
        return None


class relu(_Real):
    """max(x, 0) with relu'(0) = 0 (PyTorch)."""

    nargs = 1
    numba = "_relu({0})"
    helper = """
def _relu(x):
    return F(0.0) if x <= 0 else x
"""

    def fdiff(self, argindex=1):
        return _step(self.args[0] > 0)


class _TieSplitting(_Real):
    """max or min of two; at a tie each side gets half the gradient (torch.maximum, torch.minimum).

    Subclasses set `_wins(a, b)`: the condition under which `a` is the result.
    """

    nargs = 2

    def fdiff(self, argindex=1):
        a, b = self.args if argindex == 1 else self.args[::-1]
        return sympy.Piecewise((sympy.S.One, self._wins(a, b)), (sympy.S.Half, sympy.Eq(a, b)), (sympy.S.Zero, True))


class maximum(_TieSplitting):
    """Binary max; NaN propagates."""

    dsl_name = "max"
    numba = "_maximum({0}, {1})"
    helper = """
def _maximum(a, b):
    return a if a > b or a != a else b
"""
    _wins = staticmethod(lambda a, b: a > b)


class minimum(_TieSplitting):
    """Binary min; NaN propagates."""

    dsl_name = "min"
    numba = "_minimum({0}, {1})"
    helper = """
def _minimum(a, b):
    return a if a < b or a != a else b
"""
    _wins = staticmethod(lambda a, b: a < b)


class clamp(_Real):
    """min(max(x, lo), hi); the gradient passes on the closed interval [lo, hi] (torch.clamp)."""

    nargs = 3
    numba = "_clamp({0}, {1}, {2})"
    helper = """
def _clamp(x, lo, hi):
    y = lo if x < lo else x
    return hi if y > hi else y
"""

    def fdiff(self, argindex=1):
        x, lo, hi = self.args
        if argindex == 1:
            return _step(sympy.And(x >= lo, x <= hi))
        if argindex == 2:
            return _step(x < lo)
        return _step(x > hi)


class sigmoid(_Real):
    """1 / (1 + exp(-x)), evaluated on the side where exp cannot overflow."""

    nargs = 1
    # no Numba template: rewrites.LOWERINGS turns it into shared exp(-|x|) pieces before printing

    def fdiff(self, argindex=1):
        x = self.args[0]
        return sigmoid(x) * sigmoid(-x)


class softplus(_Real):
    """log(1 + exp(x)), computed without overflow."""

    nargs = 1
    # no Numba template: rewrites.LOWERINGS turns it into shared exp(-|x|) pieces before printing

    def fdiff(self, argindex=1):
        return sigmoid(self.args[0])


class log_sigmoid(_Real):
    """log(sigmoid(x)) = -softplus(-x), computed without overflow."""

    nargs = 1
    # no Numba template: rewrites.LOWERINGS turns it into shared exp(-|x|) pieces before printing

    def fdiff(self, argindex=1):
        return sigmoid(-self.args[0])


class log_cosh(_Real):
    """log(cosh(x)) = |x| + log1p(exp(-2|x|)) - log 2, finite for large |x|."""

    nargs = 1
    # no Numba template: rewrites.LOWERINGS turns it into shared exp(-|x|) pieces before printing

    def fdiff(self, argindex=1):
        return sympy.tanh(self.args[0])


class tanh_from_exp(_Real):
    """tanh(x) given z = exp(-2|x|): a form only the lowering writes, so that tanh shares
    its exponential with log_cosh and neighbours (`fast_tanh_exp` in generated code)."""

    nargs = 2
    numba = "fast_tanh_exp({0}, {1})"


class log1p_unit(_Real):
    """log(1 + z) for z = exp(-|x|) in [0, 1], given r = 1/(1 + z): a form only the lowering writes, so that
    softplus and its kin share 1/(1 + z) with their sigmoid (`fast_log1p_unit` in generated code)."""

    nargs = 2
    numba = "fast_log1p_unit({0}, {1})"


class xlogy(_Real):
    """x*log(y), defined as 0 where x = 0 (torch.xlogy)."""

    nargs = 2
    numba = "_xlogy({0}, {1})"
    helper = """
def _xlogy(x, y):
    return F(0.0) if x == 0 and y == y else x * fast_log(y)
"""

    def fdiff(self, argindex=1):
        x, y = self.args
        if argindex == 1:
            # torch.xlogy's backward: log(y), but 0 where x = 0 and y <= 0 (where log(y) is not finite)
            return sympy.Piecewise((sympy.S.Zero, sympy.And(sympy.Eq(x, 0), y <= 0)), (sympy.log(y), True))
        return x / y


class log_clamped(_Real):
    """log(x) clamped below at -100, PyTorch's BCELoss convention.

    Its derivative is 1/max(x, 1e-12), which is what PyTorch's BCE backward
    computes, so p = 0 and p = 1 give large but finite gradients.
    """

    nargs = 1
    numba = "_log_clamped({0})"
    helper = """
def _log_clamped(x):
    v = fast_log(x)
    return F(-100.0) if v < F(-100.0) else v
"""

    def fdiff(self, argindex=1):
        return 1 / maximum(self.args[0], sympy.Float(1e-12))


class bce_clamped(_Real):
    """PyTorch's binary cross-entropy of probability p against target y, as one primitive.

    Value -(y*max(log p, -100) + (1 - y)*max(log(1 - p), -100)). PyTorch's backward is
    (p - y)/max(p*(1 - p), 1e-12), not the derivative of the clamped logs: the two differ
    only where p(1 - p) < 1e-12, e.g. a perfect prediction p = y = 0 gets 0 rather than 1.
    Taking it whole keeps that convention. d/dy = max(log(1 - p), -100) - max(log p, -100).
    """

    nargs = 2
    numba = "_bce_clamped({0}, {1})"
    helper = """
def _bce_clamped(p, y):
    log_p = fast_log(p)
    log_q = fast_log(F(1.0) - p)
    log_p = F(-100.0) if log_p < F(-100.0) else log_p
    log_q = F(-100.0) if log_q < F(-100.0) else log_q
    return -(y * log_p + (F(1.0) - y) * log_q)
"""

    def fdiff(self, argindex=1):
        p, y = self.args
        if argindex == 1:
            return (p - y) / maximum(p * (1 - p), sympy.Float(1e-12))
        return log_clamped(1 - p) - log_clamped(p)


class detach(_Real):
    """The value of x with a zero derivative (a stop-gradient, like torch's .detach())."""

    nargs = 1
    numba = "{0}"

    def fdiff(self, argindex=1):
        return sympy.S.Zero


class power(_Real):
    """x^e for a non-constant exponent, with torch.pow's derivative conventions.

    SymPy would write d/dx x^e as e*x^e/x, which is 0/0 at x = 0; PyTorch uses
    e*x^(e-1), and 0 when e = 0. For e, the derivative is x^e*log(x), taken as 0
    where x = 0 and e >= 0.
    """

    nargs = 2
    numba = "fast_pow({0}, {1})"

    def _latex(self, printer, exp=None):
        text = printer._print(sympy.Pow(*self.args, evaluate=False))
        return rf"\left({text}\right)^{{{exp}}}" if exp else text

    def fdiff(self, argindex=1):
        x, e = self.args
        if argindex == 1:
            return sympy.Piecewise((sympy.S.Zero, sympy.Eq(e, 0)), (e * power(x, e - 1), True))
        return sympy.Piecewise((sympy.S.Zero, sympy.And(sympy.Eq(x, 0), e >= 0)), (power(x, e) * sympy.log(x), True))


class log_of_base(_Real):
    """log|x| as `power_from_log` wants it (float64 in float32 kernels): a form only the
    lowering writes, so that x^a and x^b (a power and its derivative) share one logarithm."""

    nargs = 1
    numba = "fast_pow_log({0})"


class power_from_log(_Real):
    """x^e given log_of_base(x); written by the lowering only."""

    nargs = 3
    numba = "fast_pow_from_log({0}, {1}, {2})"


class whole_power(_Real):
    """x^e for a runtime e that the kernel has checked to be a small whole number (kernel_math's
    MAX_WHOLE_POWER_*): products of squarings (focal losses' gamma = 2 is x*x), in a copy of the element loop
    (`fast_ipow`)."""

    nargs = 2
    numba = "fast_ipow({0}, {1})"


def make_power(base: sympy.Expr, exponent: sympy.Expr) -> sympy.Expr:
    """`^`: SymPy's own Pow for a numeric exponent (it simplifies well), `power` otherwise."""
    return base ** exponent if exponent.is_Number else power(base, exponent)


def where(cond, a, b):
    return sympy.Piecewise((a, cond), (b, True))
