"""Stage 4 for losses over an axis: a `RowPlan` → row kernels (CPU or CUDA: codegen/targets.py).

Every array arrives flat, in its own memory order; row `r` of the named axis is
found by splitting r into (outer, inner) indices around the axis, and each input
has three steps in `__steps` (outer step, inner step, step along the axis), so one
kernel serves any axis position and broadcast per-class vectors (steps 0, 0, 1)
without copies. Within a row, reductions run in as few passes over the axis as
their dependencies allow (logsumexp: a max pass, then a sum of exp), then the
row's loss, then one pass writing the gradient. Elements are read and written through
lossdsl.runtime.jit's `load`/`store`, without NumPy's negative-index wraparound (indices are in
range by construction: labels are checked first, steps are non-negative), so LLVM can
vectorise the loops along the axis.

The module has three functions sharing one row prologue (below as on the CPU; on CUDA
each thread takes rows in a grid-stride loop and sums go to a `__result` array):
- `loss_rows(...)`: a pass over the labels only, run before the others:
  it returns (sum of the mean weight over rows not ignored, first row with a label
  out of range or -1, that label), so no kernel ever reads out of bounds;
- `loss_value(start, stop, ..., weight, scale, out)`: the weighted sum of the losses of
  rows [start, stop) (float64), each also stored in `out` when it has room (serial and
  `nogil`: lossdsl.runtime.threads runs them in chunks of rows, one per thread);
- `loss_value_and_grad(..., weight, scale, gscale, out, grads...)`: the same in
  one fused pass with the gradients.

A list axis k (`ids[k]`, __K positions a row) adds short loops over k after the passes along c: one per
reduction over k (two for a logsumexp), one for the sums over k the gradient needs, and, after the
gradient pass, one adding each position's term at the class its label names. The terms are computed
into a buffer of __K before the gradient pass, since in place that pass overwrites the logits they read.
"""
from __future__ import annotations

import numpy as np
import sympy

from ..symbolic.reductions import Reduction, RowPlan, arg_symbol, gradient_parts, lowered, needed, needed_list
from ..symbolic.derive import safe_name
from ..symbolic.guards import TRUE, as_boolean, nonzero, reduction_guards
from ..symbolic.sympy_functions import power, power_from_log
from .printer import NumbaPrinter
from .targets import CPU, Target

# Positions along the axis whose terms a CPU pass adds into a partial of the kernel's float type before adding that
# into its float64 sum: a float64 sum inside the loop would make LLVM vectorise a float32 kernel at float64's
# width (half the lanes). Vectorised, each lane of a float32 partial adds at most 256 / 8 terms (AVX2; AVX-512: 16).
AXIS_CHUNK = 256
AXIS_CHUNK_LANES = 16


_START = {"sum": "0.0", "mean": "0.0", "norm": "0.0", "max": "F(-math.inf)", "min": "F(math.inf)",
          "logsumexp": "F(-math.inf)"}


def accumulator(node) -> str:
    """A reduction's running value in a kernel: `___r0` for `_r0`, `__lse_acc` for a spec local `lse` (a suffix,
    so no spec name meets the skeleton's own `__` names)."""
    name = node.symbol.name
    return f"__{name}" if name.startswith("_") else f"__{name}_acc"


