"""Losses over a list axis (`ids[k]`): top-k distillation against a teacher's cached k classes and
log-probabilities (specs/topk_kl.loss, specs/topk_distill.loss), on logits and through a linear head,
the list axis's rules and refusals, and the PyTorch adapter. Every reference is written here with
PyTorch (log_softmax, gather, cross_entropy and autograd on materialised logits), never with lossdsl."""
import numpy as np
import pytest

import lossdsl
from lossdsl.errors import LossInputError, LossLabelError, SpecNameError, SpecTypeError

ROWS, CLASSES, K, WIDTH = 23, 17, 5, 6
TAILS = ("renormalize", "bucket", "drop")
# the catalogue losses over a list axis, which this file compares with PyTorch
LIST_AXIS = ("topk_kl", "topk_distill", "multilabel_soft_margin_indices")
TOLERANCE = {np.float64: 1e-10, np.float32: 3e-5}


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


# --------------------------------------------------------------------------------------------------
# PyTorch references


def topk_rows(torch, student, ids, logp, temperature=1.0, tail="renormalize", scale_by_t2=False):
    """Each row's top-k KL as specs/topk_kl.loss's docstring defines it; class axis last, ids < 0 padding."""
    F = torch.nn.functional
    keep = ids >= 0
    index = ids.clamp(min=0)
    zeros = torch.zeros_like(logp)
    if tail == "renormalize":
        # padded positions at -inf (weight 0); a row padded throughout at 0s instead (finite, masked below)
        floor = torch.where(keep.any(-1, keepdim=True), torch.tensor(-torch.inf, dtype=logp.dtype), zeros)
        log_q = F.log_softmax(torch.where(keep, torch.gather(student / temperature, -1, index), floor), dim=-1)
        log_p = F.log_softmax(torch.where(keep, logp, floor), dim=-1)
    else:
        log_q = torch.gather(F.log_softmax(student / temperature, dim=-1), -1, index)
        log_p = logp
    p = torch.where(keep, log_p.exp(), zeros)
    ratio = torch.where(keep, log_p - log_q, zeros)  # masked first: its gradient is then 0, not 0 * inf
    kl = torch.where(p > 0, p * ratio, zeros).sum(-1)
    if tail == "bucket":
        rest_p = 1 - p.sum(-1)
        rest_q = 1 - torch.where(keep, log_q.exp(), zeros).sum(-1)
        safe_p = torch.where(rest_p > 0, rest_p, torch.ones_like(rest_p))
        kl = kl + torch.where(rest_p > 0, safe_p * (torch.log(safe_p) - torch.log(rest_q)), torch.zeros_like(kl))
    return kl * temperature ** 2 if scale_by_t2 else kl


def distill_rows(torch, student, ids, logp, target, weight_hard=0.5, weight_soft=0.5, ignore_index=-100, **soft):
    """topk_distill per row: weighted cross-entropy on the labels plus the top-k KL, 0 on ignored rows."""
    F = torch.nn.functional
    hard = F.cross_entropy(student, target, ignore_index=ignore_index, reduction="none")
    rows = weight_hard * hard + weight_soft * topk_rows(torch, student, ids, logp, **soft)
    return torch.where(target == ignore_index, torch.zeros_like(rows), rows)


# --------------------------------------------------------------------------------------------------
# inputs: the teacher's top-k of its own softmax, some positions padded, one row padded throughout


def _inputs(dtype, seed=0, rows=ROWS, k=K, temperature=1.0):
    rng = np.random.default_rng(seed)
    student = (rng.normal(size=(rows, CLASSES)) * 2).astype(dtype)
    teacher = rng.normal(size=(rows, CLASSES)) * 2
    log_probs = teacher / temperature - np.log(np.exp(teacher / temperature).sum(-1, keepdims=True))
    ids = np.argsort(-log_probs, axis=-1)[:, :k].copy()
    logp = np.take_along_axis(log_probs, ids, axis=-1).astype(dtype)
    ids[1, 3:] = -1          # padded at the end
    ids[4, :] = -7           # every position padded: the row adds 0 to the KL
    ids[6, 0] = -1           # padded at the start
    logp[6, 0] = 123.0       # what padding holds is never read
    target = rng.integers(0, CLASSES, size=rows)
    target[[2, 9]] = -100
    return student, ids, logp, target


