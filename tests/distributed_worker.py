"""One process of tests/test_sharding_torch.py: joins a gloo group on loopback, computes every case
with its slice of the classes through lossdsl.torch.ShardedLoss (and its micro-batch through
lossdsl.torch.Loss's global reductions under DistributedDataParallel), and saves values and gradients.

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


def per_row():
    """(sample weights, an upstream gradient) for reduction="none": one per row, not uniform."""
    rng = np.random.default_rng(11)
    return rng.uniform(0.5, 2.0, ROWS), rng.normal(size=ROWS)


DDP_ROWS = [0, 8, 13]  # unequal micro-batches; the ignored rows all in the first


def ddp_data():
    """(inputs (13, 4), class labels with ignored rows, regression targets), the same in every process."""
    rng = np.random.default_rng(9)
    y = rng.integers(0, CLASSES, DDP_ROWS[-1])
    y[[1, 2, 5]] = -100
    return rng.normal(size=(DDP_ROWS[-1], 4)), y, rng.normal(size=DDP_ROWS[-1])


def ddp_sum_labels():
    """ddp_data's labels with the second micro-batch's all ignored: its process's sum is 0."""
    y = ddp_data()[1].copy()
    y[DDP_ROWS[1]:] = -100
    return y


DDP_CASES = {  # name: (spec, labels: "classes", "all ignored" or "regression", reduction)
    "ddp_ce": ("cross_entropy", "classes", "global_mean"),
    "ddp_huber": ("huber", "regression", "global_mean"),
    "ddp_ce_sum": ("cross_entropy", "all ignored", "global_sum"),
    "ddp_huber_sum": ("huber", "regression", "global_sum"),
}


def ddp_model():
    torch.manual_seed(0)
    return torch.nn.Linear(4, CLASSES).double()


def ddp_case(rank: int, results: dict) -> None:
    """reduction="global_mean" and "global_sum" inside DistributedDataParallel: the parameters' gradients
    after DDP's averaging, for a loss over classes (ignored rows) and an elementwise one."""
    from torch.nn.parallel import DistributedDataParallel
    mine = slice(DDP_ROWS[rank], DDP_ROWS[rank + 1])
    x, y, target = (torch.tensor(a[mine]) for a in ddp_data())
    labels_of = {"classes": y, "all ignored": torch.tensor(ddp_sum_labels()[mine]), "regression": target}
    for name, (spec, labels, reduction) in DDP_CASES.items():
        model = DistributedDataParallel(ddp_model())
        outputs = model(x)
        prediction = outputs if spec == "cross_entropy" else outputs[:, 0]
        value = lossdsl.torch.Loss(spec, reduction=reduction)(prediction, labels_of[labels], **(
            {"axis": -1} if spec == "cross_entropy" else {}))
        value.backward()
        results[f"{name}/value"] = value.detach().numpy()
        results[f"{name}/weight"] = model.module.weight.grad.numpy()
        results[f"{name}/bias"] = model.module.bias.grad.numpy()


def head_data():
    """(input (11, 6), linear_weight (10, 6), linear_bias, labels with one ignored, class weights)."""
    rng = np.random.default_rng(10)
    y = rng.integers(0, CLASSES, ROWS)
    y[0] = -100
    return (rng.normal(size=(ROWS, 6)), rng.normal(size=(CLASSES, 6)), rng.normal(size=CLASSES), y,
            rng.uniform(0.5, 2.0, CLASSES))


def head_case(rank: int, results: dict) -> None:
    """linear_cross_entropy with linear_weight split by rows (the unequal split): the mean, and the
    per-row losses with sample weights, backward given a per-row gradient."""
    lo, hi = BOUNDS["unequal"][rank], BOUNDS["unequal"][rank + 1]
    x, weight, bias, y, class_weight = head_data()
    sample_weight, upstream = per_row()
    for case, reduction, options in (("head", "mean", {}), ("head_none", "none", {"sample_weight": sample_weight})):
        tensors = [torch.tensor(a, requires_grad=True) for a in (x, weight[lo:hi], bias[lo:hi])]
        loss = lossdsl.torch.ShardedLoss("linear_cross_entropy", reduction=reduction, label_smoothing=0.1)
        value = loss(tensors[0], tensors[1], torch.tensor(y), torch.tensor(class_weight), linear_bias=tensors[2],
                     class_start=lo, classes=CLASSES, **options)
        value.backward(None if reduction == "mean" else torch.tensor(upstream))
        results[f"{case}/value"] = value.detach().numpy()
        for name, tensor in zip(("input", "weight", "bias"), tensors):
            results[f"{case}/{name}"] = tensor.grad.numpy()


