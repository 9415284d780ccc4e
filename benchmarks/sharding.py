"""A class axis split across processes: the collectives lossdsl derives against Megatron-LM's
hand-written vocabulary-parallel cross-entropy, and the time of a 2-process sharded cross-entropy
(torch.distributed, gloo on loopback) against the unsharded one in one process.

Run: python benchmarks/sharding.py [--rows 4096] [--classes 32000] [--repeats 5]. float32 logits,
integer labels, reduction "mean". Each process of the sharded run holds half the classes and one
CPU thread (NUMBA_NUM_THREADS=1, the machine has two); the unsharded run uses both threads.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time

import numpy as np

from harness import machine

# Megatron-LM's VocabParallelCrossEntropy: all-reduce MAX of the row maximum, then SUM of the
# target's logit and SUM of the exp-sum, each one float32 per row (label smoothing adds nothing)
MEGATRON = {"all-reduces": 3, "bytes per row": 12}


def data(rows: int, classes: int):
    rng = np.random.default_rng(0)
    return rng.normal(size=(rows, classes)).astype(np.float32), rng.integers(0, classes, rows)


def worker(rank: int, port: int, rows: int, classes: int, repeats: int) -> None:
    import datetime

    import torch
    import torch.distributed as dist

    import lossdsl.torch
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=datetime.timedelta(seconds=120))
    logits, y = data(rows, classes)
    half = classes // 2
    lo, hi = (0, half) if rank == 0 else (half, classes)
    mine, labels = torch.tensor(logits[:, lo:hi]), torch.tensor(y)
    loss = lossdsl.torch.ShardedLoss("cross_entropy")
    times = []
    for _ in range(repeats + 1):
        mine.grad = None
        mine.requires_grad_(True)
        dist.barrier()
        start = time.perf_counter()
        loss(mine, labels, class_start=lo, classes=classes, axis=-1).backward()
        times.append(time.perf_counter() - start)
    dist.destroy_process_group()
    if rank == 0:
        print(json.dumps(float(np.median(times[1:]))))


def sharded_time(rows: int, classes: int, repeats: int) -> float:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    processes = [subprocess.Popen([sys.executable, __file__, "--worker", str(rank), "--port", str(port),
                                   "--rows", str(rows), "--classes", str(classes), "--repeats", str(repeats)],
                                  env=env, stdout=subprocess.PIPE, text=True) for rank in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in processes]
    return json.loads(outputs[0].strip().splitlines()[-1])


def unsharded_times(rows: int, classes: int, repeats: int) -> dict:
    import torch

    import lossdsl
    logits, y = data(rows, classes)
    ce = lossdsl.load("cross_entropy")
    tensor, labels = torch.tensor(logits, requires_grad=True), torch.tensor(y)

    def torch_call():
        tensor.grad = None
        torch.nn.functional.cross_entropy(tensor, labels).backward()

    runners = {"lossdsl, 1 process": lambda: ce.value_and_grad(logits, y, axis=-1), "torch eager, 1 process": torch_call}
    times = {}
    for name, run in runners.items():
        run()
        measured = []
        for _ in range(repeats):
            start = time.perf_counter()
            run()
            measured.append(time.perf_counter() - start)
        times[name] = float(np.median(measured))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--classes", type=int, default=32000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        worker(args.worker, args.port, args.rows, args.classes, args.repeats)
        return
    import lossdsl
    from lossdsl.classaxis.sharding import describe
    print(machine())
    plan = describe(lossdsl.load("cross_entropy")._backend.block_plan()).splitlines()[-1]
    print(f"\ncross_entropy, lossdsl's plan: {plan}")
    print(f"Megatron-LM's vocabulary-parallel cross-entropy: {MEGATRON['all-reduces']} all-reduces, "
          f"{MEGATRON['bytes per row']} bytes per row")
    times = unsharded_times(args.rows, args.classes, args.repeats)
    times["lossdsl, 2 gloo processes"] = sharded_time(args.rows, args.classes, args.repeats)
    print(f"\n| ({args.rows}, {args.classes}) float32 | value and gradient | vs lossdsl, 1 process |")
    print("|---|---|---|")
    for name, seconds in times.items():
        print(f"| {name} | {seconds * 1e3:.1f} ms | {seconds / times['lossdsl, 1 process']:.2f}x |")


if __name__ == "__main__":
    main()
