"""The contract between the compiler, the runtime and whoever calls a loss.

- What every compiled loss tells about itself: one `Signature`, and one table of the reductions each
  kind of loss accepts. `Loss`, `LinearHead`, `SequenceLoss` and `ShardedLoss` each carry a
  `signature`; adapters (PyTorch, JAX, plots), the CLI and the class-axis engine read it instead of
  a loss's private state.
- What a generated module holds, named apart from where it runs: a kernel `Kind` and a `Target`
  (`codegen/targets.py` holds each target's dialect). Both are string enums, so cache keys, CLI
  options and messages stay plain text.
- The kernel ABI: every generated module declares `KERNELS`, each kernel's argument names in order
  (without the target's own: a CPU kernel's row range, a CUDA kernel's result array), and the runtime
  binds its arguments by those names (`bind`). Spec names become identifiers by `safe_name`.
"""
from __future__ import annotations

import hashlib
import keyword
from dataclasses import dataclass, field
from enum import Enum
from typing import Mapping

from ..errors import LossError, LossInputError
from ..frontend.ir import Input

Value = float | bool | str


class Target(str, Enum):
    """Where a module's kernels run; `codegen.targets` holds each one's dialect."""
    CPU = "cpu"
    CUDA = "cuda"


class Kind(str, Enum):
    """Which kernels a module holds."""
    LOSS = "loss"  # the value kernel and the fused value-and-gradient kernels: every loss has these
    GRAD_HESS = "grad_hess"  # gradient and second derivative of an elementwise loss (boosting)
    BLOCKS = "blocks"  # a class axis met a block of classes at a time (heads, sharding)
    BLOCKS_OUTPUTS = "blocks_outputs"  # the same, also writing the spec's `output` values

    @property
    def targets(self) -> tuple[Target, ...]:
        """The targets this kind is generated for."""
        return (Target.CPU, Target.CUDA) if self is Kind.LOSS else (Target.CPU,)


class LossKind(str, Enum):
    ELEMENTWISE = "elementwise"  # one value per element
    ROWS = "rows"  # reduced over a class axis: one value per row
    SEQUENCE = "sequence"  # around an intrinsic (CTC, multilabel hinge): one value per sequence or row
    HEAD = "head"  # a rows loss fused with the linear layer that makes its logits
    SHARDED = "sharded"  # a rows loss whose class axis is split across processes


MEANS = ("mean", "mean_or_zero")  # over nothing kept (every label ignored): NaN as PyTorch, or 0
REDUCTIONS: dict[LossKind, tuple[str, ...]] = {  # reduction= that each kind of loss accepts
    LossKind.ELEMENTWISE: (*MEANS, "sum", "none", "batch", "batchmean"),
    LossKind.ROWS: (*MEANS, "sum", "none", "batch", "batchmean"),
    LossKind.SEQUENCE: (*MEANS, "sum", "none", "batch"),
    LossKind.HEAD: (*MEANS, "sum", "none"),
    LossKind.SHARDED: (*MEANS, "sum", "none"),
}


@dataclass(frozen=True)
class Signature:
    """A compiled loss's public metadata. `inputs` are the spec's own (a head's `input`, `linear_weight`
    and `linear_bias` come first and last in `call_inputs`)."""

    name: str
    kind: LossKind
    inputs: tuple[Input, ...]  # the spec's inputs, in call order (name, domain, axis, default)
    wrt: tuple[str, ...]  # the inputs gradients are taken with respect to
    params: Mapping[str, Value] = field(default_factory=dict)  # this instance's parameter values
    axis: str | None = None  # the class axis a loss reduces over (`logits[c]`), if any
    axis_position: int | str | None = None  # the spec's `axis c = k`: where that axis is by default
    labels: tuple[str, ...] = ()  # inputs holding integer labels along the axis (`logits[y]`)
    outputs: tuple[str, ...] = ()  # per-row (per-element) values a call may ask for beside the loss (`output ...`)
    call_inputs: tuple[str, ...] = ()  # the names a call takes, in order
    list_axis: str | None = None  # a second named axis (`ids[k]`: several labels a row), if any
    sequence: str | None = None  # `sequence mean`: how a loss of sequences adds up their tokens ("sum", "mean")

    @property
    def reductions(self) -> tuple[str, ...]:
        return REDUCTIONS[self.kind]

    @property
    def required(self) -> tuple[str, ...]:
        """The spec inputs a call must pass (no default, not optional)."""
        return tuple(i.name for i in self.inputs if i.default is None and not i.optional)

    def check_reduction(self, reduction: str, allowed: tuple[str, ...] | None = None, why: str = "") -> None:
        """Refuse a reduction this loss (or the caller, with `allowed` and the reason `why`) does not accept,
        naming those it does."""
        allowed = self.reductions if allowed is None else tuple(r for r in allowed if r in self.reductions)
        if reduction not in allowed:
            raise LossInputError(f"{self.name}: reduction must be {_alternatives(allowed)}; got {reduction!r}"
                                 + (f" ({why})" if why else ""))


def _alternatives(names: tuple[str, ...]) -> str:
    quoted = [repr(n) for n in names]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"


# --- the kernel ABI -----------------------------------------------------------------------------------

# Names the generated modules themselves use (CPU and CUDA); a spec name equal to one gets a trailing "_".
_TAKEN = set(keyword.kwlist) | {"F", "math", "np", "numba", "abs", "max", "min", "range", "FASTMATH", "kernel", "load",
                                "store", "maximum", "fast_exp", "fast_expm1", "fast_log", "fast_log64", "fast_log1p",
                                "fast_log1p_unit", "fast_ipow", "fast_whole_exponent", "fast_tanh", "fast_tanh_exp",
                                "fast_pow", "fast_pow_log", "fast_pow_from_log", "cuda", "THREADS", "KERNELS",
                                "PARTIALS"}
LONGEST_NAME = 64  # longer spec names are shortened in generated code (LLVM mangles very long ones into clashes)


def safe_name(name: str) -> str:
    """A spec name as an identifier of generated code; one-to-one (`np` → `np_`, `np_` → `np__`, a name
    of over LONGEST_NAME characters → its first 32 and a hash: 46 characters ending in one `_`, a form
    no other rule makes)."""
    if len(name) > LONGEST_NAME:
        return f"{name[:32]}_{hashlib.sha256(name.encode()).hexdigest()[:12]}_"
    return name + "_" if name in _TAKEN or name.endswith("_") else name


def argument(name: str) -> str:
    """The kernel argument that carries the input or numeric parameter `name`."""
    return f"_{safe_name(name)}_"


def bind(module, kernel: str, arguments: Mapping[str, object]) -> tuple:
    """`kernel`'s arguments in the order its module declares (`KERNELS`), picked from `arguments` by name."""
    names = module.KERNELS[kernel]
    missing = [name for name in names if name not in arguments]
    if missing:  # a runtime that disagrees with its generator: a bug in lossdsl, not in the call
        raise LossError(f"internal error: {kernel} takes {', '.join(missing)}, which the runtime did not give")
    return tuple(arguments[name] for name in names)
