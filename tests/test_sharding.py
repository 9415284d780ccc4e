"""A class axis split across processes (lossdsl.classaxis.sharding), the processes played by threads whose
all-reduce meets at a barrier: every slice's loss equals the single-process loss, and the slices'
gradients put together equal its gradient, for equal and unequal slices; the plan it prints."""
import threading

import numpy as np
import pytest

import lossdsl
from lossdsl.errors import LossInputError
from lossdsl.classaxis.sharding import ShardedLoss

ROWS, CLASSES = 9, 12
SPLITS = {"two equal": [0, 6, 12], "two unequal": [0, 4, CLASSES], "three": [0, 2, 9, CLASSES]}

EXTREMES = """
loss extremes(logits[c], y)
    extremes = max(logits, c) - 0.5*min(logits, c) + 0.1*norm(logits, c, 3) + logsumexp(logits - max(logits, c), c) - logits[y]
"""


def _group(size: int):
    """One all-reduce per thread-process: each waits for all, then takes the sum or max of all."""
    barrier, arrays = threading.Barrier(size, timeout=30), [None] * size

    def member(rank):
        def all_reduce(array, op):
            arrays[rank] = array.copy()
            barrier.wait()
            stacked = np.stack(arrays)
            result = stacked.sum(axis=0) if op == "sum" else stacked.max(axis=0)
            barrier.wait()
            return result
        return all_reduce
    return [member(rank) for rank in range(size)]


