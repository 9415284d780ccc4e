"""The Loss object: validation, dtypes, shapes, weights, reductions, inf/NaN behaviour."""
import math

import numpy as np
import pytest

import lossdsl
from lossdsl.errors import LossInputError


@pytest.fixture(scope="module")
def huber(load_loss):
    return load_loss("huber")


def test_wrong_number_of_inputs(huber):
    with pytest.raises(LossInputError, match=r"huber takes 2 inputs \(pred, target\); got 3"):
        huber(np.zeros(3), np.zeros(3), np.zeros(3))


def test_shapes_that_do_not_broadcast_are_named(huber):
    with pytest.raises(LossInputError, match=r"pred \(3, 4\), target \(3, 5\)"):
        huber(np.zeros((3, 4)), np.zeros((3, 5)))


def test_broadcast_target_and_unbroadcast_gradient(load_loss, huber):
    rng = np.random.default_rng(0)
    pred, target = rng.normal(size=(4, 3)), rng.normal(size=3)
    v, g = huber.value_and_grad(pred, target, reduction="sum")
    v_full, g_full = huber.value_and_grad(pred, np.broadcast_to(target, (4, 3)).copy(), reduction="sum")
    assert v == pytest.approx(v_full) and g.shape == (4, 3)
    np.testing.assert_allclose(g, g_full)
    gauss = load_loss("gaussian_nll")
    var = rng.uniform(0.5, 2.0, size=(4, 1))
    _, (g_input, g_var) = gauss.value_and_grad(pred, pred * 0.5, var, reduction="sum")
    _, (_, g_var_full) = gauss.value_and_grad(pred, pred * 0.5, np.repeat(var, 3, axis=1), reduction="sum")
    assert g_var.shape == (4, 1)
    np.testing.assert_allclose(g_var, g_var_full.sum(axis=1, keepdims=True))


def test_dtypes(huber, load_loss):
    x32 = np.linspace(-2, 2, 11, dtype=np.float32)
    v, g = huber.value_and_grad(x32, np.zeros(11, np.float32))
    assert v.dtype == np.float32 and g.dtype == np.float32
    v, g = huber.value_and_grad(np.arange(5), np.arange(5)[::-1])  # integers become float64
    assert v.dtype == np.float64 and g.dtype == np.float64
    labels = np.array([1, 0, 1], np.int64)  # integer labels are accepted
    assert load_loss("bce_with_logits")(np.array([2.0, -1.0, 0.5], np.float32), labels).dtype == np.float32
    assert huber(np.zeros(3, np.float16), np.zeros(3)).dtype == np.float32  # 16-bit: computed in float32
    with pytest.raises(LossInputError, match="must hold numbers"):
        huber(np.zeros(3, np.complex64), np.zeros(3))
    with pytest.raises(LossInputError, match="must hold numbers"):
        huber(np.zeros(3), np.array(["a", "b", "c"]))


def test_reductions_and_batch_form(huber):
    rng = np.random.default_rng(1)
    pred, target = rng.normal(size=(4, 3, 2)), rng.normal(size=(4, 3, 2))
    d = np.abs(pred - target)
    elements = np.where(d < 1, 0.5 * d**2, d - 0.5)
    np.testing.assert_allclose(huber(pred, target, reduction="batch"), elements.mean(axis=(1, 2)))
    np.testing.assert_allclose(huber(pred, target, reduction="batch", batch_axis=1), elements.mean(axis=(0, 2)))
    np.testing.assert_allclose(huber(pred, target, reduction="none"), elements)
    with pytest.raises(LossInputError, match="reduction must be"):
        huber(pred, target, reduction="avg")
    with pytest.raises(LossInputError, match="batch axis"):
        huber(np.float64(1.0), np.float64(0.0), reduction="batch")
    with pytest.raises(LossInputError, match="batch_axis=3"):
        huber(pred, target, reduction="batch", batch_axis=3)


