"""What differs between the CPU and CUDA versions of a generated module; everything else is shared.

Both targets print the same loss body (one printer, one skeleton per loss kind); a target
only says how a kernel is declared, which range of elements or rows one call (CPU) or one
thread (CUDA) walks, how its partial sum leaves the kernel, and which functions the
module binds to the names the printer writes (`fast_exp`, `load`, ...).

- CPU: serial `nogil` kernels over [__start, __stop) that return their float64 sum
  (lossdsl.runtime.threads runs them in chunks), vectorisable math from lossdsl.runtime.kernel_math.
- CUDA: grid-stride loops; each block sums its threads' totals in shared memory and adds
  the result to `__result[0]` with one float64 atomic; CUDA's own math library.
"""
from __future__ import annotations

import ast
import re
from dataclasses import dataclass

import numpy as np

from .printer import NumbaPrinter

# Reassociation lets the float64 sum vectorise; nnan/ninf are left out on purpose:
# log clamps and inf guards in the catalogue depend on IEEE infinities and NaN. Every
# generated CPU function uses NumPy's error model: x/0 is inf or NaN, never an exception.
FASTMATH = '{"contract", "reassoc"}'
# CUDA threads per block (a power of two: the block sum halves it); fewer under Numba's
# simulator, which runs every thread as a Python thread
THREADS = "8 if numba.config.ENABLE_CUDASIM else 256"

_FLOAT_TYPES = {np.dtype(np.float32): "np.float32", np.dtype(np.float64): "np.float64"}

# fast_NAME on the CPU: the vectorisable versions of lossdsl.runtime.kernel_math where one exists, libm's otherwise
_CPU_MATH = {
    np.dtype(np.float32): {"exp": "exp_float32", "expm1": "expm1_float32", "log": "log_float32", "log64": "log_float64",
                           "log1p": "log1p_float32", "log1p_unit": "log1p_unit_float32", "ipow": "ipow_float32",
                           "whole_exponent": "whole_exponent_float32",
                           "tanh": "tanh_float32", "tanh_exp": "tanh_exp_float32", "pow": "pow_float32",
                           "pow_log": "pow_log_float32", "pow_from_log": "pow_from_log_float32"},
    np.dtype(np.float64): {"exp": "exp_float64", "expm1": "expm1_float64", "log": "log_float64", "log64": "log_float64",
                           "log1p": "log1p_float64", "log1p_unit": "log1p_unit_float64", "ipow": "ipow_float64",
                           "whole_exponent": "whole_exponent_float64",
                           "tanh": "math.tanh", "tanh_exp": "tanh_exp_float64", "pow": "math.pow",
                           "pow_log": "pow_log_float64", "pow_from_log": "pow_from_log_float64"},
}

# On CUDA, math.* is CUDA's own (libdevice); the lowered forms fall back to the plain functions
# (under the simulator, which runs Python's math and so raises where CUDA gives inf or NaN, NumPy's)
_CUDA_MATH = {"exp": ("math.exp", "np.exp"), "expm1": ("math.expm1", "np.expm1"), "log": ("math.log", "np.log"),
              "log1p": ("math.log1p", "np.log1p"), "tanh": ("math.tanh", "np.tanh"), "pow": ("math.pow", "np.power")}
_CUDA_FUNCTIONS = '''
@cuda.jit(device=True, inline=True)
def fast_tanh_exp(x, z):
    return fast_tanh(x)


@cuda.jit(device=True, inline=True)
def fast_log1p_unit(z, r):
    return fast_log1p(z)


@cuda.jit(device=True, inline=True)
def fast_pow_log(x):
    return 0.0


@cuda.jit(device=True, inline=True)
def fast_pow_from_log(x, y, log_base):
    return fast_pow(x, y)


@cuda.jit(device=True)
def _block_sum(shared, value):
    """The sum of `value` over the block's threads, for every thread (a tree in shared memory)."""
    t = cuda.threadIdx.x
    shared[t] = value
    cuda.syncthreads()
    half = THREADS // 2
    while half > 0:
        if t < half:
            shared[t] += shared[t + half]
        cuda.syncthreads()
        half //= 2
    total = shared[0]
    cuda.syncthreads()
    return total


@cuda.jit(device=True)
def _block_logsumexp(shared, shared_s, top, total):
    """Combines the threads' online logsumexp pairs (max, sum of exp(x - max)); every thread gets the row's."""
    t = cuda.threadIdx.x
    shared[t] = top
    shared_s[t] = total
    cuda.syncthreads()
    half = THREADS // 2
    while half > 0:
        if t < half:
            a, b = shared[t], shared[t + half]
            top = max(a, b)
            scale_a = 1.0 if a == top else fast_exp(a - top)
            scale_b = 1.0 if b == top else fast_exp(b - top)
            shared_s[t] = shared_s[t] * scale_a + shared_s[t + half] * scale_b
            shared[t] = top
        cuda.syncthreads()
        half //= 2
    top, total = shared[0], shared_s[0]
    cuda.syncthreads()
    return top, total


@cuda.jit(device=True)
def _block_best(shared, shared_i, value, index, sign):
    """The block's extreme (sign 1: max, -1: min) and its first position; a NaN wins, as on the CPU."""
    t = cuda.threadIdx.x
    shared[t] = value
    shared_i[t] = index
    cuda.syncthreads()
    half = THREADS // 2
    while half > 0:
        if t < half:
            a, b = shared[t], shared[t + half]
            i, j = shared_i[t], shared_i[t + half]
            a_nan, b_nan = a != a, b != b
            other = (b_nan and (not a_nan or j < i)) or (not a_nan and not b_nan and (
                sign * b > sign * a or (b == a and j < i)))
            if other:
                shared[t] = b
                shared_i[t] = j
        cuda.syncthreads()
        half //= 2
    best, where = shared[0], shared_i[0]
    cuda.syncthreads()
    return best, where


@cuda.jit(device=True, inline=True)
def load(array, index):
    return array[index]


@cuda.jit(device=True, inline=True)
def store(array, index, value):
    array[index] = value
'''

