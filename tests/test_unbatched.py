"""Unbatched inputs as PyTorch documents them: linear_cross_entropy on input (D,) with a scalar class
index or (C,) class probabilities, and CTC on log_probs (T, C) with targets (S,) and scalar lengths,
against a NumPy formula (the head, so that it runs without PyTorch) and PyTorch's own functions."""
import numpy as np
import pytest

from lossdsl.errors import LossInputError
from lossdsl.runtime.layout import is_gpu_array

WIDTH, CLASSES, SMOOTHING = 6, 30, 0.1
REDUCTIONS = ("mean", "sum", "none", "mean_or_zero")
KINDS = ("index", "ignored", "probabilities")  # a class index, an ignored one (-100), class probabilities


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


def _head_case(kind: str, dtype, seed: int = 0):
    """One sample: input (D,), linear_weight (C, D), linear_bias (C,), target () or (C,), class weights (C,)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=WIDTH).astype(dtype)
    weight = (rng.normal(size=(CLASSES, WIDTH)) * 0.5).astype(dtype)
    bias = rng.normal(size=CLASSES).astype(dtype)
    class_weight = rng.uniform(0.5, 2.0, CLASSES).astype(dtype)
    target = {"index": np.array(7), "ignored": np.array(-100),
              "probabilities": rng.dirichlet(np.ones(CLASSES)).astype(dtype)}[kind]
    return x, weight, bias, target, class_weight


def _head(load_loss, kind: str):
    name = "linear_cross_entropy_probs" if kind == "probabilities" else "linear_cross_entropy"
    return load_loss(name, label_smoothing=SMOOTHING)


def _numpy_head(x, weight, bias, target, class_weight, reduction: str):
    """PyTorch's label-smoothed, class-weighted cross-entropy of weight @ x + bias, in float64, and its
    gradients (input, weight, bias): loss = -sum_c w_c q_c log softmax_c, q the smoothed target; "mean"
    divides by w[target] (an ignored target: NaN, or 0 for "mean_or_zero"; gradients 0), or by 1 for
    probabilities."""
    x, weight, bias, class_weight = (np.asarray(a, np.float64) for a in (x, weight, bias, class_weight))
    logits = weight @ x + bias
    log_p = logits - (logits.max() + np.log(np.exp(logits - logits.max()).sum()))
    if target.ndim == 1:  # class probabilities
        q, divisor = (1 - SMOOTHING) * target + SMOOTHING / CLASSES, 1.0
    elif target == -100:
        q, divisor = np.zeros(CLASSES), 0.0
    else:
        q = np.full(CLASSES, SMOOTHING / CLASSES)
        q[target] += 1 - SMOOTHING
        divisor = class_weight[target]
    a = class_weight * q
    loss, d_logits = -(a @ log_p), a.sum() * np.exp(log_p) - a
    if reduction in ("mean", "mean_or_zero"):
        loss = loss / divisor if divisor else (np.nan if reduction == "mean" else 0.0)
        d_logits = d_logits / divisor if divisor else np.zeros(CLASSES)
    return loss, (weight.T @ d_logits, np.outer(d_logits, x), d_logits)


def _pytorch_head(torch, x, weight, bias, target, class_weight, reduction: str):
    """torch.nn.functional.linear_cross_entropy and its gradients (input, weight, bias); "mean_or_zero" is
    its "mean" with NaN (every target ignored) as 0."""
    tensors = [torch.tensor(a, requires_grad=True) for a in (x, weight, bias)]
    value = torch.nn.functional.linear_cross_entropy(
        tensors[0], tensors[1], torch.tensor(target), linear_bias=tensors[2], weight=torch.tensor(class_weight),
        reduction="mean" if reduction == "mean_or_zero" else reduction, label_smoothing=SMOOTHING)
    value.backward()
    value = value.detach().numpy()
    return (np.nan_to_num(value) if reduction == "mean_or_zero" else value), [t.grad.numpy() for t in tensors]


def _tolerance(dtype) -> float:
    return 1e-10 if dtype == np.float64 else 2e-5


def _check(value, grads, expected, expected_grads, dtype, shapes):
    tolerance = _tolerance(dtype)
    assert np.shape(value) == () and np.asarray(value).dtype == dtype  # "none" too: PyTorch's 0-d tensor
    np.testing.assert_allclose(value, expected, rtol=tolerance, atol=tolerance)
    assert [g.shape for g in grads] == shapes and all(g.dtype == dtype for g in grads)
    for got, wanted in zip(grads, expected_grads):
        np.testing.assert_allclose(got, wanted, rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("chunk_classes", [None, 7])  # all classes at once; blocks of 7 (not dividing 30)
def test_linear_head_against_numpy(load_loss, dtype, reduction, kind, chunk_classes):
    x, weight, bias, target, class_weight = _head_case(kind, dtype)
    head = _head(load_loss, kind)
    options = {"weight": class_weight, "linear_bias": bias, "reduction": reduction, "chunk_classes": chunk_classes}
    value, grads = head.value_and_grad(x, weight, target, **options)
    expected, expected_grads = _numpy_head(x, weight, bias, target, class_weight, reduction)
    _check(value, grads, expected, expected_grads, dtype, [x.shape, weight.shape, bias.shape])
    np.testing.assert_allclose(head(x, weight, target, **options), expected, rtol=_tolerance(dtype))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("kind", KINDS)
def test_linear_head_against_pytorch(load_loss, torch, dtype, reduction, kind):
    x, weight, bias, target, class_weight = _head_case(kind, dtype, seed=1)
    value, grads = _head(load_loss, kind).value_and_grad(x, weight, target, weight=class_weight, linear_bias=bias,
                                                         reduction=reduction)
    expected, expected_grads = _pytorch_head(torch, x, weight, bias, target, class_weight, reduction)
    _check(value, grads, expected, expected_grads, dtype, [x.shape, weight.shape, bias.shape])


def test_linear_head_outputs_and_normaliser(load_loss):
    """outputs=True gives one lse and entropy (0-d) for the one sample; the normaliser is its class weight."""
    x, weight, bias, target, class_weight = _head_case("index", np.float64)
    head = _head(load_loss, "index")
    _, _, shown = head.value_and_grad(x, weight, target, linear_bias=bias, reduction="none", outputs=True)
    logits = weight @ x + bias
    p = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    assert shown["lse"].shape == shown["entropy"].shape == ()
    np.testing.assert_allclose(shown["lse"], np.log(np.exp(logits).sum()), rtol=1e-12)
    np.testing.assert_allclose(shown["entropy"], -(p * np.log(p)).sum(), rtol=1e-12)
    assert head.normalizer(x, weight, target, weight=class_weight) == pytest.approx(class_weight[target])
    assert head.normalizer(x, weight, np.array(-100), weight=class_weight) == 0


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_pytorch_adapter_drives_an_unbatched_head(torch, reduction):
    import lossdsl.torch
    x, weight, bias, target, class_weight = _head_case("index", np.float64, seed=2)
    tensors = [torch.tensor(a, requires_grad=True) for a in (x, weight, bias)]
    value = lossdsl.torch.Loss("linear_cross_entropy", label_smoothing=SMOOTHING)(
        tensors[0], tensors[1], torch.tensor(target), weight=torch.tensor(class_weight), linear_bias=tensors[2],
        reduction=reduction)
    (2.0 * value).backward()  # an upstream gradient other than 1
    expected, expected_grads = _pytorch_head(torch, x, weight, bias, target, class_weight, reduction)
    assert value.shape == ()
    np.testing.assert_allclose(value.detach().numpy(), expected, rtol=1e-12)
    for tensor, wanted in zip(tensors, expected_grads):
        np.testing.assert_allclose(tensor.grad.numpy(), 2.0 * wanted, rtol=1e-10, atol=1e-12)


def _log_softmax(x):
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _ctc_case(seed: int = 0, steps: int = 11, classes: int = 5):
    """Logits (T, C) and one label sequence never the blank 0, with a repeated label ("aa" needs a blank)."""
    rng = np.random.default_rng(seed)
    return rng.normal(size=(steps, classes)), np.array([2, 2, 3, 1])


def _pytorch_ctc(torch, logits, targets, input_length: int, target_length: int, reduction: str, blank: int = 0):
    """torch.nn.functional.ctc_loss on unbatched (T, C) log_softmax(logits), and its gradient at the logits."""
    x = torch.tensor(logits, requires_grad=True)
    value = torch.nn.functional.ctc_loss(torch.log_softmax(x, 1), torch.tensor(targets), torch.tensor(input_length),
                                         torch.tensor(target_length), blank=blank, reduction=reduction)
    value.backward()
    return value.detach().numpy(), x.grad.numpy()


def _through_log_softmax(grad, log_probs):
    """The gradient at the logits, from lossdsl's (the true derivative) at their log_softmax."""
    return grad - np.exp(log_probs) * grad.sum(axis=-1, keepdims=True)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none", "batch"])  # "batch": one value per sequence, as none
