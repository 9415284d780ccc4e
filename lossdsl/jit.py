"""The decorator of generated kernels: Numba's `njit`, with array arguments marked `noalias`.

A row kernel reads its inputs and writes its gradient through computed indices; without
knowing that those arrays never overlap, LLVM keeps such loops scalar (1.7x slower on
softmax cross-entropy). Numba's `parallel=True` adds the mark itself after its alias
analysis; serial kernels get it here. The runtime guarantees it: gradients and outputs are
fresh arrays, or a `grad_out` checked to share no memory with any input. Numba offers no
public option for this, so the flag is set by a subclass of its CPU target options; the
typing and target contexts stay Numba's own (no second initialisation, one cache).
"""
from __future__ import annotations

from typing import Callable

from numba.core import cpu, dispatcher, registry


class _NoAliasOptions(cpu.CPUTargetOptions):
    def finalize(self, flags, options):
        super().finalize(flags, options)
        flags.noalias = True


class _NoAliasTarget(registry.CPUTarget):
    options = _NoAliasOptions
    target_context = property(lambda self: registry.cpu_target.target_context)
    typing_context = property(lambda self: registry.cpu_target.typing_context)


class _KernelDispatcher(dispatcher.Dispatcher):
    targetdescr = _NoAliasTarget("cpu")


def kernel(cache: bool = False, **options) -> Callable[[Callable], dispatcher.Dispatcher]:
    """Like `numba.njit(**options, cache=cache)`, for functions whose array arguments never overlap."""
    def wrap(function: Callable) -> dispatcher.Dispatcher:
        compiled = _KernelDispatcher(py_func=function, locals={}, targetoptions={"nopython": True, **options})
        if cache:
            compiled.enable_caching()
        return compiled
    return wrap
