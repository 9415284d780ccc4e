"""Linear + loss heads: any loss over a class axis fused with the linear layer before it.

A language model's loss reads logits = input @ linear_weight.T + linear_bias, (N, C) with C the
vocabulary: 32768 x 128256 float32 logits are 16 GB before their gradient. A head never holds
them: it takes a chunk of rows at a time, computes that chunk's logits with a BLAS product into a
reused buffer, runs the spec's compiled row kernel on it (value and gradient in one pass, the
gradient written over the logits), and adds the chunk's share of the input, weight and bias
gradients (more BLAS products; the weight gradient a block of classes at a time, so no C x D
temporary either). Extra memory: one chunk x C buffer and a small block. "mean" divides by the
spec's normaliser summed over every chunk (rows kept, or their class weights), as the unfused
loss does.
"""
from __future__ import annotations

import math

import numpy as np

from .errors import LossInputError
from .layout import LOW_PRECISION, by_name, float_dtype

_BLOCK_BYTES = 2 << 20  # the weight gradient's temporary: a block of classes x D
_CHUNK_SHARE = 25  # a chunk holds at most 1/25 of the rows: its buffer stays within 4 % of the logits
_CHUNK_BYTES = 64 << 20  # and at most this much per buffer, however many rows there are


class LinearHead:
    """`loss.with_linear()`: call with (input (..., D), linear_weight (C, D), the loss's other inputs,
    linear_bias=(C,) or None); options reduction ("mean", "sum", "none"), sample_weight (one per row)
    and chunk_rows (rows per chunk; chosen from N and C when left out). `value_and_grad` returns
    (value, (d input, d linear_weight)), and d linear_bias third when a bias is given. As in PyTorch,
    linear_weight (C, d1, ..., dK, D) gives K-dimensional logits (N, C, d1, ..., dK), the class axis 1,
    with targets (N, d1, ..., dK). Scalar `weight` is not an option here: PyTorch's heads name the
    class weights so.
    """

    def __init__(self, loss, chunk_rows: int | None = None):
        resolved = getattr(loss, "_resolved", None)
        if resolved is None or resolved.axis is None or resolved.axis_position == "all":
            raise LossInputError(f"{loss.name}: a linear head needs a loss over a class axis (logits[c])")
        first = resolved.inputs[0]
        if first.axis is None or resolved.wrt != (first.name,):
            raise LossInputError(f"{loss.name}: a linear head needs the logits as the first input, the only one "
                                 "differentiated")
        self.loss = loss
        self.chunk_rows = chunk_rows
        self._others = resolved.inputs[1:]

    name = property(lambda self: self.loss.name)
    doc = property(lambda self: self.loss.doc)
    params = property(lambda self: self.loss.params)
    inputs = property(lambda self: ("input", "linear_weight", *(i.name for i in self._others), "linear_bias"))
    wrt = ("input", "linear_weight", "linear_bias")

    def __repr__(self) -> str:
        return f"<lossdsl.LinearHead {self.loss!r}>"

    def explain(self, latex: bool = False) -> str:
        return ("# logits = input @ linear_weight.T + linear_bias, a chunk of rows at a time\n"
                + self.loss.explain(latex))

    def source(self, target: str = "cpu", dtype: str | np.dtype = "float64") -> str:
        """The row kernel's generated module (the linear layer's products are NumPy's BLAS calls)."""
        return self.loss.source(target, dtype)

    def with_params(self, **params) -> "LinearHead":
        return LinearHead(self.loss.with_params(**params), self.chunk_rows)

    def __call__(self, input, linear_weight, *inputs, linear_bias=None, reduction: str = "mean",
                 sample_weight=None, chunk_rows: int | None = None, **named_inputs):
        return self._run(input, linear_weight, inputs, named_inputs, linear_bias, reduction, sample_weight,
                         chunk_rows, gradient=False)[0]

    def value_and_grad(self, input, linear_weight, *inputs, linear_bias=None, reduction: str = "mean",
                       sample_weight=None, chunk_rows: int | None = None, **named_inputs):
        return self._run(input, linear_weight, inputs, named_inputs, linear_bias, reduction, sample_weight,
                         chunk_rows, gradient=True)

    def _run(self, input, linear_weight, inputs, named_inputs, linear_bias, reduction, sample_weight, chunk_rows,
             gradient: bool):
        if reduction not in ("mean", "sum", "none"):
            raise LossInputError(f"{self.name}: reduction must be 'mean', 'sum' or 'none'; got {reduction!r}")
        x, weight, bias = (None if a is None else np.asarray(a) for a in (input, linear_weight, linear_bias))
        dtype = float_dtype([x, weight], ["input", "linear_weight"])
        # gradients in the dtype of what they differentiate (float16 and bfloat16 are computed in float32)
        given = [a.dtype if a is not None and a.dtype.name in LOW_PRECISION else dtype for a in (x, weight, bias)]
        if weight.ndim < 2 or x.ndim < 1 or x.shape[-1] != weight.shape[-1]:
            raise LossInputError(f"{self.name}: input (..., D) and linear_weight (C, ..., D) do not fit: {x.shape} "
                                 f"and {weight.shape}")
        out_shape, width = weight.shape[:-1], weight.shape[-1]  # (C, d1, ..., dK): PyTorch's K-dimensional loss
        outputs = math.prod(out_shape)
        if bias is not None and bias.shape != out_shape:
            raise LossInputError(f"{self.name}: linear_bias must have shape {out_shape}; got {bias.shape}")
        rows_shape = x.shape[:-1]
        rows = math.prod(rows_shape)
        x = np.ascontiguousarray(x.reshape(rows, width), dtype)
        weight = np.ascontiguousarray(weight.reshape(outputs, width), dtype)
        bias = None if bias is None else bias.reshape(outputs).astype(dtype, copy=False)
        per_row = self._per_row(inputs, named_inputs, sample_weight, rows_shape, rows, out_shape)
        step = self._chunk(self.chunk_rows if chunk_rows is None else chunk_rows, rows, outputs, dtype)
        logits = np.empty((min(step, rows), outputs), dtype)
        values = np.empty((rows, *out_shape[1:]), dtype) if reduction == "none" else None
        d_input = np.empty_like(x) if gradient else None
        d_weight = np.zeros_like(weight) if gradient else None
        d_bias = np.zeros(outputs, np.float64) if gradient and bias is not None else None
        block = max(1, min(outputs, _BLOCK_BYTES // (width * dtype.itemsize)))
        scratch = np.empty((block, width), dtype) if gradient else None
        total, normalizer = 0.0, 0.0
        for start in range(0, rows, step):
            stop = min(rows, start + step)
            chunk = logits[:stop - start]
            np.matmul(x[start:stop], weight.T, out=chunk)
            if bias is not None:
                chunk += bias
            arguments = {name: value if kind == "whole" else value[start:stop] for name, (kind, value) in
                         per_row.items()}
            weights = arguments.pop("sample_weight", None)
            shaped = chunk.reshape(stop - start, *out_shape)  # the class axis is axis 1, as PyTorch has it
            if reduction == "mean":
                normalizer += self.loss.normalizer(shaped, *arguments.values(), axis=1)
            if gradient:  # the gradient overwrites the logits
                part, _ = self.loss.value_and_grad(shaped, *arguments.values(), reduction="none", axis=1,
                                                   sample_weight=weights, grad_out=shaped)
            else:
                part = self.loss(shaped, *arguments.values(), reduction="none", axis=1, sample_weight=weights)
            total += float(np.sum(part, dtype=np.float64))
            if values is not None:
                values[start:stop] = part
            if gradient:
                g = chunk
                np.matmul(g, weight, out=d_input[start:stop])
                for low in range(0, outputs, block):
                    high = min(outputs, low + block)
                    np.matmul(g[:, low:high].T, x[start:stop], out=scratch[:high - low])
                    d_weight[low:high] += scratch[:high - low]
                if d_bias is not None:
                    d_bias += g.sum(axis=0, dtype=np.float64)
        if reduction == "none":
            value = values.reshape(*rows_shape, *out_shape[1:])
        elif reduction == "sum":
            value = dtype.type(total)
        else:  # every row ignored: NaN, as PyTorch
            value = dtype.type(total / normalizer if normalizer else np.nan)
        if not gradient:
            return value, None
        if reduction == "mean":
            scale = dtype.type(1.0 / normalizer) if normalizer else dtype.type(np.nan)
            d_input *= scale
            d_weight *= scale
            d_bias = None if d_bias is None else d_bias * float(scale)
        grads = (d_input.reshape(*rows_shape, width).astype(given[0], copy=False),
                 d_weight.reshape(*out_shape, width).astype(given[1], copy=False))
        if d_bias is None:
            return value, grads
        return value, (*grads, d_bias.reshape(out_shape).astype(given[2], copy=False))

    def _per_row(self, inputs, named_inputs, sample_weight, rows_shape, rows: int, out_shape) -> dict:
        """The loss's other inputs by name: ("rows", an array with one entry or row per logits row) to be
        sliced with each chunk, or ("whole", a value) for per-class vectors, scalars and defaults."""
        given = by_name(self.name, [i.name for i in self._others], [i.name for i in self._others if i.default is None],
                        inputs, named_inputs)
        per_row = {}
        for spec_input in self._others:
            value = given.get(spec_input.name)
            if value is None:
                per_row[spec_input.name] = ("whole", np.asarray(spec_input.default))
                continue
            value = np.asarray(value)
            with_axis = spec_input.axis is not None
            each_row = out_shape if with_axis else out_shape[1:]  # a row's (C, d1, ...) or (d1, ...)
            if value.ndim == 0 or (with_axis and value.shape == out_shape[:1]):
                per_row[spec_input.name] = ("whole", value)
            elif value.shape == (*rows_shape, *each_row):
                per_row[spec_input.name] = ("rows", value.reshape(rows, *each_row))
            else:
                wanted = (*rows_shape, *each_row)
                raise LossInputError(f"{self.name}: {spec_input.name} of shape {value.shape}; expected {wanted}"
                                     + (f" or {out_shape[:1]}" if with_axis else ""))
        if sample_weight is not None:
            weights = np.broadcast_to(np.asarray(sample_weight), (*rows_shape, *out_shape[1:]))
            per_row["sample_weight"] = ("rows", weights.reshape(rows, *out_shape[1:]))
        return per_row

    @staticmethod
    def _chunk(chunk_rows: int | None, rows: int, classes: int, dtype: np.dtype) -> int:
        if chunk_rows is not None:
            if not isinstance(chunk_rows, (int, np.integer)) or chunk_rows < 1:
                raise LossInputError(f"chunk_rows must be a positive integer; got {chunk_rows!r}")
            return int(chunk_rows)
        by_bytes = max(1, _CHUNK_BYTES // (classes * dtype.itemsize))
        return max(1, min(rows, by_bytes, max(8, rows // _CHUNK_SHARE)))