ELEMENT_BLOCK = 512  # elements whose losses a CPU kernel buffers before adding them up (see Target.element_loop)

_BLOCK_SUM = [
    "__partials = cuda.shared.array(THREADS, numba.float64)",
    "__total = _block_sum(__partials, __total)",
    "if cuda.threadIdx.x == 0:",
    "    cuda.atomic.add(__result, 0, __total)",
]


@dataclass(frozen=True)
class Target:
    name: str
    kernel_decorator: str
    helper_decorator: str
    cuda: bool

    def parameters(self, arguments: list[str]) -> str:
        """A kernel's parameter list: CPU kernels take their range first, CUDA kernels a result array last."""
        return ", ".join(arguments + ["__result"] if self.cuda else ["__start", "__stop", *arguments])

    def element_loop(self, count: str, variants: list[tuple[str | None, list[str]]]) -> list[str]:
        """The loop over the elements one call (CPU) or thread walks, adding each element's weighted `__loss` into
        the float64 `__total`. `variants`: (a condition the loop does not change, or None for the last, the
        general one; the lines of one element), at least one conditional before the general one, so that a
        call meeting a condition runs a loop without the selects or work it makes needless. CUDA runs the
        general loop (its threads take one branch alike).

        On the CPU, unsigned indices (no wraparound), and each block of ELEMENT_BLOCK losses is kept in a small
        buffer and then added into the float64 total by a loop of its own: a float64 sum in the element loop
        would make LLVM vectorise a float32 kernel at the width of float64 (4 lanes of AVX2, not 8). The sum is
        float64 all the same (its range too: float32 losses near the largest float add up without overflow)."""
        if self.cuda:
            return [f"for __i in range(cuda.grid(1), {count}, cuda.gridsize(1)):",
                    *(f"    {line}" for line in variants[-1][1]), "    __total += __loss"]
        lines = ["__stop_u = np.uint64(__stop)", f"__losses = np.empty({ELEMENT_BLOCK}, F)"]
        for k, (condition, body) in enumerate(variants):
            lines.append("else:" if condition is None else f"{'if' if k == 0 else 'elif'} {condition}:")
            lines += [f"    for __b in range(np.uint64(__start), __stop_u, np.uint64({ELEMENT_BLOCK})):",
                      f"        __end = min(__b + np.uint64({ELEMENT_BLOCK}), __stop_u)",
                      "        for __i in range(__b, __end):",
                      *(f"            {line}" for line in body), "            __losses[__i - __b] = __loss",
                      "        for __j in range(__end - __b):",
                      "            __total += __losses[__j]"]
        return lines

    def row_loop(self, per_block: bool = False) -> str:
        """The rows one call (CPU) walks, or on CUDA one thread, or with `per_block` one block."""
        if not self.cuda:
            return "range(__start, __stop)"
        return ("range(cuda.blockIdx.x, __rows, cuda.gridDim.x)" if per_block
                else "range(cuda.grid(1), __rows, cuda.gridsize(1))")

    def finish(self, total: str = "__total") -> list[str]:
        """The last lines of a kernel: hand its float64 sum `total` back."""
        if not self.cuda:
            return [f"return {total}"]
        return [line.replace("__total", total) for line in _BLOCK_SUM]

    def module(self, header: str, dtype: np.dtype, printer: NumbaPrinter, kernels: list[str],
               data: str = "") -> str:
        """A generated module: header, imports, the float type (and `data`: constants the runtime reads),
        the helpers the printer used, the kernels. It binds only the names its code calls."""
        dtype = np.dtype(dtype)
        helpers = "".join(f"\n{self.helper_decorator}\n{source.strip()}\n\n"
                          for _, source in sorted(printer.helpers.items()))
        code = helpers + "\n".join(kernels)
        if self.cuda:
            imports = "from numba import cuda\n" + _cuda_functions(code)
            constants = f"F = {_FLOAT_TYPES[dtype]}\nTHREADS = {THREADS}\n"
        else:
            imports = _cpu_imports(code, dtype)
            constants = f"F = {_FLOAT_TYPES[dtype]}\nFASTMATH = {FASTMATH}\n{data}"
        return (f"{header}\n\nimport math\n\nimport numba\nimport numpy as np\n\n{imports}\n"
                f"{constants}\n{helpers}\n" + "\n\n".join(kernels) + self.declaration(kernels))

    def declaration(self, kernels: list[str]) -> str:
        """`KERNELS`: each kernel's arguments in order, without this target's own (the runtime binds by name)."""
        own = {"__result"} if self.cuda else {"__start", "__stop"}
        signatures: dict[str, tuple[str, ...]] = {}
        for node in ast.parse("\n".join(kernels)).body:
            if isinstance(node, ast.FunctionDef):
                signatures[node.name] = tuple(a.arg for a in node.args.args if a.arg not in own)
            elif isinstance(node, ast.Assign) and isinstance(node.value, ast.Name):  # an alias of a kernel
                signatures[node.targets[0].id] = signatures[node.value.id]
        lines = "".join(f"    {name!r}: {arguments!r},\n" for name, arguments in signatures.items())
        return f"\n\n# each kernel's arguments, by name (lossdsl.runtime.protocol.bind)\nKERNELS = {{\n{lines}}}\n"


