"""Catalogue losses over a named axis against the NumPy references in tests/axis_references.py.

Values and gradients for every reduction, float64 and float32, the axis in
several places (PyTorch's class axis 1 of (N, C, d, ...), the last axis via
axis=-1, runs of adjacent axes), with class weights, ignore_index rows and
label smoothing; extreme logits; label and shape errors; documented figures
from the frameworks; and, for a few losses, lossdsl's gradient against finite
differences of its own value (the only place lossdsl is compared with itself).
"""
import functools
import re
import zlib

import numpy as np
import pytest

import lossdsl
from lossdsl.errors import LossLabelError
from axis_references import AXIS_REFERENCES, Geometry

TOLERANCE = {np.float64: 1e-9, np.float32: 2e-5}
REDUCTIONS = ("none", "sum", "mean", "batch", "batchmean")
WEIGHT = 3.0

# (shape of the inputs that carry the axis, axis= passed by the call (None: the spec's default)),
# by where the spec puts the axis by default
LAYOUTS = {
    1: [((6, 4), None),              # (N, C)
        ((3, 4, 5), None),           # (N, C, d): class axis 1 as in PyTorch
        ((3, 5, 4), -1),             # (N, d, C) with the class axis last (MXNet, MindSpore)
        ((2, 3, 2, 3), None),        # (N, C, d1, d2)
        ((2, 3, 7, 10), None)],      # 70 rows after the axis: tiles of rows side by side, the last one short
    -1: [((6, 4), None), ((3, 5, 4), None), ((3, 4, 5), 1), ((2, 3, 2, 2), (2, 3)), ((2, 4, 70), 1)],
    "all": [((4, 3), None), ((4, 3), 1), ((2, 3, 4), (1, 2))],
    0: [((6, 3), None), ((6, 3, 2), None), ((3, 6), 1), ((4, 70), None)],
}
ELEMENTWISE_SHAPES = [(6, 4), (2, 3, 4)]

LABEL_KEYS = [k for k, r in AXIS_REFERENCES.items() if r.labels and not r.static]
IGNORE_KEYS = [k for k, r in AXIS_REFERENCES.items() if r.ignore and not r.static]
COUNT_MEAN = {"softmax_focal"}     # ignore rows but no class-weighted mean


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------

def _layouts(ref):
    """(geometry, axis= passed by the call) pairs a reference is tested with."""
    if ref.elementwise:
        return [(Geometry(shape, None), None) for shape in ELEMENTWISE_SHAPES]
    return [(Geometry.of(shape, axis, ref.default_axis), axis) for shape, axis in LAYOUTS[ref.default_axis]]


def _cases():
    return [pytest.param(key, params, geometry, axis, id=f"{key}-{i}-{'x'.join(map(str, geometry.shape))}-axis{axis}")
            for key, ref in AXIS_REFERENCES.items()
            for i, params in enumerate(ref.params)
            for geometry, axis in _layouts(ref)]


def _rng(*parts):
    return np.random.default_rng(zlib.crc32(repr(parts).encode()))


def _loss(load_loss, ref, params=None):
    loss = load_loss(ref.name, **(ref.static or {}))
    return loss.with_params(**params) if params else loss


def _sample(ref, geometry, params, dtype, rng):
    """(call inputs, the same inputs axis last in float64 for the references): floats in `dtype`,
    labels int64; the float64 copies hold the values the call sees."""
    last = ref.sample(rng, geometry.sample_rows, geometry.length, {**(ref.static or {}), **params})
    call, ref_inputs = [], []
    for name, a in zip(ref.inputs, last):
        if a.dtype.kind == "f":
            a = a.astype(dtype)
        ref_inputs.append(a.astype(np.float64) if a.dtype.kind == "f" else a)
        call.append(geometry.to_call(a) if name in ref.along else a)
    return call, ref_inputs


def _reduced(values, divisor, reduction, factor):
    """The expected reduced value of per-row `values` weighted by `factor`, and the
    per-row multiplier of the gradient (of the sum of the result)."""
    v = values * factor
    if reduction == "none":
        return v, factor
    if reduction == "sum":
        return v.sum(), factor
    if reduction == "mean":
        return v.sum() / divisor, factor / divisor
    batch = v.shape[0]
    if reduction == "batch":
        per_sample = v.size // batch
        return v.reshape(batch, -1).mean(axis=1), factor / per_sample
    assert reduction == "batchmean"
    return v.sum() / batch, factor / batch


