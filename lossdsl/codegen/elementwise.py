"""Stage 4 for elementwise losses: a `KernelPlan` → the source of a module of Numba kernels.

The module (CPU or CUDA: codegen/targets.py) has two kernels over the elements; on the
CPU they are serial and `nogil`, over a range [start, stop) (lossdsl.runtime.threads runs them in
chunks, one per thread), on CUDA grid-stride loops adding to `__result[0]`:
- `loss_value(start, stop, inputs…, params…, weight, scale, out)`: the weighted sum of
  the loss elements (accumulated in float64), also stored per element when `out` has room;
- `loss_value_and_grad(…, gscale, out, grads…)`: the same sum plus every gradient,
  in one pass over memory.
Reduction and weighting are runtime arguments, so one compiled kernel serves "none",
"sum", "mean" and the per-sample form, weighted or not. On the CPU a kernel holds more than one
copy of its loop, chosen once per call: one for plain calls (no weights, no per-element output,
one value per optional input) without their selects, and where the loss has powers whose exponents
are parameters, one for calls where each is a small whole number (products, not exp and log).
An empty `weight` array means unweighted; an empty `out` means no per-element output; an optional input of one element holds
one value for every element. With `__check` set, an element whose input lies outside the domain its spec
declares (`p in [0, 1]`, NaN included) makes its loss NaN: the runtime, finding a NaN sum, checks the inputs
to say which (lossdsl.runtime.layout.ElementCall.after). The test is a compare or two per element in the
loss's own pass, where a separate check would read every input again.

Names: the spec's own names are used bare, input arrays and parameter arguments are
`_name_`, CSE temporaries `_0, _1, ...`, and the skeleton's variables `__name`, so no
spec can collide with generated code.
"""
from __future__ import annotations

import numpy as np

from ..frontend import ir
from ..symbolic.derive import KernelPlan, safe_name
from .printer import NumbaPrinter
from .targets import CPU, Target


def generate(plan: KernelPlan, dtype: np.dtype, header: str, target: Target = CPU) -> str:
    """The complete module source; `header` is a comment block (origin, cache key)."""
    header = with_formula(header, plan)
    printer = NumbaPrinter()
    kernels = [_kernel(plan, printer, False, target), _kernel(plan, printer, True, target)]
    if not target.cuda:
        kernels.append(IN_PLACE_ALIAS)
        if plan.output_results:
            kernels.append(_kernel(plan, printer, True, target, shown=True))
    return target.module(header, dtype, printer, kernels)


# Element i's gradient is stored after everything at i is read, so the fused kernel may write a
# gradient over its own input (`grad_out=` that input) as it is
IN_PLACE_ALIAS = "loss_value_and_grad_in_place = loss_value_and_grad  # reads each element before storing there\n"


def with_formula(header: str, plan) -> str:
    """The module's header followed by the spec's formula, once for all its kernels."""
    return f"{header}\n#\n{formula_comment(plan)}"


def formula_comment(plan: KernelPlan) -> str:
    """The spec's formula, printed from the IR (never copied from the spec text)."""
    loss = plan.loss
    inputs = ", ".join(i.name + (f"[{i.axis}]" if i.axis else "") for i in loss.inputs)
    lines = [f"# loss {loss.name}({inputs}) wrt {', '.join(loss.wrt)}"]
    for name, value in sorted(loss.static_values.items()):
        lines.append(f"#     {name} = {'true' if value is True else 'false' if value is False else ascii(value)}")
    if loss.ignore is not None:
        lines.append(f"#     ignore if {ir.format_expr(loss.ignore)}")
    if loss.mean_weight is not None:
        lines.append(f"#     mean weighted by {ir.format_expr(loss.mean_weight)}")
    if loss.list_ignore is not None:
        lines.append(f"#     ignore {loss.list_axis} if {ir.format_expr(loss.list_ignore)}")
    lines += [f"#     {local.name} = {ir.format_expr(local.expr)}" for local in loss.locals]
    return "\n".join(lines)


def _signature(plan: KernelPlan) -> tuple[list[str], list[str]]:
    """Kernel arguments for the inputs and numeric parameters, and the prologue that types the parameters."""
    inputs = [f"_{safe_name(i.name)}_" for i in plan.loss.inputs]
    params = [f"_{p.name}_" for p in plan.params]
    prologue = [f"{p.name} = F(_{p.name}_)" for p in plan.params]
    return inputs + params, prologue


def _loop_head(plan: KernelPlan, plain: bool) -> list[str]:
    """Each input's element; an optional one (`pos_weight = 1`) may be one value for all, so a call that leaves
    it out or gives a scalar passes one element rather than a broadcast copy (the test is loop-invariant;
    `plain`: in the loop for calls where it holds)."""
    def read(i) -> str:
        name = f"_{safe_name(i.name)}_"
        if i.default is None:
            return f"{name}[__i]"
        return f"{name}[0]" if plain else f"({name}[__i] if {name}.size == __n else {name}[0])"
    return [f"{safe_name(i.name)} = {read(i)}" for i in plan.loss.inputs]


def _outside(plan: KernelPlan) -> str | None:
    """A test that some input of the element lies outside its spec's domain (NaN does), or None: comparisons
    joined by `|` and `&`, which vectorise as selects (`or` and `and` would branch)."""
    tests = []
    for spec_input in plan.loss.inputs:
        domain, name = spec_input.domain, safe_name(spec_input.name)
        if domain.unbounded:
            continue
        if domain.choices is not None:
            tests.append("(" + " & ".join(f"({name} != F({float(c)!r}))" for c in domain.choices) + ")")
            continue
        beyond = ([f"({name} {'<=' if domain.low_open else '<'} F({float(domain.low)!r}))"] * (domain.low > -np.inf)
                  + [f"({name} {'>=' if domain.high_open else '>'} F({float(domain.high)!r}))"]
                  * (domain.high < np.inf))
        tests.append(" | ".join([*beyond, f"({name} != {name})"]))
    return " | ".join(tests) or None


