"""lossdsl: loss functions written as formulas, compiled to fused Numba kernels.

    import lossdsl
    huber = lossdsl.load("huber", delta=0.5)
    value, grad = huber.value_and_grad(pred, target)
"""
from __future__ import annotations

from .frontend import registry
from .compiler import __version__, compile_spec, load
from .errors import (LossCacheError, LossDeviceError, LossError, LossInputError, LossLabelError, LossParameterError,
                     LossSpecError, SpecLimitError, SpecNameError, SpecSyntaxError, SpecTypeError,
                     UnknownLossError)
from .classaxis.heads import LinearHead
from .runtime.loss import Loss
from .runtime.sequence import SequenceLoss
from .runtime.threads import get_num_threads, set_num_threads
from .runtime.tokens import token_weights
from .runtime.preference import PreferenceLoss, preference


def compile(source: str | bytes, name: str | None = None, file: str = "<string>", /,  # noqa: A001 - the public verb
            **params) -> Loss | SequenceLoss | LinearHead:
    """Compile a loss from spec text (the last loss in it, or the one called `name`).

    `file` is the name errors give the text (`compile(text, None, "my.loss")`: `my.loss:2:12: ...`);
    the arguments before `**params` are positional, so a loss parameter may have any of their names."""
    return compile_spec(source, name, file, params)


def catalogue() -> list[str]:
    """Names of the built-in losses."""
    return registry.names()


__all__ = ["load", "compile", "catalogue", "Loss", "SequenceLoss", "LinearHead", "LossError", "LossSpecError",
           "SpecSyntaxError", "SpecNameError", "SpecTypeError", "SpecLimitError", "LossParameterError", "LossInputError",
           "LossLabelError", "LossDeviceError", "LossCacheError", "UnknownLossError", "get_num_threads",
           "set_num_threads", "token_weights", "preference", "PreferenceLoss", "__version__"]
