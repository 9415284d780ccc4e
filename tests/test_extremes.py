"""Every catalogue loss at the largest finite inputs of float32 and float64, against PyTorch.

Inputs mix +-finfo.max and the values where a square first overflows (2e19 in float32, 1.4e154
in float64: cross_entropy's z_loss*lse^2 overflowed there, and 0 * inf made its default z_loss = 0
a NaN) with 0 and +-1. Each loss is called with its default parameters, and with the settings whose
coefficient of a term that can overflow may be a runtime 0 (z_loss, label_smoothing = 1, q = 0 or
1, alpha or beta = 0). Its values (reduction "none", value_and_grad's, and "mean") and gradients must
have no NaN where the reference has none and equal it there, inf where it is inf.

The reference is PyTorch's own function where one exists (torch.nn.functional), else the formula of
the framework the spec follows, written in PyTorch so that autograd gives the gradient. Nothing is
asserted where the reference is NaN (nor a gradient where the reference's loss is NaN). A case marked
`overflows` lets one of lossdsl and the reference be +-inf where the other is finite, with the same
sign: one of them overflows in an intermediate (named at the case) that the other's order of operations
avoids (lossdsl's kernels sum in float64, and compile with fastmath "reassoc", which may reorder a
product or a sum).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pytest

import lossdsl
from test_topk import distill_rows, topk_rows

try:  # the references need PyTorch; each test that calls one skips without it
    import torch
    F = torch.nn.functional
except ImportError:  # pragma: no cover
    torch = F = None

DTYPES = (np.float32, np.float64)
DTYPE_IDS = ("float32", "float64")
# just past where x^2 overflows: sqrt(finfo.max) is 1.8e19 in float32, 1.3e154 in float64
BIG = {np.float32: 2e19, np.float64: 1.4e154}
RTOL = {np.float32: 2e-5, np.float64: 1e-10}
ATOL = {np.float32: 1e-6, np.float64: 1e-12}


def _top(dtype):
    return float(np.finfo(dtype).max)


def _extremes(dtype):
    """-max, -big, -1, 0, 1, big, max of the dtype."""
    top, big = _top(dtype), BIG[dtype]
    return np.array([-top, -big, -1.0, 0.0, 1.0, big, top], dtype)


def _grid(*columns):
    """Every combination of the columns' values, one flat array per column."""
    return tuple(a.ravel() for a in np.meshgrid(*columns, indexing="ij"))


def _pairs(dtype):
    v = _extremes(dtype)
    return _grid(v, v)


def _against(*columns):
    """Every extreme value against each combination of the given columns (labels, targets)."""
    def build(dtype):
        return _grid(_extremes(dtype), *(np.asarray(c, dtype) for c in columns))
    return build


def _rows(dtype, shapes):
    """Rows of 3 built from the patterns in `shapes` (v: big, then max; entries 0 and 1 beside)."""
    out = []
    for v in (BIG[dtype], _top(dtype)):
        out += [[{"v": v, "-v": -v}.get(e, e) for e in row] for row in shapes]
    return np.asarray(out, dtype)


def _logit_rows(dtype):
    return _rows(dtype, [["v", 0, 0], [0, "v", 1], ["-v", 0, 0], ["v", "-v", 0], ["-v", "-v", 1], ["v", 1, "-v"]])


def _log_prob_rows(dtype):
    """Rows of log-probabilities (<= 0) with huge negative entries."""
    return _rows(dtype, [[0, "-v", "-v"], ["-v", 0, -1], [-1, "-v", 0], ["-v", "-v", 0], ["-v", "-v", "-v"]])


def _overlaps(dtype):
    """dice, tversky: predictions p >= 0 against masks y, huge where y = 0 (false positives whose sums
    overflow), at most 1 where y = 1 (so that no sum cancels huge terms)."""
    p = _rows(dtype, [["v", 0, 1], ["v", "v", 0.5], [0, "v", 0], [1, "v", 0], [0.5, "v", "v"], ["v", 0, 0],
                      ["v", "v", "v"], [1, 1, "v"]])
    y = np.tile(np.asarray([[0, 0, 1], [0, 0, 1], [0, 0, 1], [1, 0, 0], [1, 0, 0], [0, 0, 0], [0, 0, 0], [1, 1, 0]],
                           dtype), (2, 1))
    return p, y


def _each_label(rows):
    """Each row with each label 0, 1, 2."""
    def build(dtype):
        r = rows(dtype)
        return np.repeat(r, 3, axis=0), np.tile(np.arange(3), len(r))
    return build


def _each_target(rows, targets):
    """Each row against each target row."""
    def build(dtype):
        r, t = rows(dtype), np.asarray(targets, dtype)
        return np.repeat(r, len(t), axis=0), np.tile(t, (len(r), 1))
    return build


PROBABILITIES = [[1, 0, 0], [0, 0.25, 0.75], [1 / 3, 1 / 3, 1 / 3]]
MULTI_HOT = [[1, 0, 0], [0, 1, 1], [0, 0, 0], [1, 1, 1]]


def _vector_pairs(dtype):
    rows = _logit_rows(dtype)
    i, j = _grid(np.arange(len(rows)), np.arange(len(rows)))
    return rows[i], rows[j]


def _labelled_pairs(dtype):
    """Student and teacher rows, each pair with each label."""
    a, b = _vector_pairs(dtype)
    return np.repeat(a, 3, axis=0), np.repeat(b, 3, axis=0), np.tile(np.arange(3), len(a))


