"""A class axis with elements after it (PyTorch's (N, C, H, W), MindSpore's per-class dice over axis 0) runs
three ways (lossdsl.runtime.layout.RowCall): tiles of neighbouring rows side by side (`tiled`,
codegen/lanes.py), the axis moved last and its gradient moved back (`moved`: under MIN_LANES rows after the
axis, or fewer tiles than threads), or strided rows (copies over their limit). Values, gradients, outputs,
grad_out and error indices as the caller's layout has them, each way. References are NumPy formulas written
here."""
from __future__ import annotations

import numpy as np
import pytest

import lossdsl
from lossdsl.errors import LossInputError
from lossdsl.runtime import layout, threads
from lossdsl.runtime.transpose import swap_last


@pytest.fixture(scope="module")
def cross_entropy():
    return lossdsl.load("cross_entropy")


def _ce_reference(logits: np.ndarray, y: np.ndarray, class_weight: np.ndarray, ignore_index: int = -100):
    """PyTorch's weighted cross-entropy over axis 1, "mean" over the kept rows' class weights: (value,
    gradient, per-row loss, per-row lse), in float64."""
    z = np.moveaxis(logits.astype(np.float64), 1, -1)  # (N, H, W, C)
    keep = y != ignore_index
    label = np.where(keep, y, 0)
    top = z.max(axis=-1, keepdims=True)
    lse = (top + np.log(np.exp(z - top).sum(axis=-1, keepdims=True)))[..., 0]
    picked = np.take_along_axis(z, label[..., None], axis=-1)[..., 0]
    w = np.where(keep, class_weight[label], 0.0)
    rows = w * (lse - picked)
    grad = np.exp(z - lse[..., None])
    np.put_along_axis(grad, label[..., None], np.take_along_axis(grad, label[..., None], axis=-1) - 1, axis=-1)
    grad = grad * w[..., None] / w.sum()
    return rows.sum() / w.sum(), np.moveaxis(grad, -1, 1), rows, lse


PATHS = ["tiles", "axis moved last", "strided rows"]


@pytest.fixture(params=PATHS)
def path(request, monkeypatch):
    """Each way through, for a call with 90 rows after the axis (tiles of 64 float32 or 32 float64 rows)."""
    if request.param != "tiles":
        monkeypatch.setattr(layout, "MIN_LANES", 1 << 40)
    if request.param == "strided rows":
        monkeypatch.setattr(layout, "MAX_MOVED_BYTES", 0)
    return request.param


def _inputs(dtype, shape=(3, 5, 10, 9), seed=0):
    rng = np.random.default_rng(seed)
    logits = (rng.normal(size=shape) * 3).astype(dtype)
    y = rng.integers(0, shape[1], (shape[0], *shape[2:]))
    y[0, 1, :3] = -100
    class_weight = rng.uniform(0.5, 2.0, shape[1])
    return logits, y, class_weight


