"""The whole pipeline in one place: text → IR → resolved IR → SymPy plan → Numba module.

`compile_spec` reads top to bottom like the pipeline it runs; each line is one
stage, and each stage lives in its own module.
"""
from __future__ import annotations

import functools
from pathlib import Path
from types import ModuleType
from typing import Mapping

import numba
import numpy as np

from . import cache, ir, registry, staging
from .errors import LossInputError, SpecNameError, SpecTypeError, UnknownLossError
from .resolve import ResolvedLoss, Value, resolve
from .resources import source_fingerprint
from .heads import LinearHead
from .runtime import Loss, split_bound
from .sequence import RowLoss, SequenceLoss

__version__ = "0.1.0"


def compile_spec(text: str | bytes, name: str | None = None, file: str = "<string>",
                 params: Mapping[str, Value] | None = None) -> Loss | SequenceLoss | LinearHead:
    """Compile the loss `name` (default: the last one) of spec `text` into a callable `Loss`."""
    from .parse import decode, parse  # Lark: not needed to load a catalogue loss
    text = decode(text, file)
    losses = parse(text, file)                                       # 1. Lark → IR
    return _compile(_choose(losses, name, file), text, params, _names_in_file(losses))


def _compile(loss: ir.LossDef, text: str, params: Mapping[str, Value] | None,
             local: Mapping[str, ir.LossDef]) -> Loss | SequenceLoss | LinearHead:
    file = loss.file
    if staging.uses_intrinsic(loss):
        return _compile_sequence(staging.split(loss, text), text, params or {}, local)

    def lookup(called: str, from_file: str):  # composition: a loss's own file first, then the catalogue
        return (local.get(called) if from_file == file else None) or registry.find(called)

    params = dict(params or {})
    check_domains = bool(params.pop("check_domains", True))
    # keywords naming an optional input bind it (class weights given at load)
    bound, params = split_bound(loss.name, loss.inputs, {p.name for p in loss.params}, params)
    try:
        resolved = resolve(loss, params, lookup, text)               # 2. names, params, inlining
    except RecursionError:
        raise SpecTypeError("expression nested too deeply", file, loss.pos.line, loss.pos.column) from None
    loss_object = Loss(resolved, Backend(resolved))                  # 3-5. SymPy, codegen, Numba: lazily, per dtype
    if bound or not check_domains:
        loss_object = loss_object.with_params(**bound, check_domains=check_domains)
    if loss.head != "linear":
        return loss_object
    try:
        return loss_object.with_linear()
    except LossInputError as exc:  # the spec's `head linear` cannot apply: a spec error, at its loss
        raise SpecTypeError(f"`head linear` does not apply: {exc}", file, loss.pos.line, loss.pos.column,
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
    """What a `Loss` asks of the compiler: kernel modules per dtype, their source, the formulas."""

    def __init__(self, resolved: ResolvedLoss):
        self.resolved = resolved
        self._modules: dict[tuple[np.dtype, str], ModuleType] = {}  # so a call costs no hashing or file access
        self._blocks = {}

    def module(self, dtype: np.dtype, fresh: bool = False, target: str = "cpu") -> ModuleType:
        """The kernel module for `dtype` and `target` ("cpu", "cuda", or, made only when asked for,
        "grad_hess": the CPU's gradient-and-second-derivative kernel, "blocks" and "blocks_outputs":
        the CPU's kernels for a class axis met a block of classes at a time); `fresh` first
        discards Numba's cached machine code for it."""
        dtype = np.dtype(dtype)
        if fresh or (dtype, target) not in self._modules:
            key = kernel_key(self.resolved, dtype, target)
            if fresh:
                cache.discard_machine_code(self.resolved.name, key)
            self._modules[dtype, target] = cache.load(self.resolved.name, key,
                                                      lambda: self.source(dtype, key, target))
        return self._modules[dtype, target]

    def source(self, dtype: np.dtype = np.dtype(np.float64), key: str | None = None, target: str = "cpu") -> str:
        key = key or kernel_key(self.resolved, dtype, target)
        header = (f"# Generated by lossdsl {__version__}: loss {self.resolved.name}, {np.dtype(dtype).name}, "
                  f"{target.upper()}.\n# Cache key {key}. Regenerate with `lossdsl compile`.")
        from .codegen import elementwise, rows  # SymPy and code generation: only on a cache miss
        from .codegen.printer import UnsupportedExpression
        from .codegen.targets import CPU, TARGETS
        try:
            if target == "grad_hess":
                from .symbolic import derive_hessian
                return elementwise.generate_grad_hess(derive_hessian(self.plan()), dtype, header, CPU)
            if target in ("blocks", "blocks_outputs"):
                from .codegen.blocks import generate_blocks
                return generate_blocks(self.block_plan(target == "blocks_outputs"), dtype, header)
            generate = elementwise.generate if self.resolved.axis is None else rows.generate_rows
            return generate(self.plan(), dtype, header, TARGETS[target])  # 4. printer + kernel skeleton
        except UnsupportedExpression as exc:
            last = self.resolved.locals[-1]
            raise SpecTypeError(f"cannot generate code: {exc}", self.resolved.file, last.pos.line,
                                last.pos.column) from None

    def plan(self):
        return _plan(self.resolved)                                    # 3. SymPy: derive, stabilise, CSE

    def block_plan(self, outputs: bool = False):
        """The row plan's reductions as partials over blocks of the class axis (lossdsl.partials);
        with `outputs`, those the spec's `output` values need too."""
        if outputs not in self._blocks:
            from .partials import block_plan
            self._blocks[outputs] = block_plan(self.plan(), outputs)
        return self._blocks[outputs]

    def explain(self, latex: bool = False) -> str:
        from .symbolic import explain
        return explain(self.plan(), latex)


_PLANS: dict[str, object] = {}  # by cache text: losses that differ only in numeric parameters share a plan


def _plan(resolved: ResolvedLoss):
    from .reductions import derive_rows  # SymPy work: only when a module is generated or formulas are asked for
    from .symbolic import derive
    key = resolved.cache_text()
    if key not in _PLANS:
        _PLANS[key] = derive(resolved) if resolved.axis is None else derive_rows(resolved)
    return _PLANS[key]


def kernel_key(resolved: ResolvedLoss, dtype: np.dtype, target: str = "cpu") -> str:
    return cache.digest(resolved.cache_text(), np.dtype(dtype).name, target, _compiler_fingerprint(),
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
        "functions.py", "sympy_functions.py", "symbolic.py", "reductions.py", "rewrites.py", "resolve.py",
        "codegen/printer.py", "codegen/targets.py", "codegen/elementwise.py", "codegen/rows.py", "kernel_math.py",
        "jit.py", "partials.py", "codegen/blocks.py"))


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
