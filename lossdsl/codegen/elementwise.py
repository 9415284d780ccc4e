"""Stage 4 for elementwise losses: a `KernelPlan` → the source of a module of Numba kernels.

The module (CPU or CUDA: codegen/targets.py) has two kernels over the elements; on the
CPU they are serial and `nogil`, over a range [start, stop) (lossdsl.runtime.threads runs them in
chunks, one per thread), on CUDA grid-stride loops adding to `__result[0]`:
- `loss_value(start, stop, inputs…, params…, weight, scale, out)`: the weighted sum of
  the loss elements (accumulated in float64), also stored per element when `out` has room;
- `loss_value_and_grad(…, gscale, out, grads…)`: the same sum plus every gradient,
  in one pass over memory.
Reduction and weighting are runtime arguments, so one compiled kernel serves "none",
"sum", "mean" and the per-sample form, weighted or not. An empty `weight` array means
unweighted; an empty `out` means no per-element output; an optional input of one element holds
one value for every element.

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
    lines += [f"#     {local.name} = {ir.format_expr(local.expr)}" for local in loss.locals]
    return "\n".join(lines)


def _signature(plan: KernelPlan) -> tuple[list[str], list[str]]:
    """Kernel arguments for the inputs and numeric parameters, and the prologue that types the parameters."""
    inputs = [f"_{safe_name(i.name)}_" for i in plan.loss.inputs]
    params = [f"_{p.name}_" for p in plan.params]
    prologue = [f"{p.name} = F(_{p.name}_)" for p in plan.params]
    return inputs + params, prologue


def _body(printer: NumbaPrinter, steps, indent: str) -> list[str]:
    return [f"{indent}{temp} = {printer.doprint(expr)}" for temp, expr in steps]


def _loop_head(plan: KernelPlan) -> list[str]:
    """Each input's element; an optional one (`pos_weight = 1`) may be one value for all, so a call that leaves
    it out or gives a scalar passes one element rather than a broadcast copy (the test is loop-invariant)."""
    def read(i) -> str:
        name = f"_{safe_name(i.name)}_"
        return f"{name}[__i]" if i.default is None else f"({name}[__i] if {name}.size == __n else {name}[0])"
    return [f"{safe_name(i.name)} = {read(i)}" for i in plan.loss.inputs]


def generate_grad_hess(plan: KernelPlan, dtype: np.dtype, header: str, target: Target = CPU) -> str:
    """A module with one kernel, `loss_grad_hess`: `plan` from symbolic.derive_hessian."""
    printer = NumbaPrinter()
    return target.module(with_formula(header, plan), dtype, printer,
                         [_kernel(plan, printer, True, target, ("__grad", "__hess"))])


def _kernel(plan: KernelPlan, printer: NumbaPrinter, with_grads: bool, target: Target,
            outputs: tuple[str, ...] = ()) -> str:
    """`loss_value`, or with `with_grads` the fused `loss_value_and_grad`, or with `outputs` named
    (gradient, second derivative) `loss_grad_hess`: one skeleton for all three."""
    args, prologue = _signature(plan)
    grads = list(outputs) or ([f"__grad_{safe_name(name)}" for name in plan.loss.wrt] if with_grads else [])
    steps, (value, *gradients) = ((plan.fused_steps, plan.fused_results) if with_grads
                                  else (plan.value_steps, (plan.value_result,)))
    name, extra, doc = (("loss_value_and_grad", ["__gscale"], "loss_value, and each gradient times weight and "
                         "__gscale, in one pass.") if with_grads else
                        ("loss_value", [], "Weighted sum of the loss elements; each one is also stored in __out "
                         "when it has room."))
    if outputs:
        name, doc = "loss_grad_hess", "loss_value, with each gradient and second derivative times weight and __gscale."
    lines = [
        target.kernel_decorator,
        f"def {name}({target.parameters(args + ['__weight', '__scale', *extra, '__out', *grads])}):",
        f'    """{doc}"""',
        *[f"    {line}" for line in prologue],
        "    __s = F(__scale)",
        *(["    __gs = F(__gscale)"] if with_grads else []),
        f"    __n = _{safe_name(plan.loss.inputs[0].name)}_.size",
        "    __weighted = __weight.size == __n",
        "    __elementwise = __out.size == __n",
        "    __total = 0.0",
        *(f"    {line}" for line in target.element_loop("__n", [
            *_loop_head(plan),
            *_body(printer, steps, ""),
            "__w = __s * __weight[__i] if __weighted else __s",
            f"__loss = ({printer.doprint(value)}) * __w",
            "if __elementwise:",
            "    __out[__i] = __loss",
            *(["__gw = __w * __gs"] if with_grads else []),
            *[f"{g}[__i] = ({printer.doprint(expr)}) * __gw" for g, expr in zip(grads, gradients)]])),
        *[f"    {line}" for line in target.finish()],
    ]
    return "\n".join(lines) + "\n"
