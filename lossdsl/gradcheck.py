"""Check a compiled loss's derived gradient against central finite differences.

Inputs are sampled in float64 from the domains the spec declares. Points where
the loss has a kink (one-sided differences disagree) or is not finite are
counted and skipped: there the derivative is a convention, checked by the
catalogue's tests against PyTorch instead.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .frontend.ir import Domain
from .classaxis.heads import LinearHead
from .runtime.loss import Loss
from .runtime.preference import PreferenceLoss
from .runtime.sequence import SequenceLoss


@dataclass(frozen=True)
class GradCheckRow:
    input: str
    checked: int
    kinks: int
    nonfinite: int
    max_abs_error: float
    max_rel_error: float

    @property
    def passed(self) -> bool:
        return self.checked > 0 and self.max_rel_error <= 1e-4


def sample(domain: Domain, rng: np.random.Generator, size: int) -> np.ndarray:
    """Values inside `domain`, away from its boundaries."""
    if domain.choices is not None:
        return rng.choice(np.array(domain.choices, dtype=np.float64), size)
    low, high = domain.low, domain.high
    if np.isfinite(low) and np.isfinite(high):
        margin = 0.05 * (high - low)
        return rng.uniform(low + margin, high - margin, size)
    if np.isfinite(low):
        return low + rng.uniform(0.1, 3.0, size)
    if np.isfinite(high):
        return high - rng.uniform(0.1, 3.0, size)
    return rng.normal(0.0, 2.0, size)


def sample_inputs(loss: Loss, points: int = 256, seed: int = 0, classes: int = 5) -> list[np.ndarray]:
    """Random inputs inside the spec's domains: `points` elements, or rows of `classes` positions
    along the last axis with labels in range (a list axis: min(3, classes) positions, its labels distinct
    classes of the row); optional inputs are left out."""
    rng = np.random.default_rng(seed)
    spec = loss.signature
    listed = min(3, classes)
    inputs = []
    for spec_input in spec.inputs:
        if spec_input.default is not None:
            break  # optional inputs keep their defaults
        along_list = spec_input.axis is not None and spec_input.axis == spec.list_axis
        if spec_input.name in spec.labels and along_list:
            inputs.append(np.stack([rng.permutation(classes)[:listed] for _ in range(points)]))
        elif spec_input.name in spec.labels:
            inputs.append(rng.integers(0, classes, points))
        else:
            shape = (points, listed) if along_list else (points, classes) if spec_input.axis else (points,)
            inputs.append(sample(spec_input.domain, rng, int(np.prod(shape))).reshape(shape))
    return inputs


def check(loss: Loss | SequenceLoss | LinearHead | PreferenceLoss, points: int = 256, seed: int = 0,
          classes: int = 5) -> list[GradCheckRow]:
    """One row per differentiated input: how the kernel's gradient compares with finite differences.

    A loss over a named axis is checked on `points` rows of `classes` positions (labels drawn
    in range), one position at a time: rows are independent, so one shifted call checks a column.
    A sequence loss is checked at every score of a few short sequences (its own sample_inputs), a
    linear head by its row loss (the logits' gradient; tests check the products against PyTorch), a
    preference loss at every logit of a few short sequences of a policy (through the token log-probabilities,
    the masked sums over the tokens and the sequence formula).
    """
    if isinstance(loss, SequenceLoss):
        return [_compare_sequence(loss, loss.sample_inputs(seed, classes=classes))]
    if isinstance(loss, PreferenceLoss):
        return [_compare_preference(loss, seed, classes)]
    if isinstance(loss, LinearHead):  # its derived gradient is the row loss's; the rest is BLAS products
        loss = loss.loss
    options = {"axis": -1} if loss.signature.axis else {}
    inputs = sample_inputs(loss, points, seed, classes)
    grads = loss.grad(*inputs, reduction="none", **options)
    grads = grads if isinstance(grads, tuple) else (grads,)
    return [_compare(loss, inputs, loss.inputs.index(name), grad, options) for name, grad in zip(loss.wrt, grads)]


def _compare(loss: Loss, inputs: list[np.ndarray], index: int, grad: np.ndarray, options: dict) -> GradCheckRow:
    x = inputs[index]
    h = 1e-6 * np.maximum(1.0, np.abs(x))

    def at(shift):
        shifted = list(inputs)
        shifted[index] = x + shift
        return loss(*shifted, reduction="none", **options)

    f0 = at(0.0)
    columns = [np.ones(x.shape, bool)] if x.ndim == 1 else [np.arange(x.shape[1]) == j for j in range(x.shape[1])]
    errors, scales, kinks, nonfinite = [], [], 0, 0
    for column in columns:
        step = np.where(column, h, 0.0)
        f_plus, f_minus = at(step), at(-step)
        step_of_row, g = (step.max(axis=-1), grad[:, column][:, 0]) if x.ndim > 1 else (h, grad)
        central = (f_plus - f_minus) / (2 * step_of_row)
        right, left = (f_plus - f0) / step_of_row, (f0 - f_minus) / step_of_row
        finite = np.isfinite(g) & np.isfinite(central) & np.isfinite(f0)
        scale = np.maximum(1.0, np.abs(central))
        kink = finite & (np.abs(right - left) > 1e-3 * scale)
        good = finite & ~kink
        errors.append(np.abs(g - central)[good])
        scales.append(scale[good])
        kinks += int(kink.sum())
        nonfinite += int((~finite).sum())
    error, scale = np.concatenate(errors), np.concatenate(scales)
    return GradCheckRow(loss.inputs[index], int(error.size), kinks, nonfinite, float(error.max(initial=0.0)),
                        float((error / scale).max(initial=0.0)))


def _compare_sequence(loss: SequenceLoss, inputs: list[np.ndarray]) -> GradCheckRow:
    """Central differences of the summed loss, one score at a time."""
    index = loss.inputs.index(loss.wrt[0])
    x = inputs[index]

    def value(scores):
        return float(loss(*inputs[:index], scores, *inputs[index + 1:], reduction="sum"))

    return _compare_everywhere(loss.wrt[0], x, loss.grad(*inputs, reduction="sum"), value)


def _compare_preference(loss: PreferenceLoss, seed: int, classes: int, pairs: int = 3,
                        tokens: int = 4) -> GradCheckRow:
    """Central differences of the reduced loss at every logit of `pairs` pairs (or twice as many unpaired
    sequences) of `tokens` tokens: the first token a prompt (-100), one sequence padded at the end, one of a
    single token; the sequence loss's other inputs sampled from their domains, one per pair (sequence)."""
    rng = np.random.default_rng(seed)
    rows = 2 * pairs
    logits = rng.normal(0.0, 2.0, (rows, tokens, classes))
    labels = rng.integers(0, classes, (rows, tokens))
    labels[:, 0] = loss.ignore_index
    mask = np.ones((rows, tokens))
    mask[1, -1] = 0
    mask[-1, 2:] = 0
    per = pairs if loss.paired else rows
    named = {i.name: sample(i.domain, rng, per) for i in loss.pair.signature.inputs if i.name not in loss.pair.wrt}
    # a reference policy's log-probabilities (ref_*) near the policy's own, where the formulas have slope
    named = {k: v - 3.0 * tokens if k.startswith("ref_") else v for k, v in named.items()}

    def value(x):
        return float(loss(x, labels, mask=mask, **named))

    return _compare_everywhere("logits", logits, loss.value_and_grad(logits, labels, mask=mask, **named)[1], value)


def _compare_everywhere(name: str, x: np.ndarray, grad: np.ndarray, value) -> GradCheckRow:
    """`grad` against central differences of `value(x)`, one element of `x` at a time."""
    def at(position, shift):
        shifted = x.copy()
        shifted[position] += shift
        return value(shifted)

    f0 = value(x)
    errors, scales, kinks, nonfinite = [], [], 0, 0
    for position in np.ndindex(x.shape):
        h = 1e-6 * max(1.0, abs(x[position]))
        f_plus, f_minus = at(position, h), at(position, -h)
        central = (f_plus - f_minus) / (2 * h)
        if not (np.isfinite(central) and np.isfinite(grad[position])):
            nonfinite += 1
        elif abs((f_plus - f0) - (f0 - f_minus)) / h > 1e-3 * max(1.0, abs(central)):
            kinks += 1
        else:
            errors.append(abs(grad[position] - central))
            scales.append(max(1.0, abs(central)))
    error, scale = np.array(errors), np.array(scales)
    return GradCheckRow(name, int(error.size), kinks, nonfinite, float(error.max(initial=0.0)),
                        float((error / scale).max(initial=0.0)))


def format_table(loss: Loss | SequenceLoss | PreferenceLoss, rows: list[GradCheckRow]) -> str:
    lines = [f"gradient check of {loss.name} (float64, central differences)",
             f"{'input':<12}{'points':>8}{'kinks':>8}{'nonfinite':>11}{'max abs err':>14}{'max rel err':>14}  result"]
    for r in rows:
        lines.append(f"{r.input:<12}{r.checked:>8}{r.kinks:>8}{r.nonfinite:>11}{r.max_abs_error:>14.2e}"
                     f"{r.max_rel_error:>14.2e}  {'pass' if r.passed else 'FAIL'}")
    return "\n".join(lines)
