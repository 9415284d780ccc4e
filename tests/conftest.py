"""Shared fixtures: compiled losses are loaded once per test session and shared."""
import functools
import os

# CUDA kernels run under Numba's simulator unless asked otherwise (NUMBA_ENABLE_CUDASIM=0 on a
# machine with a GPU): set before Numba is first imported, which reads it then.
os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")

import pytest

import lossdsl


@functools.lru_cache(maxsize=None)
def _load(name: str, params: tuple) -> lossdsl.Loss:
    return lossdsl.load(name, **dict(params))


@pytest.fixture(scope="session")
def load_loss():
    """load_loss(name, **params): a Loss shared across tests (kernels compile once)."""
    return lambda name, **params: _load(name, tuple(sorted(params.items())))
