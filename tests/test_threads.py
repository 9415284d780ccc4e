"""Large calls split across threads: changing the thread count never fails a call in flight."""
import sys
import threading
import time

import numpy as np
import pytest

import lossdsl
from lossdsl.runtime import threads


def test_set_num_threads_while_calls_are_in_flight(load_loss):
    huber = load_loss("huber")
    rng = np.random.default_rng(0)
    pred, target = rng.normal(size=(2, 4 * threads.MIN_WORK_PER_THREAD))  # large enough for 2+ threads
    expected, expected_grad = huber.value_and_grad(pred, target, reduction="sum")
    before, interval = lossdsl.get_num_threads(), sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads often: the race, if any, shows in a short test
    stop = time.monotonic() + 2.0
    failures: list[BaseException] = []
    calls = [0]

    def call() -> None:
        while time.monotonic() < stop:
            try:
                value, grad = huber.value_and_grad(pred, target, reduction="sum")
                assert np.isclose(value, expected, rtol=1e-12) and np.array_equal(grad, expected_grad)
                calls[0] += 1
            except Exception as exc:  # noqa: BLE001 - reported by the main thread
                failures.append(exc)

    def toggle() -> None:
        count = 1
        while time.monotonic() < stop:
            count = 3 - count
            lossdsl.set_num_threads(count)

    workers = [threading.Thread(target=call) for _ in range(3)] + [threading.Thread(target=toggle)]
    try:
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=30)
    finally:
        lossdsl.set_num_threads(before)
        sys.setswitchinterval(interval)
    assert not any(worker.is_alive() for worker in workers)
    assert not failures, f"{len(failures)} of {calls[0] + len(failures)} calls failed: {failures[0]!r}"
    assert calls[0] > 0


@pytest.mark.parametrize("bad", [0, -1, 2.0, "2", True])
def test_set_num_threads_refuses_what_is_not_a_positive_integer(bad):
    with pytest.raises(ValueError, match="positive integer"):
        lossdsl.set_num_threads(bad)


@pytest.mark.parametrize("count", [1, 3])
def test_pull_runs_every_piece_once_and_reports_a_failure(count):
    """threads.pull: each piece taken by one thread exactly once; a piece's error reaches the caller once no
    thread is still working on a piece (the caller's buffers are then its own again)."""
    before = threads.get_num_threads()
    threads.set_num_threads(count)
    try:
        seen = []
        threads.pull(seen.append, 50)
        assert sorted(seen) == list(range(50))

        started, finished = [], []

        def failing(piece: int) -> None:
            started.append(piece)
            time.sleep(0.001)
            if piece == 7:
                raise RuntimeError("piece 7")
            finished.append(piece)

        with pytest.raises(RuntimeError, match="piece 7"):
            threads.pull(failing, 20)
        assert 7 in started and sorted(finished) == sorted(p for p in started if p != 7)
    finally:
        threads.set_num_threads(before)