def _close(got, expected, rtol, what):
    atol = rtol * max(1.0, float(np.max(np.abs(expected), initial=0.0)))
    np.testing.assert_allclose(got, expected, rtol=rtol, atol=atol, err_msg=what)


def _tuple(grads):
    return grads if isinstance(grads, tuple) else (grads,)


# ---------------------------------------------------------------------------
# values and gradients against the references
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("key, params, geometry, axis", _cases())
def test_values_and_gradients_match_the_reference(load_loss, key, params, geometry, axis, dtype):
    ref = AXIS_REFERENCES[key]
    loss = _loss(load_loss, ref, params)
    rng = _rng(key, params, geometry.shape, axis)
    inputs, as64 = _sample(ref, geometry, params, dtype, rng)
    all_params = {**(ref.static or {}), **params}
    rows = geometry.rows
    weightings = [(None, None), (WEIGHT, np.asarray(rng.uniform(0.5, 2.0, rows)))]
    class_weights = [None, rng.uniform(0.2, 2.0, geometry.length)] if "class_weight" in ref.inputs else [None]
    rtol = TOLERANCE[dtype]
    options = {} if axis is None else {"axis": axis}
    for class_weight in class_weights:
        named = {} if class_weight is None else {"class_weight": class_weight.astype(dtype)}
        ref_named = {k: v.astype(dtype).astype(np.float64) for k, v in named.items()}
        values = ref.value(*as64, **ref_named, **all_params)
        grads = ref.grads(*as64, **ref_named, **all_params)
        divisor = ref.mean_divisor(*as64, **ref_named, **all_params)
        assert values.shape == rows
        for reduction in REDUCTIONS:
            if reduction in ("batch", "batchmean") and not rows:
                continue
            for weight, sample_weight in weightings:
                factor = (1.0 if weight is None else weight) * (np.ones(rows) if sample_weight is None
                                                               else sample_weight.astype(dtype))
                expected, scale = _reduced(values, divisor, reduction, factor)
                what = f"{reduction}, class_weight={class_weight is not None}, weight={weight}"
                value, got = loss.value_and_grad(*inputs, reduction=reduction, weight=weight,
                                                 sample_weight=sample_weight, **options, **named)
                assert np.asarray(value).dtype == dtype and np.shape(value) == np.shape(expected), what
                _close(value, expected, rtol, f"{what}: value")
                plain = loss(*inputs, reduction=reduction, weight=weight, sample_weight=sample_weight,
                             **options, **named)
                _close(plain, expected, rtol, f"{what}: value-only call")
                for name, g, expected_grad in zip(ref.wrt, _tuple(got), grads):
                    expected_grad = geometry.to_call(expected_grad * geometry.per_row(scale))
                    assert g.dtype == dtype and g.shape == geometry.shape, (name, what)
                    _close(g, expected_grad, rtol, f"{what}: d/d{name}")


@pytest.mark.parametrize("key", IGNORE_KEYS)
def test_ignored_rows_are_zero_and_left_out_of_the_mean(load_loss, key):
    ref = AXIS_REFERENCES[key]
    loss = load_loss(ref.name)
    geometry = Geometry.of((4, 3, 5), None, ref.default_axis)
    (logits, y), _ = _sample(ref, geometry, {}, np.float64, _rng("ignore", key))
    class_weight = np.array([0.5, 2.0, 1.5])
    ignored = y == -100                                    # PyTorch's default ignore_index
    assert ignored.any() and not ignored.all()
    values = loss(logits, y, reduction="none", class_weight=class_weight)
    assert np.all(values[ignored] == 0.0) and np.all(values[~ignored] != 0.0)
    grad = loss.grad(logits, y, reduction="sum", class_weight=class_weight)
    assert np.all(np.moveaxis(grad, 1, -1)[ignored] == 0.0)
    # "mean" divides by the class weights of the rows kept (PyTorch's weighted mean), or for
    # softmax_focal by their number (its spec: "reduction="mean" divides by the rows kept")
    divisor = (~ignored).sum() if key in COUNT_MEAN else class_weight[y[~ignored]].sum()
    np.testing.assert_allclose(loss(logits, y, reduction="mean", class_weight=class_weight),
                               values.sum() / divisor, rtol=1e-12)
    np.testing.assert_allclose(loss.grad(logits, y, reduction="mean", class_weight=class_weight),
                               grad / divisor, rtol=1e-12)


