"""PyTorch adapter: any lossdsl loss as a `torch.nn.Module` with the generated gradient.

    import lossdsl.torch
    criterion = lossdsl.torch.Loss("focal", gamma=2.0)
    loss = criterion(p, y)          # a tensor; loss.backward() runs no PyTorch autograd graph for it
    loss.backward()

Forward calls the fused value-and-gradient kernel once; backward scales the saved gradient by
the incoming one (scalar reductions), or, for reduction="none", runs the kernel again with the
incoming gradient as per-element weights (the gradient of sum(w * loss)). "batch" is "none"
followed by PyTorch's own mean, so autograd handles that step. CPU tensors reach the kernels as
NumPy views (no copy); CUDA tensors through `__cuda_array_interface__` (the CUDA kernels).
Double backward raises: the generated gradient is not itself differentiable here.
Needs PyTorch (`pip install lossdsl[torch]`); lossdsl's core never imports this module.
"""
from __future__ import annotations

import os

import numpy as np
import torch

import lossdsl
from lossdsl.classaxis.heads import LinearHead as _LinearHead
from lossdsl.runtime.layout import axis_span
from lossdsl.runtime.loss import Loss as _CompiledLoss
from lossdsl.runtime.preference import flat_grads, flattened, regrouped
from lossdsl.runtime.protocol import REDUCTIONS, LossKind
from lossdsl.runtime.sequence import SequenceLoss as _SequenceLoss

_SCALAR_REDUCTIONS = ("mean", "mean_or_zero", "sum", "batchmean")
_LOW_PRECISION = (torch.float16, torch.bfloat16)


class Loss(torch.nn.Module):
    """A lossdsl loss as a module: `Loss("huber", delta=0.5)`, `Loss(compiled_loss)`, or `Loss("my.loss")`.

    Call it with the loss's inputs (tensors, or numbers), in order or by name, and the same
    options as `lossdsl.Loss`: reduction ("mean" by default, "sum", "none", "batch",
    "batchmean"), weight, sample_weight, batch_axis, axis. Gradients flow to every input
    the spec differentiates (`wrt`); the others (targets, labels) get none.
    reduction="global_mean" or "global_sum" (with torch.distributed, over `group`): the exact mean
    over every process's elements or kept rows, or their sum, for DistributedDataParallel (see `_global`).

    Tensors given at construction are PyTorch's constructor arguments: `weight` (class weights where
    the loss has a `class_weight` input, as nn.CrossEntropyLoss, NLLLoss, MultiMarginLoss and
    MultiLabelSoftMarginLoss take them; else per-element weights, as nn.BCELoss's), `pos_weight`
    (nn.BCEWithLogitsLoss) or any optional input by its own name. They are buffers of the module
    (moved by `.to(device)`) and used by every call that does not pass its own.
    """

    def __init__(self, loss: str | os.PathLike | _CompiledLoss | _SequenceLoss | _LinearHead, /,
                 reduction: str = "mean", group=None, **params):
        super().__init__()
        tensors = {k: params.pop(k) for k in list(params) if isinstance(params[k], (torch.Tensor, np.ndarray))}
        named = isinstance(loss, (str, os.PathLike))  # else a loaded loss, sequence loss or linear head
        self.loss = lossdsl.load(loss, **params) if named else loss.with_params(**params)
        self.reduction, self.group = reduction, group
        self._defaults = {}  # {input or "sample_weight": buffer name}, for calls that leave them out
        for name, tensor in tensors.items():
            target = _input_for(self.loss, name)
            self.register_buffer(f"_given_{target}", torch.as_tensor(tensor))
            self._defaults[target] = f"_given_{target}"

    def extra_repr(self) -> str:
        return f"{self.loss!r}, reduction={self.reduction!r}"

    def forward(self, *inputs, reduction: str | None = None, **options):
        reduction = reduction or self.reduction
        names = self.loss.inputs
        given = dict(zip(names, inputs))
        given.update({k: v for k, v in options.items() if k in names})
        options = {k: v for k, v in options.items() if k not in names}
        if len(inputs) > len(names):
            raise lossdsl.LossInputError(f"{self.loss.name} takes {len(names)} inputs ({', '.join(names)}); "
                                         f"got {len(inputs)}")
        for target, buffer in self._defaults.items():  # tensors given at construction
            into = options if target == "sample_weight" else given
            if into.get(target) is None:
                into[target] = getattr(self, buffer)
        order = [n for n in names if given.get(n) is not None]
        if reduction in ("global_mean", "global_sum"):
            return self._global(reduction, order, given, options)
        if reduction == "batch":  # the per-sample mean is PyTorch's: autograd differentiates it
            values = _LossFunction.apply(self.loss, order, "none", options, *[given[n] for n in order])
            batch_axis = options.get("batch_axis", 0) % values.dim() if values.dim() else 0
            other = [d for d in range(values.dim()) if d != batch_axis]
            return values.mean(dim=other) if other else values
        return _LossFunction.apply(self.loss, order, reduction, options, *[given[n] for n in order])


    def _global(self, reduction: str, order, given, options):
        """The sum ("global_sum") or mean ("global_mean": a sum and a normaliser all-reduced, not a mean
        of means) over every process of `self.group`, with the gradient scaled for
        DistributedDataParallel, which averages gradients over the processes: after that average each
        parameter holds the gradient of the global sum or mean."""
        import torch.distributed as dist
        local = _LossFunction.apply(self.loss, order, "sum", options, *[given[n] for n in order])
        totals = [local.detach().double().item()]
        if reduction == "global_mean":
            arrays = {n: _to_kernel(given[n]) for n in order}
            shape = {"axis": options["axis"]} if "axis" in options else {}
            totals.append(float(self.loss.normalizer(**arrays, **shape)))
        totals = torch.tensor(totals, dtype=torch.float64)
        dist.all_reduce(totals, group=self.group)
        world = dist.get_world_size(self.group)
        if reduction == "global_sum":
            value, scale = totals.item(), world
        else:
            total, normalizer = totals.tolist()
            scale = world / normalizer if normalizer else 0.0
            value = total / normalizer if normalizer else float("nan")
        return local * scale + (value - local.detach() * scale)  # the global value; its gradient, local * scale

