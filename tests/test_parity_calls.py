"""Call forms other frameworks use: inputs given at load (PyTorch's `weight=`/`pos_weight=` at
construction, MindSpore's FocalLoss(weight=...)), MindSpore's (N, 1) labels, and the errors a
framework's spelling meets. References are NumPy formulas written here, PyTorch's functions where
installed, and MindSpore's printed docstring figure."""
import numpy as np
import pytest

import lossdsl


def _log_softmax(x, axis):
    shifted = x - x.max(axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


def _weighted_ce(logits, labels, class_weight):
    """PyTorch's class-weighted cross-entropy mean: sum(w[y] * nll) / sum(w[y])."""
    nll = -np.take_along_axis(_log_softmax(logits, 1), labels[:, None], 1)[:, 0]
    w = class_weight[labels]
    return (w * nll).sum() / w.sum()


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(7)
    return rng.normal(size=(8, 5)), rng.integers(0, 5, 8), rng.random(5) + 0.5


def test_class_weight_given_at_load_is_used_by_every_call(batch):
    logits, labels, w = batch
    ce = lossdsl.load("cross_entropy", class_weight=w)
    assert ce.bound.keys() == {"class_weight"}
    np.testing.assert_allclose(ce(logits, labels), _weighted_ce(logits, labels, w), rtol=1e-12)
    # a call that passes class_weight overrides the bound one
    np.testing.assert_allclose(ce(logits, labels, class_weight=np.ones(5)), _weighted_ce(logits, labels, np.ones(5)),
                               rtol=1e-12)
    again = lossdsl.load("cross_entropy").with_params(class_weight=w, label_smoothing=0.0)
    np.testing.assert_allclose(again(logits, labels), _weighted_ce(logits, labels, w), rtol=1e-12)


def test_linear_head_takes_its_class_weights_at_load(batch):
    _, labels, w = batch
    rng = np.random.default_rng(3)
    hidden, weight = rng.normal(size=(8, 4)), rng.normal(size=(5, 4))
    head = lossdsl.load("linear_cross_entropy", weight=w)
    np.testing.assert_allclose(head(hidden, weight, labels), _weighted_ce(hidden @ weight.T, labels, w), rtol=1e-12)


@pytest.mark.parametrize("keywords, says", [
    ({"weight": np.ones(5)}, "class_weight"),           # PyTorch's spelling of class weights
    ({"reduction": "sum"}, "option of each call"),     # a call option given at load
    ({"logits": np.ones(5)}, "pass it when calling"),  # a required input cannot be bound
    ({"no_such": 1.0}, "its parameters are"),
])
def test_load_keywords_that_are_not_parameters_say_what_to_do(keywords, says):
    with pytest.raises(lossdsl.LossParameterError, match=says):
        lossdsl.load("cross_entropy", **keywords)


def test_a_per_class_weight_passed_as_the_scalar_weight_names_class_weight(batch):
    logits, labels, w = batch
    with pytest.raises(lossdsl.LossInputError, match="class_weight"):
        lossdsl.load("cross_entropy")(logits, labels, weight=w)
    with pytest.raises(lossdsl.LossInputError, match="sample_weight"):
        lossdsl.load("mse")(logits, logits, weight=w)


def _bce_logits(x, y, pos_weight):
    """-(pw*y*log(sigmoid(x)) + (1-y)*log(1-sigmoid(x))) and its gradient, stable."""
    log_sig, log_sig_neg = -np.logaddexp(0, -x), -np.logaddexp(0, x)
    value = -(pos_weight * y * log_sig + (1 - y) * log_sig_neg)
    sig = 1 / (1 + np.exp(-x))
    return value, (1 - y) * sig - pos_weight * y * (1 - sig)


@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-12), (np.float32, 2e-6)])
def test_bce_with_logits_pos_weight_per_class_broadcasts_along_the_last_axis(dtype, rtol):
    rng = np.random.default_rng(11)
    x, y = rng.normal(size=(6, 4)) * 3, rng.random((6, 4))
    for pos_weight in (rng.random(4) * 3, 2.5, rng.random((6, 4)), None):
        kw = {} if pos_weight is None else {"pos_weight": np.asarray(pos_weight, dtype)}
        loss = lossdsl.load("bce_with_logits")
        value, grad = loss.value_and_grad(x.astype(dtype), y.astype(dtype), reduction="sum", **kw)
        ref_value, ref_grad = _bce_logits(x, y, 1.0 if pos_weight is None else np.asarray(pos_weight))
        assert grad.dtype == dtype
        np.testing.assert_allclose(value, ref_value.sum(), rtol=rtol)
        np.testing.assert_allclose(grad, ref_grad, rtol=rtol, atol=rtol)
    bound = lossdsl.load("bce_with_logits", pos_weight=np.arange(1.0, 5.0))
    np.testing.assert_allclose(bound(x, y, reduction="none"), _bce_logits(x, y, np.arange(1.0, 5.0))[0], rtol=1e-12)


