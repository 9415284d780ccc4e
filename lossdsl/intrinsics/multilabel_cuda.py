"""The multi-label hinge on a CUDA device: the same values and gradient as multilabel.forward_backward,
from GPU arrays.

One block per row: its threads mark the row's labels in a scratch mask (rows x C bytes in global
memory), then each thread takes a stride of the classes: a class outside the label set sums its hinges
against every label and writes its gradient; a label's own gradient (minus its active pairs) is added
with an atomic, since a repeated label is counted by more than one thread. The hinges' partial sums
meet in shared memory (float64, as on the CPU). The caller checks every label on the host first
(multilabel.check_inputs). Importing this module imports numba.cuda.
"""
from __future__ import annotations

import numba
import numpy as np
from numba import cuda

from ..runtime.gpu import DeviceMemory
from .ctc_cuda import THREADS, _on_device


@cuda.jit(cache=True)
def _multilabel_kernel_cuda(scores, labels, padding, margin, scales, is_label, losses, grad):
    """Block r (= o * inner + i) of scores (outer, inner, C): losses[r] and grad[o, i] = scales[r] *
    d loss_r / d scores[o, i]; is_label is (rows, C) scratch."""
    r = cuda.blockIdx.x
    first, stride = cuda.threadIdx.x, cuda.blockDim.x
    inner, classes = scores.shape[1], scores.shape[2]
    o, i = r // inner, r % inner
    size = cuda.shared.array(1, numba.int64)
    partial = cuda.shared.array(THREADS, numba.float64)
    if first == 0:
        n = 0
        while n < classes and labels[o, i, n] != padding:
            n += 1
        size[0] = n
    for d in range(first, classes, stride):
        is_label[r, d] = 0
    cuda.syncthreads()
    count = size[0]
    for k in range(first, count, stride):
        is_label[r, labels[o, i, k]] = 1
    cuda.syncthreads()
    step = scales[r] / classes
    hinge = 0.0
    for d in range(first, classes, stride):
        active = 0
        if is_label[r, d] == 0:
            for k in range(count):
                z = (margin - scores[o, i, labels[o, i, k]]) + scores[o, i, d]
                if z > 0:
                    hinge += z
                    active += 1
        grad[o, i, d] = step * active  # 0 for the labels, before their atomics below
    cuda.syncthreads()
    for k in range(first, count, stride):
        j = labels[o, i, k]
        low = margin - scores[o, i, j]
        active = 0
        for d in range(classes):
            if is_label[r, d] == 0 and low + scores[o, i, d] > 0:
                active += 1
        cuda.atomic.add(grad, (o, i, j), -step * active)
    partial[first] = hinge
    cuda.syncthreads()
    half = stride // 2  # THREADS is a power of two
    while half > 0:
        if first < half:
            partial[first] += partial[first + half]
        cuda.syncthreads()
        half //= 2
    if first == 0:
        losses[r] = partial[0] / classes


def forward_backward_cuda(scores, labels, padding: int, scales, grad) -> tuple[np.ndarray, float]:
    """multilabel.forward_backward on the device: per-row values (host float64, outer x inner) and their
    `scales`-weighted sum; `grad` (a GPU array shaped like scores, (outer, inner, C), need not be initialised)
    receives scales[r] * d value_r / d scores. scores is a GPU array; labels are as multilabel.check_inputs
    returns them, on the host or the device."""
    scores, grad = DeviceMemory.gather(scores), DeviceMemory.gather(grad)
    outer, inner, classes = scores.shape
    rows = outer * inner
    scales = np.asarray(DeviceMemory.to_host(DeviceMemory.gather(scales)), np.float64)
    losses = cuda.device_array(rows, np.float64)
    if rows:
        is_label = cuda.device_array((rows, classes), np.uint8)
        _multilabel_kernel_cuda[rows, THREADS](scores, _on_device(labels, np.int64), padding,
                                               scores.dtype.type(1), cuda.to_device(scales), is_label, losses, grad)
    losses = losses.copy_to_host()
    return losses, float(np.sum(scales * losses))
