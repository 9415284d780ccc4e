"""Preference and sequence-level RL losses (specs/dpo.loss, simpo, orpo, cpo, kto, gspo) and lossdsl.preference, which meets them with the
policy's tokens: against TRL's trainers' formulas written here in PyTorch on materialised logits (log_softmax,
gather, logsigmoid, autograd), on logits and through a linear head, with masks, micro-batches and bad calls.
A pair with a sequence of no counted token is left out (0 loss, no gradient), the "mean" over all pairs."""
import numpy as np
import pytest

import lossdsl
from lossdsl.errors import LossInputError

PAIRS, T, C, D = 4, 7, 11, 5
PREFERENCE = ("dpo", "simpo", "orpo", "cpo", "kto", "gspo")  # the catalogue losses this file compares with PyTorch
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


def test_dpo_through_a_head_with_many_classes(torch):
    """3000 classes: both of the head's calls go a block of classes at a time, the gradient's reusing the
    values pass's log-sum-exp per token (LinearHead.values_and_partials)."""
    _, labels, mask, rc, rr = _batch(np.float64, seed=4)
    rng = np.random.default_rng(5)
    classes = 3000
    labels = np.where(labels < 0, labels, rng.integers(0, classes, labels.shape))
    hidden, weight = rng.normal(size=(2 * PAIRS, T, D)), rng.normal(size=(classes, D))
    dpo = lossdsl.preference("dpo", head=True, beta=0.1)
    assert dpo.token.values_and_partials(hidden.reshape(-1, D), weight, labels.reshape(-1))[1] is not None
    value, (d_hidden, d_weight) = dpo.value_and_grad(hidden, weight, labels, mask=mask, ref_chosen_logp=rc,
                                                     ref_rejected_logp=rr)
    h, w = (torch.tensor(a, requires_grad=True) for a in (hidden, weight))
    seq = sequence_logps(torch, h @ w.T, torch.as_tensor(labels), torch.tensor(mask), False)
    expected = (trl_pair_loss(torch, seq[:PAIRS], seq[PAIRS:], torch.tensor(rc), torch.tensor(rr), beta=0.1)
                * counted_pairs(torch, labels, mask)).mean()
    expected.backward()
    np.testing.assert_allclose(value, expected.item(), rtol=1e-10)
    np.testing.assert_allclose(d_hidden, h.grad.numpy(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(d_weight, w.grad.numpy(), rtol=1e-9, atol=1e-12)


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


def _full_batch(dtype, seed):
    """A batch whose every sequence has counted tokens (padding at either end, one of one token)."""
    logits, labels, mask, rc, rr = _batch(dtype, seed)
    mask[6, :] = 1
    mask[3, :3] = 0  # padding at the start
    return logits, labels, mask, rc, rr


def chosen_nll(torch, logits, labels, mask):
    """torch's CrossEntropyLoss (mean over counted tokens, -100 ignored) over the chosen half."""
    target = torch.where(torch.as_tensor(mask) != 0, torch.as_tensor(labels), torch.full_like(torch.as_tensor(labels),
                                                                                             -100))
    return torch.nn.functional.cross_entropy(logits[:PAIRS].reshape(-1, C), target[:PAIRS].reshape(-1))


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
def test_orpo_from_the_policy_logits(torch, dtype):
    """TRL ORPOTrainer: nll_loss - mean(beta * logsigmoid(log_odds)), mean token log-probabilities."""
    logits, labels, mask, _, _ = _full_batch(dtype, seed=6)
    orpo = lossdsl.preference("orpo", beta=0.25)
    value, grad, shown = orpo.value_and_grad(logits, labels, mask=mask, outputs=True)
    t = torch.tensor(logits.astype(np.float64), requires_grad=True)
    seq = sequence_logps(torch, t, torch.as_tensor(labels), torch.tensor(mask), average=True)
    c, r = seq[:PAIRS], seq[PAIRS:]
    log_odds = (c - r) - (torch.log1p(-torch.exp(c)) - torch.log1p(-torch.exp(r)))
    nll = chosen_nll(torch, t, labels, mask)
    expected = nll - (0.25 * torch.nn.functional.logsigmoid(log_odds)).mean()
    expected.backward()
    tol = 1e-10 if dtype == np.float64 else 3e-5
    np.testing.assert_allclose(value, expected.item(), rtol=tol)
    np.testing.assert_allclose(grad, t.grad.numpy(), rtol=tol, atol=tol)
    np.testing.assert_allclose(shown["log_odds"], log_odds.detach().numpy(), rtol=tol)
    np.testing.assert_allclose(shown["nll"], nll.item(), rtol=tol)
    np.testing.assert_allclose(shown["chosen_reward"], 0.25 * c.detach().numpy(), rtol=tol)


CPO_TYPES = ["sigmoid", "hinge", "ipo", "simpo"]


@pytest.mark.parametrize("loss_type", CPO_TYPES)
def test_cpo_from_the_policy_logits(torch, loss_type):
    """TRL CPOTrainer: mean(losses) + cpo_alpha * nll_loss; sums of token log-probabilities, means for ipo/simpo."""
    logits, labels, mask, _, _ = _full_batch(np.float64, seed=7)
    beta, alpha, smoothing, gamma = 0.5, 0.7, 0.1, 0.3
    cpo = lossdsl.preference("cpo", beta=beta, loss_type=loss_type, nll_weight=alpha, label_smoothing=smoothing,
                             simpo_gamma=gamma)
    value, grad = cpo.value_and_grad(logits, labels, mask=mask)
    t = torch.tensor(logits, requires_grad=True)
    seq = sequence_logps(torch, t, torch.as_tensor(labels), torch.tensor(mask), average=loss_type in ("ipo", "simpo"))
    d = seq[:PAIRS] - seq[PAIRS:]
    F = torch.nn.functional
    if loss_type in ("sigmoid", "simpo"):
        m = d - gamma / beta if loss_type == "simpo" else d
        losses = -F.logsigmoid(beta * m) * (1 - smoothing) - F.logsigmoid(-beta * m) * smoothing
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * d)
    else:
        losses = (d - 1 / (2 * beta)) ** 2
    expected = losses.mean() + alpha * chosen_nll(torch, t, labels, mask)
    expected.backward()
    np.testing.assert_allclose(value, expected.item(), rtol=1e-11)
    np.testing.assert_allclose(grad, t.grad.numpy(), rtol=1e-9, atol=1e-14)


@pytest.mark.parametrize("loss_type", ["kto", "apo_zero_unpaired"])
def test_kto_on_unpaired_sequences(torch, loss_type):
    """TRL KTOTrainer.kto_loss: desirable and undesirable sequences, a reference point clamped at 0, the mean
    over all sequences; a sequence with no counted token left out."""
    logits, labels, mask, _, _ = _batch(np.float64, seed=8)
    rng = np.random.default_rng(9)
    desirable = np.array([1, 0, 1, 1, 0, 0, 1, 0], float)
    ref = rng.normal(size=2 * PAIRS) - 8
    kto = lossdsl.preference("kto", beta=0.3, desirable_weight=1.5, undesirable_weight=0.8, loss_type=loss_type)
    for kl in (0.4, -0.2):
        value, grad, shown = kto.value_and_grad(logits, labels, mask=mask, desirable=desirable, ref_logp=ref, kl=kl,
                                                outputs=True)
        t = torch.tensor(logits, requires_grad=True)
        seq = sequence_logps(torch, t, torch.as_tensor(labels), torch.tensor(mask), average=False)
        ratio = seq - torch.tensor(ref)
        z0 = max(kl, 0.0) if loss_type == "kto" else 0.0
        wanted = 1.5 * (1 - torch.sigmoid(0.3 * (ratio - z0)))
        unwanted = 0.8 * (1 - torch.sigmoid(0.3 * (z0 - ratio)))
        losses = torch.where(torch.tensor(desirable) == 1, wanted, unwanted) * counted_pairs(torch, labels, mask, 1)
        losses.mean().backward()
        np.testing.assert_allclose(value, losses.mean().item(), rtol=1e-12)
        np.testing.assert_allclose(grad, t.grad.numpy(), rtol=1e-10, atol=1e-15)
        np.testing.assert_allclose(np.delete(shown["reward"], 6), np.delete(0.3 * ratio.detach().numpy(), 6),
                                   rtol=1e-12)
        assert np.all(grad[6] == 0) and np.isnan(shown["reward"][6])


def test_orpo_through_a_linear_head(torch):
    logits, labels, mask, _, _ = _full_batch(np.float64, seed=10)
    rng = np.random.default_rng(11)
    hidden, weight = rng.normal(size=(2 * PAIRS, T, D)), rng.normal(size=(C, D)) * 0.5
    orpo = lossdsl.preference("orpo", head=True, beta=0.1)
    value, (d_hidden, d_weight) = orpo.value_and_grad(hidden, weight, labels, mask=mask, chunk_rows=6)
    h, w = (torch.tensor(a, requires_grad=True) for a in (hidden, weight))
    z = h @ w.T
    seq = sequence_logps(torch, z, torch.as_tensor(labels), torch.tensor(mask), average=True)
    c, r = seq[:PAIRS], seq[PAIRS:]
    log_odds = (c - r) - (torch.log1p(-torch.exp(c)) - torch.log1p(-torch.exp(r)))
    expected = chosen_nll(torch, z, labels, mask) - (0.1 * torch.nn.functional.logsigmoid(log_odds)).mean()
    expected.backward()
    np.testing.assert_allclose(value, expected.item(), rtol=1e-10)
    np.testing.assert_allclose(d_hidden, h.grad.numpy(), rtol=1e-9, atol=1e-13)
    np.testing.assert_allclose(d_weight, w.grad.numpy(), rtol=1e-9, atol=1e-13)


def test_micro_batches_add_up_with_an_nll_term(torch):
    """reduction="sum" sums the pair losses and the chosen tokens' NLL: micro-batches add up to the batch."""
    logits, labels, mask, _, _ = _full_batch(np.float64, seed=12)
    cpo = lossdsl.preference("cpo", beta=0.2, nll_weight=0.5)
    value, grad = cpo.value_and_grad(logits, labels, mask=mask, reduction="sum")
    total, parts = 0.0, {}
    for pairs in (slice(0, 3), slice(3, PAIRS)):
        rows = np.r_[np.arange(PAIRS)[pairs], PAIRS + np.arange(PAIRS)[pairs]]
        v, g = cpo.value_and_grad(logits[rows], labels[rows], mask=mask[rows], reduction="sum")
        total += v
        parts.update(zip(rows, g))
    np.testing.assert_allclose(total, value, rtol=1e-13)
    np.testing.assert_allclose(np.stack([parts[r] for r in range(2 * PAIRS)]), grad, rtol=1e-12, atol=1e-16)


def test_orpo_stays_finite_near_probability_one(load_loss, torch):
    """log(1 - exp(x)) near x = 0 (mean log-probabilities of nearly 1): the value and gradient against float64
    PyTorch in the accurate form, where log1p(-exp(x)) alone loses digits."""
    chosen, rejected = np.array([-1e-9, -0.3, -5.0, -0.69]), np.array([-0.2, -1e-12, -0.7, -40.0])
    loss = load_loss("orpo", beta=1.0)
    value, (d_c, d_r) = loss.value_and_grad(chosen, rejected, reduction="sum")
    c, r = (torch.tensor(a, requires_grad=True) for a in (chosen, rejected))
    log1m = lambda x: torch.where(x > -np.log(2), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))
    expected = -torch.nn.functional.logsigmoid((c - r) - (log1m(c) - log1m(r))).sum()
    expected.backward()
    np.testing.assert_allclose(value, expected.item(), rtol=1e-12)
    np.testing.assert_allclose(d_c, c.grad.numpy(), rtol=1e-9)
    np.testing.assert_allclose(d_r, r.grad.numpy(), rtol=1e-9)


