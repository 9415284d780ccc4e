"""One prediction against two labels: a multi-label loss composed from the catalogue's l1.

Run as `python examples/multilabel_mae.py`. The MindSpore tutorial's multi-label case: each x
has two noisy labels of y = 2x + 3, and the loss is the mean of the two absolute errors,
`(l1(base, t1) + l1(base, t2)) / 2`, written as a spec that calls the catalogue loss. Its
gradient with respect to the prediction is derived through the composition. Trained with
the loop of examples/linear_regression_mae.py.
"""
from __future__ import annotations

import numpy as np
from linear_regression_mae import fit_line  # the same training loop (this folder is on the path when run)

import lossdsl

MULTI_LABEL = """
loss mae_two_labels(base, target1, target2)
    "The mean of the absolute errors against two labels of one sample."
    mae_two_labels = (l1(base, target1) + l1(base, target2)) / 2
"""


def train(epochs: int = 30, seed: int = 1, verbose: bool = True) -> tuple[float, float, list[float]]:
    """(w, b, mean loss of each epoch)."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-10.0, 10.0, 160).astype(np.float32)
    y1, y2 = ((2.0 * x + 3.0 + rng.normal(0.0, 1.0, 160)).astype(np.float32) for _ in range(2))
    loss = lossdsl.compile(MULTI_LABEL)
    if verbose:
        print(loss.explain())
    return fit_line(loss, x, [y1, y2], rng.normal(), epochs, verbose, report_every=5)


if __name__ == "__main__":
    train()
