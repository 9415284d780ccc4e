"""One prediction against two labels: a multi-label loss composed from the catalogue's l1.

Run as `python examples/multilabel_mae.py`. The MindSpore tutorial's multi-label case: each x
has two noisy labels of y = 2x + 3, and the loss is the mean of the two absolute errors,
`(l1(base, t1) + l1(base, t2)) / 2`, written as a spec that calls the catalogue loss. Its
gradient with respect to the prediction is derived through the composition. Trained as
examples/linear_regression_mae.py is.
"""
from __future__ import annotations

import numpy as np

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
    w, b = np.float32(rng.normal()), np.float32(0.0)
    velocity = np.zeros(2, np.float32)
    history = []
    for epoch in range(epochs):
        losses = []
        for start in range(0, x.size, 16):
            batch = slice(start, start + 16)
            value, grad = loss.value_and_grad(w * x[batch] + b, y1[batch], y2[batch])
            velocity = 0.9 * velocity + np.array([np.sum(grad * x[batch]), np.sum(grad)], np.float32)
            w, b = w - 0.005 * velocity[0], b - 0.005 * velocity[1]
            losses.append(float(value))
        history.append(float(np.mean(losses)))
        if verbose and (epoch + 1) % 5 == 0:
            print(f"epoch {epoch + 1:2d}: loss {history[-1]:.4f}")
    if verbose:
        print(f"fitted y = {w:.3f} x + {b:.3f}")
    return float(w), float(b), history


if __name__ == "__main__":
    train()
