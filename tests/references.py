"""Independent NumPy reference implementations of the catalogue losses.

Every entry gives the unreduced, unweighted per-element loss and its analytic
per-element gradients, written from the mathematical definitions (not from any
framework source and not from the ``lossdsl`` package, which this module must
never import).  ``tests/test_references_torch.py`` checks each reference
against PyTorch in float64, values and autograd gradients, including the
kink / clamp conventions noted below.

Conventions shared by several entries:

* ``clog(x) = max(log x, -100)`` (PyTorch's clamped log in
  ``binary_cross_entropy``); BCE's gradient is PyTorch's backward,
  ``(p - y) / max(p (1 - p), 1e-12)``.
* ``d/db b**g`` is ``g * b**(g - 1)``, taken as exactly 0 when ``g == 0``
  (the convention of ``torch.pow``'s backward).
* ``relu`` has derivative 0 at 0 (``torch.relu``); ``clamp_min(., 0)``, used
  by ``margin_ranking_loss`` and ``hinge_embedding_loss``, passes the gradient
  where its argument is >= 0 (inclusive).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class Reference:
    name: str                           # catalogue name of the loss
    inputs: tuple[str, ...]             # input names in call order
    wrt: tuple[str, ...]                # inputs differentiated
    # valid float64 inputs of the given shape, in call order
    sample: Callable[[np.random.Generator, tuple[int, ...]], tuple[np.ndarray, ...]]
    # value(*inputs, **params) -> per-element loss (same shape, unreduced, unweighted)
    value: Callable[..., np.ndarray]
    grads: Callable[..., tuple[np.ndarray, ...]]  # grads(*inputs, **params) -> tuple, one array per wrt input
    params: tuple[dict, ...] = ({},)    # parameter settings to test: first is {} (defaults), then non-default settings
    edges: Callable[[], tuple[np.ndarray, ...]] | None = None  # optional 1-D float64 edge inputs, in call order
    source: str = ""                    # provenance: which framework function this reproduces


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------

_LOG_FLOOR = -100.0
_GRAD_EPS = 1e-12
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def _f(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def _softplus(z: np.ndarray) -> np.ndarray:
    """log(1 + exp(z)) without overflow."""
    return np.logaddexp(0.0, z)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-z)) without overflow."""
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def _clog(x: np.ndarray) -> np.ndarray:
    """max(log x, -100); log(0) = -inf is clamped to -100."""
    with np.errstate(divide="ignore"):
        return np.maximum(np.log(x), _LOG_FLOOR)


def _clog1m(p: np.ndarray) -> np.ndarray:
    """max(log(1 - p), -100), accurate for small p."""
    with np.errstate(divide="ignore"):
        return np.maximum(np.log1p(-p), _LOG_FLOOR)


def _pow(b: np.ndarray, g: float) -> np.ndarray:
    return np.power(b, g)


def _dpow(b: np.ndarray, g: float) -> np.ndarray:
    """d/db b**g, exactly 0 when g == 0 (torch.pow convention)."""
    if g == 0:
        return np.zeros_like(b)
    with np.errstate(divide="ignore"):
        return g * np.power(b, g - 1.0)


