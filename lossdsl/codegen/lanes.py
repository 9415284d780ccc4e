"""Row kernels over a tile of neighbouring rows side by side, for a class axis with elements after it.

In PyTorch's (N, C, H, W) layout the classes of one row lie H*W elements apart and rows r and r + 1 are
neighbours: a row kernel reads one element per cache line, and its passes are loops of C (21 classes for VOC
segmentation) too short to vectorise well. A lane kernel takes a tile of `__lanes` rows with the same outer
index and inner indices q0 .. q0 + __lanes - 1, and runs the row kernel's code for all of them at once:

- each pass over the axis becomes `for c: for __j in range(__n):`, so the loop LLVM vectorises reads
  contiguous elements (lane j of class c sits beside lane j + 1);
- each value the row code computes once a row (a label, a reduction's accumulator, the row's loss) is an
  array of one element per lane, assigned in a loop over the lanes.

The row's code is the row kernel's own (rows.row_body, written once for both), rewritten line by line
(`in_lanes`): which names hold row values follows from where they are assigned. Rows left out (`ignore if`)
run with label 0 and their results are dropped: their loss counts 0, their gradient is stored as 0.
Every input over the axis steps 1 from lane to lane (the runtime gives a per-class vector as one row of
__lanes copies a class), so each lane loop reads contiguous elements with no stride check.
`__lanes` is a call argument (lossdsl.runtime.layout.LANE_BYTES), not a constant: LLVM fully unrolls a loop of
constant count 16 early and then vectorises the copies poorly.
"""
from __future__ import annotations

import re

from ..symbolic.derive import safe_name
from ..symbolic.reductions import RowPlan
from .printer import NumbaPrinter
from .rows import _Writer, gradient_arrays, keep_test, kernel_arguments, row_body
from .targets import CPU

_ASSIGNMENT = re.compile(r"^(\w+) \+?= (.*)$")
_CONTROL = ("for ", "if ", "elif ", "else:")
_BASE = re.compile(r"(?<![\w.])__b(\d+)(?!\w)")
_GRAD_BASE = re.compile(r"(?<![\w.])__gb(?!\w)")


def lane_kernel(plan: RowPlan, printer: NumbaPrinter, with_grads: bool, in_place: bool = False) -> str:
    """`loss_value_lanes`, `loss_value_and_grad_lanes` or (`in_place`, no softmax numerators kept in the gradient
    row) `loss_value_and_grad_in_place_lanes`: the row kernel's arguments and `__lanes`; [__start, __stop) are
    tiles, __lanes rows each (the last of each outer index may be shorter)."""
    w = _Writer(plan, printer, CPU, lanes=True)
    grads = gradient_arrays(plan, with_grads)
    name = ("loss_value_and_grad_in_place_lanes" if in_place else "loss_value_and_grad_lanes" if with_grads
            else "loss_value_lanes")
    head = [CPU.kernel_decorator, f"def {name}({CPU.parameters(kernel_arguments(plan, grads) + ['__lanes'])}):",
            '    """Weighted sum of the row losses, tile by tile' + (', and each gradient row."""' if with_grads
                                                                    else '."""'),
            "    __s = F(__scale)", *(["    __gs = F(__gscale)"] if with_grads else []),
            "    __weighted = __weight.size == __rows", "    __elementwise = __out.size == __rows",
            "    __total = 0.0", *(f"    {p.name} = F(_{p.name}_)" for p in plan.params), f"    {plan.length} = F(__C)"]
    lanes = {"__w": "F", "__keep": "np.bool_"}
    tile = ["    __tiles = (__inner + __lanes - 1) // __lanes", "    for __tile in range(__start, __stop):",
            "        __o = __tile // __tiles", "        __q0 = (__tile - __o * __tiles) * __lanes",
            "        __n = min(__lanes, __inner - __q0)", "        __row0 = __o * __inner + __q0"]
    loads = []
    for k, spec_input in enumerate(plan.loss.inputs):
        input_name = safe_name(spec_input.name)
        if spec_input.axis:
            tile += [f"        __b{k} = __o * __steps[{k}, 0] + __q0 * __steps[{k}, 1]",
                     f"        __t{k} = __steps[{k}, 2]"]
        else:
            lanes[input_name] = "np.int64" if spec_input.name in plan.loss.labels else "F"
            loads.append(f"{input_name} = load(_{input_name}_, __o * __steps[{k}, 0] + (__q0 + __j) * __steps[{k}, 1])")
    if with_grads:
        tile.append("        __gb = __o * __gso + __q0 * __gsq")
    keep = keep_test(plan, w)
    labels = [f"{label} = {label} if __keep else 0" for label in map(safe_name, plan.loss.labels)]
    prologue = [*loads, "__w = __s * __weight[__row0 + __j] if __weighted else __s", f"__keep = {keep}", *labels]
    tile += ["        for __j in range(__n):", *(f"            {_indexed(line, _names(lanes))}" for line in prologue)]
    row_body(w, 2, grads, f"__gb + {plan.position} * __gsc", keep=with_grads and not in_place)
    body, lanes = in_lanes(w.lines, str(plan.position), lanes, w.kinds)
    tile += body
    tile += ["        if __elementwise:", "            for __j in range(__n):",
             "                __out[__row0 + __j] = __loss[__j] if __keep[__j] else 0.0",
             "        for __j in range(__n):", "            __total += __loss[__j] if __keep[__j] else 0.0"]
    arrays = [f"    {name} = np.empty(__lanes, {kind})" for name, kind in lanes.items()]
    return "\n".join(head + arrays + tile + ["    return __total"]) + "\n"