@pytest.mark.parametrize("lengths", [lambda n: int(n), np.array, lambda n: np.array([n])])  # int, 0-d, (1,)
def test_ctc_against_pytorch(load_loss, torch, dtype, reduction, lengths):
    logits, targets = _ctc_case()
    log_probs = _log_softmax(logits).astype(dtype)
    value, grad = load_loss("ctc").value_and_grad(log_probs, targets, lengths(9), lengths(len(targets)),
                                                  reduction=reduction)
    expected, expected_grad = _pytorch_ctc(torch, log_probs.astype(np.float64), targets, 9, len(targets),
                                           "none" if reduction == "batch" else reduction)
    tolerance = _tolerance(dtype)
    assert np.shape(value) == () and np.asarray(value).dtype == dtype  # "none": a 0-d array, as PyTorch's
    assert grad.shape == log_probs.shape and grad.dtype == dtype
    np.testing.assert_allclose(value, expected, rtol=tolerance)
    np.testing.assert_allclose(_through_log_softmax(grad.astype(np.float64), log_probs.astype(np.float64)),
                               expected_grad, rtol=tolerance, atol=tolerance)
    assert np.all(grad[9:] == 0)  # steps past the input length


@pytest.mark.parametrize("name, params", [("ctc", {}), ("ctc_mxnet", {"layout": "NTC"}),
                                          ("ctc_mxnet", {"layout": "TNC"})])