def test_weights(huber):
    pred, target = np.array([[0.0, 3.0], [1.0, -1.0]]), np.zeros((2, 2))
    elements = np.array([[0.0, 2.5], [0.5, 0.5]])
    sw = np.array([[2.0], [4.0]])
    weighted_sum = huber(pred, target, weight=2.0, sample_weight=sw, reduction="sum")
    assert weighted_sum == pytest.approx((2 * sw * elements).sum())
    assert huber(pred, target, sample_weight=sw) == pytest.approx((sw * elements).mean())  # mean over elements
    with pytest.raises(LossInputError, match="does not broadcast"):
        huber(pred, target, sample_weight=np.ones((3, 1)))
    with pytest.raises(LossInputError, match="does not broadcast"):
        huber(pred, target, sample_weight=np.ones((2, 2, 2)))  # may not enlarge the loss
    with pytest.raises(LossInputError, match="scalar"):
        huber(pred, target, weight=np.ones(2))


def test_domains_are_checked(load_loss):
    bce = load_loss("bce")
    with pytest.raises(LossInputError, match=r"p must lie in \[0, 1\]; found 1.5 at index \(1,\)"):
        bce(np.array([0.5, 1.5]), np.array([1.0, 0.0]))
    focal = load_loss("focal")
    with pytest.raises(LossInputError, match=r"y must lie in \{0, 1\}"):
        focal(np.array([0.5, 0.5]), np.array([1.0, 0.5]))
    unchecked = lossdsl.load("focal")
    unchecked.check_domains = False
    assert np.isfinite(unchecked(np.array([0.5, 0.5]), np.array([1.0, 0.5])))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_domains_checked_in_the_loss_pass_lose_nothing(load_loss, dtype):
    """The kernel tests each element's domain on its way; what a call gives back, and what a caller's
    buffer holds, is as if the inputs had been checked first."""
    bce = load_loss("bce")
    p, y = np.array([0.25, 1.5, 0.75], dtype), np.array([1.0, 0.0, 1.0], dtype)
    for call in (lambda: bce(p, y, reduction="none"), lambda: bce.value_and_grad(p, y, sample_weight=np.ones(3)),
                 lambda: bce.grad_hess(p, y)):
        with pytest.raises(LossInputError, match=r"p must lie in \[0, 1\]; found 1.5 at index \(1,\)"):
            call()
    kept = p.copy()
    with pytest.raises(LossInputError, match="p must lie in"):
        bce.value_and_grad(p, y, grad_out=p)  # in place: the gradient would have overwritten p
    np.testing.assert_array_equal(p, kept)
    unchecked = lossdsl.load("bce", check_domains=False)
    assert unchecked(p, y, reduction="none").shape == (3,)  # computed, outside or not


def test_a_nan_loss_inside_the_domains_is_returned(tmp_path):
    """A NaN sum with every input inside its domain is the loss's own NaN, not a refused input."""
    path = tmp_path / "spread.loss"
    path.write_text("loss spread(p in [0, inf])\n    spread = p*exp(-p)\n")  # inf * 0 at p = inf
    spread = lossdsl.load(path)
    assert math.isnan(spread(np.array([1.0, np.inf])))
    with pytest.raises(LossInputError, match="p must lie in"):
        spread(np.array([1.0, -1.0]))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_domain_checks_of_large_inputs_name_the_first_element_outside(load_loss, dtype):
    """Large inputs are checked a chunk per thread: the error still names the first element outside, at
    a chunk's end or start; NaN is outside, and so is the float just above a bound."""
    bce = load_loss("bce")
    n = 400_001  # several chunks
    for position, bad in [(n - 1, np.nextafter(dtype(1), dtype(2))), (200_000, np.nan), (0, -np.finfo(dtype).tiny)]:
        p, y = np.full(n, 0.5, dtype), np.full(n, 1.0, dtype)
        p[position] = bad
        p[position + 1:][:3] = 2.0  # later elements outside too: the first is named
        with pytest.raises(LossInputError, match=rf"p must lie in \[0, 1\]; found .* at index \({position},\)"):
            bce(p, y)
    p = np.full(n, 1.0, dtype)  # the bounds themselves lie inside
    p[::2] = 0.0
    assert np.isfinite(bce(p, np.full(n, 0.5, dtype)))


def test_empty_scalar_and_non_contiguous_inputs(huber):
    assert math.isnan(huber(np.zeros(0), np.zeros(0)))
    assert huber(np.zeros(0), np.zeros(0), reduction="sum") == 0.0
    assert huber(np.zeros(0), np.zeros(0), reduction="none").shape == (0,)
    assert huber(np.float64(3.0), np.float64(0.0)) == pytest.approx(2.5)
    x = np.random.default_rng(2).normal(size=(5, 4))
    np.testing.assert_allclose(huber.grad(x.T, np.zeros((4, 5)), reduction="none"),
                               huber.grad(x.T.copy(), np.zeros((4, 5)), reduction="none"))


