"""Losses over a named axis: the DSL's reductions and gathers, their errors, the derived
gradients, the row layout of calls, and the label checks that keep kernels in bounds.
(Catalogue values against references and PyTorch: test_axis_losses.py, test_axis_torch.py.)"""
import functools

import re

import numpy as np
import pytest

import lossdsl
from lossdsl.errors import LossInputError, LossLabelError, SpecNameError, SpecSyntaxError, SpecTypeError
from lossdsl.frontend.parse import parse
from lossdsl.symbolic.reductions import derive_rows
from lossdsl.frontend.resolve import resolve

SPECS = """
loss sce(logits[c], y)
    sce = logsumexp(logits, c) - logits[y]

loss nested(x[c], y)
    "logsumexp written by hand, a margin loss with a gather inside a reduction, and max(0, x) next to max(x, c)"
    param margin = 1
    m = max(x, c)
    manual = m + log(sum(exp(x - m), c))
    nested = manual - x[y] + mean(0 if c == y else max(0, margin - x[y] + x), c) + sum(1, c)

loss norms(a[f], b[f]) wrt a, b
    param p = 3
    norms = norm(a - b, f, p) + norm(a, f) + norm(b, f, 1) + min(a*b, f)
"""


@functools.lru_cache(maxsize=None)
def compiled(name: str) -> lossdsl.Loss:
    return lossdsl.compile(SPECS, name)


def log_softmax(x, axis=-1):
    m = x.max(axis=axis, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=axis, keepdims=True))


def finite_differences(loss, inputs, index, **options):
    x = inputs[index]
    grad = np.zeros_like(x)
    for position in np.ndindex(x.shape):
        h = 1e-6 * max(1.0, abs(x[position]))
        shifted = [a.copy() for a in inputs]
        shifted[index][position] += h
        plus = loss(*shifted, reduction="sum", **options)
        shifted[index][position] -= 2 * h
        grad[position] = (plus - loss(*shifted, reduction="sum", **options)) / (2 * h)
    return grad


def test_softmax_ce_as_written_in_the_issue():
    loss = compiled("sce")
    logits, y = np.array([[10.0, 0, -10], [8, 8, 8]]), np.array([0, 2])
    value, grad = loss.value_and_grad(logits, y)
    expected = -log_softmax(logits)[[0, 1], y].mean()
    assert abs(expected - 0.5493) < 5e-5  # the PyTorch tutorial's printed figure
    np.testing.assert_allclose(value, expected, rtol=1e-12)
    onehot = np.eye(3)[y]
    np.testing.assert_allclose(grad, (np.exp(log_softmax(logits)) - onehot) / 2, rtol=1e-12, atol=1e-15)


def test_readable_gradient_of_softmax_ce():
    text = compiled("sce").explain()
    assert text.splitlines()[-1] == "dsce/dlogits = -onehot(y) + softmax(logits)"
    grads = lossdsl.load("cross_entropy").explain()
    assert "softmax(logits)" in grads and "onehot(y)" in grads


def test_nested_reductions_gathers_and_constant_reductions():
    loss = compiled("nested")
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(5, 4)), rng.integers(0, 4, 5)
    z = 1 - x[np.arange(5), y][:, None] + x
    hinge = np.where(np.arange(4) == y[:, None], 0.0, np.maximum(0, z)).mean(axis=1)
    expected = -log_softmax(x)[np.arange(5), y] + hinge + 4  # sum(1, c) is the axis length
    np.testing.assert_allclose(loss(x, y, reduction="none"), expected, rtol=1e-12)
    np.testing.assert_allclose(loss.grad(x, y, reduction="sum"), finite_differences(loss, [x, y], 0), atol=1e-7)
    row_kernels = loss.source().split("def loss_value_lanes")[0]  # (the tiled kernels repeat the passes)
    assert row_kernels.count("for c in range(__C)") <= 6  # max, sum-exp, hinge, gradient; no pass for sum(1, c)


