"""Partials of reductions over blocks of the class axis (lossdsl.classaxis.partials): how a block's partials
merge into the running ones, checked on hand-made slots against the numbers written out here."""
import math

import numpy as np
import pytest

import lossdsl

SPEC = """
loss parts(logits[c], y)
    parts = logsumexp(logits, c) + max(logits, c) + min(logits, c) + sum(logits, c) - logits[y]
"""


@pytest.fixture(scope="module")
def plan():
    return lossdsl.compile(SPEC).block_plan().layout


def _slots(plan, op):
    return next(n.slot for n in plan.nodes if n.op == op)


def test_nodes_are_levelled_and_given_slots(plan):
    assert plan.levels == 1
    assert sorted(n.op for n in plan.nodes) == ["load", "logsumexp", "max", "min", "sum"]
    assert plan.width == 1 + 2 + 2 + 2 + 1  # load, (shift, exp sum), (max, position), (min, position), sum
    empty = plan.empty(2)
    k = _slots(plan, "logsumexp")
    assert np.all(empty[:, k] == -np.inf) and np.all(empty[:, k + 1] == 0)


def test_exp_sums_rescale_to_the_larger_shift(plan):
    k = _slots(plan, "logsumexp")
    running = plan.empty(4)
    block = plan.empty(4)
    # row 0: first block; row 1: two finite blocks; row 2: a block of -inf logits (shift 0, sum 0)
    # after a finite one; row 3: a block with a NaN sum
    running[1, k:k + 2] = (1.0, 2.0)
    running[2, k:k + 2] = (-800.0, 1.5)
    running[3, k:k + 2] = (0.0, 1.0)
    block[0, k:k + 2] = (3.0, 4.0)
    block[1, k:k + 2] = (3.0, 5.0)
    block[2, k:k + 2] = (0.0, 0.0)
    block[3, k:k + 2] = (2.0, np.nan)
    plan.combine(running, block, 0)
    np.testing.assert_allclose(running[0, k:k + 2], (3.0, 4.0))
    np.testing.assert_allclose(running[1, k:k + 2], (3.0, 2.0 * math.exp(-2.0) + 5.0))
    lse = running[2, k] + math.log(running[2, k + 1])  # the -inf block leaves -800 + log(1.5) as it was
    assert lse == pytest.approx(-800.0 + math.log(1.5))
    assert np.isnan(running[3, k + 1])


def test_extremes_keep_the_first_position_and_let_nan_win(plan):
    k = _slots(plan, "max")
    running = plan.empty(3)
    running[:, k:k + 2] = [(5.0, 2), (5.0, 2), (np.nan, 1)]
    block = plan.empty(3)
    block[:, k:k + 2] = [(5.0, 9), (np.nan, 12), (7.0, 14)]
    plan.combine(running, block, 0)
    np.testing.assert_array_equal(running[:2, k:k + 2], [(5.0, 2), (np.nan, 12)])  # a tie keeps position 2
    assert np.isnan(running[2, k]) and running[2, k + 1] == 1  # an earlier NaN stays
    m = _slots(plan, "min")
    running[:, m:m + 2] = [(1.0, 0), (1.0, 0), (1.0, 0)]
    block[:, m:m + 2] = [(0.5, 20), (1.0, 21), (2.0, 22)]
    plan.combine(running, block, 0)
    np.testing.assert_array_equal(running[:, m + 1], [20, 0, 0])


def test_sums_and_loads_add(plan):
    running, block = plan.empty(1), plan.empty(1)
    for op, (mine, theirs) in {"sum": (1.5, 2.0), "load": (0.0, -3.0)}.items():
        k = _slots(plan, op)
        running[0, k], block[0, k] = mine, theirs
    plan.combine(running, block, 0)
    assert running[0, _slots(plan, "sum")] == 3.5 and running[0, _slots(plan, "load")] == -3.0