def _input_for(loss, name: str) -> str:
    """Where a tensor given at construction goes: the input of that name, PyTorch's `weight` as the class
    weights or else the per-element weights, or an error naming the inputs there are."""
    optional = [n for n in loss.inputs if n not in _required(loss)]
    if name in optional:
        return name
    if name == "weight":
        return "class_weight" if "class_weight" in optional else "sample_weight"
    raise lossdsl.LossParameterError(f"{loss.name}: a tensor given at construction must name an optional input "
                                     f"({', '.join(optional) or 'it has none'}) or be PyTorch's weight=; got {name}")


def _required(loss) -> set[str]:
    """The inputs a call must pass (a linear head's own two, and its loss's inputs with no default)."""
    spec = loss.signature
    if spec.kind is LossKind.SEQUENCE:  # every input is its own
        return set(loss.inputs)
    if isinstance(loss, _LinearHead):
        return set(loss.required)
    return {i.name for i in spec.inputs if i.default is None}


def _to_kernel(value):
    """A tensor as the kernels take it: a NumPy view on the CPU (bfloat16, which NumPy lacks, as float32;
    lossdsl computes float16 in float32 too), the tensor itself on CUDA."""
    if not isinstance(value, torch.Tensor):
        return value
    value = value.detach()
    if value.is_cuda:
        return value.contiguous()
    if value.dtype == torch.bfloat16:
        value = value.float()
    return value.contiguous().numpy()


def _to_tensor(value, like: torch.Tensor) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    return torch.as_tensor(np.asarray(value), device=like.device)