def _called(code: str) -> set[str]:
    """The helper names `code` uses: fast_NAME math, CUDA block reductions, load, store and maximum."""
    return set(re.findall(r"\b(fast_\w+|_block_\w+|load|store|maximum)\b", code))


def _cpu_imports(code: str, dtype: np.dtype) -> str:
    """Binds what a CPU module's code calls: jit helpers, and fast_NAME from kernel_math or math."""
    used = _called(code)
    jit = [name for name in ("kernel", "load", "store", "maximum") if name in used or (name == "kernel" and "@kernel(" in code)]
    chosen = [(name, source) for name, source in sorted(_CPU_MATH[dtype].items()) if f"fast_{name}" in used]
    imported = [f"{source} as fast_{name}" for name, source in chosen if not source.startswith("math.")]
    assigned = [(f"fast_{name}", source) for name, source in chosen if source.startswith("math.")]
    lines = [f"from lossdsl.runtime.jit import {', '.join(jit)}"] if jit else []
    if imported:
        lines.append(f"from lossdsl.runtime.kernel_math import {', '.join(imported)}")
    if assigned:
        lines.append(f"{', '.join(n for n, _ in assigned)} = {', '.join(s for _, s in assigned)}")
    return "\n".join(lines) + "\n"


def _cuda_functions(code: str) -> str:
    """The device functions a CUDA module's code calls, and those they call in turn."""
    definitions = {re.search(r"def (\w+)\(", part).group(1): part.strip()
                   for part in _CUDA_FUNCTIONS.split("\n\n\n") if part.strip()}
    used, todo = set(), _called(code)
    while todo:
        name = todo.pop()
        if name not in used:
            used.add(name)
            todo |= _called(definitions.get(name, "")) - {name}
    math_names = [name for name in _CUDA_MATH if f"fast_{name}" in used]
    lines = []
    if math_names:
        targets = ", ".join(f"fast_{name}" for name in math_names)
        lines += ["if numba.config.ENABLE_CUDASIM:",
                  f"    {targets} = {', '.join(_CUDA_MATH[n][1] for n in math_names)}",
                  "else:",
                  f"    {targets} = {', '.join(_CUDA_MATH[n][0] for n in math_names)}"]
    parts = ["\n".join(lines)] if lines else []
    parts += [definition for name, definition in definitions.items() if name in used]  # callees before callers
    return "".join(f"\n\n{part}\n" for part in parts)


CPU = Target("cpu", '@kernel(nogil=True, fastmath=FASTMATH, error_model="numpy", cache=True)',
             '@numba.njit(inline="always", fastmath=FASTMATH, error_model="numpy")', cuda=False)
# CUDA: no fastmath (it would include nnan/ninf); the label pass of row losses runs there too
CUDA = Target("cuda", "@cuda.jit(cache=True)", "@cuda.jit(device=True, inline=True)", cuda=True)
TARGETS = {"cpu": CPU, "cuda": CUDA}
