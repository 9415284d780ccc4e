"""Stage 4 (CPU): a `KernelPlan` → the source of a Python module of Numba kernels.

The module has two serial, `nogil` kernels over a range [start, stop) of elements
(lossdsl.threads runs them in chunks, one per thread):
- `loss_value(start, stop, inputs…, params…, weight, scale, out)`: the weighted sum of
  the loss elements (accumulated in float64), also stored per element when `out` has room;
- `loss_value_and_grad(…, gscale, out, grads…)`: the same sum plus every gradient,
  in one pass over memory.
Reduction and weighting are runtime arguments, so one compiled kernel serves "none",
"sum", "mean" and the per-sample form, weighted or not. An empty `weight` array means
unweighted; an empty `out` means no per-element output.

Names: the spec's own names are used bare, input arrays and parameter arguments are
`_name_`, CSE temporaries `_0, _1, ...`, and the skeleton's variables `__name`, so no
spec can collide with generated code.
"""
from __future__ import annotations

import numpy as np

from .. import ir
from ..symbolic import KernelPlan, safe_name
from .printer import NumbaPrinter

# Reassociation lets the float64 sum vectorise; nnan/ninf are left out on purpose:
# log clamps and inf guards in the catalogue depend on IEEE infinities and NaN. Every
# generated function uses NumPy's error model: x/0 is inf or NaN, never an exception.
FASTMATH = '{"contract", "reassoc"}'

_FLOAT_TYPES = {np.dtype(np.float32): "np.float32", np.dtype(np.float64): "np.float64"}
# Transcendental functions the printer writes as fast_NAME: the vectorisable versions of
# lossdsl.kernel_math where one exists for the float type, libm's otherwise.
_FAST_MATH = {
    np.dtype(np.float32): {"exp": "exp_float32", "log": "log_float32", "log1p": "log1p_float32",
                           "tanh": "tanh_float32", "tanh_exp": "tanh_exp_float32", "pow": "pow_float32",
                           "pow_log": "pow_log_float32", "pow_from_log": "pow_from_log_float32"},
    np.dtype(np.float64): {"exp": "exp_float64", "log": "log_float64", "log1p": "log1p_float64",
                           "tanh": "math.tanh", "tanh_exp": "tanh_exp_float64", "pow": "math.pow",
                           "pow_log": "pow_log_float64", "pow_from_log": "pow_from_log_float64"},
}


def _fast_math_imports(dtype: np.dtype) -> str:
    """Binds every fast_NAME of the module: imports from kernel_math, assignments from math."""
    chosen = sorted(_FAST_MATH[dtype].items())
    imported = [f"{source} as fast_{name}" for name, source in chosen if not source.startswith("math.")]
    assigned = [(f"fast_{name}", source) for name, source in chosen if source.startswith("math.")]
    lines = [f"from lossdsl.kernel_math import {', '.join(imported)}"]
    if assigned:
        lines.append(f"{', '.join(n for n, _ in assigned)} = {', '.join(s for _, s in assigned)}")
    return "\n".join(lines)


def generate(plan: KernelPlan, dtype: np.dtype, header: str) -> str:
    """The complete module source; `header` is a comment block (origin, cache key)."""
    printer = NumbaPrinter()
    kernels = [_kernel(plan, printer, with_grads=False), _kernel(plan, printer, with_grads=True)]
    return module_source(header, dtype, printer, kernels)


def module_source(header: str, dtype: np.dtype, printer: NumbaPrinter, kernels: list[str]) -> str:
    """A generated module: header, imports, the float type, the helpers the printer used, the kernels."""
    dtype = np.dtype(dtype)
    decorator = '@numba.njit(inline="always", fastmath=FASTMATH, error_model="numpy")'
    helpers = "".join(f"\n{decorator}\n{source.strip()}\n\n" for _, source in sorted(printer.helpers.items()))
    return (f"{header}\n\nimport math\n\nimport numba\nimport numpy as np\n\nfrom lossdsl.jit import kernel, load, store\n"
            f"{_fast_math_imports(dtype)}\n\n"
            f"F = {_FLOAT_TYPES[dtype]}\nFASTMATH = {FASTMATH}\n\n{helpers}\n" + "\n\n".join(kernels))


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
    return [f"        {safe_name(i.name)} = _{safe_name(i.name)}_[__i]" for i in plan.loss.inputs]


def _kernel(plan: KernelPlan, printer: NumbaPrinter, with_grads: bool) -> str:
    """`loss_value`, or with `with_grads` the fused `loss_value_and_grad`: one skeleton for both."""
    args, prologue = _signature(plan)
    grads = [f"__grad_{safe_name(name)}" for name in plan.loss.wrt] if with_grads else []
    steps, (value, *gradients) = ((plan.fused_steps, plan.fused_results) if with_grads
                                  else (plan.value_steps, (plan.value_result,)))
    name, extra, doc = (("loss_value_and_grad", ["__gscale"], "loss_value, and each gradient times weight and "
                         "__gscale, in one pass.") if with_grads else
                        ("loss_value", [], "Weighted sum of the loss elements; each one is also stored in __out "
                         "when it has room."))
    lines = [
        formula_comment(plan),
        "@kernel(nogil=True, fastmath=FASTMATH, error_model=\"numpy\", cache=True)",
        f"def {name}({', '.join(['__start', '__stop'] + args + ['__weight', '__scale', *extra, '__out', *grads])}):",
        f'    """{doc}"""',
        *[f"    {line}" for line in prologue],
        "    __s = F(__scale)",
        *(["    __gs = F(__gscale)"] if with_grads else []),
        f"    __n = _{safe_name(plan.loss.inputs[0].name)}_.size",
        "    __weighted = __weight.size == __n",
        "    __elementwise = __out.size == __n",
        "    __total = 0.0",
        "    for __i in range(np.uint64(__start), np.uint64(__stop)):  # unsigned: no negative-index wraparound",
        *_loop_head(plan),
        *_body(printer, steps, "        "),
        "        __w = __s * __weight[__i] if __weighted else __s",
        f"        __loss = ({printer.doprint(value)}) * __w",
        "        if __elementwise:",
        "            __out[__i] = __loss",
        "        __total += __loss",
        *(["        __gw = __w * __gs"] if with_grads else []),
        *[f"        {g}[__i] = ({printer.doprint(expr)}) * __gw" for g, expr in zip(grads, gradients)],
        "    return __total",
    ]
    return "\n".join(lines) + "\n"
