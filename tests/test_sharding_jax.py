"""The class axis split over two JAX CPU devices with shard_map (psum and pmax inside the adapter's
custom_vjp), in a process of its own started by the test (the device count is fixed when JAX
starts): the loss and the gradient equal the single-process lossdsl result."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("jax")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import jax_sharded_worker as worker  # noqa: E402

TIME_LIMIT = 180


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    out = tmp_path_factory.mktemp("jax") / "result.npz"
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    try:
        done = subprocess.run([sys.executable, str(Path(worker.__file__)), str(out)], env=env, capture_output=True,
                              text=True, timeout=TIME_LIMIT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the JAX process did not finish within {TIME_LIMIT} s")
    assert done.returncode == 0, done.stdout + done.stderr
    return dict(np.load(out))


def test_two_devices(result):
    assert result["devices"] == 2


@pytest.mark.parametrize("name", worker.cases())
def test_shard_map_gives_the_single_process_result(result, load_loss, name):
    spec, params, whole, sliced = worker.cases()[name]
    expected, expected_grad = load_loss(spec, **params).value_and_grad(worker.logits(), *whole, *sliced, axis=-1)
    np.testing.assert_allclose(result[f"{name}/value"], expected, rtol=1e-12)
    np.testing.assert_allclose(result[f"{name}/grad"], expected_grad, rtol=1e-12, atol=1e-15)
