"""Check the NumPy references in ``tests/references.py`` against PyTorch.

Values with ``reduction='none'`` and autograd gradients of their sum are
compared in float64, for every reference and every parameter setting, on
random interior inputs and on each reference's edge inputs (kinks, p = 0/1,
logits +-1e4, var below eps).  Documented differences between PyTorch and
the catalogue conventions are asserted explicitly, so a change on either side
shows up here.
"""

from __future__ import annotations

import inspect
import math
import os
import sys
import zlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from references import REFERENCES, Reference  # noqa: E402

DT = torch.float64
SHAPE = (7, 5)
RTOL, ATOL = 1e-10, 1e-12
# PyTorch's binary_cross_entropy backward divides by max(p (1 - p), EPSILON)
# with EPSILON = 1e-12 held in float32, i.e. 9.99999996e-13: at a clamped
# point its gradient is 1.0000000039958e12 where the catalogue has 1e12.
EDGE_RTOL = {"bce": 1e-8, "bce_pos_weight": 1e-8, "focal": 1e-8}


# ---------------------------------------------------------------------------
# PyTorch versions of each loss: fn(*tensors, **params) -> per-element loss
# ---------------------------------------------------------------------------

def _t(x):
    return torch.as_tensor(x, dtype=DT)


def _quantile(p, t, q=0.5):
    d = t - p
    return torch.where(d >= 0, q * d, (q - 1) * d)


def _focal_tutorial(p, y, alpha=0.25, gamma=2.0):
    bce = F.binary_cross_entropy(p, y, reduction="none")
    p_t = p * y + (1 - p) * (1 - y)
    alpha_t = alpha * y + (1 - alpha) * (1 - y)
    return alpha_t * (1 - p_t) ** gamma * bce


def _sigmoid_focal(x, y, alpha=0.25, gamma=2.0):
    # torchvision.ops.sigmoid_focal_loss(reduction="none"), written out
    p = torch.sigmoid(x)
    ce = F.binary_cross_entropy_with_logits(x, y, reduction="none")
    p_t = p * y + (1 - p) * (1 - y)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * y + (1 - alpha) * (1 - y)) * loss
    return loss


def _logistic(x, y, label_format="signed"):
    if label_format == "signed":
        return F.soft_margin_loss(x, y, reduction="none")
    return F.binary_cross_entropy_with_logits(x, y, reduction="none")


def _stable_softplus_neg_xy(x, y, **_):
    z = -x * y
    return torch.logaddexp(torch.zeros_like(z), z)


TORCH = {
    "l1": lambda p, t: F.l1_loss(p, t, reduction="none"),
    "mse": lambda p, t: F.mse_loss(p, t, reduction="none"),
    "l2": lambda p, t: 0.5 * F.mse_loss(p, t, reduction="none"),
    "smooth_l1": lambda p, t, beta=1.0: F.smooth_l1_loss(p, t, reduction="none", beta=beta),
    "huber": lambda p, t, delta=1.0: F.huber_loss(p, t, reduction="none", delta=delta),
    "log_cosh": lambda p, t: torch.log(torch.cosh(p - t)),
    "quantile": _quantile,
    "bce": lambda p, y: F.binary_cross_entropy(p, y, reduction="none"),
    # PyTorch's BCE with its positive term counted pos_weight times (BCE against target 1 is -clog(p))
    "bce_pos_weight": lambda p, y, pos_weight=1.0: F.binary_cross_entropy(p, y, reduction="none") + (
        (pos_weight - 1) * y * F.binary_cross_entropy(p, torch.ones_like(p), reduction="none")),
    # MXNet SigmoidBCELoss(from_sigmoid=True) as its source writes it (no clamp; 1. - pred + eps)
    "bce_mxnet": lambda p, y, convention="mxnet", eps=1e-12, pos_weight=1.0: -(
        torch.log(p + eps) * y * pos_weight + torch.log(1. - p + eps) * (1. - y)),
    "bce_with_logits": lambda x, y, pos_weight=1.0: F.binary_cross_entropy_with_logits(
        x, y, reduction="none", pos_weight=_t(pos_weight)),
    "focal": _focal_tutorial,
    "sigmoid_focal": _sigmoid_focal,
    "hinge": lambda x, y, margin=1.0: torch.relu(margin - x * y),
    "squared_hinge": lambda x, y, margin=1.0: torch.relu(margin - x * y) ** 2,
    "logistic": _logistic,
    "logistic_binary": _logistic,
    "soft_margin": lambda x, y: F.soft_margin_loss(x, y, reduction="none"),
    "poisson_nll": lambda x, t, log_input=True, full=False, eps=1e-8: F.poisson_nll_loss(
        x, t, log_input=log_input, full=full, eps=eps, reduction="none"),
    "gaussian_nll": lambda x, t, v, full=False, eps=1e-6: F.gaussian_nll_loss(
        x, t, v, full=full, eps=eps, reduction="none"),
    # XGBoost's tweedie-nloglik on mu = exp(x), in torch ops (PyTorch has no Tweedie loss)
    "tweedie": lambda x, t, variance_power=1.5: (torch.exp((2 - variance_power) * x) / (2 - variance_power)
                                                 - t * torch.exp((1 - variance_power) * x) / (1 - variance_power)),
    "margin_ranking": lambda a, b, y, margin=0.0: F.margin_ranking_loss(
        a, b, y, margin=margin, reduction="none"),
    "hinge_embedding": lambda x, y, margin=1.0: F.hinge_embedding_loss(
        x, y, margin=margin, reduction="none"),
}

