"""lossdsl.jax: values and gradients equal optax's losses, under jax.jit and jax.grad."""
import numpy as np
import pytest

jax = pytest.importorskip("jax")
optax = pytest.importorskip("optax")
import jax.numpy as jnp  # noqa: E402

import lossdsl  # noqa: E402
import lossdsl.jax as lossdsl_jax  # noqa: E402

RNG = np.random.default_rng(0)
X = jnp.asarray(RNG.normal(size=(6, 4)), jnp.float32)
T = jnp.asarray(RNG.normal(size=(6, 4)), jnp.float32)
LABELS = jnp.asarray(RNG.integers(0, 4, 6))
BINARY = jnp.asarray(RNG.uniform(size=(6, 4)) > 0.5, jnp.float32)


def _same(ours, theirs, *inputs):
    value, grad = jax.jit(jax.value_and_grad(ours))(*inputs)
    expected, expected_grad = jax.value_and_grad(theirs)(*inputs)
    assert value.dtype == jnp.float32 and grad.shape == inputs[0].shape
    np.testing.assert_allclose(value, expected, rtol=2e-6, atol=1e-7)
    np.testing.assert_allclose(grad, expected_grad, rtol=2e-5, atol=1e-7)


def test_huber_and_l2_against_optax():
    _same(lossdsl_jax.loss("huber", delta=0.5), lambda a, b: optax.losses.huber_loss(a, b, delta=0.5).mean(), X, T)
    _same(lossdsl_jax.loss("mse", reduction="sum"), lambda a, b: 2 * optax.losses.l2_loss(a, b).sum(), X, T)


def test_sigmoid_losses_against_optax():
    _same(lossdsl_jax.loss("bce_with_logits"),
          lambda a, b: optax.losses.sigmoid_binary_cross_entropy(a, b).mean(), X, BINARY)
    _same(lossdsl_jax.loss("sigmoid_focal", alpha=0.25, gamma=2.0),
          lambda a, b: optax.losses.sigmoid_focal_loss(a, b, alpha=0.25, gamma=2.0).mean(), X, BINARY)


def test_cross_entropy_with_integer_labels_against_optax():
    _same(lossdsl_jax.loss("cross_entropy"),
          lambda a, y: optax.losses.softmax_cross_entropy_with_integer_labels(a, y).mean(), X, LABELS)


def test_reduction_none_takes_the_incoming_cotangent_as_weights():
    weights = jnp.arange(24.0, dtype=jnp.float32).reshape(6, 4)
    _same(lambda a, b: (lossdsl_jax.loss("huber", reduction="none")(a, b) * weights).sum(),
          lambda a, b: (optax.losses.huber_loss(a, b) * weights).sum(), X, T)


def test_unsupported_reductions_are_refused():
    with pytest.raises(lossdsl.LossInputError, match="reduction must be"):
        lossdsl_jax.loss("huber", reduction="batch")
    with pytest.raises(lossdsl.LossInputError, match="elementwise losses"):
        lossdsl_jax.loss("cross_entropy", reduction="none")


def _jax_log_softmax_rows(logits):
    return jax.nn.log_softmax(logits, axis=-1)