def _element(plan: KernelPlan, printer: NumbaPrinter, steps, value, gradients, grads: list[str], with_grads: bool,
             plain: bool, shown=()) -> list[str]:
    """The lines of one element: its inputs, the CSE steps, its weighted loss (NaN for an input outside its
    domain when `__check`; stored where `__out` has room), gradients and the `shown` output values (stored in
    `__extra[i, k]`). `plain`: for calls with no weights, no per-element output and one value per optional input."""
    outside = _outside(plan)
    return [*_loop_head(plan, plain),
            *(f"{temp} = {printer.doprint(expr)}" for temp, expr in steps),
            "__w = __s" if plain else "__w = __s * __weight[__i] if __weighted else __s",
            f"__loss = ({printer.doprint(value)}) * __w",
            *([f"__loss = F(math.nan) if __check & ({outside}) else __loss"] if outside else []),
            *([] if plain else ["if __elementwise:", "    __out[__i] = __loss"]),
            *(["__gw = __w * __gs"] if with_grads else []),
            *[f"{g}[__i] = ({printer.doprint(expr)}) * __gw" for g, expr in zip(grads, gradients)],
            *[f"__extra[__i, {k}] = {printer.doprint(expr)}" for k, expr in enumerate(shown)]]


def _variants(plan: KernelPlan, printer: NumbaPrinter, with_grads: bool, grads: list[str], shown: bool = False):
    """(condition, element lines) of the loops a kernel has: for plain calls first, then the general loop;
    each twice where the loss has powers with runtime exponents, first for calls where all are small whole
    numbers (x^2 as x*x) and then for the rest (not in the kernel that also stores the `output` values)."""
    def plan_of(source):
        return ((source.fused_steps, source.fused_results) if with_grads
                else (source.value_steps, (source.value_result,)))

    whole = plan.whole_powers  # None in a grad_hess plan (symbolic.derive_hessian)
    forms = [(None, (plan.output_steps, plan.output_results) if shown else plan_of(plan))]
    if whole is not None and not shown:
        check = " and ".join(f"fast_whole_exponent({printer.doprint(e)})" for e in whole.exponents)
        forms.insert(0, (check, plan_of(whole)))
    variants = []
    for plain in (True, False):
        for check, (steps, (value, *results)) in forms:
            condition = " and ".join(c for c in ("__plain" if plain else None, check) if c) or None
            gradients, outputs = results[:len(grads)], results[len(grads):]
            variants.append((condition, _element(plan, printer, steps, value, gradients, grads, with_grads, plain,
                                                 outputs)))
    return variants


def _plain_test(plan: KernelPlan) -> str:
    """Whether a call has no weights, no per-element output, and one value for each optional input."""
    optional = [f"_{safe_name(i.name)}_.size == 1" for i in plan.loss.inputs if i.default is not None]
    return " and ".join(["not __weighted", "not __elementwise", *optional])


def generate_grad_hess(plan: KernelPlan, dtype: np.dtype, header: str, target: Target = CPU) -> str:
    """A module with one kernel, `loss_grad_hess`: `plan` from symbolic.derive_hessian."""
    printer = NumbaPrinter()
    return target.module(with_formula(header, plan), dtype, printer,
                         [_kernel(plan, printer, True, target, ("__grad", "__hess"))])


def _kernel(plan: KernelPlan, printer: NumbaPrinter, with_grads: bool, target: Target,
            outputs: tuple[str, ...] = (), shown: bool = False) -> str:
    """`loss_value`, or with `with_grads` the fused `loss_value_and_grad`, or with `outputs` named
    (gradient, second derivative) `loss_grad_hess`, or with `shown` `loss_value_and_grad_outputs` (the spec's
    `output` values of element i in `__extra[i]`): one skeleton for all four."""
    args, prologue = _signature(plan)
    grads = list(outputs) or ([f"__grad_{safe_name(name)}" for name in plan.loss.wrt] if with_grads else [])
    name, extra, doc = (("loss_value_and_grad", ["__gscale"], "loss_value, and each gradient times weight and "
                         "__gscale, in one pass.") if with_grads else
                        ("loss_value", [], "Weighted sum of the loss elements; each one is also stored in __out "
                         "when it has room."))
    if outputs:
        name, doc = "loss_grad_hess", "loss_value, with each gradient and second derivative times weight and __gscale."
    if shown:
        name, doc = "loss_value_and_grad_outputs", "loss_value_and_grad, with the output values in __extra."
        grads = grads + ["__extra"]
    lines = [
        target.kernel_decorator,
        f"def {name}({target.parameters(args + ['__weight', '__scale', '__check', *extra, '__out', *grads])}):",
        f'    """{doc}"""',
        *[f"    {line}" for line in prologue],
        "    __s = F(__scale)",
        *(["    __gs = F(__gscale)"] if with_grads else []),
        f"    __n = _{safe_name(plan.loss.inputs[0].name)}_.size",
        "    __weighted = __weight.size == __n",
        "    __elementwise = __out.size == __n",
        *([] if target.cuda else [f"    __plain = {_plain_test(plan)}"]),
        "    __total = 0.0",
        *(f"    {line}" for line in target.element_loop("__n", _variants(plan, printer, with_grads,
                                                                         grads[:len(grads) - shown], shown))),
        *[f"    {line}" for line in target.finish()],
    ]
    return "\n".join(lines) + "\n"