def _packed(seed):
    """Packed sequences: tokens (N,) of 2 * PAIRS sequences of different lengths, chosen first, one of length 1."""
    rng = np.random.default_rng(seed)
    lengths = np.array([3, 6, 1, 4, 5, 2, 7, 3])
    labels = rng.integers(0, C, lengths.sum())
    labels[np.cumsum(lengths)[:-1]] = -100  # each sequence's first token a prompt (not the one-token one's)
    labels[0] = -100
    labels[[3, 9]] = 2                       # the first tokens of sequence 1 and of the one-token sequence 2 count
    return rng.normal(size=(lengths.sum(), C)) * 2, labels, lengths


def packed_logps(torch, logits, labels, lengths, average):
    """Each packed sequence's log-probability: log_softmax at its labels, summed (or averaged) per segment."""
    labels = torch.as_tensor(labels)
    logp = torch.gather(torch.log_softmax(logits, -1), -1, labels.clamp(min=0)[:, None])[:, 0]
    kept = (labels != -100).double()
    segment = torch.repeat_interleave(torch.arange(len(lengths)), torch.as_tensor(lengths))
    total = torch.zeros(len(lengths), dtype=logits.dtype).index_add(0, segment, logp * kept)
    count = torch.zeros(len(lengths), dtype=kept.dtype).index_add(0, segment, kept)
    return total / count.clamp(min=1) if average else total