def _top_k(dtype):
    """Each extreme student row with each teacher top-2 (padded or not) and each pair of log-probabilities
    (rows of _log_prob_rows, two columns: 0, -1 and huge negative ones)."""
    students, logps = _logit_rows(dtype), _log_prob_rows(dtype)[:, :2]
    ids = np.array([[0, 1], [2, -1], [1, 2]])
    i, j, k = _grid(np.arange(len(students)), np.arange(len(ids)), np.arange(len(logps)))
    return students[i], ids[j], logps[k]


def _multi_hot(ids, like):
    """The multi-hot rows that lists of classes (padded with -1) stand for."""
    hot = torch.zeros_like(like)
    for row, classes in enumerate(ids.tolist()):
        hot[row, [c for c in classes if c >= 0]] = 1.0
    return hot


def _labelled_top_k(dtype):
    student, ids, logp = _top_k(dtype)
    return student, ids, logp, np.arange(len(student)) % 3


def _policy_tokens(dtype):
    """Each extreme logit row with each label, old log-probability (0, -1, huge negative) and advantage (+-1)."""
    rows, olds = _logit_rows(dtype), np.asarray([0.0, -1.0, -BIG[dtype]], dtype)
    i, y, o, a = _grid(np.arange(len(rows)), np.arange(3), np.arange(3), np.arange(2))
    return rows[i], y, olds[o], np.where(a == 0, 1.0, -1.0).astype(dtype)


def _grpo(beta=0.0):
    def reference(logits, labels, old_logp, advantages):   # TRL's per-token loss
        logp = torch.gather(F.log_softmax(logits, -1), -1, labels[:, None])[:, 0]
        ratio = torch.exp(logp - old_logp)
        loss = -torch.minimum(ratio * advantages, torch.clamp(ratio, 0.8, 1.2) * advantages)
        return loss + beta * (torch.exp(-logp) + logp - 1) if beta else loss
    return reference


def _dpo(loss_type="sigmoid"):
    def reference(chosen, rejected):   # TRL DPOTrainer.dpo_loss, beta 0.1, the references' log-probabilities 0
        margin = chosen - rejected
        if loss_type == "hinge":
            return torch.relu(1 - 0.1 * margin)
        return -F.logsigmoid(0.1 * margin)
    return reference


def _log_probabilities(dtype):
    """Mean log-probabilities at the extremes: -max, -big, -1, -1e-6 and the largest below 0 (probabilities
    nearly 1; at 0 itself the odds are infinite, the gradient a pole's, the side it is taken from a convention)."""
    return np.array([-_top(dtype), -BIG[dtype], -1.0, -1e-6, -np.finfo(dtype).tiny], dtype)


def _orpo(chosen, rejected):   # TRL ORPOTrainer's odds ratio, beta 0.1, log(1 - exp(x)) in its accurate form
    def log1m(x):
        far = torch.log1p(-torch.exp(torch.minimum(x, torch.full_like(x, -0.5))))  # finite where not taken
        return torch.where(x > -np.log(2), torch.log(-torch.expm1(x)), far)
    return -0.1 * F.logsigmoid((chosen - rejected) - (log1m(chosen) - log1m(rejected)))


def _kto(logp, desirable, ref):   # TRL KTOTrainer.kto_loss, beta 0.1, reference point 0
    ratio = logp - ref
    return torch.where(desirable == 1, 1 - torch.sigmoid(0.1 * ratio), 1 - torch.sigmoid(-0.1 * ratio))


def _gspo(logp, old_logp, advantages):   # TRL GRPOTrainer, importance_sampling_level="sequence", one sequence
    ratio = torch.exp(logp - old_logp)
    return -torch.minimum(ratio * advantages, torch.clamp(ratio, 1 - 3e-4, 1 + 4e-4) * advantages)


def _signed_pairs(dtype):
    a, b = _vector_pairs(dtype)
    return a, b, np.where(np.arange(len(a)) % 2 == 0, 1, -1).astype(dtype)


def _triplets(dtype):
    """Anchor, positive and negative from three different extreme rows (a row against itself gives a
    zero difference, which lossdsl, adding eps before subtracting, rounds away at these magnitudes)."""
    rows = _logit_rows(dtype)[::2]
    i, j, k = _grid(*(np.arange(len(rows)),) * 3)
    keep = (i != j) & (j != k) & (i != k)
    return rows[i[keep]], rows[j[keep]], rows[k[keep]]


