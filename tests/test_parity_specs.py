"""Parity of nll_probs, rmse, bce's conventions and cosine_similarity's eps with the frameworks.

PyTorch comparisons (values and autograd gradients) skip without PyTorch; the frameworks'
printed figures (MXNet's unit tests, MindSpore's docstring examples) and the conventions
where the catalogue departs from an autograd (NaN there) run either way.
"""
import numpy as np
import pytest

import lossdsl
from lossdsl.gradcheck import check

DTYPES = [np.float64, np.float32]
RTOL = {np.float64: 1e-10, np.float32: 2e-5}


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


def _tensor(torch, a, grad=False):
    return torch.tensor(np.asarray(a, dtype=np.float64), dtype=torch.float64, requires_grad=grad)


def _close(got, expected, dtype, what=""):
    rtol = RTOL[dtype]
    atol = rtol * max(1.0, float(np.max(np.abs(expected), initial=0.0)))
    np.testing.assert_allclose(got, expected, rtol=rtol, atol=atol, err_msg=what)


def _log_softmax(z, axis=-1):
    m = z.max(axis=axis, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(axis=axis, keepdims=True))


# ---------------------------------------------------------------------------
# nll_probs: MXNet SoftmaxCrossEntropyLoss(sparse_label=False, from_logits=True)
# ---------------------------------------------------------------------------

