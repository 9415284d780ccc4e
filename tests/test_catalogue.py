"""Every catalogue loss against its independent NumPy reference (tests/references.py):
values and gradients, every reduction, both float dtypes, with and without weights,
inputs at the edges, and the derived gradient against finite differences."""
import numpy as np
import pytest

import lossdsl
from lossdsl.gradcheck import check
from axis_references import AXIS_REFERENCES
from references import REFERENCES
from test_ctc_dsl import SEQUENCE_LOSSES
from test_multilabel_margin import ROW_LOSSES
from test_linear_heads import HEADS
from test_distillation import DISTILLATION
from test_topk import LIST_AXIS
from test_grpo import GRPO
from test_preference import PREFERENCE

SHAPE = (6, 5)
TOLERANCE = {np.float64: 1e-10, np.float32: 2e-5}
CASES = [(key, index) for key, ref in REFERENCES.items() for index in range(len(ref.params))]


def test_every_catalogue_loss_has_a_reference():
    covered = ({ref.name for ref in REFERENCES.values()} | {ref.name for ref in AXIS_REFERENCES.values()}
               | set(SEQUENCE_LOSSES) | set(ROW_LOSSES) | set(HEADS) | set(DISTILLATION)
               | set(LIST_AXIS) | set(GRPO) | set(PREFERENCE))
    assert covered == set(lossdsl.catalogue())


def _inputs(key, index, dtype):
    ref = REFERENCES[key]
    rng = np.random.default_rng([index, *map(ord, key)])
    return ref, [np.asarray(a, dtype) for a in ref.sample(rng, SHAPE)]


def _reduce(elements, reduction):
    return {"none": elements, "sum": elements.sum(), "mean": elements.mean(), "batch": elements.mean(axis=1)}[reduction]


def _grad_scale(reduction):
    return {"none": 1.0, "sum": 1.0, "mean": 1.0 / np.prod(SHAPE), "batch": 1.0 / SHAPE[1]}[reduction]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("key, index", CASES)
def test_values_and_gradients_match_the_reference(load_loss, key, index, dtype):
    ref, inputs = _inputs(key, index, dtype)
    params = ref.params[index]
    loss = load_loss(ref.name, **params)
    as64 = [a.astype(np.float64) for a in inputs]
    elements, grads = ref.value(*as64, **params), ref.grads(*as64, **params)
    sample_weight = np.linspace(0.5, 2.0, SHAPE[0]).reshape(-1, 1)
    rtol = TOLERANCE[dtype]
    for reduction in ("none", "sum", "mean", "batch"):
        for weight, sw in ((None, None), (3.0, sample_weight)):
            w = (1.0 if weight is None else weight) * (1.0 if sw is None else sw)
            value, got = loss.value_and_grad(*inputs, reduction=reduction, weight=weight, sample_weight=sw)
            got = got if isinstance(got, tuple) else (got,)
            expected = _reduce(elements * w, reduction)
            atol = rtol * max(1.0, float(np.abs(elements * w).max()))
            assert np.asarray(value).dtype == dtype and np.shape(value) == np.shape(expected)
            np.testing.assert_allclose(value, expected, rtol=rtol, atol=atol, err_msg=f"{reduction} value")
            plain = loss(*inputs, reduction=reduction, weight=weight, sample_weight=sw)
            np.testing.assert_allclose(plain, value, rtol=rtol, atol=atol, err_msg=f"{reduction} call")
            for name, g, expected_grad in zip(ref.wrt, got, grads):
                expected_grad = expected_grad * w * _grad_scale(reduction)
                assert g.dtype == dtype and g.shape == SHAPE
                gtol = rtol * max(1.0, float(np.abs(expected_grad).max()))
                np.testing.assert_allclose(g, expected_grad, rtol=rtol, atol=gtol, err_msg=f"{reduction} d/d{name}")


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("key, index", CASES)
def test_edges_are_finite_and_follow_the_reference(load_loss, key, index, dtype):
    ref = REFERENCES[key]
    if ref.edges is None:
        pytest.skip("no edge inputs")
    params = ref.params[index]
    inputs = [np.asarray(a, dtype) for a in ref.edges()]
    loss = load_loss(ref.name, **params)
    value, grads = loss.value_and_grad(*inputs, reduction="none")
    grads = grads if isinstance(grads, tuple) else (grads,)
    as64 = [a.astype(np.float64) for a in inputs]
    expected_value, expected_grads = ref.value(*as64, **params), ref.grads(*as64, **params)
    finite = np.isfinite(expected_value)
    for g in expected_grads:
        finite &= np.isfinite(g)
    assert np.isfinite(value[finite]).all()
    rtol = 1e-9 if dtype == np.float64 else 1e-4
    np.testing.assert_allclose(value[finite], expected_value[finite], rtol=rtol, atol=rtol)
    for name, g, expected in zip(ref.wrt, grads, expected_grads):
        assert np.isfinite(g[finite]).all(), name
        np.testing.assert_allclose(g[finite], expected[finite], rtol=rtol, atol=rtol, err_msg=f"d/d{name}")


@pytest.mark.parametrize("name", lossdsl.catalogue())
def test_derived_gradient_matches_finite_differences(load_loss, name):
    rows = check(load_loss(name), points=128)
    assert rows and all(row.passed for row in rows), rows
