"""Figures printed in the tutorials this project started from (shared/seeds)."""
import runpy
from pathlib import Path

import numpy as np
import pytest

import lossdsl

EXAMPLES = Path(__file__).parents[1] / "examples"
FOCAL_AS_WRITTEN = (EXAMPLES / "focal_design_card.loss").read_text()


def test_mindspore_l1_example(load_loss):
    # MindSpore L1Loss tutorial: mean 1.5, sum 9.0, none [[1, 0, 2], [1, 2, 3]]
    pred = np.array([[1, 2, 3], [2, 3, 4]], np.float32)
    target = np.array([[0, 2, 5], [3, 1, 1]], np.float32)
    l1 = load_loss("l1")
    assert l1(pred, target) == pytest.approx(1.5)
    assert l1(pred, target, reduction="sum") == pytest.approx(9.0)
    np.testing.assert_array_equal(l1(pred, target, reduction="none"), [[1, 0, 2], [1, 2, 3]])


def test_mindspore_mae_example(load_loss):
    # MindSpore MAELoss tutorial prints 0.033333335 (float32)
    value = load_loss("mae")(np.array([0.1, 0.2, 0.3], np.float32), np.array([0.1, 0.2, 0.2], np.float32))
    assert value.dtype == np.float32 and value == pytest.approx(0.033333335, rel=1e-6)


def test_mindspore_multilabel_loss_by_composition():
    # The tutorial's MAELossForMultiLabel: (|base - t1| + |base - t2|) / 2, written by calling l1
    multi = lossdsl.compile("loss multi_mae(base, t1, t2)\n    multi_mae = (l1(base, t1) + l1(base, t2)) / 2\n")
    rng = np.random.default_rng(0)
    base, t1, t2 = rng.normal(size=(3, 16, 1))
    value, grad = multi.value_and_grad(base, t1, t2)
    assert value == pytest.approx(np.mean((np.abs(base - t1) + np.abs(base - t2)) / 2))
    np.testing.assert_allclose(grad, (np.sign(base - t1) + np.sign(base - t2)) / 2 / base.size)


@pytest.mark.parametrize("p, expected_focal, expected_bce", [
    ([[0.5], [0.5]], 0.0866, 0.6931),  # PyTorch tutorial: hard samples
    ([[0.9], [0.1]], 0.0005, 0.1054),  # easy samples
])
def test_pytorch_tutorial_focal_figures(load_loss, p, expected_focal, expected_bce):
    p, y = np.array(p, np.float32), np.array([[1.0], [0.0]], np.float32)
    assert round(float(load_loss("focal", alpha=0.75, gamma=2.0)(p, y)), 4) == expected_focal
    assert round(float(load_loss("bce")(p, y)), 4) == expected_bce
    as_written = lossdsl.compile(FOCAL_AS_WRITTEN, alpha=0.75)
    assert round(float(as_written(p, y)), 4) == expected_focal


def test_design_card_focal_matches_the_catalogue_inside_the_interval(load_loss):
    rng = np.random.default_rng(1)
    p, y = rng.uniform(0.01, 0.99, 200), rng.integers(0, 2, 200).astype(np.float64)
    as_written = lossdsl.compile(FOCAL_AS_WRITTEN)
    catalogue = load_loss("focal")
    written = as_written.value_and_grad(p, y, reduction="none")
    for a, b in zip(written, catalogue.value_and_grad(p, y, reduction="none")):
        np.testing.assert_allclose(a, b, rtol=1e-12)


def test_custom_loss_example_runs(capsys):
    runpy.run_path(str(EXAMPLES / "custom_loss.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "hard samples: loss 0.0866" in out and "easy samples: loss 0.0005" in out and "dfocal/dp = " in out