@pytest.mark.parametrize("key", IGNORE_KEYS)
def test_every_row_ignored_gives_a_nan_mean(load_loss, key):
    # PyTorch: cross_entropy / nll_loss with every target == ignore_index and reduction="mean" is nan
    loss = load_loss(AXIS_REFERENCES[key].name)
    logits, y = np.zeros((3, 4)), np.full(3, -100)
    assert np.isnan(loss(logits, y, reduction="mean"))
    assert loss(logits, y, reduction="sum") == 0.0
    np.testing.assert_array_equal(loss.grad(logits, y, reduction="sum"), np.zeros((3, 4)))
    np.testing.assert_array_equal(loss.grad(logits, y, reduction="mean"), np.zeros((3, 4)))  # as PyTorch's
    value, grad = loss.value_and_grad(logits, y, reduction="mean_or_zero")  # the option: 0, not NaN
    assert value == 0.0 and np.all(grad == 0)
    y[1] = 2  # one row kept: the same as "mean"
    logits[1] = [0.5, -1.0, 2.0, 0.0]
    assert loss(logits, y, reduction="mean_or_zero") == loss(logits, y, reduction="mean") == loss(logits[1:2], y[1:2])


# logits at +-1e4 (and ties), one row per line, class axis last; labels name the min, one of
# four equal logits, one of two maxima, the max
EXTREME_LOGITS = np.array([[1e4, -1e4, 0.0, 9999.0],
                           [-1e4, -1e4, -1e4, -1e4],
                           [1e4, 1e4, -1e4, 0.0],
                           [0.0, -1e4, 1e4, -9999.0]])
EXTREME_LABELS = np.array([1, 0, 1, 2])
EXTREME_CASES = [("cross_entropy", {"label_smoothing": 0.2}), ("cross_entropy_probs", {"label_smoothing": 0.3}),
                 ("poly1_ce", {"epsilon": -0.5, "label_smoothing": 0.1}), ("softmax_focal", {"gamma": 1.5}),
                 ("nll", {}), ("multi_margin", {"p": 2}), ("multilabel_soft_margin", {}),
                 ("gluon_kl_div_softmax", {})]
# (rtol, atol): float32 holds numbers near 1e4 only to within 2**-10 ~ 1e-3, so a logsumexp there,
# and the log-probabilities and softmax taken from it, carry absolute errors of a few 1e-3
EXTREME_TOLERANCE = {np.float64: (1e-9, 1e-9), np.float32: (2e-5, 4e-3)}


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("key, params", EXTREME_CASES)
def test_extreme_logits_are_finite_and_follow_the_reference(load_loss, key, params, dtype):
    ref = AXIS_REFERENCES[key]
    loss = _loss(load_loss, ref, params)
    geometry = Geometry.of(EXTREME_LOGITS.shape, None, ref.default_axis)
    inputs, as64 = _sample(ref, geometry, params, dtype, _rng("extreme", key))
    inputs[0] = EXTREME_LOGITS.astype(dtype)
    as64[0] = EXTREME_LOGITS
    if ref.labels:
        inputs[1] = as64[1] = EXTREME_LABELS
    named = {"class_weight": np.array([0.5, 2.0, 1.0, 1.5])} if "class_weight" in ref.inputs else {}
    all_params = {**(ref.static or {}), **params}
    expected = ref.value(*as64, **named, **all_params)
    (expected_grad,) = ref.grads(*as64, **named, **all_params)
    value, grad = loss.value_and_grad(*inputs, reduction="none", **{k: v.astype(dtype) for k, v in named.items()})
    assert np.isfinite(expected).all() and np.isfinite(expected_grad).all()
    assert np.isfinite(value).all() and np.isfinite(grad).all()
    rtol, atol = EXTREME_TOLERANCE[dtype]
    np.testing.assert_allclose(value, expected, rtol=rtol, atol=atol, err_msg="value")
    np.testing.assert_allclose(grad, expected_grad, rtol=rtol, atol=atol, err_msg="gradient")


