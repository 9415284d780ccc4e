"""Losses over an axis against PyTorch in float64 (PyTorch's function, or for a loss PyTorch lacks its paper's
formula written in torch ops: softmax_focal, poly1_ce, nll_probs): lossdsl's values for reductions
none / sum / mean (and batchmean for kl_div) and its gradients against autograd,
and the NumPy references of tests/axis_references.py against the same PyTorch
results, so that a reference that drifted from PyTorch shows up here.

PyTorch's layout is lossdsl's default: the class axis is axis 1 of (N, C, d1, ...),
the feature axis of triplet / cosine_embedding the last of (N, D).
"""
import zlib

import numpy as np
import pytest

from axis_references import AXIS_REFERENCES, Geometry

torch = pytest.importorskip("torch")
F = torch.nn.functional

RTOL, ATOL = 1e-10, 1e-12
REDUCTIONS = ("none", "sum", "mean")


def _ce(logits, y, weight, reduction, ignore_index=-100, label_smoothing=0.0):
    return F.cross_entropy(logits, y, weight=weight, ignore_index=int(ignore_index),
                           label_smoothing=label_smoothing, reduction=reduction)


def _ce_probs(logits, target, weight, reduction, label_smoothing=0.0):
    return F.cross_entropy(logits, target, weight=weight, label_smoothing=label_smoothing, reduction=reduction)


def _nll(logp, y, weight, reduction, ignore_index=-100):
    return F.nll_loss(logp, y, weight=weight, ignore_index=int(ignore_index), reduction=reduction)


def _reduced(per_row, divisor, reduction):
    return per_row if reduction == "none" else per_row.sum() / (divisor if reduction == "mean" else 1)


def _label_terms(logits, y, weight, ignore_index):
    """Rows kept, each row's log-probability of its label and the label's class weight, in torch ops."""
    keep = y != int(ignore_index)
    label = torch.where(keep, y, torch.zeros_like(y))
    log_py = torch.log_softmax(logits, 1).gather(1, label.unsqueeze(1)).squeeze(1)
    return keep, log_py, (torch.ones_like(log_py) if weight is None else weight[label])


def _softmax_focal(logits, y, weight, reduction, alpha=0.25, gamma=2.0, ignore_index=-100):
    # Lin et al. (2017) on softmax probabilities: -alpha w[y] (1 - p_y)^gamma log p_y; "mean" over the rows kept
    keep, log_py, w = _label_terms(logits, y, weight, ignore_index)
    per_row = torch.where(keep, -alpha * w * (-torch.expm1(log_py)) ** gamma * log_py, torch.zeros_like(log_py))
    return _reduced(per_row, keep.sum(), reduction)


def _poly1_ce(logits, y, weight, reduction, epsilon=1.0, ignore_index=-100, label_smoothing=0.0):
    # PolyLoss: torch's cross_entropy + epsilon w[y] (1 - p_t), p_t = (1 - ls) p_y + ls / C; "mean" divides
    # by the class weights of the rows kept, as cross_entropy's
    keep, log_py, w = _label_terms(logits, y, weight, ignore_index)
    ce = F.cross_entropy(logits, y, weight=weight, ignore_index=int(ignore_index), label_smoothing=label_smoothing,
                         reduction="none")
    p_t = (1 - label_smoothing) * torch.exp(log_py) + label_smoothing / logits.shape[1]
    per_row = ce + torch.where(keep, epsilon * w * (1 - p_t), torch.zeros_like(log_py))
    return _reduced(per_row, (w * keep).sum(), reduction)


def _nll_probs(logp, target, weight, reduction):
    # MXNet's SoftmaxCrossEntropyLoss(sparse_label=False, from_logits=True) per sample: -sum_c w[c] t[c] logp[c]
    w = torch.ones(logp.shape[1], dtype=logp.dtype) if weight is None else weight
    per_row = -(w.reshape(-1, *[1] * (logp.dim() - 2)) * target * logp).sum(1)
    return _reduced(per_row, per_row.numel(), reduction)