def test_linear_heads_against_a_jax_formula():
    """A one-head loss with its bias by keyword, and the two-head linear_distill (student differentiated,
    the teacher's inputs given zero cotangents), against the same losses written in jax.numpy on
    materialised logits, under jit."""
    rng = np.random.default_rng(1)
    x, w, b = (jnp.asarray(rng.normal(size=s), jnp.float32) for s in ((7, 3), (5, 3), (5,)))
    y = jnp.asarray(rng.integers(0, 5, 7))
    head = lossdsl_jax.loss("linear_cross_entropy")

    def ours(x, w, b):
        return head(x, w, y, linear_bias=b)

    def theirs(x, w, b):
        return -jnp.take_along_axis(_jax_log_softmax_rows(x @ w.T + b), y[:, None], -1).mean()

    got = jax.jit(jax.value_and_grad(ours, argnums=(0, 1, 2)))(x, w, b)
    wanted = jax.value_and_grad(theirs, argnums=(0, 1, 2))(x, w, b)
    np.testing.assert_allclose(got[0], wanted[0], rtol=2e-6)
    for g, e in zip(got[1], wanted[1]):
        np.testing.assert_allclose(g, e, rtol=2e-5, atol=1e-6)
    xt, wt = (jnp.asarray(rng.normal(size=s), jnp.float32) for s in ((7, 4), (5, 4)))
    distill = lossdsl_jax.loss("linear_distill", temperature=2.0)

    def soft(x, w, xt, wt):
        ls, lt = _jax_log_softmax_rows((x @ w.T) / 2.0), _jax_log_softmax_rows((xt @ wt.T) / 2.0)
        hard = -jnp.take_along_axis(_jax_log_softmax_rows(x @ w.T), y[:, None], -1)[:, 0]
        return (0.5 * hard + 0.5 * (jnp.exp(lt) * (lt - ls)).sum(-1)).mean()

    got = jax.value_and_grad(lambda *a: distill(*a, y), argnums=(0, 1, 2, 3))(x, w, xt, wt)
    wanted = jax.value_and_grad(soft, argnums=(0, 1))(x, w, xt, wt)
    np.testing.assert_allclose(got[0], wanted[0], rtol=2e-6)
    for g, e in zip(got[1][:2], wanted[1]):
        np.testing.assert_allclose(g, e, rtol=2e-5, atol=1e-6)
    assert not np.any(got[1][2]) and not np.any(got[1][3])


