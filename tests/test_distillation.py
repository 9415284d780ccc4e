"""Knowledge distillation (specs/distillation.loss): each divergence over logits, the fused two-head
linear_distill and linear_distill_soft, their per-row outputs, self-distillation with both heads
differentiated, the calls refused, and the PyTorch adapter. Every reference is written here with
PyTorch (log_softmax, kl_div, cosine_similarity, cross_entropy and autograd on materialised logits),
never with lossdsl."""
import numpy as np
import pytest

import lossdsl
from lossdsl.errors import LossInputError, LossSpecError

ROWS, CLASSES, STUDENT_WIDTH, TEACHER_WIDTH = 45, 30, 12, 9  # 45 rows: not a multiple of chunk_rows=8
# the catalogue losses this file tests (tests/test_catalogue.py counts them here); distill and distill_soft
# through linear_distill and linear_distill_soft, which are they on a head's logits
DISTILLATION = ("softmax_entropy", "forward_kl", "reverse_kl", "generalized_jsd", "total_variation", "cosine_distill",
                "distill_soft", "distill", "linear_distill", "linear_distill_soft")
TWO_HEADS = ("linear_distill", "linear_distill_soft")  # called with layers, not logits
IGNORED = (3, 17, 40)
TOLERANCE = {np.float64: 1e-10, np.float32: 2e-5}


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


# --------------------------------------------------------------------------------------------------
# PyTorch references


def _soft_rows(torch, name, s, t, temperature=1.0, beta=0.5, scale_by_t2=False, space="probs"):
    """Each row's divergence of softmax(s / T) from softmax(t / T), class axis last, as the docstrings
    of specs/distillation.loss define them."""
    F = torch.nn.functional
    if name == "softmax_entropy":
        ls = F.log_softmax(s, dim=-1)
        return -(ls.exp() * ls).sum(-1)
    ls, lt = F.log_softmax(s / temperature, dim=-1), F.log_softmax(t / temperature, dim=-1)
    ps, pt = ls.exp(), lt.exp()
    forward = F.kl_div(ls, lt, reduction="none", log_target=True).sum(-1)  # sum p_t (log p_t - log p_s)
    reverse = F.kl_div(lt, ls, reduction="none", log_target=True).sum(-1)  # sum p_s (log p_s - log p_t)
    if name in ("forward_kl",):
        rows = forward
    elif name == "reverse_kl":
        rows = reverse
    elif name in ("generalized_jsd", "jsd"):
        if beta == 0:
            rows = forward
        elif beta == 1:
            rows = reverse
        else:
            lm = torch.log((1 - beta) * ps + beta * pt)
            rows = (beta * F.kl_div(lm, lt, reduction="none", log_target=True).sum(-1)
                    + (1 - beta) * F.kl_div(lm, ls, reduction="none", log_target=True).sum(-1))
    elif name in ("total_variation", "tvd"):
        rows = 0.5 * (pt - ps).abs().sum(-1)
    elif name == "cosine_distill":
        a, b = (ps, pt) if space == "probs" else (s / temperature, t / temperature)
        return 1 - F.cosine_similarity(a, b, dim=-1, eps=1e-8)
    else:
        raise AssertionError(name)
    return rows * temperature ** 2 if scale_by_t2 else rows


def _logits_data(seed, dtype, rows=16, classes=11):
    rng = np.random.default_rng(seed)
    student = (2.0 * rng.normal(size=(rows, classes))).astype(dtype)
    teacher = (2.0 * rng.normal(size=(rows, classes))).astype(dtype)
    return student, teacher


def _logits_reference(torch, name, params, student, teacher):
    """The mean over rows and its gradient with respect to the student's logits (float64)."""
    s = torch.tensor(student, dtype=torch.float64, requires_grad=True)
    t = torch.tensor(teacher, dtype=torch.float64)
    value = _soft_rows(torch, name, s, t, **params).mean()
    value.backward()
    return value.item(), s.grad.numpy()


