"""CTC as a DSL intrinsic: the catalogue's specs/ctc.loss (PyTorch's conventions) and ctc_mxnet.loss
(MXNet Gluon's) against torch.nn.functional.ctc_loss and finite differences, specs that compose with
ctc_nll, and the errors a spec or a call gets."""
import numpy as np
import pytest

import lossdsl
from lossdsl.errors import LossInputError, LossParameterError, SpecNameError, SpecTypeError
from lossdsl.gradcheck import check
from lossdsl.runtime.layout import is_gpu_array

SEQUENCE_LOSSES = ("ctc", "ctc_mxnet")  # tests/test_catalogue.py counts them as covered here


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


def _log_softmax(x, axis):
    shifted = x - x.max(axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


def _case(seed, steps=12, batch=5, classes=6, longest=4, blank=0):
    """Logits (T, N, C), padded labels never the blank (one "aa", one empty), lengths that fit."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(steps, batch, classes))
    labels = rng.choice([c for c in range(classes) if c != blank], (batch, longest))
    labels[0, :2] = labels[0, 0]
    target_lengths = rng.integers(1, longest + 1, batch)
    target_lengths[0], target_lengths[1] = 2, 0
    input_lengths = rng.integers(2 * longest + 1, steps + 1, batch)
    input_lengths[2] = steps
    return logits, labels, input_lengths, target_lengths


def _pytorch(torch, logits, labels, input_lengths, target_lengths, reduction, blank=0, zero_infinity=False):
    """PyTorch's loss and its gradient at the logits (log_softmax inside)."""
    x = torch.tensor(logits, requires_grad=True)
    value = torch.nn.functional.ctc_loss(torch.log_softmax(x, 2), torch.tensor(labels), torch.tensor(input_lengths),
                                         torch.tensor(target_lengths), blank=blank, reduction=reduction,
                                         zero_infinity=zero_infinity)
    value.sum().backward()
    return value.detach().numpy(), x.grad.numpy()


def _through_log_softmax(grad, log_probs):
    """The gradient at the logits, given the gradient at their log_softmax."""
    return grad - np.exp(log_probs) * grad.sum(axis=2, keepdims=True)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("layout", ["padded", "concatenated"])
def test_ctc_spec_against_pytorch(load_loss, torch, dtype, reduction, layout):
    logits, labels, input_lengths, target_lengths = _case(1)
    log_probs = _log_softmax(logits, 2).astype(dtype)
    targets = labels if layout == "padded" else np.concatenate([labels[n, :k] for n, k in enumerate(target_lengths)])
    value, grad = load_loss("ctc").value_and_grad(log_probs, targets, input_lengths, target_lengths,
                                                  reduction=reduction)
    expected, expected_grad = _pytorch(torch, log_probs.astype(np.float64), targets, input_lengths, target_lengths,
                                       reduction)
    tolerance = 2e-5 if dtype == np.float32 else 1e-10
    assert np.asarray(value).dtype == dtype and grad.dtype == dtype and grad.shape == log_probs.shape
    np.testing.assert_allclose(value, expected, rtol=tolerance, atol=tolerance)
    np.testing.assert_allclose(_through_log_softmax(grad.astype(np.float64), log_probs.astype(np.float64)),
                               expected_grad, rtol=tolerance, atol=tolerance)
    np.testing.assert_allclose(load_loss("ctc")(log_probs, targets, input_lengths, target_lengths,
                                                reduction=reduction), value, rtol=tolerance)


@pytest.mark.parametrize("zero_infinity", [False, True])
def test_impossible_alignments(load_loss, torch, zero_infinity):
    logits, labels, input_lengths, target_lengths = _case(2)
    input_lengths[3], target_lengths[3], labels[3, :2] = 2, 2, labels[3, 0]  # "aa" needs 3 steps
    log_probs = _log_softmax(logits, 2)
    loss = load_loss("ctc", zero_infinity=zero_infinity)
    values, grad = loss.value_and_grad(log_probs, labels, input_lengths, target_lengths, reduction="none")
    expected, expected_grad = _pytorch(torch, log_probs, labels, input_lengths, target_lengths, "none",
                                       zero_infinity=zero_infinity)
    assert values[3] == (0.0 if zero_infinity else np.inf)
    np.testing.assert_allclose(values, expected, rtol=1e-10)
    assert np.all(grad[:, 3] == 0)
    if zero_infinity:  # PyTorch's gradient of an infinite loss is NaN; ours and its agree elsewhere
        np.testing.assert_allclose(_through_log_softmax(grad, log_probs), expected_grad, atol=1e-10)


def test_blank_elsewhere_matches_pytorch(load_loss, torch):
    logits, labels, input_lengths, target_lengths = _case(3, blank=2)
    log_probs = _log_softmax(logits, 2)
    value, grad = load_loss("ctc", blank=2).value_and_grad(log_probs, labels, input_lengths, target_lengths)
    expected, expected_grad = _pytorch(torch, log_probs, labels, input_lengths, target_lengths, "mean", blank=2)
    np.testing.assert_allclose(value, expected, rtol=1e-10)
    np.testing.assert_allclose(_through_log_softmax(grad, log_probs), expected_grad, atol=1e-10)


def test_mxnet_docstring_example_matches_the_pytorch_form(load_loss):
    """MXNet's example: vocabulary a, b, c, blank last (3), 'ba', 'cbb', 'abac' padded with -1."""
    label = np.array([[1, 0, -1, -1], [2, 1, 1, -1], [0, 1, 0, 2]])
    pred = np.random.default_rng(4).normal(size=(3, 10, 4))  # NTC, unnormalised
    per_sample = load_loss("ctc_mxnet")(pred, label, reduction="batch")
    # the PyTorch form on re-indexed labels: blank first, a b c as 1 2 3
    log_probs = np.roll(_log_softmax(pred, 2), 1, axis=2).transpose(1, 0, 2)
    lengths = (label >= 0).sum(axis=1)
    expected = load_loss("ctc")(log_probs, np.where(label >= 0, label + 1, 0), np.full(3, 10), lengths,
                                reduction="none")
    assert per_sample.shape == (3,)
    np.testing.assert_allclose(per_sample, expected, rtol=1e-12)


@pytest.mark.parametrize("layout, label_layout", [("NTC", "NT"), ("TNC", "TN")])
def test_mxnet_against_pytorch_with_weights_and_lengths(load_loss, torch, layout, label_layout):
    logits, labels, input_lengths, target_lengths = _case(5, classes=5, blank=4)
    padded = np.where(np.arange(labels.shape[1]) < target_lengths[:, None], labels, -1)
    pred = logits if layout == "TNC" else logits.transpose(1, 0, 2)
    label = padded if label_layout == "NT" else padded.T
    sample_weight = np.linspace(0.5, 2.0, 5)
    loss = load_loss("ctc_mxnet", layout=layout, label_layout=label_layout)
    expected, expected_grad = _pytorch(torch, logits, labels, input_lengths, target_lengths, "none", blank=4)
    for lengths in ({"pred_lengths": input_lengths, "label_lengths": target_lengths},
                    {"pred_lengths": input_lengths.astype(np.float32)}):  # labels end at the -1; MXNet's floats
        value, grad = loss.value_and_grad(pred, label, reduction="sum", weight=3.0, sample_weight=sample_weight,
                                          **lengths)
        np.testing.assert_allclose(value, 3.0 * (sample_weight * expected).sum(), rtol=1e-10)
        weighted = expected_grad * 3.0 * sample_weight[None, :, None]
        np.testing.assert_allclose(grad, weighted if layout == "TNC" else weighted.transpose(1, 0, 2), atol=1e-10)
    full = loss(pred, label, reduction="none")  # no lengths: every time step, labels to the first -1
    x = logits
    np.testing.assert_allclose(full, _pytorch(torch, x, labels, np.full(5, x.shape[0]), target_lengths, "none",
                                              blank=4)[0], rtol=1e-10)


@pytest.mark.parametrize("name, params", [("ctc", {}), ("ctc_mxnet", {}), ("ctc_mxnet", {"layout": "TNC"})])
def test_gradient_against_finite_differences(load_loss, name, params):
    rows = check(load_loss(name, **params))
    assert rows[0].checked > 100 and rows[0].passed, rows


FOCAL_CTC = """
loss focal_ctc(logits[c], targets, input_lengths, target_lengths)
    "Focal CTC (Feng et al. 2019): sequences the model already gets right weigh less."
    axis c = 2
    param gamma = 2.0 where gamma >= 0
    ragged logits along 0 by input_lengths
    ragged targets along 1 by target_lengths
    nll = ctc_nll(logits - logsumexp(logits, c), targets, 0)
    focal_ctc = (1 - exp(-nll))^gamma*nll
"""


def test_a_spec_composes_with_the_intrinsic(torch):
    """A non-affine loss of the intrinsic's result, on logits: value from PyTorch's CTC, gradient by
    finite differences (the kernel's scales are rescaled, or recomputed where the guess at 0 was 0)."""
    focal = lossdsl.compile(FOCAL_CTC)
    logits, labels, input_lengths, target_lengths = _case(6, steps=8, batch=3, classes=4, longest=2)
    nll, _ = _pytorch(torch, logits, labels, input_lengths, target_lengths, "none")
    for gamma in (2.0, 0.0):
        loss = focal.with_params(gamma=gamma)
        expected = (1 - np.exp(-nll)) ** gamma * nll
        np.testing.assert_allclose(loss(logits, labels, input_lengths, target_lengths, reduction="none"), expected,
                                   rtol=1e-10)
        assert check(loss)[0].passed
    squared = lossdsl.compile(FOCAL_CTC.replace("(1 - exp(-nll))^gamma*nll", "nll^2"))  # derivative 0 at nll = 0
    assert check(squared)[0].passed
    assert "dfocal_ctc/dnll" in focal.explain()


@pytest.mark.parametrize("change, error, message", [
    ("    nll = ctc_nll(logits - logsumexp(logits, c), targets, 0)\n",
     "    nll = 2*ctc_nll(logits, targets, 0)\n", "a line of its own"),
    ("focal_ctc = (1 - exp(-nll))^gamma*nll", "focal_ctc = nll + ctc_nll(logits, targets, 0)", "one intrinsic"),
    ("ragged targets along 1 by target_lengths", "ragged labels along 1 by target_lengths", "no input labels"),
    ("ragged targets along 1 by target_lengths", "ragged targets along 1 by lengths", "no input lengths"),
    ("targets, input_lengths, target_lengths)", "targets, input_lengths, target_lengths, w)", "input w"),
    ("targets, input_lengths, target_lengths)", "targets = none, input_lengths, target_lengths)", "left out"),
    ("logsumexp(logits, c), targets, 0)", "logsumexp(logits, c), input_lengths, 0)", "ragged input"),
    ("ctc_nll(logits - logsumexp(logits, c), targets, 0)", "ctc_nll(logits, targets)", "ctc_nll(log_probs"),
])
def test_spec_errors_point_at_the_text(change, error, message):
    with pytest.raises((SpecTypeError, SpecNameError)) as info:
        lossdsl.compile(FOCAL_CTC.replace(change, error))
    assert message in str(info.value) and info.value.line > 0


def test_sequence_statements_need_an_intrinsic():
    with pytest.raises(SpecTypeError, match="calls one intrinsic"):
        lossdsl.compile("loss m(x, y, n)\n    ragged x along 0 by n\n    m = x - y\n")
    with pytest.raises(LossParameterError, match="whole number"):
        lossdsl.compile(FOCAL_CTC.replace("targets, 0)", "targets, 0.5)"))


@pytest.mark.parametrize("edit, message", [
    (lambda a: a.update(labels=np.where(a["labels"] == 1, 0, a["labels"])), "sequence"),  # the blank as a label
    (lambda a: a.update(labels=a["labels"] + 0.5), "whole numbers"),
    (lambda a: a.update(logits=a["logits"][0]), "3 axes"),
    (lambda a: a.update(input_lengths=a["input_lengths"] + 50), "input length"),
    (lambda a: a.update(target_lengths=a["target_lengths"][:2]), "one per sequence"),
    (lambda a: a.pop("target_lengths"), "missing target_lengths"),
])
def test_bad_inputs_get_clear_errors(load_loss, edit, message):
    logits, labels, input_lengths, target_lengths = _case(7)
    labels[2, 0] = 1
    arrays = {"logits": _log_softmax(logits, 2), "labels": labels, "input_lengths": input_lengths,
              "target_lengths": target_lengths}
    edit(arrays)
    loss = load_loss("ctc")
    with pytest.raises(LossInputError, match=message):
        loss(arrays["logits"], arrays["labels"], arrays["input_lengths"], **(
            {"target_lengths": arrays["target_lengths"]} if "target_lengths" in arrays else {}))
    with pytest.raises(LossInputError, match="reduction"):
        loss(*_case(7), reduction="batchmean")


def test_pytorch_adapter_trains_through_ctc(torch):
    """lossdsl.torch.Loss("ctc") in an autograd graph: the logits' gradient equals PyTorch's ctc_loss's."""
    import lossdsl.torch
    logits, labels, input_lengths, target_lengths = _case(8)
    lengths = [torch.tensor(a) for a in (labels, input_lengths, target_lengths)]
    for reduction in ("mean", "none"):
        x = torch.tensor(logits, requires_grad=True)
        value = lossdsl.torch.Loss("ctc", reduction=reduction)(torch.log_softmax(x, 2), *lengths)
        (value.sum() if reduction == "none" else value).backward()
        expected, expected_grad = _pytorch(torch, logits, labels, input_lengths, target_lengths, reduction)
        np.testing.assert_allclose(value.detach().numpy(), expected, rtol=1e-10)
        np.testing.assert_allclose(x.grad.numpy(), expected_grad, atol=1e-10)


@pytest.mark.parametrize("name, params", [("ctc", {}), ("ctc_mxnet", {"layout": "NTC"})])
def test_gpu_arrays_run_the_cuda_kernel_with_the_cpu_results(load_loss, name, params):
    """Under Numba's CUDA simulator in CI (tests/conftest.py): GPU inputs in, the gradient as a GPU array."""
    cuda = pytest.importorskip("numba.cuda")
    loss = load_loss(name, **params)
    inputs = loss.sample_inputs(seed=3, sequences=2, steps=6, classes=4, longest=2)
    scores = loss.inputs.index(loss.wrt[0])
    on_device = [cuda.to_device(a) if k == scores else a for k, a in enumerate(inputs)]
    for reduction in ("mean", "none"):
        value, grad = loss.value_and_grad(*on_device, reduction=reduction, sample_weight=np.array([0.5, 2.0]))
        expected_value, expected_grad = loss.value_and_grad(*inputs, reduction=reduction,
                                                            sample_weight=np.array([0.5, 2.0]))
        assert is_gpu_array(grad)
        np.testing.assert_allclose(value, expected_value, rtol=1e-12)
        np.testing.assert_allclose(grad.copy_to_host(), expected_grad, rtol=1e-12, atol=1e-14)


def test_jax_adapter_differentiates_ctc(load_loss, torch):
    """lossdsl.jax.loss("ctc_mxnet") under jax.jit(jax.value_and_grad): PyTorch's value and logit gradient."""
    jax = pytest.importorskip("jax")
    import lossdsl.jax
    logits, labels, input_lengths, target_lengths = _case(9, classes=5, blank=4)
    logits = logits.astype(np.float32)  # JAX's default precision (x64 is a global switch: left alone)
    padded = np.where(np.arange(labels.shape[1]) < target_lengths[:, None], labels, -1).astype(np.int32)
    ctc = lossdsl.jax.loss("ctc_mxnet", reduction="sum", layout="TNC")
    value, grad = jax.jit(jax.value_and_grad(ctc))(logits, padded, input_lengths.astype(np.int32),
                                                   target_lengths.astype(np.int32))
    expected, expected_grad = _pytorch(torch, logits.astype(np.float64), labels, input_lengths, target_lengths,
                                       "sum", blank=4)
    assert grad.dtype == np.float32
    np.testing.assert_allclose(float(value), expected, rtol=2e-6)
    np.testing.assert_allclose(np.asarray(grad), expected_grad, atol=2e-6)