class _Writer:
    """Lines of one kernel, with the plan's names and a printer."""

    def __init__(self, plan: RowPlan, printer: NumbaPrinter, target: Target = CPU, blocked: bool = False,
                 lanes: bool = False):
        self.plan, self.printer, self.lines, self.target = plan, printer, [], target
        # a tile of rows side by side (codegen/lanes.py): row values differ between the lanes, so no loop is
        # unswitched on one, and each lane's float partials add AXIS_CHUNK_LANES terms (as a vector lane's here)
        self.lanes = lanes
        self.axis_chunk = AXIS_CHUNK_LANES if lanes else AXIS_CHUNK
        self.kinds: dict[str, str] = {}  # the NumPy type of each value `statements` assigns that is not a float
        self.inputs = plan.loss.inputs
        self.index_of = {i.name: k for k, i in enumerate(self.inputs)}
        self.segment = 0
        # a block of classes (codegen/blocks.py): arrays hold positions __lo .. __lo + __width - 1,
        # read at the local __c; the position the formulas see is the global one
        self.blocked = blocked
        self.guards: dict[sympy.Symbol, sympy.Basic] = {}  # reductions used only under a parameter test
        self.local = "__c" if blocked else str(plan.position)
        # the gradient's step along the axis: a block's own layout, or the call's (__gsc: the class axis moved
        # last for a call whose axis is not, lossdsl.runtime.layout.RowCall)
        self.grad_step = "__inner" if blocked else "__gsc"
        self.list_buffers = 0  # buffers of __K gradient terms at the list axis's labels (`_list_terms`)
        # in a block kernel, where each list load x[ids] at position k lies in the combined partials __done
        self.list_done: dict[sympy.Symbol, str] | None = None

    def source(self) -> str:
        """The kernel's text, its buffers allocated once, after the docstring (not once per row)."""
        lines = list(self.lines)
        if self.list_buffers:
            at = next(i for i, line in enumerate(lines) if line.startswith('    """')) + 1
            lines[at:at] = [f"    __kterm{k} = np.empty(__K, F)" for k in range(self.list_buffers)]
        return "\n".join(lines) + "\n"

    def axis_loop(self) -> str:
        """The positions along the axis one call (CPU) or one thread of the row's block (CUDA) visits."""
        if self.blocked:
            return "for __c in range(__width):"
        position = self.plan.position
        return (f"for {position} in range(cuda.threadIdx.x, __C, cuda.blockDim.x):" if self.target.cuda
                else f"for {position} in range(__C):")

    def emit(self, indent: int, *lines: str) -> None:
        self.lines += ["    " * indent + line for line in lines]

    def unswitched(self, indent: int, exprs: list[sympy.Expr], loop, depth: int = 2) -> None:
        """`loop(indent, exprs)`, a loop over the axis, once for each truth value of a condition that is the
        same all along the axis: one made of parameters (a formula chosen by a parameter), or of row values
        where it chooses between a power with a runtime exponent and another arm. In a vectorised loop both
        arms of a select are computed, the power's log and exp at every element whatever the condition
        (triplet's p = 2 cost what p = 3 does). At most `depth` conditions, so at most four copies of the loop."""
        condition = self._switch(exprs) if depth else None
        if condition is None:
            loop(indent, exprs)
            return
        self.emit(indent, f"if {self.text(condition)}:")
        known = {condition: sympy.true}
        if isinstance(condition, sympy.Eq) and condition.lhs.is_Symbol and condition.rhs.is_Number:
            known[condition.lhs] = condition.rhs  # p == 2: x^p is x^2 there, and beta == 0 settles beta == 1
        self.unswitched(indent + 1, [e.xreplace(known) for e in exprs], loop, depth - 1)
        self.emit(indent, "else:")
        self.unswitched(indent + 1, [e.xreplace({condition: sympy.false}) for e in exprs], loop, depth - 1)

    def _switch(self, exprs: list[sympy.Expr]):
        """The condition `unswitched` takes out of the loop next, or None: one made of parameters alone
        first (the same for the whole call), then one of row values."""
        varying = {self.plan.inputs[i.name] for i in self.inputs if i.axis} | {self.plan.position}
        params = set(self.plan.params)
        found = []
        for expr in exprs:
            for choice in sorted(expr.atoms(sympy.Piecewise), key=sympy.default_sort_key):
                power = any(_runtime_power(arm) for arm, _ in choice.args)
                for _, condition in choice.args:
                    symbols = condition.free_symbols
                    if condition is sympy.true or symbols & varying or any(s.name.startswith("__") for s in symbols):
                        continue
                    if symbols <= params or (power and not self.lanes):  # a row value's test: only against a power
                        found.append((not symbols <= params, len(found), condition))
        return min(found)[2] if found else None

    def kept(self, gradient: str) -> str:
        """A gradient value as stored: a lane kernel runs the rows left out (`ignore if`) with label 0 beside
        the others, and stores 0 for them."""
        return f"(({gradient}) if __keep else F(0.0))" if self.lanes and self.plan.ignore is not None else gradient

    def text(self, expr: sympy.Expr) -> str:
        return self.printer.doprint(expr)

    def statements(self, indent: int, named: list[tuple[sympy.Symbol, sympy.Expr]], results: list[sympy.Expr],
                   row_locals: bool = False):
        """CSE'd assignments for `named` values and `results`; returns the printed results. With `row_locals`
        (row-level code), the spec's row-level locals they contain are computed first, by name."""
        exprs = [lowered(e) for _, e in named] + [lowered(e) for e in results]
        if row_locals:
            exprs = self._spec_locals(indent, exprs)
        self.segment += 1
        steps, reduced = sympy.cse(exprs, symbols=sympy.numbered_symbols(f"_t{self.segment}_"), order="canonical")
        # a temporary may hold a named value (an adjoint made of earlier ones): each waits for what it reads
        waiting = {symbol for symbol, _ in named} | {temp for temp, _ in steps}

        def ready() -> None:
            for temp, definition in steps:
                if temp in waiting and not definition.free_symbols & waiting:
                    self.assign(indent, temp, definition)
                    waiting.discard(temp)

        for (symbol, _), expr in zip(named, reduced):
            ready()
            self.assign(indent, symbol, expr)
            waiting.discard(symbol)
        ready()
        return [self.text(e) for e in reduced[len(named):]]

    def assign(self, indent: int, symbol: sympy.Symbol, expr: sympy.Expr) -> None:
        """`symbol = expr`, its type noted where it is not the kernel's float (a lane kernel allocates by it)."""
        if isinstance(expr, sympy.Symbol):  # (SymPy counts a symbol as a Boolean too)
            if expr.name in self.kinds:
                self.kinds[symbol.name] = self.kinds[expr.name]
        elif _is_condition(expr):
            self.kinds[symbol.name] = "np.bool_"
        elif expr.is_integer:
            self.kinds[symbol.name] = "np.int64"
        self.emit(indent, f"{symbol} = {self.text(expr)}")

    def _spec_locals(self, indent: int, exprs: list[sympy.Expr]) -> list[sympy.Expr]:
        """Assign each row-level spec local that `exprs` contain (written out exactly), later locals first
        so that a local made of others keeps them by name too; returns `exprs` over those names."""
        locals_ = [(symbol, lowered(expr)) for symbol, expr in self.plan.row_locals]
        definitions = []
        for k, (symbol, expr) in enumerate(locals_):
            for earlier, key in reversed(locals_[:k]):
                expr = expr.xreplace({key: earlier})
            definitions.append((symbol, expr))
        for symbol, key in reversed(locals_):
            exprs = [e.xreplace({key: symbol}) for e in exprs]
        used = set().union(*(e.free_symbols for e in exprs))
        for symbol, expr in reversed(definitions):
            if symbol in used:
                used |= expr.free_symbols
        for symbol, expr in definitions:  # one at a time: each one's temporaries may use the ones before
            if symbol in used:
                self.statements(indent, [(symbol, expr)], [])
        return exprs

    def loads_along_axis(self, indent: int, exprs) -> None:
        """Read, at position `c` of the axis, each axis input the expressions use."""
        used = set().union(*(e.free_symbols for e in exprs))
        if self.blocked:  # the global position (max and min record it even where no formula uses it)
            self.emit(indent, f"{self.plan.position} = __lo + __c")
        for k, spec_input in enumerate(self.inputs):
            if spec_input.axis and self.plan.inputs[spec_input.name] in used:
                name = safe_name(spec_input.name)
                self.emit(indent, f"{name} = load(_{name}_, __b{k} + {self.local} * __t{k})")