# ---------------------------------------------------------------------------
# bad inputs
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("bad, row", [(5, (2, 1)), (-1, (1, 0)), (7, (0, 1))])
@pytest.mark.parametrize("key", LABEL_KEYS)
def test_labels_outside_the_axis_name_the_row_and_the_label(load_loss, key, bad, row):
    loss = load_loss(AXIS_REFERENCES[key].name)
    logits = _rng("labels", key).normal(size=(3, 4, 2))      # 4 classes on axis 1, rows (3, 2); labels 5, 7
                                                             # differ from every number the message needs
    y = np.zeros((3, 2), dtype=np.int64)
    y[row] = bad
    for call in (loss, loss.value_and_grad):
        with pytest.raises(LossLabelError) as info:
            call(logits, y)
        message = str(info.value)
        assert re.search(rf"(?<![\w.-]){bad}(?![\w.])", message), message
        assert str(row) in message, message
    assert issubclass(LossLabelError, IndexError) and issubclass(LossLabelError, lossdsl.LossInputError)


@pytest.mark.parametrize("key", IGNORE_KEYS)
def test_a_negative_ignore_index_is_not_a_label_error(load_loss, key):
    loss = load_loss(AXIS_REFERENCES[key].name).with_params(ignore_index=-1)
    logits = _rng("negative ignore", key).normal(size=(3, 4))
    values = loss(logits, np.array([0, -1, 3]), reduction="none")
    assert values[1] == 0.0 and values[0] != 0.0 and values[2] != 0.0
    with pytest.raises(LossLabelError):
        loss(logits, np.array([0, -2, 3]))


@pytest.mark.parametrize("key", LABEL_KEYS)
def test_float_labels_must_be_whole_numbers(load_loss, key):
    loss = load_loss(AXIS_REFERENCES[key].name)
    logits = _rng("float labels", key).normal(size=(5, 4))
    y = np.array([0, 3, 1, 2, 1])
    np.testing.assert_array_equal(loss(logits, y.astype(np.float64), reduction="none"),
                                  loss(logits, y, reduction="none"))
    for bad in (y + 0.5, np.where(y == 1, np.nan, y), np.where(y == 1, 1.25, y).astype(np.float32)):
        with pytest.raises(lossdsl.LossInputError) as info:
            loss.value_and_grad(logits, bad)
        assert not isinstance(info.value, LossLabelError)


def _broken_inputs(ref):
    """(input name, its inputs with that one input of a shape that fits neither the rows nor the axis)."""
    geometry = Geometry((4, 3), None) if ref.elementwise else Geometry.of((4, 3), None, ref.default_axis)
    inputs, _ = _sample(ref, geometry, {}, np.float64, _rng("shapes", ref.name))
    for i, name in enumerate(ref.inputs[1:len(inputs)], start=1):
        a = inputs[i]
        if name in ref.along or ref.elementwise:
            bad = np.concatenate([a, a[:, :1]], axis=1)      # (4, 4) against (4, 3)
        else:
            bad = np.concatenate([a, a[:1]], axis=0)         # one row too many
        yield name, inputs[:i] + [bad] + inputs[i + 1:], {}
    if "class_weight" in ref.inputs:
        yield "class_weight", inputs, {"class_weight": np.ones(geometry.length + 1)}


@pytest.mark.parametrize("key", [k for k, r in AXIS_REFERENCES.items() if not r.static])
def test_shape_mismatches_are_input_errors(load_loss, key):
    ref = AXIS_REFERENCES[key]
    loss = load_loss(ref.name)
    broken = list(_broken_inputs(ref))
    assert broken
    for name, inputs, named in broken:
        for call in (loss, loss.value_and_grad):
            with pytest.raises(lossdsl.LossInputError, match=rf"\b{name}\b"):
                call(*inputs, **named)


# ---------------------------------------------------------------------------
# documented figures
# ---------------------------------------------------------------------------