# Stable torch expressions of the same loss, for edge inputs where the builtin
# (or the naive formula) overflows to inf although the loss is finite.
TORCH_STABLE = {
    "log_cosh": lambda p, t: torch.logaddexp(p - t, t - p) - math.log(2.0),
    "soft_margin": _stable_softplus_neg_xy,
    "logistic": _stable_softplus_neg_xy,
}


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------

def _cases(with_edges=False):
    out = []
    for key, ref in REFERENCES.items():
        if with_edges and ref.edges is None:
            continue
        for i, params in enumerate(ref.params):
            out.append(pytest.param(key, params, id=f"{key}-{i}"))
    return out


def _torch_eval(fn, ref: Reference, arrays, params):
    tensors = []
    for name, a in zip(ref.inputs, arrays):
        t = _t(np.array(a, dtype=np.float64))
        if name in ref.wrt:
            t.requires_grad_(True)
        tensors.append(t)
    value = fn(*tensors, **params)
    value.sum().backward()
    grads = tuple(t.grad.detach().numpy() for name, t in zip(ref.inputs, tensors)
                  if name in ref.wrt)
    return value.detach().numpy(), grads


def _ref_eval(ref: Reference, arrays, params):
    value = np.asarray(ref.value(*arrays, **params))
    grads = tuple(np.asarray(g) for g in ref.grads(*arrays, **params))
    return value, grads


def _rng(key, i=0):
    return np.random.default_rng(zlib.crc32(f"{key}-{i}".encode()))


# ---------------------------------------------------------------------------
# structure of the catalogue of references
# ---------------------------------------------------------------------------

def test_every_reference_has_a_torch_version():
    """Which catalogue losses need one is derived from the specs in tests/test_torch_names.py."""
    assert set(TORCH) == set(REFERENCES)


def _kw_defaults(fn):
    sig = inspect.signature(fn)
    return {n: p.default for n, p in sig.parameters.items()
            if p.kind is inspect.Parameter.KEYWORD_ONLY}