def _arguments(plan: RowPlan) -> list[str]:
    arrays = [f"_{safe_name(i.name)}_" for i in plan.loss.inputs]
    listed = ["__K"] if plan.listed is not None else []
    return arrays + ["__steps", "__rows", "__C", "__inner", *listed] + [f"_{p.name}_" for p in plan.params]


def gradient_arrays(plan: RowPlan, with_grads: bool) -> list[str]:
    """The names of a kernel's gradient arrays, one for each `wrt` input (none without gradients)."""
    return [f"__grad_{safe_name(name)}" for name in plan.loss.wrt] if with_grads else []


def kernel_arguments(plan: RowPlan, grads: list[str]) -> list[str]:
    """A value (and gradient) kernel's arguments after its range: the inputs and their layout, the weights and
    scales, the gradients' steps, __out and the gradient arrays `grads`."""
    steps = ["__gscale", "__gso", "__gsq", "__gsc"] if grads else []
    return _arguments(plan) + ["__weight", "__scale", *steps, "__out", *grads]


def _prologue(w: _Writer, rows: str) -> None:
    """Parameters typed, then the loop over `rows` (a range) and each row's inputs and bases."""
    plan = w.plan
    w.emit(1, *[f"{p.name} = F(_{p.name}_)" for p in plan.params], f"{plan.length} = F(__C)")
    w.emit(1, f"for __row in {rows}:")
    w.emit(2, "__o = __row // __inner", "__q = __row - __o * __inner")
    for k, spec_input in enumerate(plan.loss.inputs):
        name = safe_name(spec_input.name)
        if spec_input.axis:
            w.emit(2, f"__b{k} = __o * __steps[{k}, 0] + __q * __steps[{k}, 1]", f"__t{k} = __steps[{k}, 2]")
        else:
            w.emit(2, f"{name} = load(_{name}_, __o * __steps[{k}, 0] + __q * __steps[{k}, 1])")


def keep_test(plan: RowPlan, w: _Writer) -> str:
    """Whether a row counts: the spec's `ignore if` negated, or True."""
    return "True" if plan.ignore is None else f"not {w.text(plan.ignore)}"


def _loads(w: _Writer, indent: int, symbols) -> None:
    for load in w.plan.loads:
        if load.symbol in symbols:
            k = w.index_of[load.input]
            w.emit(indent, f"{load.symbol} = load(_{safe_name(load.input)}_, __b{k} + {safe_name(load.label)} * __t{k})")


def label_kernel(plan: RowPlan, printer: NumbaPrinter, target: Target) -> str:
    """The label pass. On the CPU it returns (sum of the mean weight over rows kept, first row with a
    label out of range or -1, its label); on CUDA it adds the sum to __result[0] and the lowest bad
    row goes to __bad[0] (its label is read back by the caller)."""
    w = _Writer(plan, printer)
    serial = '@numba.njit(fastmath=FASTMATH, error_model="numpy", cache=True)'  # a tuple back: plain njit
    decorator = target.kernel_decorator if target.cuda else serial
    arguments = _arguments(plan) + (["__bad", "__result"] if target.cuda else [])
    w.emit(0, decorator, f"def loss_rows({', '.join(arguments)}):")
    w.emit(1, "__norm = 0.0")
    _prologue(w, target.row_loop() if target.cuda else "range(__rows)")
    w.emit(2, f"if {keep_test(plan, w)}:")
    for label in plan.loss.labels:
        name = safe_name(label)
        found = (["cuda.atomic.min(__bad, 0, __row)", "continue"] if target.cuda
                 else [f"return __norm, __row, {name}"])
        w.emit(3, f"if {name} < 0 or {name} >= __C:", *[f"    {line}" for line in found])
    for label in plan.loss.list_labels:  # only the list axis's positions kept: padding may hold anything
        name = safe_name(label)
        inner = _list_loop(w, 3, [plan.inputs[label]], loads=False)
        w.emit(inner, f"if {name} < 0 or {name} >= __C:", f"    return __norm, __row, {name}")
    weight = plan.mean_weight if plan.mean_weight is not None else sympy.S.One
    _loads(w, 3, weight.free_symbols)
    (text,) = w.statements(3, [], [weight])
    w.emit(3, f"__norm += {text}")
    w.emit(1, *(target.finish("__norm") if target.cuda else ["return __norm, -1, 0"]))
    return w.source()


