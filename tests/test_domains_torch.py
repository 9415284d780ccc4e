"""Declared domains: a call outside one raises an error that says how to skip the check, and with
the check off the losses whose PyTorch functions take any target give PyTorch's values and
gradients there (targets 0, 0.5, 2, -3 for ±1 labels, soft targets -0.5 and 1.5, negative counts)."""
import re

import numpy as np
import pytest

import lossdsl
from lossdsl import LossInputError

SIGNED = np.array([0.0, 0.5, 2.0, -3.0, -0.5, 1.5, 1.0, -1.0])  # labels ±1, and values PyTorch also takes
SOFT = np.array([-0.5, 1.5, 2.0, -3.0, 0.3, 0.0, 1.0, 1.2])  # probabilities, and values outside [0, 1]
COUNTS = np.array([-0.5, -3.0, -1.0, -10.0, 0.0, 0.5, 2.0, 5.0])  # counts, and negative ones
SKIP = ("To skip this check, set `loss.check_domains = False` or pass check_domains=False to lossdsl.load or "
        "lossdsl.torch.Loss")


def unchecked(load_loss, name, **params):
    """A clone of the shared loss with the domain checks off (the shared one keeps them)."""
    loss = load_loss(name, **params).with_params()
    loss.check_domains = False
    return loss


def domain_error(call) -> str:
    with pytest.raises(LossInputError) as error:
        call()
    return str(error.value)


def test_the_error_names_the_loss_input_domain_value_index_and_the_way_off(load_loss, tmp_path):
    y = np.ones((2, 3))
    y[1, 2] = 2.0
    message = domain_error(lambda: load_loss("hinge_embedding")(np.zeros((2, 3)), y))
    assert message == f"hinge_embedding: y must lie in {{-1, 1}}; found 2.0 at index (1, 2). {SKIP}"
    soft = np.full((2, 4), 0.5)
    soft[1, 3] = -0.5
    message = domain_error(lambda: load_loss("multilabel_soft_margin")(np.zeros((2, 4)), soft))
    assert message.startswith("multilabel_soft_margin: y must lie in [0, 1]; found -0.5 at index (1, 3). To skip")
    spec = tmp_path / "counts.loss"
    spec.write_text("loss counts(x, n in [0, inf))\n    counts = exp(x) - n*x\n")
    message = domain_error(lambda: lossdsl.load(spec)(np.zeros(3), np.array([1.0, 2.0, -1.0])))
    assert message == f"counts: n must lie in [0, inf); found -1.0 at index (2,). {SKIP}"
    assert str(tmp_path) not in message


def test_the_ways_off_the_error_names_work(load_loss):
    loss = unchecked(load_loss, "margin_ranking")
    assert np.isfinite(loss(np.zeros(8), np.ones(8), SIGNED))
    assert load_loss("margin_ranking").check_domains  # the shared loss still checks
    rng = np.random.default_rng(3)
    x, w, y = rng.normal(size=(4, 3)), rng.normal(size=(8, 3)), np.tile(SOFT, (4, 1))
    head = load_loss("multilabel_soft_margin").with_params().with_linear()
    message = domain_error(lambda: head(x, w, y))
    assert re.match(r"multilabel_soft_margin: y must lie in \[0, 1\]; found -0\.5 at index \(0, 0\)\. To skip",
                    message)
    head.check_domains = False  # a head's setting is its loss's
    assert not head.loss.check_domains
    np.testing.assert_allclose(head(x, w, y), unchecked(load_loss, "multilabel_soft_margin")(x @ w.T, y),
                               rtol=1e-12)


# --- with the checks off: PyTorch's own functions on inputs outside the domains ---

def _signed_inputs(rng, margin):
    """(x, y) over every label of SIGNED, the first row at x = margin (the hinge's kink)."""
    y = np.tile(SIGNED, (4, 1))
    x = rng.normal(0.0, 2.0, y.shape)
    x[0] = margin
    return x, y


def _ranking_inputs(rng, margin):
    """(x1, x2, y): the first row at -y*(x1 - x2) + margin = 0 exactly (margin / y exact in binary; a
    rounded product can fall either side of the kink, and lossdsl may fuse it with the sum), the second
    at x1 = x2."""
    y = np.tile(SIGNED, (4, 1))
    x1, x2 = rng.normal(0.0, 2.0, (2, *y.shape))
    x2[:2] = 0.0
    x1[0] = np.where(y[0] != 0, margin / np.where(y[0] != 0, y[0], 1.0), 0.3)
    x1[1] = 0.0
    return x1, x2, y


