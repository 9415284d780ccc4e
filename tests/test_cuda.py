"""The CUDA target against the CPU path of the same spec (Numba's simulator in CI, a GPU where there is one).

The simulator runs every CUDA thread as a Python thread: arrays stay small and each
loss is called a few times, so this file costs CI seconds, not minutes.
"""
import numpy as np
import pytest

import lossdsl
from lossdsl.errors import LossDeviceError, LossInputError, LossLabelError
from lossdsl.gradcheck import sample_inputs
from test_ctc_dsl import SEQUENCE_LOSSES
from test_multilabel_margin import ROW_LOSSES
from test_linear_heads import HEADS
from test_distillation import TWO_HEADS
from test_topk import LIST_AXIS

cuda = pytest.importorskip("numba.cuda")


def _host(value):
    return value.copy_to_host() if hasattr(value, "copy_to_host") else np.asarray(value)


def _close(got, expected, dtype):
    rtol, atol = (2e-5, 1e-6) if np.dtype(dtype) == np.float32 else (1e-10, 1e-12)
    np.testing.assert_allclose(_host(got), expected, rtol=rtol, atol=atol)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # kl_div: log of a negative
@pytest.mark.parametrize("name", [n for n in lossdsl.catalogue()
                                  if n not in (*SEQUENCE_LOSSES, *ROW_LOSSES, *HEADS, *TWO_HEADS, *LIST_AXIS)])
def test_every_catalogue_loss_matches_the_cpu(load_loss, name):
    """Per-element values and gradients (the fused kernel), and a summed value (the value kernel)."""
    loss = load_loss(name)
    options = {"axis": -1} if loss._resolved.axis else {}
    inputs = sample_inputs(loss, points=3 if options else 12, seed=1, classes=5)  # rows: a simulated block each
    on_device = [cuda.to_device(a) for a in inputs]
    values, grads = loss.value_and_grad(*on_device, reduction="none", **options)
    expected_values, expected_grads = loss.value_and_grad(*inputs, reduction="none", **options)
    _close(values, expected_values, np.float64)
    for got, expected in zip(grads if isinstance(grads, tuple) else (grads,),
                             expected_grads if isinstance(expected_grads, tuple) else (expected_grads,)):
        _close(got, expected, np.float64)
    _close(float(loss(*on_device, reduction="sum", **options)), float(loss(*inputs, reduction="sum", **options)),
           np.float64)  # NaN where the CPU has NaN (kl_div of negative targets)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none", "batch", "batchmean"])
def test_reductions_and_weights_in_both_dtypes(load_loss, dtype, reduction):
    rng = np.random.default_rng(2)
    huber = load_loss("huber", delta=0.7)
    pred, target = rng.normal(size=(4, 5)).astype(dtype), rng.normal(size=(4, 5)).astype(dtype)
    weights = rng.uniform(0.5, 2.0, size=(4, 5)).astype(dtype)
    options = {"reduction": reduction, "weight": 1.5, "sample_weight": weights}
    value, grad = huber.value_and_grad(cuda.to_device(pred), cuda.to_device(target), **options)
    expected_value, expected_grad = huber.value_and_grad(pred, target, **options)
    _close(value, expected_value, dtype)
    _close(grad, expected_grad, dtype)
    assert _host(grad).dtype == dtype


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cross_entropy_with_class_weights_ignore_and_smoothing(load_loss, dtype):
    rng = np.random.default_rng(3)
    ce = load_loss("cross_entropy", ignore_index=2, label_smoothing=0.1)
    logits = rng.normal(size=(6, 4)).astype(dtype)
    labels = np.array([0, 2, 3, 1, 2, 3])
    class_weight = rng.uniform(0.5, 2.0, 4).astype(dtype)
    value, grad = ce.value_and_grad(cuda.to_device(logits), cuda.to_device(labels), class_weight=class_weight)
    expected_value, expected_grad = ce.value_and_grad(logits, labels, class_weight=class_weight)
    _close(value, expected_value, dtype)  # the class-weighted mean: its divisor comes from the device label pass
    _close(grad, expected_grad, dtype)


def test_host_arrays_with_device_cuda_are_copied_in_and_out(load_loss):
    bce = load_loss("bce_with_logits")
    x, y = np.linspace(-3, 3, 7), (np.arange(7) % 2).astype(float)
    values, grad = bce.value_and_grad(x, y, reduction="none", device="cuda")
    assert isinstance(values, np.ndarray) and isinstance(grad, np.ndarray)
    on_device = bce.value_and_grad(cuda.to_device(x), cuda.to_device(y), reduction="none")
    assert all(hasattr(a, "copy_to_host") for a in on_device)  # GPU arrays in, GPU arrays out
    expected_values, expected_grad = bce.value_and_grad(x, y, reduction="none")
    _close(values, expected_values, np.float64)
    _close(grad, expected_grad, np.float64)