def test_norms_min_and_their_conventions():
    loss = compiled("norms")
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(3, 6)), rng.normal(size=(3, 6))
    expected = ((np.abs(a - b) ** 3).sum(1) ** (1 / 3) + np.sqrt((a * a).sum(1)) + np.abs(b).sum(1)
                + (a * b).min(1))
    np.testing.assert_allclose(loss(a, b, reduction="none"), expected, rtol=1e-12)
    grads = loss.grad(a, b, reduction="sum")
    for index, grad in enumerate(grads):
        np.testing.assert_allclose(grad, finite_differences(loss, [a, b], index), atol=1e-6)
    # at a zero vector the 2-norm's gradient is 0 (torch.norm), not NaN; min(a*b) of zeros passes b = 0
    zero = np.zeros((1, 6))
    grad_a, grad_b = loss.grad(zero, zero, reduction="sum")
    assert np.all(np.isfinite(grad_a)) and np.all(np.isfinite(grad_b))
    np.testing.assert_allclose(grad_a, 0.0, atol=1e-12)


def test_named_axis_anywhere_and_per_class_vectors():
    loss = lossdsl.load("cross_entropy")
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(2, 5, 3, 4))  # (N, C, d1, d2): PyTorch's class axis 1
    y = rng.integers(0, 5, size=(2, 3, 4))
    w = rng.uniform(0.5, 2.0, 5)
    picked = np.take_along_axis(log_softmax(logits, axis=1), y[:, None], axis=1)[:, 0]
    rows = -w[y] * picked
    np.testing.assert_allclose(loss(logits, y, class_weight=w, reduction="none"), rows, rtol=1e-12)
    np.testing.assert_allclose(loss(logits, y, class_weight=w), rows.sum() / w[y].sum(), rtol=1e-12)
    # the same numbers with the class axis last, passed as axis=-1
    moved = np.moveaxis(logits, 1, -1)
    value, grad = loss.value_and_grad(moved, y, class_weight=w, axis=-1)
    np.testing.assert_allclose(value, rows.sum() / w[y].sum(), rtol=1e-12)
    soft = np.exp(log_softmax(moved))
    expected = (soft - np.eye(5)[y]) * w[y][..., None] / w[y].sum()
    np.testing.assert_allclose(grad, expected, rtol=1e-10, atol=1e-14)
    assert grad.shape == moved.shape


def test_ignored_rows_contribute_nothing():
    loss = lossdsl.load("cross_entropy")
    logits = np.array([[1.0, 2.0, 3.0], [0.5, -1.0, 2.0], [3.0, 0.0, 0.0]])
    y = np.array([2, -100, 0])
    value, grad = loss.value_and_grad(logits, y)
    kept = -log_softmax(logits)[[0, 2], [2, 0]]
    np.testing.assert_allclose(value, kept.mean(), rtol=1e-12)  # divides by the 2 rows kept
    assert np.all(grad[1] == 0)
    assert loss(logits, y, reduction="none")[1] == 0
    with np.errstate(invalid="ignore"):
        all_ignored, zero_grad = loss.value_and_grad(logits, np.full(3, -100))
    assert np.isnan(all_ignored) and np.all(zero_grad == 0)  # PyTorch's 0/0


@pytest.mark.parametrize("labels, row, label", [([0, 3, 1], (1,), 3), ([0, 1, -1], (2,), -1),
                                                 ([[0, 1], [7, 0]], (1, 0), 7)])
def test_labels_out_of_range_raise_before_any_kernel_reads(labels, row, label):
    loss = compiled("sce")
    labels = np.array(labels)
    logits = np.zeros(labels.shape + (3,))
    with pytest.raises(LossLabelError) as info:
        loss.value_and_grad(logits, labels)
    assert isinstance(info.value, IndexError) and f"label {label} at row {row}" in str(info.value)


def test_bad_calls_get_clear_errors():
    loss = lossdsl.load("cross_entropy")
    logits = np.zeros((4, 3))
    cases = [
        (lambda: loss(logits, np.zeros(5, int)), "does not match the rows"),
        (lambda: loss(logits, np.array([0.5, 1, 2, 0])), "whole numbers, not 0.5"),
        (lambda: loss(logits, np.zeros(4, int), class_weight=np.ones(4)), "fits neither"),
        (lambda: loss(logits, np.zeros(4, int), axis=2), "axis=2"),
        (lambda: loss(np.zeros((2, 3, 4)), np.zeros(2, int), axis=(0, 2)), "adjacent"),
        (lambda: loss(np.zeros((4, 0)), np.zeros(4, int), axis=-1), "empty"),
        (lambda: loss(logits, np.zeros(4, int), weights=np.ones(3)), "no input or option weights"),
        (lambda: loss(logits), "missing y"),
        (lambda: lossdsl.load("mse")(np.zeros(3), np.zeros(3), axis=0), "elementwise"),
    ]
    for call, words in cases:
        with pytest.raises(LossInputError, match=words):
            call()
    # float labels holding whole numbers are accepted
    np.testing.assert_allclose(loss(logits, np.array([0.0, 1, 2, 0])), np.log(3), rtol=1e-12)