def distill_data():
    """Student (11, 6) and teacher (11, 4) hidden states, weights (10, D) and biases, labels with one ignored."""
    rng = np.random.default_rng(11)
    y = rng.integers(0, CLASSES, ROWS)
    y[3] = -100
    return (rng.normal(size=(ROWS, 6)), rng.normal(size=(CLASSES, 6)), rng.normal(size=CLASSES),
            rng.normal(size=(ROWS, 4)), rng.normal(size=(CLASSES, 4)), rng.normal(size=CLASSES), y)


def distill_case(rank: int, results: dict) -> None:
    """linear_distill (JSD, temperature 2) with both heads' weights split by rows (the unequal split)."""
    lo, hi = BOUNDS["unequal"][rank], BOUNDS["unequal"][rank + 1]
    xs, ws, bs, xt, wt, bt, y = distill_data()
    student = [torch.tensor(a, requires_grad=True) for a in (xs, ws[lo:hi], bs[lo:hi])]
    loss = lossdsl.torch.ShardedLoss("linear_distill", divergence="jsd", temperature=2.0)
    value = loss(student[0], student[1], torch.tensor(xt), torch.tensor(wt[lo:hi]), torch.tensor(y),
                 student_bias=student[2], teacher_bias=torch.tensor(bt[lo:hi]), class_start=lo, classes=CLASSES)
    value.backward()
    results["distill/value"] = value.detach().numpy()
    for name, tensor in zip(("input", "weight", "bias"), student):
        results[f"distill/{name}"] = tensor.grad.numpy()


def preference_data():
    """DPO through a head: hidden states (2 pairs x 2, 5 tokens, 6), weight (10, 6), bias, labels with the
    prompt ignored, a mask with padding at the end, the reference's sequence log-probabilities."""
    rng = np.random.default_rng(12)
    labels = rng.integers(0, CLASSES, (4, 5))
    labels[:, 0] = -100
    mask = np.ones((4, 5))
    mask[3, -2:] = 0
    return (rng.normal(size=(4, 5, 6)), rng.normal(size=(CLASSES, 6)), rng.normal(size=CLASSES), labels, mask,
            rng.normal(size=2) - 6, rng.normal(size=2) - 6)


def preference_case(rank: int, results: dict) -> None:
    """lossdsl.torch.PreferenceLoss("dpo", head=True, sharded=True) with the weight and bias split by rows."""
    lo, hi = BOUNDS["unequal"][rank], BOUNDS["unequal"][rank + 1]
    hidden, weight, bias, labels, mask, rc, rr = preference_data()
    tensors = [torch.tensor(a, requires_grad=True) for a in (hidden, weight[lo:hi], bias[lo:hi])]
    loss = lossdsl.torch.PreferenceLoss("dpo", head=True, sharded=True, beta=0.2)
    value = loss(tensors[0], tensors[1], torch.tensor(labels), mask=torch.tensor(mask), linear_bias=tensors[2],
                 ref_chosen_logp=torch.tensor(rc), ref_rejected_logp=torch.tensor(rr), class_start=lo,
                 classes=CLASSES)
    value.backward()
    results["dpo/value"] = value.detach().numpy()
    for name, tensor in zip(("input", "weight", "bias"), tensors):
        results[f"dpo/{name}"] = tensor.grad.numpy()


def main(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=60))
    results = {}
    sample_weight, upstream = per_row()
    for split, bounds in BOUNDS.items():
        lo, hi = bounds[rank], bounds[rank + 1]
        for name, (spec, params, whole, sliced) in cases().items():
            # the mean, and the per-row losses with sample weights, backward given a per-row gradient
            for suffix, reduction, weights, grad_output in (("", "mean", None, None),
                                                            ("/none", "none", sample_weight, upstream)):
                mine = torch.tensor(logits()[:, lo:hi], requires_grad=True)
                loss = lossdsl.torch.ShardedLoss(spec, reduction=reduction, **params)
                value = loss(mine, *(torch.tensor(a) for a in whole), *(torch.tensor(a[:, lo:hi]) for a in sliced),
                             class_start=lo, classes=CLASSES, axis=-1,
                             sample_weight=None if weights is None else torch.tensor(weights))
                value.backward(None if grad_output is None else torch.tensor(grad_output))
                results[f"{split}/{name}{suffix}/value"] = value.detach().numpy()
                results[f"{split}/{name}{suffix}/grad"] = mine.grad.numpy()
    head_case(rank, results)
    distill_case(rank, results)
    preference_case(rank, results)
    ddp_case(rank, results)
    dist.barrier()
    dist.destroy_process_group()
    np.savez(out, **results)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
