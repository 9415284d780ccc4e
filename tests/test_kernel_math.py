"""The vectorisable math of generated kernels (lossdsl.runtime.kernel_math) against float64 references and libm."""
import numba
import numpy as np
import pytest

from lossdsl.runtime.kernel_math import (FASTMATH, exp_float32, exp_float64, expm1_float32, expm1_float64,
                                         log1p_float32, log1p_float64, log_float32, log1p_unit_float32, log_float64,
                                         pow_float32, tanh_float32)


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


@numba.njit(fastmath=FASTMATH, error_model="numpy")
def _log1p_unit_all(z, out):
    for i in range(z.size):
        out[i] = log1p_unit_float32(z[i], np.float32(1.0) / (np.float32(1.0) + z[i]))


def test_log1p_on_the_unit_interval_within_two_ulps():
    """log1p_unit, for z = exp(-|x|) in [0, 1] given 1/(1 + z): as accurate as log1p there, and NaN stays NaN."""
    rng = np.random.default_rng(4)
    z = np.concatenate([rng.uniform(0, 1, 1_000_000), np.exp(rng.uniform(-103, 0, 1_000_000)),
                        [0.0, 1.0, 1e-45, 1e-30, 2 ** -24, np.sqrt(2) - 1, np.nan]]).astype(np.float32)
    got = np.empty_like(z)
    _log1p_unit_all(z, got)
    assert np.isnan(got[-1]) and got[-7] == 0.0
    assert _ulps(got[:-1], np.log1p(z[:-1].astype(np.float64))).max() <= 2.1


@pytest.mark.parametrize("function", ["log", "log1p"])
def test_log_special_values_match_libm(function):
    x = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, -1.0, -2.0, 1e-30, -1e-30, 3e38, 1e-45], np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        expected = getattr(np, function)(x)
    got = _apply(function, x)
    np.testing.assert_array_equal(got, expected)  # NaN where NumPy has NaN, exact infinities and zeros


def _loop(function, arity=1):
    """A float loop applying a kernel_math function, compiled with the generated kernels' flags."""
    if arity == 1:
        @numba.njit(fastmath=FASTMATH, error_model="numpy")
        def run(x, out):
            for i in range(x.size):
                out[i] = function(x[i])
        return lambda x: _run_on(run, x)

    @numba.njit(fastmath=FASTMATH, error_model="numpy")
    def run2(x, y, out):
        for i in range(x.size):
            out[i] = function(x[i], y[i])
    return lambda x, y: _run_on(run2, x, y)


def _run_on(run, *arrays):
    out = np.empty_like(arrays[0])
    run(*arrays, out)
    return out


def _float64_ulps(got, reference):
    return np.abs(got - reference) / np.spacing(np.abs(reference))


def test_float32_tanh_within_one_and_a_half_ulps():
    rng = np.random.default_rng(5)
    x = np.concatenate([rng.uniform(-10, 10, 1_000_000), rng.uniform(-0.7, 0.7, 500_000),
                        np.exp(rng.uniform(-40, 0, 200_000))]).astype(np.float32)
    reference = np.tanh(x.astype(np.float64))
    assert _ulps(_loop(tanh_float32)(x), reference).max() <= 1.5


def test_float32_tanh_special_values_match_numpy():
    x = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-30, -1e-30, 0.625, -0.625, 9.0, 100.0, -3e38], np.float32)
    np.testing.assert_array_equal(_loop(tanh_float32)(x), np.tanh(x))


def test_float64_exp_log_log1p_within_two_ulps_of_libm():
    rng = np.random.default_rng(6)
    x = np.concatenate([rng.uniform(-745, 709.7, 1_000_000), rng.uniform(-1, 1, 500_000)])
    assert _float64_ulps(_loop(exp_float64)(x), np.exp(x)).max() <= 2.0
    x = np.concatenate([np.exp(rng.uniform(-744, 709, 1_000_000)), rng.uniform(0.5, 2, 500_000)])
    assert _float64_ulps(_loop(log_float64)(x), np.log(x)).max() <= 2.0
    x = np.concatenate([rng.uniform(-0.999, 1, 500_000), np.exp(rng.uniform(-700, 700, 500_000))])
    assert _float64_ulps(_loop(log1p_float64)(x), np.log1p(x)).max() <= 2.0


@pytest.mark.parametrize("function", ["exp", "log", "log1p"])
def test_float64_special_values_match_numpy(function):
    x = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, -1.0, -2.0, 1e-300, -1e-300, 1.7e308, 5e-324,
                  709.79, -745.2, 1e-17, -1e-17])
    with np.errstate(all="ignore"):
        expected = getattr(np, function)(x)
    got = _loop({"exp": exp_float64, "log": log_float64, "log1p": log1p_float64}[function])(x)
    np.testing.assert_array_equal(got, expected)