def _kl_div(x, target, weight, reduction, log_target=False):
    return F.kl_div(x, target, reduction=reduction, log_target=log_target)


def _multi_margin(x, y, weight, reduction, p=1, margin=1.0):
    return F.multi_margin_loss(x, y, p=int(p), margin=margin, weight=weight, reduction=reduction)


def _multilabel_soft_margin(x, y, weight, reduction):
    return F.multilabel_soft_margin_loss(x, y, weight=weight, reduction=reduction)


def _triplet(a, p, n, weight, reduction, margin=1.0, p_norm=2.0, eps=1e-6, swap=False):
    return F.triplet_margin_loss(a, p, n, margin=margin, p=p_norm, eps=eps, swap=swap, reduction=reduction)


def _cosine_embedding(a, b, y, weight, reduction, margin=0.0, convention="torch"):
    assert convention == "torch"
    return F.cosine_embedding_loss(a, b, y, margin=margin, reduction=reduction)


# key in AXIS_REFERENCES -> (torch function, shapes in torch's layout, extra reductions)
TORCH = {
    "cross_entropy": (_ce, [(6, 4), (2, 3, 2, 3)], ()),
    "cross_entropy_probs": (_ce_probs, [(6, 4), (2, 3, 2, 3)], ()),
    "nll": (_nll, [(6, 4), (3, 4, 5)], ()),
    "nll_probs": (_nll_probs, [(6, 4), (2, 3, 4)], ()),
    "poly1_ce": (_poly1_ce, [(6, 4), (2, 3, 2, 3)], ()),
    "softmax_focal": (_softmax_focal, [(6, 4), (2, 3, 2, 3)], ()),
    "kl_div": (_kl_div, [(6, 4)], ("batchmean",)),
    "kl_div_log_target": (_kl_div, [(6, 4), (2, 3, 4)], ("batchmean",)),
    "multi_margin": (_multi_margin, [(6, 4)], ()),
    "multilabel_soft_margin": (_multilabel_soft_margin, [(6, 4)], ()),
    "triplet": (_triplet, [(6, 4)], ()),
    "triplet_swap": (_triplet, [(6, 4)], ()),
    "cosine_embedding": (_cosine_embedding, [(6, 4)], ()),
}


def _cases():
    """(key, numeric params, shape, with a class weight) for every torch comparison."""
    out = []
    for key, (_, shapes, _) in TORCH.items():
        ref = AXIS_REFERENCES[key]
        for i, params in enumerate(ref.params):
            for shape in shapes:
                for weighted in ([False, True] if "class_weight" in ref.inputs else [False]):
                    out.append(pytest.param(key, params, shape, weighted,
                                            id=f"{key}-{i}-{'x'.join(map(str, shape))}{'-weighted' * weighted}"))
    return out


def _inputs(key, params, shape):
    """lossdsl inputs in torch's layout, the same axis last for the reference, and a class weight."""
    ref = AXIS_REFERENCES[key]
    geometry = Geometry(shape, None) if ref.elementwise else Geometry.of(shape, None, ref.default_axis)
    rng = np.random.default_rng(zlib.crc32(repr((key, params, shape)).encode()))
    last = list(ref.sample(rng, geometry.sample_rows, geometry.length, {**(ref.static or {}), **params}))
    if key.startswith("cosine_embedding"):
        last[2] = np.where(last[2] == 0, 1.0, last[2])     # torch documents labels 1 and -1 only
    call = [geometry.to_call(a) if name in ref.along else a for name, a in zip(ref.inputs, last)]
    class_weight = rng.uniform(0.2, 2.0, geometry.length) if "class_weight" in ref.inputs else None
    return ref, geometry, call, last, class_weight


