"""Every row of the function table: value against NumPy, derivative against finite
differences, and the derivative conventions at kinks — through one compiled kernel
that selects the function under test with an input `k`."""
import math

import numpy as np
import pytest

import lossdsl
from lossdsl.symbolic.functions import FUNCTIONS

NAMES = list(FUNCTIONS)


def _call(name):
    arity = FUNCTIONS[name].arity
    if name == "where":
        return "where(x < y, x*z, y)"
    return f"{name}({', '.join('xyz'[:arity])})"


SPEC = "loss under_test(x, y, z, k) wrt x, y, z\n    under_test = " + " else ".join(
    f"{_call(name)} if k == {index}" for index, name in enumerate(NAMES)) + " else 0\n"

_lgamma = np.vectorize(math.lgamma)
_erf = np.vectorize(math.erf)
REFERENCE = {  # independent NumPy definitions of each function of (x, y, z)
    "abs": lambda x, y, z: np.abs(x),
    "sqrt": lambda x, y, z: np.sqrt(x),
    "exp": lambda x, y, z: np.exp(x),
    "log": lambda x, y, z: np.log(x),
    "log1p": lambda x, y, z: np.log1p(x),
    "expm1": lambda x, y, z: np.expm1(x),
    "pow": lambda x, y, z: x ** y,
    "min": lambda x, y, z: np.minimum(x, y),
    "max": lambda x, y, z: np.maximum(x, y),
    "clamp": lambda x, y, z: np.clip(x, y, z),
    "sign": lambda x, y, z: np.sign(x),
    "relu": lambda x, y, z: np.maximum(x, 0.0),
    "sigmoid": lambda x, y, z: 1.0 / (1.0 + np.exp(-x)),
    "log_sigmoid": lambda x, y, z: -np.logaddexp(0.0, -x),
    "softplus": lambda x, y, z: np.logaddexp(0.0, x),
    "tanh": lambda x, y, z: np.tanh(x),
    "cosh": lambda x, y, z: np.cosh(x),
    "log_cosh": lambda x, y, z: np.log(np.cosh(x)),
    "xlogy": lambda x, y, z: x * np.log(y),
    "erf": lambda x, y, z: _erf(x),
    "lgamma": lambda x, y, z: _lgamma(x),
    "log_clamped": lambda x, y, z: np.maximum(np.log(x), -100.0),
    "bce_clamped": lambda x, y, z: -(y * np.maximum(np.log(x), -100.0) + (1 - y) * np.maximum(np.log1p(-x), -100.0)),
    "detach": lambda x, y, z: x,
    "where": lambda x, y, z: np.where(x < y, x * z, y),
}
ZERO_DERIVATIVE = {"detach"}


def test_reference_covers_the_table():
    assert set(REFERENCE) == set(FUNCTIONS)


@pytest.fixture(scope="module")
def under_test():
    return lossdsl.compile(SPEC)


def _inputs(name, rng, n=64):
    row = FUNCTIONS[name]
    x = rng.uniform(*row.domain, n)
    if name == "clamp":
        y, z = rng.uniform(-1.0, -0.2, n), rng.uniform(0.2, 1.0, n)
    else:
        y, z = rng.uniform(0.1, 3.0, n), rng.uniform(-2.0, 2.0, n)
    return x, y, z, np.full(n, NAMES.index(name), np.float64)


@pytest.mark.parametrize("name", NAMES)
def test_value_and_derivatives(under_test, name):
    x, y, z, k = _inputs(name, np.random.default_rng(NAMES.index(name)))
    reference = REFERENCE[name]
    value, grads = under_test.value_and_grad(x, y, z, k, reduction="none")
    np.testing.assert_allclose(value, reference(x, y, z), rtol=1e-12, atol=1e-12)
    for index, grad in enumerate(grads):
        args = [x, y, z]
        h = 1e-6 * np.maximum(1.0, np.abs(args[index]))
        plus, minus = list(args), list(args)
        plus[index], minus[index] = args[index] + h, args[index] - h
        numeric = (reference(*plus) - reference(*minus)) / (2 * h)
        if name in ZERO_DERIVATIVE:
            numeric = np.zeros_like(numeric)
        np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-7, err_msg=f"d{name}/d{'xyz'[index]}")


