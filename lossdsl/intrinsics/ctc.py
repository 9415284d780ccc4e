"""Connectionist Temporal Classification: the forward-backward dynamic program in log space.

`ctc_value_and_grad` follows torch.nn.functional.ctc_loss's conventions (log_probs (T, N, C),
targets padded (N, S) or concatenated 1-D, blank index, reductions "mean" (each sequence divided
by its target length, at least 1, then the batch mean), "sum", "none", and zero_infinity), but
its gradient is the true derivative of the loss with respect to the log_probs it was given,
-posterior(t, c). PyTorch's backward returns exp(log_probs) - posterior instead; the two agree
once pushed back through a log_softmax, which is what a training loop does.

One kernel call per chunk of sequences (lossdsl.runtime.threads): the alpha and beta recursions over the
extended label sequence (blanks interleaved, 2S + 1 states), O(T x (2S + 1)) scratch per
sequence, the sequence's gradient written in the same call. Every length and label is checked
before any kernel runs.
"""
from __future__ import annotations

import math

import numba
import numpy as np

from ..runtime import buffers, threads
from ..errors import LossInputError
from ..runtime.kernel_math import exp_float64, log_float64

_NEG = -np.inf
_FLOOR = -40.0  # e^x below e^-40 vanishes when added to 1: exps clamped there never compute slow subnormals
_NEGLIGIBLE = -700.0  # posteriors below e^-700 (~1e-304) are written as 0, for the same reason


@numba.njit(inline="always", error_model="numpy")
def _logsumexp3(a, b, c):
    """log(e^a + e^b + e^c), -inf when all three are, NaN when one is; no branches (vectorisable). The largest
    term is e^0 = 1, so two exps and one log."""
    high, low = max(a, b), min(a, b)
    top = max(high, c)
    finite = top > _NEG
    shift = top if finite else 0.0
    total = 1.0 + exp_float64(max(low - shift, _FLOOR)) + exp_float64(max(min(high, c) - shift, _FLOOR))
    result = top + log_float64(total) if finite else _NEG
    return np.nan if math.isnan(a) | math.isnan(b) | math.isnan(c) else result  # max and min may drop a NaN


@numba.njit(inline="always")
def _band(t, length, states):
    """The states [low, high) on some alignment at step t: reached from the start (s < 2t + 2) and still
    reaching the end by step length - 1 (s >= states - 2 (length - t)). Rows are computed there only; alpha
    below the band keeps stale values, which nothing reads (the next band starts two states higher)."""
    return max(0, states - 2 * (length - t)), min(states, 2 * t + 2)


# The row loops are functions of their own, indexed from 0: only so did LLVM vectorise them (inlined into the
# sequence loop, or from a variable first index, whose sign it cannot prove, they ran 2-3x slower).
@numba.njit(error_model="numpy", nogil=True, cache=True)
def _alpha_row(previous, skip, emit, out, low, high):
    """out[s] = log alpha(t, s) from previous[s + 2] = log alpha(t - 1, s) (two -inf entries in front)."""
    previous, skip, emit, out = previous[low:], skip[low:], emit[low:], out[low:]
    for s in range(high - low):
        back = previous[s] if skip[s] else _NEG
        out[s] = _logsumexp3(previous[s + 2], previous[s + 1], back) + emit[s]


@numba.njit(error_model="numpy", nogil=True, cache=True)
def _beta_row(following, skip, emit, out, low, high):
    """out[s] = log beta(t, s) from following[s] = log beta(t + 1, s) (two -inf entries behind)."""
    following, skip, emit, out = following[low:], skip[low:], emit[low:], out[low:]
    for s in range(high - low):
        ahead = following[s + 2] if skip[s + 2] else _NEG
        out[s] = _logsumexp3(following[s], following[s + 1], ahead) + emit[s]


@numba.njit(error_model="numpy", nogil=True, cache=True)
def _posterior_row(alpha, beta, emit, log_p, scale, out, low, high):
    """out[s] = scale * posterior(t, s); alpha and beta both include the emission at t."""
    alpha, beta, emit, out = alpha[low:], beta[low:], emit[low:], out[low:]
    for s in range(high - low):
        both = alpha[s] + beta[s]
        share = both - emit[s] - log_p
        out[s] = 0.0 if both == _NEG or share < _NEGLIGIBLE else scale * exp_float64(max(share, _NEGLIGIBLE))


