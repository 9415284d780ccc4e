"""Stage 5: the `Loss` object users call — validation, weighting, reductions, dispatch.

It does no symbolic or code-generation work itself: kernels, their source and
formulas come from a backend the compiler hands in, which builds (or loads from
the on-disk cache) one kernel module per float dtype on first use.
"""
from __future__ import annotations

import dataclasses
import pickle
from typing import Any, Mapping, Protocol

import numpy as np

from ..errors import LossInputError, LossParameterError
from ..frontend.resolve import ResolvedLoss, check_values
from .layout import HOST, LOW_PRECISION, Call, ElementCall, RowCall, by_name, is_gpu_array
from .protocol import Kind, LossKind, Signature, Target, argument, safe_name


class _Backend(Protocol):
    def module(self, dtype: np.dtype, kind: Kind = Kind.LOSS, target: Target = Target.CPU,
               fresh: bool = False) -> Any: ...
    def source(self, dtype: np.dtype = ..., kind: Kind = Kind.LOSS, target: Target = Target.CPU) -> str: ...
    def plan(self) -> Any: ...
    def block_plan(self, outputs: bool = False) -> Any: ...
    def explain(self, latex: bool = False) -> str: ...


class Loss:
    """A compiled loss. Call it for the value; `value_and_grad` for value and gradient in one pass.

    Reductions: "mean" (default; NaN when every row is ignored, as PyTorch), "mean_or_zero"
    (the same, but 0 there, as Megatron and most training loops want), "sum", "none" (one value
    per element), "batch"
    (MXNet Gluon's per-sample form: the mean over every axis but `batch_axis`) and
    "batchmean" (the sum divided by the length of `batch_axis`, PyTorch's KL divergence).
    A loss over a named axis has one value per row (the input's shape without the axis);
    the axis is the spec's `axis c = k` position, else the last, unless the call passes
    `axis=` (an int, or a tuple of adjacent axes taken as one). Its "mean" divides by the
    spec's `mean weighted by` sum over rows not ignored, where it has one (PyTorch's
    class-weighted mean).
    `weight` (a scalar) and `sample_weight` (broadcastable to the loss elements)
    multiply each element before the reduction; "mean" still divides by the number
    of elements (PyTorch's and MXNet's convention), not by the sum of weights.
    Gradients of a non-scalar result are those of its sum.
    """

    def __init__(self, resolved: ResolvedLoss, backend: _Backend):
        self._resolved = resolved
        self._backend = backend
        self._values = dict(resolved.values)
        self._param_args = {argument(p): float(self._values[p]) for p in resolved.numeric_params}
        self._bound: dict[str, Any] = {}  # optional inputs given once, at load (class weights, pos_weight)
        #: Check inputs against the domains the spec declares (labels in {0, 1}, p in [0, 1], ...).
        self.check_domains = True

    # --- description ---
    name = property(lambda self: self._resolved.name, doc="The loss's name in its spec.")
    doc = property(lambda self: self._resolved.doc, doc="The spec's docstring.")
    inputs = property(lambda self: tuple(i.name for i in self._resolved.inputs), doc="Input names, in call order.")
    wrt = property(lambda self: self._resolved.wrt, doc="Inputs the gradient is taken with respect to.")
    params = property(lambda self: dict(self._values), doc="Parameter values of this instance.")
    bound = property(lambda self: dict(self._bound), doc="Optional inputs given at load, by name (used where a "
                                                         "call leaves them out).")

    @property
    def signature(self) -> Signature:
        """The public metadata adapters and the CLI read (lossdsl.runtime.protocol)."""
        r = self._resolved
        return Signature(r.name, LossKind.ELEMENTWISE if r.axis is None else LossKind.ROWS, r.inputs, r.wrt,
                         dict(self._values), r.axis, r.axis_position, r.labels + r.list_labels, r.outputs,
                         self.inputs, r.list_axis, r.sequence)

    @property
    def kernel_params(self) -> dict[str, float]:
        """The numeric parameters' values, by the names of the kernel arguments that carry them."""
        return self._param_args

    def module(self, dtype, kind: Kind = Kind.LOSS, target: Target = Target.CPU):
        """The generated module of `kind` for `dtype` on `target` (built or loaded from the cache on first use)."""
        return self._backend.module(dtype, kind, target)

    def block_plan(self, outputs: bool = False):
        """For a loss over a class axis, its reductions as partials over blocks of classes
        (lossdsl.classaxis.partials), with those its `output` values need when `outputs`."""
        return self._backend.block_plan(outputs)

    def __repr__(self) -> str:
        params = "".join(f", {k}={v!r}" for k, v in self._values.items())
        return f"<lossdsl.Loss {self.name}({', '.join(self.inputs)}{params})>"

    @property
    def formula(self):
        """The loss of one element (or row) as a SymPy expression (after stability rewrites)."""
        return self._backend.plan().readable()[0]

    @property
    def gradient_formula(self) -> dict:
        """{input name: SymPy expression of d(loss element)/d(input)} for each `wrt` input."""
        return dict(zip(self.wrt, self._backend.plan().readable()[1]))

    def explain(self, latex: bool = False) -> str:
        """The spec's locals, the loss and its derived gradient(s), in the DSL's notation (or LaTeX)."""
        return self._backend.explain(latex)

    def source(self, target: str = "cpu", dtype: str | np.dtype = "float64") -> str:
        """The generated Numba module, as Python source, for the "cpu" or "cuda" target."""
        if target not in tuple(Target):
            raise ValueError(f"unknown target {target!r}; available: {', '.join(repr(t.value) for t in Target)}")
        return self._backend.source(np.dtype(dtype), Kind.LOSS, Target(target))

    def with_params(self, **params) -> "Loss":
        """The same loss with other parameter values (numeric ones reuse the compiled kernels); keywords that
        name an optional input (`class_weight=`, `pos_weight=`) bind it, and `check_domains` sets that, as
        `lossdsl.load` does."""
        check_domains = params.pop("check_domains", self.check_domains)
        inputs, params = split_bound(self.name, self._resolved.inputs, {p.name for p in self._resolved.params},
                                     params)
        values = check_values(self._resolved.params, {**self._values, **params}, self.name, self._resolved.passed_on)
        if any(values[p.name] != self._values[p.name] for p in self._resolved.params if p.static):
            raise LossParameterError("parameters that choose the formula need lossdsl.load(name, **params)")
        clone = Loss(dataclasses.replace(self._resolved, values=tuple(values.items())), self._backend)
        clone.check_domains = bool(check_domains)
        clone._bound = {**self._bound, **inputs}
        return clone

    # --- evaluation ---
    def __call__(self, *inputs, reduction: str = "mean", weight: float | None = None, sample_weight=None,
                 batch_axis: int = 0, axis=None, device: str | None = None, **named_inputs):
        """The loss, reduced as asked; runs the value-only kernel."""
        call = self._prepare(inputs, named_inputs, reduction, weight, sample_weight, batch_axis, axis, device)
        out = call.memory.empty(call.size if call.elementwise else 0, call.dtype)
        total = self._run(call, "loss_value", lambda: {**call.named, **self._param_args, "__weight": call.weights,
                                                       "__scale": call.scale, "__out": out})
        return call.memory.result(call.reduce(total, out), call)

    def value_and_grad(self, *inputs, reduction: str = "mean", weight: float | None = None, sample_weight=None,
                       batch_axis: int = 0, axis=None, grad_out=None, device: str | None = None,
                       outputs: bool = False, **named_inputs):
        """(value, gradient) from one fused pass; with several `wrt` inputs, a tuple of gradients.

        `grad_out` (an array shaped and typed like the gradient, or a tuple of them) receives
        the gradient in place and is returned: a training loop that reuses it saves the cost
        of a fresh array (at 1e7 elements, its page faults take as long as the kernel).
        A `grad_out` may be the very array it differentiates (`grad_out=logits`): the gradient
        then overwrites that input (no second buffer of its size; the logits are gone after).
        `device` ("cpu" or "cuda") forces a target; by default GPU arrays run on CUDA.
        `outputs=True` (CPU) also returns a dict of the spec's `output` values, one per row (NaN for
        rows left out) or per element, from the same pass: (value, gradient, {name: values}).
        """
        call = self._prepare(inputs, named_inputs, reduction, weight, sample_weight, batch_axis, axis, device)
        out = call.memory.empty(call.size if call.elementwise else 0, call.dtype)
        targets, in_place = _gradient_targets(call, self.wrt, grad_out, [i.name for i in self._resolved.inputs])
        if grad_out is not None:  # an input outside its domain must not cost the caller's buffer its data
            call.check_now()
        moved = call.moved  # the kernel writes the axis last: a buffer of its own, moved back after
        grads = [t.reshape(-1) if t is not None and t.size == call.grad_size and not moved
                 else call.memory.empty(call.grad_size, call.dtype) for t in targets]
        kernel = "loss_value_and_grad_in_place" if in_place and not moved else "loss_value_and_grad"
        extra = ()
        if outputs:
            names = self._resolved.outputs
            if not names or call.memory is not HOST:
                why = "declares no `output`" if not names else "computes its outputs on the CPU only"
                raise LossInputError(f"{self.name} {why}")
            kernel, extra = "loss_value_and_grad_outputs", (np.empty((call.rows if isinstance(call, RowCall) else call.size,
                                                                    len(names)), call.dtype),)
        total = self._run(call, kernel, lambda: {
            **call.named, **self._param_args, "__weight": call.weights, "__scale": call.scale,
            "__gscale": call.grad_scale, "__out": out, "__extra": extra[0] if extra else None,
            **{f"__grad_{safe_name(name)}": g for name, g in zip(self.wrt, grads)}})
        if moved:
            grads = [call.restored(g, t.reshape(-1) if t is not None and t.size == call.grad_size else None)
                     for g, t in zip(grads, targets)]
        shaped = [_given_precision(call.unbroadcast(name, g, call.originals[name]), call.dtypes[name])
                  for name, g in zip(self.wrt, grads)]
        for i, target in enumerate(targets):
            if target is not None:
                if not np.shares_memory(target, shaped[i]):
                    np.copyto(target, shaped[i])
                shaped[i] = target
        shaped = [call.memory.result(g, call) for g in shaped]
        value, grad = call.memory.result(call.reduce(total, out), call), (shaped[0] if len(shaped) == 1 else
                                                                          tuple(shaped))
        if not outputs:
            return value, grad
        return value, grad, {name: extra[0][:, k].reshape(call.shape) for k, name in enumerate(self._resolved.outputs)}

    def grad_hess(self, *inputs, sample_weight=None, hessian_floor: float = 1e-6, **named_inputs):
        """Per element, the gradient and the second derivative of the loss with respect to its first
        `wrt` input (what gradient boosting asks of a custom objective), from one fused kernel.

        Both are those of the (weighted) sum over elements, in the first input's shape. Second
        derivatives below `hessian_floor` are raised to it: xgboost and LightGBM divide by them, and
        losses such as l1 or hinge have none (0 almost everywhere), so a small positive floor is
        what their users apply. NaN stays NaN. Elementwise losses only; NumPy arrays only.
        """
        if self._resolved.axis is not None:
            raise LossInputError(f"{self.name} is a loss over an axis: grad_hess is for elementwise losses")
        call = self._prepare(inputs, named_inputs, "sum", None, sample_weight, 0, None, None)
        if call.memory is not HOST:
            raise LossInputError(f"{self.name}: grad_hess takes host arrays")
        grad, hess = np.empty(call.size, call.dtype), np.empty(call.size, call.dtype)
        self._run(call, "loss_grad_hess", lambda: {**call.named, **self._param_args, "__weight": call.weights,
                                                   "__scale": call.scale, "__gscale": call.grad_scale,
                                                   "__out": np.empty(0, call.dtype), "__grad": grad, "__hess": hess},
                  kind=Kind.GRAD_HESS)
        np.maximum(hess, call.dtype.type(hessian_floor), out=hess)
        name = self.wrt[0]
        return (call.unbroadcast(name, grad, call.originals[name]), call.unbroadcast(name, hess, call.originals[name]))

    def xgboost_objective(self, hessian_floor: float = 1e-6):
        """`obj(predt, dtrain)` for `xgboost.train(..., obj=...)` (lossdsl.integrations.boosting)."""
        from ..integrations.boosting import xgboost_objective
        return xgboost_objective(self, hessian_floor)

    def lightgbm_objective(self, hessian_floor: float = 1e-6):
        """`objective(preds, train_data)` for LightGBM (lossdsl.integrations.boosting)."""
        from ..integrations.boosting import lightgbm_objective
        return lightgbm_objective(self, hessian_floor)

    def grad(self, *inputs, **options):
        """d(reduced loss)/d(input) for the `wrt` input(s); same options as calling the loss."""
        return self.value_and_grad(*inputs, **options)[1]

    def normalizer(self, *inputs, axis=None, **named_inputs) -> float:
        """What reduction="mean" divides by for these inputs: the number of elements, or for a loss over an
        axis the number of rows kept (or the spec's `mean weighted by` sum over them, e.g. the class
        weights of the labels). Sum it over micro-batches (or ranks) and divide the reduction="sum"
        results by it: accumulated gradients then equal the full batch's "mean" exactly."""
        call = self._prepare(inputs, named_inputs, "mean", None, None, 0, axis, None)
        self._run(call, None, lambda: ())
        return call.divisor

    def with_linear(self, chunk_rows: int | None = None, chunk_classes: int | None = None,
                    heads: tuple[str, ...] | None = None):
        """This loss over a class axis fused with the linear layer before it (lossdsl.classaxis.heads.LinearHead):
        called with (input, linear_weight, other inputs..., linear_bias=...), it computes the logits
        input @ linear_weight.T + linear_bias a chunk of rows (and of classes) at a time, never all of them.
        `heads` names several class-axis inputs, each the logits of a linear layer of its own."""
        from ..classaxis.heads import LinearHead
        return LinearHead(self, chunk_rows, chunk_classes, heads)

    def _run(self, call, kernel: str | None, arguments, kind: Kind = Kind.LOSS):
        """Call a kernel (its `arguments`, by name, made after the call's checks, which set the mean's
        divisor; None: the checks alone);
        if Numba's on-disk cache for it is damaged, discard it and retry once."""
        for fresh in (False, True):
            try:
                module = self._backend.module(call.dtype, kind, call.memory.target, fresh=fresh)
                call.before(module, self._param_args)
                if kernel is None:
                    call.check_now()
                    return None
                total = call.memory.launch(module, kernel, call, arguments())
                call.after(total)
                return total
            except (EOFError, pickle.UnpicklingError):
                if fresh:
                    raise

    def _prepare(self, inputs, named_inputs, reduction, weight, sample_weight, batch_axis, axis, device):
        if weight is not None and np.ndim(weight) != 0:
            hint = FRAMEWORK_SPELLINGS["weight"][1] if "class_weight" in self.inputs else "a call's weight= is one "\
                "scalar factor"
            raise LossInputError(f"{self.name}: weight must be a real scalar; got an array of shape "
                                 f"{np.shape(weight)}: {hint}; sample_weight= takes per-element weights")
        memory = memory_for([*inputs, *named_inputs.values(), sample_weight], device)
        arrays = self._gather_inputs(inputs, named_inputs, memory)
        if self._resolved.axis is not None:
            call = RowCall(self, arrays, axis, reduction, weight, sample_weight, batch_axis, memory)
        elif axis is not None:
            raise LossInputError(f"{self.name} is elementwise: it takes no axis")
        else:
            call = ElementCall(self, arrays, reduction, weight, sample_weight, batch_axis, memory)
        call.given = next(a for a in (*inputs, *named_inputs.values()) if a is not None)
        call.originals = {n: a.shape for n, a in arrays.items() if a is not None}
        call.dtypes = {n: a.dtype for n, a in arrays.items() if a is not None}
        return call

    def _gather_inputs(self, inputs, named_inputs, memory) -> dict[str, np.ndarray | None]:
        """Inputs by name: positional ones in order, optional ones also by keyword (None where left out)."""
        specs = self._resolved.inputs
        given = by_name(self.name, self.inputs, [i.name for i in specs if i.default is None], inputs, named_inputs,
                        self._bound)
        arrays: dict[str, np.ndarray | None] = {}
        for spec_input in specs:
            value = given.get(spec_input.name)
            if value is None:
                arrays[spec_input.name] = None
                continue
            try:
                array = memory.gather(value)
            except ValueError as exc:  # e.g. ragged nested lists
                raise LossInputError(f"{self.name}: inputs must be arrays of numbers ({exc})") from None
            if array.dtype.kind not in "biuf" and array.dtype.name not in LOW_PRECISION:
                raise LossInputError(f"{self.name}: {spec_input.name} must hold numbers; got dtype {array.dtype}")
            arrays[spec_input.name] = array
        return arrays