def test_several_axes_as_one_and_the_whole_array_as_one_row():
    dice = lossdsl.load("dice")
    rng = np.random.default_rng(4)
    p, y = rng.uniform(size=(2, 3, 4)), (rng.uniform(size=(2, 3, 4)) > 0.5).astype(float)

    def reference(p, y, axes):
        return 1 - 2 * (p * y).sum(axes) / ((p * p).sum(axes) + (y * y).sum(axes) + 1e-5)

    np.testing.assert_allclose(dice(p, y), reference(p, y, (0, 1, 2)), rtol=1e-12)  # axis n = all
    np.testing.assert_allclose(dice(p, y, axis=(1, 2), reduction="none"), reference(p, y, (1, 2)), rtol=1e-12)
    np.testing.assert_allclose(dice(p, y, axis=1, reduction="none"), reference(p, y, 1), rtol=1e-12)


def test_generated_kernels_allocate_no_temporaries_of_the_inputs_size():
    """No rows x classes temporaries: a pass's sums are float partials per chunk of classes, not arrays; the
    tiled kernels (codegen/lanes.py) hold one value per row of their tile."""
    from lossdsl.codegen.rows import AXIS_CHUNK
    source = lossdsl.load("cross_entropy").source()
    allocations = re.findall(r"np\.(?:empty|zeros)\(([^,)]*)", source)
    assert allocations and set(allocations) == {"__lanes"}
    assert f"for __c0 in range(0, __C, {AXIS_CHUNK}):" in source
    assert "for __row in range(__start, __stop):" in source


def resolved(text):
    losses = parse(text)
    return resolve(losses[-1], {}, lambda n, file: None, text)


@pytest.mark.parametrize("text, cls, words", [
    ("loss t(a[c], b[d], g[f])\n    t = sum(a, c)\n", SpecTypeError, "at most two named axes"),
    ("loss t(x)\n    t = sum(x, c)\n", SpecTypeError, "declares none"),
    ("loss t(x[c])\n    t = sum(x, d)\n", SpecTypeError, "must name the axis"),
    ("loss t(x[c])\n    t = sum(x)\n", SpecTypeError, "reduces over a named axis"),
    ("loss t(x[c])\n    t = x\n", SpecTypeError, "one value per row"),
    ("loss t(x[c], y)\n    t = x[y + 1]\n", SpecTypeError, "integer labels"),
    ("loss t(x[c], z[c])\n    t = x[z]\n", SpecTypeError, "integer labels"),
    ("loss t(x[c], y)\n    t = sum(x, c)[y]\n", SpecSyntaxError, "unexpected '\\['"),  # gathers apply to names
    ("loss t(x[c], y)\n    ignore if x[y] > 0\n    t = x[y]\n", SpecTypeError, "cannot gather"),
    ("loss t(x[c], y)\n    mean weighted by x\n    t = x[y]\n", SpecTypeError, "one value per row"),
    ("loss t(x)\n    ignore if x > 0\n    t = x\n", SpecTypeError, "over a named axis"),
    ("loss t(x[c], y)\n    mean weighted by sum(x, c)\n    t = x[y]\n", SpecTypeError, "may not reduce"),
    ("loss t(x[c], w[c] = 1, y)\n    t = x[y]\n", SpecTypeError, "needs a default"),
    ("loss t(x[c], y)\n    axis k = 1\n    t = x[y]\n", SpecNameError, "names no class axis"),
    ("loss t(x[c], y) wrt y\n    t = x[y]\n", SpecTypeError, "inputs that have its class axis"),
    ("loss t(x[c])\n    c = 1\n    t = sum(x, c)\n", SpecNameError, "duplicate name `c`"),
    ("loss t(x[c])\n    sum = 1\n    t = x\n", SpecNameError, "built-in"),
    ("loss t(x[c])\n    t = norm(x, c, x)\n", SpecTypeError, "not differentiated"),
    ("loss t(x[c])\n    t = norm(x, c, sum(x^2, c))\n", SpecTypeError, "not differentiated"),
])
def test_axis_spec_errors(text, cls, words):
    with pytest.raises(cls, match=words):
        derive_rows(resolved(text))