def test_pytorch_cross_entropy_figure(load_loss):
    # PyTorch: F.cross_entropy([[10, 0, -10], [8, 8, 8]], [0, 2]) = 0.5493 (mean; 4 decimals as
    # given in the brief); by hand: (log(1 + e^-10 + e^-20) + log 3) / 2
    value = load_loss("cross_entropy")(np.array([[10.0, 0.0, -10.0], [8.0, 8.0, 8.0]]), np.array([0, 2]))
    assert round(float(value), 4) == 0.5493
    np.testing.assert_allclose(value, (np.log1p(np.exp(-10.0) + np.exp(-20.0)) + np.log(3.0)) / 2, rtol=1e-13)


def test_mxnet_softmax_cross_entropy_figure(load_loss):
    # MXNet SoftmaxCrossEntropyLoss on [[1, 10], [8, 2]], labels [0, 1], per sample:
    # logsumexp(row) - picked = 9 + log1p(e^-9) ~ 9.0001234, 6 + log1p(e^-6) ~ 6.0024757
    value = load_loss("cross_entropy")(np.array([[1.0, 10.0], [8.0, 2.0]]), np.array([0, 1]),
                                       axis=-1, reduction="batch")
    np.testing.assert_allclose(value, [9.0 + np.log1p(np.exp(-9.0)), 6.0 + np.log1p(np.exp(-6.0))], rtol=1e-13)
    np.testing.assert_allclose(value, [9.0001234, 6.0024757], atol=5e-8)


def test_mxnet_kl_div_tutorial_figure(load_loss):
    # MXNet Gluon loss tutorial: KLDivLoss(from_logits=False) of this output against this target is
    # "about 0.02". The output is log([0.2, 0.5, 0.2, 0.1]) + 2 to 8 digits, so the per-sample value is
    # KL(target || [0.2, 0.5, 0.2, 0.1]) / 4 (MXNet averages over the axis):
    # (0.3 log 1.5 + 0.4 log 0.8 + 0.1 log 0.5 + 0.2 log 2) / 4 = 0.0254242..., which rounds to 0.03,
    # not 0.02: the tutorial's figure is checked only as far as it goes (between 0.02 and 0.03).
    output = np.array([[0.39056206, 1.3068528, 0.39056206, -0.30258512]])
    target = np.array([[0.3, 0.4, 0.1, 0.2]])
    value = load_loss("gluon_kl_div", from_logits=False)(output, target, reduction="batch")
    log_p = output - np.log(np.exp(output).sum())
    np.testing.assert_allclose(value, [np.mean(target * (np.log(target + 1e-12) - log_p))], rtol=1e-12)
    by_hand = (0.3 * np.log(1.5) + 0.4 * np.log(0.8) + 0.1 * np.log(0.5) + 0.2 * np.log(2.0)) / 4
    np.testing.assert_allclose(value, [by_hand], rtol=1e-7)     # the output's 8 digits limit the match
    assert 0.02 < value[0] < 0.03


