"""How one call's arrays reach the kernels, and how the kernels' outputs become the result.

Elementwise losses broadcast their inputs NumPy's way and run over flat arrays.
Losses over a named axis run over rows: each input gets three steps (outer, inner,
along the axis), so a per-class vector or a scalar broadcasts without a copy. The axis
(one array axis, or a run of adjacent ones) stays where it is in memory when nothing
follows it; on the CPU, one with elements after it is moved last for the kernel (its
rows then contiguous), and the gradients moved back.
Both kinds of call end the same way: a float64 total, maybe per-row/per-element
values, and gradients summed back to the shape of the input they belong to.
"""
from __future__ import annotations

import math

import numpy as np

from . import buffers, domains, threads
from ..errors import LossInputError, LossLabelError
from .protocol import MEANS, REDUCTIONS, LossKind, Target, argument, bind
from .transpose import swap_last



def is_gpu_array(value) -> bool:
    """A CUDA array (CuPy, PyTorch, Numba; or Numba's simulated one), told without importing numba.cuda."""
    return hasattr(value, "__cuda_array_interface__") or type(value).__module__.startswith("numba.cuda.simulator")


LOW_PRECISION = ("float16", "bfloat16")  # computed in float32; bfloat16 arrays come from ml_dtypes


def float_dtype(wrt_arrays, wrt_names) -> np.dtype:
    """float32 or float64, from the differentiated inputs; integers and booleans become float64,
    float16 and bfloat16 float32 (their gradients are cast back by the caller)."""
    dtypes = {a.dtype for a in wrt_arrays}
    if any(d.name in LOW_PRECISION for d in dtypes):
        wider = {d for d in dtypes if d.name not in LOW_PRECISION}
        return np.dtype(np.float64) if np.dtype(np.float64) in wider else np.dtype(np.float32)
    dtype = dtypes.pop() if len(dtypes) == 1 else np.result_type(*dtypes)
    if dtype.kind in "biu":
        return np.dtype(np.float64)
    if dtype not in (np.float32, np.float64):
        raise LossInputError(f"{', '.join(wrt_names)} must be float32 or float64 (or integers); got {dtype}")
    return dtype


def by_name(loss_name: str, names: list[str] | tuple[str, ...], required: list[str], inputs: tuple,
            named_inputs: dict, bound: dict | None = None) -> dict:
    """A call's inputs by name: positional ones in order, then keywords, then those `bound` at load where the
    call leaves them out; unknown, doubled and missing (`required` but None or absent) ones refused with the
    inputs listed."""
    unknown = set(named_inputs) - set(names)
    if unknown:
        raise LossInputError(f"{loss_name} has no input or option {', '.join(sorted(unknown))}; its inputs are "
                             f"{', '.join(names)}")
    given = dict(zip(names, inputs))
    if set(given) & set(named_inputs) or len(inputs) > len(names):
        raise LossInputError(f"{loss_name} takes {len(names)} input{'s' if len(names) != 1 else ''} "
                             f"({', '.join(names)}); got {len(inputs) + len(named_inputs)}")
    given.update(named_inputs)
    for name, value in (bound or {}).items():
        if given.get(name) is None:
            given[name] = value
    missing = [name for name in required if given.get(name) is None]
    if missing:
        raise LossInputError(f"{loss_name} takes {len(required)} input{'s' if len(required) != 1 else ''} "
                             f"({', '.join(required)}); missing {', '.join(missing)}")
    return given


def empty_mean(reduction: str) -> float:
    """A mean over nothing: NaN (PyTorch's answer when every target is ignored), 0 for "mean_or_zero"."""
    return 0.0 if reduction == "mean_or_zero" else np.nan


def reduced(total: float, divisor: float, reduction: str, dtype: np.dtype):
    """The "sum", or a mean (MEANS) over `divisor`, of rows whose losses add up to `total`."""
    if reduction == "sum":
        return dtype.type(total)
    return dtype.type(total / divisor if divisor else empty_mean(reduction))