@pytest.mark.parametrize("shape", [(1, 7, 3), (2, 3, 5), (4, 70, 65), (3, 65, 2)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_swap_last_is_numpys_transpose(shape, dtype):
    source = np.random.default_rng(1).normal(size=shape).astype(dtype)
    out = swap_last(source.reshape(-1), *shape, np.empty(source.size, dtype))
    np.testing.assert_array_equal(out.reshape(shape[0], shape[2], shape[1]), source.transpose(0, 2, 1))


def _call_of(loss, *inputs, axis=None):
    """The RowCall a call makes (its layout decisions), without running it."""
    return loss._prepare(inputs, {}, "mean", None, None, 0, axis, None)


@pytest.mark.parametrize("dtype, tolerance", [(np.float32, 2e-6), (np.float64, 1e-12)])
def test_cross_entropy_over_axis_one(cross_entropy, dtype, tolerance, path):
    logits, y, class_weight = _inputs(dtype)
    call = _call_of(cross_entropy, logits, y, axis=1)
    assert (call.tiled, call.moved) == {"tiles": (True, False), "axis moved last": (False, True),
                                        "strided rows": (False, False)}[path]
    value, grad = cross_entropy.value_and_grad(logits, y, class_weight=class_weight, axis=1)
    want_value, want_grad, rows, _ = _ce_reference(logits, y, class_weight)
    assert grad.shape == logits.shape and grad.dtype == dtype
    np.testing.assert_allclose(value, want_value, rtol=tolerance * 10)
    np.testing.assert_allclose(grad, want_grad, rtol=tolerance * 50, atol=tolerance)
    values = cross_entropy(logits, y, class_weight=class_weight, axis=1, reduction="none")
    np.testing.assert_allclose(values, rows, rtol=tolerance * 10, atol=tolerance)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_tile_of_ignored_rows_and_weighted_rows(cross_entropy, dtype):
    """Rows left out (their tile computes them with label 0, then drops them) and per-row weights, tiled."""
    logits, y, class_weight = _inputs(dtype)
    y[1] = -100  # every row of the second sample: whole tiles left out
    y[2, 3:, 4:] = -100
    weight = np.random.default_rng(5).uniform(0.5, 2.0, y.shape)
    assert _call_of(cross_entropy, logits, y, axis=1).tiled
    value, grad = cross_entropy.value_and_grad(logits, y, class_weight=class_weight, sample_weight=weight,
                                               reduction="sum")
    _, _, rows, lse = _ce_reference(logits, y, class_weight)
    kept = y != -100
    label = np.where(kept, y, 0)
    z = np.moveaxis(logits.astype(np.float64), 1, -1)
    softmax_minus_onehot = np.exp(z - lse[..., None]) - (np.arange(z.shape[-1]) == label[..., None])
    row_weight = np.where(kept, class_weight[label], 0.0) * weight
    want_grad = np.moveaxis(softmax_minus_onehot * row_weight[..., None], -1, 1)
    tolerance = 2e-6 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(value, (rows * weight).sum(), rtol=tolerance * 10)
    np.testing.assert_allclose(grad, want_grad, rtol=tolerance * 50, atol=tolerance * 10)
    assert not grad[1].any()


def test_rows_and_outputs_keep_the_callers_layout(cross_entropy, path):
    logits, y, class_weight = _inputs(np.float64)
    _, _, rows, lse = _ce_reference(logits, y, class_weight)
    values, _, shown = cross_entropy.value_and_grad(logits, y, class_weight=class_weight, axis=1,
                                                    reduction="none", outputs=True)
    np.testing.assert_allclose(values, rows, rtol=1e-12, atol=1e-15)
    kept = y != -100
    np.testing.assert_allclose(shown["lse"][kept], lse[kept], rtol=1e-12)
    assert np.isnan(shown["lse"][~kept]).all()


def test_grad_out_receives_the_gradient(cross_entropy, path):
    logits, y, class_weight = _inputs(np.float32)
    _, want_grad, _, _ = _ce_reference(logits, y, class_weight)
    given = logits.copy()
    buffer = np.full_like(logits, np.nan)
    _, grad = cross_entropy.value_and_grad(logits, y, class_weight=class_weight, axis=1, grad_out=buffer)
    assert grad is buffer
    np.testing.assert_allclose(buffer, want_grad, rtol=1e-4, atol=2e-6)
    np.testing.assert_array_equal(logits, given)  # the input untouched
    # grad_out = the logits themselves: the gradient overwrites them
    _, grad = cross_entropy.value_and_grad(logits, y, class_weight=class_weight, axis=1, grad_out=logits)
    assert grad is logits
    np.testing.assert_allclose(logits, want_grad, rtol=1e-4, atol=2e-6)


def test_grad_out_sharing_another_input_is_refused():
    loss = lossdsl.load("multilabel_soft_margin")
    both = np.zeros((2, 2, 3, 4))
    with pytest.raises(LossInputError, match="shares memory with an input other than x"):
        loss.value_and_grad(both[0], both[1], axis=1, grad_out=both[1])


def test_domain_error_names_the_callers_index():
    loss = lossdsl.load("multilabel_soft_margin")
    x = np.zeros((2, 3, 4))
    y = np.full((2, 3, 4), 0.5)
    y[1, 2, 0] = 2.0
    with pytest.raises(LossInputError, match=r"found 2\.0 at index \(1, 2, 0\)"):
        loss(x, y, axis=1)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_multiclass_dice_over_samples(dtype):
    """MindSpore's MultiClassDiceLoss (no activation): a dice per class over the samples (axis 0), averaged."""
    rng = np.random.default_rng(3)
    p = rng.uniform(size=(300, 70)).astype(dtype)
    y = (rng.uniform(size=(300, 70)) < 0.3).astype(dtype)
    smooth = 1e-5
    value, grad = lossdsl.load("multiclass_dice").value_and_grad(p, y)
    p64, y64 = p.astype(np.float64), y.astype(np.float64)
    overlap, squares = (p64 * y64).sum(axis=0), (p64 ** 2).sum(axis=0) + (y64 ** 2).sum(axis=0) + smooth
    want = np.mean(1 - 2 * overlap / squares)
    # d/dp of 1 - 2 o / s per class, over the classes' mean
    want_grad = -2 * (y64 * squares - overlap * 2 * p64) / squares ** 2 / p.shape[1]
    tolerance = 1e-5 if dtype == np.float32 else 1e-11
    np.testing.assert_allclose(value, want, rtol=tolerance)
    np.testing.assert_allclose(grad, want_grad, rtol=tolerance * 100, atol=tolerance * 1e-2)


def test_tiles_only_with_one_for_each_thread(cross_entropy):
    """One tile of 64 rows would run on one thread: with two, such a call moves the axis last instead."""
    logits, y = np.zeros((1, 2048, 64), np.float32), np.zeros((1, 64), np.int64)
    before = threads.get_num_threads()
    try:
        threads.set_num_threads(2)
        call = _call_of(cross_entropy, logits, y)
        assert (call.tiles, call.tiled, call.moved) == (1, False, True)
        assert _call_of(cross_entropy, np.zeros((2, 2048, 64), np.float32), np.zeros((2, 64), np.int64)).tiled
        threads.set_num_threads(1)
        assert _call_of(cross_entropy, logits, y).tiled
    finally:
        threads.set_num_threads(before)


@pytest.mark.parametrize("shape, tiled", [((3, 5, 4, 6), True), ((7, 5, 2, 2), False)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fewer_rows_after_the_axis_than_a_tile(cross_entropy, shape, tiled, dtype):
    """24 rows after the axis: one tile of 24 for each sample; 4 (under MIN_LANES): the axis moved last."""
    logits, y, class_weight = _inputs(dtype, shape)
    call = _call_of(cross_entropy, logits, y)
    assert (call.tiled, call.moved, call.lanes) == (tiled, not tiled, shape[2] * shape[3])
    value, grad = cross_entropy.value_and_grad(logits, y, class_weight=class_weight)
    want_value, want_grad, _, _ = _ce_reference(logits, y, class_weight)
    tolerance = 2e-6 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(value, want_value, rtol=tolerance * 10)
    np.testing.assert_allclose(grad, want_grad, rtol=tolerance * 50, atol=tolerance)


def test_no_rows_after_the_axis(cross_entropy):
    """A trailing axis of length 0: no rows, a NaN mean (PyTorch's mean over nothing), an empty gradient."""
    value, grad = cross_entropy.value_and_grad(np.zeros((2, 3, 0), np.float32), np.zeros((2, 0), np.int64))
    assert np.isnan(value) and grad.shape == (2, 3, 0)
