"""Stability rewrites: each rule's form, and its values at extreme inputs against mpmath."""
import math

import mpmath
import numpy as np
import pytest
import sympy
from sympy.codegen.cfunctions import expm1, log1p

import lossdsl
from lossdsl.symbolic.sympy_functions import log_cosh, log_sigmoid, sigmoid, softplus
from lossdsl.symbolic.rewrites import RULES, stabilize

x = sympy.Symbol("x", real=True)

# rule name → (unstable input form, expected stable form, DSL text, mpmath reference, extreme points)
CASES = {
    "log_sigmoid": (sympy.log(sigmoid(x)), log_sigmoid(x), "log(sigmoid(x))",
                    lambda v: -mpmath.log1p(mpmath.exp(-v)), [-1000.0, -40.0, 0.0, 40.0, 1000.0]),
    "log_one_minus_sigmoid": (sympy.log(1 - sigmoid(x)), log_sigmoid(-x), "log(1 - sigmoid(x))",
                              lambda v: -mpmath.log1p(mpmath.exp(v)), [-1000.0, -40.0, 0.0, 40.0, 1000.0]),
    "softplus": (sympy.log(1 + sympy.exp(x)), softplus(x), "log(1 + exp(x))",
                 lambda v: mpmath.log1p(mpmath.exp(v)), [-1000.0, -40.0, 0.0, 40.0, 1000.0]),
    "log1p": (sympy.log(1 + x), log1p(x), "log(1 + x)", lambda v: mpmath.log1p(v), [1e-300, 1e-12, 1e-5, 3.0]),
    "expm1": (sympy.exp(x) - 1, expm1(x), "exp(x) - 1", lambda v: mpmath.expm1(v), [-1e-12, 1e-300, 1e-8, 2.0]),
    "one_minus_sigmoid": (1 - sigmoid(x), sigmoid(-x), "1 - sigmoid(x)",
                          lambda v: 1 / (1 + mpmath.exp(v)), [-50.0, 0.0, 40.0, 700.0]),
    "log_cosh": (sympy.log(sympy.cosh(x)), log_cosh(x), "log(cosh(x))",
                 lambda v: mpmath.log(mpmath.cosh(v)), [-1000.0, -3.0, 0.5, 800.0]),
}


def test_every_rule_has_a_case():
    assert {r.name for r in RULES} == set(CASES)


@pytest.mark.parametrize("name", CASES)
def test_rule_form(name):
    unstable, stable, *_ = CASES[name]
    assert stabilize(unstable) == stable


@pytest.fixture(scope="module")
def unstable_forms():
    """One compiled loss holding every unstable form as written; input k selects one."""
    body = " else ".join(f"{case[2]} if k == {index}" for index, case in enumerate(CASES.values()))
    return lossdsl.compile(f"loss t(x, k)\n    t = {body} else 0\n")


@pytest.mark.parametrize("name", CASES)
def test_rule_values_and_gradients_at_extremes(unstable_forms, name):
    _, _, text, reference, points = CASES[name]
    k = np.full(len(points), float(list(CASES).index(name)))
    values, grads = unstable_forms.value_and_grad(np.array(points), k, reduction="none")
    mpmath.mp.dps = 50
    for point, value, grad in zip(points, values, grads):
        expected = float(reference(mpmath.mpf(point)))
        expected_grad = float(mpmath.diff(reference, mpmath.mpf(point)))
        assert value == pytest.approx(expected, rel=1e-14, abs=1e-300), (name, point)
        assert math.isfinite(grad) and grad == pytest.approx(expected_grad, rel=1e-9, abs=1e-300), (name, point)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_tests_against_infinity_hold_in_float32(dtype):
    """`x == inf` and `x > -inf` are compared with the infinities themselves in the kernels (the
    largest float64 is inf in float32, where `x >= -max` would let -inf through)."""
    loss = lossdsl.compile("loss t(x, y)\n    t = (1 if x == inf else 0) + (2 if y > -inf else 0)\n")
    x = np.array([np.inf, 1.0, -np.inf, 3e38], dtype)
    y = np.array([-np.inf, 0.0, -3e38, np.inf], dtype)
    np.testing.assert_array_equal(loss(x, y, reduction="none"), np.array([1, 2, 2, 2], dtype))
