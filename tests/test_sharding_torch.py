"""The class axis split across two gloo processes on loopback (torch.distributed), started by the
test and bounded in time: every process's loss equals the single-process lossdsl loss and
PyTorch's unsharded one (per row too, backward given any per-row gradient), and the slices'
gradients put together equal the whole gradient; under DistributedDataParallel, global_mean and
global_sum equal the full batch's mean and sum, with its gradient after DDP's averaging."""
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
if not torch.distributed.is_available():
    pytest.skip("this PyTorch has no torch.distributed", allow_module_level=True)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import distributed_worker as worker  # noqa: E402
import lossdsl.torch  # noqa: E402

WORKER = Path(__file__).parent / "distributed_worker.py"
TIME_LIMIT = 180  # seconds for both processes together: a hung collective fails the test, never hangs it


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """Both processes' saved results, or the test fails with what they printed."""
    folder = tmp_path_factory.mktemp("ranks")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    processes = [subprocess.Popen([sys.executable, str(WORKER), str(rank), "2", str(port), str(folder / f"{rank}.npz")],
                                  env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for rank in range(2)]
    outputs = []
    try:
        for process in processes:
            outputs.append(process.communicate(timeout=TIME_LIMIT)[0])
    except subprocess.TimeoutExpired:
        for process in processes:
            process.kill()
        pytest.fail(f"the gloo processes did not finish within {TIME_LIMIT} s")
    for process, output in zip(processes, outputs):
        assert process.returncode == 0, output
    return [dict(np.load(folder / f"{rank}.npz")) for rank in range(2)]


@pytest.mark.parametrize("split", worker.BOUNDS)
@pytest.mark.parametrize("name", worker.cases())
def test_two_gloo_processes_give_the_single_process_result(ranks, load_loss, split, name):
    spec, params, whole, sliced = worker.cases()[name]
    expected, expected_grad = load_loss(spec, **params).value_and_grad(worker.logits(), *whole, *sliced, axis=-1)
    _assert_ranks(ranks, f"{split}/{name}", expected, expected_grad)


def _assert_ranks(ranks, key: str, expected, expected_grad, rtol: float = 1e-12) -> None:
    """Every process's value is `expected`; their gradient slices, side by side, are `expected_grad`."""
    for result in ranks:
        np.testing.assert_allclose(result[f"{key}/value"], expected, rtol=1e-12)
    grad = np.concatenate([result[f"{key}/grad"] for result in ranks], axis=1)
    np.testing.assert_allclose(grad, expected_grad, rtol=rtol, atol=1e-15)


@pytest.mark.parametrize("split", worker.BOUNDS)
def test_cross_entropy_equals_pytorch_unsharded(ranks, split):
    """PyTorch's cross_entropy with class weights, ignore_index and label smoothing, plus the z-loss term
    (z * lse^2 per kept row, divided like the rest by the kept rows' class weights)."""
    _, params, (y, class_weight), _ = worker.cases()["cross_entropy"]
    logits = torch.tensor(worker.logits(), requires_grad=True)
    target, weights = torch.tensor(y), torch.tensor(class_weight)
    kept = target != -100
    ce = torch.nn.functional.cross_entropy(logits, target, weight=weights, label_smoothing=params["label_smoothing"])
    z = params["z_loss"] * (torch.logsumexp(logits, dim=1)[kept] ** 2).sum() / weights[target[kept]].sum()
    (ce + z).backward()
    _assert_ranks(ranks, f"{split}/cross_entropy", (ce + z).item(), logits.grad.numpy(), rtol=1e-11)


@pytest.mark.parametrize("split", worker.BOUNDS)
@pytest.mark.parametrize("name", worker.cases())
def test_per_row_losses_give_the_single_process_result(ranks, load_loss, split, name):
    """reduction="none" with sample weights, backward given a non-uniform per-row gradient: the rows'
    losses, and the gradient of sum(grad_output * loss)."""
    spec, params, whole, sliced = worker.cases()[name]
    sample_weight, upstream = worker.per_row()
    loss, arguments = load_loss(spec, **params), (worker.logits(), *whole, *sliced)
    expected = loss(*arguments, axis=-1, reduction="none", sample_weight=sample_weight)
    _, expected_grad = loss.value_and_grad(*arguments, axis=-1, reduction="sum", sample_weight=sample_weight * upstream)
    _assert_ranks(ranks, f"{split}/{name}/none", expected, expected_grad)


@pytest.mark.parametrize("split", worker.BOUNDS)
def test_per_row_cross_entropy_equals_pytorch_unsharded(ranks, split):
    """Megatron's vocabulary-parallel case: PyTorch's cross_entropy(reduction="none") with class weights,
    ignore_index and label smoothing, plus z * lse^2 on kept rows, times the sample weights; the
    logits' gradient for a random upstream gradient is PyTorch autograd's on the whole logits."""
    _, params, (y, class_weight), _ = worker.cases()["cross_entropy"]
    sample_weight, upstream = (torch.tensor(a) for a in worker.per_row())
    logits = torch.tensor(worker.logits(), requires_grad=True)
    target = torch.tensor(y)
    ce = torch.nn.functional.cross_entropy(logits, target, weight=torch.tensor(class_weight),
                                           label_smoothing=params["label_smoothing"], reduction="none")
    z = params["z_loss"] * torch.logsumexp(logits, dim=1) ** 2 * (target != -100)
    expected = sample_weight * (ce + z)
    expected.backward(upstream)
    for result in ranks:
        np.testing.assert_allclose(result[f"{split}/cross_entropy/none/value"], expected.detach().numpy(),
                                   rtol=1e-12)
    for rank, result in enumerate(ranks):
        lo, hi = worker.BOUNDS[split][rank], worker.BOUNDS[split][rank + 1]
        np.testing.assert_allclose(result[f"{split}/cross_entropy/none/grad"], logits.grad[:, lo:hi].numpy(),
                                   rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("name", worker.DDP_CASES)
def test_global_reductions_inside_ddp_are_the_full_batch_ones(ranks, name):
    """Micro-batches of 8 and 5 rows. global_mean: the ignored rows all in the first, so the mean of the
    two processes' means would weigh rows unequally; global_sum: every row of the second ignored for
    cross_entropy. Either gives the full batch's value, and after DDP's averaging its gradient."""
    spec, labels, reduction = worker.DDP_CASES[name]
    x, y, target = (torch.tensor(a) for a in worker.ddp_data())
    model = worker.ddp_model()
    outputs = model(x)
    torch_reduction = reduction.removeprefix("global_")
    if spec == "cross_entropy":
        y = torch.tensor(worker.ddp_sum_labels()) if labels == "all ignored" else y
        expected = torch.nn.functional.cross_entropy(outputs, y, reduction=torch_reduction)
    else:
        expected = torch.nn.functional.huber_loss(outputs[:, 0], target, reduction=torch_reduction)
    expected.backward()
    for result in ranks:
        np.testing.assert_allclose(result[f"{name}/value"], expected.item(), rtol=1e-12)
        np.testing.assert_allclose(result[f"{name}/weight"], model.weight.grad.numpy(), rtol=1e-11, atol=1e-15)
        np.testing.assert_allclose(result[f"{name}/bias"], model.bias.grad.numpy(), rtol=1e-11, atol=1e-15)


@pytest.mark.parametrize("case", ["head", "head_none"])
def test_a_linear_head_with_its_weight_split_by_rows(ranks, case):
    """PyTorch's linear_cross_entropy unsharded against two processes holding 3 and 7 of the weight's rows:
    the mean, and the per-row losses times sample weights, backward given a per-row gradient."""
    x, weight, bias, y, class_weight = (torch.tensor(a) for a in worker.head_data())
    sample_weight, upstream = (torch.tensor(a) for a in worker.per_row())
    tensors = [t.clone().requires_grad_(True) for t in (x, weight, bias)]
    expected = torch.nn.functional.linear_cross_entropy(tensors[0], tensors[1], y, linear_bias=tensors[2],
                                                        weight=class_weight, label_smoothing=0.1,
                                                        reduction="mean" if case == "head" else "none")
    if case == "head_none":
        expected = sample_weight * expected
    expected.backward(None if case == "head" else upstream)
    for result in ranks:
        np.testing.assert_allclose(result[f"{case}/value"], expected.detach().numpy(), rtol=1e-12)
        np.testing.assert_allclose(result[f"{case}/input"], tensors[0].grad.numpy(), rtol=1e-11, atol=1e-15)
    for name, tensor in (("weight", tensors[1]), ("bias", tensors[2])):
        np.testing.assert_allclose(np.concatenate([r[f"{case}/{name}"] for r in ranks]), tensor.grad.numpy(),
                                   rtol=1e-11, atol=1e-15)


def test_two_heads_with_both_weights_split_by_rows(ranks):
    """Distillation (generalised JSD) of a teacher head into a student head, written in PyTorch on the
    materialised logits, against two processes each holding 3 and 7 of both weights' rows."""
    xs, ws, bs, xt, wt, bt, y = worker.distill_data()
    student = [torch.tensor(a, requires_grad=True) for a in (xs, ws, bs)]
    s = (student[0] @ student[1].T + student[2]) / 2.0
    t = (torch.tensor(xt) @ torch.tensor(wt).T + torch.tensor(bt)) / 2.0
    ls, lt = torch.log_softmax(s, 1), torch.log_softmax(t, 1)
    lm = torch.log(0.5 * ls.exp() + 0.5 * lt.exp())
    soft = 0.5 * (lt.exp() * (lt - lm)).sum(1) + 0.5 * (ls.exp() * (ls - lm)).sum(1)
    kept = torch.tensor(y != -100)
    hard = torch.nn.functional.cross_entropy(student[0] @ student[1].T + student[2], torch.tensor(y),
                                             reduction="none")
    expected = ((0.5 * hard + 0.5 * soft) * kept).sum() / kept.sum()
    expected.backward()
    for result in ranks:
        np.testing.assert_allclose(result["distill/value"], expected.item(), rtol=1e-12)
        np.testing.assert_allclose(result["distill/input"], student[0].grad.numpy(), rtol=1e-11, atol=1e-15)
    for name, tensor in (("weight", student[1]), ("bias", student[2])):
        np.testing.assert_allclose(np.concatenate([r[f"distill/{name}"] for r in ranks]), tensor.grad.numpy(),
                                   rtol=1e-11, atol=1e-15)


def test_dpo_through_a_head_with_its_weight_split_by_rows(ranks):
    """lossdsl.torch.PreferenceLoss sharded: TRL's DPO (sigmoid, beta 0.2) on PyTorch's materialised logits
    against two processes each holding 3 and 7 of the weight's and bias's rows."""
    hidden, weight, bias, labels, mask, rc, rr = worker.preference_data()
    h, w, b = (torch.tensor(a, requires_grad=True) for a in (hidden, weight, bias))
    target = torch.tensor(labels)
    logp = torch.gather(torch.log_softmax(h @ w.T + b, -1), -1, target.clamp(min=0)[..., None])[..., 0]
    kept = (target != -100) & (torch.tensor(mask) != 0)
    seq = torch.where(kept, logp, torch.zeros_like(logp)).sum(-1)
    margin = (seq[:2] - torch.tensor(rc)) - (seq[2:] - torch.tensor(rr))
    expected = -torch.nn.functional.logsigmoid(0.2 * margin).mean()
    expected.backward()
    for result in ranks:
        np.testing.assert_allclose(result["dpo/value"], expected.item(), rtol=1e-12)
        np.testing.assert_allclose(result["dpo/input"], h.grad.numpy(), rtol=1e-10, atol=1e-15)
    for name, tensor in (("weight", w), ("bias", b)):
        np.testing.assert_allclose(np.concatenate([r[f"dpo/{name}"] for r in ranks]), tensor.grad.numpy(),
                                   rtol=1e-10, atol=1e-15)


def test_a_group_without_sharding_is_refused():
    with pytest.raises(lossdsl.LossInputError, match="sharded=True"):
        lossdsl.torch.PreferenceLoss("dpo", group=object())


def test_an_unknown_reduction_is_refused_with_the_accepted_ones():
    with pytest.raises(lossdsl.LossInputError, match="'mean', 'mean_or_zero', 'sum' or 'none'; got 'batch'"):
        lossdsl.torch.ShardedLoss("cross_entropy", reduction="batch")