def _torch_tensors(torch, student, ids, logp, target=None):
    tensors = [torch.tensor(student, requires_grad=True), torch.as_tensor(ids), torch.tensor(logp)]
    return tensors + ([torch.as_tensor(target)] if target is not None else [])


# --------------------------------------------------------------------------------------------------
# values and gradients on logits


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("tail", TAILS)
@pytest.mark.parametrize("temperature, scale_by_t2", [(1.0, False), (2.5, True)])
def test_topk_kl_matches_pytorch(load_loss, torch, dtype, tail, temperature, scale_by_t2):
    student, ids, logp, _ = _inputs(dtype, temperature=temperature)
    loss = load_loss("topk_kl", tail=tail, temperature=temperature, scale_by_t2=scale_by_t2)
    s, i, lp = _torch_tensors(torch, student.astype(np.float64), ids, logp.astype(np.float64))
    rows = topk_rows(torch, s, i, lp, temperature, tail, scale_by_t2)
    rows.mean().backward()
    value, grad = loss.value_and_grad(student, ids, logp)
    assert value.dtype == dtype and grad.dtype == dtype
    tol = TOLERANCE[dtype]
    np.testing.assert_allclose(value, rows.mean().item(), rtol=tol, atol=tol)
    np.testing.assert_allclose(grad, s.grad.numpy(), rtol=tol, atol=tol)
    np.testing.assert_allclose(loss(student, ids, logp, reduction="none"), rows.detach().numpy(), rtol=tol,
                               atol=tol)
    assert loss(student[4:5], ids[4:5], logp[4:5], reduction="sum") == 0.0  # every position padded


def _numpy_topk_rows(student, ids, logp, tail):
    """The three tail rules once more, with NumPy over each row's kept positions (no masking tricks)."""
    rows = []
    for s, i, lp in zip(student, ids, logp):
        kept = i >= 0
        s_k, lp_k = s[i[kept]], lp[kept]
        log_q = s_k - np.logaddexp.reduce(s_k if tail == "renormalize" else s)
        log_p = lp_k - np.logaddexp.reduce(lp_k) if tail == "renormalize" and kept.any() else lp_k
        p = np.exp(log_p)
        kl = float(np.sum(p * (log_p - log_q)))
        if tail == "bucket" and 1 - p.sum() > 0:
            rest_p, rest_q = 1 - p.sum(), 1 - np.exp(log_q).sum()
            kl += rest_p * (np.log(rest_p) - np.log(rest_q))
        rows.append(kl)
    return np.array(rows)


