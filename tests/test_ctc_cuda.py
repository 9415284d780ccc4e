"""The CUDA CTC kernel against the CPU one (Numba's simulator in CI, a GPU where there is one).

The simulator runs every thread of a block as a Python thread: a few steps, classes and labels
per case keep this file to seconds.
"""
from types import SimpleNamespace

import numpy as np
import pytest

from lossdsl.intrinsics.ctc import check_inputs, forward_backward

cuda = pytest.importorskip("numba.cuda")  # before ctc_cuda, which imports it
from lossdsl.intrinsics.ctc_cuda import THREADS, forward_backward_cuda


def _log_probs(rng, steps, batch, classes, dtype):
    logits = rng.normal(size=(steps, batch, classes))
    return (logits - np.log(np.exp(logits).sum(axis=2, keepdims=True))).astype(dtype)


def _case(dtype):
    """Lengths that vary, a repeated label with more states than a simulated block has threads, an empty
    target, a -inf log-probability on a label path, and scales that are not all one."""
    log_probs = _log_probs(np.random.default_rng(0), 8, 3, 5, dtype)
    log_probs[0, 1, 1] = -np.inf  # sequence 1 cannot start with its first label
    targets = np.array([[2, 2, 4, 1], [1, 3, 0, 0], [0, 0, 0, 0]])
    assert 2 * 4 + 1 > THREADS  # sequence 0's states take a second round of the block's threads
    return log_probs, targets, np.array([8, 5, 4]), np.array([4, 2, 0]), np.array([0.5, 1.0, 2.5])


def _expected(log_probs, targets, input_lengths, target_lengths, scales, zero_infinity=False):
    """The CPU's (losses, total, grad)."""
    targets, input_lengths, target_lengths = check_inputs(log_probs, targets, input_lengths, target_lengths, 0)
    grad = np.full_like(log_probs, np.nan)
    losses, total = forward_backward(log_probs, targets, input_lengths, target_lengths, 0, scales, zero_infinity,
                                     grad)
    return losses, total, grad


def _run(log_probs, targets, input_lengths, target_lengths, scales, zero_infinity=False):
    """The device's (losses, total, grad) from host inputs checked as a caller checks them, into a NaN buffer."""
    targets, input_lengths, target_lengths = check_inputs(log_probs, targets, input_lengths, target_lengths, 0)
    grad = cuda.to_device(np.full_like(log_probs, np.nan))
    losses, total = forward_backward_cuda(cuda.to_device(log_probs), targets, input_lengths, target_lengths, 0,
                                          scales, zero_infinity, grad)
    return losses, total, grad.copy_to_host()


def _same(got, expected, dtype):
    """Equal to float rounding: float32 gradients add up in another order (atomics), all else runs in float64."""
    (losses, total, grad), (expected_losses, expected_total, expected_grad) = got, expected
    assert losses.dtype == np.float64 and isinstance(total, float) and grad.dtype == dtype
    np.testing.assert_allclose(losses, expected_losses, rtol=1e-12)
    assert total == pytest.approx(expected_total, rel=1e-12)
    rtol, atol = (2e-6, 1e-7) if dtype == np.float32 else (1e-12, 1e-14)
    np.testing.assert_allclose(grad, expected_grad, rtol=rtol, atol=atol)  # NaN nowhere: the buffer is overwritten


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matches_the_cpu(dtype):
    case = _case(dtype)
    expected = _expected(*case)
    _same(_run(*case), expected, dtype)
    assert np.isfinite(expected[0]).all() and np.all(expected[2][case[2][1]:, 1] == 0)


@pytest.mark.parametrize("zero_infinity", [False, True])
def test_impossible_alignments(zero_infinity):
    """"aa" in two steps (it needs three), an empty input with an empty target (loss 0) and with a label."""
    log_probs = _log_probs(np.random.default_rng(1), 4, 3, 4, np.float64)
    case = (log_probs, np.array([[2, 2], [0, 0], [3, 0]]), np.array([2, 0, 0]), np.array([2, 0, 1]),
            np.array([1.0, 0.5, 2.0]))
    expected = _expected(*case, zero_infinity=zero_infinity)
    got = _run(*case, zero_infinity=zero_infinity)
    _same(got, expected, np.float64)
    assert list(got[0]) == ([0.0, 0.0, 0.0] if zero_infinity else [np.inf, 0.0, np.inf])
    assert np.all(got[2] == 0)


def test_transposed_views_and_device_inputs():
    """log_probs and grad as (T, N, C) views of (N, T, C) device arrays; the other inputs already on the device."""
    log_probs, targets, input_lengths, target_lengths, scales = _case(np.float64)
    expected = _expected(log_probs, targets, input_lengths, target_lengths, scales)
    on_device = cuda.to_device(np.ascontiguousarray(log_probs.transpose(1, 0, 2)))
    grad = cuda.to_device(np.full(on_device.shape, np.nan))
    checked = check_inputs(log_probs, targets, input_lengths, target_lengths, 0)
    losses, total = forward_backward_cuda(_transposed(on_device), *(cuda.to_device(a) for a in checked), 0,
                                          cuda.to_device(scales), False, _transposed(grad))
    _same((losses, total, grad.copy_to_host().transpose(1, 0, 2)), expected, np.float64)


def _transposed(array):
    """The (T, N, C) view of an (N, T, C) device array, no copy: the simulator's arrays transpose like NumPy's,
    Numba's real ones only in 2-D, so there a view through the CUDA array interface."""
    if not hasattr(array, "__cuda_array_interface__"):
        return array.transpose((1, 0, 2))
    view = {**array.__cuda_array_interface__, "shape": tuple(array.shape[i] for i in (1, 0, 2)),
            "strides": tuple(array.strides[i] for i in (1, 0, 2))}
    return cuda.as_cuda_array(SimpleNamespace(__cuda_array_interface__=view))
