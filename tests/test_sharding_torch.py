"""The class axis split across two gloo processes on loopback (torch.distributed), started by the
test and bounded in time: every process's loss equals the single-process lossdsl loss and
PyTorch's unsharded one, and the slices' gradients put together equal the whole gradient."""
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
    for result in ranks:
        np.testing.assert_allclose(result[f"{split}/{name}/value"], expected, rtol=1e-12)
    grad = np.concatenate([result[f"{split}/{name}/grad"] for result in ranks], axis=1)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-12, atol=1e-15)


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
    for result in ranks:
        np.testing.assert_allclose(result[f"{split}/cross_entropy/value"], (ce + z).item(), rtol=1e-12)
    grad = np.concatenate([result[f"{split}/cross_entropy/grad"] for result in ranks], axis=1)
    np.testing.assert_allclose(grad, logits.grad.numpy(), rtol=1e-11, atol=1e-15)


@pytest.mark.parametrize("name", ["ddp_ce", "ddp_huber"])
def test_global_mean_inside_ddp_is_the_full_batch_mean(ranks, name):
    """Micro-batches of 8 and 5 rows, the ignored rows all in the first: the mean of the two processes'
    means would weigh rows unequally; global_mean gives the full batch's mean and its gradient."""
    x, y, target = (torch.tensor(a) for a in worker.ddp_data())
    model = worker.ddp_model()
    outputs = model(x)
    if name == "ddp_ce":
        expected = torch.nn.functional.cross_entropy(outputs, y)
    else:
        expected = torch.nn.functional.huber_loss(outputs[:, 0], target)
    expected.backward()
    for result in ranks:
        np.testing.assert_allclose(result[f"{name}/value"], expected.item(), rtol=1e-12)
        np.testing.assert_allclose(result[f"{name}/weight"], model.weight.grad.numpy(), rtol=1e-11, atol=1e-15)
        np.testing.assert_allclose(result[f"{name}/bias"], model.bias.grad.numpy(), rtol=1e-11, atol=1e-15)


def test_a_linear_head_with_its_weight_split_by_rows(ranks):
    """PyTorch's linear_cross_entropy unsharded against two processes holding 3 and 7 of the weight's rows."""
    x, weight, bias, y, class_weight = (torch.tensor(a) for a in worker.head_data())
    tensors = [t.clone().requires_grad_(True) for t in (x, weight, bias)]
    expected = torch.nn.functional.linear_cross_entropy(tensors[0], tensors[1], y, linear_bias=tensors[2],
                                                        weight=class_weight, label_smoothing=0.1)
    expected.backward()
    for result in ranks:
        np.testing.assert_allclose(result["head/value"], expected.item(), rtol=1e-12)
        np.testing.assert_allclose(result["head/input"], tensors[0].grad.numpy(), rtol=1e-11, atol=1e-15)
    for name, tensor in (("weight", tensors[1]), ("bias", tensors[2])):
        np.testing.assert_allclose(np.concatenate([r[f"head/{name}"] for r in ranks]), tensor.grad.numpy(),
                                   rtol=1e-11, atol=1e-15)