@pytest.mark.parametrize("name", ["dpo", "orpo"])
def test_packed_sequences(torch, name):
    """Sequences packed end to end with sequence_lengths= (no padding), against PyTorch segment sums."""
    logits, labels, lengths = _packed(seed=13)
    rc, rr = np.full(PAIRS, -9.0), np.full(PAIRS, -11.0)
    loss = lossdsl.preference(name, beta=0.2)
    refs = {"ref_chosen_logp": rc, "ref_rejected_logp": rr} if name == "dpo" else {}
    value, grad = loss.value_and_grad(logits, labels, sequence_lengths=lengths, **refs)
    t = torch.tensor(logits, requires_grad=True)
    seq = packed_logps(torch, t, labels, lengths, average=name == "orpo")
    c, r = seq[:PAIRS], seq[PAIRS:]
    if name == "dpo":
        expected = trl_pair_loss(torch, c, r, torch.tensor(rc), torch.tensor(rr), beta=0.2).mean()
    else:
        log_odds = (c - r) - (torch.log1p(-torch.exp(c)) - torch.log1p(-torch.exp(r)))
        chosen_tokens = int(lengths[:PAIRS].sum())
        nll = torch.nn.functional.cross_entropy(t[:chosen_tokens], torch.as_tensor(labels[:chosen_tokens]))
        expected = nll - (0.2 * torch.nn.functional.logsigmoid(log_odds)).mean()
    expected.backward()
    np.testing.assert_allclose(value, expected.item(), rtol=1e-11)
    np.testing.assert_allclose(grad, t.grad.numpy(), rtol=1e-9, atol=1e-14)