def test_inf_and_nan_semantics_survive_fastmath():
    probe = lossdsl.compile("loss probe(x, y, k)\n    probe = log(x) + (x - y) if k == 0 else (1 if x != y else 0)\n")
    x = np.array([0.0, np.inf, np.nan, 1.0, np.nan, 2.0])
    y = np.array([0.0, np.inf, 1.0, 1.0, np.nan, 2.0])
    k = np.array([0, 0, 0, 0, 1, 1])
    values = probe(x, y, k, reduction="none")
    assert values[0] == -np.inf           # log(0) stays -inf
    assert np.isnan(values[1])            # inf - inf is NaN
    assert np.isnan(values[2]) and values[3] == 0.0
    assert values[4] == 1.0 and values[5] == 0.0  # NaN != NaN is still true (no nnan flag)


def test_nan_propagates(huber, load_loss):
    v, g = huber.value_and_grad(np.array([np.nan, 1.0]), np.zeros(2), reduction="none")
    assert np.isnan(v[0]) and np.isnan(g[0]) and v[1] == 0.5


def test_several_wrt_inputs_give_a_tuple(load_loss):
    ranking = load_loss("margin_ranking", margin=0.5)
    v, (g1, g2) = ranking.value_and_grad(np.array([1.0, 0.0]), np.array([0.0, 1.0]), np.array([1.0, 1.0]),
                                         reduction="sum")
    assert v == pytest.approx(1.5)  # max(0, -1 + 0.5) + max(0, 1 + 0.5)
    np.testing.assert_array_equal(g1, [0.0, -1.0])
    np.testing.assert_array_equal(g2, [0.0, 1.0])


def test_description_and_source(load_loss):
    focal = load_loss("focal")
    assert set(focal.gradient_formula) == {"p"}
    assert focal.inputs == ("p", "y") and focal.wrt == ("p",)
    source = focal.source()
    assert "# loss focal(p, y) wrt p" in source and "def loss_value_and_grad(" in source
    assert "F = np.float64" in source and "F = np.float32" in focal.source("cpu", "float32")
    compile(source, "generated", "exec")  # the module is valid Python
    with pytest.raises(ValueError, match="unknown target"):
        focal.source("tpu")
    assert repr(focal) == "<lossdsl.Loss focal(p, y, alpha=0.25, gamma=2.0)>"


def test_with_params_reuses_kernels(huber):
    wide = huber.with_params(delta=3.0)
    assert wide.params["delta"] == 3.0 and wide._backend is huber._backend
    assert wide(np.array([2.0]), np.array([0.0])) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="breaks its constraint"):
        huber.with_params(delta=0.0)


def test_compile_picks_the_last_or_the_named_loss(tmp_path):
    text = "loss double(x)\n    double = 2*x\nloss quad(x)\n    quad = double(double(x))\n"
    assert lossdsl.compile(text)(np.array([1.0]), reduction="sum") == 4.0
    assert lossdsl.compile(text, "double")(np.array([1.0]), reduction="sum") == 2.0
    path = tmp_path / "mine.loss"
    path.write_text(text)
    assert lossdsl.load(str(path)).name == "quad"


def test_spec_names_never_collide_with_generated_names():
    # inputs named like the kernel's own variables, Python keywords, module names and CSE temporaries
    spec = "loss c(weight, out, n, i, t0, F, math, lambda) wrt weight, lambda\n" \
           "    c = exp(weight)*out + n*i - t0*F*math + lambda^2 + exp(weight)\n"
    loss = lossdsl.compile(spec)
    args = [np.array([0.5]), np.array([2.0]), np.array([3.0]), np.array([4.0]), np.array([1.0]), np.array([2.0]),
            np.array([3.0]), np.array([1.5])]
    value, (g_weight, g_lambda) = loss.value_and_grad(*args, reduction="sum")
    assert value == pytest.approx(3 * math.exp(0.5) + 12 - 6 + 2.25)
    assert g_weight[0] == pytest.approx(3 * math.exp(0.5)) and g_lambda[0] == pytest.approx(3.0)