def flat(array: np.ndarray, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """A contiguous 1-D array of `dtype` holding `array` broadcast to `shape` (a view when possible)."""
    if array.shape != shape:
        array = np.broadcast_to(array, shape)
    return np.ascontiguousarray(array, dtype=dtype).reshape(-1)


def scalar_weight(loss_name: str, weight) -> float:
    array = np.asarray(weight)
    if array.ndim != 0 or array.dtype.kind not in "biuf":
        raise LossInputError(f"{loss_name}: weight must be a real scalar; got {weight!r} "
                             "(use sample_weight for arrays)")
    return float(array)


def check_domain(loss_name: str, spec_input, values: np.ndarray, shape: tuple[int, ...]) -> None:
    """Values of one input (in the kernel's dtype) against the domain its spec declares; the error
    says how to skip the check."""
    domain = spec_input.domain
    if domain.unbounded or values.size == 0:
        return
    values = np.ascontiguousarray(values.reshape(-1))
    if not domains.any_outside(values, domain):
        return
    as_dtype = values.dtype.type  # bounds in the input's own precision: float32 0.1 lies in [0, 0.1]
    if domain.choices is not None:
        ok = np.isin(values, np.array(domain.choices, values.dtype))
    else:
        low, high = as_dtype(domain.low), as_dtype(domain.high)
        ok = (values > low if domain.low_open else values >= low) & (values < high if domain.high_open else
                                                                        values <= high)
    if not ok.all():
        position = int(np.argmin(ok))
        index = tuple(int(i) for i in np.unravel_index(position, shape)) if shape else ()
        raise LossInputError(f"{loss_name}: {spec_input.name} must lie in {domain.describe()}; "
                             f"found {values[position].item()!r} at index {index}. To skip this check, set "
                             "`loss.check_domains = False` or pass check_domains=False to lossdsl.load or "
                             "lossdsl.torch.Loss")


def sample_weights(loss_name: str, sample_weight, shape: tuple[int, ...], dtype: np.dtype, memory=None):
    """`sample_weight` broadcast to the shape of the loss values, flat; empty when there is none."""
    memory = memory or HOST
    if sample_weight is None:
        return memory.flat(np.empty(0, dtype), (0,), dtype)
    sw = memory.gather(sample_weight)
    try:
        fits = np.broadcast_shapes(sw.shape, shape) == shape
    except ValueError:
        fits = False
    if not fits or sw.dtype.kind not in "biuf":
        raise LossInputError(f"{loss_name}: sample_weight of shape {sw.shape} (dtype {sw.dtype}) does not "
                             f"broadcast to the loss shape {shape}")
    return memory.flat(sw, shape, dtype)


def unbroadcast(grad: np.ndarray, target: tuple[int, ...]) -> np.ndarray:
    """A gradient over a broadcast shape, summed back to the `target` shape it came from."""
    if grad.shape == target:
        return grad
    extra = grad.ndim - len(target)
    summed = grad.sum(axis=tuple(range(extra)), dtype=np.float64) if extra else grad
    axes = tuple(i for i, n in enumerate(target) if n == 1 and summed.shape[i] != 1)
    if axes:
        summed = summed.sum(axis=axes, keepdims=True, dtype=np.float64)
    return summed.reshape(target).astype(grad.dtype)


class Call:
    """What every call has: the values' shape, weights, the reduction and its scales."""

    moved = False  # whether the kernels see the inputs in another layout than the caller's (RowCall)
    tiled = False  # whether the kernels take tiles of rows side by side (RowCall; codegen/lanes.py)

    def __init__(self, name: str, shape: tuple[int, ...], dtype: np.dtype, reduction: str, weight, sample_weight,
                 batch_axis, memory=None):
        self.memory = memory or HOST  # where the arrays live: HostMemory, or gpu.DeviceMemory
        if reduction not in REDUCTIONS[LossKind.ELEMENTWISE]:
            raise LossInputError(f"reduction must be one of {', '.join(REDUCTIONS[LossKind.ELEMENTWISE])}; got "
                                 f"{reduction!r}")
        self.name, self.shape, self.dtype, self.reduction = name, shape, dtype, reduction
        self.size = math.prod(shape)
        self.units = self.work = self.size  # kernel loop iterations, and elements they touch
        self.weights = sample_weights(name, sample_weight, shape, dtype, self.memory)
        self.scale = 1.0 if weight is None else scalar_weight(name, weight)
        self.elementwise = reduction in ("none", "batch")
        self.divisor = float(self.size)  # what "mean" divides by
        if not isinstance(batch_axis, (int, np.integer)):
            raise LossInputError(f"{name}: batch_axis must be an integer; got {batch_axis!r}")
        if reduction in ("batch", "batchmean") and not -len(shape) <= batch_axis < len(shape):
            raise LossInputError(f"{name}: reduction={reduction!r} needs a batch axis; batch_axis={batch_axis} "
                                 f"is not an axis of the loss shape {shape}")
        self.batch_axis = batch_axis % len(shape) if shape else 0
        self.originals: dict[str, tuple[int, ...]] = {}

    def before(self, module, params) -> None:
        """Work a kernel module does before the main kernel (row losses check their labels)."""

    def check_now(self) -> None:
        """Checks a kernel would make on its way (elementwise domains), made before it instead."""

    def after(self, total: float) -> None:
        """What a kernel's sum says about the inputs (a NaN: an elementwise input outside its domain?)."""

    @property
    def grad_scale(self) -> float:
        if self.reduction == "batch":
            per_sample = self.size // self.shape[self.batch_axis] if self.shape[self.batch_axis] else 0
            return 1.0 / per_sample if per_sample else 1.0
        if self.reduction == "batchmean":
            return 1.0 / self.shape[self.batch_axis] if self.shape[self.batch_axis] else 1.0
        return 1.0 / self.divisor if self.reduction in MEANS and self.divisor else 1.0

    def reduce(self, total: float, out: np.ndarray):
        if self.reduction == "sum" or self.reduction in MEANS:
            return reduced(total, self.divisor, self.reduction, self.dtype)
        if self.reduction == "batchmean":
            batch = self.shape[self.batch_axis]
            return self.dtype.type(total / batch if batch else np.nan)
        values = out.reshape(self.shape)
        if self.reduction == "none":
            return values
        values = self.memory.to_host(values)  # the per-sample mean is taken on the host
        other_axes = tuple(a for a in range(len(self.shape)) if a != self.batch_axis)
        return values.mean(axis=other_axes, dtype=np.float64).astype(self.dtype) if other_axes else values


class ElementCall(Call):
    """A call of an elementwise loss: inputs broadcast NumPy's way, flat."""

    def __init__(self, loss, arrays: dict[str, np.ndarray | None], reduction, weight, sample_weight,
                 batch_axis, memory=None):
        resolved = loss._resolved
        dtype = float_dtype([arrays[n] for n in resolved.wrt], resolved.wrt)
        for spec_input in resolved.inputs:  # an optional input left out takes its default
            if arrays[spec_input.name] is None:
                arrays[spec_input.name] = np.asarray(spec_input.default)
        names = list(arrays)
        try:
            shapes = {a.shape for a in arrays.values()}
            shape = shapes.pop() if len(shapes) == 1 else np.broadcast_shapes(*shapes)
        except ValueError:
            shapes = ", ".join(f"{n} {a.shape}" for n, a in arrays.items())
            raise LossInputError(f"{resolved.name}: input shapes do not match or broadcast: {shapes}") from None
        super().__init__(resolved.name, shape, dtype, reduction, weight, sample_weight, batch_axis, memory)
        # an optional input of one value stays one element: the kernels read it so (codegen/elementwise.py)
        shapes = {i.name: (1,) if i.default is not None and arrays[i.name].size == 1 and math.prod(shape) != 1
                  else shape for i in resolved.inputs}
        self.head = [self.memory.flat(arrays[n].reshape(-1) if shapes[n] == (1,) else arrays[n], shapes[n], dtype)
                     for n in names]
        self.sources = self.head  # the inputs as the caller's arrays hold them (RowCall may read copies)
        self.named = {argument(n): a for n, a in zip(names, self.head)}  # the kernels' arguments
        # domains are checked by the kernel on its way (its sum NaN if an input is outside), then here to say where
        self.deferred = ([(spec_input, array, shapes[spec_input.name]) for spec_input, array
                          in zip(resolved.inputs, self.head) if not spec_input.domain.unbounded]
                         if loss.check_domains and self.memory.checks_domains else [])
        self.named["__check"] = bool(self.deferred)
        self.grad_size = self.size

    def check_now(self) -> None:
        """The domain checks before the kernel: for a call whose gradient goes where the caller's data is."""
        for spec_input, array, shape in self.deferred:
            check_domain(self.name, spec_input, array, shape)
        self.deferred, self.named["__check"] = [], False

    def after(self, total: float) -> None:
        if self.deferred and total != total:  # a NaN: an input outside its domain, or a NaN loss of its own
            self.check_now()

    def unbroadcast(self, input_name: str, grad: np.ndarray, target: tuple[int, ...]) -> np.ndarray:
        return unbroadcast(grad.reshape(self.shape), target)


#: Most bytes of copies a call over an axis with elements after it makes to run with the axis last.
MAX_MOVED_BYTES = 1 << 30
#: Bytes of one tile's rows side by side (codegen/lanes.py): 64 float32 or 32 float64 rows. LLVM's vector loop
#: takes 4 vectors at a time; tiles of one vector (16 float32) run in its remainder: 2x slower for
#: cross-entropy at (8, 21, 256, 256) on one core, and 128 bytes no faster than 256.
LANE_BYTES = 256
#: Fewest rows after the axis for tiles (a tile is then all of them); with fewer, the axis is moved last. At 21
#: classes, tiles of 4, 8, 16 and 49 rows took 0.8, 0.5, 0.3 and 0.4x the time of moving the axis; at 1000
#: classes tiles of 8 took as long, of 2 three times as long.
MIN_LANES = 8


class RowCall(Call):
    """A call of a loss over a named axis: rows, the axis length and each input's steps."""

    def __init__(self, loss, arrays: dict[str, np.ndarray | None], axis, reduction, weight, sample_weight,
                 batch_axis, memory=None):
        resolved = loss._resolved
        name = resolved.name
        main_input = next(i for i in resolved.inputs if i.axis == resolved.axis and arrays[i.name] is not None)
        main = arrays[main_input.name]
        if main.ndim == 0:
            raise LossInputError(f"{name}: {main_input.name} needs the axis {resolved.axis}; got a scalar")
        first, last = axis_span(name, main.shape, axis, resolved.axis_position)
        try:  # inputs with the axis and as many dimensions broadcast together (a (1, D) anchor, say)
            full = np.broadcast_shapes(*(arrays[i.name].shape for i in resolved.inputs
                                         if i.axis == resolved.axis and arrays[i.name] is not None
                                         and arrays[i.name].ndim == main.ndim))
        except ValueError:
            shapes = ", ".join(f"{i.name} {arrays[i.name].shape}" for i in resolved.inputs
                               if i.axis == resolved.axis and arrays[i.name] is not None)
            raise LossInputError(f"{name}: input shapes do not match or broadcast: {shapes}") from None
        self.length = math.prod(full[first:last + 1])
        if self.length == 0:
            raise LossInputError(f"{name}: the axis {resolved.axis} of {main_input.name} {full} is empty")
        self.outer = math.prod(full[:first])
        self.inner = math.prod(full[last + 1:])
        self.full = full
        rows_shape = full[:first] + full[last + 1:]
        self.kept_axis_shape = full[:first] + (1,) * (last + 1 - first) + full[last + 1:]  # (N, 1): MindSpore's labels
        dtype = float_dtype([arrays[n] for n in resolved.wrt], resolved.wrt)
        super().__init__(name, rows_shape, dtype, reduction, weight, sample_weight, batch_axis, memory)
        self.rows = self.size
        self.work = self.rows * self.length
        self.list_length = self._list_length(resolved, arrays, first, last)
        # a class axis with elements after it (PyTorch's (N, C, H, W)) is read and written along rows of
        # stride `inner`, scalar loads and stores a cache line each: on the CPU the call moves the axis last
        # instead (a copy of each input over it and of the gradients; `restored` gives those back), where the
        # copies fit in MAX_MOVED_BYTES. With MIN_LANES rows after the axis or more, and a tile for each thread,
        # the kernels take neighbouring rows side by side instead (codegen/lanes.py): no copies
        copies = len(resolved.wrt) + sum(1 for i in resolved.inputs if i.axis and i.axis == resolved.axis
                                         and arrays[i.name] is not None and arrays[i.name].size > self.length)
        host_rows = self.inner > 1 and resolved.list_axis is None and self.memory is HOST
        self.lanes = max(1, min(LANE_BYTES // dtype.itemsize, self.inner))  # (no rows after the axis: 0)
        self.tiles = self.outer * -(-self.inner // self.lanes)
        self.tiled = (host_rows and self.lanes >= MIN_LANES
                      and self.tiles >= threads.threads_for(self.rows * self.length))
        self.moved = (host_rows and not self.tiled
                      and copies * math.prod(full) * dtype.itemsize <= MAX_MOVED_BYTES)
        self.arrays, self.sources, steps = [], [], []
        as_given = (self.length * self.inner, 1, self.inner)  # the steps of an input over the axis, and moved last
        along = (self.length * self.inner, self.length, 1) if self.moved else as_given
        for spec_input in resolved.inputs:
            array = arrays[spec_input.name]
            is_label = spec_input.name in resolved.labels or spec_input.name in resolved.list_labels
            kind = np.dtype(np.int64) if is_label else dtype
            if array is None:  # an optional input left out: its default (writable: the CUDA simulator writes back)
                array = np.full(1, spec_input.default, kind)
            if spec_input.axis and spec_input.axis == resolved.list_axis:
                array, step = self._along_list(spec_input.name, array, kind, is_label)
            elif spec_input.axis:
                array, step = self._along_axis(spec_input.name, array, kind)
            else:
                array, step = self._per_row(spec_input.name, array, kind, is_label)
            if loss.check_domains and self.memory.checks_domains and not is_label:
                given = arrays[spec_input.name]
                shown = given.shape if given is not None and given.size == array.size else array.shape
                check_domain(name, spec_input, array, shown)
            self.sources.append(array)
            if self.moved and spec_input.axis and step == as_given:
                array, step = self._axis_last(array), along
            elif self.tiled and step == (0, 0, 1):  # a per-class vector, as a tile's rows read it: lane j beside j + 1
                array, step = np.repeat(array, self.lanes), (0, 0, self.lanes)
            self.arrays.append(array)
            steps.append(step)
        self.step_table = np.array(steps, dtype=np.int64).reshape(len(steps), 3)
        self.steps = self.memory.flat(self.step_table.reshape(-1), (self.step_table.size,), self.step_table.dtype)
        self.steps = self.steps.reshape(len(steps), 3)
        self.label_inputs = [k for k, i in enumerate(resolved.inputs) if i.name in resolved.labels]
        self.head = [*self.arrays, self.steps, self.rows, self.length, self.inner]
        self.named = {**{argument(i.name): a for i, a in zip(resolved.inputs, self.arrays)}, "__steps": self.steps,
                      "__rows": self.rows, "__C": self.length, "__inner": self.inner,
                      "__lanes": self.lanes}  # the kernels' arguments
        if resolved.list_axis is not None:
            self.named["__K"] = self.list_length
            self.work = self.rows * (self.length + self.list_length)
        self.grad_size = math.prod(full)
        self.named.update(zip(("__gso", "__gsq", "__gsc"), along))  # the gradients' steps, as the inputs' over the axis
        self.needs_rows = (bool(resolved.labels) or bool(resolved.list_labels) or resolved.ignore is not None
                           or resolved.mean_weight is not None)

    def _axis_last(self, array: np.ndarray) -> np.ndarray:
        """A flat (outer, axis, inner) array as a flat (outer, inner, axis) copy."""
        return swap_last(array, self.outer, self.length, self.inner, buffers.empty(array.size, array.dtype))

    def restored(self, grad: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """A flat gradient the kernel wrote with the axis last (`moved`), in the inputs' own layout, into `out`
        (flat, the given shape's size) or a new array."""
        return swap_last(grad, self.outer, self.inner, self.length,
                         buffers.empty(grad.size, grad.dtype) if out is None else out)

    def _list_length(self, resolved, arrays, first: int, last: int) -> int:
        """K, the list axis's length: the inputs over it are shaped like the rows with K where the class axis
        is (one array axis of it)."""
        listed = [i for i in resolved.inputs if i.axis and i.axis == resolved.list_axis and arrays[i.name] is not None]
        self.list_shapes, self.list_first = {}, first
        if not listed:
            return 0
        if last != first:
            raise LossInputError(f"{self.name}: a loss over a list axis takes its class axis as one array axis; "
                                 f"got axes {first}..{last}")
        for spec_input in listed:
            shape = arrays[spec_input.name].shape
            rows = shape[:first] + shape[first + 1:]
            if len(shape) != len(self.shape) + 1 or rows != self.shape:
                raise LossInputError(f"{self.name}: {spec_input.name} of shape {shape} must be the rows {self.shape} "
                                     f"with its list axis {resolved.list_axis} where the class axis is (axis {first})")
            self.list_shapes[spec_input.name] = shape
        lengths = {shape[first] for shape in self.list_shapes.values()}
        if len(lengths) > 1:
            shapes = ", ".join(f"{n} {s}" for n, s in self.list_shapes.items())
            raise LossInputError(f"{self.name}: the inputs over the list axis {resolved.list_axis} differ in length: "
                                 f"{shapes}")
        return lengths.pop()

    def _along_list(self, input_name: str, array: np.ndarray, dtype: np.dtype, is_label: bool):
        """An input over the list axis, flat, with its steps (outer, inner, along k)."""
        if is_label:
            array = integer_labels(self.name, input_name, array)
        # an optional input left out: its default broadcast to the rows with K where the class axis is
        shape = self.list_shapes.get(input_name,
                                     self.shape[:self.list_first] + (self.list_length,) + self.shape[self.list_first:])
        return flat(array, shape, dtype), (self.list_length * self.inner, 1, self.inner)

    def _along_axis(self, input_name: str, array: np.ndarray, dtype: np.dtype):
        if array.shape == self.full:
            return flat(array, self.full, dtype), (self.length * self.inner, 1, self.inner)
        if array.shape == (self.length,):  # a per-class vector, shared by every row
            return flat(array, array.shape, dtype), (0, 0, 1)
        if array.size == 1:  # a per-class vector of one value: a unit step keeps the row loops vectorised
            return flat(array, (self.length,), dtype), (0, 0, 1)
        try:
            return flat(array, self.full, dtype), (self.length * self.inner, 1, self.inner)
        except ValueError:
            raise LossInputError(f"{self.name}: {input_name} of shape {array.shape} fits neither the shape "
                                 f"{self.full} nor the axis length {self.length}") from None

    def _per_row(self, input_name: str, array: np.ndarray, dtype: np.dtype, is_label: bool):
        if array.shape == self.kept_axis_shape and array.shape != self.shape:  # the axis kept at length 1
            array = array.reshape(self.shape)
        if is_label:
            array = integer_labels(self.name, input_name, array)
        if array.size == 1:
            return flat(array, (1,), dtype), (0, 0, 0)
        try:
            return flat(array, self.shape, dtype), (self.inner, 1, 0)
        except ValueError:
            raise LossInputError(f"{self.name}: {input_name} of shape {array.shape} does not match the rows "
                                 f"{self.shape} (the shape without the axis)") from None

    def before(self, module, params) -> None:
        """Run `loss_rows`: labels in range (else LossLabelError), and what "mean" divides by."""
        if not self.needs_rows:
            return
        divisor, row, label = self.memory.check_rows(module, self, params)
        if row >= 0:
            index = tuple(int(i) for i in np.unravel_index(row, self.shape)) if self.shape else ()
            raise LossLabelError(f"{self.name}: label {label} at row {index} is outside the axis of length "
                                 f"{self.length}", index, int(label))
        self.divisor = float(divisor)

    def unbroadcast(self, input_name: str, grad: np.ndarray, target: tuple[int, ...]) -> np.ndarray:
        grad = grad.reshape(self.full)
        if target == (self.length,) and self.full != target:
            summed = grad.reshape(self.outer, self.length, self.inner).sum(axis=(0, 2), dtype=np.float64)
            return summed.astype(grad.dtype)
        return unbroadcast(grad, target)


def axis_span(loss_name: str, shape: tuple[int, ...], axis, default: int | str | None) -> tuple[int, int]:
    """First and last array axis of the named axis: `axis` (an int or a run of adjacent ints, or "all")."""
    ndim = len(shape)
    if axis is None:
        axis = "all" if default == "all" else -1 if default is None else min(default, ndim - 1)
    if isinstance(axis, str) and axis == "all":
        axes = list(range(ndim))
    else:
        axes = list(axis) if isinstance(axis, (tuple, list)) else [axis]
    whole = all(isinstance(a, (int, np.integer)) and not isinstance(a, (bool, np.bool_)) for a in axes)
    normal = sorted(int(a) % ndim for a in axes if -ndim <= a < ndim) if whole else []
    if len(normal) != len(axes):
        normal = [None]
    if not normal or None in normal or normal != list(range(normal[0], normal[0] + len(normal))):
        raise LossInputError(f"{loss_name}: axis={axis!r} must be an axis of the input's shape {shape}, or a run "
                             "of adjacent axes")
    return normal[0], normal[-1]


_LABEL_LIMIT = 2 ** 62  # beyond any axis length; larger labels would not survive the cast to int64


def integer_labels(loss_name: str, input_name: str, array: np.ndarray) -> np.ndarray:
    """Labels as int64; floats are accepted only when they hold whole numbers."""
    if array.dtype.kind == "f" and not (np.all(np.isfinite(array)) and np.all(array == np.round(array))):
        bad = array.reshape(-1)[np.argmin(np.isfinite(array) & (array == np.round(array)), axis=None)]
        raise LossInputError(f"{loss_name}: {input_name} holds labels: whole numbers, not {bad.item()!r}")
    if array.dtype.kind not in "biuf":
        raise LossInputError(f"{loss_name}: {input_name} holds labels: integers, not {array.dtype}")
    huge = np.abs(array.astype(np.float64)) > _LABEL_LIMIT if array.size else np.zeros(0, bool)
    if huge.any():
        position = int(np.argmax(huge.reshape(-1)))
        raise LossLabelError(f"{loss_name}: label {array.reshape(-1)[position].item()} of {input_name} at index "
                             f"{tuple(int(i) for i in np.unravel_index(position, array.shape))} is outside the axis")
    return array.astype(np.int64, copy=False)


class HostMemory:
    """Arrays in host memory: NumPy conversions and checks, kernels on the CPU's threads.
    (gpu.DeviceMemory is the same interface for arrays on a CUDA device.)"""

    target = Target.CPU
    checks_domains = True

    @staticmethod
    def gather(value) -> np.ndarray:
        return np.asarray(value)

    flat = staticmethod(flat)
    labels = staticmethod(integer_labels)
    empty = staticmethod(buffers.empty)
    zeros = staticmethod(np.zeros)
    transpose = staticmethod(np.transpose)

    @staticmethod
    def to_host(array: np.ndarray) -> np.ndarray:
        return array

    @staticmethod
    def result(value, call: Call):
        """What a call returns, from what the kernels wrote: unchanged on the host."""
        return value

    @staticmethod
    def launch(module, kernel: str, call: Call, arguments: dict) -> float:
        units = call.units
        if call.tiled and f"{kernel}_lanes" in module.KERNELS:  # the outputs kernel has no tiled version
            kernel, units = f"{kernel}_lanes", call.tiles
        return threads.run(getattr(module, kernel), units, call.work, bind(module, kernel, arguments))

    @staticmethod
    def check_rows(module, call: "RowCall", params: dict) -> tuple[float, int, int]:
        """(what "mean" divides by, first row with a label out of range or -1, that label)."""
        return module.loss_rows(*bind(module, "loss_rows", {**call.named, **params}))


HOST = HostMemory()
