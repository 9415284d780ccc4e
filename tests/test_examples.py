"""The runnable examples: each trains, and reaches the line its data was drawn around."""
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

EXAMPLES = Path(__file__).parents[1] / "examples"


def _example(name: str):
    """The example module, imported as `python examples/NAME.py` would run it (its folder on the path)."""
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["linear_regression_mae", "multilabel_mae"])
def test_linear_fit_with_a_spec_loss(name, capsys):
    w, b, history = _example(name).train(verbose=True)
    assert history[-1] < 0.2 * history[0]  # the loss falls (noise keeps the MAE near 0.8)
    assert abs(w - 2.0) < 0.1 and abs(b - 3.0) < 0.4
    out = capsys.readouterr().out
    assert "fitted y = " in out and "epoch 30" in out


def test_a_new_loss_passes_its_gradient_check_and_resists_outliers():
    fits = _example("new_loss").main(verbose=False)
    w, b = fits["charbonnier"]
    assert abs(w - 2.0) < 0.05 and abs(b - 0.5) < 0.05
    w_mse, b_mse = fits["mse"]
    assert abs(b_mse - 0.5) > 0.5  # squared error is pulled towards the outliers


def test_xgboost_example_matches_the_built_in_objective():
    pytest.importorskip("xgboost")
    ours, theirs = _example("xgboost_objective").main(verbose=False)
    assert abs(ours - theirs) < 0.02 * theirs


def test_focal_two_circles_trains_past_the_majority_class():
    pytest.importorskip("torch")
    results = _example("focal_two_circles").main(verbose=False)
    majority = 6000 / 6200
    assert all(accuracy > majority for accuracy, _ in results.values())  # better than "always negative"
    assert results["focal"][1] > 0.3  # the focal objective finds a good share of the rare positives


def test_ctc_example_learns_to_read_unaligned_frames():
    history, accuracy = _example("ctc_sequences").main(verbose=False)
    assert history[-1] < 0.2 * history[0]  # the loss falls
    assert accuracy > 0.6  # most test words decoded exactly (120 words of 1-4 letters: chance is under 1 %)


def test_large_vocabulary_head_trains_without_whole_logits(capsys):
    history, accuracy = _example("large_vocabulary").train(steps=20, verbose=True)
    assert history[-1] < 0.6 * history[0] and accuracy > 0.5
    assert "mean log-sum-exp" in capsys.readouterr().out


def test_distillation_example_brings_the_student_towards_the_teacher(capsys):
    """Two linear heads: the loss falls and the student's top class mostly agrees with the teacher's."""
    history, agreement, accuracy = _example("distillation").train(verbose=True)
    assert history[-1] < 0.5 * history[0]
    assert agreement > 0.5 and accuracy > 0.5  # from 1 in 2000 at the start (a zero student)
    assert "mean KL(teacher || student)" in capsys.readouterr().out


def test_dpo_example_raises_the_chosen_margin(capsys):
    """DPO through a linear head: the loss falls from log 2 and the chosen-minus-rejected margin rises from 0."""
    history = _example("dpo").train(verbose=True)
    (first_loss, first_margin, _), (last_loss, last_margin, right) = history[0], history[-1]
    assert abs(first_loss - np.log(2)) < 1e-9 and first_margin == 0.0
    assert last_loss < 0.5 * first_loss and last_margin > 1.0 and right > 0.9
    assert "mean margin" in capsys.readouterr().out
