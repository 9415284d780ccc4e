"""Linear + loss heads: any loss over a class axis fused with the linear layer before it.

A language model's loss reads logits = input @ linear_weight.T + linear_bias, (N, C) with C the
vocabulary: 32768 x 128256 float32 logits are 16 GB before their gradient. A head never holds
them. It goes through the rows a chunk at a time, in one of two ways:
- all classes at once, while a chunk of at least _MIN_ROWS rows fits the memory allowed: the
  chunk's logits by one BLAS product into a reused buffer, the spec's own row kernel on them
  (value and gradient in one pass, the gradient written over the logits), then the chunk's share
  of the input, weight and bias gradients by more BLAS products;
- a block of classes at a time otherwise (few rows, many classes), so that each product still has
  many rows: the loss's reductions over the class axis are combined from per-block partials
  (lossdsl.classaxis.partials), one sweep over the blocks per level of reductions, and a last sweep
  recomputes each block's logits for its gradient. One product more, each at full speed.
Extra memory either way: one logits buffer of at most 1/_CHUNK_SHARE of all the logits and small
blocks. "mean" divides by the spec's normaliser summed over every chunk (rows kept, or their
class weights), as the unfused loss does.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from .blocked import BlockRun
from .levels import sweep
from ..errors import LossInputError, LossLabelError
from ..runtime import blas, buffers, threads
from ..runtime.layout import LOW_PRECISION, by_name, check_domain, float_dtype, reduced
from ..runtime.protocol import MEANS, LossKind, Signature

_BLOCK_BYTES = 2 << 20  # the weight gradient's temporary, where BLAS cannot add in place: classes x D
# the weight gradient's product a piece of classes at a time: OpenBLAS packs its transposed operand (the
# chunk's gradient, classes x rows) whole, as much workspace again as the logits buffer (measured)
_PACKED_BYTES = 4 << 20
# each product in pieces of classes (or of the input's width) that free threads take in turn: enough of
# them that a thread slowed by another process does less (16 on 2 threads measured best), none tiny
_PIECES_PER_THREAD = 8
_MIN_PIECE_WORK = 1 << 20  # multiply-adds
_MIN_PIECE_CLASSES = 1024  # narrower pieces of a product over 1024 rows measured 5-10 % slower
_CHUNK_SHARE = 30  # a chunk's logits are at most 1/30 of all of them (3.3 %; the rest of 5 % for the others)
_CHUNK_BYTES = 64 << 20  # and at most this much per buffer, however many rows there are
_SMALL_BYTES = 1 << 20  # a buffer this small is allowed whatever the share: small calls are not chunked finely
_MIN_ROWS = 128  # fewer rows per chunk make the products slow (each chunk streams the whole weight matrix)
_BLOCK_ROWS = 2048  # rows per chunk when the classes come in blocks


class LinearHead:
    """`loss.with_linear()`: call with (input (..., D), linear_weight (C, D), the loss's other inputs,
    linear_bias=(C,) or None); options reduction ("mean", "mean_or_zero", "sum", "none"), sample_weight (one per row)
    and chunk_rows (rows per chunk; chosen from N and C when left out). `value_and_grad` returns
    (value, (d input, d linear_weight)), and d linear_bias third when a bias is given. As in PyTorch,
    linear_weight (C, d1, ..., dK, D) gives K-dimensional logits (N, C, d1, ..., dK), the class axis 1,
    with targets (N, d1, ..., dK). Scalar `weight` is not an option here: PyTorch's heads name the
    class weights so.

    Several heads (`head linear student, teacher`: `heads=("student", "teacher")`): each named input is
    the logits of a linear layer of its own, called as (student_input, student_weight, teacher_input,
    teacher_weight, the other inputs..., student_bias=, teacher_bias=); widths may differ, the classes
    may not. The gradients are those of each differentiated head (the spec's `wrt`, by default the first
    input), one per name of `wrt`: input, weight and bias (None where no bias is given).
    """

    def __init__(self, loss, chunk_rows: int | None = None, chunk_classes: int | None = None,
                 heads: tuple[str, ...] | None = None):
        spec = loss.signature
        if spec.kind is not LossKind.ROWS or spec.axis_position == "all":
            raise LossInputError(f"{loss.name}: a linear head needs a loss over a class axis (logits[c])")
        first = spec.inputs[0]
        self.named = bool(heads)  # heads named in the spec: their own input, weight and bias names
        heads = tuple(heads) if heads else (first.name,)
        axis_inputs = {i.name for i in spec.inputs if i.axis is not None and i.axis == spec.axis}
        if len(set(heads)) != len(heads) or not set(heads) <= axis_inputs:
            raise LossInputError(f"{loss.name}: heads must be distinct inputs along the class axis "
                                 f"({', '.join(sorted(axis_inputs)) or 'it has none'}); got {', '.join(heads)}")
        if not set(spec.wrt) <= set(heads):
            raise LossInputError(f"{loss.name}: a linear head differentiates heads only; "
                                 + ("needs the logits as the first input, the only one differentiated"
                                    if not self.named else f"wrt {', '.join(spec.wrt)} is not among {', '.join(heads)}"))
        self.loss, self.heads = loss, heads
        self.chunk_rows, self.chunk_classes = chunk_rows, chunk_classes
        self.shard = None  # (class_start, classes, all_reduce) where linear_weight holds a slice of the classes
        self._others = tuple(i for i in spec.inputs if i.name not in heads)
        self._list_inputs = {i.name for i in spec.inputs if i.axis is not None and i.axis == spec.list_axis}

    name = property(lambda self: self.loss.name)
    doc = property(lambda self: self.loss.doc)
    params = property(lambda self: self.loss.params)

    def layer_names(self, head: str) -> tuple[str, str, str]:
        """The call's names for one head's input, weight and bias."""
        return (f"{head}_input", f"{head}_weight", f"{head}_bias") if self.named else ("input", "linear_weight",
                                                                                       "linear_bias")

    @property
    def inputs(self) -> tuple[str, ...]:
        """The names a call takes, in order: each head's input and weight, the loss's other inputs, the biases."""
        layers = [self.layer_names(h) for h in self.heads]
        return (*(n for names in layers for n in names[:2]), *(i.name for i in self._others),
                *(names[2] for names in layers))

    @property
    def required(self) -> tuple[str, ...]:
        """The call inputs that must be given: each head's input and weight, the loss's inputs with no default."""
        return (*(n for h in self.heads for n in self.layer_names(h)[:2]),
                *(i.name for i in self._others if i.default is None))

    @property
    def wrt(self) -> tuple[str, ...]:
        return tuple(n for h in self.heads if h in self.loss.wrt for n in self.layer_names(h))

    @property
    def signature(self) -> Signature:
        """The loss's own, as a head: called with `inputs`, differentiated with respect to `wrt`."""
        return dataclasses.replace(self.loss.signature, kind=LossKind.HEAD, wrt=self.wrt, call_inputs=self.inputs)

    @property
    def check_domains(self) -> bool:
        """Whether calls check inputs against their declared domains: the loss's own setting."""
        return self.loss.check_domains

    @check_domains.setter
    def check_domains(self, value: bool) -> None:
        self.loss.check_domains = bool(value)

    def __repr__(self) -> str:
        return f"<lossdsl.LinearHead {self.loss!r}>"

    def explain(self, latex: bool = False) -> str:
        made = "".join(f"# {h} = {names[0]} @ {names[1]}.T + {names[2]}, a chunk of rows at a time\n"
                       for h in self.heads for names in [self.layer_names(h)])
        return (made if self.named else "# logits = input @ linear_weight.T + linear_bias, a chunk of rows at a time\n"
                ) + self.loss.explain(latex)

    def source(self, target: str = "cpu", dtype: str | np.dtype = "float64") -> str:
        """The row kernel's generated module (the linear layer's products are NumPy's BLAS calls)."""
        return self.loss.source(target, dtype)

    def _like(self, loss) -> "LinearHead":
        head = LinearHead(loss, self.chunk_rows, self.chunk_classes, self.heads if self.named else None)
        head.shard = self.shard
        return head

    def with_params(self, **params) -> "LinearHead":
        return self._like(self.loss.with_params(**params))

    def sharded(self, class_start: int, classes: int, all_reduce) -> "LinearHead":
        """This head where linear_weight (and linear_bias) hold only the classes [class_start,
        class_start + C_local) of `classes`, the other slices on other processes (lossdsl.classaxis.sharding):
        every process gets the same loss and the whole input gradient (all-reduced), and the
        gradients of its own weight and bias slices. Labels whole; per-class vectors whole or sliced."""
        head = self._like(self.loss)
        head.shard = (int(class_start), int(classes), all_reduce)
        return head

    def __call__(self, *inputs, reduction: str = "mean", sample_weight=None, chunk_rows: int | None = None,
                 chunk_classes: int | None = None, **named_inputs):
        return self._run(inputs, named_inputs, reduction, sample_weight, (chunk_rows, chunk_classes),
                         gradient=False)[0]

    def value_and_grad(self, *inputs, reduction: str = "mean", sample_weight=None, chunk_rows: int | None = None,
                       chunk_classes: int | None = None, outputs: bool = False, partials: "Partials | None" = None,
                       **named_inputs):
        """`outputs=True`: also the spec's `output` values per row, from the same pass, as the loss's own
        `value_and_grad(..., outputs=True)` gives them: (value, gradients, {name: values}). `partials` from
        `values_and_partials` on the same inputs (any sample_weight): the gradient then sweeps the classes
        in blocks once, its products as large as the values pass's, without recomputing the partials."""
        return self._run(inputs, named_inputs, reduction, sample_weight, (chunk_rows, chunk_classes),
                         gradient=True, with_outputs=outputs, reuse=partials)

    def values_and_partials(self, *inputs, **named_inputs) -> "tuple[np.ndarray, Partials | None]":
        """Each row's loss (reduction "none") and, where the call went a block of classes at a time, each
        row's whole partials of the loss's reductions over the classes (log-sum-exp's, a label's logit):
        a second call's gradient over the same rows (DPO's, weighted per token) reuses them."""
        keep = Partials()
        values = self._run(inputs, named_inputs, "none", None, (None, None), gradient=False, reuse=keep)[0]
        return values, keep if keep.by_start else None

    def chunking(self, rows: int, classes: int | tuple[int, ...], dtype: str | np.dtype = "float32"
                 ) -> tuple[int, int | None]:
        """How `value_and_grad` goes through `rows` rows of logits, each of `classes` (C, or (C, d1, ..., dK)
        for K-dimensional logits), when no chunking is given: (rows per chunk, classes per block, or None
        where a chunk takes all its classes at once)."""
        out_shape = tuple(int(n) for n in classes) if isinstance(classes, tuple) else (int(classes),)
        return self._chunks(None, None, int(rows), out_shape, np.dtype(dtype), self.shard is not None,
                            len(self.heads))

    def normalizer(self, *inputs, **named_inputs) -> float:
        """What "mean" divides by for these rows (the rows kept, or their class weights), from the
        labels alone: no logits are computed. Summed over micro-batches (or ranks), it divides their
        reduction="sum" results into the full batch's "mean" exactly."""
        given = by_name(self.name, self.inputs, self.required, inputs, named_inputs, self.loss.bound)
        x, weight = (np.asarray(given[n]) for n in self.layer_names(self.heads[0])[:2])
        if self.shard is not None:  # the same on every process: the labels are whole (per-class vectors must be)
            whole = np.broadcast_to(np.zeros((), weight.dtype), (self.shard[1], *weight.shape[1:]))
            layers = {n: whole for h in self.heads for n in self.layer_names(h)[1:2]}
            return LinearHead(self.loss, heads=self.heads if self.named else None).normalizer(**{**given, **layers})
        out_shape, rows_shape = weight.shape[:-1], x.shape[:-1]
        rows = math.prod(rows_shape)
        per_row = self._per_row(given, None, rows_shape, rows, out_shape)
        step = max(1, _CHUNK_BYTES // (8 * math.prod(out_shape)))
        total = 0.0
        for start in range(0, rows, step):
            stop = min(rows, start + step)
            arguments = {name: value[start:stop] if kind == "rows" else value
                         for name, (kind, value, _) in per_row.items()}
            zeros = np.zeros((stop - start, *out_shape))
            total += self._chunk_normalizer({h: zeros for h in self.heads}, arguments, start, out_shape[0])
        return total

    def _chunk_normalizer(self, logits: dict, arguments: dict, start: int, classes: int) -> float:
        """The loss's normaliser for the rows from `start` on (the label pass reads no logits); a label
        out of range is reported at its row of the whole input."""
        try:
            return self.loss.normalizer(*self._in_order(logits, arguments), axis=1)
        except LossLabelError as error:
            raise self._label_error(error, start, classes) from None

    def _in_order(self, logits: dict, arguments: dict) -> list:
        """The loss's inputs in its own order, from the heads' logits and the other inputs (by position: a
        spec input may share its name with an option of the loss's call, as `weight` does)."""
        return [logits[i.name] if i.name in logits else arguments[i.name] for i in self.loss.signature.inputs]

    def _label_error(self, error: LossLabelError, start: int, classes: int) -> LossLabelError:
        """The error at its row of the whole input, not of the chunk that starts at row `start`."""
        row = (start + error.row[0], *error.row[1:])
        weight = self.layer_names(self.heads[0])[1]
        return LossLabelError(f"{self.name}: label {error.label} at row {row} is outside the classes of "
                              f"{weight} ({classes})", row, error.label)

    def _layers(self, given: dict, gradient: bool):
        """Each head's operands as the chunks use them, checked: (layers, the rows' shape, (C, d1, ..., dK), dtype)."""
        arrays = {h: tuple(None if given.get(n) is None else np.asarray(given[n]) for n in self.layer_names(h))
                  for h in self.heads}
        names = [n for h in self.heads for n in self.layer_names(h)[:2]]
        dtype = float_dtype([a for h in self.heads for a in arrays[h][:2]], names)
        first_x, first_weight, _ = arrays[self.heads[0]]
        rows_shape, out_shape = first_x.shape[:-1], first_weight.shape[:-1]
        layers = []
        for head in self.heads:
            x, weight, bias = arrays[head]
            input_name, weight_name, bias_name = self.layer_names(head)
            if weight.ndim < 2 or x.ndim < 1 or x.shape[-1] != weight.shape[-1]:
                raise LossInputError(f"{self.name}: {input_name} (..., D) and {weight_name} (C, ..., D) do not fit: "
                                     f"{x.shape} and {weight.shape}")
            if x.shape[:-1] != rows_shape or weight.shape[:-1] != out_shape:
                first = self.layer_names(self.heads[0])
                raise LossInputError(f"{self.name}: {input_name} {x.shape} and {weight_name} {weight.shape} make "
                                     f"other logits than {first[0]} {first_x.shape} and {first[1]} "
                                     f"{first_weight.shape}: the rows and classes of every head must agree")
            if bias is not None and bias.shape != out_shape:
                raise LossInputError(f"{self.name}: {bias_name} must have shape {out_shape}; got {bias.shape}")
            # gradients in the dtype of what they differentiate (float16 and bfloat16 are computed in float32)
            given_dtypes = [a.dtype if a is not None and a.dtype.name in LOW_PRECISION else dtype for a in (x, weight, bias)]
            width, outputs = x.shape[-1], math.prod(out_shape)
            layers.append(_Layer(head, np.ascontiguousarray(x.reshape(-1, width), dtype),
                                 np.ascontiguousarray(weight.reshape(outputs, width), dtype),
                                 None if bias is None else bias.reshape(outputs).astype(dtype, copy=False),
                                 tuple(given_dtypes), gradient and head in self.loss.wrt))
        return layers, rows_shape, out_shape, dtype

    def _run(self, inputs, named_inputs, reduction, sample_weight, chunking, gradient: bool, with_outputs: bool = False,
             reuse: "Partials | None" = None):
        self.signature.check_reduction(reduction)
        given = by_name(self.name, self.inputs, self.required, inputs, named_inputs, self.loss.bound)
        layers, rows_shape, out_shape, dtype = self._layers(given, gradient)
        rows = math.prod(rows_shape)
        per_row = self._per_row(given, sample_weight, rows_shape, rows, out_shape)
        chunk_rows, chunk_classes = (mine if asked is None else asked
                                     for mine, asked in zip((self.chunk_rows, self.chunk_classes), chunking))
        step, classes = self._chunks(chunk_rows, chunk_classes, rows, out_shape, dtype, self.shard is not None,
                                     len(layers))
        if (not gradient and classes is None and step < min(rows, _BLOCK_ROWS) and chunk_rows is None
                and chunk_classes is None and self._one_sweep(out_shape[0], dtype, with_outputs)):
            step, classes = self._chunks(None, None, rows, out_shape, dtype, True, len(layers))
        if reuse is not None and gradient:
            if with_outputs or not reuse.matches(rows, chunk_rows, chunk_classes):
                raise LossInputError(f"{self.name}: partials are for the gradient of the same rows, no outputs "
                                     "and no chunking given")
            step, classes = reuse.step, reuse.classes
        elif reuse is not None:
            reuse.step, reuse.classes, reuse.rows = step, classes, rows
        values = np.empty((rows, *out_shape[1:]), dtype) if reduction == "none" else None
        for layer in layers:
            if layer.differentiated:
                # from the pool of large outputs (reused once the caller has dropped the last one), zeroed
                layer.grads = (buffers.zeros(layer.x.size, dtype).reshape(layer.x.shape),
                               buffers.zeros(layer.weight.size, dtype).reshape(layer.weight.shape),
                               np.zeros(layer.weight.shape[0], np.float64) if layer.bias is not None else None)
        names = self.loss.signature.outputs
        if with_outputs and not names:
            raise LossInputError(f"{self.name} declares no `output`")
        extra = np.empty((rows, *out_shape[1:], len(names)), dtype) if with_outputs else None
        total, normalizer = 0.0, 0.0
        with blas.single_threaded() as spread:
            chunk = _Chunks(layers, out_shape, per_row, step, classes, dtype, gradient, extra, spread)
            for start in range(0, rows, step):
                stop = min(rows, start + step)
                part, divisor = (self._by_rows(chunk, start, stop) if classes is None
                                 else self._by_blocks(chunk, start, stop, reuse))
                total += float(np.sum(part, dtype=np.float64))
                normalizer += divisor
                if values is not None:
                    values[start:stop] = part
        # every row ignored: a NaN or 0 mean (layout.empty_mean); the gradients are 0 either way, as PyTorch's
        loss_shape = (*rows_shape, *out_shape[1:])  # () for an unbatched input (D,): PyTorch's 0-d "none"
        value = (values.reshape(loss_shape) if reduction == "none"
                 else reduced(total, normalizer, reduction, dtype))
        if not gradient:
            return value, None
        scale = dtype.type(1.0 / normalizer) if reduction in MEANS and normalizer else None
        grads = ()
        for layer in (layer for layer in layers if layer.differentiated):
            grads += self._finished(layer, scale, rows_shape, out_shape)
        if not self.named and grads[-1] is None:  # one unnamed head: the bias's gradient only where it is given
            grads = grads[:-1]
        if not with_outputs:
            return value, grads
        return value, grads, {name: extra[..., k].reshape(loss_shape) for k, name in enumerate(names)}

    def _one_sweep(self, classes: int, dtype: np.dtype, outputs: bool) -> bool:
        """Whether values alone go faster a block of classes at a time: where the loss's reductions over the
        axis take one sweep, each block's logits are computed once, as a chunk's are, and the products then
        have _BLOCK_ROWS rows, not a small chunk's (136 at (4096, 512, 32000): 0.25 s of 0.9 s measured)."""
        return not self._list_inputs and BlockRun(self.loss, classes, dtype, outputs).levels.levels <= 1

    def _finished(self, layer: "_Layer", scale, rows_shape, out_shape) -> tuple:
        """One head's gradients as returned: all-reduced over the processes holding other classes, scaled
        for a mean, shaped and typed like what they differentiate."""
        d_input, d_weight, d_bias = layer.grads
        if self.shard is not None:  # each process's classes add their share to the input's gradient
            d_input = self.shard[2](d_input, "sum")
        if scale is not None:
            d_input *= scale
            d_weight *= scale
            d_bias = None if d_bias is None else d_bias * float(scale)
        width = layer.x.shape[1]
        return (d_input.reshape(*rows_shape, width).astype(layer.given[0], copy=False),
                d_weight.reshape(*out_shape, width).astype(layer.given[1], copy=False),
                None if d_bias is None else d_bias.reshape(out_shape).astype(layer.given[2], copy=False))

    def _per_row(self, given: dict, sample_weight, rows_shape, rows: int, out_shape) -> dict:
        """The loss's other inputs by name: ("rows", an array with one entry or row per logits row, to be
        sliced with each chunk) or ("whole", a value: a per-class vector, a scalar or a default), and
        whether it runs along the class axis (then sliced with each block of classes too)."""
        per_row = {}
        for spec_input in self._others:
            value = given.get(spec_input.name)
            if value is None:
                per_row[spec_input.name] = ("whole", np.asarray(spec_input.default), False)
                continue
            value = np.asarray(value)
            if self.loss.check_domains and spec_input.name not in self.loss.signature.labels:
                # the whole input, so an error gives its own index (each chunk's check would give the chunk's)
                check_domain(self.name, spec_input, value if value.dtype.kind == "f" else value.astype(np.float64),
                             value.shape)
            with_axis = spec_input.axis is not None and spec_input.axis == self.loss.signature.axis
            listed = spec_input.axis is not None and not with_axis  # over the list axis: (K, d1, ...) a row
            each_row = out_shape if with_axis else out_shape[1:]  # a row's (C, d1, ...) or (d1, ...)
            if listed and value.ndim == len(rows_shape) + len(out_shape):
                each_row = (value.shape[len(rows_shape)], *out_shape[1:])
            if self.shard is not None and with_axis and value.shape == (self.shard[1],):  # whole: this slice
                value = value[self.shard[0]:self.shard[0] + out_shape[0]]
            if not (with_axis or listed) and value.ndim and value.shape != (*rows_shape, *each_row):
                value = _broadcast_rows(value, (*rows_shape, *each_row))  # one per sequence: (B, 1) for (B, T)
            if value.ndim == 0 or (with_axis and value.shape == out_shape[:1]):
                per_row[spec_input.name] = ("whole", value, value.ndim > 0)
            elif value.shape == (*rows_shape, *each_row):
                per_row[spec_input.name] = ("rows", value.reshape(rows, *each_row), with_axis)
            else:
                wanted = (*rows_shape, *(("K",) if listed else ()), *each_row)
                raise LossInputError(f"{self.name}: {spec_input.name} of shape {value.shape}; expected {wanted}"
                                     + (f" or {out_shape[:1]}" if with_axis and wanted != out_shape[:1] else ""))
        if sample_weight is not None:
            losses = (*rows_shape, *out_shape[1:])
            try:
                weights = np.broadcast_to(np.asarray(sample_weight), losses)
            except ValueError:
                raise LossInputError(f"{self.name}: sample_weight of shape {np.shape(sample_weight)} does not "
                                     f"broadcast to the loss shape {losses}") from None
            per_row["sample_weight"] = ("rows", weights.reshape(rows, *out_shape[1:]), False)
        return per_row

    def _by_rows(self, chunk: "_Chunks", start: int, stop: int):
        """Rows [start, stop) with all their classes at once: the loss's own row kernel on the chunk's
        logits, its gradient written over them. Returns the rows' losses and their mean divisor."""
        shaped = {layer.name: chunk.logits(layer, start, stop, 0, chunk.classes_total) for layer in chunk.layers}
        arguments, weights = chunk.arguments(start, stop, 0, None)
        divisor = self._chunk_normalizer(shaped, arguments, start, chunk.classes_total)
        if not chunk.gradient:
            return self.loss(*self._in_order(shaped, arguments), reduction="none", axis=1,
                             sample_weight=weights), divisor
        extra = chunk.extra is not None
        wrt = self.loss.wrt
        grad_out = shaped[wrt[0]] if len(wrt) == 1 else tuple(shaped[name] for name in wrt)
        part, _, *shown = self.loss.value_and_grad(*self._in_order(shaped, arguments), reduction="none", axis=1,
                                                   sample_weight=weights, grad_out=grad_out, outputs=extra)
        if extra:
            chunk.extra[start:stop] = np.stack(list(shown[0].values()), axis=-1)
        for layer in chunk.differentiated:
            chunk.backward(layer, start, stop, 0, chunk.classes_total, shaped[layer.name])
        return part, divisor

    def _by_blocks(self, chunk: "_Chunks", start: int, stop: int, reuse: "Partials | None" = None):
        """Rows [start, stop) a block of classes at a time (lossdsl.classaxis.blocked): for each level of the
        loss's reductions a sweep computing every block's logits and partials, then the losses from
        the combined partials, then a sweep recomputing each block's logits for its gradient. `reuse`
        keeps the combined partials (values alone) or gives them (the gradient: no sweeps before its own)."""
        classes = chunk.classes_total
        offset, total_classes, all_reduce = self.shard or (0, classes, None)
        listed = [value for name, (kind, value, _) in chunk.per_row.items() if name in self._list_inputs]
        run = BlockRun(self.loss, total_classes, chunk.dtype, outputs=chunk.extra is not None,
                       list_length=listed[0].shape[1] if listed and listed[0].ndim > 1 else 0)
        blocks = [(lo, min(classes, lo + chunk.classes)) for lo in range(0, classes, chunk.classes)]
        logits: dict[str, np.ndarray] = {}

        def call(lo: int, hi: int):
            arguments, weights = chunk.arguments(start, stop, lo, hi)
            logits.update({layer.name: chunk.logits(layer, start, stop, lo, hi) for layer in chunk.layers})
            return run.call({**logits, **arguments}, weights, 1)

        seen = []  # the last block called: the value kernel reads its rows' inputs

        def add_level(level: int, done: np.ndarray) -> np.ndarray:  # this process's blocks, in order
            for lo, hi in blocks:
                seen[:] = [call(lo, hi)]
                run.add_partials(seen[0], offset + lo, done, level)
            return done

        done = reuse.by_start.get(start) if reuse is not None and chunk.gradient else None
        reused = done is not None
        if not reused:
            done = sweep(run.levels, run.levels.empty((stop - start) * chunk.inner), add_level, all_reduce)
            if reuse is not None:
                reuse.by_start[start] = done
        extra = None if chunk.extra is None else chunk.extra[start:stop].reshape((stop - start) * chunk.inner, -1)

        def value(block):
            try:
                return run.value(block, done, extra)
            except LossLabelError as error:
                raise self._label_error(error, start, total_classes) from None

        # the value kernel reads the rows' inputs and the partials, not the logits: any block of the rows serves
        out, norms = (None, None) if reused else value(seen[0] if seen else call(*blocks[0]))
        if chunk.gradient:
            for lo, hi in blocks:
                block = call(lo, hi)
                if norms is None:  # reused partials: the losses (and a label out of range) before any gradient
                    out, norms = value(block)
                run.gradient(block, offset + lo, done, {name: logits[name] for name in self.loss.wrt})
                for layer in chunk.differentiated:
                    chunk.backward(layer, start, stop, lo, hi, logits[layer.name])
        return out, float(norms.sum())

    @staticmethod
    def _chunks(chunk_rows: int | None, chunk_classes: int | None, rows: int, out_shape, dtype: np.dtype,
                blocks_only: bool = False, heads: int = 1):
        """(rows per chunk, classes per block or None for all at once). A chunk's logits (of every head
        together) stay within 1/_CHUNK_SHARE of one head's logits (and 64 MiB); all classes at once while
        that leaves at least _MIN_ROWS rows (or all of them), since the logits are then computed once; else
        blocks of classes for up to _BLOCK_ROWS rows, whose logits are computed once per level and again for
        the gradient."""
        for name, given in (("chunk_rows", chunk_rows), ("chunk_classes", chunk_classes)):
            if given is not None and (not isinstance(given, (int, np.integer)) or isinstance(given, bool)
                                      or given < 1):
                raise LossInputError(f"{name} must be a positive integer; got {given!r}")
        per_class = math.prod(out_shape[1:]) * dtype.itemsize * heads
        budget = min(_CHUNK_BYTES, max(rows * out_shape[0] * per_class // (_CHUNK_SHARE * heads), _SMALL_BYTES))
        if chunk_classes is None and not blocks_only:  # (a slice of the classes always goes in blocks)
            step = chunk_rows or max(1, min(rows, budget // (out_shape[0] * per_class)))
            if chunk_rows is not None or step >= min(rows, _MIN_ROWS):
                return int(step), None
        step = int(chunk_rows or min(rows, _BLOCK_ROWS))
        classes = chunk_classes or max(1, budget // (step * per_class))
        return step, int(min(classes, out_shape[0]))


@dataclasses.dataclass
class Partials:
    """What `LinearHead.values_and_partials` keeps for a second call over the same rows: its chunking, and
    each chunk's whole partials of the loss's reductions over the classes (rows x slots, by first row)."""
    step: int = 0
    classes: int | None = None
    rows: int = 0
    by_start: dict = dataclasses.field(default_factory=dict)

    def matches(self, rows: int, chunk_rows: int | None, chunk_classes: int | None) -> bool:
        return rows == self.rows and chunk_rows is None and chunk_classes is None


def _broadcast_rows(value: np.ndarray, shape: tuple) -> np.ndarray:
    """A per-row input broadcast to the rows' shape as NumPy broadcasts (as on logits), or as it is where it
    does not (the caller's shape check then names it)."""
    try:
        return np.broadcast_to(value, shape) if np.broadcast_shapes(value.shape, shape) == shape else value
    except ValueError:
        return value


@dataclasses.dataclass
class _Layer:
    """One head of a call: its rows (N, D), weight (C x d1 x ... x dK, D) and bias, the dtypes its gradients
    are returned in, whether it is differentiated, its gradients (d input, d weight, d bias) and its
    chunk's logits buffer."""
    name: str  # the spec input its logits are
    x: np.ndarray
    weight: np.ndarray
    bias: np.ndarray | None
    given: tuple
    differentiated: bool
    grads: tuple | None = None
    buffer: np.ndarray | None = None


class _Chunks:
    """A head call's operands and buffers: one chunk's logits are computed here for each head, and the
    chunk's share of the input, weight and bias gradients accumulated (BLAS products, each chunk's weight
    gradient added in place by lossdsl.runtime.blas, so no C x D temporary). With `spread` (BLAS on one
    thread each), every product goes in pieces that lossdsl's threads take in turn (runtime.threads.pull):
    pieces of classes for the logits and the weight gradient, of the input's width for its gradient, so
    each piece writes its own part of the result and no sum depends on which thread took what."""

    def __init__(self, layers: list[_Layer], out_shape, per_row: dict, step: int, classes: int | None, dtype,
                 gradient: bool, extra: np.ndarray | None, spread: bool):
        self.layers, self.out_shape, self.per_row, self.gradient = layers, out_shape, per_row, gradient
        self.differentiated = [layer for layer in layers if layer.differentiated]
        self.extra = extra  # the spec's `output` values, (rows, d1, ..., dK, outputs), when asked for
        self.dtype, self.classes_total = dtype, out_shape[0]
        self.classes = classes if classes is not None else out_shape[0]
        self.inner = math.prod(out_shape[1:])  # the K dimensions after the class axis
        rows = layers[0].x.shape[0]
        self.once = step >= rows  # one chunk: the weight gradient written (BLAS beta = 0), not added to zeros
        self.threads = threads.get_num_threads() if spread else 1
        for layer in layers:
            layer.buffer = np.empty(min(step, rows) * self.classes * self.inner, dtype)

    def _pieces(self, columns: int, work: int, most: int | None = None, per_thread: int = _PIECES_PER_THREAD,
                narrowest: int = _MIN_PIECE_CLASSES) -> list[tuple[int, int]]:
        """[lo, hi) pieces of a product's `columns` outputs, `work` multiply-adds each: `per_thread` for each
        thread to take in turn (none tiny or narrower than `narrowest` but one a thread; one where BLAS keeps
        its own threads), of at most `most` columns."""
        count = min(self.threads * per_thread, max(1, columns * work // _MIN_PIECE_WORK),
                    max(self.threads, columns // narrowest))
        size = -(-columns // count) if self.threads > 1 else columns
        size = max(1, min(size, most or size))
        return [(lo, min(columns, lo + size)) for lo in range(0, columns, size)]

    def logits(self, layer: _Layer, start: int, stop: int, lo: int, hi: int) -> np.ndarray:
        """x[start:stop] @ weight[classes lo..hi].T + bias of one head, as (rows, hi - lo, d1, ..., dK)."""
        columns = slice(lo * self.inner, hi * self.inner)
        out = layer.buffer[:(stop - start) * (hi - lo) * self.inner].reshape(stop - start, (hi - lo) * self.inner)
        x, weight = layer.x[start:stop], layer.weight[columns]
        bias = None if layer.bias is None else layer.bias[columns]
        pieces = self._pieces(out.shape[1], x.size)

        def piece(k: int) -> None:  # the bias first, the product added to it (adding after cost 4-8 % more)
            a, b = pieces[k]
            if bias is not None:
                out[:, a:b] = bias[a:b]
            blas.multiply(out[:, a:b], x, weight[a:b].T, accumulate=bias is not None)

        threads.pull(piece, len(pieces))
        return out.reshape(stop - start, hi - lo, *self.out_shape[1:])

    def arguments(self, start: int, stop: int, lo: int, hi: int | None):
        """The loss's other inputs for rows [start, stop) and classes lo..hi (all with hi None), and the
        rows' sample weights."""
        arguments = {}
        for name, (kind, value, along_axis) in self.per_row.items():
            if kind == "rows":
                value = value[start:stop]
            if along_axis and hi is not None:
                value = value[lo:hi] if kind == "whole" else value[:, lo:hi]
            arguments[name] = value
        return arguments, arguments.pop("sample_weight", None)

    def backward(self, layer: _Layer, start: int, stop: int, lo: int, hi: int, grad: np.ndarray) -> None:
        """Add the gradient of one head's rows [start, stop) x classes lo..hi (in `grad`) to its three gradients."""
        d_input, d_weight, d_bias = layer.grads
        grad = grad.reshape(stop - start, -1)
        columns = slice(lo * self.inner, hi * self.inner)
        x, weight, d_weight = layer.x[start:stop], layer.weight[columns], d_weight[columns]
        d_bias = None if d_bias is None else d_bias[columns]
        rows, width = x.shape
        itemsize = self.dtype.itemsize
        # the input's gradient: each piece reads all of the chunk's gradient, so one piece a thread (narrower
        # pieces measured slower: 8 of 64 columns 27 % more than 2 at (136, 32000) x (32000, 512))
        by_width = self._pieces(width, grad.size, per_thread=1, narrowest=1)
        # the weight gradient's: within BLAS's packing workspace, or NumPy's temporary where it adds
        most = min(_PACKED_BYTES // (rows * itemsize), _BLOCK_BYTES // (width * itemsize) if not blas.in_place()
                   else grad.shape[1])
        by_class = self._pieces(grad.shape[1], x.size, most)

        def piece(k: int) -> None:  # the input's few large pieces first, the weight's small ones fill in after
            if k < len(by_width):
                a, b = by_width[k]
                blas.multiply(d_input[start:stop, a:b], grad, weight[:, a:b], accumulate=lo > 0)
                return
            a, b = by_class[k - len(by_width)]
            blas.multiply(d_weight[a:b], grad[:, a:b].T, x, accumulate=not self.once)
            if d_bias is not None:
                d_bias[a:b] += grad[:, a:b].sum(axis=0, dtype=np.float64)

        threads.pull(piece, len(by_width) + len(by_class))  # one wait for the slowest thread, not two
