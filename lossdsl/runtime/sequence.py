"""Stage 5b: the callable loss around an intrinsic — a spec's stages (staging.py) in order, joined by the
chain rule.

    scores --before--> z (T, N, C) --intrinsic--> nll (N,) --after--> per-sequence loss --> reduced
    grad <--before's VJP-- g_z <--intrinsic's gradient, scaled-- d reduced / d nll

`before` and `after` are ordinary compiled losses (a row loss over the class axis, an elementwise loss
over sequences), so weights and reductions are theirs. The intrinsic's kernel weights each sequence's
gradient by a scale it needs before it runs: d(reduced loss)/d nll taken at nll = 0, exact for every
`after` that is affine in nll (the catalogue's all are); a sequence where the derivative at its
actual nll differs is rescaled, or, where the guess was 0, the kernel runs again with the true scales.
SequenceLoss runs a "sequence" intrinsic (CTC); RowLoss, the same stages with a "rows" intrinsic, whose
z has the scores' shape and whose result has one value per row of the class axis.
"""
from __future__ import annotations

import importlib
import math
from types import SimpleNamespace

import numpy as np

from ..errors import LossInputError, LossParameterError
from .layout import HOST, axis_span, by_name, float_dtype, integer_labels
from .protocol import MEANS, REDUCTIONS, LossKind, Signature
from ..frontend.resolve import evaluate
from .loss import memory_for
from ..frontend.staging import SequenceStages

