"""`lossdsl plot`: a loss and its gradient against the prediction, the other inputs held fixed.

As the MXNet Gluon loss tutorial draws every loss. matplotlib is an optional extra
(`pip install lossdsl[plot]`); without it the command says so and exits.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import LossInputError
from ..frontend.ir import Domain
from ..runtime.loss import Loss
from ..runtime.protocol import LossKind


def _span(domain: Domain, low: float, high: float) -> np.ndarray:
    """Prediction values across [low, high], kept inside the input's domain."""
    if domain.choices is not None:
        raise LossInputError("the first input takes a finite set of values: nothing to draw against")
    margin = 1e-3 * (high - low)
    low = max(low, domain.low + (margin if domain.low_open else 0.0))
    high = min(high, domain.high - (margin if domain.high_open else 0.0))
    return np.linspace(low, high, 401)


def _held(domain: Domain, given: float | None) -> float:
    """The value another input is held at: `given`, else 0 for a real target, the largest choice
    of a label set (a positive label), or 1 clipped to a bounded domain (a unit variance)."""
    if given is not None:
        return given
    if domain.choices is not None:
        return max(domain.choices)
    return 0.0 if domain.unbounded else float(np.clip(1.0, domain.low, domain.high))


def plot(losses: list[Loss], output: str | Path, target: float | None = None,
         span: tuple[float, float] = (-3.0, 3.0)) -> Path:
    """Draw each loss (top) and its gradient (bottom) against its first input; writes `output`."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise LossInputError("plotting needs matplotlib: pip install lossdsl[plot]") from None
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(7, 7), sharex=True)
    for loss in losses:
        kind = loss.signature.kind
        if kind is not LossKind.ELEMENTWISE:
            what = {LossKind.SEQUENCE: "a sequence loss", LossKind.HEAD: "a linear head"}.get(kind, "a loss over an axis")
            raise LossInputError(f"{loss.name} is {what}: plot draws elementwise losses")
        first, *others = [i for i in loss.signature.inputs if i.default is None]
        x = _span(first.domain, *span)
        held = [np.full_like(x, _held(i.domain, target)) for i in others]
        fixed = ", ".join(f"{i.name} = {h[0]:g}" for i, h in zip(others, held))
        values, grads = loss.value_and_grad(x, *held, reduction="none")
        grad = grads[0] if isinstance(grads, tuple) else grads
        label = loss.name + "".join(f", {k}={v:g}" for k, v in loss.params.items() if isinstance(v, float))
        top.plot(x, values, label=label)
        bottom.plot(x, grad, label=label)
    top.set_ylabel("loss")
    bottom.set_ylabel(f"d loss / d {first.name}")
    bottom.set_xlabel(f"{first.name} ({fixed})" if fixed else first.name)
    top.legend()
    for axes in (top, bottom):
        axes.grid(alpha=0.3)
    figure.tight_layout()
    output = Path(output)
    figure.savefig(output, dpi=100)
    plt.close(figure)
    return output
