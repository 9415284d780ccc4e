"""The CTC kernel (groundwork of the CTC intrinsic) against torch.nn.functional.ctc_loss and finite differences."""
import numpy as np
import pytest

from lossdsl.errors import LossInputError
from lossdsl.intrinsics.ctc import ctc_value_and_grad


def _case(seed, steps=12, batch=4, classes=5, longest=4, dtype=np.float64):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(steps, batch, classes))
    log_probs = (logits - np.log(np.exp(logits).sum(axis=2, keepdims=True))).astype(dtype)
    target_lengths = rng.integers(0, longest + 1, batch)
    targets = rng.integers(1, classes, (batch, longest))
    targets[0, :2] = 3  # a repeated label ("aa") forces a blank between
    target_lengths[0] = max(target_lengths[0], 2)
    input_lengths = rng.integers(longest * 2, steps + 1, batch)
    return log_probs, targets, input_lengths, target_lengths


def test_value_and_gradient_against_finite_differences():
    log_probs, targets, input_lengths, target_lengths = _case(0)
    value, grad = ctc_value_and_grad(log_probs, targets, input_lengths, target_lengths, reduction="sum")
    rng = np.random.default_rng(1)
    for _ in range(20):
        t, n, c = rng.integers(0, log_probs.shape[0]), rng.integers(0, log_probs.shape[1]), rng.integers(0, 5)
        shifted = [log_probs.copy(), log_probs.copy()]
        shifted[0][t, n, c] += 1e-6
        shifted[1][t, n, c] -= 1e-6
        plus, minus = (ctc_value_and_grad(s, targets, input_lengths, target_lengths, reduction="sum")[0]
                       for s in shifted)
        assert grad[t, n, c] == pytest.approx((plus - minus) / 2e-6, abs=1e-6)
    assert np.all(grad[input_lengths[0]:, 0] == 0)  # steps past a sequence's length have no gradient



@pytest.fixture(scope="module")
def functional():
    torch_module = pytest.importorskip("torch")
    return torch_module, torch_module.nn.functional


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("layout", ["padded", "concatenated"])
def test_against_pytorch(functional, dtype, reduction, layout):
    torch_module, F = functional
    log_probs, targets, input_lengths, target_lengths = _case(2, dtype=dtype)
    if layout == "concatenated":
        targets = np.concatenate([targets[n, :target_lengths[n]] for n in range(len(target_lengths))])
    value, grad = ctc_value_and_grad(log_probs, targets, input_lengths, target_lengths, reduction=reduction)
    logits = torch_module.tensor(log_probs, requires_grad=True)  # log_softmax of log-probabilities is itself
    expected = F.ctc_loss(F.log_softmax(logits, dim=2), torch_module.tensor(targets), torch_module.tensor(input_lengths),
                          torch_module.tensor(target_lengths), reduction=reduction)
    expected.sum().backward()
    tolerance = 2e-5 if dtype == np.float32 else 1e-10
    np.testing.assert_allclose(value, expected.detach().numpy(), rtol=tolerance, atol=tolerance)
    # the true derivative pushed back through log_softmax equals PyTorch's gradient at the logits
    softmax = np.exp(log_probs)
    through = grad - softmax * grad.sum(axis=2, keepdims=True)
    np.testing.assert_allclose(through, logits.grad.numpy(), rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("zero_infinity", [False, True])
def test_impossible_alignments(functional, zero_infinity):
    torch_module, F = functional
    log_probs, targets, _, _ = _case(3)
    input_lengths, target_lengths = np.array([3, 12, 12, 0]), np.array([4, 2, 0, 1])  # too short: rows 0 and 3
    values, grad = ctc_value_and_grad(log_probs, targets, input_lengths, target_lengths, reduction="none",
                                      zero_infinity=zero_infinity)
    expected = F.ctc_loss(torch_module.tensor(log_probs), torch_module.tensor(targets),
                          torch_module.tensor(input_lengths), torch_module.tensor(target_lengths), reduction="none",
                          zero_infinity=zero_infinity)
    np.testing.assert_allclose(values, expected.numpy(), rtol=1e-10)
    assert (values[0] == 0) == zero_infinity and np.isinf(values[3]) != zero_infinity
    if zero_infinity:
        assert np.all(grad[:, 0] == 0) and np.all(grad[:, 3] == 0)


@pytest.mark.parametrize("change, message", [
    (lambda a: {**a, "input_lengths": np.array([13, 5, 5, 5])}, "sequence 0 has input length 13"),
    (lambda a: {**a, "target_lengths": np.array([5, 1, 1, 1])}, "sequence 0 has target length 5"),
    (lambda a: {**a, "targets": np.where(a["targets"] == 3, 0, a["targets"])}, "never the blank 0"),
    (lambda a: {**a, "targets": a["targets"] + 10}, r"labels lie in \[0, 5\)"),
    (lambda a: {**a, "targets": np.arange(3)}, "concatenated targets hold 3 labels"),
])
def test_bad_inputs_are_refused_before_any_kernel(change, message):
    log_probs, targets, input_lengths, target_lengths = _case(4)
    arguments = change({"targets": targets, "input_lengths": input_lengths, "target_lengths": target_lengths})
    with pytest.raises(LossInputError, match=message):
        ctc_value_and_grad(log_probs, **arguments)


def test_a_nan_makes_its_sequence_nan_as_in_pytorch():
    log_probs, targets, input_lengths, target_lengths = _case(5)
    input_lengths[:] = log_probs.shape[0]
    log_probs[3, 1, :] = np.nan  # inside sequence 1, on every path
    values, _ = ctc_value_and_grad(log_probs, targets, input_lengths, target_lengths, reduction="none")
    assert np.isnan(values[1]) and np.isfinite(np.delete(values, 1)).all()