def _soft_inputs(rng):
    y = np.tile(SOFT, (4, 1))
    return rng.normal(0.0, 2.0, y.shape), y


def _poisson_inputs(rng, log_input):
    t = np.tile(COUNTS, (4, 1))
    x = rng.normal(0.0, 1.0, t.shape) if log_input else rng.uniform(0.1, 3.0, t.shape)
    return x, t


CASES = [  # (id, loss, params, lossdsl inputs from a Generator, PyTorch's function of (inputs, params))
    *[(f"margin_ranking-{m}", "margin_ranking", {"margin": m}, lambda rng, m=m: _ranking_inputs(rng, m),
       lambda F, x1, x2, y, p, r: F.margin_ranking_loss(x1, x2, y, margin=p["margin"], reduction=r))
      for m in (0.0, 0.75)],
    ("soft_margin", "soft_margin", {}, lambda rng: _signed_inputs(rng, 1.0),
     lambda F, x, y, p, r: F.soft_margin_loss(x, y, reduction=r)),
    *[(f"hinge_embedding-{m}", "hinge_embedding", {"margin": m}, lambda rng, m=m: _signed_inputs(rng, m),
       lambda F, x, y, p, r: F.hinge_embedding_loss(x, y, margin=p["margin"], reduction=r))
      for m in (1.0, 0.3)],
    ("multilabel_soft_margin", "multilabel_soft_margin", {}, _soft_inputs,
     lambda F, x, y, p, r: F.multilabel_soft_margin_loss(x, y, reduction=r)),
    ("multilabel_soft_margin-weighted", "multilabel_soft_margin", {},
     lambda rng: (*_soft_inputs(rng), np.linspace(0.5, 2.0, SOFT.size)),
     lambda F, x, y, w, p, r: F.multilabel_soft_margin_loss(x, y, weight=w, reduction=r)),
    ("bce_with_logits", "bce_with_logits", {}, _soft_inputs,
     lambda F, x, y, p, r: F.binary_cross_entropy_with_logits(x, y, reduction=r)),
    *[(f"poisson_nll-log_input={log_input}-full={full}", "poisson_nll", {"log_input": log_input, "full": full},
       lambda rng, log_input=log_input: _poisson_inputs(rng, log_input),
       lambda F, x, t, p, r: F.poisson_nll_loss(x, t, log_input=p["log_input"], full=p["full"], reduction=r))
      for log_input in (True, False) for full in (False, True)],
]
TOLERANCES = {"float64": {"rtol": 1e-12, "atol": 1e-13}, "float32": {"rtol": 2e-5, "atol": 2e-6}}


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("reduction", ["none", "mean"])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_values_and_gradients_off_the_domain_are_pytorchs(load_loss, case, reduction, dtype):
    torch = pytest.importorskip("torch")
    _, name, params, inputs, reference = case
    loss = unchecked(load_loss, name, **params)
    arrays = [a.astype(dtype) for a in inputs(np.random.default_rng(len(case[0])))]
    with pytest.raises(LossInputError):  # the inputs do leave the domain
        load_loss(name, **params)(*arrays)
    value, grads = loss.value_and_grad(*arrays, reduction=reduction)
    grads = grads if isinstance(grads, tuple) else (grads,)
    tensors = [torch.tensor(a, requires_grad=n in loss.wrt) for n, a in zip(loss.inputs, arrays)]
    expected = reference(torch.nn.functional, *tensors, params, reduction)
    expected.sum().backward()
    tolerance = TOLERANCES[dtype]
    assert np.asarray(value).dtype == dtype
    np.testing.assert_allclose(value, expected.detach().numpy(), **tolerance)
    for grad, tensor in zip(grads, (t for n, t in zip(loss.inputs, tensors) if n in loss.wrt)):
        assert grad.dtype == dtype
        np.testing.assert_allclose(grad, tensor.grad.numpy(), **tolerance)


def test_a_linear_head_names_the_index_in_the_whole_input(load_loss):
    """Chunks of rows or blocks of classes do not shift the index the domain error gives."""
    rng = np.random.default_rng(8)
    x, w = rng.normal(size=(6, 3)), rng.normal(size=(5, 3))
    y = rng.random((6, 5))
    y[4, 2] = 1.5
    head = load_loss("multilabel_soft_margin").with_linear()
    for chunks in ({"chunk_rows": 2}, {"chunk_rows": 2, "chunk_classes": 2}):
        with pytest.raises(lossdsl.LossInputError, match=r"found 1\.5 at index \(4, 2\)"):
            head(x, w, y, **chunks)