# What other frameworks call an argument that lossdsl names differently: {their name: (lossdsl's, why)}
FRAMEWORK_SPELLINGS = {
    "weight": ("class_weight", "PyTorch's per-class weight tensor is the input class_weight here "
                               "(lossdsl.load(name, class_weight=w), or class_weight= at call time); a call's "
                               "weight= is one scalar factor"),
}
CALL_OPTIONS = ("reduction", "sample_weight", "batch_axis", "axis", "device")


def split_bound(loss_name: str, inputs, param_names, keywords: Mapping[str, Any]) -> tuple[dict, dict]:
    """Load-time keywords split into optional inputs to bind (`inputs` have a name and a default) and
    parameters; an input that cannot be bound, a call option and a framework's spelling of another
    name are refused with the right one. Unknown names are left for the parameter check to name."""
    inputs = {i.name: i for i in inputs}
    bound, rest = {}, {}
    for name, value in keywords.items():
        if name in param_names:
            rest[name] = value
        elif name in inputs and inputs[name].default is not None:
            bound[name] = value
        elif name in inputs:
            raise LossParameterError(f"{loss_name}: {name} is an input with no default: pass it when calling")
        elif name in CALL_OPTIONS:
            raise LossParameterError(f"{loss_name}: {name} is an option of each call (loss(..., {name}=...)), "
                                     "not of lossdsl.load")
        elif name in FRAMEWORK_SPELLINGS and FRAMEWORK_SPELLINGS[name][0] in inputs:
            raise LossParameterError(f"{loss_name} has no parameter {name!r}: {FRAMEWORK_SPELLINGS[name][1]}")
        else:
            rest[name] = value
    return bound, rest