class _LossFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, loss, names, reduction, options, *inputs):
        like = next(t for t in inputs if isinstance(t, torch.Tensor))
        arrays = {n: _to_kernel(v) for n, v in zip(names, inputs)}
        ctx.loss, ctx.names, ctx.reduction, ctx.options = loss, names, reduction, options
        ctx.arrays = arrays
        if reduction in _SCALAR_REDUCTIONS and any(ctx.needs_input_grad[4:]):
            value, grads = loss.value_and_grad(reduction=reduction, **options, **arrays)
            ctx.grads = grads if isinstance(grads, tuple) else (grads,)
        else:
            value, ctx.grads = loss(reduction=reduction, **options, **arrays), None
        ctx.dtypes = [t.dtype if isinstance(t, torch.Tensor) else None for t in inputs]
        result = _to_tensor(value, like)
        if like.dtype in _LOW_PRECISION:  # computed in float32, returned so (PyTorch would round to 16 bits)
            return result.to(torch.float32)
        return result.to(like.dtype) if like.is_floating_point() else result

    @staticmethod
    def backward(ctx, grad_output):
        if torch.is_grad_enabled():  # create_graph=True: a gradient of the gradient is asked for
            raise RuntimeError(f"lossdsl.torch: {ctx.loss.name} is differentiable once; its generated gradient "
                               "has no derivative here (double backward, create_graph=True, is not supported)")
        loss = ctx.loss
        if ctx.grads is not None:
            scaled = [None if g is None else _to_tensor(g, grad_output) * grad_output for g in ctx.grads]
        else:  # reduction "none": the gradient of sum(grad_output * loss)
            options = dict(ctx.options)
            upstream = _to_kernel(grad_output)
            given = options.pop("sample_weight", None)
            options["sample_weight"] = upstream if given is None else _to_kernel(torch.as_tensor(given)) * upstream
            _, grads = loss.value_and_grad(reduction="sum", **options, **ctx.arrays)
            scaled = [None if g is None else _to_tensor(g, grad_output)
                      for g in (grads if isinstance(grads, tuple) else (grads,))]
        by_name = dict(zip(loss.wrt, scaled))
        grads = [by_name.get(n) for n in ctx.names]
        return (None, None, None, None, *[g if g is None or d is None else g.to(d) for g, d in zip(grads, ctx.dtypes)])


class ShardedLoss(torch.nn.Module):
    """A loss over a class axis whose classes are split across the processes of a torch.distributed
    `group` (tensor-parallel vocabularies): `ShardedLoss("cross_entropy", label_smoothing=0.1)`.

    Each process calls it with its slice of the logits (the class axis holding classes
    [class_start, class_start + C_local)), the whole labels (or its slice of probability targets;
    per-class weights whole or sliced), `class_start=` and `classes=` (C in all). Every process gets
    the same loss, and backward gives each the gradient of its own slice; the collectives are those
    `lossdsl show NAME --plan` prints (lossdsl.classaxis.sharding). Reductions "mean" (default),
    "mean_or_zero", "sum" and "none" (one loss per row, as Megatron's vocabulary-parallel
    cross-entropy gives per token; backward then takes any per-row gradient, the same on every
    process, as it is when each computes the same from the loss)."""

    def __init__(self, loss: str | os.PathLike | _CompiledLoss | _LinearHead, /, reduction: str = "mean", group=None,
                 **params):
        super().__init__()
        from lossdsl.classaxis.sharding import ShardedLoss as _Sharded
        named = isinstance(loss, (str, os.PathLike))
        compiled = lossdsl.load(loss, **params) if named else loss.with_params(**params)
        compiled.signature.check_reduction(reduction, REDUCTIONS[LossKind.SHARDED])
        self.reduction, self.group = reduction, group
        # a linear head is made sharded per call (its slice's start comes with the call)
        self.head = compiled if isinstance(compiled, _LinearHead) else None
        self.sharded = None if self.head is not None else _Sharded(compiled, _all_reduce(group))

    def extra_repr(self) -> str:
        return f"{self.head or self.sharded.loss!r}, reduction={self.reduction!r}"

    def forward(self, logits, *inputs, class_start: int, classes: int, axis=None, sample_weight=None,
                **named):
        """For a linear head (`ShardedLoss("linear_cross_entropy")`): (input, linear_weight slice, targets...,
        linear_bias=its slice), or for two heads (`ShardedLoss("linear_distill")`) each head's input and
        weight slice, the targets, and student_bias= and teacher_bias= slices; backward gives the whole input
        gradient (all-reduced) and the slices'. With reduction "none", a head's backward runs it again,
        collectives included, with the incoming gradient as sample weights: the weight's gradient sums
        rows, so it cannot be scaled afterwards."""
        options = {"reduction": self.reduction, "sample_weight": _to_kernel(sample_weight)}
        if self.head is not None:
            if axis is not None:
                raise lossdsl.LossInputError(f"{self.head.name}: a linear head's class axis is its weight's rows")
            head = self.head.sharded(class_start, classes, _all_reduce(self.group))
            given = {**dict(zip(head.inputs, (logits, *inputs))), **named}
            names = [n for n in head.inputs if given.get(n) is not None]
            unknown = sorted(set(named) - set(head.inputs))
            if unknown:
                raise lossdsl.LossInputError(f"{head.name} has no input {', '.join(unknown)}; its inputs are "
                                             f"{', '.join(head.inputs)}")
            return _ShardedHeadFunction.apply(head, options, names, *[given[n] for n in names])
        if named:
            raise lossdsl.LossInputError(f"{self.sharded.loss.name}: unknown options {', '.join(sorted(named))}")
        options = {"class_start": class_start, "classes": classes, "axis": axis, **options}
        return _ShardedFunction.apply(self.sharded, options, logits, *inputs)