def test_packed_sequences_refused_when_they_do_not_add_up():
    logits, labels, lengths = _packed(seed=13)
    dpo = lossdsl.preference("dpo")
    for bad in (lengths[:-1], lengths + 1, lengths.astype(float)):
        with pytest.raises(LossInputError, match="packed sequences take labels"):
            dpo(logits, labels, sequence_lengths=bad)
    with pytest.raises(LossInputError, match="or packed"):
        dpo(logits, labels)


def _apart(seed):
    """Chosen (PAIRS, 7) and rejected (PAIRS, 5) sequences given apart, each with its own mask and prompt."""
    rng = np.random.default_rng(seed)
    sides = []
    for tokens in (7, 5):
        labels = rng.integers(0, C, size=(PAIRS, tokens))
        labels[:, :2] = -100
        mask = np.ones((PAIRS, tokens))
        mask[1, -2:] = 0
        sides.append((rng.normal(size=(PAIRS, tokens, D)), labels, mask))
    return sides, rng.normal(size=(C, D)), np.full(PAIRS, -9.0), np.full(PAIRS, -11.0)


def test_chosen_and_rejected_apart(torch):
    """Logits, labels and masks as (chosen, rejected) pairs of their own lengths: the loss of TRL's formula
    on each side's sequences, and each side's own gradient; the same through a head (hidden states apart)."""
    (chosen, rejected), weight, rc, rr = _apart(seed=17)
    logits = [side[0] @ weight.T for side in (chosen, rejected)]
    dpo = lossdsl.preference("dpo", beta=0.2)
    value, (d_c, d_r) = dpo.value_and_grad(tuple(logits), (chosen[1], rejected[1]), mask=(chosen[2], rejected[2]),
                                           ref_chosen_logp=rc, ref_rejected_logp=rr)
    tc, tr = (torch.tensor(a, requires_grad=True) for a in logits)
    c, r = (sequence_logps(torch, t, torch.as_tensor(side[1]), torch.tensor(side[2]), False)
            for t, side in ((tc, chosen), (tr, rejected)))
    expected = trl_pair_loss(torch, c, r, torch.tensor(rc), torch.tensor(rr), beta=0.2).mean()
    expected.backward()
    np.testing.assert_allclose(value, expected.item(), rtol=1e-11)
    assert d_c.shape == logits[0].shape and d_r.shape == logits[1].shape
    np.testing.assert_allclose(d_c, tc.grad.numpy(), rtol=1e-9, atol=1e-14)
    np.testing.assert_allclose(d_r, tr.grad.numpy(), rtol=1e-9, atol=1e-14)
    flat = lambda a: a.reshape(-1, *a.shape[2:])  # the same sequences packed, each side end to end
    value, (d_c, d_r) = dpo.value_and_grad(tuple(flat(a) for a in logits), (flat(chosen[1]), flat(rejected[1])),
                                           mask=(flat(chosen[2]), flat(rejected[2])), ref_chosen_logp=rc,
                                           ref_rejected_logp=rr, sequence_lengths=([7] * PAIRS, [5] * PAIRS))
    np.testing.assert_allclose(value, expected.item(), rtol=1e-11)
    np.testing.assert_allclose(d_r, flat(tr.grad.numpy()), rtol=1e-9, atol=1e-14)
    head = lossdsl.preference("dpo", head=True, beta=0.2)
    value, ((d_hc, d_hr), d_weight) = head.value_and_grad((chosen[0], rejected[0]), weight, (chosen[1], rejected[1]),
                                                          mask=(chosen[2], rejected[2]), ref_chosen_logp=rc,
                                                          ref_rejected_logp=rr, chunk_rows=4)
    np.testing.assert_allclose(value, expected.item(), rtol=1e-11)
    np.testing.assert_allclose(d_hc, tc.grad.numpy() @ weight, rtol=1e-9, atol=1e-13)
    np.testing.assert_allclose(d_hr, tr.grad.numpy() @ weight, rtol=1e-9, atol=1e-13)
    wanted = sum(np.einsum("stc,std->cd", g.grad.numpy(), side[0]) for g, side in ((tc, chosen), (tr, rejected)))
    np.testing.assert_allclose(d_weight, wanted, rtol=1e-9, atol=1e-13)