@numba.njit(error_model="numpy", nogil=True, cache=True)
def _ctc_kernel(start, stop, log_probs, targets, input_lengths, target_lengths, blank, scales, zero_infinity,
                losses, grad):
    """Sequences [start, stop): losses[n] and grad[:, n, :] = scales[n] * d loss_n / d log_probs[:, n, :]."""
    longest, widest = 1, 1
    for n in range(start, stop):
        longest = max(longest, input_lengths[n])
        widest = max(widest, 2 * target_lengths[n] + 1)
    # scratch for the chunk's longest sequence, allocated once and reused by each
    extended = np.empty(widest, np.int64)
    skip = np.zeros(widest + 2, np.bool_)
    emit = np.empty((longest, widest))  # log_probs at the extended labels
    alpha = np.empty((longest, widest + 2))  # two -inf columns in front: s - 1, s - 2 need no tests
    beta = np.empty((2, widest + 2))  # two rows in turn, two -inf entries behind for s + 1, s + 2
    posterior = np.empty(widest)
    alpha[:, :2] = _NEG
    total = 0.0
    for n in range(start, stop):
        length, labels = input_lengths[n], target_lengths[n]
        states = 2 * labels + 1
        extended[:states] = blank
        for k in range(labels):
            extended[2 * k + 1] = targets[n, k]
        # a state may be entered from two back (skipping a blank) unless it is a blank or repeats that label
        for s in range(2, states):
            skip[s] = extended[s] != blank and extended[s] != extended[s - 2]
        skip[states:states + 2] = False
        for t in range(length):
            for s in range(states):
                emit[t, s] = log_probs[t, n, extended[s]]
        last = length - 1
        log_p = _NEG
        if length == 0:
            losses[n] = 0.0 if labels == 0 else np.inf
        else:
            alpha[0, 2:states + 2] = _NEG
            alpha[0, 2] = emit[0, 0]
            if states > 1:
                alpha[0, 3] = emit[0, 1]
            for t in range(1, length):
                low, high = _band(t, length, states)
                _alpha_row(alpha[t - 1], skip, emit[t], alpha[t, 2:], low, high)
                alpha[t, 2 + high:2 + states] = _NEG  # the next row reads two states past the band
            log_p = _logsumexp3(alpha[last, states + 1], alpha[last, states] if states > 1 else _NEG, _NEG)
            losses[n] = -log_p
        if zero_infinity and losses[n] == np.inf:
            losses[n] = 0.0
        # rows past the sequence (all of them when it has no alignment) have no gradient
        for t in range(length if log_p != _NEG else 0, grad.shape[0]):
            grad[t, n, :] = 0.0
        if log_p != _NEG:
            beta[:, :] = _NEG  # the band's low edge only falls with t: what a row reads below it stays -inf
            beta[last % 2, states - 1] = emit[last, states - 1]
            if states > 1:
                beta[last % 2, states - 2] = emit[last, states - 2]
            for t in range(last, -1, -1):
                low, high = _band(t, length, states)
                if t < last:
                    _beta_row(beta[(t + 1) % 2], skip, emit[t], beta[t % 2], low, high)
                _posterior_row(alpha[t, 2:], beta[t % 2], emit[t], log_p, scales[n], posterior, low, high)
                out = grad[t, n]
                out[:] = 0.0  # zeroed just before its scatter, while the row is in cache
                for s in range(low, high):
                    out[extended[s]] -= posterior[s]
        total += scales[n] * losses[n]
    return total


def _padded_targets(targets: np.ndarray, target_lengths: np.ndarray, batch: int) -> np.ndarray:
    """Targets as (N, S) int64, from the padded layout or the 1-D concatenation of all sequences."""
    if targets.ndim == 2:
        if targets.shape[0] != batch:
            raise LossInputError(f"ctc: targets of shape {targets.shape} need one row per sequence ({batch})")
        return targets.astype(np.int64)
    if targets.ndim != 1 or int(target_lengths.sum()) != targets.size:
        raise LossInputError(f"ctc: concatenated targets hold {targets.size} labels, the target lengths add up "
                             f"to {int(target_lengths.sum())}")
    padded = np.zeros((batch, max(int(target_lengths.max(initial=0)), 1)), np.int64)
    offsets = np.concatenate([[0], np.cumsum(target_lengths)])
    for n in range(batch):
        padded[n, :target_lengths[n]] = targets[offsets[n]:offsets[n + 1]]
    return padded


