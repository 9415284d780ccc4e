"""The public import path of the JAX adapter (`import lossdsl.jax`); it lives in
`lossdsl.integrations.jax`."""
from .integrations.jax import loss, sharded_loss

__all__ = ["loss", "sharded_loss"]
