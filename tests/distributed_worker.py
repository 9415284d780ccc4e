"""One process of tests/test_sharding_torch.py: joins a gloo group on loopback, computes every case
with its slice of the classes through lossdsl.torch.ShardedLoss, and saves values and gradients.

Run as: python tests/distributed_worker.py RANK WORLD PORT OUT.npz
"""
import datetime
import os
import sys

import numpy as np
import torch
import torch.distributed as dist

import lossdsl.torch

ROWS, CLASSES = 11, 10
BOUNDS = {"equal": [0, 5, 10], "unequal": [0, 3, 10]}


def cases():
    """name → (spec, params, whole inputs, inputs sliced with the classes), the same in every process."""
    rng = np.random.default_rng(7)
    y = rng.integers(0, CLASSES, ROWS)
    y[4] = -100
    class_weight = rng.uniform(0.5, 2.0, CLASSES)
    targets = rng.dirichlet(np.ones(CLASSES), ROWS)
    return {
        "cross_entropy": ("cross_entropy", dict(label_smoothing=0.1, z_loss=1e-3), [y, class_weight], []),
        "poly1_ce": ("poly1_ce", dict(epsilon=1.0), [np.maximum(y, 0)], []),
        "softmax_focal": ("softmax_focal", dict(gamma=2.0), [np.maximum(y, 0)], []),
        "gluon_kl_div": ("gluon_kl_div", {}, [], [targets]),
    }


def logits():
    return 3 * np.random.default_rng(8).normal(size=(ROWS, CLASSES))


def main(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=60))
    results = {}
    for split, bounds in BOUNDS.items():
        lo, hi = bounds[rank], bounds[rank + 1]
        for name, (spec, params, whole, sliced) in cases().items():
            mine = torch.tensor(logits()[:, lo:hi], requires_grad=True)
            loss = lossdsl.torch.ShardedLoss(spec, **params)
            value = loss(mine, *(torch.tensor(a) for a in whole), *(torch.tensor(a[:, lo:hi]) for a in sliced),
                         class_start=lo, classes=CLASSES, axis=-1)
            value.backward()
            results[f"{split}/{name}/value"] = value.detach().numpy()
            results[f"{split}/{name}/grad"] = mine.grad.numpy()
    dist.barrier()
    dist.destroy_process_group()
    np.savez(out, **results)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
