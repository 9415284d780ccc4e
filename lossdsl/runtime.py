"""Stage 5: the `Loss` object users call — validation, weighting, reductions, dispatch.

It does no symbolic or code-generation work itself: kernels, their source and
formulas come from a backend the compiler hands in, which builds (or loads from
the on-disk cache) one kernel module per float dtype on first use.
"""
from __future__ import annotations

import dataclasses
import pickle
from typing import Any, Protocol

import numpy as np

from .errors import LossInputError, LossParameterError
from .resolve import ResolvedLoss, check_values

REDUCTIONS = ("none", "sum", "mean", "batch")


class _Backend(Protocol):
    def module(self, dtype: np.dtype, fresh: bool = False) -> Any: ...
    def source(self, dtype: np.dtype = ...) -> str: ...
    def plan(self) -> Any: ...
    def explain(self, latex: bool = False) -> str: ...


class Loss:
    """A compiled loss. Call it for the value; `value_and_grad` for value and gradient in one pass.

    Reductions: "mean" (default), "sum", "none" (one value per element), and "batch"
    (MXNet Gluon's per-sample form: the mean over every axis but `batch_axis`).
    `weight` (a scalar) and `sample_weight` (broadcastable to the loss elements)
    multiply each element before the reduction; "mean" still divides by the number
    of elements (PyTorch's and MXNet's convention), not by the sum of weights.
    Gradients of a non-scalar result are those of its sum.
    """

    def __init__(self, resolved: ResolvedLoss, backend: _Backend):
        self._resolved = resolved
        self._backend = backend
        self._values = dict(resolved.values)
        self._param_args = tuple(float(self._values[p]) for p in resolved.numeric_params)
        #: Check inputs against the domains the spec declares (labels in {0, 1}, p in [0, 1], ...).
        self.check_domains = True

    # --- description ---
    name = property(lambda self: self._resolved.name, doc="The loss's name in its spec.")
    doc = property(lambda self: self._resolved.doc, doc="The spec's docstring.")
    inputs = property(lambda self: tuple(i.name for i in self._resolved.inputs), doc="Input names, in call order.")
    wrt = property(lambda self: self._resolved.wrt, doc="Inputs the gradient is taken with respect to.")
    params = property(lambda self: dict(self._values), doc="Parameter values of this instance.")

    def __repr__(self) -> str:
        params = "".join(f", {k}={v!r}" for k, v in self._values.items())
        return f"<lossdsl.Loss {self.name}({', '.join(self.inputs)}{params})>"

    @property
    def formula(self):
        """The loss of one element as a SymPy expression (after stability rewrites)."""
        return self._backend.plan().value

    @property
    def gradient_formula(self) -> dict:
        """{input name: SymPy expression of d(loss element)/d(input)} for each `wrt` input."""
        plan = self._backend.plan()
        return dict(zip(self.wrt, plan.grads))

    def explain(self, latex: bool = False) -> str:
        """The spec's locals, the loss and its derived gradient(s), in the DSL's notation (or LaTeX)."""
        return self._backend.explain(latex)

    def source(self, target: str = "cpu", dtype: str | np.dtype = "float64") -> str:
        """The generated Numba module, as Python source."""
        if target != "cpu":
            raise ValueError(f"unknown target {target!r}; available: 'cpu'")
        return self._backend.source(np.dtype(dtype))

    def with_params(self, **params) -> "Loss":
        """The same loss with other parameter values (numeric ones reuse the compiled kernels)."""
        values = check_values(self._resolved.params, {**self._values, **params}, self.name, self._resolved.passed_on)
        if any(values[p.name] != self._values[p.name] for p in self._resolved.params if p.static):
            raise LossParameterError("parameters that choose the formula need lossdsl.load(name, **params)")
        clone = Loss(dataclasses.replace(self._resolved, values=tuple(values.items())), self._backend)
        clone.check_domains = self.check_domains
        return clone

    # --- evaluation ---
    def __call__(self, *inputs, reduction: str = "mean", weight: float | None = None, sample_weight=None,
                 batch_axis: int = 0):
        """The loss, reduced as asked; runs the value-only kernel."""
        call = self._prepare(inputs, reduction, weight, sample_weight, batch_axis)
        out = np.empty(call.size if call.elementwise else 0, call.dtype)
        total = self._run(call.dtype, "loss_value", *call.arrays, *self._param_args, call.weights, call.scale, out)
        return call.reduce(total, out)

    def value_and_grad(self, *inputs, reduction: str = "mean", weight: float | None = None, sample_weight=None,
                       batch_axis: int = 0):
        """(value, gradient) from one fused pass; with several `wrt` inputs, a tuple of gradients."""
        call = self._prepare(inputs, reduction, weight, sample_weight, batch_axis)
        out = np.empty(call.size if call.elementwise else 0, call.dtype)
        grads = [np.empty(call.size, call.dtype) for _ in self.wrt]
        total = self._run(call.dtype, "loss_value_and_grad", *call.arrays, *self._param_args, call.weights,
                          call.scale, call.grad_scale, out, *grads)
        shaped = tuple(call.unbroadcast(name, g) for name, g in zip(self.wrt, grads))
        return call.reduce(total, out), (shaped[0] if len(shaped) == 1 else shaped)

    def grad(self, *inputs, **options):
        """d(reduced loss)/d(input) for the `wrt` input(s); same options as calling the loss."""
        return self.value_and_grad(*inputs, **options)[1]

    def _run(self, dtype: np.dtype, kernel: str, *args):
        """Call a kernel; if Numba's on-disk cache for it is damaged, discard it and retry once."""
        try:
            return getattr(self._backend.module(dtype), kernel)(*args)
        except (EOFError, pickle.UnpicklingError):
            return getattr(self._backend.module(dtype, fresh=True), kernel)(*args)

    def _prepare(self, inputs, reduction, weight, sample_weight, batch_axis) -> "_Call":
        if reduction not in REDUCTIONS:
            raise LossInputError(f"reduction must be one of {', '.join(REDUCTIONS)}; got {reduction!r}")
        names = self.inputs
        if len(inputs) != len(names):
            raise LossInputError(f"{self.name} takes {len(names)} input{'s' if len(names) != 1 else ''} "
                                 f"({', '.join(names)}); got {len(inputs)}")
        try:
            arrays = [np.asarray(a) for a in inputs]
        except ValueError as exc:  # e.g. ragged nested lists
            raise LossInputError(f"{self.name}: inputs must be arrays of numbers ({exc})") from None
        dtype = _float_dtype([a for n, a in zip(names, arrays) if n in self.wrt], self.wrt)
        for name, array in zip(names, arrays):
            if array.dtype.kind not in "biuf":
                raise LossInputError(f"{self.name}: {name} must hold numbers; got dtype {array.dtype}")
        try:
            shape = np.broadcast_shapes(*(a.shape for a in arrays))
        except ValueError:
            shapes = ", ".join(f"{n} {a.shape}" for n, a in zip(names, arrays))
            raise LossInputError(f"{self.name}: input shapes do not match or broadcast: {shapes}") from None
        flat = [_flat(a, shape, dtype) for a in arrays]
        if self.check_domains:
            for spec_input, array in zip(self._resolved.inputs, flat):
                _check_domain(self.name, spec_input, array, shape)
        weights = np.empty(0, dtype)
        if sample_weight is not None:
            sw = np.asarray(sample_weight)
            try:
                fits = np.broadcast_shapes(sw.shape, shape) == shape
            except ValueError:
                fits = False
            if not fits or sw.dtype.kind not in "biuf":
                raise LossInputError(f"{self.name}: sample_weight of shape {sw.shape} (dtype {sw.dtype}) does not "
                                     f"broadcast to the loss shape {shape}")
            weights = _flat(sw, shape, dtype)
        scale = 1.0 if weight is None else _scalar_weight(self.name, weight)
        if not isinstance(batch_axis, (int, np.integer)):
            raise LossInputError(f"{self.name}: batch_axis must be an integer; got {batch_axis!r}")
        if reduction == "batch" and not -len(shape) <= batch_axis < len(shape):
            raise LossInputError(f"{self.name}: reduction='batch' needs a batch axis; batch_axis={batch_axis} "
                                 f"is not an axis of the loss shape {shape}")
        return _Call(self, flat, arrays, shape, dtype, weights, scale, reduction, batch_axis)


