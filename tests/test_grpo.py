"""GRPO (specs/grpo.loss) and the token normalisations of lossdsl.token_weights, against TRL's definitions
written here in PyTorch on materialised logits (log_softmax, gather, torch.minimum, torch.clamp, autograd);
micro-batches against the whole batch; through a linear head and the PyTorch adapter."""
import numpy as np
import pytest

import lossdsl
from lossdsl.errors import LossInputError

B, T, C, D = 6, 9, 13, 5
GRPO = ("grpo",)  # the catalogue losses this file compares with PyTorch
TOLERANCE = {np.float64: 1e-10, np.float32: 3e-5}


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


def trl_loss(torch, logits, labels, old_logp, advantages, ref_logp, mask, loss_type, beta=0.0, eps_low=0.2,
             eps_high=0.2, temperature=1.0, max_length=None, num_items=None, sequences=None):
    """TRL GRPOTrainer's loss for one (micro-)batch, its divisors overridable for micro-batches."""
    logp = torch.gather(torch.log_softmax(logits / temperature, -1), -1, labels.clamp(min=0)[..., None])[..., 0]
    ratio = torch.exp(logp - old_logp)
    per_token = -torch.minimum(ratio * advantages, torch.clamp(ratio, 1 - eps_low, 1 + eps_high) * advantages)
    if beta:
        per_token = per_token + beta * (torch.exp(ref_logp - logp) - (ref_logp - logp) - 1)
    mask = mask.to(logits.dtype)
    count = sequences or logits.shape[0]
    if loss_type == "grpo":
        return ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).sum() / count
    if loss_type == "bnpo":
        return (per_token * mask).sum() / (num_items or mask.sum().clamp(min=1.0))
    if loss_type == "dr_grpo":
        return (per_token * mask).sum() / (count * (max_length or logits.shape[1]))
    return (per_token * mask).sum() / (num_items or mask.sum().clamp(min=1.0))


def _batch(dtype, seed=0):
    rng = np.random.default_rng(seed)
    logits = (rng.normal(size=(B, T, C)) * 2).astype(dtype)
    labels = rng.integers(0, C, size=(B, T))
    # the sampling policy's log-probabilities near the current ones: ratios inside and outside the clip range
    z = logits.astype(np.float64)
    current = np.take_along_axis(z - np.log(np.exp(z).sum(-1, keepdims=True)), labels[..., None], -1)[..., 0]
    old_logp = (current + rng.normal(scale=0.3, size=(B, T))).astype(dtype)
    ref_logp = (current + rng.normal(scale=0.5, size=(B, T))).astype(dtype)
    advantages = rng.normal(size=(B, 1)).astype(dtype)
    mask = np.ones((B, T))
    mask[0, :3] = 0      # padding at the start (a left-padded prompt)
    mask[1, 5:] = 0      # at the end
    mask[2, 1:] = 0      # a sequence of one token
    mask[3, :] = 0       # none: the sequence adds 0
    return logits, labels, old_logp, advantages, ref_logp, mask


def _tensors(torch, logits, labels, old_logp, advantages, ref_logp, mask):
    return (torch.tensor(logits.astype(np.float64), requires_grad=True), torch.as_tensor(labels),
            *(torch.tensor(a.astype(np.float64)) for a in (old_logp, advantages, ref_logp)), torch.tensor(mask))


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
@pytest.mark.parametrize("params", [{}, {"beta": 0.04, "epsilon_high": 0.28, "temperature": 0.7}],
                         ids=["default", "kl-clip-higher-temperature"])