def test_padded_labels_of_one_sequence(load_loss, torch, name, params):
    """Labels (S,) longer than the target length are read up to it (ctc: the length given; ctc_mxnet,
    logits in and blank last: the first -1), as PyTorch reads the same labels unpadded."""
    logits, targets = _ctc_case(1)
    padded = np.concatenate([targets, [3, 1]] if name == "ctc" else [targets, [-1, -1]])
    loss = load_loss(name, **params)
    if name == "ctc":
        value, grad = loss.value_and_grad(_log_softmax(logits), padded, 10, len(targets), reduction="sum")
        grad = _through_log_softmax(grad, _log_softmax(logits))
    else:
        value, grad = loss.value_and_grad(logits, padded, reduction="sum")  # every step, labels to the -1
    expected, expected_grad = _pytorch_ctc(torch, logits, targets, 10 if name == "ctc" else len(logits),
                                           len(targets), "sum", blank=0 if name == "ctc" else logits.shape[1] - 1)
    np.testing.assert_allclose(value, expected, rtol=1e-10)
    np.testing.assert_allclose(grad, expected_grad, atol=1e-10)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_pytorch_adapter_trains_through_unbatched_ctc(torch, reduction):
    import lossdsl.torch
    logits, targets = _ctc_case(2)
    x = torch.tensor(logits, requires_grad=True)
    value = lossdsl.torch.Loss("ctc", reduction=reduction)(torch.log_softmax(x, 1), torch.tensor(targets),
                                                           torch.tensor(10), torch.tensor(len(targets)))
    (2.0 * value).backward()
    expected, expected_grad = _pytorch_ctc(torch, logits, targets, 10, len(targets), reduction)
    assert value.shape == ()
    np.testing.assert_allclose(value.detach().numpy(), expected, rtol=1e-10)
    np.testing.assert_allclose(x.grad.numpy(), 2.0 * expected_grad, atol=1e-10)


