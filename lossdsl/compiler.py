"""The whole pipeline in one place: text → IR → resolved IR → SymPy plan → source → Numba module.

Stages 1-2 (`compile_spec`, `_compile`) run when a loss is loaded; stages 3-5 (`build`, called by
`Backend.module`) run on a loss's first call for each dtype, kind and target, and only on a cache
miss. Each numbered line is one stage, in its own folder: frontend/, symbolic/, codegen/, runtime/.
`trace` runs them all at once and keeps every intermediate, for inspection and tests.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Mapping

import numba
import numpy as np

from .classaxis.heads import LinearHead
from .runtime.protocol import Kind, Target
from .errors import LossInputError, SpecLimitError, SpecNameError, SpecTypeError, UnknownLossError
from .frontend import ir, registry, staging
from .frontend.resolve import ResolvedLoss, Value, resolve
from .frontend.resources import source_fingerprint
from .runtime import cache
from .runtime.loss import Loss, split_bound
from .runtime.sequence import RowLoss, SequenceLoss

__version__ = "0.1.0"


def compile_spec(text: str | bytes, name: str | None = None, file: str = "<string>",
                 params: Mapping[str, Value] | None = None) -> Loss | SequenceLoss | LinearHead:
    """Compile the loss `name` (default: the last one) of spec `text` into a callable `Loss`."""
    from .frontend.parse import decode, parse  # Lark: not needed to load a catalogue loss
    text = decode(text, file)
    losses = parse(text, file)                                       # 1. frontend: Lark → IR
    return _compile(_choose(losses, name, file), text, params, _names_in_file(losses))


@dataclass(frozen=True)
class Stages:
    """Every intermediate of one loss's compile, kept for inspection (as pystencils' driver keeps its own)."""
    text: str  # the spec text, decoded
    definition: ir.LossDef  # 1. the loss's IR, as parsed
    resolved: ResolvedLoss  # 2. names checked, parameters bound, called losses inlined
    plan: object  # 3. the SymPy plan of `kind`: derivatives, stability rewrites, CSE
    source: str  # 4. the generated module's Python source
    loss: Loss | LinearHead  # 5. the callable loss (Numba compiles the source on its first call)


def trace(text: str | bytes, name: str | None = None, file: str = "<string>", dtype: str = "float64",
          kind: Kind = Kind.LOSS, target: Target = Target.CPU, **params: Value) -> Stages:
    """Compile the loss `name` of spec `text` stage by stage, keeping each stage's result."""
    from .frontend.parse import decode, parse
    text = decode(text, file)
    losses = parse(text, file)                                       # 1. frontend: Lark → IR
    definition = _choose(losses, name, file)
    if staging.uses_intrinsic(definition):
        raise LossInputError(f"{definition.name} calls an intrinsic: it compiles as the ordinary losses before and "
                             "after it (lossdsl.frontend.staging), trace those")
    resolved, options = _resolve(definition, text, params, _names_in_file(losses))  # 2. frontend: resolve
    kind, target = Kind(kind), Target(target)
    plan = plan_for(resolved, kind)                                  # 3. symbolic
    source = build(resolved, np.dtype(dtype), kind, target)          # 4. codegen
    return Stages(text, definition, resolved, plan, source, _callable(definition, resolved, options, text))


def _compile(loss: ir.LossDef, text: str, params: Mapping[str, Value] | None,
             local: Mapping[str, ir.LossDef]) -> Loss | SequenceLoss | LinearHead:
    file = loss.file
    if staging.uses_intrinsic(loss):
        return _compile_sequence(staging.split(loss, text), text, params or {}, local)

    resolved, options = _resolve(loss, text, params, local)          # 2. frontend: names, params, inlining
    return _callable(loss, resolved, options, text)                  # 3-5. on first call: see `build`


def _resolve(loss: ir.LossDef, text: str, params: Mapping[str, Value] | None,
             local: Mapping[str, ir.LossDef]) -> tuple[ResolvedLoss, dict]:
    """The resolved loss, and the load-time options that are not parameters (bound inputs, check_domains)."""
    def lookup(called: str, from_file: str):  # composition: a loss's own file first, then the catalogue
        return (local.get(called) if from_file == loss.file else None) or registry.find(called)

    params = dict(params or {})
    check_domains = bool(params.pop("check_domains", True))
    # keywords naming an optional input bind it (class weights given at load)
    bound, params = split_bound(loss.name, loss.inputs, {p.name for p in loss.params}, params)
    options = {**bound, "check_domains": check_domains} if bound or not check_domains else {}
    return resolve(loss, params, lookup, text), options