def test_chosen_and_rejected_apart_refused_when_they_do_not_fit():
    (chosen, rejected), weight, rc, rr = _apart(seed=17)
    logits = (chosen[0] @ weight.T, rejected[0] @ weight.T)
    dpo = lossdsl.preference("dpo")
    with pytest.raises(LossInputError, match="mask must be a pair too"):
        dpo(logits, (chosen[1], rejected[1]), mask=chosen[2])
    with pytest.raises(LossInputError, match="must be \\(pairs, tokens\\) each"):
        dpo(logits, (chosen[1], rejected[1][:-1]))
    with pytest.raises(LossInputError, match="differ after the tokens"):
        dpo((logits[0], logits[1][..., :-1]), (chosen[1], rejected[1]))
    with pytest.raises(LossInputError, match="does not have the labels'"):
        dpo((logits[0], logits[1][:, :-1]), (chosen[1], rejected[1]))
    with pytest.raises(LossInputError, match="as many chosen sequences as rejected"):
        dpo((logits[0].reshape(-1, C), logits[1].reshape(-1, C)), (chosen[1].reshape(-1), rejected[1].reshape(-1)),
            sequence_lengths=([7] * PAIRS, [5] * (PAIRS + 1)))
    with pytest.raises(LossInputError, match="for a loss over pairs"):
        lossdsl.preference("kto")(logits, (chosen[1], rejected[1]), desirable=np.ones(PAIRS))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_pytorch_module_through_a_head(torch, dtype):
    """lossdsl.torch.PreferenceLoss: autograd reaches the hidden states, weight and bias (bf16 hidden states
    computed in float32), against the DPO formula on PyTorch's own logits, and a training step runs."""
    import lossdsl.torch
    _, labels, mask, rc, rr = _full_batch(np.float64, seed=14)
    rng = np.random.default_rng(15)
    hidden = torch.tensor(rng.normal(size=(2 * PAIRS, T, D)), dtype=getattr(torch, dtype), requires_grad=True)
    layer = torch.nn.Linear(D, C)
    criterion = lossdsl.torch.PreferenceLoss("dpo", head=True, beta=0.1)
    value = criterion(hidden, layer.weight, torch.as_tensor(labels), mask=torch.tensor(mask),
                      linear_bias=layer.bias, ref_chosen_logp=torch.tensor(rc), ref_rejected_logp=torch.tensor(rr))
    (2 * value).backward()
    got = [hidden.grad.float().numpy(), layer.weight.grad.numpy().copy(), layer.bias.grad.numpy().copy()]
    assert value.dtype == torch.float32 and hidden.grad.dtype == hidden.dtype
    h = hidden.detach().float().requires_grad_(True)
    layer.zero_grad()
    seq = sequence_logps(torch, layer(h).double(), torch.as_tensor(labels), torch.tensor(mask), False)
    expected = 2 * trl_pair_loss(torch, seq[:PAIRS], seq[PAIRS:], torch.tensor(rc), torch.tensor(rr), beta=0.1).mean()
    expected.backward()
    tol = 2e-2 if dtype == "bfloat16" else 1e-4
    np.testing.assert_allclose(value.item(), expected.item() / 2, rtol=1e-5)
    for mine, wanted in zip(got, (h.grad, layer.weight.grad, layer.bias.grad)):
        np.testing.assert_allclose(mine, wanted.numpy(), rtol=tol, atol=tol * 1e-2)


