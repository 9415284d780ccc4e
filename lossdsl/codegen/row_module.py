"""A loss over an axis as one generated module: the row kernels of codegen/rows.py and, on the CPU, the tile
kernels of codegen/lanes.py (for a class axis with elements after it), which rewrite the row kernels' code."""
from __future__ import annotations

import numpy as np

from ..errors import LossInputError
from ..symbolic.reductions import RowPlan
from .elementwise import IN_PLACE_ALIAS, with_formula
from .lanes import lane_kernel
from .printer import NumbaPrinter
from .rows import label_kernel, row_kernel, softmax_kept
from .targets import CPU, Target

LANES_IN_PLACE_ALIAS = "loss_value_and_grad_in_place_lanes = loss_value_and_grad_lanes\n"


def generate_rows(plan: RowPlan, dtype: np.dtype, header: str, target: Target = CPU) -> str:
    """The module's source: the label pass, values, values and gradients; on the CPU also the in-place
    gradient (an alias where no softmax numerators are kept), the outputs kernel and the tile kernels."""
    if plan.listed is not None and target.cuda:
        raise LossInputError(f"{plan.loss.name}: losses over a list axis ({plan.listed.axis}) run on the CPU; "
                             "CUDA kernels for them are not written yet")
    printer = NumbaPrinter()
    kernels = [label_kernel(plan, printer, target), row_kernel(plan, printer, False, target),
               row_kernel(plan, printer, True, target)]
    if not target.cuda:
        kept, _ = softmax_kept(plan)
        kernels.append(IN_PLACE_ALIAS if kept is None else row_kernel(plan, printer, True, target, in_place=True))
        if plan.outputs:
            kernels.append(row_kernel(plan, printer, True, target, outputs=True))
        if plan.listed is None:  # tiles, for a class axis with elements after it
            kernels += [lane_kernel(plan, printer, False), lane_kernel(plan, printer, True),
                        LANES_IN_PLACE_ALIAS if kept is None else lane_kernel(plan, printer, True, in_place=True)]
    return target.module(with_formula(header, plan), dtype, printer, kernels)
