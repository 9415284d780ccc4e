"""multilabel_margin (PyTorch's MultiLabelMarginLoss), a spec around the rows intrinsic multilabel_hinge: against
an independent NumPy reference (so the core runs without PyTorch), torch.nn.functional.multilabel_margin_loss
(values and autograd gradients), MindSpore's docstring figure, finite differences, and the errors a call or a
spec gets."""
import numpy as np
import pytest

import lossdsl
from lossdsl import intrinsics
from lossdsl.errors import LossInputError, LossLabelError, LossParameterError, SpecTypeError
from lossdsl.gradcheck import check
from lossdsl.runtime.layout import is_gpu_array

ROW_LOSSES = ("multilabel_margin",)  # losses around a rows intrinsic, checked here (not by tests/references.py)


def _reference(x, target, reduction="mean", sample_weight=None, weight=1.0):
    """PyTorch's formula row by row, in float64: (value, gradient at x). T = the labels before the first -1,
    repeats counted; a pair adds to the gradient where its hinge is > 0."""
    x2, t2 = np.atleast_2d(np.asarray(x, np.float64)), np.atleast_2d(target)
    rows, classes = x2.shape
    losses, grad = np.zeros(rows), np.zeros_like(x2)
    for r in range(rows):
        labels = []
        for label in t2[r]:
            if label == -1:
                break
            labels.append(int(label))
        others = np.setdiff1d(np.arange(classes), labels)
        for j in labels:
            z = 1.0 - x2[r, j] + x2[r, others]
            active = z > 0
            losses[r] += z[active].sum() / classes
            grad[r, others[active]] += 1.0 / classes
            grad[r, j] -= active.sum() / classes
    w = weight * (np.ones(rows) if sample_weight is None else np.asarray(sample_weight, np.float64).reshape(rows))
    grad *= w[:, None]
    if reduction == "mean":
        value, grad = (w * losses).sum() / rows, grad / rows
    elif reduction == "sum":
        value = (w * losses).sum()
    else:
        value = w * losses
    if np.ndim(x) == 1:
        value = value.reshape(()) if reduction == "none" else value
        grad = grad[0]
    return value, grad


def _case(seed, rows=7, classes=6, dtype=np.float64):
    """Scores and padded targets: a row without labels, one with every class, one repeating a label, one with
    labels written past its -1 (ignored), and ties at the kink (1 - (x[j] - x[i]) == 0 exactly)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, 1.0, (rows, classes))
    target = np.full((rows, classes), -1)
    for r in range(rows):
        size = int(rng.integers(1, classes))
        target[r, :size] = rng.permutation(classes)[:size]
    target[0] = -1
    target[1] = rng.permutation(classes)
    target[2, :3] = [4, 1, 4]
    target[2, 3:] = -1
    target[3, :4] = [0, -1, 2, 5]
    x[4, :6] = [1.5, 0.5, 0.25, 0.5, 2.5, 1.5]  # kinks: label 0 against classes 1 and 3, label 4 against 5
    target[4] = -1
    target[4, :2] = [0, 4]
    return x.astype(dtype), target


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


def _pytorch(torch, x, target, reduction):
    """PyTorch's value and autograd gradient, in x's dtype."""
    xt = torch.tensor(x, requires_grad=True)
    value = torch.nn.functional.multilabel_margin_loss(xt, torch.tensor(target), reduction=reduction)
    value.sum().backward()
    return value.detach().numpy(), xt.grad.numpy()


TOLERANCE = {np.float32: 2e-6, np.float64: 1e-13}


def test_mindspore_docstring_example(load_loss):
    """mindspore.nn.MultilabelMarginLoss's example: 0.325 with reduction "mean"."""
    x = np.array([[0.1, 0.2, 0.4, 0.8], [0.2, 0.3, 0.5, 0.7]], np.float32)
    target = np.array([[1, 2, 0, 3], [2, 3, -1, 1]], np.int32)
    value = load_loss("multilabel_margin")(x, target)
    assert value.dtype == np.float32
    assert value == pytest.approx(0.325, rel=1e-6)
    for alias in ("multilabel_margin_loss", "MultiLabelMarginLoss"):
        assert load_loss(alias)(x, target) == value


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_against_the_numpy_reference(load_loss, dtype, reduction):
    x, target = _case(1, dtype=dtype)
    loss = load_loss("multilabel_margin")
    sample_weight = np.linspace(0.5, 2.0, x.shape[0])
    for options in ({}, {"weight": 3.0, "sample_weight": sample_weight}):
        value, grad = loss.value_and_grad(x, target, reduction=reduction, **options)
        expected, expected_grad = _reference(x, target, reduction, **options)
        assert grad.dtype == dtype and grad.shape == x.shape and np.asarray(value).dtype == dtype
        np.testing.assert_allclose(value, expected, rtol=TOLERANCE[dtype], atol=TOLERANCE[dtype])
        np.testing.assert_allclose(grad, expected_grad, rtol=TOLERANCE[dtype], atol=TOLERANCE[dtype])
        np.testing.assert_allclose(loss(x, target, reduction=reduction, **options), value, rtol=0)
    assert loss(x, target, reduction="none")[[0, 1]].tolist() == [0.0, 0.0]  # no labels; every class a label