def test_bce_with_logits_pos_weight_matches_pytorch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    x, y, pw = rng.normal(size=(7, 3)), rng.random((7, 3)), rng.random(3) * 4
    value, grad = lossdsl.load("bce_with_logits", pos_weight=pw).value_and_grad(x, y)
    xt = torch.tensor(x, requires_grad=True)
    ref = torch.nn.functional.binary_cross_entropy_with_logits(xt, torch.tensor(y), pos_weight=torch.tensor(pw))
    ref.backward()
    np.testing.assert_allclose(value, ref.item(), rtol=1e-12)
    np.testing.assert_allclose(grad, xt.grad.numpy(), rtol=1e-10, atol=1e-15)


def test_check_domains_can_be_turned_off_at_load():
    p, y = np.array([0.2, 0.7]), np.array([0.0, 2.0])  # y = 2 is outside [0, 1]
    with pytest.raises(lossdsl.LossInputError, match="check_domains=False"):
        lossdsl.load("bce_with_logits")(p, y)
    loss = lossdsl.load("bce_with_logits", check_domains=False)
    assert not loss.check_domains
    np.testing.assert_allclose(loss(p, y, reduction="none"), _bce_logits(p, y, 1.0)[0], rtol=1e-12)


def test_mindspore_focal_loss_docstring_figure():
    """mindspore.nn.FocalLoss(weight=Tensor([1, 2]), gamma=2.0, reduction='mean') on these logits and (N, 1)
    labels prints 0.12516622: softmax_focal with alpha = 1 and the class weights given at load."""
    logits = np.array([[0.8, 1.4], [0.5, 0.9], [1.2, 0.9]], np.float32)
    labels = np.array([[1], [1], [0]], np.int32)
    focal = lossdsl.load("softmax_focal", alpha=1.0, gamma=2.0, class_weight=np.array([1.0, 2.0]))
    np.testing.assert_allclose(focal(logits, labels), 0.12516622, rtol=1e-6)
    np.testing.assert_allclose(focal(logits, labels[:, 0]), 0.12516622, rtol=1e-6)


def test_labels_with_the_class_axis_kept_at_length_one():
    rng = np.random.default_rng(2)
    logits, labels = rng.normal(size=(2, 3, 4, 5)), rng.integers(0, 3, (2, 1, 4, 5))
    ce = lossdsl.load("cross_entropy")
    value, grad = ce.value_and_grad(logits, labels)
    ref_value, ref_grad = ce.value_and_grad(logits, labels[:, 0])
    assert value == ref_value
    np.testing.assert_array_equal(grad, ref_grad)
    nll = -np.take_along_axis(_log_softmax(logits, 1), labels, 1)
    np.testing.assert_allclose(value, nll.mean(), rtol=1e-12)
    with pytest.raises(lossdsl.LossInputError, match="does not match the rows"):
        ce(logits, labels[:, :, :2])


# --- lossdsl.torch.Loss takes PyTorch's constructor arguments ---

@pytest.mark.parametrize("name, reference", [
    ("cross_entropy", "cross_entropy"), ("nll", "nll_loss"), ("multi_margin", "multi_margin_loss")])
def test_torch_loss_takes_class_weights_as_pytorch_modules_do(name, reference):
    torch = pytest.importorskip("torch")
    import lossdsl.torch as lt
    rng = np.random.default_rng(1)
    x = torch.tensor(rng.normal(size=(6, 4)), requires_grad=True)
    y, w = torch.tensor(rng.integers(0, 4, 6)), torch.tensor(rng.random(4) + 0.5)
    value = lt.Loss(name, weight=w)(x, y)
    value.backward()
    ours, x.grad = x.grad, None
    expected = getattr(torch.nn.functional, reference)(x, y, weight=w)
    expected.backward()
    torch.testing.assert_close(value, expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(ours, x.grad, rtol=1e-10, atol=1e-15)


def test_torch_loss_takes_pos_weight_and_per_element_weight_tensors():
    torch = pytest.importorskip("torch")
    import lossdsl.torch as lt
    F = torch.nn.functional
    rng = np.random.default_rng(4)
    x, t = torch.tensor(rng.normal(size=(6, 4))), torch.tensor(rng.random((6, 4)))
    pw, w = torch.tensor(rng.random(4) * 3), torch.tensor(rng.random(4) + 0.5)
    p, sw = torch.sigmoid(x), torch.tensor(rng.random((6, 4)))
    torch.testing.assert_close(lt.Loss("bce_with_logits", pos_weight=pw)(x, t),
                               F.binary_cross_entropy_with_logits(x, t, pos_weight=pw), rtol=1e-12, atol=0)
    torch.testing.assert_close(lt.Loss("multilabel_soft_margin", weight=w)(x, t),
                               F.multilabel_soft_margin_loss(x, t, weight=w), rtol=1e-12, atol=0)
    # nn.BCELoss's weight= rescales each element: lossdsl's sample_weight
    torch.testing.assert_close(lt.Loss("bce", weight=sw)(p, t), F.binary_cross_entropy(p, t, weight=sw),
                               rtol=1e-12, atol=0)
    module = lt.Loss("cross_entropy", weight=w)
    assert "_given_class_weight" in dict(module.named_buffers())  # moves with module.to(device)
    with pytest.raises(lossdsl.LossParameterError, match="optional input"):
        lt.Loss("mse", no_such=torch.ones(3))
