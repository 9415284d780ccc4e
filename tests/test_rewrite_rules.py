"""One row per rewrite and lowering rule: the rule keeps the formula's value, and is stable where the
naive form is not.

Each row gives an input the rule rewrites, the input formula's value written in mpmath, and its
points. The rewritten expression is evaluated by the small tree walker here, with each function's
meaning given in this file: in mpmath at 1000 digits it must equal the input formula (the rule is an
identity), and in float64, lowered as the compiler lowers it before printing, it must be finite and
accurate where the naive float64 formula overflows, underflows or cancels.
"""
from __future__ import annotations

import functools
import math
import operator
from dataclasses import dataclass
from typing import Callable

import mpmath
import numpy as np
import pytest
import sympy
from sympy.codegen.cfunctions import expm1, log1p

from lossdsl.symbolic.rewrites import LOWERINGS, RULES, stabilize
from lossdsl.symbolic.sympy_functions import (absolute, log1p_unit, log_cosh, log_of_base, log_sigmoid, minimum, power,
                                              power_from_log, relu, sigmoid, softplus, tanh_from_exp)

x, e = sympy.symbols("x e", real=True)
DIGITS = 1000  # enough for the cancellations in the input formulas (1 - sigmoid(800) loses 348 digits)


@dataclass(frozen=True)
class Row:
    expr: sympy.Expr  # an input the rule rewrites, in x (and e)
    exact: Callable  # the input formula in mpmath: exact at DIGITS digits
    points: tuple  # x, or (x, e), where the rewritten form must keep the value
    naive_fails: tuple = ()  # points where the naive float64 formula is not finite or wrong in its leading digits
    atol: float = 1e-320  # float64 absolute tolerance: an exact value below it underflows to 0


def _sigmoid(v):
    return 1 / (1 + mpmath.exp(-v))


_SYMMETRIC = (-800.0, -50.0, -3.0, 0.0, 1e-20, 0.5, 50.0, 800.0)
# log_cosh lowered is |x| + log1p(exp(-2|x|)) - log 2: near 0 that cancels, leaving an absolute error of
# about one rounding of log 2 (log_cosh(1e-8) = 5e-17 comes out as 1e-16), so there it holds in absolute terms
_LOG_COSH_ATOL = 4e-16

ROWS = {
    "log_sigmoid": Row(sympy.log(sigmoid(x)), lambda v: mpmath.log(_sigmoid(v)), _SYMMETRIC, (-800.0, 50.0)),
    "log_one_minus_sigmoid": Row(sympy.log(1 - sigmoid(x)), lambda v: mpmath.log(1 - _sigmoid(v)), _SYMMETRIC,
                                 (50.0, 800.0)),
    "softplus": Row(sympy.log(1 + sympy.exp(x)), lambda v: mpmath.log(1 + mpmath.exp(v)), _SYMMETRIC,
                    (-50.0, 800.0)),
    "log1p": Row(sympy.log(1 + x), lambda v: mpmath.log(1 + v), (-0.5, -1e-20, 1e-20, 1e-8, 3.0, 800.0),
                 (-1e-20, 1e-20)),
    "expm1": Row(sympy.exp(x) - 1, lambda v: mpmath.exp(v) - 1, (-800.0, -1e-20, 1e-20, 1e-8, 2.0, 50.0),
                 (-1e-20, 1e-20)),
    "one_minus_sigmoid": Row(1 - sigmoid(x), lambda v: 1 - _sigmoid(v), (*_SYMMETRIC, 700.0), (50.0, 700.0)),
    "log_cosh": Row(sympy.log(sympy.cosh(x)), lambda v: mpmath.log(mpmath.cosh(v)), (*_SYMMETRIC, 1e-8, 0.05),
                    (-800.0, 800.0), atol=_LOG_COSH_ATOL),
    "lower_sigmoid": Row(sigmoid(x), _sigmoid, (*_SYMMETRIC, -710.0), (-710.0,)),
    "lower_log_sigmoid": Row(log_sigmoid(x), lambda v: mpmath.log(_sigmoid(v)), _SYMMETRIC, (-800.0, 50.0)),
    "lower_softplus": Row(softplus(x), lambda v: mpmath.log(1 + mpmath.exp(v)), _SYMMETRIC, (-50.0, 800.0)),
    "lower_log_cosh": Row(log_cosh(x), lambda v: mpmath.log(mpmath.cosh(v)), (*_SYMMETRIC, 1e-8, 0.05),
                          (-800.0, 800.0), atol=_LOG_COSH_ATOL),
    "lower_tanh": Row(sympy.tanh(x), mpmath.tanh, (*_SYMMETRIC, -0.7, 0.7), (-800.0, 800.0)),
    # a sharing rule: x^e is stable as it is, so no point where the naive form fails
    "lower_power": Row(power(x, e), mpmath.power,
                       ((2.5, 1.5), (1e-20, 0.5), (1e-20, -10.0), (800.0, 10.0), (0.5, -3.0), (-2.0, 3.0), (3.0, 0.0))),
}