def test_unbatched_ctc_on_gpu_arrays(load_loss, torch):
    """Under Numba's CUDA simulator in CI (tests/conftest.py): (T, C) on the device, its gradient there too."""
    cuda = pytest.importorskip("numba.cuda")
    logits, targets = _ctc_case(3, steps=6, classes=4)
    targets = targets[1:3]
    log_probs = _log_softmax(logits)
    value, grad = load_loss("ctc").value_and_grad(cuda.to_device(log_probs), targets, 6, 2, reduction="none")
    expected, expected_grad = _pytorch_ctc(torch, logits, targets, 6, 2, "none")
    assert is_gpu_array(grad) and grad.shape == log_probs.shape and np.shape(value) == ()
    np.testing.assert_allclose(value, expected, rtol=1e-10)
    np.testing.assert_allclose(_through_log_softmax(grad.copy_to_host(), log_probs), expected_grad, atol=1e-10)


_x, _weight, _bias, _target, _class_weight = _head_case("index", np.float64)
_probabilities = _head_case("probabilities", np.float64)[3]


@pytest.mark.parametrize("call, message", [
    (lambda head, probs: head(_x, _weight, np.array([7, 7])), r"target of shape \(2,\); expected \(\)"),
    (lambda head, probs: head(np.array(1.0), _weight, _target), r"do not fit: \(\) and \(30, 6\)"),
    (lambda head, probs: head(_x[:5], _weight, _target), r"do not fit: \(5,\) and \(30, 6\)"),
    (lambda head, probs: head(_x, _weight, _target, sample_weight=np.ones(3)),
     r"sample_weight of shape \(3,\) does not broadcast to the loss shape \(\)"),
    (lambda head, probs: head(_x, _weight, _target, weight=np.ones(4)), r"weight of shape \(4,\); expected \(30,\)$"),
    (lambda head, probs: probs(_x, _weight, _probabilities[None]), r"target of shape \(1, 30\); expected \(30,\)$"),
    (lambda head, probs: probs(_x, _weight, _probabilities[:4]), r"target of shape \(4,\); expected \(30,\)$"),
])
def test_bad_unbatched_heads_are_refused(load_loss, call, message):
    with pytest.raises(LossInputError, match=message):
        call(_head(load_loss, "index"), _head(load_loss, "probabilities"))


_log_probs, _labels = _log_softmax(_ctc_case()[0]), _ctc_case()[1]


@pytest.mark.parametrize("arguments, message", [
    ((_log_probs, np.stack([_labels, _labels]), 11, 4),
     r"log_probs of shape \(11, 5\) is one sequence, but targets of shape \(2, 4\) hold 2 sequences"),
    ((_log_probs, _labels, np.array([11, 11]), 4), r"input_lengths must hold 1 integers.* \(2,\)"),
    ((_log_probs, _labels, 11, np.array([4, 4])), r"target_lengths must hold 1 integers.* \(2,\)"),
    ((_log_probs, _labels, 11, 5), r"target length 5, outside \[0, 4\]"),
    ((_log_probs, _labels, 12, 4), r"input length 12, outside \[0, 11\]"),
    ((_log_probs, np.array(2), 11, 1), r"targets must be 2-D \(padded\) or 1-D .*shape \(\)"),
    ((_log_probs[0], _labels, 11, 4), r"3 axes \(time, batch, classes\), or 2 for one sequence; got float64 \(5,\)"),
    ((_log_probs[None, None], _labels, 11, 4), r"or 2 for one sequence; got float64 \(1, 1, 11, 5\)"),
])
def test_bad_unbatched_ctc_calls_are_refused(load_loss, arguments, message):
    with pytest.raises(LossInputError, match=message):
        load_loss("ctc")(*arguments)