def _on_ranks(size: int, call) -> list:
    """call(rank, all_reduce) on `size` threads playing processes: each one's result, any error raised."""
    results, errors, members = [None] * size, [], _group(size)

    def run(rank):
        try:
            results[rank] = call(rank, members[rank])
        except Exception as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)
    threads = [threading.Thread(target=run, args=(rank,)) for rank in range(size)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    return results


def sharded(loss, bounds, logits, whole, sliced=(), **options):
    """Each slice's (value, gradient): `whole` inputs as they are, `sliced` ones cut like the logits."""
    def call(rank, all_reduce):
        lo, hi = bounds[rank], bounds[rank + 1]
        return ShardedLoss(loss, all_reduce).value_and_grad(
            logits[:, lo:hi], *whole, *(s[:, lo:hi] for s in sliced), class_start=lo, classes=logits.shape[1],
            axis=-1, **options)
    return _on_ranks(len(bounds) - 1, call)


def _cases(rng):
    y = rng.integers(0, CLASSES, ROWS)
    y[3] = -100
    class_weight = rng.uniform(0.5, 2.0, CLASSES)
    targets = rng.dirichlet(np.ones(CLASSES), ROWS)
    return {
        "cross_entropy": (dict(label_smoothing=0.1, z_loss=1e-3), [y, class_weight], []),
        "cross_entropy megatron": (dict(label_smoothing=0.2, smoothing="megatron"), [y, class_weight], []),
        "poly1_ce": (dict(epsilon=2.0), [y], []),
        "softmax_focal": (dict(gamma=2.0), [y], []),
        "gluon_kl_div": ({}, [], [targets]),
        "cross_entropy_probs": (dict(label_smoothing=0.1), [], [targets]),
        "multi_margin": ({}, [np.maximum(y, 0)], []),
        "extremes": ({}, [np.maximum(y, 0)], []),
    }


@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("case", list(_cases(np.random.default_rng(0))))
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_slices_give_the_single_process_loss_and_gradient(load_loss, case, split, reduction):
    rng = np.random.default_rng(1)
    params, whole, sliced = _cases(rng)[case]
    logits = 3 * rng.normal(size=(ROWS, CLASSES))
    loss = lossdsl.compile(EXTREMES) if case == "extremes" else load_loss(case.split()[0], **params)
    expected, expected_grad = loss.value_and_grad(logits, *whole, *sliced, axis=-1, reduction=reduction)
    results = sharded(loss, SPLITS[split], logits, whole, sliced, reduction=reduction)
    for value, _ in results:
        assert value == pytest.approx(expected, rel=1e-12, abs=1e-14)
    np.testing.assert_allclose(np.concatenate([g for _, g in results], axis=1), expected_grad, rtol=1e-11,
                               atol=1e-14)


def test_class_weights_may_come_sliced(load_loss):
    rng = np.random.default_rng(2)
    logits, y, class_weight = rng.normal(size=(ROWS, CLASSES)), rng.integers(0, CLASSES, ROWS), rng.uniform(1, 2, CLASSES)
    ce = load_loss("cross_entropy")
    expected = ce(logits, y, class_weight, axis=-1)
    results = sharded(ce, SPLITS["two unequal"], logits, [y], [class_weight[None, :].repeat(ROWS, 0)])
    assert all(value == pytest.approx(expected, rel=1e-12) for value, _ in results)


def test_masked_slices_ties_and_nan(load_loss):
    """A slice all -inf (masked), a maximum tied across slices (the first position wins), a NaN."""
    logits = np.random.default_rng(3).normal(size=(3, CLASSES))
    logits[0, 6:] = -np.inf
    logits[1, [2, 8]] = 50.0
    logits[2, 10] = np.nan
    y = np.array([1, 0, 3])
    loss = lossdsl.compile(EXTREMES)
    expected, expected_grad = loss.value_and_grad(logits, y, axis=-1, reduction="none")
    results = sharded(loss, SPLITS["two equal"], logits, [y], reduction="none")
    for values, _ in results:
        np.testing.assert_allclose(values, expected, rtol=1e-12)
    np.testing.assert_allclose(np.concatenate([g for _, g in results], axis=1), expected_grad, rtol=1e-12)
    ce_expected = load_loss("cross_entropy")(logits[:2], y[:2], axis=-1, reduction="none")
    ce = sharded(load_loss("cross_entropy"), SPLITS["two equal"], logits[:2], [y[:2]], reduction="none")
    np.testing.assert_allclose(ce[0][0], ce_expected, rtol=1e-12)


def test_the_plan_names_its_collectives(load_loss):
    text = ShardedLoss(load_loss("cross_entropy"), None).plan()
    assert "lse = logsumexp(logits, c)" in text and "all-reduce MAX  1 float64 per row: shift of lse" in text
    assert "all-reduce SUM  5 float64 per row: class_weight[y], logits[y], exp-sum of lse, _r1, _r2" in text
    assert text.splitlines()[-1].startswith("2 all-reduces")


def test_a_slice_outside_the_classes_is_refused(load_loss):
    with pytest.raises(LossInputError, match="not within the 5 classes"):
        ShardedLoss(load_loss("cross_entropy"), None).value_and_grad(np.zeros((2, 4)), np.array([0, 1]),
                                                                     class_start=3, classes=5, axis=-1)


@pytest.mark.parametrize("split", ["two unequal", "three"])
@pytest.mark.parametrize("name", ["linear_cross_entropy", "poly1_ce"])
def test_a_linear_head_with_its_weight_split_by_rows(load_loss, name, split):
    """Each process holds rows of linear_weight (its classes): the same loss and input gradient on every
    process, and its own slices of the weight and bias gradients, in blocks and row chunks."""
    rng = np.random.default_rng(4)
    x, weight, bias = rng.normal(size=(ROWS, 5)), rng.normal(size=(CLASSES, 5)), rng.normal(size=CLASSES)
    y = rng.integers(0, CLASSES, ROWS)
    head = (load_loss("linear_cross_entropy", label_smoothing=0.1) if name == "linear_cross_entropy"
            else load_loss("poly1_ce", epsilon=1.0).with_linear())
    options = {"weight": rng.uniform(0.5, 2.0, CLASSES)} if name == "linear_cross_entropy" else {}
    expected, (d_x, d_weight, d_bias) = head.value_and_grad(x, weight, y, linear_bias=bias, **options)
    bounds = SPLITS[split]

    def call(rank, all_reduce):
        lo, hi = bounds[rank], bounds[rank + 1]
        return head.sharded(lo, CLASSES, all_reduce).value_and_grad(x, weight[lo:hi], y, linear_bias=bias[lo:hi],
                                                                    chunk_rows=4, chunk_classes=3, **options)
    results = _on_ranks(len(bounds) - 1, call)
    normalizer = head.sharded(bounds[1], CLASSES, None).normalizer(x, weight[bounds[1]:], y, **options)
    assert normalizer == pytest.approx(head.normalizer(x, weight, y, **options), rel=1e-14)
    for value, (got_x, _, _) in results:
        assert value == pytest.approx(expected, rel=1e-12)
        np.testing.assert_allclose(got_x, d_x, rtol=1e-11, atol=1e-15)
    np.testing.assert_allclose(np.concatenate([r[1][1] for r in results]), d_weight, rtol=1e-11, atol=1e-15)
    np.testing.assert_allclose(np.concatenate([r[1][2] for r in results]), d_bias, rtol=1e-11, atol=1e-15)


@pytest.mark.parametrize("split", ["two unequal", "three"])
def test_two_heads_with_both_weights_split_by_rows(load_loss, split):
    """Distillation with the vocabulary split: each process holds the same classes of the student's and
    the teacher's weights (and biases); every process gets the loss and the student's input gradient of
    the single process, and its slices of the student's weight and bias gradients."""
    rng = np.random.default_rng(6)
    xs, xt = rng.normal(size=(ROWS, 5)), rng.normal(size=(ROWS, 4))
    ws, wt = rng.normal(size=(CLASSES, 5)), rng.normal(size=(CLASSES, 4))
    bs, bt = rng.normal(size=CLASSES), rng.normal(size=CLASSES)
    y = rng.integers(0, CLASSES, ROWS)
    y[2] = -100
    head = load_loss("linear_distill", divergence="jsd", beta=0.3, temperature=2.0)
    expected, (d_x, d_weight, d_bias) = head.value_and_grad(xs, ws, xt, wt, y, student_bias=bs, teacher_bias=bt)
    bounds = SPLITS[split]

    def call(rank, all_reduce):
        lo, hi = bounds[rank], bounds[rank + 1]
        return head.sharded(lo, CLASSES, all_reduce).value_and_grad(
            xs, ws[lo:hi], xt, wt[lo:hi], y, student_bias=bs[lo:hi], teacher_bias=bt[lo:hi], chunk_rows=4,
            chunk_classes=3)
    results = _on_ranks(len(bounds) - 1, call)
    for value, (got_x, _, _) in results:
        assert value == pytest.approx(expected, rel=1e-12)
        np.testing.assert_allclose(got_x, d_x, rtol=1e-11, atol=1e-15)
    np.testing.assert_allclose(np.concatenate([r[1][1] for r in results]), d_weight, rtol=1e-11, atol=1e-15)
    np.testing.assert_allclose(np.concatenate([r[1][2] for r in results]), d_bias, rtol=1e-11, atol=1e-15)