class SequenceLoss:
    """A loss over sequences (CTC, ...). Call it for the value; `value_and_grad` for value and gradient.

    Inputs: the scores (3-D: time, batch and the class axis, placed as the spec's `ragged` and `axis`
    lines say), the labels (2-D padded, or 1-D back to back with their lengths) and the lengths (one
    integer per sequence; optional ones default to the full length, or up to the padding value).
    Unbatched, as in PyTorch: scores without the batch axis (CTC's (T, C)) are one sequence, its labels
    1-D (padded past its length, if longer) and its lengths scalars or one-element arrays.
    Reductions: "mean" (the spec's `mean of` averaged over sequences, else the loss), "sum", "none" and
    "batch" (both one value per sequence; 0-d for unbatched scores). `weight` (a scalar) and
    `sample_weight` (one per sequence) multiply each sequence's loss. The gradient is that of the reduced
    loss with respect to the scores. GPU arrays (or device="cuda") run the intrinsic's CUDA kernel; labels
    and lengths are checked on the host, and the per-sequence stage after the intrinsic runs there (N values).
    """

    def __init__(self, stages: SequenceStages, before, after, mean, reload):
        self._stages, self._reload = stages, reload
        self._before, self._after, self._mean = before, after, mean
        self._values = after.params
        spec, file = stages.spec, stages.spec.file
        index = evaluate(stages.index, self._values, file)
        if isinstance(index, (bool, str)) or not float(index).is_integer():
            raise LossParameterError(f"{spec.name}: the {stages.intrinsic.name} {stages.intrinsic.arguments[2]} must "
                                     f"be a whole number; got {index!r}")
        self._index = int(index)
        self._along = {name: int(evaluate(r.along, self._values, file)) for name, r in stages.ragged.items()}
        self._axis = spec.axis_position[1] if spec.axis_position else -1
        self._cpu = importlib.import_module(f"lossdsl.intrinsics.{stages.intrinsic.cpu}")

    def _cuda(self):
        """The intrinsic's CUDA module (imports numba.cuda: only for a GPU call)."""
        return importlib.import_module(f"lossdsl.intrinsics.{self._stages.intrinsic.cuda}")

    name = property(lambda self: self._stages.spec.name, doc="The loss's name in its spec.")
    doc = property(lambda self: self._stages.spec.doc, doc="The spec's docstring.")
    inputs = property(lambda self: tuple(i.name for i in self._stages.spec.inputs), doc="Input names, in call order.")
    wrt = property(lambda self: (self._stages.scores,), doc="The input the gradient is taken with respect to.")
    params = property(lambda self: dict(self._values), doc="Parameter values of this instance.")

    unit = "sequence"  # what the intrinsic gives one value for

    @property
    def signature(self) -> Signature:
        """The public metadata adapters and the CLI read (lossdsl.runtime.protocol)."""
        spec = self._stages.spec
        return Signature(spec.name, LossKind.SEQUENCE, spec.inputs, self.wrt, dict(self._values),
                         call_inputs=self.inputs)

    def __repr__(self) -> str:
        params = "".join(f", {k}={v!r}" for k, v in self._values.items())
        return f"<lossdsl.{type(self).__name__} {self.name}({', '.join(self.inputs)}{params})>"

    def explain(self, latex: bool = False) -> str:
        """The stages: what the intrinsic's scores are, the intrinsic, and the loss made of its result."""
        stages = self._stages
        parts = []
        if self._before is not None:
            parts.append(f"# before {stages.intrinsic.name}: its scores over the class axis, as "
                         f"sum(upstream*scores): d/d upstream is the scores, d/d {stages.scores} their chain rule\n"
                         + self._before.explain(latex))
        parts.append(f"# intrinsic: {stages.intrinsic.doc}")
        parts.append(f"# after {stages.intrinsic.name}: the loss of one {self.unit}\n" + self._after.explain(latex))
        if self._mean is not None:
            parts.append('# what reduction="mean" averages\n' + self._mean.explain(latex))
        return "\n\n".join(parts)

    def source(self, target: str = "cpu", dtype: str | np.dtype = "float64") -> str:
        """The generated modules of the stages around the intrinsic (its kernel is hand-written:
        lossdsl/intrinsics/)."""
        stages = [s for s in (self._before, self._after, self._mean) if s is not None]
        return "\n\n".join(s.source(target, dtype) for s in stages)

    def with_params(self, **params) -> "SequenceLoss":
        """The same loss with other parameter values."""
        return self._reload({**self._values, **params})

    def __call__(self, *inputs, reduction: str = "mean", weight: float | None = None, sample_weight=None,
                 device: str | None = None, **named_inputs):
        """The loss, reduced as asked."""
        return self._evaluate(inputs, named_inputs, reduction, weight, sample_weight, device, gradient=False)[0]

    def value_and_grad(self, *inputs, reduction: str = "mean", weight: float | None = None, sample_weight=None,
                       device: str | None = None, **named_inputs):
        """(value, d value / d scores), the gradient in the scores' shape and dtype: the true derivative
        with respect to the scores given (for CTC on log-probabilities, -posterior; PyTorch's backward
        gives exp(log_probs) - posterior, which agrees once pushed through a log_softmax)."""
        return self._evaluate(inputs, named_inputs, reduction, weight, sample_weight, device, gradient=True)

    def grad(self, *inputs, **options):
        return self.value_and_grad(*inputs, **options)[1]

    def _evaluate(self, inputs, named_inputs, reduction, weight, sample_weight, device, gradient: bool):
        call = self._prepare(inputs, named_inputs, reduction, device)
        memory, dtype, units = call.memory, call.dtype, math.prod(call.units)
        after = self._mean if reduction in MEANS and self._mean is not None else self._after
        per_unit = [call.lengths[name] for name in after.inputs[1:]]  # after's inputs: the result, lengths

        def reduced(results):
            value, scales = after.value_and_grad(results.reshape(call.units), *per_unit, reduction=reduction,
                                                 weight=weight, sample_weight=memory.to_host(sample_weight))
            return value, np.asarray(scales, np.float64).reshape(units)

        guess = reduced(np.zeros(units))[1] if gradient else np.ones(units)
        grad = memory.empty(call.z.size, dtype).reshape(call.z.shape)
        results = call.run(guess, grad)
        value, scales = reduced(results)
        value = np.asarray(value).astype(dtype) if reduction in ("none", "batch") else dtype.type(value)
        if call.unbatched and reduction in ("none", "batch"):
            value = value.reshape(())
        if not gradient:
            return memory.result(value, call), None
        changed = np.isfinite(results) & (scales != guess)
        if memory is not HOST or np.any(changed & (guess == 0)):
            if np.any(changed):
                call.run(scales, grad)
        elif np.any(changed):
            factors = np.ones(units)
            factors[changed] = scales[changed] / guess[changed]
            grad *= factors.astype(dtype).reshape(call.unit_shape)
        if self._before is not None:  # the chain rule through the scores expression
            grad = self._before.value_and_grad(call.scores, grad, axis=call.axis, reduction="sum",
                                               device=device)[1][0]
        if grad.shape != call.given.shape:  # unbatched: without the batch axis the call added
            grad = grad.reshape(call.given.shape)
        return memory.result(value, call), memory.result(grad, call)

    def _kernel(self, memory):
        """The intrinsic's forward_backward for arrays in `memory` (its CUDA module's for GPU arrays)."""
        return self._cpu.forward_backward if memory is HOST else self._cuda().forward_backward_cuda

    def _scores(self, inputs, named_inputs, reduction: str, device):
        """(memory, arrays by input, the scores as given, the call's dtype, the scores in it): what every call
        starts with."""
        if reduction not in REDUCTIONS[LossKind.SEQUENCE]:
            raise LossInputError(f"{self.name}: reduction must be one of {', '.join(REDUCTIONS[LossKind.SEQUENCE])}; "
                                 f"got {reduction!r}")
        memory = memory_for([*inputs, *named_inputs.values()], device)
        arrays = self._gather(inputs, named_inputs, memory)
        given = arrays[self._stages.scores]
        if given.dtype.kind != "f":
            raise LossInputError(f"{self.name}: {self._stages.scores} must be a float array; got {given.dtype}")
        dtype = float_dtype([given], [self._stages.scores]) if memory is HOST else given.dtype
        return memory, arrays, given, dtype, given.astype(dtype, copy=False) if memory is HOST else given

    def _prepare(self, inputs, named_inputs, reduction: str, device) -> SimpleNamespace:
        """Inputs gathered and checked, the intrinsic's scores z computed and viewed as (T, N, C); what
        _evaluate needs: z, its class axis, the units (sequences) and how to run the kernel on them."""
        memory, arrays, given, dtype, scores = self._scores(inputs, named_inputs, reduction, device)
        stages = self._stages
        if given.ndim not in (2, 3):
            raise LossInputError(f"{self.name}: {stages.scores} must be a float array with 3 axes (time, batch, "
                                 f"classes), or 2 for one sequence; got {given.dtype} {given.shape}")
        order = self._order(3)
        unbatched = given.ndim == 2
        if unbatched:  # PyTorch's unbatched form: a batch of one, its axis where the spec's layout has it
            scores = scores.reshape(given.shape[:order[1]] + (1,) + given.shape[order[1]:])
        z = scores
        if self._before is not None:  # z = the scores expression: d/d upstream of sum(upstream*z, c)
            upstream = memory.zeros(scores.shape, dtype)
            z = self._before.value_and_grad(scores, upstream, axis=order[2], reduction="sum", device=device)[1][1]
        z_tnc = memory.transpose(z, order)
        batch = z_tnc.shape[1]
        labels, label_lengths = self._labels(arrays, batch, unbatched)
        time_lengths = self._lengths(arrays, stages.scores, z_tnc.shape[0], batch)
        blank = self._index + z_tnc.shape[2] if self._index < 0 else self._index
        checked = self._cpu.check_inputs(z_tnc, labels, time_lengths, label_lengths, blank)
        lengths = {stages.ragged[stages.scores].lengths: checked[1], stages.ragged[stages.labels].lengths: checked[2]}
        kernel = self._kernel(memory)
        unit_shape = [1, 1, 1]
        unit_shape[order[1]] = batch

        def run(scales, grad):  # grad in z's layout, seen as (T, N, C) by the kernel
            return kernel(z_tnc, *checked, blank, scales, False, memory.transpose(grad, order))[0]

        # `given`: results come back as the kind of array the scores came as (memory.result reads it)
        return SimpleNamespace(memory=memory, given=given, dtype=dtype, scores=scores, z=z, axis=order[2],
                               units=(batch,), unit_shape=tuple(unit_shape), unbatched=unbatched, lengths=lengths,
                               run=run)

    def sample_inputs(self, seed: int = 0, sequences: int = 4, steps: int = 9, classes: int = 5,
                      longest: int = 3) -> list[np.ndarray]:
        """Random inputs in this loss's layout (for the gradient checker): scores, labels that are never
        the blank (padded where the spec pads), lengths an alignment fits, all inputs given."""
        rng = np.random.default_rng(seed)
        stages = self._stages
        time, batch, axis = self._order(3)
        shape = [0, 0, 0]
        shape[time], shape[batch], shape[axis] = steps, sequences, classes
        blank = self._index % classes
        labels = rng.choice([c for c in range(classes) if c != blank], (sequences, longest))
        label_lengths = rng.integers(0, longest + 1, sequences)
        label_lengths[0] = longest
        labels[0, :2] = labels[0, 0]  # a repeated label needs a blank between
        padding = stages.ragged[stages.labels].padding
        if padding is not None:
            labels[np.arange(longest) >= label_lengths[:, None]] = padding
        given = {stages.scores: rng.normal(0.0, 2.0, shape),
                 stages.labels: labels.T if self._along[stages.labels] % 2 == 0 else labels,
                 stages.ragged[stages.scores].lengths: rng.integers(2 * longest + 1, steps + 1, sequences),
                 stages.ragged[stages.labels].lengths: label_lengths}
        return [given[name] for name in self.inputs]

    def _order(self, ndim: int) -> tuple[int, int, int]:
        """The scores' (time, batch, class) axes."""
        classes = self._axis % ndim
        time = self._along[self._stages.scores] % ndim
        if time == classes:
            raise LossParameterError(f"{self.name}: the time axis and the class axis are both axis {time}")
        return time, 3 - time - classes, classes

    def _labels(self, arrays, batch: int, unbatched: bool) -> tuple[np.ndarray, np.ndarray]:
        """Labels as (N, S) padded or 1-D back to back, and their lengths (derived when left out).
        Unbatched scores (one sequence) take one row of labels: 1-D, or 2-D with one row."""
        stages = self._stages
        ragged = stages.ragged[stages.labels]
        labels = integer_labels(self.name, stages.labels, arrays[stages.labels])
        if labels.ndim == 2 and self._along[stages.labels] % 2 == 0:
            labels = labels.T  # (S, N) → (N, S)
        if unbatched and labels.ndim == 1:
            labels = labels[None]  # one sequence: its labels padded or not, read up to its length
        elif unbatched and labels.ndim == 2 and labels.shape[0] != 1:
            raise LossInputError(f"{self.name}: {stages.scores} of shape {arrays[stages.scores].shape} is one "
                                 f"sequence, but {stages.labels} of shape {arrays[stages.labels].shape} hold "
                                 f"{labels.shape[0]} sequences; a batch's {stages.scores} have 3 axes (time, batch, "
                                 "classes)")
        if labels.ndim not in (1, 2):
            raise LossInputError(f"{self.name}: {stages.labels} must be 2-D (padded) or 1-D (back to back); got "
                                 f"shape {labels.shape}")
        given = arrays.get(ragged.lengths)
        if given is None and labels.ndim == 1:
            raise LossInputError(f"{self.name}: labels back to back (1-D) need {ragged.lengths}")
        if given is None and ragged.padding is not None:
            padding = labels == ragged.padding
            return labels, np.where(padding.any(axis=1), padding.argmax(axis=1), labels.shape[1])
        return labels, self._lengths(arrays, stages.labels, labels.shape[-1], batch)

    def _lengths(self, arrays, ragged_input: str, full: int, batch: int) -> np.ndarray:
        name = self._stages.ragged[ragged_input].lengths
        given = arrays.get(name)
        return np.full(batch, full, np.int64) if given is None else integer_labels(self.name, name, given).reshape(-1)

    def _gather(self, inputs, named_inputs, memory) -> dict:
        required = [i.name for i in self._stages.spec.inputs if not i.optional]
        given = by_name(self.name, self.inputs, required, inputs, named_inputs)
        arrays = {name: None if value is None else memory.gather(value) for name, value in given.items()}
        scores = self._stages.scores  # labels and lengths are checked on the host: copied there
        return {name: a if name == scores or a is None else np.asarray(memory.to_host(a)) for name, a in arrays.items()}