def _heads_data(seed, dtype=np.float64):
    rng = np.random.default_rng(seed)
    data = {"student_input": rng.normal(size=(ROWS, STUDENT_WIDTH)),
            "student_weight": 0.5 * rng.normal(size=(CLASSES, STUDENT_WIDTH)),
            "teacher_input": rng.normal(size=(ROWS, TEACHER_WIDTH)),
            "teacher_weight": 0.6 * rng.normal(size=(CLASSES, TEACHER_WIDTH)),
            "student_bias": 0.5 * rng.normal(size=CLASSES),
            "teacher_bias": 0.5 * rng.normal(size=CLASSES)}
    data = {k: v.astype(dtype) for k, v in data.items()}
    target = rng.integers(0, CLASSES, ROWS)
    target[list(IGNORED)] = -100
    return data, target


def _heads_reference(torch, data, soft, target=None, reduction="mean", student_bias=True, teacher_bias=True,
                     weight_hard=0.0, weight_soft=1.0, teacher_grad=False):
    """weight_hard * cross-entropy (temperature 1, ignored rows dropped) + weight_soft * soft divergence on
    the materialised logits, by PyTorch autograd in float64. Returns (value, per-row values, gradients of
    the student's input, weight, bias (None without one), then the teacher's when teacher_grad)."""
    F = torch.nn.functional
    names = ["student_input", "student_weight", "student_bias", "teacher_input", "teacher_weight", "teacher_bias"]
    given = {"student_bias": student_bias, "teacher_bias": teacher_bias}
    tensors = {}
    for name in names:
        if not given.get(name, True):
            tensors[name] = None
            continue
        grad = name.startswith("student") or teacher_grad
        tensors[name] = torch.tensor(data[name], dtype=torch.float64, requires_grad=grad)
    s = tensors["student_input"] @ tensors["student_weight"].T
    t = tensors["teacher_input"] @ tensors["teacher_weight"].T
    s = s if tensors["student_bias"] is None else s + tensors["student_bias"]
    t = t if tensors["teacher_bias"] is None else t + tensors["teacher_bias"]
    rows = weight_soft * _soft_rows(torch, t=t, s=s, **soft)
    kept = torch.ones(ROWS, dtype=torch.float64)
    if target is not None:
        y = torch.tensor(target)
        kept = (y != -100).double()
        rows = kept * rows + weight_hard * F.cross_entropy(s, y, ignore_index=-100, reduction="none")
    value = rows.sum() / kept.sum() if reduction == "mean" else rows.sum()
    value.backward()
    differentiated = names if teacher_grad else names[:3]
    grads = [None if tensors[n] is None else tensors[n].grad.numpy() for n in differentiated]
    return value.item(), rows.detach().numpy(), grads


def _assert_grads(got, wanted, tolerance):
    assert len(got) == len(wanted)
    for k, (g, w) in enumerate(zip(got, wanted)):
        if w is None:
            assert g is None, f"gradient {k}: expected None"
        else:
            np.testing.assert_allclose(g, w, rtol=tolerance, atol=tolerance, err_msg=f"gradient {k}")


# --------------------------------------------------------------------------------------------------
# 1-3: divergences over logits

SOFT_CASES = [
    ("forward_kl", {}),
    ("forward_kl", {"temperature": 2.5}),
    ("forward_kl", {"temperature": 2.5, "scale_by_t2": True}),
    ("reverse_kl", {}),
    ("reverse_kl", {"temperature": 2.5}),
    ("generalized_jsd", {"beta": 0.0, "temperature": 2.5}),
    ("generalized_jsd", {"beta": 0.3}),
    ("generalized_jsd", {"beta": 0.5, "temperature": 2.5}),
    ("generalized_jsd", {"beta": 1.0, "temperature": 2.5}),
    ("total_variation", {}),
    ("total_variation", {"temperature": 2.5, "scale_by_t2": True}),
    ("cosine_distill", {"temperature": 2.5}),
    ("cosine_distill", {"temperature": 2.5, "space": "logits"}),
    ("softmax_entropy", {}),
]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name, params", SOFT_CASES,
                         ids=[f"{n}-{'-'.join(f'{k}={v}' for k, v in p.items()) or 'defaults'}" for n, p in SOFT_CASES])