def _list_loop(w: _Writer, indent: int, exprs, loads: bool = True) -> int:
    """`for k in range(__K)` with the list inputs `exprs` use read at k, positions `ignore k if` leaves out
    skipped, and (with `loads`) the list loads x[ids] they use read; returns the indent of the loop's body."""
    listed, plan = w.plan.listed, w.plan
    used = set().union(*(e.free_symbols for e in exprs))
    labels = {load.label for load in listed.loads if load.symbol in used} if loads else set()
    read = used | {plan.inputs[label] for label in labels}
    condition = listed.ignore
    if condition is not None:
        read |= condition.free_symbols
    w.emit(indent, f"for {listed.position} in range(__K):")
    for k, spec_input in enumerate(w.inputs):
        if spec_input.axis == listed.axis and plan.inputs[spec_input.name] in read:
            name = safe_name(spec_input.name)
            w.emit(indent + 1, f"{name} = load(_{name}_, __b{k} + {listed.position} * __t{k})")
    inner = indent + 1
    if condition is not None:
        w.emit(inner, f"if not ({w.text(condition)}):")
        inner += 1
    for load in listed.loads if loads else ():
        if load.symbol in used and w.list_done is not None:
            w.emit(inner, f"{load.symbol} = F(__done[__row, {w.list_done[load.symbol]}])")
        elif load.symbol in used:
            k = w.index_of[load.input]
            w.emit(inner, f"{load.symbol} = load(_{safe_name(load.input)}_, __b{k} + {safe_name(load.label)} * __t{k})")
    return inner


def _list_passes(w: _Writer, indent: int, reductions: list[Reduction], backward: tuple[Reduction, ...]) -> None:
    """The row's kept positions counted, its reductions over the list axis (a loop each, two for a
    logsumexp: its max, then its sum), then in one loop the sums over k its gradient needs."""
    listed = w.plan.listed
    if listed.ignore is None:
        w.emit(indent, f"{listed.length} = F(__K)")
    else:
        w.emit(indent, f"{listed.length} = F(0.0)")
        w.emit(_list_loop(w, indent, [], loads=False), f"{listed.length} += F(1.0)")
    for node in reductions:
        for part in range(_pass_count(node)):
            acc = accumulator(node)
            if part == 0:
                w.emit(indent, f"{acc} = {_START[node.op]}", *([f"{arg_symbol(node)} = 0"] if node.op in ("max", "min")
                                                               else []))
            else:
                w.emit(indent, f"{acc} = {acc} if abs({acc}) < math.inf else F(0.0)", f"{acc}_sum = 0.0")
            inner = _list_loop(w, indent, [node.body])
            (text,) = w.statements(inner, [], [node.body])
            w.emit(inner, *_accumulate(node, part, text, None, listed.position))
        mean = node.op == "mean"
        w.emit(indent, *([f"{node.symbol} = F({accumulator(node)} / {listed.length})"] if mean
                         else _finish(node, w.plan, w)))
    if backward:
        w.emit(indent, *(f"{accumulator(node)} = 0.0" for node in backward))
        inner = _list_loop(w, indent, [node.body for node in backward])
        for node, text in zip(backward, w.statements(inner, [], [node.body for node in backward])):
            w.emit(inner, f"{accumulator(node)} += {text}")
        w.emit(indent, *(f"{node.symbol} = F({accumulator(node)})" for node in backward))


def _list_terms(w: _Writer, indent: int) -> None:
    """Each gradient's term at every kept position of the list axis, into a buffer of __K (read back only there)."""
    scatters = w.plan.listed.scatters
    w.list_buffers = max(w.list_buffers, len(scatters))
    inner = _list_loop(w, indent, [expr for _, _, expr in scatters])
    for m, text in enumerate(w.statements(inner, [], [expr for _, _, expr in scatters])):
        w.emit(inner, f"__kterm{m}[{w.plan.listed.position}] = {text}")


def _list_scatter(w: _Writer, indent: int, grads: list[str]) -> None:
    """The terms `_list_terms` kept, each added (times __gw) at the class its label names."""
    listed = w.plan.listed
    labels = [w.plan.inputs[label] for _, label, _ in listed.scatters]
    inner = _list_loop(w, indent, labels, loads=False)
    for m, (index, label, _) in enumerate(listed.scatters):
        name, grad, at = safe_name(label), grads[index], f"__gb + {safe_name(label)} * {w.grad_step}"
        indent = inner
        if w.blocked:  # only the labels in this block, at their place in it
            w.emit(inner, f"if __lo <= {name} and {name} < __lo + __width:")
            at, indent = f"__gb + ({name} - __lo) * __inner", inner + 1
        w.emit(indent, f"store({grad}, {at}, load({grad}, {at}) + __kterm{m}[{listed.position}] * __gw)")


def _pass_count(node: Reduction, online: bool = False) -> int:
    """Passes over the axis a reduction takes: logsumexp needs its max before its sum of exps,
    unless it is `online` (CUDA: a running max that rescales the sum, one read of the row)."""
    return 2 if node.op == "logsumexp" and not online else 1


def _schedule(reductions: list[Reduction], online: bool = False) -> dict[sympy.Symbol, int]:
    """The pass in which each reduction starts.

    A reduction needs every reduction its body uses to be complete (logsumexp takes two
    passes: its max, then its sum). The number of passes is set by the longest chain;
    within that, each reduction goes to the latest pass it can, so cheap sums join the
    last forward pass instead of slowing the first (a max pass does not vectorise).
    """
    symbols = {node.symbol for node in reductions}
    length = {node.symbol: _pass_count(node, online) for node in reductions}
    deps = {node.symbol: (node.body.free_symbols | (node.order.free_symbols if node.order is not None else set()))
            & symbols for node in reductions}
    earliest: dict[sympy.Symbol, int] = {}
    for node in reductions:  # in dependency order
        earliest[node.symbol] = max((earliest[d] + length[d] for d in deps[node.symbol]), default=0)
    passes = max(earliest[s] + length[s] for s in symbols)
    start: dict[sympy.Symbol, int] = {}
    for node in reversed(reductions):
        users = [u for u in symbols if node.symbol in deps[u]]
        finish = min((start[u] for u in users), default=passes)
        start[node.symbol] = finish - length[node.symbol]
    return start