def test_pytorch_module_with_chosen_and_rejected_apart(torch):
    """lossdsl.torch.PreferenceLoss given (chosen, rejected) hidden states, labels and masks: autograd reaches
    both sides' hidden states and the shared head, as on PyTorch's own logits."""
    import lossdsl.torch
    sides, weight, rc, rr = _apart(seed=18)
    hidden = [torch.tensor(side[0], requires_grad=True) for side in sides]
    labels, masks = ([torch.as_tensor(side[k]) for side in sides] for k in (1, 2))
    w = torch.tensor(weight, requires_grad=True)
    criterion = lossdsl.torch.PreferenceLoss("dpo", head=True, beta=0.2)
    criterion(tuple(hidden), w, tuple(labels), mask=tuple(masks), ref_chosen_logp=torch.tensor(rc),
              ref_rejected_logp=torch.tensor(rr)).backward()
    got = [h.grad.numpy().copy() for h in (*hidden, w)]
    for t in (*hidden, w):
        t.grad = None
    c, r = (sequence_logps(torch, h @ w.T, y, m, False) for h, y, m in zip(hidden, labels, masks))
    trl_pair_loss(torch, c, r, torch.tensor(rc), torch.tensor(rr), beta=0.2).mean().backward()
    for mine, wanted in zip(got, (*hidden, w)):
        np.testing.assert_allclose(mine, wanted.grad.numpy(), rtol=1e-9, atol=1e-13)


def _dpo_or_orpo(torch, name, t, labels, mask, rc, rr):
    """TRL's DPO (sigmoid, beta 0.2) or ORPO (beta 0.2) loss on the PyTorch logits t, for the sharded tests."""
    seq = sequence_logps(torch, t, torch.as_tensor(labels), torch.tensor(mask), average=name == "orpo")
    c, r = seq[:PAIRS], seq[PAIRS:]
    if name == "dpo":
        return trl_pair_loss(torch, c, r, torch.tensor(rc), torch.tensor(rr), beta=0.2).mean()
    log_odds = (c - r) - (torch.log1p(-torch.exp(c)) - torch.log1p(-torch.exp(r)))
    return chosen_nll(torch, t, labels, mask) - (0.2 * torch.nn.functional.logsigmoid(log_odds)).mean()


@pytest.mark.parametrize("name, params", [("dpo", {"beta": 0.2}), ("orpo", {"beta": 0.2})], ids=["dpo", "orpo"])
def test_a_class_axis_split_across_processes(torch, name, params):
    """preference(..., all_reduce=): three threads playing processes, each with a slice of the classes, get
    the loss of TRL's formula on the whole logits and their slice of its gradient."""
    from test_sharding import _on_ranks
    logits, labels, mask, rc, rr = _full_batch(np.float64, seed=16)
    refs = {"ref_chosen_logp": rc, "ref_rejected_logp": rr} if name == "dpo" else {}
    bounds = [0, 4, 5, C]

    def call(rank, all_reduce):
        loss = lossdsl.preference(name, all_reduce=all_reduce, **params)
        lo, hi = bounds[rank], bounds[rank + 1]
        return loss.value_and_grad(logits[..., lo:hi], labels, mask=mask, class_start=lo, classes=C, **refs)

    results = _on_ranks(3, call)
    t = torch.tensor(logits, requires_grad=True)
    expected = _dpo_or_orpo(torch, name, t, labels, mask, rc, rr)
    expected.backward()
    for rank, (value, grad) in enumerate(results):
        np.testing.assert_allclose(value, expected.item(), rtol=1e-11)
        np.testing.assert_allclose(grad, t.grad.numpy()[..., bounds[rank]:bounds[rank + 1]], rtol=1e-9, atol=1e-14)
    with pytest.raises(LossInputError, match="class_start= and classes="):
        lossdsl.preference(name, **params)(logits, labels, class_start=0, classes=C, **refs)


# left to the head, a slice of the classes goes in blocks: the gradient's call reuses the values' partials
@pytest.mark.parametrize("name, chunks", [("dpo", {"chunk_rows": 6}), ("orpo", {"chunk_classes": 2}), ("dpo", {})],
                         ids=["dpo-rows", "orpo-blocks", "dpo-reused"])
