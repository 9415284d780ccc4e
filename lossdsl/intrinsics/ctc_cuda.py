"""CTC's forward-backward on a CUDA device: the same losses and gradient as ctc.forward_backward, from GPU arrays.

One block per sequence: the 2S + 1 states of its extended label sequence (blanks interleaved) are
spread over the block's threads, which run the log-space alpha recursion forward over time and the
beta recursion backward, a barrier between time steps. alpha and beta (T x (2S + 1) float64 per
sequence, so float32 inputs accumulate as on the CPU) live in global memory. Each state then adds
its posterior occupation to its class's gradient with an atomic add, since a label (and the blank)
occupies several states. The caller checks every input on the host first (ctc.check_inputs); this
module only moves host arrays onto the device. Importing it imports numba.cuda.
"""
from __future__ import annotations

import math

import numba
import numpy as np
from numba import cuda

from ..runtime.gpu import DeviceMemory
from ..runtime.layout import is_gpu_array

# threads per block: lossdsl.codegen.targets.THREADS's rule (the simulator runs each thread as a Python thread)
THREADS = 8 if numba.config.ENABLE_CUDASIM else 256

_NEG = -math.inf


@cuda.jit(device=True, inline=True)
def _logsumexp3(a, b, c):
    """log(e^a + e^b + e^c), -inf when all three are (ctc._logsumexp3 runs the CPU's vectorised exp and log)."""
    # not max(): numba.cuda (0.68) passes a device call's arguments unfolded to the builtin's max(*args) overload
    top = a if a > b else b  # noqa: FURB136
    top = top if top > c else c  # noqa: FURB136
    if top == _NEG:
        return _NEG
    return top + math.log(math.exp(a - top) + math.exp(b - top) + math.exp(c - top))


@cuda.jit(device=True, inline=True)
def _label(targets, blank, n, s):
    """The class of state s of sequence n's extended label sequence: the blank at even states."""
    return blank if s % 2 == 0 else targets[n, s // 2]


@cuda.jit(device=True, inline=True)
def _skips(targets, n, s):
    """Whether state s may be entered from s - 2: a label that differs from the one before it."""
    return s % 2 == 1 and s >= 3 and targets[n, s // 2] != targets[n, s // 2 - 1]


@cuda.jit(cache=True)
def _ctc_kernel_cuda(log_probs, targets, input_lengths, target_lengths, blank, scales, zero_infinity, alpha, beta,
                     losses, grad):
    """Block n: losses[n] and grad[:, n, :] = scales[n] * d loss_n / d log_probs[:, n, :]; alpha and beta are
    (N, >= max(T, 1), >= 2S + 1) scratch."""
    n = cuda.blockIdx.x
    first, stride = cuda.threadIdx.x, cuda.blockDim.x
    steps, classes = log_probs.shape[0], log_probs.shape[2]
    length, states = input_lengths[n], 2 * target_lengths[n] + 1
    log_p = cuda.shared.array(1, numba.float64)
    for i in range(first, steps * classes, stride):
        grad[i // classes, n, i % classes] = 0.0
    if length == 0:  # the same branch for the whole block
        if first == 0:
            losses[n] = 0.0 if states == 1 or zero_infinity else math.inf
        return
    for s in range(first, states, stride):
        alpha[n, 0, s] = log_probs[0, n, _label(targets, blank, n, s)] if s < 2 else _NEG
    cuda.syncthreads()
    for t in range(1, length):
        for s in range(first, states, stride):
            one = alpha[n, t - 1, s - 1] if s >= 1 else _NEG
            two = alpha[n, t - 1, s - 2] if _skips(targets, n, s) else _NEG
            alpha[n, t, s] = _logsumexp3(alpha[n, t - 1, s], one, two) + log_probs[t, n, _label(targets, blank, n, s)]
        cuda.syncthreads()
    last = length - 1
    for s in range(first, states, stride):
        beta[n, last, s] = log_probs[last, n, _label(targets, blank, n, s)] if s >= states - 2 else _NEG
    cuda.syncthreads()
    for t in range(last - 1, -1, -1):
        for s in range(first, states, stride):
            one = beta[n, t + 1, s + 1] if s + 1 < states else _NEG
            two = beta[n, t + 1, s + 2] if s + 2 < states and _skips(targets, n, s + 2) else _NEG
            beta[n, t, s] = _logsumexp3(beta[n, t + 1, s], one, two) + log_probs[t, n, _label(targets, blank, n, s)]
        cuda.syncthreads()
    if first == 0:
        log_p[0] = _logsumexp3(alpha[n, last, states - 1], alpha[n, last, states - 2] if states > 1 else _NEG, _NEG)
        losses[n] = 0.0 if zero_infinity and log_p[0] == _NEG else -log_p[0]
    cuda.syncthreads()
    total = log_p[0]
    if total != _NEG:  # an impossible alignment keeps its zero gradient
        scale = scales[n]
        for i in range(first, length * states, stride):
            t, s = i // states, i % states
            both = alpha[n, t, s] + beta[n, t, s]
            if both != _NEG:
                c = _label(targets, blank, n, s)
                cuda.atomic.add(grad, (t, n, c), -scale * math.exp(both - log_probs[t, n, c] - total))


def _on_device(value, dtype):
    """A GPU array as it is (no copy; CuPy and PyTorch ones through their interface), a host one copied in."""
    value = DeviceMemory.gather(value)
    return value if is_gpu_array(value) else cuda.to_device(np.ascontiguousarray(value, dtype))


def forward_backward_cuda(log_probs, targets, input_lengths, target_lengths, blank: int, scales, zero_infinity: bool,
                          grad) -> tuple[np.ndarray, float]:
    """ctc.forward_backward on the device: per-sequence losses (host float64, N) and their `scales`-weighted sum;
    `grad` (a GPU array shaped like log_probs, any strides, need not be initialised) receives
    scales[n] * d loss_n / d log_probs[:, n, :]. log_probs (T, N, C) is a GPU array of any strides; the other
    inputs are as ctc.check_inputs returns them, on the host or the device."""
    log_probs, grad = DeviceMemory.gather(log_probs), DeviceMemory.gather(grad)
    steps, batch, _ = log_probs.shape
    scales = np.asarray(DeviceMemory.to_host(DeviceMemory.gather(scales)), np.float64)
    targets = _on_device(targets, np.int64)
    input_lengths, target_lengths = _on_device(input_lengths, np.int64), _on_device(target_lengths, np.int64)
    losses = cuda.device_array(batch, np.float64)
    if batch:
        scratch = (batch, max(steps, 1), 2 * targets.shape[1] + 1)  # at least one step: no empty device arrays
        alpha, beta = cuda.device_array(scratch, np.float64), cuda.device_array(scratch, np.float64)
        _ctc_kernel_cuda[batch, THREADS](log_probs, targets, input_lengths, target_lengths, blank,
                                         cuda.to_device(scales), zero_infinity, alpha, beta, losses, grad)
    losses = losses.copy_to_host()
    return losses, float(np.sum(scales * losses))