def test_grpo_matches_trl(load_loss, torch, dtype, loss_type, params):
    batch = _batch(dtype)
    logits, labels, old_logp, advantages, ref_logp, mask = batch
    loss = load_loss("grpo", **params)
    weights = lossdsl.token_weights(mask, loss_type, max_length=12 if loss_type == "dr_grpo" else None)
    value, grad = loss.value_and_grad(logits, labels, old_logp, advantages, ref_logp, sample_weight=weights,
                                      reduction="sum")
    t = _tensors(torch, *batch)
    expected = trl_loss(torch, *t, loss_type, beta=params.get("beta", 0.0), eps_high=params.get("epsilon_high", 0.2),
                        temperature=params.get("temperature", 1.0), max_length=12 if loss_type == "dr_grpo" else None)
    expected.backward()
    tol = TOLERANCE[dtype]
    assert np.isfinite(value) and value.dtype == dtype
    np.testing.assert_allclose(value, expected.item(), rtol=tol, atol=tol)
    np.testing.assert_allclose(grad, t[0].grad.numpy(), rtol=tol, atol=tol)
    assert np.all(grad[3] == 0) and np.all(grad[0, :3] == 0)  # tokens not counted get no gradient


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
def test_micro_batches_add_up_to_the_batch(load_loss, loss_type):
    """Two micro-batches of three sequences, each weighted with the whole batch's divisors: their sums of
    values and gradients are the whole batch's."""
    logits, labels, old_logp, advantages, ref_logp, mask = _batch(np.float64, seed=1)
    loss = load_loss("grpo", beta=0.04)
    whole = {"sequences": B, "num_items_in_batch": mask.sum()}
    value, grad = loss.value_and_grad(logits, labels, old_logp, advantages, ref_logp, reduction="sum",
                                      sample_weight=lossdsl.token_weights(mask, loss_type, **whole))
    total, parts = 0.0, []
    for rows in (slice(0, 3), slice(3, 6)):
        w = lossdsl.token_weights(mask[rows], loss_type, **whole)
        v, g = loss.value_and_grad(logits[rows], labels[rows], old_logp[rows], advantages[rows], ref_logp[rows],
                                   reduction="sum", sample_weight=w)
        total += v
        parts.append(g)
    np.testing.assert_allclose(total, value, rtol=1e-13)
    np.testing.assert_allclose(np.concatenate(parts), grad, rtol=1e-13, atol=1e-16)


def test_outputs_and_ignored_labels(load_loss, torch):
    """Each token's logp, kl, ratio, TRL's clip indicator, entropy and whether its label is the arg-max, from
    the same pass; a label of ignore_index is a token that counts for nothing (no weight needed)."""
    logits, labels, old_logp, advantages, ref_logp, mask = _batch(np.float64, seed=2)
    labels = labels.copy()
    labels[4, -2:] = -100
    loss = load_loss("grpo", epsilon_low=0.1, epsilon_high=0.1)
    value, grad, rows = loss.value_and_grad(logits, labels, old_logp, advantages, ref_logp, reduction="sum",
                                            outputs=True)
    lz = torch.log_softmax(torch.tensor(logits), -1)
    logp = torch.gather(lz, -1, torch.as_tensor(labels).clamp(min=0)[..., None])[..., 0].numpy()
    ratio = np.exp(logp - old_logp)
    d = ref_logp - logp
    clipped = ((ratio < 0.9) & (advantages < 0)) | ((ratio > 1.1) & (advantages > 0))
    kept = labels != -100
    probabilities = torch.softmax(torch.tensor(logits), -1).numpy()
    entropy = -(probabilities * np.log(probabilities)).sum(-1)
    correct = np.argmax(logits, -1) == labels
    for name, expected in (("logp", logp), ("kl", np.exp(d) - d - 1), ("ratio", ratio), ("clipped", clipped),
                           ("entropy", entropy), ("correct", correct)):
        np.testing.assert_allclose(rows[name][kept], np.asarray(expected, np.float64)[kept], rtol=1e-10, atol=1e-12)
        assert np.all(np.isnan(rows[name][~kept]))
    assert 0 < rows["clipped"][kept].mean() < 1  # some ratios clipped, some not
    assert np.all(grad[4, -2:] == 0)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("chunks", [{}, {"chunk_rows": 7}, {"chunk_classes": 4}], ids=["whole", "rows", "blocks"])