def test_divergence_over_logits_against_pytorch(load_loss, torch, name, params, dtype):
    """Each divergence's row mean and student gradient equal the PyTorch formula (temperature, beta,
    scale_by_t2 and cosine's space all change the value, so a parameter read wrongly fails here)."""
    student, teacher = _logits_data(0, dtype)
    loss = load_loss(name, **params)
    inputs = (student,) if name == "softmax_entropy" else (student, teacher)
    value, grad = loss.value_and_grad(*inputs)
    expected, expected_grad = _logits_reference(torch, name, params, student, teacher)
    tolerance = TOLERANCE[dtype]
    assert grad.dtype == dtype and grad.shape == student.shape
    np.testing.assert_allclose(value, expected, rtol=tolerance, atol=tolerance)
    np.testing.assert_allclose(grad, expected_grad, rtol=tolerance, atol=tolerance)
    np.testing.assert_allclose(loss(*inputs), value, rtol=tolerance)
    per_row = loss(*inputs, reduction="none")
    s, t = (torch.tensor(a, dtype=torch.float64) for a in (student, teacher))
    np.testing.assert_allclose(per_row, _soft_rows(torch, name, s, t, **params).numpy(), rtol=tolerance,
                               atol=tolerance)


def test_generalized_jsd_at_its_ends_is_forward_and_reverse_kl(load_loss):
    """Liger-Kernel's convention: beta = 0 is KL(p_t || p_s), beta = 1 KL(p_s || p_t), not the mixture's 0."""
    student, teacher = _logits_data(1, np.float64)
    for beta, other in ((0.0, "forward_kl"), (1.0, "reverse_kl")):
        jsd_value, jsd_grad = load_loss("generalized_jsd", beta=beta, temperature=2.5).value_and_grad(student, teacher)
        value, grad = load_loss(other, temperature=2.5).value_and_grad(student, teacher)
        assert value > 1e-3  # not the mixture formula's 0
        np.testing.assert_allclose(jsd_value, value, rtol=1e-12)
        np.testing.assert_allclose(jsd_grad, grad, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("name, masked_input", [("forward_kl", "teacher"), ("reverse_kl", "student")])
def test_a_masked_class_adds_nothing(load_loss, torch, name, masked_input):
    """A -inf logit in one column of every row, where the divergence weighs by that side's softmax (the
    teacher's for forward KL, the student's for reverse KL), adds nothing: the value is finite and equal
    to the sum over the other classes (the softmaxes still over all of them), its gradient too."""
    student, teacher = _logits_data(2, np.float64)
    masked = 4
    (teacher if masked_input == "teacher" else student)[:, masked] = -np.inf
    loss = load_loss(name, temperature=2.5)
    value, grad = loss.value_and_grad(student, teacher)
    F = torch.nn.functional
    keep = [k for k in range(student.shape[1]) if k != masked]
    s = torch.tensor(student, requires_grad=True)
    ls = F.log_softmax(s / 2.5, dim=1)[:, keep]
    lt = F.log_softmax(torch.tensor(teacher) / 2.5, dim=1)[:, keep]
    la, lb = (lt, ls) if name == "forward_kl" else (ls, lt)
    expected = (la.exp() * (la - lb)).sum(1).mean()
    expected.backward()
    assert np.isfinite(expected.item()) and np.all(np.isfinite(s.grad.numpy()))
    np.testing.assert_allclose(value, expected.item(), rtol=1e-10)
    np.testing.assert_allclose(grad, s.grad.numpy(), rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------------------------------
# 4-7: the two-head linear losses

DIVERGENCES = {  # each with a parameter that changes its value
    "forward_kl": {},
    "reverse_kl": {},
    "jsd": {"beta": 0.3},
    "tvd": {"scale_by_t2": True},
}
TEMPERATURE = 2.0
WEIGHTS = {"weight_hard": 0.3, "weight_soft": 0.7}  # unequal: swapped weights would show
CHUNKS = {"whole": {}, "rows": {"chunk_rows": 8}, "blocks": {"chunk_rows": 8, "chunk_classes": 7}}
BIASES = {"both": (True, True), "neither": (False, False), "teacher-only": (False, True)}


def _distill_head(load_loss, divergence, **extra):
    return load_loss("linear_distill", divergence=divergence, temperature=TEMPERATURE,
                     **DIVERGENCES[divergence], **WEIGHTS, **extra)


def _soft(divergence):
    return {"name": divergence, "temperature": TEMPERATURE, **DIVERGENCES[divergence]}


def _call_inputs(data, student_bias=True, teacher_bias=True):
    positional = [data[n] for n in ("student_input", "student_weight", "teacher_input", "teacher_weight")]
    biases = {"student_bias": data["student_bias"] if student_bias else None,
              "teacher_bias": data["teacher_bias"] if teacher_bias else None}
    return positional, biases


def _check_head(head, data, target, reduction, chunks, biases, dtype, reference):
    positional, bias_inputs = _call_inputs(data, *biases)
    target_inputs = [] if target is None else [target]
    value, grads = head.value_and_grad(*positional, *target_inputs, **bias_inputs, reduction=reduction, **chunks)
    expected, expected_rows, expected_grads = reference
    tolerance = TOLERANCE[dtype]
    if reduction == "none":
        assert value.shape == (ROWS,) and value.dtype == dtype
        np.testing.assert_allclose(value, expected_rows, rtol=tolerance, atol=tolerance)
    else:
        np.testing.assert_allclose(value, expected, rtol=tolerance, atol=tolerance)
        assert len(grads) == 3
        assert all(g is None or g.dtype == dtype for g in grads)
        _assert_grads(grads, expected_grads, tolerance)
    np.testing.assert_allclose(head(*positional, *target_inputs, **bias_inputs, reduction=reduction, **chunks),
                               value, rtol=tolerance, atol=tolerance)


LINEAR_CASES = ([(d, c, r, b, np.float64) for d in DIVERGENCES for c in CHUNKS for r in ("mean", "sum", "none")
                 for b in BIASES]
                + [(d, c, "mean", "both", np.float32) for d in DIVERGENCES for c in CHUNKS])


@pytest.mark.parametrize("divergence, chunks, reduction, biases, dtype", LINEAR_CASES,
                         ids=[f"{d}-{c}-{r}-{b}-{np.dtype(t).name}" for d, c, r, b, t in LINEAR_CASES])
def test_linear_distill_against_pytorch(load_loss, torch, divergence, chunks, reduction, biases, dtype):
    """Both heads' logits materialised in PyTorch (the teacher not differentiated), hard cross-entropy at
    temperature 1 on the student's without the ignored rows, the divergence at the temperature; "mean"
    divides by the rows kept. Widths differ and 8 does not divide the 45 rows."""
    data, target = _heads_data(10, dtype)
    reference = _heads_reference(torch, data, _soft(divergence), target, reduction, *BIASES[biases], **WEIGHTS)
    _check_head(_distill_head(load_loss, divergence), data, target, reduction, CHUNKS[chunks], BIASES[biases],
                dtype, reference)


@pytest.mark.parametrize("chunks", list(CHUNKS))
def test_linear_distill_soft_only(load_loss, torch, chunks):
    """weight_hard = 0: the soft term alone (ignored rows still dropped from it and from the mean)."""
    data, target = _heads_data(11)
    reference = _heads_reference(torch, data, _soft("jsd"), target, weight_hard=0.0, weight_soft=0.7)
    head = load_loss("linear_distill", divergence="jsd", temperature=TEMPERATURE, beta=0.3, weight_hard=0.0,
                     weight_soft=0.7)
    _check_head(head, data, target, "mean", CHUNKS[chunks], BIASES["both"], np.float64, reference)


@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("chunks", list(CHUNKS))
@pytest.mark.parametrize("divergence", list(DIVERGENCES))
def test_linear_distill_soft_against_pytorch(load_loss, torch, divergence, chunks, reduction):
    """Without labels: the divergence of the two heads' softmaxes, "mean" over every row."""
    data, _ = _heads_data(12)
    reference = _heads_reference(torch, data, _soft(divergence), None, reduction)
    head = load_loss("linear_distill_soft", divergence=divergence, temperature=TEMPERATURE, **DIVERGENCES[divergence])
    _check_head(head, data, None, reduction, CHUNKS[chunks], BIASES["both"], np.float64, reference)


@pytest.mark.parametrize("chunks", ["rows", "blocks"])
def test_every_row_ignored(load_loss, chunks):
    """As PyTorch's cross_entropy: a mean over no rows is NaN ("mean_or_zero": 0); the gradients are 0."""
    data, _ = _heads_data(13)
    target = np.full(ROWS, -100)
    positional, biases = _call_inputs(data)
    head = _distill_head(load_loss, "jsd")
    value, grads = head.value_and_grad(*positional, target, **biases, **CHUNKS[chunks])
    assert np.isnan(value)
    assert len(grads) == 3 and all(np.all(np.isfinite(g)) and np.all(g == 0) for g in grads)
    value, grads = head.value_and_grad(*positional, target, **biases, reduction="mean_or_zero", **CHUNKS[chunks])
    assert value == 0
    assert all(np.all(np.isfinite(g)) and np.all(g == 0) for g in grads)
    assert np.isnan(head(*positional, target, **biases, **CHUNKS[chunks]))
    np.testing.assert_array_equal(head(*positional, target, **biases, reduction="none", **CHUNKS[chunks]),
                                  np.zeros(ROWS))


@pytest.mark.parametrize("chunks", ["rows", "blocks"])
@pytest.mark.parametrize("divergence", ["tvd", "jsd"])
def test_linear_distill_outputs(load_loss, torch, divergence, chunks):
    """outputs=True: each kept row's forward KL at the temperature (unscaled even with scale_by_t2) and both
    softmax entropies at the temperature, NaN for ignored rows; value and gradients unchanged."""
    data, target = _heads_data(14)
    positional, biases = _call_inputs(data)
    head = _distill_head(load_loss, divergence)
    value, grads, outputs = head.value_and_grad(*positional, target, **biases, outputs=True, **CHUNKS[chunks])
    plain_value, plain_grads = head.value_and_grad(*positional, target, **biases, **CHUNKS[chunks])
    np.testing.assert_allclose(value, plain_value, rtol=1e-13)
    _assert_grads(grads, plain_grads, 1e-12)
    F = torch.nn.functional
    s = torch.tensor(data["student_input"] @ data["student_weight"].T + data["student_bias"])
    t = torch.tensor(data["teacher_input"] @ data["teacher_weight"].T + data["teacher_bias"])
    ls, lt = F.log_softmax(s / TEMPERATURE, dim=1), F.log_softmax(t / TEMPERATURE, dim=1)
    expected = {"kl": F.kl_div(ls, lt, reduction="none", log_target=True).sum(1),
                "student_entropy": torch.distributions.Categorical(logits=s / TEMPERATURE).entropy(),
                "teacher_entropy": -(lt.exp() * lt).sum(1)}
    assert set(outputs) == set(expected)
    kept = target != -100
    for name, wanted in expected.items():
        assert outputs[name].shape == (ROWS,)
        assert np.all(np.isnan(outputs[name][~kept])), name
        np.testing.assert_allclose(outputs[name][kept], wanted.numpy()[kept], rtol=1e-10, atol=1e-12, err_msg=name)


# --------------------------------------------------------------------------------------------------
# 8: self-distillation, both heads differentiated

SELF_DISTILL = '''
loss self_distill(student[c], teacher[c]) wrt student, teacher
    "Two heads learning from each other: the generalised JSD of their softmaxes."
    head linear student, teacher
    axis c = -1
    param beta = 0.5 where 0 <= beta <= 1
    param temperature = 1.0 where temperature > 0
    self_distill = generalized_jsd(student, teacher, beta=beta, temperature=temperature)
'''


@pytest.fixture(scope="module")
def self_distill():
    return lossdsl.compile(SELF_DISTILL, beta=0.3, temperature=TEMPERATURE)


@pytest.mark.parametrize("teacher_bias", [True, False])
@pytest.mark.parametrize("chunks", list(CHUNKS))
def test_self_distillation_differentiates_both_heads(self_distill, torch, chunks, teacher_bias):
    """`wrt student, teacher` with `head linear student, teacher`: six gradients, the teacher's input,
    weight and bias too (None for a bias not given), as PyTorch's autograd through both heads."""
    data, _ = _heads_data(15)
    assert self_distill.wrt == ("student_input", "student_weight", "student_bias",
                                "teacher_input", "teacher_weight", "teacher_bias")
    positional, biases = _call_inputs(data, True, teacher_bias)
    value, grads = self_distill.value_and_grad(*positional, **biases, **CHUNKS[chunks])
    expected, _, expected_grads = _heads_reference(torch, data, {"name": "jsd", "beta": 0.3,
                                                                 "temperature": TEMPERATURE},
                                                   teacher_bias=teacher_bias, teacher_grad=True)
    np.testing.assert_allclose(value, expected, rtol=1e-10)
    assert len(grads) == 6
    _assert_grads(grads, expected_grads, 1e-10)


# --------------------------------------------------------------------------------------------------
# 9: calls and specs refused


def test_heads_that_do_not_agree_are_refused(load_loss):
    """Both heads must make (N, C) logits: another number of classes or of rows, or a weight of another
    width than its input, is a LossInputError naming the input, not a broadcast or a BLAS error."""
    data, target = _heads_data(16)
    head = _distill_head(load_loss, "forward_kl")
    positional, biases = _call_inputs(data)
    xs, ws, xt, wt = positional
    with pytest.raises(LossInputError, match="teacher_weight"):
        head(xs, ws, xt, np.vstack([wt, wt[:1]]), target, **biases)
    with pytest.raises(LossInputError, match="teacher_input"):
        head.value_and_grad(xs, ws, xt[:-1], wt, target, **biases)
    with pytest.raises(LossInputError, match="teacher_input"):
        head(xs, ws, xt, wt[:, :-1], target)
    with pytest.raises(LossInputError, match="teacher_bias"):
        head(xs, ws, xt, wt, target, teacher_bias=data["teacher_bias"][:-1])


@pytest.mark.parametrize("heads, inputs", [("student, nothere", "student[c], teacher[c]"),
                                           ("student, w", "student[c], teacher[c], w")],
                         ids=["no-such-input", "no-class-axis"])
def test_a_head_naming_no_class_axis_input_is_refused(heads, inputs):
    """`head linear` may name only inputs along the class axis: the compile says which are, and what it got."""
    spec = (f"loss bad({inputs})\n    head linear {heads}\n    axis c = -1\n"
            "    bad = forward_kl(student, teacher)\n")
    with pytest.raises(LossSpecError) as raised:
        lossdsl.compile(spec)
    message = str(raised.value)
    assert heads.split(", ")[1] in message.split("got")[-1] and "class axis" in message


# --------------------------------------------------------------------------------------------------
# 10: the PyTorch adapter


@pytest.mark.parametrize("low_precision", [False, True], ids=["float32", "bfloat16-input"])
def test_torch_adapter(torch, low_precision):
    """lossdsl.torch.Loss over linear_distill: positional inputs in the head's order, backward fills the
    student's input, weight and bias gradients as PyTorch autograd; a bfloat16 student_input runs in
    float32 and gets a bfloat16 gradient."""
    import lossdsl.torch
    data, target = _heads_data(17, np.float32)
    criterion = lossdsl.torch.Loss("linear_distill", divergence="jsd", beta=0.3, temperature=TEMPERATURE,
                                   **WEIGHTS)
    assert criterion.loss.inputs == ("student_input", "student_weight", "teacher_input", "teacher_weight",
                                     "target", "student_bias", "teacher_bias")
    xs = torch.tensor(data["student_input"])
    if low_precision:
        xs = xs.to(torch.bfloat16)
        data["student_input"] = xs.float().numpy()  # the reference sees the rounded input
    xs.requires_grad_(True)
    ws, bs = (torch.tensor(data[n], requires_grad=True) for n in ("student_weight", "student_bias"))
    xt, wt, bt = (torch.tensor(data[n]) for n in ("teacher_input", "teacher_weight", "teacher_bias"))
    value = criterion(xs, ws, xt, wt, torch.tensor(target), bs, bt)
    assert value.dtype == torch.float32 and value.dim() == 0
    value.backward()
    expected, _, expected_grads = _heads_reference(torch, data, _soft("jsd"), target, **WEIGHTS)
    tolerance = 1e-2 if low_precision else 2e-5
    assert xs.grad.dtype == (torch.bfloat16 if low_precision else torch.float32)
    np.testing.assert_allclose(value.item(), expected, rtol=tolerance, atol=tolerance)
    for got, wanted in zip((xs.grad, ws.grad, bs.grad), expected_grads):
        np.testing.assert_allclose(got.float().numpy(), wanted, rtol=tolerance, atol=tolerance)