def _runtime_power(expr: sympy.Expr) -> bool:
    """Whether `expr` has a power with a runtime exponent: float32 kernels take it through float64, and
    such a pass vectorises only with its sums in float64 (buffered, LLVM left triplet's norm loop scalar)."""
    return any(not p.exp.is_Number for p in expr.atoms(sympy.Pow)) or bool(expr.atoms(power, power_from_log))


def _summed(node: Reduction, part: int) -> bool:
    """Whether this pass of `node` adds terms up (a sum, mean or norm; logsumexp's sum of exps)."""
    return node.op in ("sum", "mean", "norm") or (node.op == "logsumexp" and part == 1)


def _sum_of(node: Reduction) -> str:
    """The float64 running sum of a summed pass."""
    return f"{accumulator(node)}_sum" if node.op == "logsumexp" else accumulator(node)


def _accumulate(node: Reduction, part: int, body: str, keep: str | None, position: sympy.Symbol,
                online: bool = False, buffer: str | None = None) -> list[str]:
    """The accumulation of one reduction in one pass; `keep` (array, index) is where to store softmax numerators;
    `buffer`, the float partial a summed pass adds its term to (`_pass_loop` adds it into the float64 sum)."""
    acc = accumulator(node)
    if buffer is not None:
        term = f"fast_exp({body} - {acc})" if node.op == "logsumexp" else body
        if keep is None:
            return [f"{buffer} += F({term})"]
        return [f"__e = {term}", f"store({keep[0]}, {keep[1]}, __e)", f"{buffer} += F(__e)"]
    if node.op == "logsumexp" and online:  # a new maximum rescales the sum; equal values add exp(0) exactly
        return [f"{acc}_v = {body}", f"if {acc}_v > {acc}:",
                f"    {acc}_sum = {acc}_sum * fast_exp({acc} - {acc}_v) + 1.0", f"    {acc} = {acc}_v",
                "else:", f"    {acc}_sum += 1.0 if {acc}_v == {acc} else fast_exp({acc}_v - {acc})"]
    if node.op == "logsumexp" and part == 0:  # only a shift: a NaN reaches the result through the exp sum
        return [f"{acc} = maximum({acc}, {body})"]  # llvm.maximum: vectorises, where Python's max stays scalar
    if node.op in ("max", "min"):
        # the first extreme and where it is; a NaN wins and stays, as in torch.max (Python's
        # max(acc, nan) would drop it); it also records the position
        beats = "<" if node.op == "min" else ">"
        return [f"{acc}_v = {body}", f"if {acc}_v {beats} {acc} or ({acc}_v != {acc}_v and {acc} == {acc}):",
                f"    {acc} = {acc}_v", f"    {arg_symbol(node)} = {position}"]
    if node.op == "logsumexp" and keep is not None:
        return [f"__e = fast_exp({body} - {acc})", f"store({keep[0]}, {keep[1]}, __e)", f"{acc}_sum += __e"]
    if node.op == "logsumexp":
        return [f"{acc}_sum += fast_exp({body} - {acc})"]
    return [f"{acc} += {body}"]


def _finish(node: Reduction, plan: RowPlan, w: _Writer) -> list[str]:
    acc, out = accumulator(node), node.symbol.name
    if node.op == "logsumexp":  # a lane kernel's logs, one a row, vectorise (float64, <= 1.5 ulp)
        return [f"{out} = F({acc} + {'fast_log64' if w.lanes else 'math.log'}({acc}_sum))"]
    if node.op == "mean":
        return [f"{out} = F({acc} / {plan.length})"]
    if node.op == "norm":
        p = node.order if node.order is not None else sympy.Integer(2)
        if p == 2:
            return [f"{out} = F(math.sqrt({acc}))"]
        order = f"({w.text(p)})"
        if p.is_Number:
            return [f"{out} = F({acc} ** (1.0 / {order}))"]
        # a runtime order: the common p = 2 keeps its fast path
        return [f"{out} = F(math.sqrt({acc}) if {order} == 2 else {acc} ** (1.0 / {order}))"]
    return [f"{out} = F({acc})"]


def _combine(node: Reduction, part: int) -> str:
    """CUDA: the block's threads each hold a partial of the reduction; every thread gets the whole."""
    acc = accumulator(node)
    if node.op in ("max", "min"):
        arg = arg_symbol(node)
        return f"{acc}, {arg} = _block_best(__shared, __shared_i, {acc}, {arg}, {1 if node.op == 'max' else -1})"
    if node.op == "logsumexp":  # online: (running max, sum of exp relative to it) pairs
        return f"{acc}, {acc}_sum = _block_logsumexp(__shared, __shared_s, {acc}, {acc}_sum)"
    total = f"{acc}_sum" if node.op == "logsumexp" else acc
    return f"{total} = _block_sum(__shared, {total})"


