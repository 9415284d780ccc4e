"""runtime.blas: out = a @ b and out += a @ b in place, against NumPy's own product, for every layout a
linear head passes (rows, transposed views, column slices), both dtypes, and NumPy's path where its BLAS
is not found; BLAS on one thread inside `single_threaded` and its own count restored after."""
import numpy as np
import pytest

from lossdsl.runtime import blas

RNG = np.random.default_rng(3)


def operands(dtype, layout: str):
    """(a, b) of shapes (7, 5) and (5, 6) laid out as a head passes them."""
    if layout == "rows":
        return RNG.normal(size=(7, 5)).astype(dtype), RNG.normal(size=(5, 6)).astype(dtype)
    if layout == "transposed":  # a gradient's column block, transposed: a's columns are contiguous
        grad = RNG.normal(size=(5, 20)).astype(dtype)
        return grad[:, 3:10].T, RNG.normal(size=(6, 5)).astype(dtype).T
    rows = RNG.normal(size=(7, 9)).astype(dtype)  # "slices": rows with a stride longer than they are
    return rows[:, 2:7], RNG.normal(size=(5, 8)).astype(dtype)[:, 1:7]


@pytest.mark.parametrize("accumulate", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layout", ["rows", "transposed", "slices"])
def test_multiply_into_a_column_slice(dtype, layout, accumulate):
    """The product written (or added) into columns 2..8 of a wider matrix; the other columns untouched."""
    a, b = operands(dtype, layout)
    start = RNG.normal(size=(7, 10)).astype(dtype)
    whole = start.copy()
    address = whole.ctypes.data
    blas.multiply(whole[:, 2:8], a, b, accumulate=accumulate)
    expected = start.astype(np.float64)
    expected[:, 2:8] = expected[:, 2:8] * accumulate + a.astype(np.float64) @ b.astype(np.float64)
    tolerance = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(whole, expected, rtol=tolerance, atol=tolerance)
    assert whole.ctypes.data == address


def test_numpy_blas_found_on_wheels():
    """NumPy's Linux wheels bundle scipy-openblas: there the head adds in place and sets BLAS's threads."""
    import glob, os
    libs = os.path.join(os.path.dirname(os.path.dirname(np.__file__)), "numpy.libs")
    if not glob.glob(os.path.join(libs, "*openblas*")):
        pytest.skip("this NumPy build bundles no OpenBLAS")
    assert blas.in_place()
    assert blas._thread_control() is not None


@pytest.mark.parametrize("accumulate", [False, True])
def test_multiply_without_gemm_goes_through_numpy(monkeypatch, accumulate):
    monkeypatch.setattr(blas, "_gemm", lambda: None)
    a, b = operands(np.float32, "transposed")
    start = RNG.normal(size=(7, 6)).astype(np.float32)
    out = start.copy()
    blas.multiply(out, a, b, accumulate=accumulate)
    np.testing.assert_allclose(out, start * accumulate + a @ b, rtol=1e-5, atol=1e-5)


def test_operands_it_cannot_take_fall_back():
    """A matrix with neither rows nor columns contiguous goes through NumPy's product."""
    grid = RNG.normal(size=(14, 10))
    a, b = grid[::2, ::2], RNG.normal(size=(5, 6))
    out = np.zeros((7, 6))
    blas.multiply(out, a, b, accumulate=True)
    np.testing.assert_allclose(out, a @ b, rtol=1e-12)


def test_single_threaded_nests_and_restores():
    control = blas._thread_control()
    if control is None:
        pytest.skip("this NumPy build's BLAS has no thread count to set")
    set_threads, get_threads = control
    before = get_threads()
    set_threads(2)
    try:
        with blas.single_threaded() as spread:
            assert spread and get_threads() == 1
            with blas.single_threaded():
                assert get_threads() == 1
            assert get_threads() == 1  # the outer block still holds it
        assert get_threads() == 2
        with pytest.raises(ZeroDivisionError), blas.single_threaded():
            1 / 0
        assert get_threads() == 2  # restored after an error too
    finally:
        set_threads(before)