def _at(under_test, name, x, y=1.0, z=1.0):
    value, grads = under_test.value_and_grad(np.array([x]), np.array([y]), np.array([z]),
                                             np.array([float(NAMES.index(name))]), reduction="none")
    return value[0], tuple(g[0] for g in grads)


@pytest.mark.parametrize("name, point, value, grads", [
    ("abs", (0.0,), 0.0, (0.0, 0.0, 0.0)),              # d|x|/dx = 0 at 0 (PyTorch)
    ("relu", (0.0,), 0.0, (0.0, 0.0, 0.0)),             # relu'(0) = 0
    ("sign", (-2.0,), -1.0, (0.0, 0.0, 0.0)),
    ("max", (1.5, 1.5), 1.5, (0.5, 0.5, 0.0)),          # torch.maximum splits a tie
    ("min", (1.5, 1.5), 1.5, (0.5, 0.5, 0.0)),
    ("clamp", (-1.0, -1.0, 2.0), -1.0, (1.0, 0.0, 0.0)),  # torch.clamp: gradient passes at the bounds
    ("clamp", (2.0, -1.0, 2.0), 2.0, (1.0, 0.0, 0.0)),
    ("clamp", (-3.0, -1.0, 2.0), -1.0, (0.0, 1.0, 0.0)),
    ("clamp", (3.0, -1.0, 2.0), 2.0, (0.0, 0.0, 1.0)),
    ("log_clamped", (0.0,), -100.0, (1e12, 0.0, 0.0)),   # PyTorch BCE: log clamped, 1/max(p, 1e-12)
    ("xlogy", (0.0, 0.0), 0.0, (0.0, math.nan, 0.0)),    # torch.xlogy(0, 0) = 0; d/dy = x/y is NaN in torch too
    ("xlogy", (0.0, 2.0), 0.0, (math.log(2.0), 0.0, 0.0)),  # torch: d/dx = log(y), 0 only where x = 0, y <= 0
    ("xlogy", (0.0, -1.0), 0.0, (0.0, 0.0, 0.0)),
    ("pow", (0.0, 0.0), 1.0, (0.0, 0.0, 0.0)),           # torch.pow conventions at 0^0
    ("pow", (0.0, 2.0), 0.0, (0.0, 0.0, 0.0)),
    ("sigmoid", (-1000.0,), 0.0, (0.0, 0.0, 0.0)),
    ("log_sigmoid", (-1000.0,), -1000.0, (1.0, 0.0, 0.0)),
    ("softplus", (1000.0,), 1000.0, (1.0, 0.0, 0.0)),
    ("log_cosh", (1000.0,), 1000.0 - math.log(2.0), (1.0, 0.0, 0.0)),
    ("detach", (3.0,), 3.0, (0.0, 0.0, 0.0)),
    ("bce_clamped", (0.0, 1.0), 100.0, (-1e12, 100.0, 0.0)),  # PyTorch: (p - y)/max(p(1 - p), 1e-12)
    ("bce_clamped", (0.0, 0.0), 0.0, (0.0, 100.0, 0.0)),      # a perfect prediction has gradient 0
    ("bce_clamped", (1.0, 1.0), 0.0, (0.0, -100.0, 0.0)),
])
def test_conventions_at_kinks_and_extremes(under_test, name, point, value, grads):
    got_value, got_grads = _at(under_test, name, *point)
    assert got_value == pytest.approx(value, rel=1e-12, abs=1e-300)
    assert got_grads == pytest.approx(grads, rel=1e-12, abs=1e-300, nan_ok=True)


def test_nan_propagates_through_every_function(under_test):
    for name in NAMES:
        if name in ("sign",):
            continue
        value, _ = _at(under_test, name, math.nan, 0.5, 0.7)
        if name == "where":  # the condition is False for NaN: the other branch is chosen
            continue
        assert math.isnan(value), name