def _callable(loss: ir.LossDef, resolved: ResolvedLoss, options: dict, text: str) -> Loss | LinearHead:
    loss_object = Loss(resolved, Backend(resolved))
    if options:
        loss_object = loss_object.with_params(**options)
    if loss.head != "linear":
        return loss_object
    try:
        return loss_object.with_linear(heads=tuple(n.id for n in loss.head_inputs) or None)
    except LossInputError as exc:  # the spec's `head linear` cannot apply: a spec error, at its loss
        raise SpecTypeError(f"`head linear` does not apply: {exc}", loss.file, loss.pos.line, loss.pos.column,
                            text) from None


def _compile_sequence(stages: staging.SequenceStages, text: str, params: Mapping[str, Value],
                      local: Mapping[str, ir.LossDef]) -> SequenceLoss:
    """A loss around an intrinsic: its stages before and after it compiled as ordinary losses, run as a
    SequenceLoss (a RowLoss for a rows intrinsic)."""
    before, after, mean = (None if stage is None else _compile(stage, text, params, local)
                           for stage in (stages.before, stages.after, stages.mean))
    runtime = RowLoss if stages.intrinsic.kind == "rows" else SequenceLoss
    return runtime(stages, before, after, mean, lambda values: _compile_sequence(stages, text, values, local))


class Backend:
    """What a `Loss` asks of the compiler: one kernel module per (dtype, kind, target), built on first use."""

    def __init__(self, resolved: ResolvedLoss):
        self.resolved = resolved
        self._modules: dict[tuple[np.dtype, Kind, Target], ModuleType] = {}  # a call costs no hashing or file access

    def module(self, dtype: np.dtype, kind: Kind = Kind.LOSS, target: Target = Target.CPU,
               fresh: bool = False) -> ModuleType:
        """The kernel module of `kind` for `dtype` on `target`, from the on-disk cache or built (stages 3-5);
        `fresh` first discards Numba's cached machine code for it."""
        dtype, kind, target = np.dtype(dtype), Kind(kind), Target(target)
        if fresh or (dtype, kind, target) not in self._modules:
            key = kernel_key(self.resolved, dtype, kind, target)
            if fresh:
                cache.discard_machine_code(self.resolved.name, key)
            self._modules[dtype, kind, target] = cache.load(                         # 5. Numba, via the cache
                self.resolved.name, key, lambda: build(self.resolved, dtype, kind, target, key))
        return self._modules[dtype, kind, target]

    def source(self, dtype: np.dtype = np.dtype(np.float64), kind: Kind = Kind.LOSS,
               target: Target = Target.CPU) -> str:
        return build(self.resolved, np.dtype(dtype), Kind(kind), Target(target))

    def plan(self):
        return derive_plan(self.resolved)

    def block_plan(self, outputs: bool = False):
        return derive_block_plan(self.resolved, outputs)

    def explain(self, latex: bool = False) -> str:
        from .symbolic.derive import at, explain
        plan = self.plan()
        with at(self.resolved, self.resolved.locals[-1]):  # printing recurses as SymPy does
            return explain(plan, latex)


def build(resolved: ResolvedLoss, dtype: np.dtype, kind: Kind, target: Target, key: str | None = None) -> str:
    """Stages 3 and 4 for one module: the SymPy plan of `kind`, printed for `target` as Python source."""
    if target not in kind.targets:
        raise ValueError(f"{kind.value} kernels are generated for {', '.join(t.value for t in kind.targets)} only")
    from .codegen import blocks, elementwise, row_module  # SymPy and code generation: only on a cache miss
    from .codegen.printer import UnsupportedExpression
    from .codegen.targets import TARGETS
    from .symbolic.derive import FormulaTooLarge
    key = key or kernel_key(resolved, dtype, kind, target)
    header = (f"# Generated by lossdsl {__version__}: loss {resolved.name}, {dtype.name}, {kind.value}, "
              f"{target.value.upper()}.\n# Cache key {key}. Regenerate with `lossdsl compile`.")
    try:
        plan = plan_for(resolved, kind)                                          # 3. symbolic
        if kind is Kind.GRAD_HESS:                                               # 4. codegen
            return elementwise.generate_grad_hess(plan, dtype, header, TARGETS[target])
        if kind in (Kind.BLOCKS, Kind.BLOCKS_OUTPUTS):
            return blocks.generate_blocks(plan, dtype, header)
        generate = elementwise.generate if resolved.axis is None else row_module.generate_rows
        return generate(plan, dtype, header, TARGETS[target])
    except UnsupportedExpression as exc:
        raise resolved.error(SpecTypeError, f"cannot generate code: {exc}", resolved.locals[-1]) from None
    except (RecursionError, FormulaTooLarge) as exc:  # the printer recurses as SymPy does; row kernels lower
        message = (f"`{resolved.name}` is nested too deeply to generate code for"
                   if isinstance(exc, RecursionError) else f"`{resolved.name}`: {exc}")
        raise resolved.error(SpecLimitError, message, resolved.locals[-1]) from None


