"""The vectorisable exp, log and log1p of float32 kernels (lossdsl.kernel_math) against float64 references."""
import numba
import numpy as np
import pytest

from lossdsl.kernel_math import FASTMATH, exp_float32, log1p_float32, log_float32


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


def _apply(function, x):
    x = np.asarray(x, np.float32)
    out = np.empty_like(x)
    _KERNELS[function](x.reshape(-1), out.reshape(-1))
    return out


@numba.njit(fastmath=FASTMATH, error_model="numpy")
def _log_all(x, out):
    for i in range(x.size):
        out[i] = log_float32(x[i])


@numba.njit(fastmath=FASTMATH, error_model="numpy")
def _log1p_all(x, out):
    for i in range(x.size):
        out[i] = log1p_float32(x[i])


_KERNELS = {"log": _log_all, "log1p": _log1p_all}


def _ulps(got, reference):
    """|got - reference| in units of the float32 spacing at the reference (subnormal spacing at least)."""
    spacing = np.maximum(np.spacing(np.abs(reference).astype(np.float32)).astype(np.float64),
                         float(np.finfo(np.float32).smallest_subnormal))
    return np.abs(got.astype(np.float64) - reference) / spacing


def test_log_and_log1p_within_two_ulps():
    rng = np.random.default_rng(3)
    x = np.concatenate([np.exp(rng.uniform(-103, 88, 1_000_000)), rng.uniform(0.5, 2, 500_000)]).astype(np.float32)
    assert _ulps(_apply("log", x), np.log(x.astype(np.float64))).max() <= 2.0
    x = np.concatenate([rng.uniform(-0.999, 1, 500_000), np.exp(rng.uniform(-80, 88, 500_000)),
                        -np.exp(rng.uniform(-80, -0.001, 300_000))]).astype(np.float32)
    assert _ulps(_apply("log1p", x), np.log1p(x.astype(np.float64))).max() <= 2.1


@pytest.mark.parametrize("function", ["log", "log1p"])
def test_log_special_values_match_libm(function):
    x = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, -1.0, -2.0, 1e-30, -1e-30, 3e38, 1e-45], np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        expected = getattr(np, function)(x)
    got = _apply(function, x)
    np.testing.assert_array_equal(got, expected)  # NaN where NumPy has NaN, exact infinities and zeros