class RowLoss(SequenceLoss):
    """A loss around a "rows" intrinsic (multilabel_hinge, ...): one value per row of the class axis.

    Inputs: the scores, of any shape, their class axis where the spec's `axis` line says (else the last;
    `axis=` at call time, an int or a run of adjacent axes, as for other losses over an axis: `axis` is a
    reserved word, never an input's name), and the labels, of the scores' shape, padded with the value the
    spec passes the intrinsic. Scores without a row axis (1-D) are one row, as PyTorch's unbatched form:
    "none" and "batch" then give a 0-d array. Reductions, `weight` and `sample_weight` (the rows' shape)
    as for sequences; "mean" averages over rows. GPU arrays run the intrinsic's CUDA kernel; labels are
    checked on the host.
    """

    unit = "row"

    def _prepare(self, inputs, named_inputs, reduction: str, device) -> SimpleNamespace:
        """Inputs gathered and checked (every label before any kernel reads with it), the intrinsic's scores z
        computed in the scores' shape; the kernel sees z, the labels and the gradient as (outer, inner, C)."""
        named_inputs = dict(named_inputs)
        axis = named_inputs.pop("axis", None)
        memory, arrays, given, dtype, scores = self._scores(inputs, named_inputs, reduction, device)
        stages = self._stages
        if given.ndim == 0:
            raise LossInputError(f"{self.name}: {stages.scores} needs the class axis; got a scalar")
        shape = tuple(given.shape)
        first, last = axis_span(self.name, shape, axis, self._axis)
        outer, classes, inner = math.prod(shape[:first]), math.prod(shape[first:last + 1]), math.prod(shape[last + 1:])
        if classes == 0:
            raise LossInputError(f"{self.name}: the class axis of {stages.scores} {shape} is empty")
        labels = arrays[stages.labels]
        if labels.shape != shape:
            raise LossInputError(f"{self.name}: {stages.labels} of shape {labels.shape} must have the shape of "
                                 f"{stages.scores}, {shape}")
        rows = shape[:first] + shape[last + 1:]

        def as_rows(array):  # (outer, inner, C) views: no copy of a contiguous array
            return memory.transpose(array.reshape(outer, classes, inner), (0, 2, 1))

        labels = as_rows(integer_labels(self.name, stages.labels, labels))
        labels = self._cpu.check_inputs(self.name, labels, classes, self._index, rows)
        class_axis = first if first == last else tuple(range(first, last + 1))
        z = scores
        if self._before is not None:  # z = the scores expression: d/d upstream of sum(upstream*z, c)
            upstream = memory.zeros(shape, dtype)
            z = self._before.value_and_grad(scores, upstream, axis=class_axis, reduction="sum", device=device)[1][1]
        z_rows = as_rows(z)
        kernel = self._kernel(memory)

        def run(scales, grad):
            return kernel(z_rows, labels, self._index, scales, as_rows(grad))[0]

        unit_shape = shape[:first] + (1,) * (last + 1 - first) + shape[last + 1:]  # a row's factor on its classes
        return SimpleNamespace(memory=memory, given=given, dtype=dtype, scores=scores, z=z, axis=class_axis,
                               units=rows or (1,), unit_shape=unit_shape, unbatched=not rows, lengths={}, run=run)

    def sample_inputs(self, seed: int = 0, rows: int = 6, classes: int = 5) -> list[np.ndarray]:
        """Random inputs in this loss's layout (for the gradient checker): scores (rows, classes), and labels
        padded where each row's set ends: one row without labels, one with every class, one repeating a label."""
        rng = np.random.default_rng(seed)
        labels = np.full((rows, classes), self._index, np.int64)
        for r in range(rows):
            size = 0 if r == 0 else classes if r == 1 else int(rng.integers(1, classes))
            labels[r, :size] = rng.permutation(classes)[:size]
        labels[2, 1] = labels[2, 0]
        scores = rng.normal(0.0, 2.0, (rows, classes))
        given = {self._stages.scores: scores, self._stages.labels: labels}
        return [given[name] for name in self.inputs]