class _ShardedHeadFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, head, options, names, *tensors):
        arrays = {n: _to_kernel(t) for n, t in zip(names, tensors)}
        ctx.names, ctx.dtypes = names, [t.dtype if isinstance(t, torch.Tensor) else None for t in tensors]
        if options["reduction"] == "none":  # the weight's gradient sums over the rows: backward runs the head again
            ctx.head, ctx.options, ctx.arrays, ctx.grads = head, options, arrays, None
            value = head(**arrays, **options)
        else:
            value, grads = head.value_and_grad(**arrays, **options)
            ctx.grads = {n: torch.from_numpy(np.ascontiguousarray(g)) for n, g in zip(head.wrt, grads) if g is not None}
        result = torch.as_tensor(np.asarray(value))
        like = tensors[0]
        return result.to(torch.float32 if like.dtype in _LOW_PRECISION else like.dtype)

    @staticmethod
    def backward(ctx, grad_output):
        if ctx.grads is None:  # "none": the gradients of sum(grad_output * loss), grad_output as sample weights
            given, upstream = ctx.options["sample_weight"], _to_kernel(grad_output)
            options = {**ctx.options, "reduction": "sum",
                       "sample_weight": upstream if given is None else given * upstream}
            _, grads = ctx.head.value_and_grad(**ctx.arrays, **options)
            ctx.arrays = None
            grads = {n: torch.from_numpy(np.ascontiguousarray(g)) for n, g in zip(ctx.head.wrt, grads)
                     if g is not None}
            scale = None
        else:
            grads, ctx.grads, scale = ctx.grads, None, grad_output
        out = []
        for name, dtype in zip(ctx.names, ctx.dtypes):
            grad = grads.get(name)
            out.append(None if grad is None else grad.to(dtype) if scale is None else _scaled(grad, scale, dtype))
        return (None, None, None, *out)


def _all_reduce(group):
    """All-reduce of a float64 NumPy array over `group`, in place through a tensor sharing its memory."""
    import torch.distributed as dist
    ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}

    def all_reduce(array: np.ndarray, op: str) -> np.ndarray:
        array = np.ascontiguousarray(array)
        dist.all_reduce(torch.from_numpy(array), op=ops[op], group=group)
        return array
    return all_reduce


class _ShardedFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, sharded, options, logits, *inputs):
        value, grad = sharded.value_and_grad(_to_kernel(logits), *(_to_kernel(i) for i in inputs), **options)
        ctx.grad, ctx.dtype = torch.from_numpy(np.ascontiguousarray(grad)), logits.dtype
        ctx.rows = None  # the shape the incoming gradient takes, broadcast along the class axis, for "none"
        if options["reduction"] == "none":  # a row's loss reads only its row: its gradient scales by its own
            loss = sharded.loss
            low, high = axis_span(loss.name, grad.shape, options["axis"], loss.signature.axis_position)
            ctx.rows = (*grad.shape[:low], *[1] * (high - low + 1), *grad.shape[high + 1:])
        result = torch.as_tensor(np.asarray(value))
        return result.to(torch.float32 if logits.dtype in _LOW_PRECISION else logits.dtype)

    @staticmethod
    def backward(ctx, grad_output):
        grad, ctx.grad = ctx.grad, None  # no longer kept here: autograd may take it as .grad without a copy
        upstream = grad_output if ctx.rows is None else grad_output.reshape(ctx.rows)
        return (None, None, _scaled(grad, upstream, ctx.dtype), *([None] * (len(ctx.needs_input_grad) - 3)))