def check_inputs(log_probs, targets, input_lengths, target_lengths, blank: int):
    """(targets as (N, S) int64, input_lengths, target_lengths as int64), every length and label checked
    against log_probs (T, N, C) before any kernel runs: a clear error naming the sequence, never an
    out-of-bounds read."""
    if log_probs.ndim != 3 or log_probs.dtype not in (np.float32, np.float64):
        raise LossInputError(f"ctc: log_probs must be a float32 or float64 array (T, N, C); got {log_probs.dtype} "
                             f"{log_probs.shape}")
    steps, batch, classes = log_probs.shape
    input_lengths = np.asarray(input_lengths).reshape(-1)
    target_lengths = np.asarray(target_lengths).reshape(-1)
    for name, lengths in (("input_lengths", input_lengths), ("target_lengths", target_lengths)):
        if lengths.size != batch or lengths.dtype.kind not in "iu":
            raise LossInputError(f"ctc: {name} must hold {batch} integers, one per sequence; got {lengths.dtype} "
                                 f"{lengths.shape}")
    input_lengths, target_lengths = input_lengths.astype(np.int64), target_lengths.astype(np.int64)
    if not 0 <= blank < classes:
        raise LossInputError(f"ctc: blank={blank} is not a class of {classes}")
    targets = np.asarray(targets)
    if targets.dtype.kind not in "iu":
        raise LossInputError(f"ctc: targets must hold integer labels; got {targets.dtype}")
    targets = _padded_targets(targets, target_lengths, batch)
    # all sequences checked at once; the first bad one is reported, its checks in the order below
    bad_input = (input_lengths < 0) | (input_lengths > steps)
    bad_target = (target_lengths < 0) | (target_lengths > targets.shape[1])
    used = np.arange(targets.shape[1]) < target_lengths[:, None]
    bad_labels = used & ((targets < 0) | (targets >= classes) | (targets == blank))
    bad = bad_input | bad_target | bad_labels.any(axis=1)
    if bad.any():
        n = int(np.argmax(bad))
        if bad_input[n]:
            raise LossInputError(f"ctc: sequence {n} has input length {input_lengths[n]}, outside [0, {steps}]")
        if bad_target[n]:
            raise LossInputError(f"ctc: sequence {n} has target length {target_lengths[n]}, outside "
                                 f"[0, {targets.shape[1]}]")
        raise LossInputError(f"ctc: sequence {n} has the label {targets[n, np.argmax(bad_labels[n])]} (labels lie "
                             f"in [0, {classes}) and are never the blank {blank})")
    return targets, input_lengths, target_lengths


def forward_backward(log_probs, targets, input_lengths, target_lengths, blank: int, scales, zero_infinity: bool,
                     grad) -> tuple[np.ndarray, float]:
    """Per-sequence losses (float64, N) and their `scales`-weighted sum; `grad` (T, N, C, any strides) receives
    scales[n] * d loss_n / d log_probs[:, n, :]. Inputs as `check_inputs` returns them."""
    batch = log_probs.shape[1]
    losses = np.empty(batch, np.float64)
    total = threads.run(_ctc_kernel, batch, log_probs.size,
                        (log_probs, targets, input_lengths, target_lengths, blank,
                         np.asarray(scales, np.float64), zero_infinity, losses, grad), align=1)
    return losses, total


def ctc_value_and_grad(log_probs, targets, input_lengths, target_lengths, blank: int = 0, reduction: str = "mean",
                       zero_infinity: bool = False):
    """(loss, d loss / d log_probs) with torch.nn.functional.ctc_loss's conventions (module docstring)."""
    log_probs = np.asarray(log_probs)
    targets, input_lengths, target_lengths = check_inputs(log_probs, targets, input_lengths, target_lengths, blank)
    if reduction not in ("mean", "sum", "none"):
        raise LossInputError(f"ctc: reduction must be 'mean', 'sum' or 'none'; got {reduction!r}")
    batch = log_probs.shape[1]
    scales = 1.0 / np.maximum(target_lengths, 1) / batch if reduction == "mean" else np.ones(batch)
    grad = buffers.empty(log_probs.size, log_probs.dtype).reshape(log_probs.shape)  # pooled: no fresh page faults
    losses, total = forward_backward(log_probs, targets, input_lengths, target_lengths, blank, scales, zero_infinity,
                                     grad)
    dtype = log_probs.dtype.type
    return (losses.astype(log_probs.dtype) if reduction == "none" else dtype(total)), grad