def test_bad_call_arguments_get_clear_errors(huber):
    x = np.zeros(3)
    for kwargs, words in [({"weight": "a"}, "weight must be a real scalar"), ({"weight": 1j}, "real scalar"),
                          ({"batch_axis": 1.5, "reduction": "batch"}, "batch_axis must be an integer")]:
        with pytest.raises(LossInputError, match=words):
            huber(x, x, **kwargs)
    with pytest.raises(LossInputError, match="arrays of numbers"):
        huber([[1.0, 2.0], [3.0]], x)
    assert huber(x + 1, x, weight=np.array(2.0)) == pytest.approx(1.0)  # a 0-d array is a scalar


def test_domains_use_the_input_precision():
    loss = lossdsl.compile("loss small(p in [0, 0.1], k in {0.1, 0.3})\n    small = p*k\n")
    value = loss(np.array([0.1], np.float32), np.array([0.3], np.float32))
    assert value == pytest.approx(0.03, rel=1e-6)


def test_grad_out_receives_the_gradient_in_place(huber, load_loss):
    rng = np.random.default_rng(4)
    pred, target = rng.normal(size=(5, 4)).astype(np.float32), rng.normal(size=(5, 4)).astype(np.float32)
    expected_value, expected = huber.value_and_grad(pred, target)
    buffer = np.full((5, 4), np.nan, np.float32)
    value, grad = huber.value_and_grad(pred, target, grad_out=buffer)
    assert grad is buffer and value == expected_value
    np.testing.assert_array_equal(buffer, expected)
    # a gradient summed back over a broadcast axis is copied into its buffer
    gauss = load_loss("gaussian_nll")
    var = rng.uniform(0.5, 2.0, size=(5, 1))
    _, (g_input, g_var) = gauss.value_and_grad(pred.astype(np.float64), target.astype(np.float64), var)
    outs = (np.empty((5, 4)), np.empty((5, 1)))
    _, got = gauss.value_and_grad(pred.astype(np.float64), target.astype(np.float64), var, grad_out=outs)
    assert got[0] is outs[0] and got[1] is outs[1]
    np.testing.assert_array_equal(outs[0], g_input)
    np.testing.assert_array_equal(outs[1], g_var)


def test_grad_out_for_a_row_loss(load_loss):
    ce = load_loss("cross_entropy")
    rng = np.random.default_rng(5)
    logits, labels = rng.normal(size=(6, 3)), rng.integers(0, 3, 6)
    _, expected = ce.value_and_grad(logits, labels)
    buffer = np.empty((6, 3))
    _, grad = ce.value_and_grad(logits, labels, grad_out=buffer)
    assert grad is buffer
    np.testing.assert_array_equal(buffer, expected)


@pytest.mark.parametrize("bad, message", [
    (np.empty((5, 4), np.float64), r"grad_out for pred must be a writeable C-contiguous float32 array of shape \(5, 4\)"),
    (np.empty((4, 5), np.float32), "of shape"),
    (np.empty((5, 8), np.float32)[:, ::2], "C-contiguous"),
    ([[0.0] * 4] * 5, "got <class 'list'>"),
])
def test_grad_out_is_checked(huber, bad, message):
    pred = np.zeros((5, 4), np.float32)
    with pytest.raises(LossInputError, match=message):
        huber.value_and_grad(pred, pred + 1, grad_out=bad)


def test_grad_out_may_not_alias_another_input(huber, load_loss):
    pred, target = np.zeros(4), np.ones(4)
    with pytest.raises(LossInputError, match="shares memory with an input other than pred"):
        huber.value_and_grad(pred, target, grad_out=target)
    backing = np.zeros(8)
    with pytest.raises(LossInputError, match="overlaps pred without being it"):
        huber.value_and_grad(backing[:4], target, grad_out=backing[2:6])
    with pytest.raises(LossInputError, match="needs 2 arrays"):
        load_loss("gaussian_nll").value_and_grad(pred, target, target + 1, grad_out=np.empty(4))


