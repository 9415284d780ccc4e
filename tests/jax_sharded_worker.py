"""tests/test_sharding_jax.py's process: two JAX CPU devices (XLA_FLAGS set by the test before JAX
starts), the class axis split over them with shard_map; saves the loss and the whole gradient.

Run as: python tests/jax_sharded_worker.py OUT.npz
"""
import sys

import jax
import numpy as np

jax.config.update("jax_enable_x64", True)

import lossdsl.jax  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

ROWS, CLASSES = 7, 10


def cases():
    rng = np.random.default_rng(11)
    y = rng.integers(0, CLASSES, ROWS)
    y[2] = -100
    return {"cross_entropy": ("cross_entropy", dict(label_smoothing=0.1, z_loss=1e-3), [y, rng.uniform(0.5, 2, CLASSES)], []),
            "softmax_focal": ("softmax_focal", dict(gamma=2.0), [y.clip(0)], []),
            "gluon_kl_div": ("gluon_kl_div", {}, [], [rng.dirichlet(np.ones(CLASSES), ROWS)])}


def logits():
    return 2 * np.random.default_rng(12).normal(size=(ROWS, CLASSES))


def main(out: str) -> None:
    shard_map = getattr(jax, "shard_map", None)
    if shard_map is None:
        from jax.experimental.shard_map import shard_map
    mesh = jax.make_mesh((2,), ("classes",))
    results = {"devices": np.array(len(jax.devices()))}
    for name, (spec, params, whole, sliced) in cases().items():
        loss = lossdsl.jax.sharded_loss(spec, axis_name="classes", **params)

        def total(x, *others, loss=loss, count=len(whole)):
            return loss(x, *others, classes=CLASSES, axis=-1)

        specs = (P(None, "classes"), *([P()] * len(whole)), *([P(None, "classes")] * len(sliced)))
        mapped = shard_map(total, mesh=mesh, in_specs=specs, out_specs=P())
        placed = [jax.device_put(a, NamedSharding(mesh, p)) for a, p in zip([logits(), *whole, *sliced], specs)]
        value, grad = jax.jit(jax.value_and_grad(mapped))(*placed)
        results[f"{name}/value"], results[f"{name}/grad"] = np.asarray(value), np.asarray(grad)
    np.savez(out, **results)


if __name__ == "__main__":
    main(sys.argv[1])