def _passes(w: _Writer, indent: int, reductions: list[Reduction], kept: tuple | None = None,
            complete=_finish) -> None:
    """Loops over the axis computing `reductions`, each pass holding every reduction that is ready.

    `kept` = (logsumexp reduction, (gradient array, index)): that reduction's exp(body - max) are
    stored in the gradient row as they are summed, so the gradient pass reuses them.
    `complete(node, plan, writer)` gives the lines that follow a reduction's last pass (by default,
    its finished value).
    """
    if not reductions:
        return
    online = w.target.cuda
    start = _schedule(reductions, online)
    passes = max(start[n.symbol] + _pass_count(n, online) for n in reductions)
    for k in range(passes):
        parts = [(n, k - start[n.symbol]) for n in reductions if 0 <= k - start[n.symbol] < _pass_count(n, online)]
        for node, part in parts:
            if part == 0:
                w.emit(indent, f"{accumulator(node)} = {_START[node.op]}")
                if node.op in ("max", "min"):
                    w.emit(indent, f"{arg_symbol(node)} = 0")
                if node.op == "logsumexp" and online:
                    w.emit(indent, f"{accumulator(node)}_sum = 0.0")
            else:  # logsumexp's second pass: shift by the max (0 where it is infinite, as torch does)
                acc = accumulator(node)
                w.emit(indent, f"{acc} = {acc} if abs({acc}) < math.inf else F(0.0)", f"{acc}_sum = 0.0")
        w.unswitched(indent, [_guarded_body(w, n, part) for n, part in parts],
                     lambda at, bodies: _pass_loop(w, at, parts, bodies, kept))
        if w.target.cuda:
            for node, part in parts:
                w.emit(indent, _combine(node, part))
        for node, part in parts:
            if part == _pass_count(node, online) - 1:
                w.emit(indent, *complete(node, w.plan, w))


def _gradient_loop(w: _Writer, indent: int, exprs: list[sympy.Expr], grads: list[str], element: str,
                   kept: Reduction | None = None) -> None:
    """One loop over the axis storing each gradient of `exprs` (scaled by __gw) at `element` of its array;
    with `kept`, the softmax numerators the passes left there are read first (and scaled by __inv). On the
    CPU a term at the label's class alone (a one-hot's) is added there after the loop instead of tested
    at every class."""
    scale = {_SOFTMAX: _SOFTMAX * _INV} if kept is not None else {}
    exprs = [sympy.Add(*(t * _GW for t in sympy.Add.make_args(e.xreplace(scale)))) for e in exprs]
    exprs, at_labels = _label_terms(w, exprs)
    exprs = _hoisted(w, indent, exprs)
    w.emit(indent, w.axis_loop())
    if kept is not None:
        w.emit(indent + 1, f"__softmax = load({grads[0]}, {element})")
    w.loads_along_axis(indent + 1, exprs)
    for g, text in zip(grads, w.statements(indent + 1, [], exprs)):
        w.emit(indent + 1, f"store({g}, {element}, {w.kept(text)})")
    for g, terms in zip(grads, at_labels):
        for label, term in terms:
            at = f"__gb + {safe_name(label)} * {w.grad_step}"
            (text,) = w.statements(indent, [], [term])
            w.emit(indent, f"store({g}, {at}, load({g}, {at}) + {w.kept(text)})")


def _zero_switched(w: _Writer, adjoints, exprs) -> list[sympy.Expr]:
    """`exprs` with each adjoint that is 0 unless a parameter test holds (label smoothing's, at
    label_smoothing = 0) as `adjoint if test else 0`, where it is all that keeps an input read along the
    axis: `unswitched` then gives the gradient loop a copy without that input's loads."""
    params, inputs = set(w.plan.params), _varying(w) - {w.plan.position, _SOFTMAX}
    exprs = list(exprs)
    for symbol, definition in adjoints:
        condition = nonzero(definition, params)
        if condition == TRUE or not any(symbol in e.free_symbols for e in exprs):
            continue
        if all(e.free_symbols & inputs <= e.xreplace({symbol: 0}).free_symbols for e in exprs):
            continue
        switched = sympy.Piecewise((symbol, as_boolean(condition)), (0, True))
        exprs = [e.xreplace({symbol: switched}) for e in exprs]
    return exprs


def _label_terms(w: _Writer, exprs: list[sympy.Expr]) -> tuple[list[sympy.Expr], list[list[tuple[str, sympy.Expr]]]]:
    """Each expression without its terms `a * (x if c == label else 0)` with `a` and `x` the same all along
    the axis, and those terms as (label, a * x); on CUDA and in class blocks, none taken out."""
    varying = _varying(w)
    labels = {w.plan.inputs[name]: name for name in w.plan.loss.labels}
    taken: list[list[tuple[str, sympy.Expr]]] = []
    kept = []
    for expr in exprs:
        rest, found = [], []
        for term in sympy.Add.make_args(expr):
            moved = None if w.target.cuda or w.blocked else _at_label(term, labels, varying)
            if moved is None:
                rest.append(term)
            else:
                found.append(moved)
        kept.append(sympy.Add(*rest))
        taken.append(found)
    return kept, taken


def _at_label(term: sympy.Expr, labels: dict, varying: set) -> tuple[str, sympy.Expr] | None:
    """(label, a * x) for a term a * Piecewise((x, Eq(position, label)), (0, True)), else None."""
    choices = [f for f in sympy.Mul.make_args(term) if isinstance(f, sympy.Piecewise)]
    if len(choices) != 1 or len(choices[0].args) != 2:
        return None
    (value, test), (other, otherwise) = choices[0].args
    if not (isinstance(test, sympy.Eq) and other == 0 and otherwise is sympy.true):
        return None
    sides = {test.lhs, test.rhs}
    label = next((labels[s] for s in sides if s in labels), None)
    position = sides - set(labels)
    coefficient = sympy.Mul(*(f for f in sympy.Mul.make_args(term) if f is not choices[0]))
    if label is None or len(position) != 1 or not position <= varying - set(labels):
        return None
    if (value.free_symbols | coefficient.free_symbols) & varying:
        return None
    return label, coefficient * value