def test_one_row_unbatched(load_loss):
    x, target = _case(2)
    loss = load_loss("multilabel_margin")
    for r in range(x.shape[0]):
        value, grad = loss.value_and_grad(x[r], target[r], reduction="none")
        expected, expected_grad = _reference(x[r], target[r], "none")
        assert np.shape(value) == () and grad.shape == x[r].shape
        np.testing.assert_allclose(value, expected, rtol=1e-13, atol=1e-15)
        np.testing.assert_allclose(grad, expected_grad, rtol=1e-13, atol=1e-15)
        assert loss(x[r], target[r]) == pytest.approx(float(expected), rel=1e-13, abs=1e-15)


def test_the_kink_has_no_gradient(load_loss):
    """1 - (x[j] - x[i]) == 0 exactly: the pair adds nothing to the value or the gradient (PyTorch's z > 0)."""
    x = np.array([[1.5, 0.5, 0.25]])
    value, grad = load_loss("multilabel_margin").value_and_grad(x, np.array([[0, -1, -1]]), reduction="sum")
    assert value == 0.0 and np.all(grad == 0.0)
    x = np.array([[1.5, 0.5, 0.75]])  # class 2 is 0.25 inside the margin, class 1 on it
    value, grad = load_loss("multilabel_margin").value_and_grad(x, np.array([[0, -1, -1]]), reduction="sum")
    assert value == pytest.approx(0.25 / 3) and grad.tolist() == [[-1 / 3, 0.0, 1 / 3]]


def test_many_classes_few_labels_over_threads(load_loss):
    """C = 1000 with a few labels per row, enough rows (300 x 1000) to split over threads; the class axis
    elsewhere (axis=0 on the transpose, the same numbers) gives the same value and the transposed gradient."""
    rng = np.random.default_rng(3)
    x = rng.normal(0.0, 0.5, (300, 1000))
    target = np.full(x.shape, -1)
    for r in range(x.shape[0]):
        target[r, :r % 5] = rng.choice(1000, r % 5, replace=False)
    loss = load_loss("multilabel_margin")
    value, grad = loss.value_and_grad(x, target)
    expected, expected_grad = _reference(x, target)
    np.testing.assert_allclose(value, expected, rtol=1e-12)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-12, atol=1e-18)
    value_t, grad_t = loss.value_and_grad(x.T, target.T, axis=0)
    np.testing.assert_allclose(value_t, value, rtol=1e-14)
    np.testing.assert_allclose(grad_t, grad.T, rtol=1e-14, atol=1e-20)


