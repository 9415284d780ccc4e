"""Preference losses (specs/dpo.loss, simpo, orpo, cpo, kto) and lossdsl.preference, which meets them with the
policy's tokens: against TRL's trainers' formulas written here in PyTorch on materialised logits (log_softmax,
gather, logsigmoid, autograd), on logits and through a linear head, with masks, micro-batches and bad calls.
A pair with a sequence of no counted token is left out (0 loss, no gradient), the "mean" over all pairs."""
import numpy as np
import pytest

import lossdsl
from lossdsl.errors import LossInputError

PAIRS, T, C, D = 4, 7, 11, 5
PREFERENCE = ("dpo", "simpo", "orpo", "cpo", "kto")  # the catalogue losses this file compares with PyTorch
VARIANTS = [({"loss_type": "sigmoid"}, False), ({"loss_type": "sigmoid", "label_smoothing": 0.1}, False),
            ({"loss_type": "robust", "label_smoothing": 0.1}, False), ({"loss_type": "hinge"}, False),
            ({"loss_type": "ipo"}, True)]
IDS = ["sigmoid", "cdpo", "robust", "hinge", "ipo"]


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


def trl_pair_loss(torch, chosen, rejected, ref_chosen, ref_rejected, beta=0.1, loss_type="sigmoid",
                  label_smoothing=0.0):
    """TRL DPOTrainer.dpo_loss: the loss of each pair."""
    F = torch.nn.functional
    logits = (chosen - ref_chosen) - (rejected - ref_rejected)
    if loss_type == "sigmoid":
        return -F.logsigmoid(beta * logits) * (1 - label_smoothing) - F.logsigmoid(-beta * logits) * label_smoothing
    if loss_type == "robust":
        return ((-F.logsigmoid(beta * logits) * (1 - label_smoothing) + F.logsigmoid(-beta * logits) * label_smoothing)
                / (1 - 2 * label_smoothing))
    if loss_type == "hinge":
        return torch.relu(1 - beta * logits)
    return (logits - 1 / (2 * beta)) ** 2


def sequence_logps(torch, logits, labels, mask, average):
    """Each sequence's log-probability: the sum (or mean) of log_softmax at its labels over the tokens counted."""
    logp = torch.gather(torch.log_softmax(logits, -1), -1, labels.clamp(min=0)[..., None])[..., 0]
    kept = (labels != -100) & (mask != 0)
    total = torch.where(kept, logp, torch.zeros_like(logp)).sum(-1)
    return total / kept.sum(-1).clamp(min=1) if average else total


def counted_pairs(torch, labels, mask, groups=2):
    """1.0 for each pair (sequence, unpaired) all of whose sequences have a counted token."""
    kept = ((torch.as_tensor(labels) != -100) & (torch.as_tensor(mask) != 0)).any(-1)
    return kept.reshape(groups, -1).all(0).double()


def _batch(dtype, seed=0):
    rng = np.random.default_rng(seed)
    logits = (rng.normal(size=(2 * PAIRS, T, C)) * 2).astype(dtype)
    labels = rng.integers(0, C, size=(2 * PAIRS, T))
    labels[:, :2] = -100        # the prompt
    mask = np.ones((2 * PAIRS, T))
    mask[1, -3:] = 0            # padding at the end
    mask[5, 2:6] = 0            # a rejected sequence of one token
    mask[6, :] = 0              # none counted: its log-probability is 0
    ref = (rng.normal(size=2 * PAIRS) - 10).astype(dtype)
    return logits, labels, mask, ref[:PAIRS], ref[PAIRS:]


