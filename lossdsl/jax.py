"""The public import path of the JAX adapter (`import lossdsl.jax`); it lives in
`lossdsl.integrations.jax`."""
from .integrations.jax import loss, preference, sharded_loss

__all__ = ["loss", "preference", "sharded_loss"]
