"""The same losses written for the peers lossdsl is measured against.

Each peer maps (catalogue name, numpy inputs) to a zero-argument callable that computes
the mean loss and its gradient with respect to the differentiated inputs, the way a user
of that library would write it: PyTorch's `torch.nn.functional` (eager, and under
`torch.compile`), JAX's `jit(value_and_grad)`, and vectorised NumPy with hand-derived
gradients. A peer that is not installed is left out; one without a case returns None.
"""
from __future__ import annotations

import importlib.util
import math
from typing import Callable

import numpy as np

Runner = Callable[[], object]


# --- NumPy: the formula and its gradient, written by hand -----------------------------------

def _numpy(name: str, inputs) -> Runner | None:
    def huber(pred, target):
        d = pred - target
        a = np.abs(d)
        small = a < 1
        return np.where(small, 0.5 * d * d, a - 0.5).mean(), np.where(small, d, np.sign(d)) / d.size

    def mse(pred, target):
        d = pred - target
        return (d * d).mean(), 2 * d / d.size

    def bce_with_logits(x, y):
        value = np.logaddexp(0, -x) + (1 - y) * x
        sig = 1 / (1 + np.exp(-x))
        return value.mean(), (sig - y) / x.size

    def log_cosh(pred, target):
        d = pred - target
        return (np.logaddexp(d, -d) - math.log(2)).mean(), np.tanh(d) / d.size

    def cross_entropy(x, y):  # classes on axis 1: (N, C) or (N, C, d1, ...)
        shifted = x - x.max(axis=1, keepdims=True)
        logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        picked = np.take_along_axis(logp, y[:, None], axis=1)
        grad = np.exp(logp)
        np.put_along_axis(grad, y[:, None], np.take_along_axis(grad, y[:, None], axis=1) - 1, axis=1)
        return -picked.mean(), grad / y.size

    table = {"huber": huber, "mse": mse, "bce_with_logits": bce_with_logits, "log_cosh": log_cosh,
             "cross_entropy": cross_entropy}
    return (lambda: table[name](*inputs)) if name in table else None


# --- PyTorch ------------------------------------------------------------------------------

def _torch_function(name: str):
    import torch
    import torch.nn.functional as F

    def sigmoid_focal(x, y, alpha=0.25, gamma=2.0):  # torchvision.ops.sigmoid_focal_loss, mean
        p = torch.sigmoid(x)
        ce = F.binary_cross_entropy_with_logits(x, y, reduction="none")
        p_t = p * y + (1 - p) * (1 - y)
        return (ce * (1 - p_t) ** gamma * (alpha * y + (1 - alpha) * (1 - y))).mean()

    def log_cosh(pred, target):
        d = pred - target
        return (d + F.softplus(-2 * d) - math.log(2)).mean()

    return {"huber": F.huber_loss, "mse": F.mse_loss, "bce_with_logits": F.binary_cross_entropy_with_logits,
            "sigmoid_focal": sigmoid_focal, "log_cosh": log_cosh, "cross_entropy": F.cross_entropy,
            "triplet": F.triplet_margin_loss}.get(name)


def _torch(compiled: bool):
    def make(name: str, inputs) -> Runner | None:
        import torch
        function = _torch_function(name)
        if function is None:
            return None
        if compiled:
            torch._dynamo.reset()  # each case starts fresh: no recompile limit carried over between cases
            function = torch.compile(function)
        wrt = 3 if name == "triplet" else 1
        tensors = [torch.tensor(x, requires_grad=i < wrt) for i, x in enumerate(inputs)]

        def run():
            for t in tensors[:wrt]:
                t.grad = None
            function(*tensors).backward()
        return run
    return make


# --- JAX ------------------------------------------------------------------------------------

def _jax(name: str, inputs) -> Runner | None:
    import jax
    import jax.numpy as jnp

    def huber(pred, target):
        a = jnp.abs(pred - target)
        return jnp.where(a < 1, 0.5 * a * a, a - 0.5).mean()

    def bce_with_logits(x, y):
        return (jax.nn.softplus(-x) + (1 - y) * x).mean()

    def sigmoid_focal(x, y, alpha=0.25, gamma=2.0):
        p = jax.nn.sigmoid(x)
        ce = jax.nn.softplus(-x) + (1 - y) * x
        p_t = p * y + (1 - p) * (1 - y)
        return (ce * (1 - p_t) ** gamma * (alpha * y + (1 - alpha) * (1 - y))).mean()

    def cross_entropy(x, y):
        logp = jax.nn.log_softmax(x, axis=1)
        return -jnp.take_along_axis(logp, y[:, None], axis=1).mean()

    def triplet(a, p, n, margin=1.0, eps=1e-6):
        d_ap = jnp.sqrt(((a - p + eps) ** 2).sum(axis=1))
        d_an = jnp.sqrt(((a - n + eps) ** 2).sum(axis=1))
        return jnp.maximum(d_ap - d_an + margin, 0).mean()

    table = {"huber": huber, "mse": lambda p, t: ((p - t) ** 2).mean(), "bce_with_logits": bce_with_logits,
             "sigmoid_focal": sigmoid_focal, "log_cosh": lambda p, t: (jnp.logaddexp(p - t, t - p) - math.log(2)).mean(),
             "cross_entropy": cross_entropy, "triplet": triplet}
    if name not in table:
        return None
    wrt = (0, 1, 2) if name == "triplet" else 0
    step = jax.jit(jax.value_and_grad(table[name], argnums=wrt))
    arrays = [jnp.asarray(x) for x in inputs]
    return lambda: jax.block_until_ready(step(*arrays))


PEERS: dict[str, Callable[[str, tuple], Runner | None]] = {
    "torch eager": _torch(compiled=False),
    "torch.compile": _torch(compiled=True),
    "jax": _jax,
    "numpy": _numpy,
}
_NEEDS = {"torch eager": "torch", "torch.compile": "torch", "jax": "jax", "numpy": "numpy"}


def available_peers() -> dict[str, Callable[[str, tuple], Runner | None]]:
    """The peers whose library is installed."""
    present = {peer: make for peer, make in PEERS.items() if importlib.util.find_spec(_NEEDS[peer])}
    if "torch eager" in present:
        import torch
        torch.set_num_threads(2)
    return present
