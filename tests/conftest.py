"""Shared fixtures: compiled losses are loaded once per test session and shared."""
import functools

import pytest

import lossdsl


@functools.lru_cache(maxsize=None)
def _load(name: str, params: tuple) -> lossdsl.Loss:
    return lossdsl.load(name, **dict(params))


@pytest.fixture(scope="session")
def load_loss():
    """load_loss(name, **params): a Loss shared across tests (kernels compile once)."""
    return lambda name, **params: _load(name, tuple(sorted(params.items())))