def test_a_head_with_its_weight_split_across_processes(torch, name, chunks):
    """preference(..., head=True, all_reduce=): three threads playing processes, each holding a slice of the
    weight's and bias's rows (the classes), get TRL's loss on PyTorch's whole logits, the whole hidden states'
    gradient and their own weight and bias slices' gradients."""
    from test_sharding import _on_ranks
    _, labels, mask, rc, rr = _full_batch(np.float64, seed=21)
    rng = np.random.default_rng(22)
    hidden, weight, bias = rng.normal(size=(2 * PAIRS, T, D)), rng.normal(size=(C, D)), rng.normal(size=C)
    refs = {"ref_chosen_logp": rc, "ref_rejected_logp": rr} if name == "dpo" else {}
    bounds = [0, 4, 5, C]

    def call(rank, all_reduce):
        loss = lossdsl.preference(name, head=True, all_reduce=all_reduce, beta=0.2)
        lo, hi = bounds[rank], bounds[rank + 1]
        return loss.value_and_grad(hidden, weight[lo:hi], labels, mask=mask, linear_bias=bias[lo:hi],
                                   class_start=lo, classes=C, **chunks, **refs)

    results = _on_ranks(3, call)
    h, w, b = (torch.tensor(a, requires_grad=True) for a in (hidden, weight, bias))
    t = h @ w.T + b
    expected = _dpo_or_orpo(torch, name, t, labels, mask, rc, rr)
    expected.backward()
    for rank, (value, (d_hidden, d_weight, d_bias)) in enumerate(results):
        lo, hi = bounds[rank], bounds[rank + 1]
        np.testing.assert_allclose(value, expected.item(), rtol=1e-11)
        np.testing.assert_allclose(d_hidden, h.grad.numpy(), rtol=1e-9, atol=1e-13)
        np.testing.assert_allclose(d_weight, w.grad.numpy()[lo:hi], rtol=1e-9, atol=1e-13)
        np.testing.assert_allclose(d_bias, b.grad.numpy()[lo:hi], rtol=1e-9, atol=1e-13)


def trl_gspo(torch, logits, labels, mask, old_per_token, advantages, epsilon_low, epsilon_high):
    """TRL GRPOTrainer's loss with importance_sampling_level="sequence", loss_type "grpo", beta 0: per-token
    log-ratios averaged over each sequence's completion tokens, the clipped surrogate of that ratio for
    every token, each sequence's token mean, then the mean over sequences; and TRL's clip counts."""
    logp = torch.gather(torch.log_softmax(logits, -1), -1, labels.clamp(min=0)[..., None])[..., 0]
    completion = ((labels != -100) & (mask != 0)).to(logits.dtype)
    log_weight = ((logp - old_per_token) * completion).sum(-1) / completion.sum(-1).clamp(min=1.0)
    coef_1 = torch.exp(log_weight)[:, None]
    coef_2 = torch.clamp(coef_1, 1 - epsilon_low, 1 + epsilon_high)
    a = advantages[:, None]
    per_token = -torch.min(coef_1 * a, coef_2 * a) * completion
    loss = (per_token.sum(-1) / completion.sum(-1).clamp(min=1.0)).mean()
    clipped = ((coef_1 < 1 - epsilon_low) & (a < 0)) | ((coef_1 > 1 + epsilon_high) & (a > 0))
    return loss, coef_1[:, 0], clipped[:, 0]


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("old_per", ["token", "sequence"])
def test_gspo_against_trl(torch, dtype, old_per):
    """GSPO from the policy's logits: the old policy's log-probabilities per token (S, T), or their
    sequence means (S,); ratios near 1, some clipped at the paper's range; an all-masked sequence adds 0."""
    logits, labels, mask, _, _ = _batch(dtype, seed=17)
    rng = np.random.default_rng(18)
    t = torch.tensor(logits.astype(np.float64), requires_grad=True)
    own = torch.gather(torch.log_softmax(t, -1), -1, torch.as_tensor(labels).clamp(min=0)[..., None])[..., 0]
    shift = np.array([1e-3, -1e-3, 1e-4, -1e-4, 2e-3, -2e-3, 5e-5, 1e-3])  # each sequence's log-ratio, about
    old = own.detach().numpy() - shift[:, None] + rng.normal(size=labels.shape) * 1e-5
    advantages = np.array([1, -1, 1, -1, -1, 1, 1, 1]) * rng.uniform(0.5, 2.0, size=2 * PAIRS)
    expected, ratio, clipped = trl_gspo(torch, t, torch.as_tensor(labels), torch.tensor(mask), torch.tensor(old),
                                        torch.tensor(advantages), 3e-4, 4e-4)
    expected.backward()
    kept = (labels != -100) & (mask != 0)
    given = old if old_per == "token" else (old * kept).sum(-1) / np.maximum(kept.sum(-1), 1)
    gspo = lossdsl.preference("gspo")
    value, grad, shown = gspo.value_and_grad(logits, labels, mask=mask, old_logp=given, advantages=advantages,
                                             outputs=True)
    assert 0 < clipped.sum() < 2 * PAIRS - 1  # the ratio is clipped for some sequences, not all
    rtol = 1e-11 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(value, expected.item(), rtol=rtol)
    np.testing.assert_allclose(grad, t.grad.numpy(), rtol=rtol * 10, atol=rtol * 1e-3)
    counted = kept.any(-1)
    np.testing.assert_allclose(shown["ratio"][counted], ratio.detach().numpy()[counted], rtol=rtol)
    np.testing.assert_array_equal(shown["clipped"][counted], clipped.numpy()[counted])
    assert np.all(grad[~counted] == 0) and np.isnan(shown["ratio"][~counted]).all()