def _sequences(dtype):
    """CTC: log_probs (T=4, N=12, C=3) the log_softmax of extreme logits, targets of 1 and 2 labels."""
    logits = _logit_rows(dtype).astype(np.float64)
    logits = np.stack([np.roll(logits, t, axis=0) for t in range(4)])        # (T, N, C)
    shift = logits.max(axis=2, keepdims=True)
    with np.errstate(over="ignore"):   # -max - max: floored at -max, the log-probabilities stay finite
        log_probs = logits - shift - np.log(np.exp(logits - shift).sum(axis=2, keepdims=True))
    log_probs = np.maximum(log_probs, -_top(dtype)).astype(dtype)
    batch = logits.shape[1]
    targets = np.tile([[1, 2], [2, 2]], (batch // 2, 1))
    target_lengths = np.tile([2, 1], batch // 2)
    return log_probs, targets, np.full(batch, 4), target_lengths


def _mxnet_sequences(dtype):
    """ctc_mxnet: pred (N=12, T=4, C=3) extreme unnormalised scores, labels padded with -1, blank last."""
    logits = _logit_rows(dtype)
    pred = np.stack([np.roll(logits, t, axis=0) for t in range(4)], axis=1)  # (N, T, C)
    label = np.tile([[0, 1], [1, -1]], (len(logits) // 2, 1))
    return pred, label


# ---------------------------------------------------------------------------
# references: PyTorch functions, or the followed framework's formula in PyTorch
# ---------------------------------------------------------------------------

def _quantile(q):
    def loss(p, t):
        d = t - p
        # pinball; a side weighted by q = 0 (or 1 - q = 0) is exactly 0 for any finite error
        upper = torch.zeros_like(d) if q == 0 else q * d
        lower = torch.zeros_like(d) if q == 1 else (q - 1) * d
        return torch.where(d >= 0, upper, lower)
    return loss


def _log_cosh(p, t):
    d = (p - t).abs()
    return d + F.softplus(-2 * d) - math.log(2)       # Keras' log_cosh, on |d|


def _tweedie(x, t, power=1.5):
    # XGBoost's tweedie-nloglik on mu = exp(x), its target term 0 where the target is 0
    claims = torch.where(t > 0, t * torch.exp((1 - power) * x), torch.zeros_like(x))
    return torch.exp((2 - power) * x) / (2 - power) - claims / (1 - power)


def _focal(p, y, alpha=0.25, gamma=2.0):
    # the PyTorch tutorial's FocalLoss, on F.binary_cross_entropy
    bce = F.binary_cross_entropy(p, y, reduction="none")
    p_t = p * y + (1 - p) * (1 - y)
    return (alpha * y + (1 - alpha) * (1 - y)) * (1 - p_t) ** gamma * bce


def _sigmoid_focal(x, y, alpha=0.25, gamma=2.0):
    # torchvision.ops.sigmoid_focal_loss(reduction="none"), written out
    p = torch.sigmoid(x)
    ce = F.binary_cross_entropy_with_logits(x, y, reduction="none")
    p_t = p * y + (1 - p) * (1 - y)
    return (alpha * y + (1 - alpha) * (1 - y)) * ce * (1 - p_t) ** gamma


def _soft_margin(x, y):
    # F.soft_margin_loss computes log1p(exp(-y*x)): inf once exp overflows (|x| > 89 in float32), where
    # the loss is -y*x; softplus is the same function without that overflow
    return F.softplus(-y * x)


def _ce(**options):
    return lambda logits, y: F.cross_entropy(logits, y, reduction="none", **options)


def _ce_z_loss(z_loss):
    def loss(logits, y):
        return F.cross_entropy(logits, y, reduction="none") + z_loss * torch.logsumexp(logits, 1) ** 2
    return loss


def _uniform_target_ce(logits, *_):
    # label_smoothing = 1: the cross-entropy against the uniform target, mean(lse - logits); PyTorch's
    # (1 - 1)*nll + smooth is NaN where nll overflows (0 * inf)
    return torch.logsumexp(logits, 1) - logits.mean(1)


def _poly1(logits, y, epsilon=1.0):
    # Leng et al.'s code: CE + epsilon*(1 - pt), pt the softmax probability of the label
    pt = F.softmax(logits, dim=-1).gather(1, y[:, None])[:, 0]
    return F.cross_entropy(logits, y, reduction="none") + epsilon * (1 - pt)


def _softmax_focal(logits, y, alpha=0.25, gamma=2.0):
    log_py = F.log_softmax(logits, dim=1).gather(1, y[:, None])[:, 0]
    return -alpha * (1 - log_py.exp()) ** gamma * log_py


def _gluon_kl_div(pred, label):
    # MXNet Gluon KLDivLoss(from_logits=True), one value per row
    return (label * (torch.log(label + 1e-12) - pred)).mean(-1)


def _dice(p, y, smooth=1e-5, dim=-1):
    # MindSpore DiceLoss
    return 1 - 2 * (p * y).sum(dim) / ((p * p).sum(dim) + (y * y).sum(dim) + smooth)


def _tversky(alpha=0.5, beta=0.5, smooth=1e-5):
    def loss(p, y):
        tp, fp, fn = (p * y).sum(-1), (p * (1 - y)).sum(-1), ((1 - p) * y).sum(-1)
        # a zero weight drops its term exactly: alpha*fp is 0 for any finite fp
        fp_term = alpha * fp if alpha else torch.zeros_like(fp)
        fn_term = beta * fn if beta else torch.zeros_like(fn)
        return 1 - (tp + smooth) / (tp + fp_term + fn_term + smooth)
    return loss


def _terms(p, terms):
    """sum(p*terms) over the classes, a class where p is 0 adding nothing (0 * inf would be NaN)."""
    return torch.where(p > 0, p * terms, torch.zeros_like(p)).sum(-1)


def _softmax_entropy(logits):
    logp = F.log_softmax(logits, dim=-1)
    return -_terms(logp.exp(), logp)


def _forward_kl(student, teacher):
    ls, lt = F.log_softmax(student, dim=-1), F.log_softmax(teacher, dim=-1)
    return _terms(lt.exp(), lt - ls)


def _reverse_kl(student, teacher):
    return _forward_kl(teacher, student)


def _jsd(student, teacher, beta=0.5):
    # Liger-Kernel's generalised JSD: M = (1 - beta)*p_s + beta*p_t
    ls, lt = F.log_softmax(student, dim=-1), F.log_softmax(teacher, dim=-1)
    lm = ((1 - beta) * ls.exp() + beta * lt.exp()).log()
    return beta * _terms(lt.exp(), lt - lm) + (1 - beta) * _terms(ls.exp(), ls - lm)


def _tvd(student, teacher):
    return 0.5 * (F.softmax(teacher, dim=-1) - F.softmax(student, dim=-1)).abs().sum(-1)


def _cosine_distill(student, teacher):
    return 1 - F.cosine_similarity(F.softmax(student, dim=-1), F.softmax(teacher, dim=-1), dim=-1, eps=1e-8)


def _distill(student, teacher, target):
    # weight_hard 0.5 on the cross-entropy of the student's logits, weight_soft 0.5 on the forward KL
    return 0.5 * F.cross_entropy(student, target, reduction="none") + 0.5 * _forward_kl(student, teacher)


def _ctc(log_probs, targets, input_lengths, target_lengths):
    return F.ctc_loss(log_probs, targets, input_lengths, target_lengths, reduction="none")


def _ctc_mxnet(pred, label):
    # MXNet's CTCLoss: ctc of log_softmax(pred) with the blank last; labels padded with -1
    lengths = (label >= 0).sum(1)
    log_probs = F.log_softmax(pred, dim=2).transpose(0, 1)
    return F.ctc_loss(log_probs, label.clamp(min=0), torch.full_like(lengths, pred.shape[1]), lengths,
                      blank=pred.shape[2] - 1, reduction="none")


# ---------------------------------------------------------------------------
# cases
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    id: str
    spec: str
    build: Callable                     # build(dtype) -> lossdsl's inputs in call order (numpy)
    reference: Callable                 # reference(*tensors) -> the loss of each element or row ("none")
    params: dict = field(default_factory=dict)
    wrt: tuple = (0,)                   # the inputs lossdsl differentiates
    labels: tuple = ()                  # inputs that are integers (int64 tensors)
    call: dict = field(default_factory=dict)
    overflows: bool = False             # +-inf on one side may be finite on the other (see the module doc)
    rtol: dict | None = None
    batch_axis: int = 0                 # the gradients' axis of the loss's rows
    # PyTorch's documented gradient convention -> lossdsl's: grads(tensors, autograd grads) -> grads
    convert: Callable | None = None
    mean: Callable | None = None        # mean(values, inputs): what reduction "mean" gives (default values.mean())
    known: str = ""                     # a known divergence: the case is a strict xfail with this reason
    no_grads: str = ""                  # why the gradients are not compared (the values are)
    grads_not_nan: str = ""             # why the gradients are only checked for NaN where PyTorch has none
    finite_grads: str = ""              # why gradients are compared only where the reference's loss is finite


# renormalised over the k: log p = logp - logsumexp(logp, k) at two log-probabilities of -1.4e154 loses
# logsumexp's log 2 beside 1.4e154 (PyTorch's log_softmax subtracts the max first), so p = 1 twice; and the
# log-ratio is one reassociated sum, as LOG_RATIO below
LOG_SOFTMAX = "x - logsumexp(x) rounds away what the max-shifted log-softmax keeps at huge log-probabilities"
# a token whose loss is inf (a ratio exp(logp - old_logp) of inf with A < 0, or a KL of exp(1.4e154)): its
# gradient is inf times a softmax, where PyTorch gives +-inf or NaN by whether that softmax underflowed and lossdsl
# NaN throughout; neither is a gradient to train with
INFINITE_TOKEN = "the gradient of a token whose loss is infinite is inf * 0 in places"
P64 = {np.float32: 2e-5, np.float64: 1e-8}   # PyTorch's BCE floors p(1 - p) at 1e-12 held in float32
# the gradient 4*p*sum(p*y)/D^2 - 2*y/D, D = sum(p^2) + sum(y^2) + smooth: where D overflows, the kernel
# (fastmath "reassoc") forms 4*p*sum(p*y) (inf at p = max) before dividing by D^2 (inf): NaN where PyTorch's
# (4*sum(p*y)/D^2)*p is 0
DICE = "a reordered product overflows where sum(p^2) does"
# alignments whose log-likelihoods (about 1e154) differ by log 2 tie after rounding: each implementation's
# posteriors there are its own rounding of the forward-backward sums
CTC = "posteriors of alignments tied by rounding"
# each class's log-ratio log p_t - log p_s is one reassociated sum t - s + lse_s - lse_t in the kernel: at logits of
# max, terms of 2e19 cancel against max (0 where PyTorch's difference of two log_softmaxes keeps 2e19); at
# ordinary logits the same sum costs float32 accuracy (see specs/forward_kl.loss)
LOG_RATIO = "log-ratio cancels at logits of max"

CASES = [
    Case("l1", "l1", _pairs, lambda p, t: F.l1_loss(p, t, reduction="none")),
    Case("mse", "mse", _pairs, lambda p, t: F.mse_loss(p, t, reduction="none")),
    # MXNet L2Loss: square, times weight/2; its autograd's 2*(p - t) overflows where lossdsl's p - t does not
    Case("l2", "l2", _pairs, lambda p, t: (p - t) ** 2 / 2, overflows=True),
    Case("smooth_l1", "smooth_l1", _pairs, lambda p, t: F.smooth_l1_loss(p, t, reduction="none", beta=1.0)),
    Case("huber", "huber", _pairs, lambda p, t: F.huber_loss(p, t, reduction="none", delta=1.0)),
    Case("log_cosh", "log_cosh", _pairs, _log_cosh),
    Case("quantile", "quantile", _pairs, _quantile(0.5)),
    Case("quantile-q0", "quantile", _pairs, _quantile(0.0), params={"q": 0.0}),
    Case("quantile-q1", "quantile", _pairs, _quantile(1.0), params={"q": 1.0}),
    # probabilities: their extremes are the domain's ends
    Case("bce", "bce",
         lambda dt: _grid(np.asarray([0, 1e-45, 1e-12, 0.5, 1 - 1e-7, 1], dt), np.asarray([0, 0.5, 1], dt)),
         lambda p, y: F.binary_cross_entropy(p, y, reduction="none"), rtol=P64),
    Case("bce_with_logits", "bce_with_logits", _against([0, 0.5, 1]),
         lambda x, y: F.binary_cross_entropy_with_logits(x, y, reduction="none")),
    Case("bce_with_logits-pos_weight0", "bce_with_logits", _against([0, 0.5, 1], [0]),
         lambda x, y, w: F.binary_cross_entropy_with_logits(x, y, pos_weight=w, reduction="none")),
    Case("focal", "focal", lambda dt: _grid(np.asarray([0, 1e-45, 0.5, 1 - 1e-7, 1], dt), np.asarray([0, 1], dt)),
         _focal, rtol=P64),
    Case("sigmoid_focal", "sigmoid_focal", _against([0, 0.5, 1]), _sigmoid_focal),
    Case("hinge", "hinge", _against([-1, 1]), lambda x, y: F.relu(1 - x * y)),           # MXNet HingeLoss
    Case("squared_hinge", "squared_hinge", _against([-1, 1]), lambda x, y: F.relu(1 - x * y) ** 2),
    Case("logistic", "logistic", _against([-1, 1]), _soft_margin),
    Case("soft_margin", "soft_margin", _against([-1, 1]), _soft_margin),
    Case("hinge_embedding", "hinge_embedding", _against([-1, 1]),
         lambda x, y: F.hinge_embedding_loss(x, y, margin=1.0, reduction="none")),
    Case("poisson_nll", "poisson_nll",
         lambda dt: _grid(_extremes(dt), np.asarray([0, 1, 2.5, BIG[dt], _top(dt)], dt)),
         lambda x, t: F.poisson_nll_loss(x, t, log_input=True, full=False, reduction="none")),
    # d/dinput: PyTorch's autograd of (input - target)**2 forms 2*(input - target), which overflows where
    # lossdsl's (input - target)/var does not
    Case("gaussian_nll", "gaussian_nll",
         lambda dt: _grid(_extremes(dt), _extremes(dt), np.asarray([0, 1e-7, 1, BIG[dt], _top(dt)], dt)),
         lambda x, t, v: F.gaussian_nll_loss(x, t, v, full=False, eps=1e-6, reduction="none"), wrt=(0, 2),
         overflows=True),
    Case("margin_ranking", "margin_ranking", lambda dt: _grid(_extremes(dt), _extremes(dt), np.asarray([-1, 1], dt)),
         lambda a, b, y: F.margin_ranking_loss(a, b, y, margin=0.0, reduction="none"), wrt=(0, 1)),
    Case("tweedie", "tweedie", _against([0, 1, 1e30]), _tweedie),
    Case("kl_div", "kl_div", _against([0, 1e-30, 0.5, 1]), lambda x, t: F.kl_div(x, t, reduction="none")),
    # over an axis: class axis 1 of (N, C), feature axis last
    Case("cross_entropy", "cross_entropy", _each_label(_logit_rows), _ce(), labels=(1,)),
    # PyTorch sums log_softmax over the classes (-max - max = -inf) where lossdsl's lse - mean(logits) is finite
    Case("cross_entropy-smoothing", "cross_entropy", _each_label(_logit_rows), _ce(label_smoothing=0.1),
         params={"label_smoothing": 0.1}, labels=(1,), overflows=True),
    # label_smoothing = 1 drops the label term exactly (PyTorch: 0 * inf = NaN where it overflows); float32
    # means in PyTorch overflow, and lossdsl's value kernel (reassociated) forms lse*C where value_and_grad's
    # does not
    Case("cross_entropy-smoothing1", "cross_entropy", _each_label(_logit_rows), _uniform_target_ce,
         params={"label_smoothing": 1.0}, labels=(1,), overflows=True),
    # z_loss > 0: inf where lse^2 overflows, as PyTorch; its gradient's 2*z*lse is finite in lossdsl
    Case("cross_entropy-z_loss", "cross_entropy", _each_label(_logit_rows), _ce_z_loss(1e-4),
         params={"z_loss": 1e-4}, labels=(1,), overflows=True),
    # PyTorch's -sum(target*log_softmax) forms -max - max = -inf, lossdsl's lse*sum(t) - sum(t*logits) does not
    Case("cross_entropy_probs", "cross_entropy_probs", _each_target(_logit_rows, PROBABILITIES),
         lambda x, t: F.cross_entropy(x, t, reduction="none"), overflows=True),
    Case("cross_entropy_probs-smoothing1", "cross_entropy_probs", _each_target(_logit_rows, PROBABILITIES),
         _uniform_target_ce, params={"label_smoothing": 1.0}, overflows=True),
    Case("nll", "nll", _each_label(_log_prob_rows), lambda x, y: F.nll_loss(x, y, reduction="none"), labels=(1,)),
    Case("nll_probs", "nll_probs", _each_target(_log_prob_rows, PROBABILITIES), lambda x, t: -(t * x).sum(1)),
    Case("gluon_kl_div", "gluon_kl_div", _each_target(_log_prob_rows, PROBABILITIES), _gluon_kl_div),
    Case("poly1_ce", "poly1_ce", _each_label(_logit_rows), _poly1, labels=(1,)),
    Case("softmax_focal", "softmax_focal", _each_label(_logit_rows), _softmax_focal, labels=(1,)),
    Case("softmax_focal-alpha0", "softmax_focal", _each_label(_logit_rows), lambda x, y: 0.0 * x[:, 0],
         params={"alpha": 0.0}, labels=(1,)),
    # these three: PyTorch sums the class terms in float32 (max + max = inf), lossdsl in float64
    Case("multi_margin", "multi_margin", _each_label(_logit_rows),
         lambda x, y: F.multi_margin_loss(x, y, reduction="none"), labels=(1,), overflows=True),
    Case("multilabel_margin", "multilabel_margin",
         _each_target(_logit_rows, [[0, -1, -1], [1, 2, -1], [-1, 0, 1], [2, 0, 1]]),
         lambda x, t: F.multilabel_margin_loss(x, t, reduction="none"), labels=(1,), overflows=True),
    Case("multilabel_soft_margin", "multilabel_soft_margin", _each_target(_logit_rows, MULTI_HOT),
         lambda x, y: F.multilabel_soft_margin_loss(x, y, reduction="none"), overflows=True),
    Case("triplet", "triplet", _triplets, lambda a, p, n: F.triplet_margin_loss(a, p, n, reduction="none"),
         wrt=(0, 1, 2)),
    Case("triplet_squared", "triplet_squared", _triplets,            # MXNet TripletLoss
         lambda a, p, n: F.relu(((p - a) ** 2 - (n - a) ** 2).sum(-1) + 1.0), wrt=(0, 1, 2)),
    Case("cosine_embedding", "cosine_embedding", _signed_pairs,
         lambda a, b, y: F.cosine_embedding_loss(a, b, y, reduction="none"), wrt=(0, 1)),
    Case("cosine_similarity", "cosine_similarity", _vector_pairs,
         lambda a, b: -F.cosine_similarity(a, b, dim=-1, eps=1e-6),
         known="sum(pred^2) overflows (inf/inf = NaN) where PyTorch divides each input by its norm first "
               "(then x/inf = 0, a finite but wrong 0)"),
    # distillation: a student's softmax against a teacher's, extreme logits against extreme logits
    Case("softmax_entropy", "softmax_entropy", lambda dt: (_logit_rows(dt),), _softmax_entropy),
    Case("forward_kl", "forward_kl", _vector_pairs, _forward_kl, known=LOG_RATIO),
    Case("reverse_kl", "reverse_kl", _vector_pairs, _reverse_kl, known=LOG_RATIO),
    Case("generalized_jsd", "generalized_jsd", _vector_pairs, _jsd,
         no_grads="PyTorch's gradient is NaN in 124 of the 144 pairs; lossdsl's in 4 where PyTorch's is 0 (a teacher "
                  "with +max and -max, whose log-softmax overflows to -inf)"),
    Case("total_variation", "total_variation", _vector_pairs, _tvd),
    Case("cosine_distill", "cosine_distill", _vector_pairs, _cosine_distill,
         known="SymPy writes a probability squared as exp(2*(x - lse)), which overflows at logits of max "
               "(2*max = inf, inf - inf = NaN): the norm is floored at eps, 1 - cos about -1e8"),
    Case("distill_soft", "distill_soft", _vector_pairs, _forward_kl),
    Case("distill", "distill", _labelled_pairs, _distill, labels=(2,)),
    # top-k distillation: a teacher's top-2 (padded or not), extreme logits against huge negative log-probabilities
    *(Case(f"topk_kl-{tail}", "topk_kl", _top_k, lambda s, i, p, tail=tail: topk_rows(torch, s, i, p, tail=tail),
           params={"tail": tail}, labels=(1,), known=LOG_SOFTMAX if tail == "renormalize" else "")
      for tail in ("renormalize", "bucket", "drop")),
    Case("multilabel_soft_margin_indices", "multilabel_soft_margin_indices", lambda dt: _top_k(dt)[:2],
         lambda x, i: F.multilabel_soft_margin_loss(x, _multi_hot(i, x), reduction="none"), labels=(1,), overflows=True,
         known="sum(softplus(x), c) - sum(x[labels], k) cancels a listed class's huge logit (1.4e154/3 - 1.4e154/3) "
               "and loses the row's other terms, where PyTorch's softplus(-x) per class keeps them"),
    Case("topk_distill", "topk_distill", _labelled_top_k, lambda s, i, p, y: distill_rows(torch, s, i, p, y),
         labels=(1, 3), known=LOG_SOFTMAX),                 # its default tail is "renormalize"
    # GRPO: extreme logits, old log-probabilities and advantages; with the KL to a reference at log-probability 0
    Case("grpo", "grpo", _policy_tokens, _grpo(), labels=(1,), overflows=True, finite_grads=INFINITE_TOKEN),
    Case("grpo-kl", "grpo", _policy_tokens, _grpo(beta=0.04), params={"beta": 0.04}, labels=(1,), overflows=True,
         finite_grads=INFINITE_TOKEN),
    # DPO: sequence log-probabilities at the extremes (a margin of inf - inf is NaN in both)
    Case("dpo", "dpo", lambda dt: _grid(*(_extremes(dt),) * 2), _dpo(), wrt=(0, 1), overflows=True),
    Case("dpo-hinge", "dpo", lambda dt: _grid(*(_extremes(dt),) * 2), _dpo("hinge"), params={"loss_type": "hinge"},
         wrt=(0, 1), overflows=True),
    Case("simpo", "simpo", lambda dt: _grid(*(_extremes(dt),) * 2),
         lambda c, r: -F.logsigmoid(2.0 * (c - r) - 0.5), wrt=(0, 1), overflows=True),
    Case("orpo", "orpo", lambda dt: _grid(*(_log_probabilities(dt),) * 2), _orpo, wrt=(0, 1), overflows=True),
    Case("cpo", "cpo", lambda dt: _grid(*(_extremes(dt),) * 2), lambda c, r: -F.logsigmoid(0.1 * (c - r)),
         wrt=(0, 1), overflows=True),
    Case("kto", "kto", lambda dt: _grid(_extremes(dt), np.array([0.0, 1.0], dt), _extremes(dt)), _kto, overflows=True),
    Case("gspo", "gspo", lambda dt: _grid(*(_log_probabilities(dt),) * 2, _extremes(dt)), _gspo, overflows=True),
    Case("dice", "dice", _overlaps, _dice, call={"axis": -1}, no_grads=DICE),
    Case("multiclass_dice", "multiclass_dice", _overlaps, lambda p, y: _dice(p, y, dim=0), batch_axis=1, no_grads=DICE),
    Case("tversky", "tversky", _overlaps, _tversky()),
    Case("tversky-alpha0", "tversky", _overlaps, _tversky(alpha=0.0), params={"alpha": 0.0}),
    Case("tversky-beta0", "tversky", _overlaps, _tversky(beta=0.0), params={"beta": 0.0}),
    Case("rmse", "rmse", _vector_pairs, lambda p, t: ((p - t) ** 2).mean(-1).sqrt(), call={"axis": -1}),
    # sequences; PyTorch's ctc_loss backward returns exp(log_probs) - posterior, lossdsl the true -posterior;
    # a float32 sequence's loss beyond finfo.max is inf, but lossdsl's mean sums the losses in float64
    Case("ctc", "ctc", _sequences, _ctc, labels=(1, 2, 3), batch_axis=1,
         convert=lambda tensors, grads: [grads[0] - tensors[0].exp()],
         mean=lambda values, inputs: (values / np.maximum(inputs[3], 1)).mean(), grads_not_nan=CTC, overflows=True),
    Case("ctc_mxnet", "ctc_mxnet", _mxnet_sequences, _ctc_mxnet, labels=(1,), grads_not_nan=CTC, overflows=True),
]


def _case_param(case):
    marks = [pytest.mark.xfail(strict=True, reason=case.known)] if case.known else []
    return pytest.param(case, id=case.id, marks=marks)


def _tensors(case, inputs):
    return [torch.as_tensor(a, dtype=torch.int64) if i in case.labels else torch.tensor(a, requires_grad=i in case.wrt)
            for i, a in enumerate(inputs)]


def _pytorch(case, inputs):
    """The reference's loss of each element or row, and the gradients of their sum."""
    tensors = _tensors(case, inputs)
    value = case.reference(*tensors)
    value.sum().backward()
    grads = [tensors[i].grad for i in case.wrt]
    if case.convert is not None:
        grads = case.convert([t.detach() for t in tensors], grads)
    return value.detach().numpy(), [g.numpy() for g in grads]


def _agree(got, expected, dtype, what, case, kept=None):
    """No NaN where the reference has none, and equal to it there (inf where it is inf)."""
    got, expected = np.asarray(got, np.float64), np.asarray(expected, np.float64)
    assert got.shape == expected.shape, what
    kept = ~np.isnan(expected) & (True if kept is None else kept)
    nan = np.isnan(got) & kept
    assert not nan.any(), f"{what}: NaN where PyTorch gives {expected[nan][:5]} (at {np.argwhere(nan)[:5].tolist()})"
    if case.overflows:  # +-inf on one side, finite on the other: the same sign
        spared = kept & (np.isinf(expected) != np.isinf(got)) & ~np.isnan(got)
        assert np.all(np.sign(got[spared]) == np.sign(expected[spared])), what
        kept &= ~spared
    np.testing.assert_allclose(got[kept], expected[kept], rtol=(case.rtol or RTOL)[dtype], atol=ATOL[dtype],
                               err_msg=what)


def _agree_mean(mean, expected_mean, values, dtype, case):
    """The mean as `_agree` checks it. Where finite values overflow a float64 running sum (+max, ...,
    -max), the sum depends on the order of the additions (PyTorch's runs over +max first: inf; a
    vectorised one pairs +max with -max: finite), so there it is only held to no NaN (which inf - inf
    would give) and, if infinite, the running sum's sign."""
    values = np.asarray(values, np.float64).ravel()
    if np.isinf(expected_mean) and np.isfinite(values).all() and case.mean is None:
        assert not np.isnan(mean), f"{case.id}: mean is NaN"
        assert not np.isinf(mean) or np.sign(mean) == np.sign(expected_mean), f"{case.id}: mean {mean}"
        return
    _agree(mean, np.float64(expected_mean).astype(dtype), dtype, f"{case.id}: mean", case)


def _rows_kept(expected, grad_shape, batch_axis, finite=False):
    """Where the reference's loss is not NaN (with `finite`, finite), broadcast over a gradient's axes."""
    ok = (np.isfinite if finite else lambda v: ~np.isnan(v))(np.asarray(expected, np.float64))
    if ok.shape == grad_shape:
        return ok
    shape = [1] * len(grad_shape)
    shape[batch_axis] = ok.size
    return ok.reshape(shape)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("case", [_case_param(c) for c in CASES])
def test_largest_finite_inputs_agree_with_pytorch(load_loss, case, dtype):
    pytest.importorskip("torch")
    inputs = case.build(dtype)
    loss = load_loss(case.spec, **case.params)
    expected, expected_grads = _pytorch(case, inputs)
    with np.errstate(all="ignore"):
        values = loss(*inputs, reduction="none", **case.call)
        mean = loss(*inputs, **case.call)
        value, grads = loss.value_and_grad(*inputs, reduction="none", **case.call)
        expected_mean = (case.mean or (lambda v, _: v.mean()))(expected.astype(np.float64), inputs)
    grads = grads if isinstance(grads, tuple) else (grads,)
    assert np.asarray(values).dtype == dtype and all(g.dtype == dtype for g in grads)
    _agree(values, expected, dtype, f"{case.id}: values", case)
    _agree(value, expected, dtype, f"{case.id}: value_and_grad's values", case)
    _agree_mean(mean, expected_mean, expected, dtype, case)
    for i, got, wanted in zip(case.wrt, grads, [] if case.no_grads else expected_grads):
        kept = _rows_kept(expected, wanted.shape, case.batch_axis, bool(case.finite_grads))
        if case.grads_not_nan:
            assert not np.isnan(got[kept & ~np.isnan(wanted)]).any(), f"{case.id}: gradient of input {i}"
        else:
            _agree(got, wanted, dtype, f"{case.id}: gradient of input {i}", case, kept=kept)


def test_every_catalogue_loss_is_tried_at_the_extremes():
    heads = {"linear_cross_entropy", "linear_cross_entropy_probs"}   # test_linear_heads_at_the_largest_finite_logits
    heads |= {"linear_distill", "linear_distill_soft"}   # the kernels of distill and distill_soft, tried above
    assert {c.spec for c in CASES} | heads == set(lossdsl.catalogue())


# ---------------------------------------------------------------------------
# the regression, and the class-block kernels of linear heads
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype, big", [(np.float32, 2e19), (np.float32, np.finfo(np.float32).max),
                                        (np.float64, 1.4e154), (np.float64, np.finfo(np.float64).max)])
def test_cross_entropy_with_the_default_z_loss_stays_finite_at_huge_logits(load_loss, dtype, big):
    # the issue: load("cross_entropy")(np.array([[2e19, 0, 0]], np.float32), np.array([0])) was NaN
    # (z_loss*lse^2 = 0 * inf); PyTorch's F.cross_entropy gives 0.0, and 2e19 where the label is class 1
    ce = load_loss("cross_entropy")
    logits, y = np.array([[big, 0, 0], [big, 0, 0]], dtype), np.array([0, 1])
    assert ce(logits[:1], y[:1]) == 0.0
    value, grad = ce.value_and_grad(logits, y, reduction="none")
    np.testing.assert_array_equal(value, np.array([0.0, big], dtype))
    np.testing.assert_array_equal(grad, np.array([[0, 0, 0], [1, -1, 0]], dtype))


HEAD_CHUNKS = [{}, {"chunk_rows": 5}, {"chunk_classes": 1}, {"chunk_rows": 7, "chunk_classes": 2}]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("chunks", HEAD_CHUNKS, ids=["whole", "rows", "one-class-blocks", "blocks"])
@pytest.mark.parametrize("name, params, reference", [
    ("linear_cross_entropy", {}, None),
    ("linear_cross_entropy_probs", {}, None),
    ("cross_entropy", {}, _ce()),                        # loss.with_linear(): z_loss = 0 a runtime parameter
    ("cross_entropy", {"z_loss": 1e-4}, _ce_z_loss(1e-4)),
], ids=["linear_cross_entropy", "linear_cross_entropy_probs", "cross_entropy", "cross_entropy-z_loss"])
def test_linear_heads_at_the_largest_finite_logits(load_loss, dtype, chunks, name, params, reference):
    """A head's logits, input @ eye(3), are the extreme rows exactly: the value and the input's gradient
    equal PyTorch's on those logits. (The weight's gradient, a BLAS product of the logits' gradient with
    the input, sums products of +-max in an order of its own: it is not compared.)"""
    pytest.importorskip("torch")
    probs = name.endswith("_probs")
    x, target = (_each_target(_logit_rows, PROBABILITIES) if probs else _each_label(_logit_rows))(dtype)
    weight = np.eye(3, dtype=dtype)
    loss = load_loss(name, **params)
    head = loss.with_linear() if name == "cross_entropy" else loss
    with np.errstate(all="ignore"):
        value, (d_input, _) = head.value_and_grad(x, weight, target, reduction="none", **chunks)
    tensors = [torch.tensor(x, requires_grad=True), torch.tensor(weight, requires_grad=True),
               torch.as_tensor(target) if probs else torch.as_tensor(target, dtype=torch.int64)]
    if reference is None:
        expected = F.linear_cross_entropy(tensors[0], tensors[1], tensors[2], reduction="none")
    else:
        expected = reference(tensors[0] @ tensors[1].T, tensors[2])
    expected.sum().backward()
    case = Case(name, name, None, None, overflows=True)   # as cross_entropy(_probs)'s cases above
    expected = expected.detach().numpy()
    _agree(value, expected, dtype, f"{name} {chunks}: values", case)
    _agree(d_input, tensors[0].grad.numpy(), dtype, f"{name} {chunks}: input gradient", case,
           kept=_rows_kept(expected, d_input.shape, 0))
