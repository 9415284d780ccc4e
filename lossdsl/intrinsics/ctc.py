"""Connectionist Temporal Classification: the forward-backward dynamic program in log space.

`ctc_value_and_grad` follows torch.nn.functional.ctc_loss's conventions (log_probs (T, N, C),
targets padded (N, S) or concatenated 1-D, blank index, reductions "mean" (each sequence divided
by its target length, at least 1, then the batch mean), "sum", "none", and zero_infinity), but
its gradient is the true derivative of the loss with respect to the log_probs it was given,
-posterior(t, c). PyTorch's backward returns exp(log_probs) - posterior instead; the two agree
once pushed back through a log_softmax, which is what a training loop does.

One kernel call per chunk of sequences (lossdsl.threads): the alpha and beta recursions over the
extended label sequence (blanks interleaved, 2S + 1 states), O(T x (2S + 1)) scratch per
sequence, the sequence's gradient written in the same call. Every length and label is checked
before any kernel runs.
"""
from __future__ import annotations

import numba
import numpy as np

from .. import buffers, threads
from ..errors import LossInputError
from ..kernel_math import exp_float64, log_float64

_NEG = -np.inf


@numba.njit(inline="always", error_model="numpy")
def _logsumexp3(a, b, c):
    """log(e^a + e^b + e^c), -inf when all three are; one log and two exps, no branches (vectorisable)."""
    top = max(a, max(b, c))
    finite = top > _NEG
    shift = top if finite else 0.0
    total = exp_float64(a - shift) + exp_float64(b - shift) + exp_float64(c - shift)
    return top + log_float64(total) if finite else _NEG


@numba.njit(error_model="numpy", nogil=True, cache=True)
def _ctc_kernel(start, stop, log_probs, targets, input_lengths, target_lengths, blank, scales, zero_infinity,
                losses, grad):
    """Sequences [start, stop): losses[n] and grad[:, n, :] = scales[n] * d loss_n / d log_probs[:, n, :]."""
    total = 0.0
    for n in range(start, stop):
        length, labels = input_lengths[n], target_lengths[n]
        states = 2 * labels + 1
        extended = np.full(states, blank, np.int64)
        for k in range(labels):
            extended[2 * k + 1] = targets[n, k]
        # a state may be entered from two back (skipping a blank) unless it is a blank or repeats that label
        skip = np.zeros(states + 2, np.bool_)
        for s in range(2, states):
            skip[s] = extended[s] != blank and extended[s] != extended[s - 2]
        steps = max(length, 1)
        emit = np.empty((steps, states))  # log_probs at the extended labels
        for t in range(length):
            for s in range(states):
                emit[t, s] = log_probs[t, n, extended[s]]
        alpha = np.full((steps, states + 2), _NEG)  # two -inf columns in front: s - 1, s - 2 need no tests
        beta = np.full((steps, states + 2), _NEG)  # and two behind for s + 1, s + 2
        grad[:, n, :] = 0.0
        if length == 0:
            losses[n] = 0.0 if labels == 0 else np.inf
        else:
            alpha[0, 2] = emit[0, 0]
            if states > 1:
                alpha[0, 3] = emit[0, 1]
            for t in range(1, length):
                for s in range(states):
                    back = alpha[t - 1, s] if skip[s] else _NEG
                    alpha[t, s + 2] = _logsumexp3(alpha[t - 1, s + 2], alpha[t - 1, s + 1], back) + emit[t, s]
            last = length - 1
            beta[last, states - 1] = emit[last, states - 1]
            if states > 1:
                beta[last, states - 2] = emit[last, states - 2]
            for t in range(last - 1, -1, -1):
                for s in range(states):
                    ahead = beta[t + 1, s + 2] if skip[s + 2] else _NEG
                    beta[t, s] = _logsumexp3(beta[t + 1, s], beta[t + 1, s + 1], ahead) + emit[t, s]
            log_p = _logsumexp3(alpha[last, states + 1], alpha[last, states] if states > 1 else _NEG, _NEG)
            losses[n] = -log_p
            if log_p != _NEG:
                for t in range(length):
                    for s in range(states):
                        both = alpha[t, s + 2] + beta[t, s]
                        if both != _NEG:
                            grad[t, n, extended[s]] -= scales[n] * exp_float64(both - emit[t, s] - log_p)
        if zero_infinity and losses[n] == np.inf:
            losses[n] = 0.0
            grad[:, n, :] = 0.0
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
    for n in range(batch):
        if not 0 <= input_lengths[n] <= steps:
            raise LossInputError(f"ctc: sequence {n} has input length {input_lengths[n]}, outside [0, {steps}]")
        if not 0 <= target_lengths[n] <= targets.shape[1]:
            raise LossInputError(f"ctc: sequence {n} has target length {target_lengths[n]}, outside "
                                 f"[0, {targets.shape[1]}]")
        labels = targets[n, :target_lengths[n]]
        bad = (labels < 0) | (labels >= classes) | (labels == blank)
        if bad.any():
            raise LossInputError(f"ctc: sequence {n} has the label {labels[np.argmax(bad)]} (labels lie in "
                                 f"[0, {classes}) and are never the blank {blank})")
    return targets, input_lengths, target_lengths


def forward_backward(log_probs, targets, input_lengths, target_lengths, blank: int, scales, zero_infinity: bool,
                     grad) -> tuple[np.ndarray, float]:
    """Per-sequence losses (float64, N) and their `scales`-weighted sum; `grad` (T, N, C, any strides) receives
    scales[n] * d loss_n / d log_probs[:, n, :]. Inputs as `check_inputs` returns them."""
    batch = log_probs.shape[1]
    losses = np.empty(batch, np.float64)
    total = threads.run(_ctc_kernel, batch, log_probs.size,
                        (log_probs, targets, input_lengths, target_lengths, blank,
                         np.asarray(scales, np.float64), zero_infinity, losses, grad))
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