def test_mindspore_dice_figure(load_loss):
    # mindspore.nn.DiceLoss(smooth=1e-5) docstring example, float32: prints 0.38596618
    # (mindspore.cn docs r1.6 to r2.11). By hand: 1 - 2 * 1.4 / (1.56 + 3 + 1e-5) = 0.3859662588...
    # (the 0.38596651 quoted in the brief matches neither: it is 6.5e-7 off, ~8 float32 ulps)
    logits = np.array([[0.2, 0.5], [0.3, 0.1], [0.9, 0.6]])
    labels = np.array([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    loss = load_loss("dice")
    np.testing.assert_allclose(loss(logits, labels), 1 - 2 * 1.4 / (4.56 + 1e-5), rtol=1e-13)
    as32 = loss(logits.astype(np.float32), labels.astype(np.float32))
    np.testing.assert_allclose(as32, 0.38596618, atol=1e-7)         # float32: within ~3 ulps of the docs


def test_mindspore_multiclass_dice(load_loss):
    # mindspore.nn.MultiClassDiceLoss(weights=None, activation=None): the mean over the class
    # columns of DiceLoss(column of logits, column of labels), computed here by NumPy
    logits = np.array([[0.2, 0.5, 0.7], [0.3, 0.1, 0.5], [0.9, 0.6, 0.3]])
    labels = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    per_class = [1 - 2 * np.sum(p * y) / (np.sum(p * p) + np.sum(y * y) + 1e-5) for p, y in zip(logits.T, labels.T)]
    loss = load_loss("multiclass_dice")
    np.testing.assert_allclose(loss(logits, labels, reduction="none"), per_class, rtol=1e-13)
    np.testing.assert_allclose(loss(logits, labels), np.mean(per_class), rtol=1e-13)


# ---------------------------------------------------------------------------
# gradients against finite differences
# ---------------------------------------------------------------------------

def _central_differences(f, inputs, index, h=1e-6):
    """d f / d inputs[index] by central differences, element by element (float64)."""
    x = np.asarray(inputs[index], dtype=np.float64)
    grad = np.empty_like(x)
    for i in np.ndindex(x.shape):
        step = h * max(1.0, abs(x[i]))
        shifted = []
        for sign in (1.0, -1.0):
            moved = x.copy()
            moved[i] += sign * step
            shifted.append(f(*inputs[:index], moved, *inputs[index + 1:]))
        grad[i] = (shifted[0] - shifted[1]) / (2 * step)
    return grad


def _reference_total(ref, named, params, *inputs):
    return ref.value(*inputs, **named, **params).sum()


@pytest.mark.parametrize("key", list(AXIS_REFERENCES))
def test_reference_gradients_match_finite_differences(key):
    """The analytic gradients in axis_references.py against central differences of its own values."""
    ref = AXIS_REFERENCES[key]
    for params in ref.params:
        all_params = {**(ref.static or {}), **params}
        inputs = list(ref.sample(_rng("reference fd", key, params), (3,), 4, all_params))
        named = {"class_weight": np.array([0.5, 1.0, 2.0, 1.5])} if "class_weight" in ref.inputs else {}
        grads = ref.grads(*inputs, **named, **all_params)
        assert len(grads) == len(ref.wrt)
        total = functools.partial(_reference_total, ref, named, all_params)
        for name, g in zip(ref.wrt, grads):
            numeric = _central_differences(total, inputs, ref.inputs.index(name))
            np.testing.assert_allclose(g, numeric, rtol=1e-6, atol=1e-7, err_msg=f"{params}: d/d{name}")


LOSSDSL_FD_CASES = [
    ("cross_entropy", {"label_smoothing": 0.1}),
    ("softmax_focal", {"gamma": 1.5}),
    ("multi_margin", {"p": 2}),
    ("gluon_kl_div_softmax", {}),
    ("triplet_swap", {}),
    ("cosine_embedding", {"margin": 0.2}),
    ("cosine_similarity", {}),
    ("tversky", {"alpha": 0.3, "beta": 0.7}),
]


@pytest.mark.parametrize("key, params", LOSSDSL_FD_CASES)
def test_lossdsl_gradient_matches_its_finite_differences(load_loss, key, params):
    ref = AXIS_REFERENCES[key]
    loss = _loss(load_loss, ref, params)
    geometry = Geometry.of((2, 3, 2), 1, ref.default_axis)
    inputs, _ = _sample(ref, geometry, params, np.float64, _rng("lossdsl fd", key))
    named = {"class_weight": np.array([0.5, 2.0, 1.5])} if "class_weight" in ref.inputs else {}
    _, grads = loss.value_and_grad(*inputs, reduction="sum", axis=1, **named)
    for name, g in zip(ref.wrt, _tuple(grads)):
        numeric = _central_differences(lambda *a: loss(*a, reduction="sum", axis=1, **named), inputs,
                                       ref.inputs.index(name))
        np.testing.assert_allclose(g, numeric, rtol=1e-6, atol=1e-7, err_msg=f"d/d{name}")


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_masked_classes_leave_the_loss_finite_with_zero_gradient(load_loss, dtype):
    """-inf logits (masked classes, never the label): the loss of the unmasked ones, exactly zero gradient."""
    rng = np.random.default_rng(11)
    logits = rng.normal(size=(6, 7)).astype(dtype)
    y = rng.integers(0, 3, 6)
    masked = np.zeros_like(logits, bool)
    masked[:, 4:] = True
    masked[2, 3] = True
    logits[masked] = -np.inf
    kept = np.where(masked, -np.inf, logits.astype(np.float64))
    lse = np.log(np.exp(kept).sum(axis=1))
    expected = lse - kept[np.arange(6), y]
    for name, target in (("cross_entropy", y), ("cross_entropy_probs", np.eye(7)[y])):
        values, grad = load_loss(name).value_and_grad(logits, target, axis=-1, reduction="none")
        tolerance = 1e-12 if dtype == np.float64 else 2e-6
        np.testing.assert_allclose(values, expected, rtol=tolerance)
        assert np.all(grad[masked] == 0) and np.isfinite(grad).all()


def test_z_loss_adds_the_squared_log_normaliser(load_loss):
    """PaLM's z-loss: z * logsumexp(logits)^2 per row, beside class weights and ignored rows."""
    rng = np.random.default_rng(12)
    logits, y = rng.normal(size=(8, 5)) * 3, rng.integers(0, 5, 8)
    y[1] = -100
    class_weight = rng.uniform(0.5, 2.0, 5)
    loss = load_loss("cross_entropy", z_loss=1e-3)
    value, grad = loss.value_and_grad(logits, y, class_weight, axis=-1)
    kept = y != -100
    lse = np.log(np.exp(logits).sum(axis=1))
    rows = class_weight[y[kept]] * (lse[kept] - logits[kept, y[kept]]) + 1e-3 * lse[kept] ** 2
    divisor = class_weight[y[kept]].sum()
    np.testing.assert_allclose(value, rows.sum() / divisor, rtol=1e-12)
    softmax = np.exp(logits - lse[:, None])
    label = np.where(kept, y, 0)  # ignored rows: any label, their gradient is zeroed below
    expected = (class_weight[label][:, None] * (softmax - np.eye(5)[label])
                + 2e-3 * lse[:, None] * softmax) * kept[:, None] / divisor
    np.testing.assert_allclose(grad, expected, rtol=1e-10, atol=1e-14)


def test_the_weighting_rule_of_cross_entropy_as_its_docstring_works_it(load_loss):
    """Sample weights, class weights, an ignored row and label smoothing, by the rule in the spec's text."""
    logits = np.array([[2.0, 0, 0], [0, 1, 0], [5, 5, 5]])
    y, class_weight, sample_weight = np.array([0, 2, -100]), np.array([1, 2, 0.5]), np.array([1.0, 3, 5])
    ce = load_loss("cross_entropy")
    assert ce(logits, y, class_weight, sample_weight=sample_weight) == pytest.approx(1.7111, abs=1e-4)
    for a in (0.0, 0.1):
        lse = np.log(np.exp(logits).sum(axis=1))
        nll = lse - logits[np.arange(3), np.maximum(y, 0)]
        smooth = lse * class_weight.mean() - (class_weight * logits).mean(axis=1)
        rows = sample_weight * ((1 - a) * class_weight[np.maximum(y, 0)] * nll + a * smooth) * (y != -100)
        expected = rows.sum() / class_weight[y[:2]].sum()
        loss = ce.with_params(label_smoothing=a)
        assert loss(logits, y, class_weight, sample_weight=sample_weight) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("name", ["cross_entropy", "linear_cross_entropy"])
def test_megatron_label_smoothing_spreads_over_the_other_classes(load_loss, name):
    """smoothing="megatron": target 1 - a on the label and a/(C-1) on each other class."""
    rng = np.random.default_rng(12)
    x, weight = rng.normal(size=(6, 4)), rng.normal(size=(5, 4))
    logits, y, a = x @ weight.T, rng.integers(0, 5, 6), 0.2
    target = np.full((6, 5), a / 4)
    target[np.arange(6), y] = 1 - a
    log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    expected = -(target * log_p).sum(axis=1).mean()
    loss = load_loss(name, label_smoothing=a, smoothing="megatron")
    got = loss(logits, y, axis=-1) if name == "cross_entropy" else loss(x, weight, y)
    assert got == pytest.approx(expected, rel=1e-12)
