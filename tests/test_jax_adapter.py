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