@pytest.mark.parametrize("tail", TAILS)
def test_topk_kl_matches_a_numpy_reference(load_loss, tail):
    student, ids, logp, _ = _inputs(np.float64, seed=10)
    got = load_loss("topk_kl", tail=tail)(student, ids, logp, reduction="none")
    np.testing.assert_allclose(got, _numpy_topk_rows(student, ids, logp, tail), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("tail", ["renormalize", "bucket"])
def test_topk_distill_matches_pytorch(load_loss, torch, dtype, tail):
    student, ids, logp, target = _inputs(dtype, seed=1)
    params = {"tail": tail, "temperature": 2.0, "weight_hard": 0.3, "weight_soft": 0.7}
    loss = load_loss("topk_distill", **params)
    s, i, lp, y = _torch_tensors(torch, student.astype(np.float64), ids, logp.astype(np.float64), target)
    rows = distill_rows(torch, s, i, lp, y, weight_hard=0.3, weight_soft=0.7, tail=tail, temperature=2.0)
    kept = int((target != -100).sum())
    (rows.sum() / kept).backward()  # "mean": over the rows kept, as cross_entropy
    value, grad = loss.value_and_grad(student, ids, logp, target)
    tol = TOLERANCE[dtype]
    np.testing.assert_allclose(value, rows.sum().item() / kept, rtol=tol, atol=tol)
    np.testing.assert_allclose(grad, s.grad.numpy(), rtol=tol, atol=tol)
    assert np.all(grad[[2, 9]] == 0)


def test_one_position_and_the_class_axis_first(load_loss, torch):
    """k = 1 (renormalised: the KL is 0 but for rounding, and so is its gradient), and inputs whose class
    axis is axis 0."""
    student, ids, logp, _ = _inputs(np.float64, k=1)
    loss = load_loss("topk_kl")
    value, grad = loss.value_and_grad(student, ids, logp, reduction="sum")
    assert abs(value) < 1e-14 and np.abs(grad).max() < 1e-14
    student, ids, logp, _ = _inputs(np.float64, seed=3)
    drop = load_loss("topk_kl", tail="drop")
    s, i, lp = _torch_tensors(torch, student, ids, logp)
    rows = topk_rows(torch, s, i, lp, tail="drop")
    rows.sum().backward()
    value, grad = drop.value_and_grad(student.T.copy(), ids.T.copy(), logp.T.copy(), axis=0, reduction="sum")
    np.testing.assert_allclose(value, rows.sum().item(), rtol=1e-12)
    np.testing.assert_allclose(grad, s.grad.numpy().T, rtol=1e-10, atol=1e-12)


def test_sample_weights_and_threads(load_loss, torch):
    """Many rows (the kernels' rows split over threads) with per-row weights, against PyTorch."""
    student, ids, logp, _ = _inputs(np.float64, seed=4, rows=3000)
    weights = np.random.default_rng(5).uniform(0, 2, size=3000)
    loss = load_loss("topk_kl", tail="bucket")
    s, i, lp = _torch_tensors(torch, student, ids, logp)
    (topk_rows(torch, s, i, lp, tail="bucket") * torch.tensor(weights)).sum().backward()
    value, grad = loss.value_and_grad(student, ids, logp, reduction="sum", sample_weight=weights)
    np.testing.assert_allclose(grad, s.grad.numpy(), rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------------------------------
# fused with a linear head: the student's logits never whole


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("chunks", [{}, {"chunk_rows": 4}, {"chunk_classes": 5}, {"chunk_rows": 7, "chunk_classes": 3}],
                         ids=["whole", "rows", "class-blocks", "blocks"])
def test_topk_distill_through_a_linear_head(load_loss, torch, dtype, chunks):
    student, ids, logp, target = _inputs(dtype, seed=6)
    rng = np.random.default_rng(7)
    x = rng.normal(size=(ROWS, WIDTH)).astype(dtype)
    weight = rng.normal(size=(CLASSES, WIDTH)).astype(dtype)
    bias = rng.normal(size=CLASSES).astype(dtype)
    head = load_loss("topk_distill", tail="bucket", temperature=1.5).with_linear()
    value, (d_x, d_weight, d_bias) = head.value_and_grad(x, weight, ids, logp, target, linear_bias=bias, **chunks)
    tx, tw, tb = (torch.tensor(a.astype(np.float64), requires_grad=True) for a in (x, weight, bias))
    logits = tx @ tw.T + tb
    rows = distill_rows(torch, logits, torch.as_tensor(ids), torch.tensor(logp.astype(np.float64)),
                        torch.as_tensor(target), tail="bucket", temperature=1.5)
    (rows.sum() / int((target != -100).sum())).backward()
    tol = 10 * TOLERANCE[dtype]
    np.testing.assert_allclose(value, (rows.sum() / int((target != -100).sum())).item(), rtol=tol, atol=tol)
    for got, wanted in ((d_x, tx), (d_weight, tw), (d_bias, tb)):
        np.testing.assert_allclose(got, wanted.grad.numpy(), rtol=tol, atol=tol)


def test_a_list_axis_label_out_of_range_in_class_blocks(load_loss):
    """In blocks of classes no kernel reads a label outside its block; the value kernel names the row."""
    _, ids, logp, _ = _inputs(np.float64)
    ids[5, 1] = CLASSES + 3
    x, weight = np.ones((ROWS, WIDTH)), np.ones((CLASSES, WIDTH))
    with pytest.raises(LossLabelError, match="at row \\(5,\\) is outside"):
        load_loss("topk_kl").with_linear()(x, weight, ids, logp, chunk_classes=4)


@pytest.mark.parametrize("tail", ["renormalize", "bucket"])
def test_classes_split_across_processes(load_loss, tail):
    """Three threads playing processes, each holding a slice of the classes (the teacher's ids and
    log-probabilities whole): the same loss on each, and each slice's gradient, as one process computes."""
    from test_sharding import sharded
    student, ids, logp, target = _inputs(np.float64, seed=11)
    loss = load_loss("topk_distill", tail=tail)
    expected, expected_grad = loss.value_and_grad(student, ids, logp, target, axis=-1)
    bounds = [0, 6, 7, CLASSES]
    for rank, (value, grad) in enumerate(sharded(loss, bounds, student, [ids, logp, target])):
        np.testing.assert_allclose(value, expected, rtol=1e-12)
        np.testing.assert_allclose(grad, expected_grad[:, bounds[rank]:bounds[rank + 1]], rtol=1e-10, atol=1e-13)


# --------------------------------------------------------------------------------------------------
# the same gather for targets given as lists of classes


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
def test_multilabel_targets_as_lists_of_classes(load_loss, torch, dtype):
    """multilabel_soft_margin_indices against PyTorch's MultiLabelSoftMarginLoss on the multi-hot targets
    the lists stand for (padded with -1, an empty list, class weights)."""
    rng = np.random.default_rng(12)
    x = (rng.normal(size=(ROWS, CLASSES)) * 3).astype(dtype)
    labels = np.stack([rng.permutation(CLASSES)[:K] for _ in range(ROWS)])
    labels[2, 1:] = -1
    labels[3, :] = -1
    weight = rng.uniform(0.5, 2.0, CLASSES)
    multi_hot = np.zeros((ROWS, CLASSES))
    for row, classes in enumerate(labels):
        multi_hot[row, classes[classes >= 0]] = 1.0
    value, grad = load_loss("multilabel_soft_margin_indices").value_and_grad(x, labels, weight.astype(dtype))
    t = torch.tensor(x.astype(np.float64), requires_grad=True)
    expected = torch.nn.functional.multilabel_soft_margin_loss(t, torch.tensor(multi_hot), weight=torch.tensor(weight))
    expected.backward()
    np.testing.assert_allclose(value, expected.item(), rtol=TOLERANCE[dtype], atol=TOLERANCE[dtype])
    np.testing.assert_allclose(grad, t.grad.numpy(), rtol=TOLERANCE[dtype], atol=TOLERANCE[dtype])


# --------------------------------------------------------------------------------------------------
# calls refused


def test_labels_out_of_range_and_shapes_are_refused(load_loss):
    student, ids, logp, _ = _inputs(np.float64)
    loss = load_loss("topk_kl")
    bad = ids.copy()
    bad[8, 2] = CLASSES
    with pytest.raises(LossLabelError, match=f"label {CLASSES} at row \\(8,\\)"):
        loss(student, bad, logp)
    with pytest.raises(LossInputError, match="whole numbers"):
        loss(student, ids + 0.5, logp)
    with pytest.raises(LossInputError, match="differ in length"):
        loss(student, ids, logp[:, :-1])
    with pytest.raises(LossInputError, match="must be the rows"):
        loss(student, ids[:-1], logp[:-1])


# --------------------------------------------------------------------------------------------------
# the DSL's rules for a list axis


@pytest.mark.parametrize("text, cls, words", [
    ("loss t(x[c], i[k])\n    t = x[i]\n", SpecTypeError, "reduce over k"),
    ("loss t(x[c], i[k])\n    t = sum(x, k)\n", SpecTypeError, "only at its labels"),
    ("loss t(x[c], i[k], v[k])\n    t = sum(x*v, c)\n", SpecTypeError, "cannot use values along k"),
    ("loss t(x[c], i[k])\n    t = sum(x, c)*sum(x[i], k) + sum(sum(x[i], k)*x, c)\n", SpecTypeError,
     "cannot use values along k"),
    ("loss t(x[c], i[k])\n    t = norm(x[i], k)\n", SpecTypeError, "does not reduce over the list axis"),
    ("loss t(x[c], i[k])\n    ignore j if i < 0\n    t = sum(x[i], k)\n", SpecNameError, "names no list axis"),
    ("loss t(x[c], i[k])\n    ignore k if x[i] < 0\n    t = sum(x[i], k)\n", SpecTypeError, "may not reduce"),
    ("loss t(x[c], i[k])\n    ignore k if x < 0\n    t = sum(x[i], k)\n", SpecTypeError, "without the axis c"),
    ("loss t(x[c], i[k]) wrt i\n    t = sum(x[i], k)\n", SpecTypeError, "class axis"),
    ("loss t(x[c], i[k])\n    axis k = 1\n    t = sum(x[i], k)\n", SpecNameError, "where the class axis does"),
    ("loss t(x[c], i[k])\n    m = x[i]\n    output m\n    t = sum(x[i], k)\n", SpecTypeError, "one value per row"),
    ("loss t(x[c], i[k], p[k])\n    t = topk_kl(x, i, p)\n", SpecTypeError, "declare that rule"),
])
def test_list_axis_spec_errors(text, cls, words):
    with pytest.raises(cls, match=words):
        lossdsl.compiler.compile_spec(text).explain()


def test_a_new_top_k_variant_is_a_few_lines(torch, tmp_path):
    """A user's own variant: reverse KL over the teacher's top-k, both renormalised, with max and mean
    over k in its outputs (the student's largest top-k logit, the mean teacher log-probability)."""
    path = tmp_path / "topk_reverse.loss"
    path.write_text(
        "loss topk_reverse(student[c], ids[k], logp[k])\n"
        "    ignore k if ids < 0\n"
        "    s = student[ids]\n"
        "    lq = s - logsumexp(s, k)\n"
        "    lp = logp - logsumexp(logp, k)\n"
        "    top = max(s, k)\n"
        "    mean_logp = mean(logp, k)\n"
        "    output top, mean_logp\n"
        "    topk_reverse = sum(exp(lq)*(lq - lp), k)\n")
    student, ids, logp, _ = _inputs(np.float64, seed=8)
    loss = lossdsl.load(path)
    value, grad, outputs = loss.value_and_grad(student, ids, logp, reduction="sum", outputs=True)
    s, i, lp = _torch_tensors(torch, student, ids, logp)
    keep = i >= 0
    gathered = torch.where(keep, torch.gather(s, -1, i.clamp(min=0)), torch.tensor(-1e30, dtype=s.dtype))
    lq = torch.log_softmax(gathered, -1)
    lpn = torch.log_softmax(torch.where(keep, lp, torch.tensor(-1e30, dtype=s.dtype)), -1)
    rows = torch.where(keep, lq.exp() * (lq - lpn), torch.zeros_like(lq)).sum(-1)
    rows.sum().backward()
    np.testing.assert_allclose(value, rows.sum().item(), rtol=1e-12)
    np.testing.assert_allclose(grad, s.grad.numpy(), rtol=1e-10, atol=1e-12)
    counts = keep.sum(-1).numpy()
    mean = np.where(counts > 0, np.where(ids >= 0, logp, 0).sum(-1) / np.maximum(counts, 1), np.nan)
    np.testing.assert_allclose(outputs["mean_logp"], mean, rtol=1e-12)
    top = np.where(counts > 0, np.where(ids >= 0, np.take_along_axis(student, np.maximum(ids, 0), -1), -np.inf)
                   .max(-1), -np.inf)
    np.testing.assert_array_equal(outputs["top"], top)


def test_the_derived_gradient_shows_the_terms_at_the_labels():
    text = lossdsl.load("topk_kl", tail="drop").explain()
    assert "onehot(teacher_ids)" in text and "sum(" in text


# --------------------------------------------------------------------------------------------------
# the PyTorch adapter


def test_torch_adapter(torch):
    import lossdsl.torch as lt
    student, ids, logp, target = _inputs(np.float32, seed=9)
    module = lt.Loss("topk_distill", tail="drop")
    s = torch.tensor(student, requires_grad=True)
    module(s, torch.as_tensor(ids), torch.tensor(logp), torch.as_tensor(target)).backward()
    r = torch.tensor(student.astype(np.float64), requires_grad=True)
    rows = distill_rows(torch, r, torch.as_tensor(ids), torch.tensor(logp.astype(np.float64)),
                        torch.as_tensor(target), tail="drop")
    (rows.sum() / int((target != -100).sum())).backward()
    np.testing.assert_allclose(s.grad.numpy(), r.grad.numpy(), rtol=1e-4, atol=1e-6)
