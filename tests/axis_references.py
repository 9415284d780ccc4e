"""Independent NumPy references for the catalogue losses taken over a named axis.

Each entry gives, for inputs laid out with the loss's axis LAST (shape
``rows + (length,)``; per-row inputs such as integer labels have shape
``rows``, a per-class weight vector shape ``(length,)``):

* ``value``: the unreduced, unweighted loss of each row (shape ``rows``),
* ``grads``: its analytic gradient with respect to each ``wrt`` input (shape
  ``rows + (length,)``): the gradient of ``value(...).sum()``,
* ``divisor``: what reduction "mean" divides the sum by (the number of rows,
  or PyTorch's class-weighted count of the rows not ignored).

They are written from the mathematical definitions and the frameworks'
documented conventions, never from the ``lossdsl`` package (which this module
must not import).  ``tests/test_axis_torch.py`` checks the PyTorch ones
against ``torch.nn.functional`` in float64, and ``tests/test_axis_losses.py``
checks every analytic gradient here against central differences of ``value``.

``Geometry`` moves arrays between the layout a call uses (the axis anywhere,
possibly several adjacent array axes) and the axis-last layout of the
references.  kl_div is elementwise (``elementwise=True``): its value and
gradient have the input's shape and ``Geometry.span`` is None.

Conventions shared by several entries:

* labels equal to ``ignore_index`` contribute 0 to the value and gradient and
  are left out of the "mean" divisor (torch.nn.functional.cross_entropy /
  nll_loss); class-weighted "mean" divides by the sum of class_weight[y] over
  the rows kept (PyTorch's weighted mean).
* relu / max(0, .) has derivative 0 at 0 except where noted as clamp_min
  (torch.clamp_min passes the gradient where its argument is >= 0).
* d/db b**g is 0 when g == 0 (torch.pow's backward).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class AxisReference:
    name: str                       # catalogue name of the loss
    inputs: tuple[str, ...]         # input names in call order (optional ones last)
    wrt: tuple[str, ...]            # inputs differentiated
    along: tuple[str, ...]          # inputs that carry the axis (the rest: one value per row, or per class)
    default_axis: int | str         # where the axis is when a call passes none: an int, or "all"
    # sample(rng, rows, length, params) -> the required inputs, axis last, float64 (labels int64)
    sample: Callable[..., tuple[np.ndarray, ...]]
    value: Callable[..., np.ndarray]            # value(*inputs, **params) -> per-row loss
    grads: Callable[..., tuple[np.ndarray, ...]]  # grads(*inputs, **params) -> one array per wrt input
    divisor: Callable[..., float] | None = None   # divisor(*inputs, **params); None: the number of rows
    params: tuple[dict, ...] = ({},)   # numeric settings to test (lossdsl: with_params); the first is {}
    static: dict | None = None         # bool / string parameters (lossdsl: a separate load)
    labels: bool = False               # has integer labels (range checks, float labels)
    ignore: bool = False               # has ignore_index
    elementwise: bool = False          # no axis: values have the inputs' shape
    source: str = ""                   # provenance: which framework function this reproduces

    def mean_divisor(self, *inputs, **params) -> float:
        if self.divisor is not None:
            return float(self.divisor(*inputs, **params))
        return float(np.prod(np.shape(self.value(*inputs, **params))))


# ---------------------------------------------------------------------------
# layout: the axis anywhere (a call) <-> the axis last (the references)
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Geometry:
    """The shape of the inputs that carry the axis, and the array axes the axis spans."""
    shape: tuple[int, ...]
    span: tuple[int, int] | None      # first and last array axis of the named axis; None: elementwise

    @classmethod
    def of(cls, shape, axis, default):
        """The span a call with `axis` (None: the spec's `default`, an int or "all") means."""
        shape = tuple(shape)
        if axis is None:
            axis = tuple(range(len(shape))) if default == "all" else default
        axes = sorted(a % len(shape) for a in np.atleast_1d(axis).tolist())
        assert axes == list(range(axes[0], axes[-1] + 1)), "adjacent axes only"
        return cls(shape, (axes[0], axes[-1]))

    @property
    def rows(self) -> tuple[int, ...]:
        if self.span is None:
            return self.shape
        first, last = self.span
        return self.shape[:first] + self.shape[last + 1:]

    @property
    def length(self) -> int:
        if self.span is None:
            return self.shape[-1]
        return math.prod(self.shape[self.span[0]:self.span[1] + 1])

    @property
    def sample_rows(self) -> tuple[int, ...]:
        """What a sampler's `rows` is: elementwise losses sample the full shape as rows + (length,)."""
        return self.shape[:-1] if self.span is None else self.rows

    def to_call(self, a: np.ndarray) -> np.ndarray:
        """(rows..., length) -> the call's shape, the axis back in its place."""
        if self.span is None:
            return a
        first, last = self.span
        k = last - first + 1
        a = a.reshape(a.shape[:-1] + self.shape[first:last + 1])
        return np.moveaxis(a, list(range(a.ndim - k, a.ndim)), list(range(first, last + 1)))

    def to_last(self, a: np.ndarray) -> np.ndarray:
        """The call's shape -> (rows..., length)."""
        if self.span is None:
            return a
        first, last = self.span
        k = last - first + 1
        a = np.moveaxis(a, list(range(first, last + 1)), list(range(a.ndim - k, a.ndim)))
        return a.reshape(a.shape[:a.ndim - k] + (-1,))

    def per_row(self, factor: np.ndarray) -> np.ndarray:
        """A per-row factor, broadcastable against a gradient in the axis-last layout."""
        factor = np.asarray(factor, dtype=np.float64)
        return factor if self.span is None else factor[..., None]


# ---------------------------------------------------------------------------
# helpers (the axis is the last one)
# ---------------------------------------------------------------------------

def _f(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def _lse(z: np.ndarray) -> np.ndarray:
    """logsumexp over the last axis, shifted by the max: finite for +-1e4."""
    m = np.max(z, axis=-1, keepdims=True)
    return (m + np.log(np.sum(np.exp(z - m), axis=-1, keepdims=True)))[..., 0]


def _log_softmax(z: np.ndarray) -> np.ndarray:
    return z - _lse(z)[..., None]


def _softmax(z: np.ndarray) -> np.ndarray:
    return np.exp(_log_softmax(z))


def _softplus(z: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, z)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def _class_weight(class_weight, length: int) -> np.ndarray:
    return np.ones(length) if class_weight is None else np.broadcast_to(_f(class_weight), (length,))


def _kept(y, ignore_index=None):
    """(mask of rows not ignored, labels with ignored rows pointed at class 0 so they can index)."""
    y = np.asarray(y).astype(np.int64)
    keep = np.ones(y.shape, bool) if ignore_index is None else y != int(ignore_index)
    return keep, np.where(keep, y, 0)


def _pick(a: np.ndarray, y: np.ndarray) -> np.ndarray:
    """a[..., y] row by row."""
    return np.take_along_axis(a, y[..., None], axis=-1)[..., 0]


def _onehot(y: np.ndarray, length: int) -> np.ndarray:
    return (np.arange(length) == y[..., None]).astype(np.float64)


def _weighted_count(logits, y, class_weight=None, *, ignore_index=-100, **_):
    """sum of class_weight[y] over the rows kept: PyTorch's weighted "mean" divisor."""
    keep, yy = _kept(y, ignore_index)
    return float(np.sum(_class_weight(class_weight, np.shape(logits)[-1])[yy] * keep))


def _kept_count(logits, y, class_weight=None, *, ignore_index=-100, **_):
    return float(np.sum(_kept(y, ignore_index)[0]))


def _norm_p(u: np.ndarray, p: float) -> np.ndarray:
    return np.sum(np.abs(u) ** p, axis=-1) ** (1.0 / p)


def _dnorm_p(u: np.ndarray, p: float) -> np.ndarray:
    """d ||u||_p / du = sign(u) |u|^(p-1) / ||u||_p^(p-1)."""
    n = _norm_p(u, p)[..., None]
    return np.sign(u) * np.abs(u) ** (p - 1.0) / n ** (p - 1.0)


# --- samplers (axis last) ---------------------------------------------------

def _labels(rng, rows, length, params, ignore=False):
    """Labels in [0, length); with ignore, every fourth row (1, 5, ...) is ignore_index."""
    y = rng.integers(0, length, size=rows)
    if ignore:
        flat = y.reshape(-1)
        flat[1::4] = int(params.get("ignore_index", -100))
    return y


def _sample_logits_labels(scale=2.0, ignore=True, log_probs=False):
    def sample(rng, rows, length, params):
        logits = rng.normal(0.0, scale, rows + (length,))
        if log_probs:
            logits = _log_softmax(logits)
        return logits, _labels(rng, rows, length, params, ignore)
    return sample


def _sample_logits_probs(rng, rows, length, params):
    # targets need not sum to 1 (PyTorch accepts any non-negative weights)
    return rng.normal(0.0, 2.0, rows + (length,)), rng.uniform(0.0, 1.0, rows + (length,))


def _sample_logp_probs(rng, rows, length, params):
    # log-probabilities (a log_softmax) and non-negative targets that need not sum to 1, some 0
    shape = rows + (length,)
    target = rng.uniform(0.0, 1.0, shape)
    target.reshape(-1)[::3] = 0.0
    return _log_softmax(rng.normal(0.0, 2.0, shape)), target


def _sample_logits_distribution(rng, rows, length, params):
    return rng.normal(0.0, 2.0, rows + (length,)), _softmax(rng.normal(0.0, 1.0, rows + (length,)))


def _sample_multilabel(rng, rows, length, params):
    shape = rows + (length,)
    y = np.where(rng.uniform(size=shape) < 0.7, rng.integers(0, 2, shape), rng.uniform(0.0, 1.0, shape))
    return rng.normal(0.0, 3.0, shape), y.astype(np.float64)


def _sample_normal(count):
    def sample(rng, rows, length, params):
        return tuple(rng.normal(0.0, 1.0, rows + (length,)) for _ in range(count))
    return sample


def _sample_pairs_signed(rng, rows, length, params):
    a, b = rng.normal(0.0, 1.0, rows + (length,)), rng.normal(0.0, 1.0, rows + (length,))
    # mostly +-1; 0 is "any other label" (loss 0)
    y = rng.choice(np.array([-1.0, 1.0, -1.0, 1.0, 0.0]), size=rows)
    return a, b, y


def _sample_masks(rng, rows, length, params):
    return rng.uniform(0.0, 1.0, rows + (length,)), rng.integers(0, 2, rows + (length,)).astype(np.float64)


def _sample_kl(rng, rows, length, params):
    shape = rows + (length,)
    log_input = _log_softmax(rng.normal(0.0, 1.0, shape))
    target = _softmax(rng.normal(0.0, 1.0, shape))
    if params.get("log_target", False):
        return log_input, np.log(target)
    target.reshape(-1)[::5] = 0.0            # exact zeros: xlogy(0, 0) = 0
    return log_input, target


# ---------------------------------------------------------------------------
# softmax cross-entropy family
# ---------------------------------------------------------------------------

def cross_entropy_value(logits, y, class_weight=None, *, ignore_index=-100, label_smoothing=0.0):
    # torch.nn.functional.cross_entropy(reduction='none') with class indices:
    # (1 - ls) * w[y] * (-log_softmax[y]) + ls/C * sum_c w[c] * (-log_softmax[c])
    z = _f(logits)
    length = z.shape[-1]
    w = _class_weight(class_weight, length)
    keep, yy = _kept(y, ignore_index)
    logp = _log_softmax(z)
    hard = -w[yy] * _pick(logp, yy)
    smooth = -np.sum(w * logp, axis=-1) / length
    return np.where(keep, (1.0 - label_smoothing) * hard + label_smoothing * smooth, 0.0)


def cross_entropy_grads(logits, y, class_weight=None, *, ignore_index=-100, label_smoothing=0.0):
    z = _f(logits)
    length = z.shape[-1]
    w = _class_weight(class_weight, length)
    keep, yy = _kept(y, ignore_index)
    s = _softmax(z)
    hard = w[yy][..., None] * (s - _onehot(yy, length))
    smooth = (s * np.sum(w) - w) / length
    return (np.where(keep[..., None], (1.0 - label_smoothing) * hard + label_smoothing * smooth, 0.0),)


def cross_entropy_probs_value(logits, target, class_weight=None, *, label_smoothing=0.0):
    # torch.nn.functional.cross_entropy(reduction='none') with probability targets:
    # target <- (1 - ls) * target + ls / C, then -sum_c w[c] * target[c] * log_softmax[c]
    z, t = _f(logits), _f(target)
    length = z.shape[-1]
    wt = _class_weight(class_weight, length) * ((1.0 - label_smoothing) * t + label_smoothing / length)
    return -np.sum(wt * _log_softmax(z), axis=-1)


def cross_entropy_probs_grads(logits, target, class_weight=None, *, label_smoothing=0.0):
    z, t = _f(logits), _f(target)
    length = z.shape[-1]
    wt = _class_weight(class_weight, length) * ((1.0 - label_smoothing) * t + label_smoothing / length)
    return (_softmax(z) * np.sum(wt, axis=-1, keepdims=True) - wt,)


def nll_value(logp, y, class_weight=None, *, ignore_index=-100):
    # torch.nn.functional.nll_loss(reduction='none'): -w[y] * logp[y]
    x = _f(logp)
    keep, yy = _kept(y, ignore_index)
    return np.where(keep, -_class_weight(class_weight, x.shape[-1])[yy] * _pick(x, yy), 0.0)


def nll_grads(logp, y, class_weight=None, *, ignore_index=-100):
    x = _f(logp)
    keep, yy = _kept(y, ignore_index)
    w = _class_weight(class_weight, x.shape[-1])
    return (-(w[yy] * keep)[..., None] * _onehot(yy, x.shape[-1]),)


def nll_probs_value(logp, target, class_weight=None):
    # mxnet.gluon.loss.SoftmaxCrossEntropyLoss(sparse_label=False, from_logits=True) before its
    # per-sample mean: -sum_c w[c] * target[c] * logp[c]; a class with w * target == 0 adds 0
    # (even at logp = -inf, a masked class)
    x, t = _f(logp), _f(target)
    wt = _class_weight(class_weight, x.shape[-1]) * t
    with np.errstate(invalid="ignore"):
        return -np.sum(np.where(wt == 0, 0.0, wt * x), axis=-1)


def nll_probs_grads(logp, target, class_weight=None):
    # the loss is linear in logp: d/dlogp = -w * target (MXNet's autograd), not
    # softmax(logp) * sum(w * target) - w * target (torch's cross_entropy on the same input)
    x, t = _f(logp), _f(target)
    return (-np.broadcast_to(_class_weight(class_weight, x.shape[-1]) * t, x.shape),)


def poly1_ce_value(logits, y, class_weight=None, *, epsilon=1.0, ignore_index=-100, label_smoothing=0.0):
    # PolyLoss (Leng et al. 2022), Poly-1: CE + epsilon * (1 - p_t), where p_t is the softmax's
    # probability of the smoothed one-hot target (the paper's code: sum(labels * softmax)),
    # (1 - ls) * p_y + ls / C; CE as torch's cross_entropy; the poly term scaled by w[y] like
    # CE's label term (so the class-weighted mean stays a weighted mean); 0 on ignored rows
    z = _f(logits)
    keep, yy = _kept(y, ignore_index)
    ce = cross_entropy_value(z, y, class_weight, ignore_index=ignore_index, label_smoothing=label_smoothing)
    p_y = np.exp(_pick(_log_softmax(z), yy))
    p_t = (1.0 - label_smoothing) * p_y + label_smoothing / z.shape[-1]
    w = _class_weight(class_weight, z.shape[-1])[yy]
    return ce + np.where(keep, epsilon * w * (1.0 - p_t), 0.0)


def poly1_ce_grads(logits, y, class_weight=None, *, epsilon=1.0, ignore_index=-100, label_smoothing=0.0):
    z = _f(logits)
    keep, yy = _kept(y, ignore_index)
    (ce,) = cross_entropy_grads(z, y, class_weight, ignore_index=ignore_index, label_smoothing=label_smoothing)
    s = _softmax(z)
    p_y = _pick(s, yy)[..., None]
    w = _class_weight(class_weight, z.shape[-1])[yy][..., None]
    # d p_t / dz = (1 - ls) * p_y * (onehot(y) - softmax)
    dp_t = (1.0 - label_smoothing) * p_y * (_onehot(yy, z.shape[-1]) - s)
    return (ce - np.where(keep[..., None], epsilon * w * dp_t, 0.0),)


def softmax_focal_value(logits, y, class_weight=None, *, alpha=0.25, gamma=2.0, ignore_index=-100):
    # Lin et al. (2017) focal loss, categorical, on logits: -alpha * w[y] * (1 - p_y)^gamma * log p_y
    # (tf.keras.losses.CategoricalFocalCrossentropy with one-hot targets; mindspore.nn.FocalLoss
    # applies the class weight to log p only)
    z = _f(logits)
    keep, yy = _kept(y, ignore_index)
    log_p = _pick(_log_softmax(z), yy)
    w = _class_weight(class_weight, z.shape[-1])[yy]
    return np.where(keep, -alpha * w * (-np.expm1(log_p)) ** gamma * log_p, 0.0)


def softmax_focal_grads(logits, y, class_weight=None, *, alpha=0.25, gamma=2.0, ignore_index=-100):
    # with q = 1 - p_y and dp_y/dz = p_y (onehot - s):
    # dL/dz = -alpha w (onehot - s) [q^gamma - gamma q^(gamma-1) p_y log p_y]
    z = _f(logits)
    keep, yy = _kept(y, ignore_index)
    log_p = _pick(_log_softmax(z), yy)
    q = -np.expm1(log_p)
    dq = np.zeros_like(q) if gamma == 0 else gamma * q ** (gamma - 1.0)
    w = _class_weight(class_weight, z.shape[-1])[yy]
    factor = np.where(keep, -alpha * w * (q ** gamma - dq * np.exp(log_p) * log_p), 0.0)
    return (factor[..., None] * (_onehot(yy, z.shape[-1]) - _softmax(z)),)


# ---------------------------------------------------------------------------
# KL divergence
# ---------------------------------------------------------------------------

def kl_div_value(input, target, *, log_target=False):  # PyTorch's argument names
    # torch.nn.functional.kl_div(reduction='none'): target * (log target - input), 0 where target = 0;
    # log_target: exp(target) * (target - input)
    x, t = _f(input), _f(target)
    if log_target:
        return np.exp(t) * (t - x)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(t > 0, t * np.log(np.where(t > 0, t, 1.0)), 0.0) - t * x


def kl_div_grads(input, target, *, log_target=False):
    t = _f(target)
    return (-np.exp(t) if log_target else -t,)


def gluon_kl_div_value(pred, label, *, from_logits=True):
    # mxnet.gluon.loss.KLDivLoss before its batch mean: mean over the axis of
    # label * (log(label + 1e-12) - log_p), log_p = pred (from_logits) or log_softmax(pred)
    p, t = _f(pred), _f(label)
    log_p = p if from_logits else _log_softmax(p)
    return np.mean(t * (np.log(t + 1e-12) - log_p), axis=-1)


def gluon_kl_div_grads(pred, label, *, from_logits=True):
    p, t = _f(pred), _f(label)
    length = p.shape[-1]
    if from_logits:
        return (-t / length,)
    return ((_softmax(p) * np.sum(t, axis=-1, keepdims=True) - t) / length,)


# ---------------------------------------------------------------------------
# margins
# ---------------------------------------------------------------------------

def multi_margin_value(x, y, class_weight=None, *, p=1, margin=1.0):
    # torch.nn.functional.multi_margin_loss(reduction='none'):
    # w[y] * sum_{i != y} max(0, margin - x[y] + x[i])^p / C  (the weight multiplies after the power)
    x = _f(x)
    length = x.shape[-1]
    _, yy = _kept(y)
    z = np.maximum(margin - _pick(x, yy)[..., None] + x, 0.0) ** p
    z = np.where(_onehot(yy, length) > 0, 0.0, z)
    return _class_weight(class_weight, length)[yy] * np.sum(z, axis=-1) / length


def multi_margin_grads(x, y, class_weight=None, *, p=1, margin=1.0):
    x = _f(x)
    length = x.shape[-1]
    _, yy = _kept(y)
    oh = _onehot(yy, length)
    z = margin - _pick(x, yy)[..., None] + x
    # a margin exactly met (z == 0) passes no gradient (PyTorch tests z > 0)
    dz = np.where((z > 0) & (oh == 0), p * np.maximum(z, 0.0) ** (p - 1), 0.0)
    g = dz - oh * np.sum(dz, axis=-1, keepdims=True)
    return (_class_weight(class_weight, length)[yy][..., None] * g / length,)


def multilabel_soft_margin_value(x, y, class_weight=None):
    # torch.nn.functional.multilabel_soft_margin_loss(reduction='none'):
    # -mean_c w[c] * (y log sigmoid(x) + (1 - y) log sigmoid(-x))
    x, y = _f(x), _f(y)
    w = _class_weight(class_weight, x.shape[-1])
    return np.mean(w * (y * _softplus(-x) + (1.0 - y) * _softplus(x)), axis=-1)


def multilabel_soft_margin_grads(x, y, class_weight=None):
    x, y = _f(x), _f(y)
    w = _class_weight(class_weight, x.shape[-1])
    return (w * (_sigmoid(x) - y) / x.shape[-1],)


def _triplet_parts(anchor, positive, negative, p, eps, swap):
    a, pos, neg = _f(anchor), _f(positive), _f(negative)
    u_ap, u_an, u_pn = a - pos + eps, a - neg + eps, pos - neg + eps
    d_ap, d_an, d_pn = _norm_p(u_ap, p), _norm_p(u_an, p), _norm_p(u_pn, p)
    use_pn = swap & (d_pn < d_an)
    return u_ap, u_an, u_pn, d_ap, np.where(use_pn, d_pn, d_an), use_pn


def triplet_value(anchor, positive, negative, *, margin=1.0, p=2.0, eps=1e-6, swap=False):
    # torch.nn.functional.triplet_margin_loss(reduction='none'):
    # clamp_min(d(a, p) - d(a, n) + margin, 0), d(x1, x2) = ||x1 - x2 + eps||_p
    # (pairwise_distance); swap: d(a, n) <- min(d(a, n), d(p, n))
    _, _, _, d_ap, d_neg, _ = _triplet_parts(anchor, positive, negative, p, eps, swap)
    return np.maximum(d_ap - d_neg + margin, 0.0)


def triplet_grads(anchor, positive, negative, *, margin=1.0, p=2.0, eps=1e-6, swap=False):
    u_ap, u_an, u_pn, d_ap, d_neg, use_pn = _triplet_parts(anchor, positive, negative, p, eps, swap)
    active = (d_ap - d_neg + margin >= 0)[..., None]          # clamp_min passes the gradient at 0
    g_ap = _dnorm_p(u_ap, p)
    g_an = np.where(use_pn[..., None], 0.0, _dnorm_p(u_an, p))
    g_pn = np.where(use_pn[..., None], _dnorm_p(u_pn, p), 0.0)
    return tuple(np.where(active, g, 0.0) for g in (g_ap - g_an, -g_ap - g_pn, g_an + g_pn))


def triplet_squared_value(pred, positive, negative, *, margin=1.0):
    # mxnet.gluon.loss.TripletLoss: relu(sum((pred - pos)^2 - (pred - neg)^2) + margin)
    a, pos, neg = _f(pred), _f(positive), _f(negative)
    return np.maximum(np.sum((a - pos) ** 2 - (a - neg) ** 2, axis=-1) + margin, 0.0)


def triplet_squared_grads(pred, positive, negative, *, margin=1.0):
    a, pos, neg = _f(pred), _f(positive), _f(negative)
    active = (np.sum((a - pos) ** 2 - (a - neg) ** 2, axis=-1) + margin > 0)[..., None]   # relu
    return tuple(np.where(active, g, 0.0) for g in (2.0 * (neg - pos), -2.0 * (a - pos), 2.0 * (a - neg)))


# ---------------------------------------------------------------------------
# cosines
# ---------------------------------------------------------------------------

_NORM_EPS = 1e-12


def _cosine(a, b, convention):
    """cos(a, b) and its gradients: torch adds 1e-12 to each squared norm
    (cosine_embedding_loss); gluon floors the product of the norms at 1e-12."""
    a, b = _f(a), _f(b)
    dot = np.sum(a * b, axis=-1)
    sa, sb = np.sum(a * a, axis=-1), np.sum(b * b, axis=-1)
    if convention == "torch":
        sa, sb = sa + _NORM_EPS, sb + _NORM_EPS
        denom = np.sqrt(sa * sb)
        cos = dot / denom
        da = b / denom[..., None] - (cos / sa)[..., None] * a
        db = a / denom[..., None] - (cos / sb)[..., None] * b
        return cos, da, db
    norms = np.sqrt(sa) * np.sqrt(sb)
    floored = norms <= _NORM_EPS
    denom = np.where(floored, _NORM_EPS, norms)
    cos = dot / denom
    with np.errstate(divide="ignore", invalid="ignore"):
        da = b / denom[..., None] - np.where(floored, 0.0, cos / sa)[..., None] * a
        db = a / denom[..., None] - np.where(floored, 0.0, cos / sb)[..., None] * b
    return cos, da, db


def cosine_embedding_value(a, b, y, *, margin=0.0, convention="torch"):
    # torch.nn.functional.cosine_embedding_loss(reduction='none') ("torch") and
    # mxnet.gluon.loss.CosineEmbeddingLoss ("gluon"): 1 - cos where y == 1,
    # max(0, cos - margin) where y == -1, 0 for any other label
    cos, _, _ = _cosine(a, b, convention)
    y = _f(y)
    return np.where(y == 1, 1.0 - cos, np.where(y == -1, np.maximum(cos - margin, 0.0), 0.0))


def cosine_embedding_grads(a, b, y, *, margin=0.0, convention="torch"):
    cos, da, db = _cosine(a, b, convention)
    y = _f(y)
    # d/dcos: -1 where y == 1; 1 where y == -1 and cos - margin >= 0 (clamp_min); else 0
    dcos = np.where(y == 1, -1.0, np.where((y == -1) & (cos - margin >= 0), 1.0, 0.0))[..., None]
    return dcos * da, dcos * db


def cosine_similarity_value(pred, target, *, eps=1e-6):
    # tf.keras.losses.CosineSimilarity(reduction=None): -sum(l2_normalize(pred) * l2_normalize(target)),
    # l2_normalize(x) = x / sqrt(max(sum(x^2), 1e-12)), i.e. each norm floored at eps = 1e-6;
    # -torch.nn.functional.cosine_similarity(pred, target, dim=-1, eps): x1.x2 / (max(|x1|, eps) max(|x2|, eps))
    p, t = _f(pred), _f(target)
    return -np.sum(p * t, axis=-1) / (np.maximum(np.linalg.norm(p, axis=-1), eps)
                                      * np.maximum(np.linalg.norm(t, axis=-1), eps))


def cosine_similarity_grads(pred, target, *, eps=1e-6):
    p, t = _f(pred), _f(target)
    norm_p = np.linalg.norm(p, axis=-1, keepdims=True)
    t_hat = t / np.maximum(np.linalg.norm(t, axis=-1, keepdims=True), eps)
    n = np.maximum(norm_p, eps)
    # d/dp of p/n: (I - p p^T / |p|^2)/n where |p| > eps, I/eps where floored (the floor is a constant)
    with np.errstate(divide="ignore", invalid="ignore"):
        proj = np.where(norm_p > eps, p * np.sum(p * t_hat, axis=-1, keepdims=True) / norm_p ** 2, 0.0)
    return (-(t_hat - proj) / n,)


def _sample_cosine(rng, rows, length, params):
    # normal rows (norms ~ 2), one pred row and one target row scaled to norm 0.05: floored by a
    # large eps (0.3 below), not by the default; away from the floor by far more than a
    # finite-difference step
    pred, target = (rng.normal(0.0, 1.0, rows + (length,)) for _ in range(2))
    flat_p, flat_t = pred.reshape(-1, length), target.reshape(-1, length)
    flat_p[0] *= 0.05 / np.linalg.norm(flat_p[0])
    flat_t[-1] *= 0.05 / np.linalg.norm(flat_t[-1])
    return pred, target


# ---------------------------------------------------------------------------
# overlap losses
# ---------------------------------------------------------------------------

def dice_value(p, y, *, smooth=1e-5):
    # mindspore.nn.DiceLoss: 1 - 2 sum(p y) / (sum(p^2) + sum(y^2) + smooth)
    p, y = _f(p), _f(y)
    return 1.0 - 2.0 * np.sum(p * y, axis=-1) / (np.sum(p * p, axis=-1) + np.sum(y * y, axis=-1) + smooth)


def dice_grads(p, y, *, smooth=1e-5):
    p, y = _f(p), _f(y)
    inter = np.sum(p * y, axis=-1)[..., None]
    union = (np.sum(p * p, axis=-1) + np.sum(y * y, axis=-1) + smooth)[..., None]
    return (-2.0 * (y * union - 2.0 * p * inter) / union ** 2,)


def tversky_value(p, y, *, alpha=0.5, beta=0.5, smooth=1e-5):
    # Salehi et al. (2017): 1 - (tp + s) / (tp + alpha fp + beta fn + s)
    p, y = _f(p), _f(y)
    tp, fp, fn = np.sum(p * y, axis=-1), np.sum(p * (1 - y), axis=-1), np.sum((1 - p) * y, axis=-1)
    return 1.0 - (tp + smooth) / (tp + alpha * fp + beta * fn + smooth)


def tversky_grads(p, y, *, alpha=0.5, beta=0.5, smooth=1e-5):
    p, y = _f(p), _f(y)
    tp, fp, fn = np.sum(p * y, axis=-1), np.sum(p * (1 - y), axis=-1), np.sum((1 - p) * y, axis=-1)
    num = (tp + smooth)[..., None]
    den = (tp + alpha * fp + beta * fn + smooth)[..., None]
    dden = y + alpha * (1 - y) - beta * y
    return (-(y * den - num * dden) / den ** 2,)


# ---------------------------------------------------------------------------
# root mean squared error
# ---------------------------------------------------------------------------

def rmse_value(pred, target):
    # mindspore.nn.RMSELoss: sqrt(mean((pred - target)^2)) over the axis (every element by default)
    d = _f(pred) - _f(target)
    return np.sqrt(np.mean(d * d, axis=-1))


def rmse_grads(pred, target):
    # d/dpred = (pred - target) / (length * rmse); 0 where rmse == 0 (every error 0), the catalogue's
    # convention where sqrt's derivative is infinite (torch autograd gives nan there)
    d = _f(pred) - _f(target)
    r = np.sqrt(np.mean(d * d, axis=-1, keepdims=True))
    with np.errstate(divide="ignore", invalid="ignore"):
        return (np.where(r > 0, d / (d.shape[-1] * r), 0.0),)


# ---------------------------------------------------------------------------
# the catalogue of axis references
# ---------------------------------------------------------------------------

_CLASS = ("logits", "y", "class_weight")
AXIS_REFERENCES: dict[str, AxisReference] = {}


def _register(key: str, ref: AxisReference) -> None:
    assert key not in AXIS_REFERENCES
    AXIS_REFERENCES[key] = ref


_register("cross_entropy", AxisReference(
    name="cross_entropy", inputs=_CLASS, wrt=("logits",), along=("logits",), default_axis=1,
    sample=_sample_logits_labels(), value=cross_entropy_value, grads=cross_entropy_grads,
    divisor=_weighted_count, labels=True, ignore=True,
    params=({}, {"label_smoothing": 0.2}, {"ignore_index": 2, "label_smoothing": 0.05}),
    source="torch.nn.functional.cross_entropy (class indices, weight, ignore_index, label_smoothing)"))

_register("cross_entropy_probs", AxisReference(
    name="cross_entropy_probs", inputs=("logits", "target", "class_weight"), wrt=("logits",),
    along=("logits", "target"), default_axis=1,
    sample=_sample_logits_probs, value=cross_entropy_probs_value, grads=cross_entropy_probs_grads,
    params=({}, {"label_smoothing": 0.3}),
    source="torch.nn.functional.cross_entropy (probability targets, weight, label_smoothing)"))

_register("nll", AxisReference(
    name="nll", inputs=("logp", "y", "class_weight"), wrt=("logp",), along=("logp",), default_axis=1,
    sample=_sample_logits_labels(log_probs=True), value=nll_value, grads=nll_grads,
    divisor=_weighted_count, labels=True, ignore=True, params=({}, {"ignore_index": 0}),
    source="torch.nn.functional.nll_loss (weight, ignore_index)"))

_register("nll_probs", AxisReference(
    name="nll_probs", inputs=("logp", "target", "class_weight"), wrt=("logp",), along=("logp", "target"),
    default_axis=1, sample=_sample_logp_probs, value=nll_probs_value, grads=nll_probs_grads,
    source="mxnet.gluon.loss.SoftmaxCrossEntropyLoss(sparse_label=False, from_logits=True), "
           "before the per-sample mean"))

_register("poly1_ce", AxisReference(
    name="poly1_ce", inputs=_CLASS, wrt=("logits",), along=("logits",), default_axis=1,
    sample=_sample_logits_labels(), value=poly1_ce_value, grads=poly1_ce_grads,
    divisor=_weighted_count, labels=True, ignore=True,
    params=({}, {"epsilon": -0.5, "label_smoothing": 0.1}, {"epsilon": 2.0, "ignore_index": 1}),
    source="Poly-1 (Leng et al., PolyLoss, ICLR 2022) on torch.nn.functional.cross_entropy"))

_register("softmax_focal", AxisReference(
    name="softmax_focal", inputs=_CLASS, wrt=("logits",), along=("logits",), default_axis=1,
    sample=_sample_logits_labels(), value=softmax_focal_value, grads=softmax_focal_grads,
    divisor=_kept_count, labels=True, ignore=True,
    params=({}, {"alpha": 1.0, "gamma": 0.0}, {"alpha": 0.5, "gamma": 1.5, "ignore_index": 0}),
    source="categorical focal loss on logits (Lin et al. 2017; tf.keras CategoricalFocalCrossentropy, "
           "mindspore.nn.FocalLoss class weights)"))

_register("kl_div", AxisReference(
    name="kl_div", inputs=("input", "target"), wrt=("input",), along=(), default_axis=-1,
    sample=_sample_kl, value=kl_div_value, grads=kl_div_grads, elementwise=True,
    source="torch.nn.functional.kl_div(reduction='none', log_target=False)"))

_register("kl_div_log_target", AxisReference(
    name="kl_div", inputs=("input", "target"), wrt=("input",), along=(), default_axis=-1,
    sample=_sample_kl, value=kl_div_value, grads=kl_div_grads, elementwise=True,
    static={"log_target": True},
    source="torch.nn.functional.kl_div(reduction='none', log_target=True)"))

_register("gluon_kl_div", AxisReference(
    name="gluon_kl_div", inputs=("pred", "label"), wrt=("pred",), along=("pred", "label"), default_axis=-1,
    sample=_sample_logits_distribution, value=gluon_kl_div_value, grads=gluon_kl_div_grads,
    source="mxnet.gluon.loss.KLDivLoss(from_logits=True), before the per-sample mean"))

_register("gluon_kl_div_softmax", AxisReference(
    name="gluon_kl_div", inputs=("pred", "label"), wrt=("pred",), along=("pred", "label"), default_axis=-1,
    sample=_sample_logits_distribution, value=gluon_kl_div_value, grads=gluon_kl_div_grads,
    static={"from_logits": False},
    source="mxnet.gluon.loss.KLDivLoss(from_logits=False), before the per-sample mean"))

_register("multi_margin", AxisReference(
    name="multi_margin", inputs=("x", "y", "class_weight"), wrt=("x",), along=("x",), default_axis=1,
    sample=_sample_logits_labels(scale=1.0, ignore=False), value=multi_margin_value, grads=multi_margin_grads,
    labels=True, params=({}, {"p": 2}, {"p": 2, "margin": 0.5}, {"margin": 2.0}),
    source="torch.nn.functional.multi_margin_loss (p, margin, weight)"))

_register("multilabel_soft_margin", AxisReference(
    name="multilabel_soft_margin", inputs=("x", "y", "class_weight"), wrt=("x",), along=("x", "y"),
    default_axis=1, sample=_sample_multilabel,
    value=multilabel_soft_margin_value, grads=multilabel_soft_margin_grads,
    source="torch.nn.functional.multilabel_soft_margin_loss(reduction='none', weight)"))

_register("triplet", AxisReference(
    name="triplet", inputs=("anchor", "positive", "negative"), wrt=("anchor", "positive", "negative"),
    along=("anchor", "positive", "negative"), default_axis=-1,
    sample=_sample_normal(3), value=triplet_value, grads=triplet_grads,
    params=({}, {"p": 1.0, "margin": 0.5}, {"p": 3.0, "eps": 1e-3, "margin": 2.0}),
    source="torch.nn.functional.triplet_margin_loss(reduction='none', swap=False)"))

_register("triplet_swap", AxisReference(
    name="triplet", inputs=("anchor", "positive", "negative"), wrt=("anchor", "positive", "negative"),
    along=("anchor", "positive", "negative"), default_axis=-1,
    sample=_sample_normal(3), value=triplet_value, grads=triplet_grads,
    params=({}, {"p": 1.5, "margin": 2.0}), static={"swap": True},
    source="torch.nn.functional.triplet_margin_loss(reduction='none', swap=True)"))

_register("triplet_squared", AxisReference(
    name="triplet_squared", inputs=("pred", "positive", "negative"), wrt=("pred", "positive", "negative"),
    along=("pred", "positive", "negative"), default_axis=-1,
    sample=_sample_normal(3), value=triplet_squared_value, grads=triplet_squared_grads,
    params=({}, {"margin": 3.0}),
    source="mxnet.gluon.loss.TripletLoss (before the batch mean)"))

_register("cosine_embedding", AxisReference(
    name="cosine_embedding", inputs=("a", "b", "y"), wrt=("a", "b"), along=("a", "b"), default_axis=-1,
    sample=_sample_pairs_signed, value=cosine_embedding_value, grads=cosine_embedding_grads,
    params=({}, {"margin": 0.3}, {"margin": -0.2}),
    source="torch.nn.functional.cosine_embedding_loss(reduction='none')"))

_register("cosine_embedding_gluon", AxisReference(
    name="cosine_embedding", inputs=("a", "b", "y"), wrt=("a", "b"), along=("a", "b"), default_axis=-1,
    sample=_sample_pairs_signed, value=cosine_embedding_value, grads=cosine_embedding_grads,
    params=({}, {"margin": 0.3}), static={"convention": "gluon"},
    source="mxnet.gluon.loss.CosineEmbeddingLoss (norm product floored at 1e-12)"))

_register("cosine_similarity", AxisReference(
    name="cosine_similarity", inputs=("pred", "target"), wrt=("pred",), along=("pred", "target"),
    default_axis=-1, sample=_sample_cosine, value=cosine_similarity_value, grads=cosine_similarity_grads,
    params=({}, {"eps": 1e-8}, {"eps": 0.3}),
    source="tf.keras.losses.CosineSimilarity(axis=-1, reduction=None) (eps=1e-6); "
           "-torch.nn.functional.cosine_similarity(dim=-1, eps=...)"))

_register("dice", AxisReference(
    name="dice", inputs=("p", "y"), wrt=("p",), along=("p", "y"), default_axis="all",
    sample=_sample_masks, value=dice_value, grads=dice_grads, params=({}, {"smooth": 1.0}),
    source="mindspore.nn.DiceLoss(smooth) (one dice over every element by default)"))

_register("multiclass_dice", AxisReference(
    name="multiclass_dice", inputs=("p", "y"), wrt=("p",), along=("p", "y"), default_axis=0,
    sample=_sample_masks, value=dice_value, grads=dice_grads, params=({}, {"smooth": 0.5}),
    source="mindspore.nn.MultiClassDiceLoss(activation=None): mindspore.nn.DiceLoss per class column"))

_register("tversky", AxisReference(
    name="tversky", inputs=("p", "y"), wrt=("p",), along=("p", "y"), default_axis=-1,
    sample=_sample_masks, value=tversky_value, grads=tversky_grads,
    params=({}, {"alpha": 0.3, "beta": 0.7}, {"alpha": 0.0, "beta": 1.0, "smooth": 1.0}),
    source="Tversky loss (Salehi et al. 2017)"))

_register("rmse", AxisReference(
    name="rmse", inputs=("pred", "target"), wrt=("pred",), along=("pred", "target"), default_axis="all",
    sample=_sample_normal(2), value=rmse_value, grads=rmse_grads,
    source="mindspore.nn.RMSELoss (one root over every element by default)"))
