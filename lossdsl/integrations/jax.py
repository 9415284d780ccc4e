"""JAX adapter: any lossdsl loss as a JAX function with the generated gradient.

    import lossdsl.jax
    huber = lossdsl.jax.loss("huber", delta=0.5)      # reduction="mean" by default
    value, grad = jax.value_and_grad(huber)(pred, target)

`lossdsl.jax.loss("linear_cross_entropy")(x, weight, target, linear_bias=b)`: a linear head likewise,
its logits never whole; `lossdsl.jax.preference("dpo", head=True)` a preference loss over a policy's
sequences (lossdsl.preference). The function runs the CPU kernels through `jax.pure_callback` inside a
`jax.custom_vjp`, so it works under `jax.jit`, `jax.grad` and `jax.value_and_grad`: the forward pass
computes value and gradient in one kernel call and keeps the gradient; the backward pass scales it. With
reduction="none" (elementwise losses) the backward pass runs the kernel again with the incoming
cotangent as per-element weights. Inputs the spec does not differentiate get zero cotangents.
Needs JAX (`pip install lossdsl[jax]`); lossdsl's core never imports this module.
"""
from __future__ import annotations

import functools
import os
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

import lossdsl
from lossdsl.classaxis.heads import LinearHead as _LinearHead
from lossdsl.runtime.loss import Loss as _CompiledLoss
from lossdsl.runtime.preference import flat_grads, flattened, regrouped
from lossdsl.runtime.protocol import LossKind
from lossdsl.runtime.sequence import SequenceLoss as _SequenceLoss


def loss(spec: str | os.PathLike | _CompiledLoss | _SequenceLoss | _LinearHead, /, reduction: str = "mean",
         **params) -> Callable:
    """`f(*inputs, **options)` for a catalogue name, a spec file, a loaded Loss or a linear head (its layer's
    input and weight in place of the logits; both heads' of a two-head loss); inputs in order or by name
    (a head's bias as `linear_bias=`), options (weight, sample_weight as a NumPy array, axis, ...) as in
    the Python API. Reductions: "mean", "sum", "batchmean" (not for sequence losses or heads), and "none"
    for elementwise losses."""
    named = isinstance(spec, (str, os.PathLike))  # else a loaded loss, sequence loss or head
    compiled = lossdsl.load(spec, **params) if named else spec.with_params(**params)
    scalar = ("mean", "mean_or_zero", "sum", "batchmean")
    elementwise = compiled.signature.kind is LossKind.ELEMENTWISE
    compiled.signature.check_reduction(reduction, (*scalar, "none") if elementwise else scalar,
                                       "" if elementwise else "'none' is for elementwise losses here")
    names = compiled.inputs

    def function(*inputs, **options):
        if len(inputs) > len(names):
            raise lossdsl.LossInputError(f"{compiled.name} takes {len(names)} inputs ({', '.join(names)}); "
                                         f"got {len(inputs)}")
        given = dict(zip(names, inputs))
        given.update({k: options.pop(k) for k in list(options) if k in names})
        order = [n for n in names if given.get(n) is not None]  # what the callback takes, by position
        wrt = [k for k, n in enumerate(order) if n in compiled.wrt]
        inputs = [given[n] for n in order]
        dtype = jnp.result_type(*[inputs[i] for i in wrt])
        dtype = dtype if dtype in (jnp.float32, jnp.float64) else jnp.float64
        out_shape = np.broadcast_shapes(*[np.shape(a) for a in inputs]) if reduction == "none" else ()

        def gradients(arrays, reduced: str, **call):
            """The kernels' value and the gradients of the differentiated inputs given, in `order`."""
            value, grads = compiled.value_and_grad(reduction=reduced, **call,
                                                   **{n: np.asarray(a) for n, a in zip(order, arrays)})
            by_name = dict(zip(compiled.wrt, grads if isinstance(grads, tuple) else (grads,)))
            return value, [np.asarray(by_name[order[i]], dtype) for i in wrt]

        def host_value_and_grad(*arrays):
            value, grads = gradients(arrays, reduction, **options)
            return (np.asarray(value, dtype), *grads)

        def host_weighted_grad(cotangent, *arrays):
            weights = np.asarray(cotangent) * options.get("sample_weight", 1.0)
            return tuple(gradients(arrays, "sum", **{**options, "sample_weight": weights})[1])

        shapes = (jax.ShapeDtypeStruct(out_shape, dtype),
                  *[jax.ShapeDtypeStruct(np.shape(inputs[i]), dtype) for i in wrt])
        call = _host_function(host_value_and_grad, shapes, wrt, host_weighted_grad if reduction == "none" else None)
        return call(*[jnp.asarray(a) for a in inputs])

    function.__name__ = compiled.name
    function.__doc__ = compiled.doc
    return function


