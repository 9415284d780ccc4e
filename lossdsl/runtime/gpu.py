"""Calls on a CUDA device: GPU arrays in, GPU arrays out, the kernels of the CUDA target.

The same Call objects as on the host (layout.py) describe a call; this module is their
`memory` for arrays on the device: GPU arrays (Numba device arrays, or any object with
`__cuda_array_interface__`: CuPy arrays, PyTorch CUDA tensors) are used in place, host
arrays and defaults are copied in, outputs are allocated on the device. Each kernel adds
its blocks' partial sums to a one-element float64 result; reading that value back is the
only transfer a call makes besides the arrays a caller passes from the host.

What differs from the host: inputs must already have the call's shape (or be scalars),
be C-contiguous and (for floats) have its dtype; domain checks (p in [0, 1], ...) are
skipped, labels are still range-checked on the device before any kernel reads with them.
Importing this module imports numba.cuda; lossdsl imports it only for a GPU call.
"""
from __future__ import annotations

import functools
import math

import numpy as np
from numba import cuda

from .protocol import Target, bind
from ..errors import LossDeviceError, LossInputError
from .layout import HOST, RowCall
from .layout import is_gpu_array as _is_device

_MAX_BLOCKS = 1024  # a grid-stride loop covers the rest: enough blocks to fill any current GPU


@functools.lru_cache(maxsize=1)
def device_memory() -> "DeviceMemory":
    if not cuda.is_available():
        raise LossDeviceError("no CUDA GPU is available (numba.cuda found no device or driver); arrays on the host "
                              "run on the CPU without asking for device='cuda'")
    return DeviceMemory()


class DeviceMemory:
    """layout.HostMemory's interface for arrays on the CUDA device."""

    target = Target.CUDA
    checks_domains = False

    @staticmethod
    def gather(value):
        if _is_device(value):
            array = value if not hasattr(value, "__cuda_array_interface__") else cuda.as_cuda_array(value)  # no copy
            if array.dtype.kind not in "biuf":
                raise LossInputError(f"GPU inputs must hold numbers; got dtype {array.dtype}")
            return array
        return np.asarray(value)

    def flat(self, array, shape: tuple[int, ...], dtype: np.dtype):
        """A flat device array of `dtype` holding `array` at `shape`; host values are copied in."""
        dtype = np.dtype(dtype)
        if not _is_device(array) or array.size == 1 and array.shape != shape:
            host = array.copy_to_host() if _is_device(array) else np.asarray(array)
            return cuda.to_device(np.ascontiguousarray(np.broadcast_to(host, shape), dtype).reshape(-1))
        if array.shape != shape:
            raise LossInputError(f"GPU arrays are not broadcast: an input of shape {array.shape} where {shape} is "
                                 "needed")
        integers = dtype.kind in "iu" and array.dtype.kind in "iu"  # labels keep their integer type
        if array.dtype != dtype and not integers:
            raise LossInputError(f"GPU inputs are not converted: got {array.dtype} where {dtype} is needed")
        if not array.is_c_contiguous():
            raise LossInputError("GPU inputs must be C-contiguous")
        return array.reshape(array.size)

    @staticmethod
    def labels(loss_name: str, input_name: str, array):
        if _is_device(array):
            if array.dtype.kind not in "iu":
                raise LossInputError(f"{loss_name}: {input_name} holds labels: an integer GPU array, not {array.dtype}")
            return array
        return HOST.labels(loss_name, input_name, array)

    @staticmethod
    def empty(size: int, dtype: np.dtype):
        return cuda.device_array(size, dtype)

    @staticmethod
    def zeros(shape: tuple[int, ...], dtype: np.dtype):
        return cuda.to_device(np.zeros(shape, dtype))

    @staticmethod
    def transpose(array, axes: tuple[int, ...]):
        """A view with its axes permuted, no copy (Numba's own device arrays transpose only in 2-D)."""
        if not hasattr(array, "gpu_data"):  # the simulator's arrays are NumPy's
            return array.transpose(axes)
        return type(array)(tuple(array.shape[a] for a in axes), tuple(array.strides[a] for a in axes), array.dtype,
                           gpu_data=array.gpu_data)

    @staticmethod
    def to_host(array):
        return array.copy_to_host() if _is_device(array) else array

    @staticmethod
    def launch(module, kernel: str, call, arguments: dict) -> float:
        """Run `kernel` over the call's elements (a thread each) or rows (a block each); its float64 sum."""
        threads = call.units * module.THREADS if isinstance(call, RowCall) else call.units
        return _launch(module, getattr(module, kernel), threads, bind(module, kernel, arguments))

    @staticmethod
    def check_rows(module, call, params) -> tuple[float, int, int]:
        """The label pass on the device: (mean divisor, first bad row or -1, its label)."""
        bad = cuda.to_device(np.array([call.rows], np.int64))
        divisor = _launch(module, module.loss_rows, call.rows, bind(module, "loss_rows",
                                                                    {**call.named, **params, "__bad": bad}))
        row = int(bad.copy_to_host()[0])
        return (divisor, -1, 0) if row == call.rows else (0.0, row, _label_at(call, row))

    @staticmethod
    def result(value, call):
        """Device outputs as the kind of array the caller passed: host arrays for host inputs (copied out),
        CuPy or PyTorch arrays for theirs (no copy), else Numba device arrays."""
        if not _is_device(value):
            return value
        if not _is_device(call.given):
            return value.copy_to_host()
        kind = type(call.given).__module__.split(".")[0]
        if kind == "torch":
            import torch
            return torch.as_tensor(value, device=call.given.device)
        if kind == "cupy":
            import cupy
            return cupy.asarray(value)
        return value


def _launch(module, kernel, threads: int, arguments: tuple) -> float:
    """A grid of about `threads` threads (at most _MAX_BLOCKS blocks of the module's size; loops in the
    kernels cover the rest); the float64 sum the blocks add up."""
    result = cuda.to_device(np.zeros(1))
    blocks = max(1, min(_MAX_BLOCKS, math.ceil(threads / module.THREADS)))
    kernel[blocks, module.THREADS](*arguments, result)
    return float(result.copy_to_host()[0])


def _label_at(call, row: int) -> int:
    """The first out-of-range label of `row`, read back from the device for the error message."""
    outer, inner = divmod(row, call.inner)
    for k in call.label_inputs:
        outer_step, inner_step, _ = call.step_table[k]
        value = int(call.arrays[k][outer * outer_step + inner * inner_step])
        if not 0 <= value < call.length:
            return value
    return -1
