"""float16 and bfloat16 inputs: computed in float32, the loss returned in float32, each gradient in its
input's dtype; against a float64 reference on the same (rounded) data."""
import numpy as np
import pytest

ml_dtypes = pytest.importorskip("ml_dtypes")
LOW = [np.float16, ml_dtypes.bfloat16]


def _case(seed):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(64, 300)) * 3, rng.integers(0, 300, 64)


@pytest.mark.parametrize("dtype", LOW)
def test_row_and_elementwise_losses(load_loss, dtype):
    logits, labels = _case(0)
    low = logits.astype(dtype)
    exact = low.astype(np.float64)  # the same data the low-precision call sees
    for name, inputs, options in (("cross_entropy", (labels,), {"axis": -1}),
                                  ("huber", (np.zeros_like(logits),), {})):
        loss = load_loss(name)
        value, grad = loss.value_and_grad(low, *inputs, **options)
        expected, expected_grad = loss.value_and_grad(exact, *inputs, **options)
        assert np.asarray(value).dtype == np.float32 and grad.dtype == np.dtype(dtype)
        np.testing.assert_allclose(value, expected, rtol=1e-6)  # float32 accumulation, not 16-bit rounding
        np.testing.assert_allclose(grad.astype(np.float64), expected_grad, rtol=float(ml_dtypes.finfo(dtype).eps),
                                   atol=1e-7)


def test_linear_head(load_loss):
    rng = np.random.default_rng(1)
    x, weight = rng.normal(size=(40, 16)), rng.normal(size=(50, 16)) * 0.3
    target = rng.integers(0, 50, 40)
    low = [a.astype(ml_dtypes.bfloat16) for a in (x, weight)]
    head = load_loss("linear_cross_entropy")
    value, (d_x, d_weight) = head.value_and_grad(*low, target, chunk_rows=16)
    expected, expected_grads = head.value_and_grad(*[a.astype(np.float64) for a in low], target)
    assert d_x.dtype == d_weight.dtype == ml_dtypes.bfloat16 and np.asarray(value).dtype == np.float32
    np.testing.assert_allclose(value, expected, rtol=1e-6)
    for got, wanted in zip((d_x, d_weight), expected_grads):
        np.testing.assert_allclose(got.astype(np.float64), wanted, rtol=2 ** -7, atol=1e-6)


@pytest.mark.parametrize("name", ["bfloat16", "float16"])
def test_pytorch_adapter_with_16_bit_tensors(name):
    """lossdsl returns a float32 loss; PyTorch's own CPU cross_entropy on the same tensor returns one
    rounded to 16 bits (README: a bfloat16 loss of ~7 is off by up to 0.03)."""
    torch = pytest.importorskip("torch")
    import lossdsl.torch
    logits, labels = _case(2)
    x = torch.tensor(logits, dtype=getattr(torch, name), requires_grad=True)
    y = torch.tensor(labels)
    value = lossdsl.torch.Loss("cross_entropy")(x, y)
    value.backward()
    reference = torch.nn.functional.cross_entropy(x.detach().double(), y)
    theirs = torch.nn.functional.cross_entropy(x.detach(), y)
    assert value.dtype == torch.float32 and x.grad.dtype == x.dtype and theirs.dtype == x.dtype
    assert abs(float(value.detach()) - float(reference)) < 1e-5 * float(reference)
    expected = torch.autograd.grad(torch.nn.functional.cross_entropy(x.double(), y), x)[0]
    np.testing.assert_allclose(x.grad.double().numpy(), expected.double().numpy(), rtol=2 ** -7, atol=1e-7)