class _Call:
    """One call's prepared arrays and how to turn the kernel's outputs into the result."""

    def __init__(self, loss: Loss, arrays, originals, shape, dtype, weights, scale, reduction, batch_axis):
        self.arrays, self.originals = arrays, dict(zip(loss.inputs, originals))
        self.shape, self.dtype, self.weights, self.scale = shape, dtype, weights, scale
        self.reduction, self.size = reduction, int(np.prod(shape, dtype=np.int64))
        self.elementwise = reduction in ("none", "batch")
        if reduction == "batch":
            self.batch_axis = batch_axis % len(shape) if shape else 0
            per_sample = self.size // shape[self.batch_axis] if shape[self.batch_axis] else 0
            self.grad_scale = 1.0 / per_sample if per_sample else 1.0
        else:
            self.grad_scale = 1.0 / self.size if reduction == "mean" and self.size else 1.0

    def reduce(self, total: float, out: np.ndarray):
        if self.reduction == "sum":
            return self.dtype.type(total)
        if self.reduction == "mean":
            return self.dtype.type(total / self.size if self.size else np.nan)
        values = out.reshape(self.shape)
        if self.reduction == "none":
            return values
        other_axes = tuple(a for a in range(len(self.shape)) if a != self.batch_axis)
        return values.mean(axis=other_axes, dtype=np.float64).astype(self.dtype) if other_axes else values

    def unbroadcast(self, name: str, grad: np.ndarray) -> np.ndarray:
        """The gradient in the shape of the input it belongs to (summed over broadcast axes)."""
        grad = grad.reshape(self.shape)
        target = self.originals[name].shape
        if target == self.shape:
            return grad
        extra = len(self.shape) - len(target)
        summed = grad.sum(axis=tuple(range(extra)), dtype=np.float64) if extra else grad
        axes = tuple(i for i, n in enumerate(target) if n == 1 and summed.shape[i] != 1)
        if axes:
            summed = summed.sum(axis=axes, keepdims=True, dtype=np.float64)
        return summed.reshape(target).astype(self.dtype)