# --- what each function means, and a walker that evaluates a tree with one such table ------------------

def _power_from_log(lib):
    """x^e from log|x| where x > 0 (the kernels' contract); elsewhere the plain power."""
    return lambda base, exponent, log_base: lib.exp(exponent * log_base) if base > 0 else lib.power(base, exponent)


# the mathematical definitions, in mpmath
EXACT = {
    sympy.exp: mpmath.exp, sympy.log: mpmath.log, sympy.cosh: mpmath.cosh, sympy.tanh: mpmath.tanh,
    log1p: mpmath.log1p, expm1: mpmath.expm1, absolute: mpmath.fabs, minimum: min, relu: lambda v: max(v, 0),
    sigmoid: _sigmoid, log_sigmoid: lambda v: mpmath.log(_sigmoid(v)),
    softplus: lambda v: mpmath.log(1 + mpmath.exp(v)), log_cosh: lambda v: mpmath.log(mpmath.cosh(v)),
    power: mpmath.power,
    tanh_from_exp: lambda v, z: mpmath.sign(v) * (1 - z) / (1 + z),  # z = exp(-2|x|)
    log_of_base: lambda v: mpmath.log(abs(v)), power_from_log: _power_from_log(mpmath),
    log1p_unit: lambda z, r: mpmath.log1p(z),  # r = 1/(1 + z), shared with a sigmoid
}

# float64, for lowered trees: the stable primitives (sigmoid, softplus, ...) have no entry, as the compiler
# lowers them before printing; the lowering-only forms follow their kernels' documented contract
FLOAT64 = {
    sympy.exp: np.exp, sympy.log: np.log, sympy.cosh: np.cosh, log1p: np.log1p, expm1: np.expm1,
    absolute: np.abs, minimum: np.minimum, relu: lambda v: np.maximum(v, 0.0),
    tanh_from_exp: lambda v, z: np.sign(v) * (1 - 2 * z / (1 + z)) if abs(v) > 0.625 else np.tanh(v),
    log_of_base: lambda v: np.log(np.abs(v)), power_from_log: _power_from_log(np),
    log1p_unit: lambda z, r: np.log1p(z),
}

# the textbook float64 formulas a spec author would write
NAIVE = {
    **FLOAT64,
    sigmoid: lambda v: 1 / (1 + np.exp(-v)), log_sigmoid: lambda v: np.log(1 / (1 + np.exp(-v))),
    softplus: lambda v: np.log(1 + np.exp(v)), log_cosh: lambda v: np.log(np.cosh(v)),
    sympy.tanh: lambda v: (np.exp(v) - np.exp(-v)) / (np.exp(v) + np.exp(-v)), power: np.power,
}

_OPERATORS = {sympy.Add: lambda *a: functools.reduce(operator.add, a),
              sympy.Mul: lambda *a: functools.reduce(operator.mul, a), sympy.Pow: operator.pow,
              sympy.GreaterThan: operator.ge, sympy.StrictGreaterThan: operator.gt,
              sympy.LessThan: operator.le, sympy.StrictLessThan: operator.lt}