def memory_for(values, device: str | None):
    """Host memory, or the CUDA device's when asked for or when any input is a GPU array."""
    on_device = any(is_gpu_array(v) for v in values if v is not None)
    if device not in (None, "cpu", "cuda"):
        raise LossInputError(f"device must be 'cpu' or 'cuda'; got {device!r}")
    if device == "cuda" or (device is None and on_device):
        from . import gpu  # numba.cuda: only for GPU calls
        return gpu.device_memory()
    if on_device:
        raise LossInputError("device='cpu' with GPU arrays: copy them to the host first, or leave device unset")
    return HOST


def _given_precision(grad, given: np.dtype):
    """A gradient computed in float32 for a float16 or bfloat16 input, in that input's dtype."""
    return grad.astype(given) if given.name in LOW_PRECISION and grad.dtype != given else grad


def _gradient_targets(call: Call, wrt: tuple[str, ...], grad_out, names: list[str]):
    """The arrays `grad_out` names, one per `wrt` input (None without it), checked before any kernel runs,
    and whether one of them is the very buffer the kernel reads its input from (then it runs in place)."""
    if grad_out is None:
        return [None] * len(wrt), False
    if call.memory is not HOST:
        raise LossInputError(f"{call.name}: grad_out is for host arrays")
    targets = [grad_out] if len(wrt) == 1 else list(grad_out) if isinstance(grad_out, (tuple, list)) else []
    if len(targets) != len(wrt):
        raise LossInputError(f"{call.name}: grad_out needs {len(wrt)} arrays, one for each of {', '.join(wrt)}")
    inputs = [a for a in (*call.sources, call.weights) if isinstance(a, np.ndarray)]
    in_place = False
    for name, target in zip(wrt, targets):
        expected = call.originals[name]
        if (not isinstance(target, np.ndarray) or target.shape != expected or target.dtype != call.dtype
                or not target.flags.c_contiguous or not target.flags.writeable):
            got = f"{target.dtype} array of shape {target.shape}" if isinstance(target, np.ndarray) else type(target)
            raise LossInputError(f"{call.name}: grad_out for {name} must be a writeable C-contiguous {call.dtype} "
                                 f"array of shape {expected}; got {got}")
        own = call.sources[names.index(name)]
        if _same_buffer(target, own):
            in_place = True
        elif any(np.may_share_memory(target, a) for a in inputs if not _same_buffer(a, own)):
            raise LossInputError(f"{call.name}: grad_out for {name} shares memory with an input other than {name}")
        elif np.may_share_memory(target, own):
            raise LossInputError(f"{call.name}: grad_out for {name} overlaps {name} without being it")
    return targets, in_place


def _same_buffer(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two arrays are the same C-ordered memory, element for element."""
    return (a.size == b.size and a.dtype == b.dtype and a.flags.c_contiguous and b.flags.c_contiguous
            and a.__array_interface__["data"][0] == b.__array_interface__["data"][0])