def test_rows_with_more_axes(load_loss):
    """(N, C, H): the class axis at 1 (the spec's `axis c = 1`), one value per (n, h); "batch" averages
    over h as MXNet's per-sample mean; sample_weight has the rows' shape."""
    x, target = _case(4, rows=6, classes=6)
    x3, t3 = x.reshape(2, 3, 6).transpose(0, 2, 1), target.reshape(2, 3, 6).transpose(0, 2, 1)  # (2, 6, 3)
    loss = load_loss("multilabel_margin")
    sample_weight = np.arange(1.0, 7.0).reshape(2, 3)
    values, grad = loss.value_and_grad(x3, t3, reduction="none", sample_weight=sample_weight)
    expected, expected_grad = _reference(x, target, "none", sample_weight=sample_weight.reshape(-1))
    np.testing.assert_allclose(values, expected.reshape(2, 3), rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(grad, expected_grad.reshape(2, 3, 6).transpose(0, 2, 1), rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(loss(x3, t3, reduction="batch"),
                               _reference(x, target, "none")[0].reshape(2, 3).mean(axis=1), rtol=1e-13)
    np.testing.assert_allclose(loss(x3, t3), _reference(x, target)[0], rtol=1e-13)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("unbatched", [False, True])
def test_against_pytorch(load_loss, torch, dtype, reduction, unbatched):
    x, target = _case(5, dtype=dtype)
    loss = load_loss("multilabel_margin")
    cases = [(x[r], target[r]) for r in range(x.shape[0])] if unbatched else [(x, target)]
    for xs, ts in cases:
        value, grad = loss.value_and_grad(xs, ts, reduction=reduction)
        expected, expected_grad = _pytorch(torch, xs, ts, reduction)
        assert np.shape(value) == expected.shape and grad.dtype == dtype
        np.testing.assert_allclose(value, expected, rtol=TOLERANCE[dtype], atol=TOLERANCE[dtype])
        np.testing.assert_allclose(grad, expected_grad, rtol=TOLERANCE[dtype], atol=TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_many_classes_against_pytorch(load_loss, torch, dtype):
    rng = np.random.default_rng(6)
    x = rng.normal(0.0, 0.5, (40, 1000)).astype(dtype)
    target = np.full(x.shape, -1)
    for r in range(x.shape[0]):
        target[r, :r % 6] = rng.choice(1000, r % 6)  # with replacement: repeats too
    value, grad = load_loss("multilabel_margin").value_and_grad(x, target)
    expected, expected_grad = _pytorch(torch, x.astype(np.float64), target, "mean")
    np.testing.assert_allclose(value, expected, rtol=TOLERANCE[dtype])
    np.testing.assert_allclose(grad, expected_grad, rtol=TOLERANCE[dtype], atol=TOLERANCE[dtype] * 1e-3)
    # PyTorch's float32 backward adds a label's ~1000 shares of -1/(N C) one at a time in float32 (1e-5 off);
    # lossdsl counts the active pairs and scales once
    value32, grad32 = _pytorch(torch, x, target, "mean")
    np.testing.assert_allclose(value, value32, rtol=TOLERANCE[dtype])
    np.testing.assert_allclose(grad, grad32, rtol=2e-5, atol=1e-9)


def test_float32_ties_round_as_pytorch(load_loss, torch):
    """Scores whose float32 hinge (1 - x[j]) + x[i] rounds to exactly 0: no gradient there, as in PyTorch."""
    rng = np.random.default_rng(7)
    base = rng.normal(0.0, 1.0, (64, 1)).astype(np.float32)
    x = np.concatenate([base + np.float32(1.0), base, rng.normal(size=(64, 6)).astype(np.float32)], axis=1)
    target = np.full(x.shape, -1)
    target[:, 0] = 0
    value, grad = load_loss("multilabel_margin").value_and_grad(x, target, reduction="sum")
    expected, expected_grad = _pytorch(torch, x, target, "sum")
    np.testing.assert_allclose(value, expected, rtol=1e-6)
    np.testing.assert_array_equal(grad, expected_grad)


def test_pytorch_adapter_trains_through_it(torch):
    import lossdsl.torch
    x, target = _case(8)
    for reduction in ("mean", "none"):
        xt = torch.tensor(x, requires_grad=True)
        value = lossdsl.torch.Loss("multilabel_margin", reduction=reduction)(xt, torch.tensor(target))
        (value.sum() if reduction == "none" else value).backward()
        expected, expected_grad = _pytorch(torch, x, target, reduction)
        np.testing.assert_allclose(value.detach().numpy(), expected, rtol=1e-13)
        np.testing.assert_allclose(xt.grad.numpy(), expected_grad, rtol=1e-13, atol=1e-16)


def test_gradient_against_finite_differences(load_loss):
    rows = check(load_loss("multilabel_margin"))
    assert rows[0].checked > 20 and rows[0].passed, rows


COMPOSED = """
loss squared_sigmoid_hinge(x[c], target[c])
    "A spec around multilabel_hinge: its scores an expression, its result not affine (rescaled gradient)."
    axis c = 1
    param power = 2.0
    s = sigmoid(x)
    hinge = multilabel_hinge(3*s, target, -1)
    squared_sigmoid_hinge = hinge^power
"""


def test_a_spec_composes_with_the_intrinsic():
    loss = lossdsl.compile(COMPOSED)
    x, target = _case(9)
    s = 3 / (1 + np.exp(-x))
    hinge, hinge_grad = _reference(s, target, "none")
    np.testing.assert_allclose(loss(x, target, reduction="none"), hinge ** 2, rtol=1e-13)
    _, grad = loss.value_and_grad(x, target, reduction="sum")
    np.testing.assert_allclose(grad, 2 * hinge[:, None] * hinge_grad * s * (1 - s / 3), rtol=1e-12, atol=1e-15)
    assert check(loss)[0].passed and check(loss.with_params(power=1.0))[0].passed
    assert "# after multilabel_hinge: the loss of one row" in loss.explain()


@pytest.mark.parametrize("edit, row, label", [
    (lambda t: t.__setitem__((2, 4), 6), (2,), 6),     # >= C, after the row's -1: PyTorch checks it too
    (lambda t: t.__setitem__((5, 0), -2), (5,), -2),   # < -1
    (lambda t: t.__setitem__((3, 2), 99), (3,), 99),
])
def test_labels_out_of_range_are_refused_before_any_kernel(load_loss, monkeypatch, edit, row, label):
    from lossdsl.intrinsics import multilabel

    def never(*args):
        raise AssertionError("a kernel ran with unchecked labels")
    monkeypatch.setattr(multilabel, "forward_backward", never)
    x, target = _case(10)
    edit(target)
    with pytest.raises(LossLabelError) as info:
        load_loss("multilabel_margin").value_and_grad(x, target)
    assert isinstance(info.value, IndexError) and isinstance(info.value, LossInputError)
    assert (info.value.row, info.value.label) == (row, label)
    assert f"label {label} at row {row}" in str(info.value) and "[0, 6)" in str(info.value)
    with pytest.raises(LossLabelError, match=r"label 7 at row \(\)"):
        load_loss("multilabel_margin")(x[0], np.array([0, 7, -1, -1, -1, -1]))


def test_torch_refuses_the_same_labels(torch):
    x, target = _case(10)
    target[2, 4] = 6
    with pytest.raises(RuntimeError, match="out of range"):
        torch.nn.functional.multilabel_margin_loss(torch.tensor(x), torch.tensor(target))


def test_bad_calls_get_clear_errors(load_loss):
    loss = load_loss("multilabel_margin")
    x, target = _case(11)
    with pytest.raises(LossInputError, match="shape of x"):
        loss(x, target[:, :4])
    with pytest.raises(LossInputError, match="whole numbers"):
        loss(x, target + 0.5)
    np.testing.assert_allclose(loss(x, target.astype(np.float32)), loss(x, target), rtol=0)  # whole floats
    with pytest.raises(LossInputError, match="reduction"):
        loss(x, target, reduction="batchmean")
    with pytest.raises(LossInputError, match="float array"):
        loss(target, target)
    with pytest.raises(LossInputError, match="empty"):
        loss(np.zeros((3, 0)), np.zeros((3, 0), np.int64))


@pytest.mark.parametrize("change, error, message", [
    ("loss squared_sigmoid_hinge(x[c], target[c])", "loss squared_sigmoid_hinge(x[c], target)",
     "input over the class axis"),
    ("loss squared_sigmoid_hinge(x[c], target[c])", "loss squared_sigmoid_hinge(x[c], target[c], w)", "two inputs"),
    ("loss squared_sigmoid_hinge(x[c], target[c])", "loss squared_sigmoid_hinge(x[c], target[c] = 1)",
     "left out"),
    ("    s = sigmoid(x)\n", "    s = sigmoid(x)\n    ragged x along 0 by target\n", "no `ragged` lines"),
    ("multilabel_hinge(3*s, target, -1)", "multilabel_hinge(3*s, target)", "multilabel_hinge(scores, labels"),
])
def test_spec_errors_point_at_the_text(change, error, message):
    with pytest.raises(SpecTypeError) as info:
        lossdsl.compile(COMPOSED.replace(change, error))
    assert message in str(info.value) and info.value.line > 0


def test_the_padding_is_a_whole_number_of_parameters():
    padded = COMPOSED.replace("param power = 2.0", "param power = 1.0\n    param pad = -1").replace(
        "target, -1)", "target, pad)")
    loss = lossdsl.compile(padded)
    x, target = _case(14)
    np.testing.assert_allclose(loss(x, target), lossdsl.compile(COMPOSED).with_params(power=1.0)(x, target), rtol=0)
    x2, target2 = np.array([[0.5, 0.2, 0.3]]), np.array([[1, 0, 0]])  # labels end at the first 0
    assert loss.with_params(pad=0)(x2, target2) == pytest.approx(_reference(3 / (1 + np.exp(-x2)), [[1, -1, -1]])[0])
    with pytest.raises(LossParameterError, match="multilabel_hinge padding must be a whole number"):
        loss.with_params(pad=0.5)


def test_the_intrinsic_is_a_rows_one():
    assert intrinsics.INTRINSICS["multilabel_hinge"].kind == "rows"
    assert intrinsics.INTRINSICS["ctc_nll"].kind == "sequence"
    assert "multilabel_hinge" in lossdsl.load("multilabel_margin").explain()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gpu_arrays_run_the_cuda_kernel_with_the_cpu_results(load_loss, dtype):
    """Under Numba's CUDA simulator in CI (tests/conftest.py): GPU scores in, the gradient as a GPU array."""
    cuda = pytest.importorskip("numba.cuda")
    loss = load_loss("multilabel_margin")
    sample_weight = np.linspace(0.5, 2.0, 5)
    x, target = _case(13, rows=5, classes=21, dtype=dtype)  # more classes and labels than a block has threads
    target[3, :12] = np.arange(12)
    for reduction in ("mean", "none"):
        value, grad = loss.value_and_grad(cuda.to_device(x), target, reduction=reduction,
                                          sample_weight=sample_weight)
        expected_value, expected_grad = loss.value_and_grad(x, target, reduction=reduction,
                                                            sample_weight=sample_weight)
        assert is_gpu_array(grad)
        np.testing.assert_allclose(value, expected_value, rtol=TOLERANCE[dtype])
        np.testing.assert_allclose(grad.copy_to_host(), expected_grad, rtol=TOLERANCE[dtype], atol=1e-7)
    x, target = _case(12, rows=5, classes=6, dtype=dtype)
    composed = lossdsl.compile(COMPOSED)  # the stage before the intrinsic and the rescaled gradient, on the device
    value, grad = composed.value_and_grad(cuda.to_device(x), target)
    expected_value, expected_grad = composed.value_and_grad(x, target)
    np.testing.assert_allclose(value, expected_value, rtol=TOLERANCE[dtype])
    np.testing.assert_allclose(grad.copy_to_host(), expected_grad, rtol=10 * TOLERANCE[dtype], atol=1e-7)