def test_gspo_through_a_linear_head_and_in_micro_batches(torch):
    """GSPO through the head (hidden states and weight), and reduction="sum" over micro-batches of sequences
    equal to the whole batch's."""
    _, labels, mask, _, _ = _full_batch(np.float64, seed=19)
    rng = np.random.default_rng(20)
    hidden, weight = rng.normal(size=(2 * PAIRS, T, D)), rng.normal(size=(C, D)) * 0.5
    old = rng.normal(size=labels.shape) * 0.01 - 2.4
    advantages = rng.normal(size=2 * PAIRS)
    gspo = lossdsl.preference("gspo", head=True, epsilon_low=0.2, epsilon_high=0.28)
    value, (d_hidden, d_weight) = gspo.value_and_grad(hidden, weight, labels, mask=mask, old_logp=old,
                                                      advantages=advantages, chunk_rows=6)
    h, w = (torch.tensor(a, requires_grad=True) for a in (hidden, weight))
    expected, _, _ = trl_gspo(torch, h @ w.T, torch.as_tensor(labels), torch.tensor(mask), torch.tensor(old),
                              torch.tensor(advantages), 0.2, 0.28)
    expected.backward()
    np.testing.assert_allclose(value, expected.item(), rtol=1e-10)
    np.testing.assert_allclose(d_hidden, h.grad.numpy(), rtol=1e-9, atol=1e-13)
    np.testing.assert_allclose(d_weight, w.grad.numpy(), rtol=1e-9, atol=1e-13)
    whole, d_whole = gspo.value_and_grad(hidden, weight, labels, mask=mask, old_logp=old, advantages=advantages,
                                         reduction="sum")
    total, d_total = 0.0, 0.0
    for part in (slice(0, 3), slice(3, 2 * PAIRS)):
        v, (_, g) = gspo.value_and_grad(hidden[part], weight, labels[part], mask=mask[part], old_logp=old[part],
                                        advantages=advantages[part], reduction="sum")
        total, d_total = total + v, d_total + g
    np.testing.assert_allclose(total, whole, rtol=1e-13)
    np.testing.assert_allclose(d_total, d_whole[1], rtol=1e-11, atol=1e-15)


SEQUENCE_LINE = '''loss margin_mean(chosen_logp, rejected_logp) wrt chosen_logp, rejected_logp
    param averaged = true
    sequence mean if averaged else sum
    margin_mean = softplus(rejected_logp - chosen_logp)
'''


@pytest.mark.parametrize("averaged", [True, False])
def test_a_users_sequence_line_says_how_tokens_add_up(torch, tmp_path, averaged):
    """A spec of a few lines: its `sequence` line chooses the sequence means or sums by a parameter, and
    preference(average=) overrides it."""
    path = tmp_path / "margin_mean.loss"
    path.write_text(SEQUENCE_LINE)
    logits, labels, mask, _, _ = _full_batch(np.float64, seed=21)
    for average in (None, not averaged):
        loss = lossdsl.preference(str(path), averaged=averaged, average=average)
        value, grad = loss.value_and_grad(logits, labels, mask=mask)
        t = torch.tensor(logits, requires_grad=True)
        mean = averaged if average is None else average
        seq = sequence_logps(torch, t, torch.as_tensor(labels), torch.tensor(mask), average=mean)
        expected = torch.nn.functional.softplus(seq[PAIRS:] - seq[:PAIRS]).mean()
        expected.backward()
        np.testing.assert_allclose(value, expected.item(), rtol=1e-12)
        np.testing.assert_allclose(grad, t.grad.numpy(), rtol=1e-10, atol=1e-15)