def in_lanes(lines: list[str], position: str, lanes: dict[str, str], kinds: dict[str, str]
             ) -> tuple[list[str], dict[str, str]]:
    """Row code (`lines`, at one row's indent) as tile code: each loop over the axis (`for <position> in`) with
    a loop over the lanes inside, each row-level statement that involves a row value in a loop over the lanes,
    and each row value `v` read and written as `v[__j]`. `lanes` maps the row values known beforehand to their
    NumPy types; returns the lines and every row value with its type (`kinds`: those `statements` noted, the
    others are the kernel's float, or float64 and int64 where they start as 0.0 and 0)."""
    parsed = [((len(line) - len(line.lstrip())) // 4, line.strip()) for line in lines]
    inside, loop_depth = [], None
    for depth, text in parsed:
        if loop_depth is not None and depth <= loop_depth:
            loop_depth = None
        inside.append(loop_depth is not None)
        if loop_depth is None and text.startswith(f"for {position} in range("):
            loop_depth = depth
    assigned_in_loops, row_assignments = set(), []
    for (depth, text), in_loop in zip(parsed, inside):
        match = _ASSIGNMENT.match(text)
        if match and in_loop:
            assigned_in_loops.add(match.group(1))
        elif match:
            row_assignments.append(match.groups())
    first = {}  # each name's first value, which sets its type
    for name, value in row_assignments:
        first.setdefault(name, value)
    lanes = dict(lanes)
    changed = True
    while changed:  # a row value: assigned at row level from row values, or accumulated along the axis
        changed, names = False, _names(lanes)
        for name, value in row_assignments:
            if name not in lanes and (name in assigned_in_loops or names.search(value)):
                lanes[name] = kinds.get(name) or {"0.0": "np.float64", "0": "np.int64"}.get(first[name], "F")
                changed = True
    names = _names(lanes)
    out, group_depth = [], None
    for (depth, text), in_loop in zip(parsed, inside):
        rewritten = _indexed(text, names)
        if in_loop:
            out.append("    " * (depth + 1) + rewritten)
            continue
        is_control = text.startswith(_CONTROL)
        if is_control and not text.startswith(f"for {position} in range(") and names.search(text):
            raise AssertionError(f"lossdsl internal error: a lane kernel cannot branch on a row value: {text}")
        if is_control or not (names.search(text) or _BASE.search(text) or _GRAD_BASE.search(text)):
            group_depth = None
            out.append("    " * depth + rewritten)
            if text.startswith(f"for {position} in range("):
                out.append("    " * (depth + 1) + "for __j in range(__n):")
            continue
        if group_depth != depth:
            out.append("    " * depth + "for __j in range(__n):")
            group_depth = depth
        out.append("    " * (depth + 1) + rewritten)
    return out, lanes


def _names(lanes: dict[str, str]) -> re.Pattern:
    """A pattern matching the names of row values where they are read or written (not a longer name's part)."""
    return re.compile(r"(?<![\w.])(" + "|".join(map(re.escape, sorted(lanes, key=len, reverse=True))) + r")(?![\w(\[])")


def _indexed(text: str, names: re.Pattern) -> str:
    """`text` with each row value (`names`) as its lane's element and each row base as the lane's own."""
    text = names.sub(r"\1[__j]", text)
    text = _BASE.sub(r"(__b\1 + __j)", text)
    return _GRAD_BASE.sub("(__gb + __j)", text)
