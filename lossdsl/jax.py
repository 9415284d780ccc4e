"""JAX adapter: any lossdsl loss as a JAX function with the generated gradient.

    import lossdsl.jax
    huber = lossdsl.jax.loss("huber", delta=0.5)      # reduction="mean" by default
    value, grad = jax.value_and_grad(huber)(pred, target)

The function runs the CPU kernels through `jax.pure_callback` inside a `jax.custom_vjp`, so it
works under `jax.jit`, `jax.grad` and `jax.value_and_grad`: the forward pass computes value and
gradient in one kernel call and keeps the gradient; the backward pass scales it. With
reduction="none" (elementwise losses) the backward pass runs the kernel again with the incoming
cotangent as per-element weights. Inputs the spec does not differentiate get zero cotangents.
Needs JAX (`pip install lossdsl[jax]`); lossdsl's core never imports this module.
"""
from __future__ import annotations

import os
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

import lossdsl
from lossdsl.runtime import Loss as _CompiledLoss
from lossdsl.sequence import SequenceLoss as _SequenceLoss


def loss(spec: str | os.PathLike | _CompiledLoss | _SequenceLoss, /, reduction: str = "mean", **params) -> Callable:
    """`f(*inputs, **options)` for a catalogue name, a spec file or a loaded Loss; options (weight,
    sample_weight as a NumPy array, axis, ...) as in the Python API. Reductions: "mean", "sum",
    "batchmean" (not for sequence losses), and "none" for elementwise losses."""
    named = isinstance(spec, (str, os.PathLike))  # else a loaded loss or sequence loss
    compiled = lossdsl.load(spec, **params) if named else spec.with_params(**params)
    if reduction not in ("mean", "mean_or_zero", "sum", "batchmean", "none"):
        raise lossdsl.LossInputError(f"reduction must be 'mean', 'mean_or_zero', 'sum', 'batchmean' or 'none'; got "
                                     f"{reduction!r}")
    if reduction == "none" and (isinstance(compiled, _SequenceLoss) or compiled._resolved.axis is not None):
        raise lossdsl.LossInputError(f"{compiled.name}: reduction='none' is for elementwise losses here")
    wrt = [compiled.inputs.index(name) for name in compiled.wrt]

    def function(*inputs, **options):
        dtype = jnp.result_type(*[inputs[i] for i in wrt])
        dtype = dtype if dtype in (jnp.float32, jnp.float64) else jnp.float64
        out_shape = np.broadcast_shapes(*[np.shape(a) for a in inputs]) if reduction == "none" else ()

        def host_value_and_grad(*arrays):
            value, grads = compiled.value_and_grad(*[np.asarray(a) for a in arrays], reduction=reduction, **options)
            grads = grads if isinstance(grads, tuple) else (grads,)
            return (np.asarray(value, dtype), *[np.asarray(g, dtype) for g in grads])

        def host_weighted_grad(cotangent, *arrays):
            weights = np.asarray(cotangent) * options.get("sample_weight", 1.0)
            _, grads = compiled.value_and_grad(*[np.asarray(a) for a in arrays], reduction="sum",
                                               **{**options, "sample_weight": weights})
            return tuple(np.asarray(g, dtype) for g in (grads if isinstance(grads, tuple) else (grads,)))

        shapes = (jax.ShapeDtypeStruct(out_shape, dtype),
                  *[jax.ShapeDtypeStruct(np.shape(inputs[i]), dtype) for i in wrt])

        @jax.custom_vjp
        def call(*arrays):
            return jax.pure_callback(host_value_and_grad, shapes, *arrays)[0]

        def forward(*arrays):
            value, *grads = jax.pure_callback(host_value_and_grad, shapes, *arrays)
            return value, (grads, arrays)

        def backward(residual, cotangent):
            grads, arrays = residual
            if reduction == "none":
                grads = jax.pure_callback(host_weighted_grad, shapes[1:], cotangent, *arrays)
            else:
                grads = [g * cotangent for g in grads]
            by_position = dict(zip(wrt, grads))
            return tuple(by_position[i] if i in by_position else _zero_cotangent(a) for i, a in enumerate(arrays))

        call.defvjp(forward, backward)
        return call(*[jnp.asarray(a) for a in inputs])

    function.__name__ = compiled.name
    function.__doc__ = compiled.doc
    return function


def _zero_cotangent(array):
    """No gradient for an input the spec does not differentiate (integer labels get JAX's float0)."""
    if jnp.issubdtype(array.dtype, jnp.inexact):
        return jnp.zeros_like(array)
    return np.zeros(np.shape(array), dtype=jax.dtypes.float0)