def _float_dtype(wrt_arrays, wrt_names) -> np.dtype:
    """float32 or float64, from the differentiated inputs; integers and booleans become float64."""
    dtype = np.result_type(*[a.dtype for a in wrt_arrays])
    if dtype.kind in "biu":
        return np.dtype(np.float64)
    if dtype not in (np.float32, np.float64):
        raise LossInputError(f"{', '.join(wrt_names)} must be float32 or float64 (or integers); got {dtype}")
    return dtype


def _flat(array: np.ndarray, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """A contiguous 1-D array of `dtype` holding `array` broadcast to `shape` (a view when possible)."""
    if array.shape != shape:
        array = np.broadcast_to(array, shape)
    return np.ascontiguousarray(array, dtype=dtype).reshape(-1)


def _scalar_weight(loss_name: str, weight) -> float:
    array = np.asarray(weight)
    if array.ndim != 0 or array.dtype.kind not in "biuf":
        raise LossInputError(f"{loss_name}: weight must be a real scalar; got {weight!r} "
                             "(use sample_weight for arrays)")
    return float(array)


def _check_domain(loss_name: str, spec_input, flat: np.ndarray, shape: tuple[int, ...]) -> None:
    """Values of one input (flattened, in the kernel's dtype) against the domain its spec declares."""
    domain = spec_input.domain
    if domain.unbounded or flat.size == 0:
        return
    as_dtype = flat.dtype.type  # bounds in the input's own precision: float32 0.1 lies in [0, 0.1]
    if domain.choices is not None:
        ok = np.isin(flat, np.array(domain.choices, flat.dtype))
    else:
        low, high = as_dtype(domain.low), as_dtype(domain.high)
        ok = (flat > low if domain.low_open else flat >= low) & (flat < high if domain.high_open else flat <= high)
    if not ok.all():
        position = int(np.argmin(ok))
        index = tuple(int(i) for i in np.unravel_index(position, shape)) if shape else ()
        raise LossInputError(f"{loss_name}: {spec_input.name} must lie in {domain.describe()}; "
                             f"found {flat[position].item()!r} at index {index}")