def preference(spec: str | os.PathLike = "dpo", /, head: bool = False, reduction: str = "mean",
               **params) -> Callable:
    """`lossdsl.preference` as a JAX function: `f(logits, labels, mask=..., ref_chosen_logp=...)`, or with
    `head=True` `f(hidden, weight, labels, linear_bias=..., ...)`; the sequence loss's inputs, `mask=` and
    `sequence_lengths=` by name (arrays: they may be traced), `chunk_rows=`/`chunk_classes=` as Python ints.
    Gradients reach the logits, or the hidden states, weight and bias; the other inputs get zero cotangents.
    Chosen and rejected may come apart: the logits (or hidden states), labels and mask each a pair."""
    compiled = lossdsl.preference(spec, head=head, **params)

    def function(*inputs, linear_bias=None, **named):
        static = {k: named.pop(k) for k in list(named) if isinstance(named[k], int) or named[k] is None}
        keys = sorted(named)
        counts, flat = flattened(inputs)
        named_counts, named_flat = flattened([named[k] for k in keys])  # a mask apart: two arrays
        policy = [*flat, *([] if linear_bias is None else [linear_bias])]
        labels = range(len(flat) - counts[-1], len(flat))  # the policy's labels, never differentiated
        wrt = [k for k in range(len(policy)) if k not in labels]
        dtype = jnp.result_type(*[policy[k] for k in wrt])
        dtype = dtype if dtype in (jnp.float32, jnp.float64) else jnp.float64
        shapes = (jax.ShapeDtypeStruct((), dtype), *[jax.ShapeDtypeStruct(np.shape(policy[k]), dtype) for k in wrt])

        def host_value_and_grad(*arrays):
            arrays = [np.asarray(a) for a in arrays]
            given = dict(zip(keys, regrouped(arrays[len(policy):], named_counts)))
            if linear_bias is not None:
                given["linear_bias"] = arrays[len(flat)]
            value, grads = compiled.value_and_grad(*regrouped(arrays[:len(flat)], counts), reduction=reduction,
                                                   **static, **given)
            return (np.asarray(value, dtype), *[np.asarray(g, dtype) for g in flat_grads(grads)])

        call = _host_function(host_value_and_grad, shapes, wrt)
        return call(*[jnp.asarray(a) for a in (*policy, *named_flat)])

    function.__name__ = compiled.name
    return function


def _host_function(host_value_and_grad, shapes, wrt: list[int], host_weighted_grad=None):
    """A JAX function of arrays running `host_value_and_grad` (arrays → value, then the gradients of the
    arrays at positions `wrt`, of `shapes`) on the host in its forward pass, keeping the gradients, which the
    backward pass scales by the cotangent; or with `host_weighted_grad` (cotangent, arrays → gradients), for
    a value that is not a scalar, runs that instead. The other arrays get zero cotangents."""
    @jax.custom_vjp
    def call(*arrays):
        return jax.pure_callback(host_value_and_grad, shapes, *arrays)[0]

    def forward(*arrays):
        value, *grads = jax.pure_callback(host_value_and_grad, shapes, *arrays)
        return value, (grads, arrays)

    def backward(residual, cotangent):
        grads, arrays = residual
        if host_weighted_grad is not None:
            grads = jax.pure_callback(host_weighted_grad, shapes[1:], cotangent, *arrays)
        else:
            grads = [g * cotangent for g in grads]
        by_position = dict(zip(wrt, grads))
        return tuple(by_position[i] if i in by_position else _zero_cotangent(a) for i, a in enumerate(arrays))

    call.defvjp(forward, backward)
    return call


def _varying(array, axis_name: str):
    """`array` typed as different on every shard of `axis_name`, as the logits slice it differentiates
    (a host callback's result is not; JAX checks that a cotangent has its input's type)."""
    if hasattr(jax.lax, "pcast"):
        return jax.lax.pcast(array, axis_name, to="varying")
    if hasattr(jax.lax, "pvary"):  # JAX before pcast
        return jax.lax.pvary(array, (axis_name,))
    return array


def _zero_cotangent(array):
    """No gradient for an input the spec does not differentiate (integer labels get JAX's float0)."""
    if jnp.issubdtype(array.dtype, jnp.inexact):
        return jnp.zeros_like(array)
    return np.zeros(np.shape(array), dtype=jax.dtypes.float0)


