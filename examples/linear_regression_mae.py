"""Linear regression with a loss written as a spec and its generated gradient, in plain NumPy.

Run as `python examples/linear_regression_mae.py`. The MindSpore loss tutorial's setting: 160
points around y = 2x + 3 (x uniform in [-10, 10], standard normal noise), a one-weight linear
model, mean absolute error, SGD with momentum (learning rate 0.005, momentum 0.9), batches of
16. lossdsl gives d(loss)/d(prediction) from one fused kernel; the chain rule to w and b is
two NumPy lines. It prints the loss falling, epoch by epoch, and the fitted line.
"""
from __future__ import annotations

import numpy as np

import lossdsl

MAE = """
loss mae(pred, target)
    "Mean absolute error, written out rather than taken from the catalogue."
    mae = abs(pred - target)
"""


def make_data(count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    x = rng.uniform(-10.0, 10.0, count).astype(np.float32)
    return x, (2.0 * x + 3.0 + rng.normal(0.0, 1.0, count)).astype(np.float32)


def fit_line(loss: lossdsl.Loss, x: np.ndarray, targets: list[np.ndarray], w: float, epochs: int,
             verbose: bool = True, report_every: int = 1) -> tuple[float, float, list[float]]:
    """SGD with momentum (0.005, 0.9) on y = w x + b in batches of 16, the loss taking the prediction
    and `targets`; (w, b, mean loss of each epoch)."""
    w, b = np.float32(w), np.float32(0.0)
    velocity = np.zeros(2, np.float32)
    history = []
    for epoch in range(epochs):
        losses = []
        for start in range(0, x.size, 16):
            batch = slice(start, start + 16)
            value, grad = loss.value_and_grad(w * x[batch] + b, *(t[batch] for t in targets))  # d(mean)/d(pred)
            velocity = 0.9 * velocity + np.array([np.sum(grad * x[batch]), np.sum(grad)], np.float32)
            w, b = w - 0.005 * velocity[0], b - 0.005 * velocity[1]
            losses.append(float(value))
        history.append(float(np.mean(losses)))
        if verbose and (epoch + 1) % report_every == 0:
            print(f"epoch {epoch + 1:2d}: loss {history[-1]:.4f}")
    if verbose:
        print(f"fitted y = {w:.3f} x + {b:.3f}")
    return float(w), float(b), history


def train(epochs: int = 30, seed: int = 0, verbose: bool = True) -> tuple[float, float, list[float]]:
    """(w, b, mean loss of each epoch); the data lie around y = 2x + 3."""
    rng = np.random.default_rng(seed)
    x, y = make_data(160, rng)
    return fit_line(lossdsl.compile(MAE), x, [y], rng.normal(), epochs, verbose)


if __name__ == "__main__":
    train()
