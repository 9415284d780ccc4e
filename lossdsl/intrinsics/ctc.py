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

import math

import numba
import numpy as np

from .. import threads
from ..errors import LossInputError

_NEG = -np.inf


@numba.njit(error_model="numpy", cache=True)
def _logaddexp(a, b):
    if a == _NEG:
        return b
    if b == _NEG:
        return a
    top = max(a, b)
    return top + math.log1p(math.exp(-abs(a - b)))


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
        alpha = np.full((max(length, 1), states), _NEG)
        beta = np.full((max(length, 1), states), _NEG)
        grad[:, n, :] = 0.0
        if length == 0:
            losses[n] = 0.0 if labels == 0 else np.inf
        else:
            alpha[0, 0] = log_probs[0, n, blank]
            if states > 1:
                alpha[0, 1] = log_probs[0, n, extended[1]]
            for t in range(1, length):
                for s in range(states):
                    a = alpha[t - 1, s]
                    if s >= 1:
                        a = _logaddexp(a, alpha[t - 1, s - 1])
                    if s >= 2 and extended[s] != blank and extended[s] != extended[s - 2]:
                        a = _logaddexp(a, alpha[t - 1, s - 2])
                    alpha[t, s] = a + log_probs[t, n, extended[s]] if a != _NEG else _NEG
            last = length - 1
            beta[last, states - 1] = log_probs[last, n, extended[states - 1]]
            if states > 1:
                beta[last, states - 2] = log_probs[last, n, extended[states - 2]]
            for t in range(last - 1, -1, -1):
                for s in range(states):
                    b = beta[t + 1, s]
                    if s + 1 < states:
                        b = _logaddexp(b, beta[t + 1, s + 1])
                    if s + 2 < states and extended[s] != blank and extended[s] != extended[s + 2]:
                        b = _logaddexp(b, beta[t + 1, s + 2])
                    beta[t, s] = b + log_probs[t, n, extended[s]] if b != _NEG else _NEG
            log_p = alpha[last, states - 1]
            if states > 1:
                log_p = _logaddexp(log_p, alpha[last, states - 2])
            losses[n] = -log_p
            if log_p != _NEG:
                for t in range(length):
                    for s in range(states):
                        both = alpha[t, s] + beta[t, s]
                        if both != _NEG:
                            c = extended[s]
                            grad[t, n, c] -= scales[n] * math.exp(both - log_probs[t, n, c] - log_p)
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


def ctc_value_and_grad(log_probs, targets, input_lengths, target_lengths, blank: int = 0, reduction: str = "mean",
                       zero_infinity: bool = False):
    """(loss, d loss / d log_probs) with torch.nn.functional.ctc_loss's conventions (module docstring)."""
    log_probs = np.asarray(log_probs)
    if log_probs.ndim != 3 or log_probs.dtype not in (np.float32, np.float64):
        raise LossInputError(f"ctc: log_probs must be a float32 or float64 array (T, N, C); got {log_probs.dtype} "
                             f"{log_probs.shape}")
    steps, batch, classes = log_probs.shape
    input_lengths = np.asarray(input_lengths, np.int64).reshape(-1)
    target_lengths = np.asarray(target_lengths, np.int64).reshape(-1)
    if input_lengths.size != batch or target_lengths.size != batch:
        raise LossInputError(f"ctc: input_lengths and target_lengths need {batch} values each")
    if not 0 <= blank < classes:
        raise LossInputError(f"ctc: blank={blank} is not a class of {classes}")
    targets = _padded_targets(np.asarray(targets), target_lengths, batch)
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
    if reduction not in ("mean", "sum", "none"):
        raise LossInputError(f"ctc: reduction must be 'mean', 'sum' or 'none'; got {reduction!r}")
    scales = (1.0 / np.maximum(target_lengths, 1) / batch if reduction == "mean" else np.ones(batch))
    losses = np.empty(batch, np.float64)
    grad = np.empty_like(log_probs)
    total = threads.run(_ctc_kernel, batch, batch * steps * classes,
                        (log_probs, targets, input_lengths, target_lengths, blank, scales.astype(np.float64),
                         zero_infinity, losses, grad))
    dtype = log_probs.dtype.type
    return (losses.astype(log_probs.dtype) if reduction == "none" else dtype(total)), grad