def _torch_run(key, params, call, class_weight, reduction):
    """torch's value and the autograd gradients (of its sum) for each wrt input."""
    ref = AXIS_REFERENCES[key]
    fn = TORCH[key][0]
    tensors = []
    for name, a in zip(ref.inputs, call):
        t = torch.tensor(a) if a.dtype.kind != "f" else torch.tensor(a, dtype=torch.float64,
                                                                      requires_grad=name in ref.wrt)
        tensors.append(t)
    weight = None if class_weight is None else torch.tensor(class_weight, dtype=torch.float64)
    kwargs = {**(ref.static or {}), **params}
    if fn is _triplet:
        kwargs = {("p_norm" if k == "p" else k): v for k, v in kwargs.items()}
    value = fn(*tensors, weight, reduction, **kwargs)
    value.sum().backward()
    grads = [t.grad.numpy() for name, t in zip(ref.inputs, tensors) if name in ref.wrt]
    return value.detach().numpy(), grads


def _tuple(grads):
    return grads if isinstance(grads, tuple) else (grads,)


@pytest.mark.filterwarnings("ignore:reduction. 'mean' divides the total loss:UserWarning")   # kl_div's notice
@pytest.mark.parametrize("key, params, shape, weighted", _cases())
def test_lossdsl_and_reference_match_torch(load_loss, key, params, shape, weighted):
    ref, geometry, call, last, class_weight = _inputs(key, params, shape)
    class_weight = class_weight if weighted else None
    named = {} if class_weight is None else {"class_weight": class_weight}
    loss = load_loss(ref.name, **(ref.static or {}))
    loss = loss.with_params(**params) if params else loss
    all_params = {**(ref.static or {}), **params}

    # the reference, per row, against torch's reduction="none"
    t_value, t_grads = _torch_run(key, params, call, class_weight, "none")
    np.testing.assert_allclose(ref.value(*last, **named, **all_params), t_value, rtol=RTOL, atol=ATOL)
    for name, g, tg in zip(ref.wrt, ref.grads(*last, **named, **all_params), t_grads):
        np.testing.assert_allclose(geometry.to_call(g), tg, rtol=RTOL, atol=ATOL, err_msg=f"reference d/d{name}")

    # lossdsl against torch, every reduction both have
    for reduction in REDUCTIONS + TORCH[key][2]:
        t_value, t_grads = _torch_run(key, params, call, class_weight, reduction)
        value, grads = loss.value_and_grad(*call, reduction=reduction, **named)
        np.testing.assert_allclose(value, t_value, rtol=RTOL, atol=ATOL, err_msg=f"{reduction} value")
        for name, g, tg in zip(ref.wrt, _tuple(grads), t_grads):
            np.testing.assert_allclose(g, tg, rtol=RTOL, atol=ATOL, err_msg=f"{reduction} d/d{name}")


@pytest.mark.parametrize("key", ["cross_entropy", "nll"])
def test_every_row_ignored_matches_torch(load_loss, key):
    # torch: mean over no kept rows is nan, and its gradient is 0
    x = np.zeros((3, 4))
    y = np.full(3, -100)
    t_value, (t_grad,) = _torch_run(key, {}, [x, y], None, "mean")
    value, grad = load_loss(key).value_and_grad(x, y, reduction="mean")
    assert np.isnan(t_value) and np.isnan(value)
    np.testing.assert_array_equal(grad, t_grad)


def test_multi_margin_weight_multiplies_after_the_power(load_loss):
    # torch's docs write max(0, w[y] (margin - x[y] + x[i]))^p; its kernels (and lossdsl's spec)
    # multiply by w[y] after the power. Pin which one torch computes, and that lossdsl agrees.
    x = np.array([[0.0, 0.5, -0.2]])
    y = np.array([0])
    w = np.array([3.0, 1.0, 1.0])
    t_value, _ = _torch_run("multi_margin", {"p": 2}, [x, y], w, "none")
    after = 3.0 * (1.5 ** 2 + 0.8 ** 2) / 3
    np.testing.assert_allclose(t_value, [after], rtol=1e-12)
    value = load_loss("multi_margin").with_params(p=2)(x, y, reduction="none", class_weight=w)
    np.testing.assert_allclose(value, [after], rtol=1e-12)