def test_grpo_through_a_linear_head(load_loss, torch, dtype, chunks):
    logits, labels, old_logp, advantages, ref_logp, mask = _batch(dtype, seed=3)
    rng = np.random.default_rng(4)
    hidden = rng.normal(size=(B, T, D)).astype(dtype)
    weight = rng.normal(size=(C, D)).astype(dtype)
    head = load_loss("grpo", beta=0.04).with_linear()
    weights = lossdsl.token_weights(mask, "grpo")
    value, (d_hidden, d_weight) = head.value_and_grad(hidden, weight, labels, old_logp, advantages, ref_logp,
                                                      sample_weight=weights, reduction="sum", **chunks)
    h, w = (torch.tensor(a.astype(np.float64), requires_grad=True) for a in (hidden, weight))
    rest = [torch.as_tensor(labels), *(torch.tensor(a.astype(np.float64)) for a in (old_logp, advantages, ref_logp)),
            torch.tensor(mask)]
    expected = trl_loss(torch, h @ w.T, *rest, "grpo", beta=0.04)
    expected.backward()
    tol = 10 * TOLERANCE[dtype]
    np.testing.assert_allclose(value, expected.item(), rtol=tol, atol=tol)
    np.testing.assert_allclose(d_hidden, h.grad.numpy(), rtol=tol, atol=tol)
    np.testing.assert_allclose(d_weight, w.grad.numpy(), rtol=tol, atol=tol)


def test_torch_adapter_with_bfloat16_hidden_states(torch):
    """The PyTorch module on a head: bf16 hidden states and weight computed in float32, gradients back in bf16."""
    import lossdsl.torch as lt
    logits, labels, old_logp, advantages, ref_logp, mask = _batch(np.float32, seed=5)
    rng = np.random.default_rng(6)
    hidden = torch.tensor(rng.normal(size=(B, T, D)), dtype=torch.bfloat16, requires_grad=True)
    weight = torch.tensor(rng.normal(size=(C, D)), dtype=torch.bfloat16, requires_grad=True)
    module = lt.Loss(lossdsl.load("grpo").with_linear(), reduction="sum")
    weights = torch.tensor(lossdsl.token_weights(mask, "bnpo"))
    loss = module(hidden, weight, torch.as_tensor(labels), torch.tensor(old_logp), torch.tensor(advantages),
                  sample_weight=weights)
    loss.backward()
    h, w = (t.detach().double().requires_grad_() for t in (hidden, weight))
    rest = [torch.as_tensor(labels), *(torch.tensor(a.astype(np.float64)) for a in (old_logp, advantages)),
            torch.zeros(B, T, dtype=torch.float64), torch.tensor(mask)]
    expected = trl_loss(torch, h @ w.T, *rest, "bnpo")
    expected.backward()
    assert hidden.grad.dtype == torch.bfloat16
    np.testing.assert_allclose(loss.item(), expected.item(), rtol=1e-4)
    np.testing.assert_allclose(hidden.grad.double().numpy(), h.grad.numpy(), rtol=2e-2, atol=2e-3)


def test_token_weights_refuse_what_they_cannot_use():
    with pytest.raises(LossInputError, match="loss_type must be one of"):
        lossdsl.token_weights(np.ones((2, 3)), "ppo")
    with pytest.raises(LossInputError, match=r"mask must be \(sequences, tokens\)"):
        lossdsl.token_weights(np.ones(3))
    with pytest.raises(LossInputError, match="divisor must be positive"):
        lossdsl.token_weights(np.ones((2, 3)), "dapo", num_items_in_batch=0)
    assert np.all(lossdsl.token_weights(np.zeros((2, 3)), "grpo") == 0)  # nothing counted: weights 0, no NaN