@pytest.mark.parametrize("name, params, shape", [
    ("cross_entropy", {}, (700, 37)),  # enough rows for several threads
    ("cross_entropy", {"label_smoothing": 0.1, "z_loss": 1e-3}, (3, 11, 4)),  # class axis 1, inner 4
    ("softmax_focal", {"gamma": 2.0}, (9, 13)),
    ("poly1_ce", {"epsilon": 1.0}, (9, 13)),
    ("huber", {}, (5, 4)),
])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_grad_out_may_be_the_input_itself(load_loss, name, params, shape, dtype):
    """`grad_out=logits` overwrites the logits with their gradient, equal to the one a fresh buffer gets."""
    loss = load_loss(name).with_params(**params)
    rng = np.random.default_rng(6)
    first = (3 * rng.normal(size=shape)).astype(dtype)
    other = (rng.normal(size=shape).astype(dtype) if name == "huber"
             else rng.integers(0, shape[1], (shape[0], *shape[2:])))
    expected_value, expected = loss.value_and_grad(first, other, reduction="sum")
    value, grad = loss.value_and_grad(first, other, reduction="sum", grad_out=first)
    assert grad is first
    tolerance = 1e-6 if dtype == np.float32 else 1e-14
    assert value == pytest.approx(expected_value, rel=tolerance)
    np.testing.assert_allclose(first, expected, rtol=tolerance, atol=tolerance)


def test_threads_split_large_calls_and_sum_in_a_fixed_order(load_loss):
    """Chunked over threads, the result equals the one-thread result bit for bit on repeat calls."""
    rng = np.random.default_rng(8)
    n = 4 * lossdsl.runtime.threads.MIN_WORK_PER_THREAD + 3  # not a multiple of the chunk alignment
    pred, target = rng.normal(size=n).astype(np.float32), rng.normal(size=n).astype(np.float32)
    huber = load_loss("huber")
    ce = load_loss("cross_entropy")
    logits, labels = rng.normal(size=(n // 8, 8)), rng.integers(0, 8, n // 8)
    before = lossdsl.get_num_threads()
    try:
        lossdsl.set_num_threads(1)
        one = huber.value_and_grad(pred, target, reduction="sum"), ce.value_and_grad(logits, labels)
        lossdsl.set_num_threads(3)
        three = huber.value_and_grad(pred, target, reduction="sum"), ce.value_and_grad(logits, labels)
        again = huber.value_and_grad(pred, target, reduction="sum"), ce.value_and_grad(logits, labels)
    finally:
        lossdsl.set_num_threads(before)
    for (v1, g1), (v3, g3), (va, ga) in zip(one, three, again):
        np.testing.assert_array_equal(g1, g3)  # every element is computed the same way
        assert v3 == va  # partials added in chunk order: repeatable
        assert v3 == pytest.approx(v1, rel=1e-6)
    d = pred.astype(np.float64) - target
    expected = np.where(np.abs(d) < 1, 0.5 * d * d, np.abs(d) - 0.5).sum()
    assert float(three[0][0]) == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="positive integer"):
        lossdsl.set_num_threads(0)


def test_large_gradients_reuse_memory_only_once_released(huber):
    """Pooled output arrays: a gradient (or a view of it) still referenced is never written again."""
    from lossdsl.runtime import buffers

    def address(array):
        return array.__array_interface__["data"][0]

    n = buffers.MIN_POOLED_BYTES // 4
    rng = np.random.default_rng(9)
    pred, target = rng.normal(size=n).astype(np.float32), rng.normal(size=n).astype(np.float32)
    buffers.clear()
    _, first = huber.value_and_grad(pred, target)
    kept = first.copy()
    _, second = huber.value_and_grad(pred + 1, target)
    assert not np.shares_memory(first, second)
    view, released = second[::2], {address(second)}
    del second
    _, third = huber.value_and_grad(pred + 2, target)
    assert not np.shares_memory(third, view) and not np.shares_memory(third, first)
    released.add(address(third))
    del view, third
    _, fourth = huber.value_and_grad(pred, target)
    assert address(fourth) in released  # memory of a dropped gradient, written again
    np.testing.assert_array_equal(fourth, kept)
    np.testing.assert_array_equal(first, kept)  # the gradient still held was never touched
    buffers.clear()


def test_comparisons_with_infinity_are_not_folded_away():
    """SymPy's real symbols are finite (x == inf folds to false); the floats a loss sees may be infinite."""
    loss = lossdsl.compile("loss q(x)\n    q = 0 if x == inf else (1 if x > -inf else 2)\n")
    values = loss(np.array([1.0, np.inf, -np.inf]), reduction="none")
    np.testing.assert_array_equal(values, [1.0, 0.0, 2.0])
    assert "x == inf" in loss.explain()