def _varying(w: _Writer) -> set[sympy.Symbol]:
    """The symbols whose values change along the axis within a row: the position, axis inputs, softmax weights."""
    return {w.plan.inputs[i.name] for i in w.inputs if i.axis} | {w.plan.position, _SOFTMAX}


def _hoisted(w: _Writer, indent: int, exprs: list[sympy.Expr]) -> list[sympy.Expr]:
    """`exprs` with each product's factors that are the same all along the axis computed once, before the
    loop at `indent`: LLVM keeps a division by a row value (a / n in a * w[c] / n) in the loop, one per element."""
    varying = _varying(w)
    hoisted: dict[sympy.Expr, sympy.Symbol] = {}

    def split(expr: sympy.Expr) -> sympy.Expr:
        if not expr.args or _is_condition(expr):
            return expr
        args = [split(a) for a in expr.args]
        if isinstance(expr, sympy.Mul):
            fixed = [a for a in args if not a.is_Number and not a.free_symbols & varying]
            if len(fixed) > 1 and len(fixed) < len(args):
                product = sympy.Mul(*fixed)
                name = hoisted.setdefault(product, sympy.Symbol(f"__h{len(hoisted)}", real=True))
                return sympy.Mul(name, *(a for a in args if a not in fixed))
        return expr.func(*args)

    exprs = [split(e) for e in exprs]
    if hoisted:
        w.statements(indent, [(name, product) for product, name in hoisted.items()], [])
    return exprs


def _pass_loop(w: _Writer, indent: int, parts: list, bodies: list[sympy.Expr], kept: tuple | None) -> None:
    """One loop over the axis adding each (node, pass) of `parts`, of body `bodies`, to its accumulator."""
    online = w.target.cuda
    summed = [] if online or any(map(_runtime_power, bodies)) else [
        (n, p) for (n, p), body in zip(parts, bodies) if _summed(n, p) and not body.is_zero]
    inner = indent + (2 if summed else 1)
    if summed:  # a chunk's terms in float partials, then added in float64 (see AXIS_CHUNK)
        count = "__width" if w.blocked else "__C"
        w.emit(indent, f"for __c0 in range(0, {count}, {w.axis_chunk}):",
               f"    __c1 = min(__c0 + {w.axis_chunk}, {count})",
               *(f"    __part{k} = F(0.0)" for k in range(len(summed))), f"    for {w.local} in range(__c0, __c1):")
    else:
        w.emit(indent, w.axis_loop())
    w.loads_along_axis(inner, bodies)
    texts = w.statements(inner, [], bodies)
    for (node, part), body, text in zip(parts, bodies, texts):
        if body.is_zero and _summed(node, part):  # a sum this copy of the loop leaves out (`_guarded_body`)
            continue
        keep = kept[1] if kept is not None and kept[0] is node and part == 1 else None
        buffer = f"__part{summed.index((node, part))}" if (node, part) in summed else None
        w.emit(inner, *_accumulate(node, part, text, keep, w.plan.position, online, buffer))
    if summed:
        w.emit(indent + 1, *(f"{_sum_of(node)} += __part{k}" for k, (node, _) in enumerate(summed)))


_SOFTMAX = sympy.Symbol("__softmax", real=True)  # a softmax weight read back from the gradient row
_INV = sympy.Symbol("__inv", positive=True)  # 1 / the sum of the row's softmax numerators
_GW = sympy.Symbol("__gw", real=True)  # the row's weight times the gradient's scale


def softmax_kept(plan: RowPlan) -> tuple[Reduction | None, tuple[sympy.Expr, ...]]:
    """The first logsumexp whose softmax weight exp(body - logsumexp) the gradients use, and the
    gradients with that weight read back from the gradient row (one exp per element saved)."""
    for node in plan.forward:
        weight = sympy.exp(node.body - node.symbol)
        if node.op == "logsumexp" and any(g.has(weight) for g in plan.grads):
            return node, tuple(_replace_outside_conditions(g, weight, _SOFTMAX) for g in plan.grads)
    return None, plan.grads


def _is_condition(expr: sympy.Basic) -> bool:
    """A comparison or logic: rewrites leave it as it is (a value changed there may move a tie)."""
    return isinstance(expr, (sympy.core.relational.Relational, sympy.logic.boolalg.Boolean))


def _replace_outside_conditions(expr: sympy.Expr, old: sympy.Expr, new: sympy.Expr) -> sympy.Expr:
    """`expr` with `old` as `new`, except inside comparisons: a value read back may round
    differently from the one recomputed, which may move a tie."""
    if expr == old:
        return new
    if _is_condition(expr) or not expr.args:
        return expr
    return expr.func(*(_replace_outside_conditions(a, old, new) for a in expr.args))


def _guarded_body(w: _Writer, node: Reduction, part: int) -> sympy.Expr:
    """What a pass accumulates, as `body if guard else 0` where the sum is used only under a condition on
    parameters (symbolic/guards.py): `unswitched` then gives the loop a copy without it."""
    body = _reduced_body(node, part)
    guard = w.guards.get(node.symbol, sympy.true)
    if guard is sympy.true or not _summed(node, part) or node.op == "logsumexp":
        return body
    return sympy.Piecewise((body, guard), (0, True))