def _scaled(grad: torch.Tensor, grad_output: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A kept gradient times the incoming one (a scalar, or one per row broadcast along the class axis), in
    `dtype`; loss.backward() passes 1, and then the gradient is returned as it is (a multiply would be one
    more pass over it)."""
    if grad_output.numel() == 1 and grad_output.item() == 1:
        return grad.to(dtype)
    return (grad * grad_output).to(dtype)


class PreferenceLoss(torch.nn.Module):
    """`lossdsl.preference` as a module: `PreferenceLoss("dpo", head=True, beta=0.1)` (ORPO, CPO, KTO, SimPO
    alike). Called with the policy's (logits, labels) or, with `head=True`, (hidden states, weight, labels)
    and `linear_bias=`; `mask=`, `sequence_lengths=` (packed), and the sequence loss's inputs by name
    (ref_chosen_logp=, desirable=, ...). Gradients flow to the logits, or to the hidden states, weight and
    bias, the logits never whole on the head's path; bf16 hidden states are computed in float32. Chosen and
    rejected may come apart: the logits (or hidden states), labels, mask and lengths each a pair.

    `sharded=True`: the class axis is split across the processes of the torch.distributed `group` (as
    ShardedLoss): each process calls with its slice of the logits, or of the head's weight and bias rows, and
    `class_start=`, `classes=`; every process gets the same loss, and backward the whole hidden states'
    gradient and its own slices'."""

    def __init__(self, loss: str | os.PathLike = "dpo", /, head: bool = False, reduction: str = "mean",
                 sharded: bool = False, group=None, **params):
        super().__init__()
        if group is not None and not sharded:
            raise lossdsl.LossInputError(f"{loss}: group= is for a class axis split across processes (sharded=True)")
        self.loss = lossdsl.preference(loss, head=head, all_reduce=_all_reduce(group) if sharded else None, **params)
        self.reduction = reduction

    def extra_repr(self) -> str:
        return f"{self.loss!r}, reduction={self.reduction!r}"

    def forward(self, *inputs, mask=None, linear_bias=None, reduction: str | None = None, **named):
        options = {k: _pair_or_one(v, _to_kernel) for k, v in named.items()}
        if mask is not None:
            options["mask"] = _pair_or_one(mask, _to_kernel)
        counts, flat = flattened(inputs)  # chosen and rejected apart: two tensors for one input
        return _PreferenceFunction.apply(self.loss, reduction or self.reduction, options, linear_bias, counts, *flat)


def _pair_or_one(value, convert):
    return tuple(convert(v) for v in value) if isinstance(value, (tuple, list)) else convert(value)


class _PreferenceFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, loss, reduction, options, bias, counts, *inputs):
        arrays = regrouped([_to_kernel(t) for t in inputs], counts)
        given = {} if bias is None else {"linear_bias": _to_kernel(bias)}
        value, grads = loss.value_and_grad(*arrays, reduction=reduction, **given, **options)
        flat = flat_grads(grads)
        ctx.name, ctx.labels = loss.name, counts[-1]
        ctx.dtypes = [t.dtype if isinstance(t, torch.Tensor) else None for t in inputs]
        ctx.bias_dtype = None if bias is None else bias.dtype
        like = inputs[0]
        ctx.grads = [_to_tensor(g, like) for g in flat]
        dtype = torch.float32 if like.dtype in _LOW_PRECISION else like.dtype
        return torch.as_tensor(value, dtype=dtype, device=like.device)

    @staticmethod
    def backward(ctx, grad_output):
        if torch.is_grad_enabled():
            raise RuntimeError(f"lossdsl.torch: {ctx.name} is differentiable once (no double backward)")
        differentiated = len(ctx.dtypes) - ctx.labels  # every policy input but the labels (the last one or two)
        scaled = [g * grad_output for g in ctx.grads]
        policy = [g.to(d) for g, d in zip(scaled[:differentiated], ctx.dtypes)] + [None] * ctx.labels
        bias = scaled[differentiated].to(ctx.bias_dtype) if ctx.bias_dtype is not None else None
        return (None, None, None, bias, None, *policy)