def evaluate(expr, at: dict, functions: dict, number: Callable):
    """`expr` at the point `at` (symbol → value); a function with no entry in `functions` is a KeyError,
    so a rule that brings a new function needs its meaning here."""
    if expr.is_Symbol:
        return at[expr]
    if expr.is_Number:
        return number(expr)
    if expr is sympy.true:
        return True
    if isinstance(expr, sympy.Piecewise):
        value = next(v for v, cond in expr.args if evaluate(cond, at, functions, number))
        return evaluate(value, at, functions, number)
    args = [evaluate(a, at, functions, number) for a in expr.args]
    return {**_OPERATORS, **functions}[type(expr)](*args)


def _mpf(number: sympy.Number):
    return mpmath.mpf(number.p) / number.q if number.is_Rational else mpmath.mpf(float(number))


def _exact(expr, point):
    """At the working precision (the checks set DIGITS)."""
    return evaluate(expr, dict(zip((x, e), map(mpmath.mpf, point))), EXACT, _mpf)


def _float64(expr, point, functions):
    with np.errstate(all="ignore"):
        return float(evaluate(expr, dict(zip((x, e), map(np.float64, point))), functions,
                              lambda n: np.float64(float(n))))


def _accurate(value: float, exact, rtol: float, atol: float) -> bool:
    return math.isfinite(value) and abs(mpmath.mpf(value) - exact) <= rtol * abs(exact) + atol


def _points(points):
    return [p if isinstance(p, tuple) else (p,) for p in points]


# --- the checks ----------------------------------------------------------------------------------------

RULE = {rule.name: rule for rule in RULES + LOWERINGS}
RTOL = 1e-13  # float64: a few roundings


def _rewritten(name: str) -> sympy.Expr:
    replacement = RULE[name].apply(ROWS[name].expr)
    assert replacement is not None, f"{name} does not rewrite its row's input {ROWS[name].expr}"
    return replacement


def test_every_rule_has_a_row():
    """A new rule without a row fails here."""
    names = [rule.name for rule in RULES + LOWERINGS]
    assert len(names) == len(set(names))
    assert set(ROWS) == set(names)


@pytest.mark.parametrize("name", ROWS)
def test_rule_keeps_the_value(name):
    """At 1000 digits the rewritten form equals the input formula, at every point."""
    row, rewritten = ROWS[name], _rewritten(name)
    with mpmath.workdps(DIGITS):
        eps = mpmath.mpf(10) ** -(DIGITS // 2)
        for point in _points(row.points):
            exact, got = row.exact(*map(mpmath.mpf, point)), _exact(rewritten, point)
            assert abs(got - exact) <= eps * (1 + abs(exact)), (point, mpmath.nstr(got, 17), mpmath.nstr(exact, 17))


@pytest.mark.parametrize("name", ROWS)
def test_lowered_form_is_accurate_in_float64(name):
    """The rewritten form, lowered as the compiler lowers it, in float64 against the exact value."""
    row, lowered = ROWS[name], stabilize(_rewritten(name), LOWERINGS)
    for point in _points(row.points):
        with mpmath.workdps(DIGITS):
            exact = row.exact(*map(mpmath.mpf, point))
            got = _float64(lowered, point, FLOAT64)
            assert _accurate(got, exact, RTOL, row.atol), (point, got, mpmath.nstr(exact, 17))


@pytest.mark.parametrize("name", [name for name, row in ROWS.items() if row.naive_fails])
def test_lowered_form_holds_where_the_naive_one_fails(name):
    """Where the textbook float64 formula overflows, underflows or cancels, the lowered form is finite and right."""
    row, lowered = ROWS[name], stabilize(_rewritten(name), LOWERINGS)
    for point in _points(row.naive_fails):
        with mpmath.workdps(DIGITS):
            exact = row.exact(*map(mpmath.mpf, point))
            naive, got = _float64(row.expr, point, NAIVE), _float64(lowered, point, FLOAT64)
            assert not _accurate(naive, exact, 1e-3, row.atol), (point, naive, "the naive form holds here")
            assert _accurate(got, exact, RTOL, row.atol), (point, got, mpmath.nstr(exact, 17))