def test_nll_probs_mxnet_unit_test_figures(load_loss):
    # MXNet tests/python/unittest/test_loss.py::test_loss_ndarray: SoftmaxCrossEntropyLoss on
    # [[0, 2], [1, 4]] with labels [0, 1] is [2.12692809, 0.04858733], and with sample weights
    # [[0.5], [1.0]] [1.06346405, 0.04858733]. The same loss with sparse_label=False,
    # from_logits=True takes the log-softmax and the one-hot labels.
    # The figures are MXNet's float32 results, checked there with assert_almost_equal's rtol=1e-5;
    # exactly they are log(1 + e^2) = 2.1269280110 and log(1 + e^-3) = 0.0485873516.
    loss = load_loss("nll_probs")
    for dtype in DTYPES:
        logp = _log_softmax(np.array([[0.0, 2.0], [1.0, 4.0]])).astype(dtype)
        onehot = np.eye(2, dtype=dtype)[[0, 1]]
        value = loss(logp, onehot, axis=-1, reduction="batch")
        np.testing.assert_allclose(value, [2.12692809, 0.04858733], rtol=1e-5)
        _close(value, [np.log1p(np.exp(2.0)), np.log1p(np.exp(-3.0))], dtype)
        weighted = loss(logp, onehot, axis=-1, reduction="batch", sample_weight=np.array([0.5, 1.0], dtype))
        np.testing.assert_allclose(weighted, [1.06346405, 0.04858733], rtol=1e-5)
    logp, onehot = logp.astype(np.float64), onehot.astype(np.float64)
    np.testing.assert_allclose(load_loss("SoftmaxCELoss_dense_from_logits")(logp, onehot, axis=-1, reduction="none"),
                               loss(logp, onehot, axis=-1, reduction="none"), rtol=0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_nll_probs_gradient_is_minus_the_weighted_target(load_loss, dtype):
    """MXNet's autograd of -sum(label*pred): -label (times class weights), on any logp."""
    rng = np.random.default_rng(1)
    logp = rng.normal(size=(5, 4, 3)).astype(dtype)          # class axis 1, not normalised
    target = rng.uniform(size=(5, 4, 3)).astype(dtype)
    class_weight = rng.uniform(0.5, 2.0, 4).astype(dtype)
    value, grad = load_loss("nll_probs").value_and_grad(logp, target, class_weight=class_weight, reduction="sum")
    wt = class_weight.astype(np.float64)[:, None] * target
    _close(value, -(wt * logp).sum(), dtype)
    _close(grad, -wt, dtype)
    assert grad.dtype == dtype


@pytest.mark.parametrize("dtype", DTYPES)
def test_nll_probs_masked_classes_are_finite_with_zero_gradient(load_loss, dtype, torch):
    """-inf log-probabilities with zero target: 0 and no NaN (torch's cross_entropy gives NaN)."""
    logp = np.array([[np.log(0.3), np.log(0.7), -np.inf], [0.0, -np.inf, -np.inf]], dtype=dtype)
    target = np.array([[0.3, 0.7, 0.0], [1.0, 0.0, 0.0]], dtype=dtype)
    values, grad = load_loss("nll_probs").value_and_grad(logp, target, axis=-1, reduction="none")
    _close(values, [-(0.3 * np.log(0.3) + 0.7 * np.log(0.7)), 0.0], dtype)
    assert np.isfinite(grad).all() and np.all(grad[np.isinf(logp)] == 0)
    _close(grad, -target, dtype)
    assert np.isnan(torch.nn.functional.cross_entropy(_tensor(torch, logp), _tensor(torch, target),
                                                      reduction="none").numpy()).all()
    # a -inf log-probability of a class with target is an infinite loss, as it should be
    on_masked = np.array([[0.3, 0.7, 0.0], [0.5, 0.5, 0.0]], dtype=dtype)
    assert load_loss("nll_probs")(logp, on_masked, axis=-1, reduction="none")[1] == np.inf


@pytest.mark.parametrize("dtype", DTYPES)
def test_nll_probs_value_is_torch_cross_entropy_on_log_softmax_but_not_its_gradient(load_loss, dtype, torch):
    F = torch.nn.functional
    rng = np.random.default_rng(2)
    z = rng.normal(0.0, 2.0, (6, 5))
    target = rng.uniform(size=(6, 5))
    class_weight = rng.uniform(0.5, 2.0, 5)
    logits = _tensor(torch, z, grad=True)
    logp_t = F.log_softmax(logits, dim=1)
    logp = logp_t.detach().numpy().astype(dtype)
    loss = load_loss("nll_probs")
    for w in (None, class_weight):
        named = {} if w is None else {"class_weight": w.astype(dtype)}
        tw = None if w is None else _tensor(torch, w)
        value, grad = loss.value_and_grad(logp, target.astype(dtype), **named)       # mean over rows
        # the value: PyTorch's cross_entropy with probability targets on the log-softmax output
        leaf = _tensor(torch, logp, grad=True)
        t_value = F.cross_entropy(leaf, _tensor(torch, target.astype(dtype)), weight=tw)
        t_value.backward()
        _close(value, t_value.item(), dtype, "value")
        # ... whose gradient is exp(logp) * sum(w t) - w t, not -w t
        wt = (1.0 if w is None else w) * target.astype(dtype).astype(np.float64)
        np.testing.assert_allclose(leaf.grad.numpy(), (np.exp(logp.astype(np.float64)) * wt.sum(1, keepdims=True)
                                                       - wt) / 6, rtol=1e-6, atol=1e-9)
        _close(grad, -wt / 6, dtype, "gradient")
        assert not np.allclose(grad, leaf.grad.numpy(), atol=1e-3)
        # both agree once pushed back through the log_softmax that made logp
        (through,) = torch.autograd.grad(logp_t, logits, _tensor(torch, grad), retain_graph=True)
        (expected,) = torch.autograd.grad(F.cross_entropy(logits, _tensor(torch, target), weight=tw), logits)
        _close(through.numpy(), expected.numpy(), dtype, "through log_softmax")


def test_nll_probs_with_one_hot_targets_is_nll(load_loss):
    rng = np.random.default_rng(3)
    logp = _log_softmax(rng.normal(size=(3, 4, 2)), axis=1)
    y = rng.integers(0, 4, (3, 2))
    class_weight = rng.uniform(0.5, 2.0, 4)
    onehot = np.moveaxis(np.eye(4)[y], -1, 1)
    dense = load_loss("nll_probs").value_and_grad(logp, onehot, class_weight=class_weight, reduction="sum")
    sparse = load_loss("nll").value_and_grad(logp, y, class_weight=class_weight, reduction="sum")
    np.testing.assert_allclose(dense[0], sparse[0], rtol=1e-13)
    np.testing.assert_allclose(dense[1], sparse[1], rtol=1e-13)


def test_mxnet_bce_equals_nll_probs_of_two_classes(load_loss):
    # MXNet test_loss.py::test_bce_equal_ce2: SigmoidBCELoss(from_sigmoid=True)(p, y) equals
    # SoftmaxCELoss(from_logits=True)(log([1 - p, p] + 1e-8), y) (MXNet's assert_almost_equal)
    rng = np.random.default_rng(4)
    p = rng.uniform(0.1, 0.9, (100, 1))
    y = np.round(rng.uniform(0, 1, (100, 1)))
    two = np.log(np.concatenate([1 - p, p], axis=1) + 1e-8)
    bce = load_loss("bce", convention="mxnet")(p, y, reduction="batch")
    nll = load_loss("nll_probs")(two, np.concatenate([1 - y, y], axis=1), axis=-1, reduction="none")
    np.testing.assert_allclose(bce, nll, rtol=1e-6)


# ---------------------------------------------------------------------------
# rmse: MindSpore RMSELoss
# ---------------------------------------------------------------------------

def test_rmse_mindspore_docstring_figures(load_loss):
    # mindspore.nn.RMSELoss examples (r1.7 to r2.11), float32: 0.57735026 and 1.0
    rmse = load_loss("rmse")
    value = rmse(np.array([1, 2, 3], np.float32), np.array([1, 2, 2], np.float32))
    assert value.dtype == np.float32 and value == np.float32(0.57735026)
    np.testing.assert_allclose(value, np.sqrt(1 / 3), rtol=1e-7)
    # case 2 broadcasts logits (3,) against labels (2, 3); lossdsl's axis losses do not broadcast
    # their inputs against each other, so the broadcast is the caller's
    labels = np.array([[1, 1, 1], [1, 2, 2]], np.float32)
    logits = np.broadcast_to(np.array([1, 2, 3], np.float32), labels.shape)
    assert rmse(logits, labels) == np.float32(1.0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_rmse_matches_torch_sqrt_of_mse(load_loss, dtype, torch):
    F = torch.nn.functional
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(2, 4, 3, 5)).astype(dtype)       # two inputs of shape (4, 3, 5)
    rmse = load_loss("rmse")
    value, grad = rmse.value_and_grad(x, y)
    tx = _tensor(torch, x, grad=True)
    t_value = torch.sqrt(F.mse_loss(tx, _tensor(torch, y)))
    t_value.backward()
    assert np.shape(value) == () and grad.shape == x.shape and grad.dtype == dtype
    _close(value, t_value.item(), dtype, "value")
    _close(grad, tx.grad.numpy(), dtype, "gradient")
    # numpy's formula, and one root per row with axis=
    d = x.astype(np.float64) - y
    _close(value, np.sqrt(np.mean(d * d)), dtype)
    rows, row_grad = rmse.value_and_grad(x, y, axis=(1, 2), reduction="none")
    tx.grad = None
    t_rows = torch.sqrt(((tx - _tensor(torch, y)) ** 2).mean(dim=(1, 2)))
    t_rows.sum().backward()
    _close(rows, t_rows.detach().numpy(), dtype, "per-row value")
    _close(row_grad, tx.grad.numpy(), dtype, "per-row gradient")


def test_rmse_gradient_matches_finite_differences(load_loss):
    rng = np.random.default_rng(6)
    x, y = rng.normal(size=(2, 3, 4))
    rmse = load_loss("rmse")
    _, grad = rmse.value_and_grad(x, y)
    numeric = np.empty_like(x)
    for i in np.ndindex(x.shape):
        h = 1e-6
        up, down = x.copy(), x.copy()
        up[i] += h
        down[i] -= h
        numeric[i] = (rmse(up, y) - rmse(down, y)) / (2 * h)
    np.testing.assert_allclose(grad, numeric, rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("dtype", DTYPES)
def test_rmse_of_a_perfect_prediction_has_zero_gradient_where_autograd_has_nan(load_loss, dtype, torch):
    x = np.array([[0.5, -1.0, 2.0], [3.0, 0.0, 1.0]], dtype=dtype)
    value, grad = load_loss("rmse").value_and_grad(x, x.copy())
    assert value == 0 and np.all(grad == 0)
    # only the rows without error, one root per row
    y = x.copy()
    y[1, 0] += 1
    rows, row_grad = load_loss("rmse").value_and_grad(x, y, axis=-1, reduction="none")
    assert rows[0] == 0 and np.all(row_grad[0] == 0)
    _close(row_grad[1], (x[1] - y[1]) / (3 * rows[1]), dtype)
    # PyTorch's autograd of sqrt(mse): 0 * inf = nan (MindSpore's F.sqrt(MSELoss) chains the same way)
    tx = _tensor(torch, x, grad=True)
    torch.sqrt(torch.nn.functional.mse_loss(tx, _tensor(torch, x))).backward()
    assert np.isnan(tx.grad.numpy()).all()


# ---------------------------------------------------------------------------
# bce: the torch convention, pos_weight, and MXNet's / MindSpore's eps convention
# ---------------------------------------------------------------------------

def _bce_points(dtype):
    """interior points and the edges (p = 0 and 1, perfect and wrong predictions), as dtype."""
    rng = np.random.default_rng(7)
    p = np.concatenate([rng.uniform(0.01, 0.99, 40), [0.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1e-30, 0.5, 1 - 1e-7]])
    y = np.concatenate([rng.uniform(0.0, 1.0, 40), [1.0, 0.0, 0.0, 1.0, 0.5, 0.5, 1.0, 1.0, 0.0]])
    return p.astype(dtype), y.astype(dtype)


BCE_AS_IT_WAS = """
loss bce_before(p in [0, 1], y in [0, 1])
    bce_before = bce_clamped(p, y)
"""


@pytest.mark.parametrize("dtype", DTYPES)
def test_bce_torch_convention_is_bce_clamped_exactly(load_loss, dtype):
    """The default and pos_weight=1 compute what `bce = bce_clamped(p, y)` did, bit for bit."""
    p, y = _bce_points(dtype)
    before = lossdsl.compile(BCE_AS_IT_WAS).value_and_grad(p, y, reduction="none")
    for loss in (load_loss("bce"), load_loss("bce", pos_weight=1.0), load_loss("bce", pos_weight=3.0).with_params(
            pos_weight=1.0)):
        value, grad = loss.value_and_grad(p, y, reduction="none")
        np.testing.assert_array_equal(value, before[0])
        np.testing.assert_array_equal(grad, before[1])


@pytest.mark.parametrize("dtype", DTYPES)
def test_bce_torch_convention_matches_pytorch(load_loss, dtype, torch):
    F = torch.nn.functional
    p, y = _bce_points(dtype)
    tp = _tensor(torch, p, grad=True)
    t_value = F.binary_cross_entropy(tp, _tensor(torch, y), reduction="none")
    t_value.sum().backward()
    value, grad = load_loss("bce").value_and_grad(p, y, reduction="none")
    np.testing.assert_allclose(value, t_value.detach().numpy(), rtol=RTOL[dtype], atol=RTOL[dtype])
    # PyTorch's backward floors p (1 - p) at 1e-12 held in float32 (9.99999996e-13): 4e-9 apart at the edges
    np.testing.assert_allclose(grad, tp.grad.numpy(), rtol=max(RTOL[dtype], 1e-8), atol=RTOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_bce_pos_weight_is_pytorch_pos_weight_on_probabilities(load_loss, dtype, torch):
    """-(w y clog(p) + (1 - y) clog(1 - p)): BCEWithLogitsLoss(pos_weight=w) of logit(p), inside (0, 1),
    and PyTorch's own BCE with its positive part counted w times everywhere."""
    F = torch.nn.functional
    p, y = _bce_points(dtype)
    for w in (3.0, 0.5, 0.0):
        value, grad = load_loss("bce", pos_weight=w).value_and_grad(p, y, reduction="none")
        tp = _tensor(torch, p, grad=True)
        ty = _tensor(torch, y)
        t_value = F.binary_cross_entropy(tp, ty, reduction="none") + (w - 1) * ty * F.binary_cross_entropy(
            tp, torch.ones_like(tp), reduction="none")
        t_value.sum().backward()
        np.testing.assert_allclose(value, t_value.detach().numpy(), rtol=RTOL[dtype], atol=RTOL[dtype])
        np.testing.assert_allclose(grad, tp.grad.numpy(), rtol=max(RTOL[dtype], 1e-8), atol=RTOL[dtype])
        assert np.isfinite(value).all() and np.isfinite(grad).all()
        inside = (p > 1e-6) & (p < 1 - 1e-6)
        tp = _tensor(torch, p[inside], grad=True)
        t_logits = F.binary_cross_entropy_with_logits(torch.logit(tp), _tensor(torch, y[inside]),
                                                      pos_weight=_tensor(torch, w), reduction="none")
        t_logits.sum().backward()
        _close(value[inside], t_logits.detach().numpy(), dtype, f"pos_weight={w}: value")
        rtol = 1e-9 if dtype == np.float64 else 1e-4      # logit(p) of a float32 p
        np.testing.assert_allclose(grad[inside], tp.grad.numpy(), rtol=rtol, atol=rtol)
    # a perfect prediction keeps PyTorch's zero gradient whatever pos_weight; p = 0, y = 1 costs 100 w
    _, grad = load_loss("bce", pos_weight=3.0).value_and_grad(np.array([1.0, 0.0]), np.array([1.0, 0.0]),
                                                             reduction="none")
    assert np.all(grad == 0)
    value = load_loss("bce", pos_weight=3.0)(np.array([0.0]), np.array([1.0]), reduction="none")
    assert value[0] == 300.0


@pytest.mark.parametrize("dtype", DTYPES)
def test_bce_mxnet_convention_matches_mxnet_formula_under_autograd(load_loss, dtype, torch):
    # mxnet.gluon.loss.SigmoidBinaryCrossEntropyLoss(from_sigmoid=True), as its source writes it:
    # -(log(pred + eps) * label * pos_weight + log(1. - pred + eps) * (1. - label)), eps = 1e-12
    p, y = _bce_points(dtype)
    for params in ({}, {"pos_weight": 2.5}, {"pos_weight": 0.0}, {"eps": 1e-7, "pos_weight": 0.3}):
        eps, w = params.get("eps", 1e-12), params.get("pos_weight", 1.0)
        value, grad = load_loss("bce", convention="mxnet", **params).value_and_grad(p, y, reduction="none")
        tp, ty = _tensor(torch, p, grad=True), _tensor(torch, y)
        t_value = -(torch.log(tp + eps) * ty * w + torch.log(1. - tp + eps) * (1. - ty))
        t_value.sum().backward()
        assert np.isfinite(value).all() and np.isfinite(grad).all()
        rtol = RTOL[dtype] if dtype == np.float64 else 1e-4     # 1/(p + eps) near 1e12 in float32
        np.testing.assert_allclose(value, t_value.detach().numpy(), rtol=rtol, atol=rtol, err_msg=str(params))
        np.testing.assert_allclose(grad, tp.grad.numpy(), rtol=rtol, atol=rtol, err_msg=str(params))


@pytest.mark.parametrize("dtype", DTYPES)
def test_bce_mxnet_convention_at_the_ends(load_loss, dtype):
    """No -100 clamp: -log(1e-12) = 27.631 at p = 0, y = 1 and (1 - p formed first) at p = 1, y = 0."""
    loss = load_loss("bce", convention="mxnet")
    p, y = np.array([0.0, 1.0, 0.0, 1.0], dtype), np.array([1.0, 0.0, 0.0, 1.0], dtype)
    value, grad = loss.value_and_grad(p, y, reduction="none")
    big = -np.log(1e-12)                                             # 27.631021115928547
    eps32 = float(np.float32(1e-12)) if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(value, [big, big, -np.log1p(1e-12), -np.log1p(1e-12)], rtol=RTOL[dtype], atol=1e-6)
    np.testing.assert_allclose(grad, [-1 / eps32, 1 / eps32, 1 / (1 + 1e-12), -1 / (1 + 1e-12)], rtol=RTOL[dtype])
    assert round(float(value[0]), 2) == 27.63
    # the torch convention at the same points: the -100 clamp, and 0 for the perfect predictions
    value, grad = load_loss("bce").value_and_grad(p, y, reduction="none")
    np.testing.assert_array_equal(value, [100, 100, 0, 0])
    assert np.all(grad[2:] == 0)


def test_bce_mindspore_docstring_figure(load_loss):
    # mindspore.nn.BCELoss(weight=..., reduction='mean') example (r1.7 to r2.6), float32: 1.8952923;
    # its CPU/GPU kernels compute -w (y log(x + 1e-12) + (1 - y) log(1 - x + 1e-12)); MindSpore's
    # element weights are sample_weight here
    weight = np.array([[1.0, 2.0, 3.0], [4.0, 3.3, 2.2]], np.float32)
    logits = np.array([[0.1, 0.2, 0.3], [0.5, 0.7, 0.9]], np.float32)
    labels = np.array([[0, 1, 0], [0, 0, 1]], np.float32)
    for convention in ("mxnet", "torch"):       # no p at an end: the conventions agree here
        value = load_loss("bce", convention=convention)(logits, labels, sample_weight=weight)
        assert value.dtype == np.float32
        np.testing.assert_allclose(value, 1.8952923, rtol=2e-7)


def test_bce_mxnet_gradient_matches_finite_differences(load_loss):
    for params in ({}, {"pos_weight": 2.0, "eps": 1e-3}):
        rows = check(load_loss("bce", convention="mxnet", **params), points=128)
        assert rows and all(row.passed for row in rows), (params, rows)


def test_bce_parameters_are_checked():
    with pytest.raises(lossdsl.LossParameterError, match="convention"):
        lossdsl.load("bce", convention="keras")
    with pytest.raises(lossdsl.LossParameterError, match="pos_weight"):
        lossdsl.load("bce", pos_weight=-1.0)
    with pytest.raises(lossdsl.LossParameterError, match="eps"):
        lossdsl.load("bce", convention="mxnet", eps=0.0)


# ---------------------------------------------------------------------------
# cosine_similarity: each norm floored at eps; eps=1e-8 is -F.cosine_similarity
# ---------------------------------------------------------------------------

def _cosine_inputs(dtype):
    rng = np.random.default_rng(8)
    pred, target = rng.normal(size=(2, 7, 5))
    pred[1] *= 1e-9 / np.linalg.norm(pred[1])       # below 1e-8: floored by every eps tested
    pred[2] *= 1e-7 / np.linalg.norm(pred[2])       # floored by eps = 1e-6, not by eps = 1e-8
    target[3] *= 3e-9 / np.linalg.norm(target[3])
    pred[4] = 0.0                                   # zero vectors: loss 0, finite gradients
    target[5] = 0.0
    return pred.astype(dtype), target.astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("eps", [1e-8, 1e-6, 1e-3])
def test_cosine_similarity_is_minus_torch_cosine_similarity(load_loss, dtype, eps, torch):
    """Values on every row, tiny and zero norms included; autograd gradients on every row whose pred
    norm is not floored, and on zero vectors. Where pred's norm is below eps (but not 0) PyTorch's
    backward differs: it clamps the norm in place without recording the clamp, so the gradient of
    the unclamped norm still flows (a straight-through floor). lossdsl takes the derivative of the
    floored formula (the norm constant there, as TensorFlow's autograd of Keras's l2_normalize)."""
    pred, target = _cosine_inputs(dtype)
    loss = load_loss("cosine_similarity", eps=eps)
    values, grad = loss.value_and_grad(pred, target, reduction="none")
    tp = _tensor(torch, pred, grad=True)
    t_values = -torch.nn.functional.cosine_similarity(tp, _tensor(torch, target), dim=-1, eps=eps)
    t_values.sum().backward()
    t_grad = tp.grad.numpy()
    assert np.isfinite(values).all() and np.isfinite(grad).all()
    _close(values, t_values.detach().numpy(), dtype, "values")
    p, t = pred.astype(np.float64), target.astype(np.float64)
    norm = np.linalg.norm(p, axis=-1)
    t_hat = t / np.maximum(np.linalg.norm(t, axis=-1, keepdims=True), eps)
    for row in range(len(pred)):       # row by row: the floored rows' gradients are ~1/eps
        if 0 < norm[row] <= eps:
            _close(grad[row], -t_hat[row] / eps, dtype, f"floored row {row}: the norm is a constant")
            straight_through = p[row] * np.dot(p[row], t_hat[row]) / (eps ** 2 * norm[row])
            _close(t_grad[row], -t_hat[row] / eps + straight_through, dtype, f"torch's floored row {row}")
        else:
            _close(grad[row], t_grad[row], dtype, f"gradient of row {row}")
    assert values[4] == 0 and values[5] == 0 and np.all(grad[5] == 0)
    assert (0 < norm[1] <= eps) and (norm[2] <= eps) == (eps >= 1e-6)


def test_cosine_similarity_floored_gradient_matches_finite_differences(load_loss):
    pred, target = _cosine_inputs(np.float64)
    rows = [1, 2, 3, 6]                      # floored pred (eps = 1e-6), a tiny target, a plain row
    loss = load_loss("cosine_similarity")
    _, grad = loss.value_and_grad(pred[rows], target[rows], reduction="sum")
    for k, row in enumerate(rows):
        h = 1e-3 * max(np.abs(pred[row]).max(), 1e-12)      # stays on the same side of the floor
        for j in range(pred.shape[1]):
            up, down = pred[row].copy(), pred[row].copy()
            up[j] += h
            down[j] -= h
            numeric = (loss(up, target[row]) - loss(down, target[row])) / (2 * h)
            np.testing.assert_allclose(grad[k, j], numeric, rtol=1e-5, atol=1e-9 * np.abs(grad[k]).max())


def test_torch_cosine_similarity_default_eps_is_1e_8(load_loss, torch):
    pred, target = _cosine_inputs(np.float64)
    t_values = -torch.nn.functional.cosine_similarity(_tensor(torch, pred), _tensor(torch, target), dim=-1)
    np.testing.assert_allclose(load_loss("cosine_similarity", eps=1e-8)(pred, target, reduction="none"),
                               t_values.numpy(), rtol=1e-12, atol=1e-15)
    # the default eps (Keras's) differs from PyTorch's on the row whose norm lies between the two
    default = load_loss("cosine_similarity")(pred, target, reduction="none")
    assert not np.isclose(default[2], t_values.numpy()[2])


def test_cosine_similarity_default_is_keras_l2_normalize(load_loss):
    # tf.keras.losses.CosineSimilarity: -sum(l2_normalize(y_true) * l2_normalize(y_pred)), with
    # l2_normalize(x) = x / sqrt(max(sum(x^2), 1e-12))
    pred, target = _cosine_inputs(np.float64)

    def normalize(x):
        return x / np.sqrt(np.maximum(np.sum(x * x, axis=-1, keepdims=True), 1e-12))

    np.testing.assert_allclose(load_loss("cosine_similarity")(pred, target, reduction="none"),
                               -np.sum(normalize(pred) * normalize(target), axis=-1), rtol=1e-12, atol=1e-15)


def test_cosine_similarity_is_cosine_embedding_minus_one_for_similar_pairs(load_loss):
    """cosine_similarity is -cos; cosine_embedding with y = 1 is 1 - cos (norms away from the floors)."""
    rng = np.random.default_rng(9)
    a, b = rng.normal(size=(2, 6, 4))
    similarity = load_loss("cosine_similarity").value_and_grad(a, b, reduction="none")
    embedding = load_loss("cosine_embedding").value_and_grad(a, b, np.ones(6), reduction="none")
    np.testing.assert_allclose(embedding[0], 1 + similarity[0], rtol=1e-10)
    np.testing.assert_allclose(embedding[1][0], similarity[1], rtol=1e-9, atol=1e-12)


def test_cosine_similarity_eps_is_checked():
    with pytest.raises(lossdsl.LossParameterError, match="eps"):
        lossdsl.load("cosine_similarity", eps=0.0)