def sharded_loss(spec: str | os.PathLike | _CompiledLoss, /, axis_name: str, reduction: str = "mean",
                 **params) -> Callable:
    """A loss over a class axis split across the devices of the mesh axis `axis_name`, for use inside
    `jax.shard_map`: `f(logits_local, *inputs, classes=C, axis=-1)` on each shard gives the loss (the
    same on every shard), and its gradient each shard's slice. shard_map splits evenly: shard k
    holds classes [k * C_local, (k + 1) * C_local). Labels and per-row inputs whole, probability
    targets sliced like the logits, per-class vectors whole (C,) or sliced. The collectives are
    lossdsl.classaxis.sharding's plan as psum and pmax; they run inside the custom_vjp's forward pass (JAX
    cannot differentiate pmax), whose backward pass scales the kept gradient slice. Reductions
    "mean", "mean_or_zero" and "sum"."""
    from lossdsl.classaxis.levels import sweep
    from lossdsl.classaxis.sharding import shard_arrays
    named = isinstance(spec, (str, os.PathLike))
    compiled = lossdsl.load(spec, **params) if named else spec.with_params(**params)
    compiled.signature.check_reduction(reduction, ("mean", "mean_or_zero", "sum"))
    if compiled.signature.list_axis is not None:
        raise lossdsl.LossInputError(f"{compiled.name}: a loss over a list axis is sharded through "
                                     "lossdsl.classaxis.sharding or lossdsl.torch.ShardedLoss, not yet under shard_map")

    def all_reduce(array, op: str):
        return jax.lax.psum(array, axis_name) if op == "sum" else jax.lax.pmax(array, axis_name)

    def function(logits, *inputs, classes: int, axis: int = -1):
        from lossdsl.classaxis.blocked import BlockRun
        dtype = logits.dtype if logits.dtype in (jnp.float32, jnp.float64) else jnp.float64
        slots = jnp.float64 if jax.config.jax_enable_x64 else jnp.float32
        position = axis % logits.ndim
        rows = int(np.prod([n for k, n in enumerate(logits.shape) if k != position]))
        start = jax.lax.axis_index(axis_name) * logits.shape[position]

        def block(first, arrays):
            run = BlockRun(compiled, classes, np.dtype(dtype))
            given = dict(zip(compiled.inputs, (np.asarray(a) for a in arrays)))
            return run, run.call(shard_arrays(compiled, given, int(first), classes, axis), None, axis)

        def host_partials(level, first, done, *arrays):
            run, call = block(first, arrays)
            return run.add_partials(call, int(first), np.array(done, np.float64), level).astype(slots)

        def host_value(first, done, *arrays):
            run, call = block(first, arrays)
            values, norms = run.value(call, np.asarray(done, np.float64))
            return values.reshape(rows).astype(dtype), norms.astype(slots)

        def host_grad(first, done, scale, *arrays):
            run, call = block(first, arrays)
            grad = np.empty(call.grad_size, dtype)
            run.gradient(call, int(first), np.asarray(done, np.float64), grad, float(scale))
            return grad.reshape(np.shape(arrays[0]))

        levels = BlockRun(compiled, classes, np.dtype(dtype)).levels

        def forward(logits, *others):
            table = jax.ShapeDtypeStruct((rows, levels.width), slots)

            def add_level(level, done):  # this shard's partials of the level, computed on the host
                return jax.pure_callback(functools.partial(host_partials, level), table, start, done, logits, *others)

            done = sweep(levels, jnp.asarray(levels.empty(rows), slots), add_level, all_reduce, xp=jnp)
            values, norms = jax.pure_callback(host_value, (jax.ShapeDtypeStruct((rows,), dtype),
                                                           jax.ShapeDtypeStruct((rows,), slots)), start, done, logits,
                                              *others)
            total, divisor = jnp.sum(values), jnp.sum(norms)
            if reduction == "sum":
                value, scale = total, jnp.ones((), slots)
            else:
                empty = 0.0 if reduction == "mean_or_zero" else jnp.nan
                value = jnp.where(divisor != 0, total / divisor, empty).astype(dtype)
                scale = jnp.where(divisor != 0, 1.0 / divisor, 1.0)
            grad = jax.pure_callback(host_grad, jax.ShapeDtypeStruct(logits.shape, dtype), start, done, scale, logits,
                                     *others)
            return value, (_varying(grad, axis_name), others)

        @jax.custom_vjp
        def call(logits, *others):
            return forward(logits, *others)[0]

        def backward(residual, cotangent):
            grad, others = residual
            return (grad * cotangent, *(_zero_cotangent(a) for a in others))

        call.defvjp(forward, backward)
        return call(logits, *[jnp.asarray(a) for a in inputs])

    function.__name__ = compiled.name
    return function