@pytest.mark.parametrize("params, average", VARIANTS, ids=IDS)
def test_dpo_pair_losses_match_trl(load_loss, torch, params, average):
    rng = np.random.default_rng(1)
    chosen, rejected, rc, rr = (rng.normal(size=16) - 10 for _ in range(4))
    loss = load_loss("dpo", beta=0.2, **params)
    value, (d_chosen, d_rejected) = loss.value_and_grad(chosen, rejected, rc, rr, reduction="sum")
    tc, tr = (torch.tensor(a, requires_grad=True) for a in (chosen, rejected))
    expected = trl_pair_loss(torch, tc, tr, torch.tensor(rc), torch.tensor(rr), beta=0.2, **params).sum()
    expected.backward()
    np.testing.assert_allclose(value, expected.item(), rtol=1e-12)
    np.testing.assert_allclose(d_chosen, tc.grad.numpy(), rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(d_rejected, tr.grad.numpy(), rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("params, average", VARIANTS, ids=IDS)
def test_dpo_from_the_policy_logits(torch, dtype, params, average):
    logits, labels, mask, rc, rr = _batch(dtype)
    dpo = lossdsl.preference("dpo", beta=0.2, **params)
    value, grad, logps = dpo.value_and_grad(logits, labels, mask=mask, ref_chosen_logp=rc, ref_rejected_logp=rr,
                                            outputs=True)
    t = torch.tensor(logits.astype(np.float64), requires_grad=True)
    seq = sequence_logps(torch, t, torch.as_tensor(labels), torch.tensor(mask), average)
    pair = trl_pair_loss(torch, seq[:PAIRS], seq[PAIRS:], torch.tensor(rc.astype(np.float64)),
                         torch.tensor(rr.astype(np.float64)), beta=0.2, **params) * counted_pairs(torch, labels, mask)
    pair.mean().backward()
    tol = 1e-10 if dtype == np.float64 else 3e-5
    np.testing.assert_allclose(value, pair.mean().item(), rtol=tol, atol=tol)
    np.testing.assert_allclose(grad, t.grad.numpy(), rtol=tol, atol=tol)
    np.testing.assert_allclose(logps["chosen_logp"], seq[:PAIRS].detach().numpy(), rtol=tol)
    assert logps["rejected_logp"][2] == 0.0 and np.all(grad[6] == 0)  # row 6: no token counted, no gradient
    assert np.all(grad[2] == 0) and np.isnan(logps["reward_margin"][2])  # its pair is left out
    beta_margin = 0.2 * ((seq[:PAIRS] - torch.tensor(rc)) - (seq[PAIRS:] - torch.tensor(rr))).detach().numpy()
    np.testing.assert_allclose(np.delete(logps["reward_margin"], 2), np.delete(beta_margin, 2), rtol=tol, atol=tol)
    assert np.all(grad[:, :2] == 0)  # the prompt


@pytest.mark.parametrize("chunks", [{}, {"chunk_rows": 5}, {"chunk_classes": 4}], ids=["whole", "rows", "blocks"])
def test_dpo_through_a_linear_head(torch, chunks):
    logits, labels, mask, rc, rr = _batch(np.float64, seed=2)
    rng = np.random.default_rng(3)
    hidden, weight, bias = rng.normal(size=(2 * PAIRS, T, D)), rng.normal(size=(C, D)), rng.normal(size=C)
    dpo = lossdsl.preference("dpo", head=True, beta=0.1)
    value, (d_hidden, d_weight, d_bias) = dpo.value_and_grad(hidden, weight, labels, mask=mask, linear_bias=bias,
                                                             ref_chosen_logp=rc, ref_rejected_logp=rr,
                                                             **chunks)
    h, w, b = (torch.tensor(a, requires_grad=True) for a in (hidden, weight, bias))
    seq = sequence_logps(torch, h @ w.T + b, torch.as_tensor(labels), torch.tensor(mask), False)
    expected = (trl_pair_loss(torch, seq[:PAIRS], seq[PAIRS:], torch.tensor(rc), torch.tensor(rr), beta=0.1)
                * counted_pairs(torch, labels, mask)).mean()
    expected.backward()
    np.testing.assert_allclose(value, expected.item(), rtol=1e-10)
    for got, wanted in ((d_hidden, h), (d_weight, w), (d_bias, b)):
        np.testing.assert_allclose(got, wanted.grad.numpy(), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_simpo_from_the_policy_logits(torch, label_smoothing):
    """SimPO (TRL CPOTrainer, loss_type "simpo", cpo_alpha 0): mean token log-probabilities, no reference."""
    logits, labels, mask, _, _ = _batch(np.float64, seed=5)
    simpo = lossdsl.preference("simpo", beta=2.0, gamma=0.5, label_smoothing=label_smoothing)
    value, grad = simpo.value_and_grad(logits, labels, mask=mask)
    t = torch.tensor(logits, requires_grad=True)
    seq = sequence_logps(torch, t, torch.as_tensor(labels), torch.tensor(mask), average=True)
    margin = (seq[:PAIRS] - seq[PAIRS:]) - 0.5 / 2.0  # TRL: logits - simpo_gamma / beta, then times beta
    F = torch.nn.functional
    losses = -F.logsigmoid(2.0 * margin) * (1 - label_smoothing) - F.logsigmoid(-2.0 * margin) * label_smoothing
    losses = losses * counted_pairs(torch, labels, mask)
    losses.mean().backward()
    np.testing.assert_allclose(value, losses.mean().item(), rtol=1e-12)
    np.testing.assert_allclose(grad, t.grad.numpy(), rtol=1e-10, atol=1e-14)


def test_micro_batches_of_pairs_add_up(torch):
    """reduction="sum" over two micro-batches of pairs (each chosen-first) adds up to the whole batch."""
    logits, labels, mask, rc, rr = _batch(np.float64, seed=4)
    dpo = lossdsl.preference("dpo", beta=0.1)
    value, grad = dpo.value_and_grad(logits, labels, mask=mask, ref_chosen_logp=rc, ref_rejected_logp=rr,
                                     reduction="sum")
    total, parts = 0.0, {}
    for pairs in (slice(0, 1), slice(1, PAIRS)):
        rows = np.r_[np.arange(PAIRS)[pairs], PAIRS + np.arange(PAIRS)[pairs]]
        v, g = dpo.value_and_grad(logits[rows], labels[rows], mask=mask[rows], ref_chosen_logp=rc[pairs],
                                  ref_rejected_logp=rr[pairs], reduction="sum")
        total += v
        parts.update(zip(rows, g))
    np.testing.assert_allclose(total, value, rtol=1e-13)
    np.testing.assert_allclose(np.stack([parts[r] for r in range(2 * PAIRS)]), grad, rtol=1e-12, atol=1e-16)


def test_calls_refused():
    logits, labels, mask, rc, rr = _batch(np.float64)
    dpo = lossdsl.preference("dpo")
    with pytest.raises(LossInputError, match="chosen sequences first"):
        dpo(logits[:-1], labels[:-1])
    with pytest.raises(LossInputError, match="mask of shape"):
        dpo(logits, labels, mask=mask[:, :-1])
    with pytest.raises(LossInputError, match="over pairs"):
        dpo(logits, labels, reduction="none")
    with pytest.raises(LossInputError, match="elementwise in"):
        lossdsl.preference("cross_entropy")
