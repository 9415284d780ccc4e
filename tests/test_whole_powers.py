"""Powers with a runtime exponent: calls whose exponents are small whole numbers take the loop that
multiplies (x^2 as x*x), the others the general power; both against NumPy's float64 power."""
import numpy as np
import pytest

import lossdsl

SPEC = "loss powered(x)\n    param g = 2.0\n    powered = x^g\n"
X = np.array([-3.0, -1.5, -1.0, -0.0, 0.0, 1e-20, 0.3, 1.0, 2.5, 7.0, 1e10, np.inf, -np.inf, np.nan])


@pytest.fixture(scope="module")
def powered():
    return lossdsl.compile(SPEC)


def _ulps(got, expected, dtype):
    got, expected = np.asarray(got, np.float64), np.asarray(expected, np.float64)
    both = np.isfinite(expected) & np.isfinite(got)
    assert np.array_equal(np.isnan(got), np.isnan(expected)) and np.array_equal(got[~both], expected[~both], equal_nan=True)
    spacing = np.spacing(np.abs(expected[both]).astype(dtype)).astype(np.float64)
    # a subnormal result loses relative precision at each float product after the power (gamma, the
    # weight): there the error counts in units of a few subnormals
    spacing = np.maximum(spacing, 4 * float(np.finfo(dtype).smallest_subnormal))
    return (np.abs(got[both] - expected[both]) / spacing).max(initial=0.0)


# float32 takes whole exponents up to 8 by products, float64 up to 4; 9, 5 and 2.5 go the general way
@pytest.mark.parametrize("dtype, g", [(np.float32, e) for e in (0, 1, 2, 3, 4, 8, 9, 2.5)]
                         + [(np.float64, e) for e in (0, 1, 2, 3, 4, 5, 2.5)])
@pytest.mark.parametrize("weighted", [False, True])
def test_values_and_gradients_against_numpy(powered, dtype, g, weighted):
    loss = powered.with_params(g=float(g))
    x = X.astype(dtype)
    options = {"sample_weight": np.full(x.shape, 2.0, dtype)} if weighted else {}
    with np.errstate(all="ignore"):
        value, grad = loss.value_and_grad(x, reduction="none", **options)
        expected = np.power(x.astype(np.float64), float(g))
        expected_grad = np.where(g == 0, 0.0, g * np.power(x.astype(np.float64), g - 1.0))
        scale = 2.0 if weighted else 1.0  # beyond the float range, inf (the cast's overflow is expected)
        expected, expected_grad = (scale * expected).astype(dtype), (scale * expected_grad).astype(dtype)
    # float32: within one ulp of the float64 power rounded; float64: within 1.5 ulp (x^4 as two squarings)
    bound = 1.0 if dtype == np.float32 else 1.5
    assert _ulps(value, expected, dtype) <= bound
    assert _ulps(grad, expected_grad, dtype) <= bound


@pytest.mark.parametrize("dtype, g", [(np.float32, 2), (np.float32, 3), (np.float32, 2.5), (np.float64, 4),
                                      (np.float64, 5)])
def test_reduced_calls_take_the_same_powers(powered, dtype, g):
    """reduction="sum" without weights runs the plain loops (no per-element output): the same values."""
    loss = powered.with_params(g=float(g))
    x = X[np.isfinite(X)].astype(dtype)
    total, grad = loss.value_and_grad(x, reduction="sum")
    with np.errstate(invalid="ignore"):  # a negative base to 2.5: NaN, here and in the loss
        expected = np.power(x.astype(np.float64), float(g))
        expected_grad = (g * np.power(x.astype(np.float64), g - 1.0)).astype(dtype)
    np.testing.assert_allclose(total, expected.sum(), rtol=1e-6 if dtype == np.float32 else 1e-14)
    assert _ulps(grad, expected_grad, dtype) <= 1.5