@pytest.mark.parametrize("key", sorted(REFERENCES))
def test_reference_structure(key):
    ref = REFERENCES[key]
    assert ref.source
    assert set(ref.wrt) <= set(ref.inputs) and ref.wrt
    if key == ref.name:
        assert ref.params[0] == {}
    defaults = _kw_defaults(ref.value)
    assert _kw_defaults(ref.grads) == defaults
    assert all(d is not inspect.Parameter.empty for d in defaults.values())
    n_pos = [p for p in inspect.signature(ref.value).parameters.values()
             if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
    assert len(n_pos) == len(ref.inputs)
    for params in ref.params:
        assert set(params) <= set(defaults)
    # every parameter is set to a non-default value somewhere for this name
    covered = {k for r in REFERENCES.values() if r.name == ref.name
               for p in r.params for k, v in p.items() if v != defaults[k]}
    assert covered == set(defaults)

    arrays = ref.sample(_rng(key), SHAPE)
    assert len(arrays) == len(ref.inputs)
    for a in arrays:
        assert a.dtype == np.float64 and a.shape == SHAPE
    for params in ref.params:
        value, grads = _ref_eval(ref, arrays, params)
        assert value.shape == SHAPE and np.all(np.isfinite(value))
        assert len(grads) == len(ref.wrt)
        for g in grads:
            assert g.shape == SHAPE and np.all(np.isfinite(g))
    if ref.edges is not None:
        e = ref.edges()
        assert len(e) == len(ref.inputs)
        assert all(a.ndim == 1 and a.dtype == np.float64 and a.shape == e[0].shape for a in e)


# ---------------------------------------------------------------------------
# agreement with PyTorch
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("key,params", _cases())
def test_matches_torch_interior(key, params):
    ref = REFERENCES[key]
    arrays = ref.sample(_rng(key, 1), SHAPE)
    value, grads = _ref_eval(ref, arrays, params)
    t_value, t_grads = _torch_eval(TORCH[key], ref, arrays, params)
    np.testing.assert_allclose(value, t_value, rtol=RTOL, atol=ATOL)
    for name, g, tg in zip(ref.wrt, grads, t_grads):
        np.testing.assert_allclose(g, tg, rtol=RTOL, atol=ATOL, err_msg=f"d/d{name}")


@pytest.mark.parametrize("key,params", _cases(with_edges=True))
def test_matches_torch_edges(key, params):
    ref = REFERENCES[key]
    arrays = ref.edges()
    value, grads = _ref_eval(ref, arrays, params)
    assert np.all(np.isfinite(value)), value
    for g in grads:
        assert np.all(np.isfinite(g)), g

    rtol = EDGE_RTOL.get(key, RTOL)
    t_value, t_grads = _torch_eval(TORCH[key], ref, arrays, params)
    finite = np.isfinite(t_value)
    for tg in t_grads:
        finite &= np.isfinite(tg)
    if key in TORCH_STABLE:
        # the builtin may overflow here; where it does not, it must agree ...
        s_value, s_grads = _torch_eval(TORCH_STABLE[key], ref, arrays, params)
        np.testing.assert_allclose(value, s_value, rtol=rtol, atol=ATOL)
        for name, g, sg in zip(ref.wrt, grads, s_grads):
            np.testing.assert_allclose(g, sg, rtol=rtol, atol=ATOL, err_msg=f"d/d{name}")
    else:
        # ... and elsewhere torch must be finite at every edge point.
        assert finite.all(), f"torch not finite at {[a[~finite] for a in arrays]}"
    np.testing.assert_allclose(value[finite], t_value[finite], rtol=rtol, atol=ATOL)
    for name, g, tg in zip(ref.wrt, grads, t_grads):
        np.testing.assert_allclose(g[finite], tg[finite], rtol=rtol, atol=ATOL, err_msg=f"d/d{name}")


# ---------------------------------------------------------------------------
# documented conventions, pinned explicitly
# ---------------------------------------------------------------------------

def _torch_grad(fn, *xs, n_grad=1, **kw):
    ts = [_t(x) for x in xs]
    for t in ts[:n_grad]:
        t.requires_grad_(True)
    v = fn(*ts, **kw)
    v.sum().backward()
    return v.detach().numpy(), [t.grad.numpy() for t in ts[:n_grad]]


def test_bce_edge_convention():
    ref = REFERENCES["bce"]
    p = np.array([0.0, 1.0, 0.0, 1.0])
    y = np.array([1.0, 0.0, 0.0, 1.0])
    value, (g,) = _ref_eval(ref, (p, y), {})
    t_value, (tg,) = _torch_grad(TORCH["bce"], p, y)
    np.testing.assert_array_equal(value, [100.0, 100.0, 0.0, 0.0])
    np.testing.assert_array_equal(t_value, value)
    # clamped points: same sign, equal up to torch's float32 epsilon
    np.testing.assert_array_equal(g[:2], [-1e12, 1e12])
    np.testing.assert_allclose(tg[:2], g[:2], rtol=1e-8)
    assert np.all(np.sign(tg[:2]) == np.sign(g[:2]))
    # perfect predictions at the end points: 0, as in torch
    np.testing.assert_array_equal(g[2:], [0.0, 0.0])
    np.testing.assert_array_equal(tg[2:], [0.0, 0.0])


def test_bce_interior_matches_torch_backward_formula():
    ref = REFERENCES["bce"]
    p, y = ref.sample(_rng("bce", 2), (50,))
    (g,) = ref.grads(p, y)
    np.testing.assert_allclose(g, (p - y) / np.maximum(p * (1 - p), 1e-12), rtol=1e-6, atol=1e-12)


def test_kink_conventions_match_torch():
    # clamp_min (margin_ranking, hinge_embedding) passes the gradient at 0
    _, (g1, g2) = _torch_grad(TORCH["margin_ranking"], [1.0, 1.0], [1.0, 1.0], [1.0, -1.0], n_grad=2)
    np.testing.assert_array_equal(g1, [-1.0, 1.0])
    np.testing.assert_array_equal(g2, [1.0, -1.0])
    rg1, rg2 = REFERENCES["margin_ranking"].grads(np.ones(2), np.ones(2), np.array([1.0, -1.0]))
    np.testing.assert_array_equal(rg1, g1)
    np.testing.assert_array_equal(rg2, g2)

    _, (g,) = _torch_grad(TORCH["hinge_embedding"], [1.0], [-1.0])
    np.testing.assert_array_equal(g, [-1.0])
    np.testing.assert_array_equal(REFERENCES["hinge_embedding"].grads(np.ones(1), -np.ones(1))[0], g)

    # relu (hinge) does not; l1 / smooth_l1(beta=0) have 0 at d == 0
    _, (g,) = _torch_grad(TORCH["hinge"], [1.0], [1.0])
    np.testing.assert_array_equal(g, [0.0])
    np.testing.assert_array_equal(REFERENCES["hinge"].grads(np.ones(1), np.ones(1))[0], [0.0])
    for key, kw in [("l1", {}), ("smooth_l1", {"beta": 0.0})]:
        _, (g,) = _torch_grad(TORCH[key], [2.0], [2.0], **kw)
        np.testing.assert_array_equal(g, [0.0])
        np.testing.assert_array_equal(REFERENCES[key].grads(np.full(1, 2.0), np.full(1, 2.0), **kw)[0], [0.0])

    # quantile at pred == target: -q (LightGBM), also what torch.where gives
    _, (g,) = _torch_grad(TORCH["quantile"], [2.0], [2.0], q=0.3)
    np.testing.assert_allclose(g, [-0.3])
    np.testing.assert_allclose(REFERENCES["quantile"].grads(np.full(1, 2.0), np.full(1, 2.0), q=0.3)[0], [-0.3])


def test_soft_margin_builtin_overflows_where_reference_is_finite():
    x = np.array([1e4, -1e4])
    y = np.array([-1.0, 1.0])
    t_value, (tg,) = _torch_grad(TORCH["soft_margin"], x, y)
    assert np.all(np.isinf(t_value)) and np.all(np.isnan(tg))
    value, (g,) = _ref_eval(REFERENCES["soft_margin"], (x, y), {})
    np.testing.assert_allclose(value, [1e4, 1e4], rtol=1e-15)
    np.testing.assert_allclose(g, [1.0, -1.0], rtol=1e-15)


def test_gaussian_nll_var_clamp_has_no_gradient_effect():
    x, t, v = np.array([1.0, 1.0]), np.array([0.0, 0.0]), np.array([1e-8, 0.0])
    _, (gx, gv) = _torch_eval(TORCH["gaussian_nll"], REFERENCES["gaussian_nll"], (x, t, v), {})
    expected_gv = 0.5 * (1 / 1e-6 - 1 / 1e-12)
    np.testing.assert_allclose(gv, [expected_gv] * 2, rtol=1e-12)
    np.testing.assert_allclose(gx, [1e6] * 2, rtol=1e-12)
    rgx, rgv = REFERENCES["gaussian_nll"].grads(x, t, v)
    np.testing.assert_allclose(rgv, gv, rtol=1e-12)
    np.testing.assert_allclose(rgx, gx, rtol=1e-12)


def test_poisson_stirling_only_above_one():
    ref = REFERENCES["poisson_nll"]
    x = np.zeros(3)
    t = np.array([0.0, 1.0, 2.0])
    base = ref.value(x, t)
    full = ref.value(x, t, full=True)
    np.testing.assert_array_equal(full[:2], base[:2])
    assert full[2] - base[2] == pytest.approx(2 * math.log(2) - 2 + 0.5 * math.log(4 * math.pi))


# ---------------------------------------------------------------------------
# focal-loss tutorial figures (alpha=0.75, gamma=2, mean over two elements)
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("p,y,expected", [
    ([0.5, 0.5], [1.0, 0.0], 0.0866),
    ([0.9, 0.1], [1.0, 0.0], 0.0005),
])
def test_focal_tutorial_figures(p, y, expected):
    ref = REFERENCES["focal"]
    mean = float(np.mean(ref.value(np.array(p), np.array(y), alpha=0.75, gamma=2.0)))
    assert round(mean, 4) == expected
    t_mean = float(_focal_tutorial(_t(p), _t(y), alpha=0.75, gamma=2.0).mean())
    assert t_mean == pytest.approx(mean, rel=1e-12)


def test_log_cosh_accurate_near_zero_and_finite_far_out():
    # series log cosh d = d^2/2 - d^4/12 + ...; the naive log(cosh(d)) loses
    # relative accuracy here (and torch's does too), so pin it separately.
    ref = REFERENCES["log_cosh"]
    d = np.array([1e-8, -1e-5, 1e-3])
    np.testing.assert_allclose(ref.value(d, np.zeros(3)), d**2 / 2 - d**4 / 12, rtol=1e-12)
    far = np.array([1e4, -1e4, 1e300])
    np.testing.assert_allclose(ref.value(far, np.zeros(3)), np.abs(far) - math.log(2.0), rtol=1e-15)
    np.testing.assert_array_equal(ref.grads(far, np.zeros(3))[0], [1.0, -1.0, 1.0])