def plan_for(resolved: ResolvedLoss, kind: Kind):
    """Stage 3 for a module of `kind`: the loss's plan, its second derivative, or its per-block partials."""
    if kind is Kind.GRAD_HESS and resolved.axis is None:
        from .symbolic.derive import derive_hessian
        return derive_hessian(derive_plan(resolved))
    if kind in (Kind.BLOCKS, Kind.BLOCKS_OUTPUTS):
        if resolved.axis is None:
            raise LossInputError(f"{resolved.name} is elementwise: {kind.value} kernels are for a loss over a class axis")
        return derive_block_plan(resolved, kind is Kind.BLOCKS_OUTPUTS)
    if kind is Kind.GRAD_HESS and resolved.axis is not None:
        raise LossInputError(f"{resolved.name} is a loss over an axis: grad_hess kernels are for elementwise losses")
    return derive_plan(resolved)


_PLANS: dict[tuple[str, str], object] = {}  # by cache text: losses that differ only in numeric parameters share one


def derive_plan(resolved: ResolvedLoss):
    """Stage 3: the loss's SymPy plan (derivatives, stability rewrites, CSE), made once per spec."""
    key = resolved.cache_text(), "plan"
    if key not in _PLANS:
        from .symbolic.derive import derive  # SymPy work: only when a module is generated or formulas are asked for
        from .symbolic.reductions import derive_rows
        _PLANS[key] = derive(resolved) if resolved.axis is None else derive_rows(resolved)
    return _PLANS[key]


def derive_block_plan(resolved: ResolvedLoss, outputs: bool = False):
    """The row plan's reductions as partials over blocks of the class axis (lossdsl.classaxis.partials);
    with `outputs`, those the spec's `output` values need too."""
    key = resolved.cache_text(), f"blocks{outputs}"
    if key not in _PLANS:
        from .classaxis.partials import block_plan
        _PLANS[key] = block_plan(derive_plan(resolved), outputs)
    return _PLANS[key]


def kernel_key(resolved: ResolvedLoss, dtype: np.dtype, kind: Kind = Kind.LOSS, target: Target = Target.CPU) -> str:
    return cache.digest(resolved.cache_text(), np.dtype(dtype).name, Kind(kind).value, Target(target).value,
                        _compiler_fingerprint(),
                        numba.__version__, np.__version__, _sympy_version())


@functools.lru_cache(maxsize=1)
def _sympy_version() -> str:
    """SymPy shapes the generated code (CSE, simplification); read without importing it."""
    from importlib.metadata import version
    return version("sympy")


@functools.lru_cache(maxsize=1)
def _compiler_fingerprint() -> str:
    """A hash of the code that shapes generated modules, so editing the compiler invalidates the cache."""
    return cache.digest(__version__, source_fingerprint(
        "frontend/resolve.py", "symbolic", "codegen", "classaxis/partials.py", "runtime/kernel_math.py",
        "runtime/jit.py"))


def _names_in_file(losses: tuple[ir.LossDef, ...]) -> dict[str, ir.LossDef]:
    names: dict[str, ir.LossDef] = {}
    for loss in losses:
        for name in (loss.name, *loss.aliases):
            if name in names:
                raise SpecNameError(f"the name {name} is defined twice in this file", loss.file, loss.pos.line,
                                    loss.pos.column)
            names[name] = loss
    return names


def _choose(losses: tuple[ir.LossDef, ...], name: str | None, file: str) -> ir.LossDef:
    if name is None:
        return losses[-1]
    for loss in losses:
        if name == loss.name or name in loss.aliases:
            return loss
    names = ", ".join(d.name + (f" (also {', '.join(d.aliases)})" if d.aliases else "") for d in losses)
    raise UnknownLossError(f"{file} has no loss named {name!r}; it defines {names}")


def load(name_or_path: str | Path, name: str | None = None, /, **params: Value) -> Loss | SequenceLoss | LinearHead:
    """A catalogue loss by name (or alias), or a loss of a `.loss` file: its last, or the one called
    `name` (also written `"path/to/file.loss::name"`).

    Keywords set its parameters; one that names an optional input binds it, so calls that leave the
    input out use it (`load("cross_entropy", class_weight=w)`, as PyTorch's `weight=` at construction);
    `check_domains=False` skips the checks of inputs against their declared domains."""
    text = str(name_or_path)
    if "::" in text and not Path(text).is_file():
        if name is not None:
            raise TypeError(f"load({text!r}, {name!r}): name the loss once, after :: or as the second argument")
        text, _, name = text.rpartition("::")
    path = Path(text)
    if text.endswith(".loss") or path.is_file():
        if not path.is_file():
            raise UnknownLossError(f"no spec file {str(path)!r}")
        return compile_spec(path.read_bytes(), name, str(path), params)
    if name is not None:
        raise UnknownLossError(f"no spec file {text!r}: a loss name ({text}::{name}) chooses among a file's losses")
    loss, source = registry.get(text)  # parsed already (the index is cached)
    return _compile(loss, source, params, {})
