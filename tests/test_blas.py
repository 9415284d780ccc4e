"""runtime.blas.add_product: out += a @ b in place, against NumPy's own product, for every layout a
linear head passes (rows, transposed views, column slices), both dtypes, and the scratch path taken
where NumPy's BLAS is not found."""
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


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layout", ["rows", "transposed", "slices"])
def test_add_product_adds_in_place(dtype, layout):
    a, b = operands(dtype, layout)
    start = RNG.normal(size=(7, 6)).astype(dtype)
    out = start.copy()
    address = out.ctypes.data
    blas.add_product(out, a, b)
    expected = start.astype(np.float64) + a.astype(np.float64) @ b.astype(np.float64)
    tolerance = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(out, expected, rtol=tolerance, atol=tolerance)
    assert out.ctypes.data == address


def test_numpy_blas_found_on_wheels():
    """NumPy's Linux wheels bundle scipy-openblas: there the head adds without any scratch."""
    import glob, os
    libs = os.path.join(os.path.dirname(os.path.dirname(np.__file__)), "numpy.libs")
    if not glob.glob(os.path.join(libs, "*openblas*")):
        pytest.skip("this NumPy build bundles no OpenBLAS")
    assert blas.accumulates()


@pytest.mark.parametrize("scratch_size", [None, 6, 13, 100])
def test_add_product_without_gemm_goes_through_scratch(monkeypatch, scratch_size):
    monkeypatch.setattr(blas, "_gemm", lambda: None)
    a, b = operands(np.float32, "transposed")
    start = RNG.normal(size=(7, 6)).astype(np.float32)
    out = start.copy()
    scratch = None if scratch_size is None else np.full(scratch_size, np.nan, np.float32)
    blas.add_product(out, a, b, scratch)
    np.testing.assert_allclose(out, start + a @ b, rtol=1e-5, atol=1e-5)


def test_operands_it_cannot_take_fall_back():
    """A matrix with neither rows nor columns contiguous goes through NumPy's product."""
    grid = RNG.normal(size=(14, 10))
    a, b = grid[::2, ::2], RNG.normal(size=(5, 6))
    out = np.zeros((7, 6))
    blas.add_product(out, a, b)
    np.testing.assert_allclose(out, a @ b, rtol=1e-12)
