"""Adapters to other libraries, each importing its library only when used: PyTorch (`torch`), JAX
(`jax`), xgboost and LightGBM objectives (`boosting`), matplotlib (`plot`). The public import paths
of the first two are `lossdsl.torch` and `lossdsl.jax`."""
