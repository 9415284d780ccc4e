"""Per-row outputs a spec declares (`output lse, entropy`): computed in the same pass as the loss and
its gradient when a call asks, against PyTorch's logsumexp and categorical entropy; the loss and
gradient unchanged by asking; outputs the spec does not ask for cost no pass; bad declarations."""
import re

import numpy as np
import pytest

import lossdsl
from lossdsl.errors import LossInputError, SpecNameError, SpecTypeError


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


def _reference(torch, logits):
    t = torch.tensor(logits)
    lse = torch.logsumexp(t, dim=1)
    return lse.numpy(), torch.distributions.Categorical(logits=t).entropy().numpy()


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_cross_entropy_returns_logsumexp_and_entropy(load_loss, torch, dtype):
    rng = np.random.default_rng(0)
    logits = (3 * rng.normal(size=(40, 17))).astype(dtype)
    logits[5, [2, 9]] = -np.inf  # masked classes add nothing to either
    y = rng.integers(0, 17, 40)
    y[5], y[7] = 0, -100
    ce = load_loss("cross_entropy", label_smoothing=0.1)
    value, grad, outputs = ce.value_and_grad(logits, y, outputs=True)
    plain_value, plain_grad = ce.value_and_grad(logits, y)
    tolerance = 1e-12 if dtype == np.float64 else 2e-6
    assert value == pytest.approx(plain_value, rel=tolerance)
    np.testing.assert_allclose(grad, plain_grad, rtol=tolerance, atol=tolerance)
    lse, entropy = _reference(torch, logits)
    kept = y != -100
    assert np.isnan(outputs["lse"][7]) and np.isnan(outputs["entropy"][7])  # an ignored row has none
    np.testing.assert_allclose(outputs["lse"][kept], lse[kept], rtol=tolerance)
    np.testing.assert_allclose(outputs["entropy"][kept], entropy[kept], rtol=10 * tolerance, atol=10 * tolerance)
    assert outputs["lse"].dtype == dtype and outputs["lse"].shape == (40,)


@pytest.mark.parametrize("chunks", [{"chunk_rows": 8}, {"chunk_rows": 8, "chunk_classes": 5}])
def test_a_linear_head_returns_them_too(load_loss, torch, chunks):
    rng = np.random.default_rng(1)
    x, weight, bias = rng.normal(size=(30, 6)), rng.normal(size=(23, 6)), rng.normal(size=23)
    target = rng.integers(0, 23, 30)
    head = load_loss("linear_cross_entropy")
    value, grads, outputs = head.value_and_grad(x, weight, target, linear_bias=bias, outputs=True, **chunks)
    plain_value, plain_grads = head.value_and_grad(x, weight, target, linear_bias=bias, **chunks)
    assert value == pytest.approx(plain_value, rel=1e-13)
    for got, wanted in zip(grads, plain_grads):
        np.testing.assert_allclose(got, wanted, rtol=1e-12, atol=1e-15)
    lse, entropy = _reference(torch, x @ weight.T + bias)
    np.testing.assert_allclose(outputs["lse"], lse, rtol=1e-12)
    np.testing.assert_allclose(outputs["entropy"], entropy, rtol=1e-11)


def test_outputs_not_asked_for_cost_no_pass(load_loss):
    """cross_entropy's entropy needs a sum over the classes after the logsumexp: only the kernel that
    returns outputs makes that pass."""
    source = load_loss("cross_entropy").source()
    kernels = dict(re.findall(r"\ndef (\w+)\(.*?\n(.*?)(?=\n\S|\Z)", source, re.S))
    # a pass is a loop over the classes, or over them in chunks whose terms are added up in float64
    loops = {name: body.count("for c in range(__C)") + body.count("for __c0 in range(0, __C,")
             for name, body in kernels.items()}
    # the max, then the sum of exp in two copies: with the smoothing means (label_smoothing > 0), without
    assert loops["loss_value"] == 3
    # those, the gradient (also in two copies: with the smoothing term, without), the zeros of an ignored row
    assert loops["loss_value_and_grad"] == 6
    # and the entropy's sum; its gradient recomputes exp (it may run in place): a third copy of that loop
    # leaves the exp out where its coefficient is 0 (label_smoothing = 1, z_loss = 0)
    assert loops["loss_value_and_grad_outputs"] == 8


def test_a_loss_without_outputs_says_so(load_loss):
    with pytest.raises(LossInputError, match="declares no `output`"):
        load_loss("nll").value_and_grad(np.zeros((2, 3)), np.array([0, 1]), outputs=True)


@pytest.mark.parametrize("lines, error, message", [
    ("    output nothing\n    t = logsumexp(x, c) - x[y]\n", SpecNameError, "nothing is not a local"),
    ("    z = x - logsumexp(x, c)\n    output z\n    t = -z[y]\n", SpecTypeError, "varies along c"),
])
def test_bad_outputs_are_refused_where_written(lines, error, message):
    spec = "loss t(x[c], y)\n" + lines
    with pytest.raises(error, match=message) as caught:
        lossdsl.compile(spec)
    assert caught.value.line == next(k for k, line in enumerate(spec.splitlines(), 1) if "output" in line)


ELEMENTWISE = "loss t(p, q, w = 1)\n    param k = 2.0\n    d = p - q\n    r = exp(d)*w\n    output d, r\n    t = w*abs(d)^k\n"


@pytest.mark.parametrize("k", [2.0, 1.5], ids=["whole power", "power"])
@pytest.mark.parametrize("weighted", [False, True], ids=["plain", "sample weights and w"])
def test_elementwise_outputs_one_per_element(k, weighted):
    """An elementwise loss's outputs, one per element, against NumPy; the value and gradients unchanged."""
    loss = lossdsl.compile(ELEMENTWISE, k=k)
    rng = np.random.default_rng(0)
    p, q, w = rng.normal(size=(3, 5, 4))
    call = {"w": np.abs(w), "sample_weight": rng.random((5, 4))} if weighted else {}
    value, grads, shown = loss.value_and_grad(p, q, outputs=True, **call)
    plain_value, plain_grads = loss.value_and_grad(p, q, **call)
    assert value == plain_value and all(np.array_equal(a, b) for a, b in zip(grads, plain_grads))
    np.testing.assert_array_equal(shown["d"], p - q)
    np.testing.assert_allclose(shown["r"], np.exp(p - q) * call.get("w", 1.0), rtol=1e-14)
    assert shown["r"].shape == (5, 4)