def test_labels_are_checked_on_the_device_before_any_read(load_loss):
    nll = load_loss("nll")
    logp = cuda.to_device(np.log(np.full((3, 4), 0.25)))
    with pytest.raises(LossLabelError, match=r"label 7 at row \(1,\) is outside the axis of length 4"):
        nll(logp, cuda.to_device(np.array([0, 7, 1])))
    with pytest.raises(LossLabelError, match=r"label -1 at row \(2,\)"):
        nll(logp, cuda.to_device(np.array([0, 1, -1])))


def test_device_inputs_are_not_converted_or_broadcast(load_loss):
    huber = load_loss("huber")
    pred = cuda.to_device(np.zeros((2, 3)))
    with pytest.raises(LossInputError, match="not broadcast"):
        huber(pred, cuda.to_device(np.zeros(3)))
    with pytest.raises(LossInputError, match="not converted: got float32 where float64"):
        huber(pred, cuda.to_device(np.zeros((2, 3), np.float32)))
    with pytest.raises(LossInputError, match="device='cpu' with GPU arrays"):
        huber(pred, pred, device="cpu")
    with pytest.raises(LossInputError, match="device must be"):
        huber(np.zeros(2), np.zeros(2), device="tpu")
    assert float(huber(pred, 1.0)) == pytest.approx(0.5)  # scalars are copied in at the call's shape


def test_no_gpu_gives_a_clear_error(load_loss, monkeypatch):
    from lossdsl.runtime import gpu
    gpu.device_memory.cache_clear()
    monkeypatch.setattr(gpu.cuda, "is_available", lambda: False)
    try:
        with pytest.raises(LossDeviceError, match="no CUDA GPU is available"):
            load_loss("huber")(np.zeros(2), np.zeros(2), device="cuda")
    finally:
        gpu.device_memory.cache_clear()


def test_cuda_source_is_readable_and_shares_the_cpu_body(load_loss):
    huber = load_loss("huber")
    cuda_source, cpu_source = huber.source("cuda"), huber.source("cpu")
    assert "@cuda.jit(cache=True)" in cuda_source and "range(cuda.grid(1), __n, cuda.gridsize(1))" in cuda_source
    assert "cuda.atomic.add(__result, 0, __total)" in cuda_source
    # each element's lines are the same text as in the CPU's general loop (which adds a buffer of losses)
    kernel = cuda_source[cuda_source.index("def loss_value("):]
    loop = kernel[kernel.index("for __i in range(cuda.grid(1)"):kernel.index("__total += __loss")]
    body = [line.strip() for line in loop.splitlines()[1:]]
    cpu_lines = {line.strip() for line in cpu_source.splitlines()}
    assert len(body) > 3 and all(line in cpu_lines for line in body if line)
    compile(cuda_source, "generated", "exec")


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the infinite rows: inf - inf on both paths
def test_rows_longer_than_a_block_with_ties_and_nan():
    """Threads each take several positions; max/min keep the first extreme, a NaN wins, and the online
    logsumexp meets infinities, all as on the CPU."""
    spread = lossdsl.compile("loss spread(x[c])\n    spread = max(x, c) - 0.5 * min(x, c) + logsumexp(x, c)\n")
    rng = np.random.default_rng(4)
    x = rng.normal(size=(5, 37))
    x[0, [5, 20, 33]] = 9.0  # a tie for the max: the first position takes the gradient
    x[1, [2, 30]] = -9.0  # and for the min
    x[2, 17] = np.nan
    x[3, :] = -np.inf  # logsumexp of nothing but -inf (the online form must not make NaN of it)
    x[4, [3, 9]] = np.inf
    values, grad = spread.value_and_grad(cuda.to_device(x), reduction="none")
    expected_values, expected_grad = spread.value_and_grad(x, reduction="none")
    _close(values, expected_values, np.float64)
    _close(grad, expected_grad, np.float64)
    assert _host(grad)[0, 5] > _host(grad)[0, 20]  # the one-hot of the max sits at the first 9.0


def test_a_list_axis_loss_is_refused_on_the_device(load_loss):
    """topk_kl's kernels are written for the CPU only: a device call says so instead of running."""
    loss = load_loss("topk_kl")
    logits = cuda.to_device(np.zeros((2, 4)))
    with pytest.raises(LossInputError, match="run on the CPU"):
        loss(logits, cuda.to_device(np.array([[0, 1], [2, -1]])), cuda.to_device(np.zeros((2, 2))))