def test_a_list_axis_loss_under_jit():
    """topk_kl (its ids an integer input over the list axis) against the renormalised KL in jax.numpy."""
    rng = np.random.default_rng(2)
    s = jnp.asarray(rng.normal(size=(6, 7)), jnp.float32)
    ids = jnp.asarray(np.stack([rng.permutation(7)[:3] for _ in range(6)]))
    logp = jnp.asarray(np.log(rng.dirichlet(np.ones(3), size=6)), jnp.float32)

    def theirs(s):
        lq = _jax_log_softmax_rows(jnp.take_along_axis(s, ids, -1))
        return (jnp.exp(logp) * (logp - lq)).sum(-1).mean()

    value, grad = jax.jit(jax.value_and_grad(lambda s: lossdsl_jax.loss("topk_kl")(s, ids, logp)))(s)
    expected, expected_grad = jax.value_and_grad(theirs)(s)
    np.testing.assert_allclose(value, expected, rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(grad, expected_grad, rtol=2e-5, atol=1e-6)


def _jax_sequence_logps(logits, labels, mask, average):
    logp = jnp.take_along_axis(_jax_log_softmax_rows(logits), jnp.maximum(labels, 0)[..., None], -1)[..., 0]
    kept = (labels != -100) & (mask != 0)
    total = jnp.where(kept, logp, 0.0).sum(-1)
    return total / jnp.maximum(kept.sum(-1), 1) if average else total


def test_preference_losses_under_jit():
    """lossdsl.jax.preference: DPO through a head (hidden states, weight and bias differentiated) and KTO on
    logits (unpaired), against TRL's formulas in jax.numpy on materialised logits, under jit."""
    rng = np.random.default_rng(4)
    pairs, tokens, classes, width = 2, 5, 6, 3
    x = jnp.asarray(rng.normal(size=(2 * pairs, tokens, width)), jnp.float32)
    w, b = jnp.asarray(rng.normal(size=(classes, width)), jnp.float32), jnp.asarray(rng.normal(size=classes), jnp.float32)
    labels = rng.integers(0, classes, (2 * pairs, tokens))
    labels[:, 0] = -100
    labels, mask = jnp.asarray(labels), jnp.asarray(np.r_[np.ones((3, tokens)), [[1, 1, 1, 0, 0]]], jnp.float32)
    rc, rr = jnp.full(pairs, -8.0), jnp.full(pairs, -9.0)
    dpo = lossdsl_jax.preference("dpo", head=True, beta=0.3)

    def ours(x, w, b):
        return dpo(x, w, labels, mask=mask, linear_bias=b, ref_chosen_logp=rc, ref_rejected_logp=rr)

    def theirs(x, w, b):
        seq = _jax_sequence_logps(x @ w.T + b, labels, mask, False)
        return -jax.nn.log_sigmoid(0.3 * ((seq[:pairs] - rc) - (seq[pairs:] - rr))).mean()

    got = jax.jit(jax.value_and_grad(ours, argnums=(0, 1, 2)))(x, w, b)
    wanted = jax.value_and_grad(theirs, argnums=(0, 1, 2))(x, w, b)
    np.testing.assert_allclose(got[0], wanted[0], rtol=2e-6)
    for g, e in zip(got[1], wanted[1]):
        np.testing.assert_allclose(g, e, rtol=2e-5, atol=1e-6)
    logits, desirable, ref = x @ w.T, jnp.asarray([1.0, 0.0, 0.0, 1.0]), jnp.full(2 * pairs, -8.5)
    kto = lossdsl_jax.preference("kto", beta=0.2)

    def kto_theirs(logits):
        ratio = _jax_sequence_logps(logits, labels, mask, False) - ref
        return jnp.where(desirable == 1, 1 - jax.nn.sigmoid(0.2 * (ratio - 0.1)),
                         1 - jax.nn.sigmoid(0.2 * (0.1 - ratio))).mean()

    got = jax.jit(jax.value_and_grad(lambda z: kto(z, labels, mask=mask, desirable=desirable, ref_logp=ref,
                                                   kl=jnp.asarray(0.1))))(logits)
    wanted = jax.value_and_grad(kto_theirs)(logits)
    np.testing.assert_allclose(got[0], wanted[0], rtol=2e-6)
    np.testing.assert_allclose(got[1], wanted[1], rtol=2e-5, atol=1e-7)


def test_preference_with_chosen_and_rejected_apart():
    """Hidden states, labels and masks as (chosen, rejected) pairs of their own lengths: JAX's gradients reach
    both sides and the shared weight, as on materialised logits in jax.numpy."""
    rng = np.random.default_rng(5)
    pairs, classes, width = 2, 6, 3
    sides = []
    for tokens in (5, 3):
        labels = rng.integers(0, classes, (pairs, tokens))
        labels[:, 0] = -100
        sides.append((jnp.asarray(rng.normal(size=(pairs, tokens, width)), jnp.float32), jnp.asarray(labels),
                      jnp.asarray(np.r_[[[1] * tokens], [[1] * (tokens - 1) + [0]]], jnp.float32)))
    w = jnp.asarray(rng.normal(size=(classes, width)), jnp.float32)
    dpo = lossdsl_jax.preference("dpo", head=True, beta=0.3)

    def ours(xc, xr, w):
        return dpo((xc, xr), w, (sides[0][1], sides[1][1]), mask=(sides[0][2], sides[1][2]))

    def theirs(xc, xr, w):
        c, r = (_jax_sequence_logps(x @ w.T, y, m, False) for x, (_, y, m) in zip((xc, xr), sides))
        return -jax.nn.log_sigmoid(0.3 * (c - r)).mean()

    got = jax.jit(jax.value_and_grad(ours, argnums=(0, 1, 2)))(sides[0][0], sides[1][0], w)
    wanted = jax.value_and_grad(theirs, argnums=(0, 1, 2))(sides[0][0], sides[1][0], w)
    np.testing.assert_allclose(got[0], wanted[0], rtol=2e-6)
    for g, e in zip(got[1], wanted[1]):
        assert g.shape == e.shape
        np.testing.assert_allclose(g, e, rtol=2e-5, atol=1e-6)