def _expm1_samples(rng):
    """Every range of expm1: near 0 (where e^x - 1 cancels), both sides of the reduction's first step
    (|x| = ln2/2), down to where it rounds to -1, up to the overflow, and tiny values of both signs."""
    return np.concatenate([rng.uniform(-45, 709.7, 1_000_000), rng.uniform(-1, 1, 500_000),
                           rng.uniform(0.3, 0.4, 200_000), rng.uniform(-0.4, -0.3, 200_000),
                           np.exp(rng.uniform(-700, -1, 300_000)) * rng.choice([-1.0, 1.0], 300_000)])


def test_float64_expm1_within_two_ulps_of_libm():
    x = _expm1_samples(np.random.default_rng(11))
    assert _float64_ulps(_loop(expm1_float64)(x), np.expm1(x)).max() <= 2.0


def test_float32_expm1_rounds_the_exact_value():
    x = _expm1_samples(np.random.default_rng(12)).astype(np.float32)
    with np.errstate(over="ignore"):
        reference = np.expm1(x.astype(np.float64))
    finite = reference < np.finfo(np.float32).max
    got = _loop(expm1_float32)(x)
    assert _ulps(got[finite], reference[finite]).max() <= 0.5001
    assert np.all(np.isinf(got[~finite]))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_expm1_special_values_match_numpy(dtype):
    """NaN, infinities, signed zeros, tiny values (returned exactly), -1 far below 0, the overflow."""
    x = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-30, -1e-30, 1e-300, -1e-300, 5e-324, -40.0, -41.0, -800.0,
                  88.7, 88.8, 709.78, 709.79, 1e-17, -1e-17], dtype)
    with np.errstate(all="ignore"):
        expected = np.expm1(x.astype(np.float64)).astype(dtype)
    got = _loop(expm1_float32 if dtype == np.float32 else expm1_float64)(x)
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(np.signbit(got[got == 0]), np.signbit(expected[got == 0]))


def test_float32_pow_within_one_ulp():
    rng = np.random.default_rng(7)
    x = np.concatenate([rng.uniform(0, 2, 500_000), np.exp(rng.uniform(-80, 80, 500_000)),
                        -rng.integers(1, 20, 200_000)]).astype(np.float32)
    y = np.concatenate([rng.uniform(-3, 5, 1_000_000), rng.integers(-6, 7, 200_000)]).astype(np.float32)
    with np.errstate(all="ignore"):
        reference = np.power(x.astype(np.float64), y.astype(np.float64))
    finite = np.abs(reference) < np.finfo(np.float32).max
    got = _loop(pow_float32, arity=2)(x, y)
    assert _ulps(got[finite], reference[finite]).max() <= 1.0
    assert np.all(np.isinf(got[~finite]))


def test_float32_pow_special_cases_match_c_powf():
    """Zeros of both signs, ones, negative bases, infinities and NaN, as C's pow (whose special cases powf
    shares), rounded to float32. Not NumPy's float32 power: its SIMD loops (AVX-512 NumPy builds) are not
    correctly rounded (3^-3 and 3^0.5 come out one ulp off there)."""
    values = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1.0, -1.0, 2.0, -2.0, 0.5, -0.5, 3.0], np.float32)
    exponents = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1.0, -1.0, 2.0, 3.0, -3.0, 0.5, -0.5], np.float32)
    x, y = (a.reshape(-1).copy() for a in np.meshgrid(values, exponents))
    with np.errstate(all="ignore"):
        expected = np.power(x.astype(np.float64), y.astype(np.float64)).astype(np.float32)
    got = _loop(pow_float32, arity=2)(x, y)
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(np.signbit(got[got == 0]), np.signbit(expected[got == 0]))


def test_unchecked_load_and_store_address_elements_exactly():
    """lossdsl.runtime.jit's load/store read and write the element at the index (ints and floats, converted on store)."""
    from lossdsl.runtime.jit import kernel, load, store

    @kernel(error_model="numpy")
    def move(source, target, index):
        for i in range(index.size):
            store(target, i, load(source, load(index, i)))
        return load(target, 0)

    source = np.arange(10, dtype=np.float32) * 1.5
    index = np.array([9, 0, 4, 4], np.int64)
    target = np.zeros(4, np.float64)
    assert move(source, target, index) == 13.5
    np.testing.assert_array_equal(target, source[index].astype(np.float64))


def test_generated_kernels_compile_with_noalias():
    """lossdsl.runtime.jit.kernel reaches into Numba's target options; this fails loudly if a Numba release moves them."""
    from lossdsl.runtime.jit import kernel

    @kernel(nogil=True)
    def double(a, out):
        for i in range(a.size):
            out[i] = 2 * a[i]

    a = np.arange(4.0)
    out = np.empty(4)
    double(a, out)
    np.testing.assert_array_equal(out, 2 * a)
    (compiled,) = double.overloads.values()
    assert compiled.fndesc.noalias and "noalias" in str(compiled.library.get_llvm_str())