def test_mindspore_sparse_softmax_cross_entropy_example():
    # mindspore.nn.SoftmaxCrossEntropyWithLogits(sparse=True) documentation example: prints [67.]
    logits = np.array([[3, 5, 6, 9, 12, 33, 42, 12, 32, 72]], np.float32)
    value = lossdsl.load("cross_entropy")(logits, np.array([1], np.int32), axis=-1, reduction="none")
    assert value.dtype == np.float32
    np.testing.assert_allclose(value, [67.0], rtol=1e-6)


def test_nan_propagates_through_max_and_logsumexp():
    loss = compiled("nested")
    x = np.array([[0.0, np.nan, 1.0, 2.0], [np.nan, 0.0, 1.0, 2.0], [0.0, 1.0, 2.0, np.nan], [0.0, 1.0, 2.0, 3.0]])
    values = loss(x, np.array([0, 1, 2, 3]), reduction="none")
    assert np.all(np.isnan(values[:3])) and np.isfinite(values[3])


def test_inputs_with_the_axis_broadcast_together():
    triplet = lossdsl.load("triplet")
    rng = np.random.default_rng(5)
    anchor, positive, negative = rng.normal(size=(1, 4)), rng.normal(size=(3, 4)), rng.normal(size=(3, 4))
    value, (g_anchor, g_positive, _) = triplet.value_and_grad(anchor, positive, negative, reduction="sum")
    full = np.repeat(anchor, 3, axis=0)
    expected, (g_full, g_positive_full, _) = triplet.value_and_grad(full, positive, negative, reduction="sum")
    np.testing.assert_allclose(value, expected, rtol=1e-12)
    assert g_anchor.shape == (1, 4)
    np.testing.assert_allclose(g_anchor, g_full.sum(axis=0, keepdims=True), rtol=1e-12)
    np.testing.assert_allclose(g_positive, g_positive_full, rtol=1e-12)


EXTRA = """
loss scaled_max(x[c])
    scaled_max = max(x*(c + 1)/3, c) - min(x, c)

loss compound_order(x[c])
    param q = 1.5
    compound_order = norm(x, c, 2*q)

loss range_axis(x[range], y)
    "calls cross_entropy and leaves its class_weight at the default"
    range_axis = cross_entropy(x, y) + max(x, range)
"""


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_max_and_min_send_the_gradient_to_the_first_extreme(dtype):
    loss = lossdsl.compile(EXTRA, "scaled_max")
    rng = np.random.default_rng(5)
    x = rng.normal(size=(200, 7)).astype(dtype)
    x[1, :] = -1.0  # every position ties for the min: the first gets the gradient
    scale = np.arange(1, 8) / 3
    grad = loss.grad(x, reduction="sum")
    rows = np.arange(200)
    expected = np.zeros((200, 7))
    expected[rows, np.argmax(x.astype(np.float64) * scale, axis=1)] += scale[np.argmax(x * scale, axis=1)]
    expected[rows, np.argmin(x, axis=1)] -= 1.0  # np.argmin: the first of equal minima
    np.testing.assert_allclose(grad, expected, atol=1e-6)


def test_norm_of_a_computed_order():
    loss = lossdsl.compile(EXTRA, "compound_order")
    x = np.array([[1.0, -2.0, 2.5], [3.0, 0.5, -1.0]])
    np.testing.assert_allclose(loss(x, reduction="none"), (np.abs(x) ** 3).sum(1) ** (1 / 3), rtol=1e-12)


def test_composition_defaults_and_generated_names():
    loss = lossdsl.compile(EXTRA, "range_axis")
    x, y = np.array([[0.0, 1.0, 2.0]]), np.array([1])
    np.testing.assert_allclose(loss(x, y), -log_softmax(x)[0, 1] + 2.0, rtol=1e-12)


def test_label_values_and_axes_that_are_not_what_they_seem():
    loss = compiled("sce")
    logits = np.zeros((2, 3))
    with pytest.raises(LossInputError, match="nan"):
        loss(logits, np.array([0.0, np.nan]))
    with pytest.raises(LossLabelError, match="18446744073709551615"):
        loss(logits, np.array([0, 2 ** 64 - 1], np.uint64))
    for axis in (1.7, True):
        with pytest.raises(LossInputError, match="axis="):
            loss(logits, np.zeros(2, int), axis=axis)
    with pytest.raises(LossInputError, match="missing y"):
        loss(logits, None)
    with pytest.raises(LossInputError, match="missing target"):
        lossdsl.load("mse")(np.zeros(2), None)