def _prod0(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a * b, silencing the 0 * inf warning (the nan it gives is torch's too)."""
    with np.errstate(invalid="ignore"):
        return a * b


def _signed_labels(rng: np.random.Generator, shape) -> np.ndarray:
    return rng.choice(np.array([-1.0, 1.0]), size=shape)


def _binary_labels(rng: np.random.Generator, shape) -> np.ndarray:
    return rng.integers(0, 2, size=shape).astype(np.float64)


def _pair_sampler(scale: float = 2.0):
    def sample(rng, shape):
        return (rng.normal(0.0, scale, shape), rng.normal(0.0, scale, shape))

    return sample


def _regression_edges(*kinks: float):
    """pred - target hits 0, +-each kink, and +-1e4; target 0 or a nonzero value."""

    def edges():
        d = [0.0, 1e4, -1e4]
        for k in kinks:
            d += [k, -k]
        d = np.array(d, dtype=np.float64)
        target = np.concatenate([np.zeros_like(d), np.full_like(d, 0.5)])
        pred = np.concatenate([d, d + 0.5])
        return pred, target

    return edges


# ---------------------------------------------------------------------------
# 1-7 regression losses
# ---------------------------------------------------------------------------

def l1_value(pred, target):
    return np.abs(_f(pred) - _f(target))


def l1_grads(pred, target):
    return (np.sign(_f(pred) - _f(target)),)


def mse_value(pred, target):
    d = _f(pred) - _f(target)
    return d * d


def mse_grads(pred, target):
    return (2.0 * (_f(pred) - _f(target)),)


def l2_value(pred, target):
    d = _f(pred) - _f(target)
    return 0.5 * d * d


def l2_grads(pred, target):
    return (_f(pred) - _f(target),)


def smooth_l1_value(pred, target, *, beta=1.0):
    d = _f(pred) - _f(target)
    a = np.abs(d)
    if beta == 0:
        return a
    return np.where(a < beta, 0.5 * d * d / beta, a - 0.5 * beta)


def smooth_l1_grads(pred, target, *, beta=1.0):
    d = _f(pred) - _f(target)
    if beta == 0:
        return (np.sign(d),)
    return (np.where(np.abs(d) < beta, d / beta, np.sign(d)),)


def huber_value(pred, target, *, delta=1.0):
    d = _f(pred) - _f(target)
    a = np.abs(d)
    return np.where(a < delta, 0.5 * d * d, delta * (a - 0.5 * delta))


def huber_grads(pred, target, *, delta=1.0):
    d = _f(pred) - _f(target)
    return (np.where(np.abs(d) < delta, d, delta * np.sign(d)),)


def log_cosh_value(pred, target):
    d = _f(pred) - _f(target)
    a = np.abs(d)
    # log cosh d = log1p(2 sinh^2(d/2)): accurate near 0, overflows only for
    # |d| > ~1420; beyond a moderate |d| use |d| - log 2 + log1p(exp(-2|d|)).
    small = np.minimum(a, 30.0)
    near = np.log1p(2.0 * np.sinh(0.5 * small) ** 2)
    far = a - math.log(2.0) + np.log1p(np.exp(-2.0 * a))
    return np.where(a < 30.0, near, far)


def log_cosh_grads(pred, target):
    return (np.tanh(_f(pred) - _f(target)),)


def quantile_value(pred, target, *, q=0.5):
    d = _f(target) - _f(pred)
    return np.where(d >= 0, q * d, (q - 1.0) * d)


def quantile_grads(pred, target, *, q=0.5):
    d = _f(target) - _f(pred)
    # d/dpred: -q where pred <= target (p == t included), 1 - q where pred > target
    return (np.where(d >= 0, -q, 1.0 - q) * np.ones_like(d),)


# ---------------------------------------------------------------------------
# 8-11 binary classification on probabilities / logits
# ---------------------------------------------------------------------------

def bce_value(p, y, *, convention="torch", eps=1e-12, pos_weight=1.0):
    p, y = _f(p), _f(y)
    if convention == "torch":
        # torch.nn.functional.binary_cross_entropy, logs clamped at -100; pos_weight scales the
        # positive term as in binary_cross_entropy_with_logits
        return -(pos_weight * y * _clog(p) + (1.0 - y) * _clog1m(p))
    if convention == "mxnet":
        # mxnet.gluon.loss.SigmoidBinaryCrossEntropyLoss(from_sigmoid=True), 1.5+:
        # -(log(pred + eps) * label * pos_weight + log(1. - pred + eps) * (1. - label)), no clamp
        return -(pos_weight * y * np.log(p + eps) + (1.0 - y) * np.log((1.0 - p) + eps))
    raise ValueError(f"convention must be 'torch' or 'mxnet', got {convention!r}")


def bce_grads(p, y, *, convention="torch", eps=1e-12, pos_weight=1.0):
    p, y = _f(p), _f(y)
    if convention == "torch":
        # PyTorch's BCE backward: (p - y) / max(p (1 - p), 1e-12), 0 for a perfect prediction; with
        # pos_weight, its y-part (p - 1) y / max(p (1 - p), 1e-12) (the backward of BCE against
        # target 1) is scaled by pos_weight, its (1 - y)-part p (1 - y) / max(...) is not
        return (((1.0 - y) * p - pos_weight * y * (1.0 - p)) / np.maximum(p * (1.0 - p), _GRAD_EPS),)
    if convention == "mxnet":
        # the exact derivative of the eps formula (what MXNet's autograd computes)
        return (-pos_weight * y / (p + eps) + (1.0 - y) / ((1.0 - p) + eps),)
    raise ValueError(f"convention must be 'torch' or 'mxnet', got {convention!r}")


def _sample_prob_soft(rng, shape):
    return (rng.uniform(0.01, 0.99, shape), rng.uniform(0.0, 1.0, shape))


def _bce_edges():
    p = np.array([0.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1e-50, 1.0 - 1e-16, 0.5, 1e-300])
    y = np.array([1.0, 0.0, 0.0, 1.0, 0.5, 0.5, 1.0, 0.0, 1.0, 1.0])
    return p, y


def bce_with_logits_value(x, y, *, pos_weight=1.0):
    x, y = _f(x), _f(y)
    # -(w y logsigmoid(x) + (1-y) logsigmoid(-x)), logsigmoid(z) = -softplus(-z)
    return pos_weight * y * _softplus(-x) + (1.0 - y) * _softplus(x)


def bce_with_logits_grads(x, y, *, pos_weight=1.0):
    x, y = _f(x), _f(y)
    return (-pos_weight * y * _sigmoid(-x) + (1.0 - y) * _sigmoid(x),)


def _sample_logit_soft(rng, shape):
    return (rng.normal(0.0, 3.0, shape), rng.uniform(0.0, 1.0, shape))


def _logit_soft_edges():
    xs = np.array([1e4, -1e4, 40.0, -40.0, 0.0])
    ys = np.array([0.0, 1.0, 0.5])
    x, y = np.meshgrid(xs, ys, indexing="ij")
    return x.ravel(), y.ravel()


def focal_value(p, y, *, alpha=0.25, gamma=2.0):
    p, y = _f(p), _f(y)
    pos = -alpha * _pow(1.0 - p, gamma) * _clog(p)
    neg = -(1.0 - alpha) * _pow(p, gamma) * _clog1m(p)
    return np.where(y == 1, pos, neg)


def focal_grads(p, y, *, alpha=0.25, gamma=2.0):
    # the tutorial's form alpha_t (1 - p_t)^gamma bce(p, y), differentiated by the product rule
    p, y = _f(p), _f(y)
    positive = y == 1
    alpha_t = np.where(positive, alpha, 1.0 - alpha)
    base = np.where(positive, 1.0 - p, p)  # 1 - p_t
    dbase = np.where(positive, -1.0, 1.0)
    (dbce,) = bce_grads(p, y)
    return (alpha_t * (_prod0(_dpow(base, gamma) * dbase, bce_value(p, y)) + _pow(base, gamma) * dbce),)


def _sample_prob_hard(rng, shape):
    return (rng.uniform(0.01, 0.99, shape), _binary_labels(rng, shape))


def _focal_edges():
    p = np.array([0.0, 0.0, 1.0, 1.0, 1e-50, 1.0 - 1e-16, 0.5, 0.5])
    y = np.array([1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.0])
    return p, y


def sigmoid_focal_value(x, y, *, alpha=0.25, gamma=2.0):
    x, y = _f(x), _f(y)
    ce = y * _softplus(-x) + (1.0 - y) * _softplus(x)
    m = _sigmoid(x) * (1.0 - y) + _sigmoid(-x) * y          # 1 - p_t
    loss = ce * _pow(m, gamma)
    if alpha >= 0:
        loss = (alpha * y + (1.0 - alpha) * (1.0 - y)) * loss
    return loss


def sigmoid_focal_grads(x, y, *, alpha=0.25, gamma=2.0):
    x, y = _f(x), _f(y)
    s, sn = _sigmoid(x), _sigmoid(-x)                      # s, 1 - s
    ce = y * _softplus(-x) + (1.0 - y) * _softplus(x)
    dce = s * (1.0 - y) - sn * y                            # = s - y
    m = s * (1.0 - y) + sn * y                              # = 1 - p_t
    dm = s * sn * (1.0 - 2.0 * y)                           # d(1 - p_t)/dx
    g = dce * _pow(m, gamma) + ce * _prod0(_dpow(m, gamma), dm)
    if alpha >= 0:
        g = (alpha * y + (1.0 - alpha) * (1.0 - y)) * g
    return (g,)


# ---------------------------------------------------------------------------
# 12-15 margin / signed-label losses
# ---------------------------------------------------------------------------

def hinge_value(pred, label, *, margin=1.0):
    return np.maximum(0.0, margin - _f(pred) * _f(label))


def hinge_grads(pred, label, *, margin=1.0):
    pred, label = _f(pred), _f(label)
    return (np.where(margin - pred * label > 0, -label, 0.0),)


def squared_hinge_value(pred, label, *, margin=1.0):
    h = np.maximum(0.0, margin - _f(pred) * _f(label))
    return h * h


def squared_hinge_grads(pred, label, *, margin=1.0):
    pred, label = _f(pred), _f(label)
    return (-2.0 * label * np.maximum(0.0, margin - pred * label),)


def _sample_signed(scale: float = 2.0):
    def sample(rng, shape):
        return (rng.normal(0.0, scale, shape), _signed_labels(rng, shape))

    return sample


def _signed_margin_edges():
    # pred * label at the kinks of margins 1, 2 and 0.5, at 0, and at +-1e4
    xs = np.array([1.0, -1.0, 2.0, -2.0, 0.5, -0.5, 0.0, 1e4, -1e4])
    x = np.concatenate([xs, xs])
    y = np.concatenate([np.ones_like(xs), -np.ones_like(xs)])
    return x, y


def logistic_value(pred, label, *, label_format="signed"):
    pred, label = _f(pred), _f(label)
    if label_format == "signed":
        return _softplus(-pred * label)
    if label_format == "binary":
        return bce_with_logits_value(pred, label)
    raise ValueError(f"label_format must be 'signed' or 'binary', got {label_format!r}")


def logistic_grads(pred, label, *, label_format="signed"):
    pred, label = _f(pred), _f(label)
    if label_format == "signed":
        return (-label * _sigmoid(-pred * label),)
    if label_format == "binary":
        return bce_with_logits_grads(pred, label)
    raise ValueError(f"label_format must be 'signed' or 'binary', got {label_format!r}")


def _sample_binary_logits(rng, shape):
    return (rng.normal(0.0, 3.0, shape), _binary_labels(rng, shape))


def _binary_logit_edges():
    xs = np.array([1e4, -1e4, 40.0, -40.0, 0.0])
    x = np.concatenate([xs, xs])
    y = np.concatenate([np.zeros_like(xs), np.ones_like(xs)])
    return x, y


def soft_margin_value(x, y):
    return _softplus(-_f(x) * _f(y))


def soft_margin_grads(x, y):
    x, y = _f(x), _f(y)
    return (-y * _sigmoid(-x * y),)


# ---------------------------------------------------------------------------
# 16-17 likelihood losses
# ---------------------------------------------------------------------------

def _stirling(target):
    t = _f(target)
    with np.errstate(divide="ignore", invalid="ignore"):
        term = t * np.log(t) - t + 0.5 * np.log(2.0 * math.pi * t)
    return np.where(t > 1, term, 0.0)


def poisson_nll_value(input, target, *, log_input=True, full=False, eps=1e-8):
    x, t = _f(input), _f(target)
    if log_input:
        loss = np.exp(x) - t * x
    else:
        loss = x - t * np.log(x + eps)
    if full:
        loss = loss + _stirling(t)
    return loss


def poisson_nll_grads(input, target, *, log_input=True, full=False, eps=1e-8):
    x, t = _f(input), _f(target)
    if log_input:
        return (np.exp(x) - t,)
    return (1.0 - t / (x + eps),)


def _sample_poisson(rng, shape):
    return (rng.uniform(0.05, 3.0, shape), rng.poisson(3.0, shape).astype(np.float64))


def _poisson_edges():
    xs = np.array([0.0, 1e-12, 1.0])
    ts = np.array([0.0, 1.0, 1.0 + 1e-12, 2.0, 100.0])
    x, t = np.meshgrid(xs, ts, indexing="ij")
    return x.ravel(), t.ravel()


def tweedie_value(pred, target, *, variance_power=1.5):
    # XGBoost's tweedie-nloglik on the mean mu = exp(pred), written with powers of mu
    mu, t, p = np.exp(_f(pred)), _f(target), variance_power
    return -t * mu ** (1 - p) / (1 - p) + mu ** (2 - p) / (2 - p)


def tweedie_grads(pred, target, *, variance_power=1.5):
    # d/d pred = mu * d/d mu; XGBoost's TweedieRegression gradient
    mu, t, p = np.exp(_f(pred)), _f(target), variance_power
    return (mu ** (2 - p) - t * mu ** (1 - p),)


def _sample_tweedie(rng, shape):
    # compound Poisson-gamma targets: a Poisson number of gamma claims, zero where there are none
    claims = rng.poisson(1.0, shape)
    return rng.uniform(-2.0, 2.0, shape), np.where(claims > 0, rng.gamma(2.0 * np.maximum(claims, 1), 0.5), 0.0)


def _tweedie_edges():
    x, t = np.meshgrid(np.array([-30.0, 0.0, 1e-12, 30.0]), np.array([0.0, 1e-12, 1.0, 50.0]), indexing="ij")
    return x.ravel(), t.ravel()


def gaussian_nll_value(input, target, var, *, full=False, eps=1e-6):
    x, t, v = _f(input), _f(target), np.maximum(_f(var), eps)
    d = x - t
    loss = 0.5 * (np.log(v) + d * d / v)
    if full:
        loss = loss + _HALF_LOG_2PI
    return loss


def gaussian_nll_grads(input, target, var, *, full=False, eps=1e-6):
    # var is clamped without gradient effect: d/dvar is the unclamped formula at v
    x, t, v = _f(input), _f(target), np.maximum(_f(var), eps)
    d = x - t
    return (d / v, 0.5 * (1.0 / v - d * d / (v * v)))


def _sample_gaussian(rng, shape):
    return (rng.normal(0.0, 2.0, shape), rng.normal(0.0, 2.0, shape),
            rng.uniform(0.1, 2.0, shape))


def _gaussian_edges():
    vs = np.array([0.0, 1e-12, 1e-8, 1e-6, 1e-3, 0.5, 1.0])
    ds = np.array([0.0, 1.0, -3.0])
    v, d = np.meshgrid(vs, ds, indexing="ij")
    v, d = v.ravel(), d.ravel()
    target = np.full_like(d, 0.25)
    return d + target, target, v


# ---------------------------------------------------------------------------
# 18-19 ranking / embedding losses
# ---------------------------------------------------------------------------

def margin_ranking_value(x1, x2, y, *, margin=0.0):
    x1, x2, y = _f(x1), _f(x2), _f(y)
    return np.maximum(0.0, -y * (x1 - x2) + margin)


def margin_ranking_grads(x1, x2, y, *, margin=0.0):
    x1, x2, y = _f(x1), _f(x2), _f(y)
    active = (-y * (x1 - x2) + margin) >= 0          # clamp_min: inclusive
    return (np.where(active, -y, 0.0), np.where(active, y, 0.0))


def _sample_ranking(rng, shape):
    return (rng.normal(0.0, 2.0, shape), rng.normal(0.0, 2.0, shape),
            _signed_labels(rng, shape))


def _ranking_edges():
    diffs = np.array([0.0, 0.5, -0.5, 1.0, -1.0, 1e4, -1e4])
    x2 = np.full(2 * diffs.size, 0.25)
    x1 = np.concatenate([diffs, diffs]) + x2
    y = np.concatenate([np.ones_like(diffs), -np.ones_like(diffs)])
    return x1, x2, y


def hinge_embedding_value(x, y, *, margin=1.0):
    x, y = _f(x), _f(y)
    return (np.where(y != 1, np.maximum(0.0, margin - x), 0.0)
            + np.where(y != -1, x, 0.0))


def hinge_embedding_grads(x, y, *, margin=1.0):
    x, y = _f(x), _f(y)
    g_margin = np.where((y != 1) & (margin - x >= 0), -1.0, 0.0)   # inclusive
    g_self = np.where(y != -1, 1.0, 0.0)
    return (g_margin + g_self,)


def _embedding_edges():
    xs = np.array([1.0, 2.0, 0.5, 0.0, -1.0, 1e4, -1e4])
    x = np.concatenate([xs, xs])
    y = np.concatenate([np.ones_like(xs), -np.ones_like(xs)])
    return x, y


# ---------------------------------------------------------------------------
# the catalogue
# ---------------------------------------------------------------------------

_PT = ("pred", "target")

REFERENCES: dict[str, Reference] = {}


def _register(key: str, ref: Reference) -> None:
    assert key not in REFERENCES, key
    REFERENCES[key] = ref


_register("l1", Reference(
    name="l1", inputs=_PT, wrt=("pred",), sample=_pair_sampler(),
    value=l1_value, grads=l1_grads, edges=_regression_edges(),
    source="torch.nn.functional.l1_loss(reduction='none')"))

_register("mse", Reference(
    name="mse", inputs=_PT, wrt=("pred",), sample=_pair_sampler(),
    value=mse_value, grads=mse_grads, edges=_regression_edges(),
    source="torch.nn.functional.mse_loss(reduction='none')"))

_register("l2", Reference(
    name="l2", inputs=_PT, wrt=("pred",), sample=_pair_sampler(),
    value=l2_value, grads=l2_grads, edges=_regression_edges(),
    source="mxnet.gluon.loss.L2Loss (0.5 * squared error, weight 1)"))

_register("smooth_l1", Reference(
    name="smooth_l1", inputs=_PT, wrt=("pred",), sample=_pair_sampler(),
    value=smooth_l1_value, grads=smooth_l1_grads,
    params=({}, {"beta": 0.5}, {"beta": 0.0}, {"beta": 2.0}),
    edges=_regression_edges(1.0, 0.5, 2.0),
    source="torch.nn.functional.smooth_l1_loss(reduction='none', beta=...)"))

_register("huber", Reference(
    name="huber", inputs=_PT, wrt=("pred",), sample=_pair_sampler(),
    value=huber_value, grads=huber_grads,
    params=({}, {"delta": 0.5}, {"delta": 2.5}),
    edges=_regression_edges(1.0, 0.5, 2.5),
    source="torch.nn.functional.huber_loss(reduction='none', delta=...)"))

_register("log_cosh", Reference(
    name="log_cosh", inputs=_PT, wrt=("pred",), sample=_pair_sampler(),
    value=log_cosh_value, grads=log_cosh_grads,
    edges=_regression_edges(1e-8, 30.0, 800.0),
    source="log(cosh(pred - target)) (no torch builtin; checked against torch.log(torch.cosh(.)))"))

_register("quantile", Reference(
    name="quantile", inputs=_PT, wrt=("pred",), sample=_pair_sampler(),
    value=quantile_value, grads=quantile_grads,
    params=({}, {"q": 0.1}, {"q": 0.9}),
    edges=_regression_edges(1.0),
    source="pinball loss, LightGBM 'quantile' gradient convention at pred == target"))

_register("bce", Reference(
    name="bce", inputs=("p", "y"), wrt=("p",), sample=_sample_prob_soft,
    value=bce_value, grads=bce_grads, edges=_bce_edges,
    source="torch.nn.functional.binary_cross_entropy(reduction='none') (log clamped at -100)"))

_register("bce_pos_weight", Reference(
    name="bce", inputs=("p", "y"), wrt=("p",), sample=_sample_prob_soft,
    value=bce_value, grads=bce_grads, edges=_bce_edges,
    params=({"pos_weight": 3.0}, {"pos_weight": 0.0}, {"pos_weight": 0.5}),
    source="binary_cross_entropy with the positive term weighted: F.binary_cross_entropy(p, y) "
           "+ (pos_weight - 1) * y * F.binary_cross_entropy(p, 1) (logs clamped at -100)"))

_register("bce_mxnet", Reference(
    name="bce", inputs=("p", "y"), wrt=("p",), sample=_sample_prob_soft,
    value=bce_value, grads=bce_grads, edges=_bce_edges,
    params=({"convention": "mxnet"}, {"convention": "mxnet", "pos_weight": 2.5},
            {"convention": "mxnet", "pos_weight": 0.0, "eps": 1e-7}),
    source="mxnet.gluon.loss.SigmoidBinaryCrossEntropyLoss(from_sigmoid=True) before its batch mean "
           "(log(p + eps), no clamp; pos_weight as in MXNet 1.5+); MindSpore BCELoss's CPU/GPU forward"))

_register("bce_with_logits", Reference(
    name="bce_with_logits", inputs=("x", "y"), wrt=("x",), sample=_sample_logit_soft,
    value=bce_with_logits_value, grads=bce_with_logits_grads,
    params=({}, {"pos_weight": 3.0}, {"pos_weight": 0.5}),
    edges=_logit_soft_edges,
    source="torch.nn.functional.binary_cross_entropy_with_logits(reduction='none', pos_weight=scalar)"))

_register("focal", Reference(
    name="focal", inputs=("p", "y"), wrt=("p",), sample=_sample_prob_hard,
    value=focal_value, grads=focal_grads,
    params=({}, {"alpha": 0.75, "gamma": 0.0}, {"alpha": 0.5, "gamma": 1.0},
            {"alpha": 0.1, "gamma": 3.5}),
    edges=_focal_edges,
    source="binary focal loss on probabilities (PyTorch focal-loss tutorial form: "
           "alpha_t * (1 - p_t)**gamma * binary_cross_entropy)"))

_register("sigmoid_focal", Reference(
    name="sigmoid_focal", inputs=("x", "y"), wrt=("x",), sample=_sample_logit_soft,
    value=sigmoid_focal_value, grads=sigmoid_focal_grads,
    params=({}, {"alpha": 0.5, "gamma": 1.0}, {"alpha": -1.0, "gamma": 0.0},
            {"alpha": 0.9, "gamma": 3.5}),
    edges=_logit_soft_edges,
    source="torchvision.ops.sigmoid_focal_loss(reduction='none')"))

_register("hinge", Reference(
    name="hinge", inputs=("pred", "label"), wrt=("pred",), sample=_sample_signed(),
    value=hinge_value, grads=hinge_grads,
    params=({}, {"margin": 2.0}, {"margin": 0.5}),
    edges=_signed_margin_edges,
    source="mxnet.gluon.loss.HingeLoss (relu(margin - pred * label))"))

_register("squared_hinge", Reference(
    name="squared_hinge", inputs=("pred", "label"), wrt=("pred",), sample=_sample_signed(),
    value=squared_hinge_value, grads=squared_hinge_grads,
    params=({}, {"margin": 2.0}, {"margin": 0.5}),
    edges=_signed_margin_edges,
    source="mxnet.gluon.loss.SquaredHingeLoss"))

_register("logistic", Reference(
    name="logistic", inputs=("pred", "label"), wrt=("pred",), sample=_sample_signed(3.0),
    value=logistic_value, grads=logistic_grads,
    params=({},),
    edges=_signed_margin_edges,
    source="mxnet.gluon.loss.LogisticLoss(label_format='signed')"))

_register("logistic_binary", Reference(
    name="logistic", inputs=("pred", "label"), wrt=("pred",), sample=_sample_binary_logits,
    value=logistic_value, grads=logistic_grads,
    params=({"label_format": "binary"},),
    edges=_binary_logit_edges,
    source="mxnet.gluon.loss.LogisticLoss(label_format='binary')"))

_register("soft_margin", Reference(
    name="soft_margin", inputs=("x", "y"), wrt=("x",), sample=_sample_signed(3.0),
    value=soft_margin_value, grads=soft_margin_grads,
    edges=_signed_margin_edges,
    source="torch.nn.functional.soft_margin_loss(reduction='none'), evaluated stably"))

_register("poisson_nll", Reference(
    name="poisson_nll", inputs=("input", "target"), wrt=("input",), sample=_sample_poisson,
    value=poisson_nll_value, grads=poisson_nll_grads,
    params=({}, {"full": True}, {"log_input": False},
            {"log_input": False, "full": True, "eps": 1e-3}),
    edges=_poisson_edges,
    source="torch.nn.functional.poisson_nll_loss(reduction='none')"))

_register("tweedie", Reference(
    name="tweedie", inputs=("pred", "target"), wrt=("pred",), sample=_sample_tweedie,
    value=tweedie_value, grads=tweedie_grads,
    params=({}, {"variance_power": 1.1}, {"variance_power": 1.9}),
    edges=_tweedie_edges,
    source="xgboost reg:tweedie (tweedie-nloglik and its gradient), LightGBM tweedie"))

_register("gaussian_nll", Reference(
    name="gaussian_nll", inputs=("input", "target", "var"), wrt=("input", "var"),
    sample=_sample_gaussian,
    value=gaussian_nll_value, grads=gaussian_nll_grads,
    params=({}, {"full": True}, {"eps": 0.5}, {"full": True, "eps": 1e-3}),
    edges=_gaussian_edges,
    source="torch.nn.functional.gaussian_nll_loss(reduction='none'), var same shape as input"))

_register("margin_ranking", Reference(
    name="margin_ranking", inputs=("x1", "x2", "y"), wrt=("x1", "x2"), sample=_sample_ranking,
    value=margin_ranking_value, grads=margin_ranking_grads,
    params=({}, {"margin": 0.5}, {"margin": 1.0}),
    edges=_ranking_edges,
    source="torch.nn.functional.margin_ranking_loss(reduction='none')"))

_register("hinge_embedding", Reference(
    name="hinge_embedding", inputs=("x", "y"), wrt=("x",), sample=_sample_signed(),
    value=hinge_embedding_value, grads=hinge_embedding_grads,
    params=({}, {"margin": 2.0}, {"margin": 0.5}),
    edges=_embedding_edges,
    source="torch.nn.functional.hinge_embedding_loss(reduction='none')"))
