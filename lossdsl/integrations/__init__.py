"""Adapters to other libraries, each importing its library only when used: PyTorch (`torch`), JAX
(`jax`), matplotlib (`plot`). Their public import paths are `lossdsl.torch` and `lossdsl.jax`."""
