"""The vectorisable exp of float32 kernels (lossdsl.kernel_math) against a float64 reference."""
import numba
import numpy as np
import pytest

from lossdsl.kernel_math import FASTMATH, exp_float32


@numba.njit(fastmath=FASTMATH)
def _exp_all(x, out):
    for i in range(x.size):
        out[i] = exp_float32(x[i])


def _exp(x):
    x = np.asarray(x, np.float32)
    out = np.empty_like(x)
    _exp_all(x.reshape(-1), out.reshape(-1))
    return out


def test_within_one_ulp_over_the_whole_range():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.uniform(-104, 89, 2_000_000), rng.uniform(-1, 1, 500_000),
                        rng.uniform(-87.5, -80, 200_000)]).astype(np.float32)  # the last: results near subnormal
    got = _exp(x).astype(np.float64)
    reference = np.exp(x.astype(np.float64))
    finite = reference < np.finfo(np.float32).max
    ulp = np.spacing(reference[finite].astype(np.float32)).astype(np.float64)
    assert np.max(np.abs(got[finite] - reference[finite]) / ulp) <= 1.01
    assert np.all(np.isinf(got[~finite]))


@pytest.mark.parametrize("x", [np.nan, np.inf, -np.inf, 0.0, -0.0, 88.73, -104.0, 1e-8, -1e-8, -103.9])
def test_special_values_match_libm_exactly(x):
    """NaN, infinities, overflow, underflow to 0 and to the smallest subnormal, 1 near 0."""
    with np.errstate(over="ignore"):
        expected = np.float32(np.exp(np.float64(x)))
    got = _exp([x])[0]
    assert (np.isnan(got) and np.isnan(expected)) or got == expected


@pytest.mark.parametrize("x", [88.72, -87.3, -100.0, -10.0, 10.0])
def test_values_near_the_thresholds(x):
    expected = np.exp(np.float64(np.float32(x)))
    assert abs(np.float64(_exp([x])[0]) - expected) <= np.spacing(np.float32(expected))