def _reduced_body(node: Reduction, part: int) -> sympy.Expr:
    """What a pass accumulates: the body, or |body|^p for a norm."""
    if node.op != "norm":
        return node.body
    p = node.order if node.order is not None else sympy.Integer(2)
    if p == 2:
        return node.body ** 2
    general = sympy.Pow(sympy.Abs(node.body), p, evaluate=False)
    # a runtime p: the branch is the same for the whole loop, so p = 2 still runs without pow()
    return general if p.is_Number else sympy.Piecewise((node.body ** 2, sympy.Eq(p, 2)), (general, True))


def row_body(w: _Writer, indent: int, grads: list[str], element: str, keep: bool, outputs: bool = False) -> None:
    """One kept row: its loads at the labels, its passes over the axis, its loss as `__loss` (and outputs in
    `__extra`), and with `grads` its gradient stored at `element`; `keep`: the softmax numerators kept in the
    gradient row between passes."""
    plan, with_grads = w.plan, bool(grads)
    shown = [expr for _, expr in plan.outputs] if outputs else []
    parts = gradient_parts(plan)
    reductions = needed(plan, with_grads, outputs) + (list(parts.backward) if with_grads else [])
    w.guards = reduction_guards(plan, with_grads, outputs)
    _loads(w, indent, {g.symbol for g in plan.loads})
    kept, gradients = softmax_kept(plan) if keep else (None, plan.grads)
    _passes(w, indent, reductions, None if kept is None else (kept, (grads[0], element)))
    if plan.listed is not None:
        _list_passes(w, indent, needed_list(plan, with_grads, outputs), parts.list_backward if with_grads else ())
    named = list(parts.adjoints) if with_grads else []
    value, *values = w.statements(indent, named, [plan.value, *shown], row_locals=True)
    w.emit(indent, f"__loss = ({value}) * __w", *(f"__extra[__row, {k}] = {text}" for k, text in enumerate(values)))
    if with_grads:
        w.emit(indent, "__gw = __w * __gs")
        if kept is not None:
            w.emit(indent, f"{_INV} = F(1.0 / {accumulator(kept)}_sum)")
        scatters = plan.listed is not None and plan.listed.scatters
        if scatters:
            _list_terms(w, indent)
        gradients = _zero_switched(w, parts.adjoints, gradients)
        w.unswitched(indent, gradients, lambda at, exprs: _gradient_loop(w, at, exprs, grads, element, kept))
        if scatters:
            _list_scatter(w, indent, grads)


def row_kernel(plan: RowPlan, printer: NumbaPrinter, with_grads: bool, target: Target, in_place: bool = False,
               outputs: bool = False) -> str:
    """`loss_value` or `loss_value_and_grad`; `in_place`: the latter as `loss_value_and_grad_in_place`,
    whose gradient may be its input's own buffer: it keeps no softmax numerators in the gradient
    row (a later pass would read them as logits). Then every pass over the axis only reads, and
    the gradient pass stores at position c a value computed from what it read at c, so the
    store cannot move before that read; the no-overlap promise still holds for every other
    access (and keeps the loops vectorised: without it this kernel runs 3x slower).
    `outputs`: `loss_value_and_grad_outputs`, which also stores the spec's `output` values of row r in
    __extra[r] (NaN for rows left out); it may run in place too."""
    w = _Writer(plan, printer, target)
    grads = gradient_arrays(plan, with_grads)
    name = ("loss_value_and_grad_outputs" if outputs else "loss_value_and_grad_in_place" if in_place
            else "loss_value_and_grad" if with_grads else "loss_value")
    w.emit(0, target.kernel_decorator,
           f"def {name}({target.parameters(kernel_arguments(plan, grads))}{', __extra' if outputs else ''}):")
    w.emit(1, '"""Weighted sum of the row losses' + (', and each gradient row, in one pass."""' if with_grads
                                                       else '; each also stored in __out when it has room."""'))
    w.emit(1, "__s = F(__scale)", *(["__gs = F(__gscale)"] if with_grads else []))
    w.emit(1, "__weighted = __weight.size == __rows", "__elementwise = __out.size == __rows", "__total = 0.0")
    if target.cuda:  # a block per row: its threads share the passes along the axis
        w.emit(1, "__shared = cuda.shared.array(THREADS, numba.float64)",
               "__shared_s = cuda.shared.array(THREADS, numba.float64)",
               "__shared_i = cuda.shared.array(THREADS, numba.int64)")
    _prologue(w, target.row_loop(per_block=True))
    w.emit(2, "__w = __s * __weight[__row] if __weighted else __s")
    if with_grads:
        w.emit(2, "__gb = __o * __gso + __q * __gsq")
    w.emit(2, f"if {keep_test(plan, w)}:")
    element = f"__gb + {plan.position} * __gsc"  # index of the gradient element
    # the CPU keeps softmax numerators in the gradient row; CUDA's online logsumexp recomputes them
    # (not in place, and not with outputs, which a linear head asks for in place)
    keep = with_grads and not (target.cuda or in_place or outputs)
    row_body(w, 3, grads, element, keep, outputs)
    unknown = [f"    __extra[__row, {k}] = math.nan" for k in range(len(plan.outputs))] if outputs else []
    w.emit(2, "else:", "    __loss = 0.0", *unknown)
    if with_grads:
        w.emit(3, w.axis_loop(), *[f"    store({g}, {element}, F(0.0))" for g in grads])
    if target.cuda:  # every thread of the block has the row's loss; one of them keeps it
        w.emit(2, "if cuda.threadIdx.x == 0:", "    if __elementwise:", "        __out[__row] = __loss",
               "    __total += __loss")
    else:
        w.emit(2, "if __elementwise:", "    __out[__row] = __loss", "__total += __loss")
    w.emit(1, *target.finish())
    return w.source()
