"""The multi-label hinge over pairs of classes (PyTorch's MultiLabelMarginLoss), a rows intrinsic.

For each row of scores x over C classes with labels y (the same length, class indices, padded):
T = the labels before the first padding value (a repeated label counts each time, as in PyTorch's
kernel), and the row's value is sum over j in T, i not in T of max(0, 1 - (x[j] - x[i])) / C.
A pair's gradient counts only where its hinge is positive, so the gradient is 0 at the kink,
as PyTorch's backward gives. The sum over pairs of one axis is what the DSL cannot write.

One kernel call per chunk of rows (lossdsl.runtime.threads): per row, the labels are marked in a scratch
mask of C entries (O(C + |T|)), then each label's hinges against every other class are summed
(O(|T| C)); the gradient is written from per-class counts of the active pairs in the same call.
Arrays are (outer, inner, C) views of any strides, a row being (o, i): for a class axis last
(inner = 1) its rows are contiguous and the pair loop vectorises. Every label is checked before any
kernel reads with it.
"""
from __future__ import annotations

import numba
import numpy as np

from ..runtime import threads
from ..errors import LossLabelError


@numba.njit(error_model="numpy", nogil=True, cache=True)
def _multilabel_kernel(start, stop, scores, labels, padding, margin, scales, losses, grad):
    """Rows [start, stop) of scores (outer, inner, C): losses[r] and grad[o, i] = scales[r] * d loss_r /
    d scores[o, i], r = o * inner + i. `margin` (1 in the scores' dtype) makes each hinge round as PyTorch's
    kernel rounds it, (1 - x[j]) + x[i] in that dtype; the hinges are summed in float64, per class first
    (so the pair loop vectorises with no reassociation that could change a hinge's rounding)."""
    inner, classes = scores.shape[1], scores.shape[2]
    outside = np.ones(classes, np.bool_)  # the classes outside the row's label set T
    pairs = np.zeros(classes, np.int64)  # active pairs: +1 a class outside T, -1 a label in T, per pair
    hinges = np.zeros(classes)  # per class outside T, its hinges against the row's labels
    total = 0.0
    for r in range(start, stop):
        o, i = r // inner, r % inner
        x, y, g = scores[o, i], labels[o, i], grad[o, i]
        size = 0
        while size < classes and y[size] != padding:
            outside[y[size]] = False
            size += 1
        for k in range(size):
            j = y[k]
            low = margin - x[j]
            active = 0
            for d in range(classes):  # branch-free: vectorised where a row is contiguous
                z = low + x[d]
                on = (z > 0) & outside[d]
                hinges[d] += z if on else 0.0
                pairs[d] += on
                active += on
            pairs[j] -= active
        step = scales[r] / classes
        hinge = 0.0
        for d in range(classes):
            g[d] = step * pairs[d]
            hinge += hinges[d]
            pairs[d], hinges[d] = 0, 0.0
        losses[r] = hinge / classes
        for k in range(size):
            outside[y[k]] = True
        total += scales[r] * losses[r]
    return total


@numba.njit(nogil=True, cache=True)
def _first_bad_row(labels, classes, padding):
    """The first row r (= o * inner + i) of labels (outer, inner, C) holding a label outside [0, C) that is
    not the padding, and that label's position in the row; (-1, -1) when there is none. One pass, no copies."""
    inner = labels.shape[1]
    for o in range(labels.shape[0]):
        for i in range(inner):
            row = labels[o, i]
            bad = False
            for k in range(row.shape[0]):  # branch-free: vectorised
                bad |= ((row[k] < 0) | (row[k] >= classes)) & (row[k] != padding)
            if bad:
                for k in range(row.shape[0]):
                    if (row[k] < 0 or row[k] >= classes) and row[k] != padding:
                        return o * inner + i, k
    return -1, -1


def check_inputs(name: str, labels, classes: int, padding: int, rows: tuple[int, ...]) -> np.ndarray:
    """labels (outer, inner, C) as int64, every entry (past the first padding too, as PyTorch checks) in
    [0, C) or the padding: else a LossLabelError naming the row (an index of the `rows` shape) and the label,
    before any kernel reads with them."""
    labels = np.asarray(labels).astype(np.int64, copy=False)
    r, k = _first_bad_row(labels, classes, padding)
    if r >= 0:
        o, i = divmod(r, labels.shape[1])
        label = int(labels[o, i, k])
        row = tuple(int(n) for n in np.unravel_index(r, rows)) if rows else ()
        raise LossLabelError(f"{name}: label {label} at row {row} is outside [0, {classes}) and not the padding "
                             f"{padding}", row, label)
    return labels


def forward_backward(scores, labels, padding: int, scales, grad) -> tuple[np.ndarray, float]:
    """Per-row values (float64, outer x inner) and their `scales`-weighted sum; `grad` (outer, inner, C, any
    strides) receives scales[r] * d value_r / d scores. Labels as `check_inputs` returns them."""
    rows = scores.shape[0] * scores.shape[1]
    losses = np.empty(rows, np.float64)
    total = threads.run(_multilabel_kernel, rows, rows * scores.shape[2],
                        (scores, labels, padding, scores.dtype.type(1), np.asarray(scales, np.float64), losses,
                         grad))
    return losses, total
