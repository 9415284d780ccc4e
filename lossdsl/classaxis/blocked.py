"""Running a loss over its class axis one block of classes at a time (lossdsl.classaxis.partials' plan,
as its `Levels`; codegen/blocks.py's kernels), for whoever supplies the blocks: a linear head computing each
block's logits (heads.py), or a process holding one slice of the classes (sharding.py).

A `BlockRun` is one call's rows. For each block of a level, `add_partials` combines that block's
partials into the running ones (`done`); across processes, lossdsl.classaxis.sharding's collectives then
make a level whole. Then `value` gives every row's loss from the whole partials, and `gradient`
each block's gradient.
"""
from __future__ import annotations

import numpy as np

from ..runtime.protocol import Kind, bind, safe_name
from ..runtime import threads
from ..errors import LossLabelError
from ..runtime.layout import RowCall
from .levels import Levels


class BlockRun:
    """Rows of one call of `loss` whose class axis (length `classes`) comes in blocks."""

    def __init__(self, loss, classes: int, dtype: np.dtype, outputs: bool = False, list_length: int = 0):
        self.loss, self.classes, self.dtype = loss, classes, np.dtype(dtype)
        self.module = loss.module(self.dtype, Kind.BLOCKS_OUTPUTS if outputs else Kind.BLOCKS)
        # the block plan's slots, without SymPy; a list axis's loads take list_length (K) slots each
        self.levels = Levels.of(self.module.PARTIALS, list_length)

    def call(self, arrays: dict, sample_weight, axis) -> RowCall:
        """The kernels' view of one block's arrays (the loss's inputs by name, the class axis sliced)."""
        return RowCall(self.loss, arrays, axis, "none", None, sample_weight, 0)

    def add_partials(self, block: RowCall, lo: int, done: np.ndarray, level: int) -> np.ndarray:
        """`done` (returned, changed in place) with the partials of `level` over this block (classes lo,
        lo + 1, ...) combined into it; its earlier levels must be whole."""
        partial = self.levels.empty(block.rows)
        threads.run(self.module.loss_block_pass, block.rows, block.work,
                    self.arguments(block, "loss_block_pass", lo, done, {"__level": level, "__partial": partial}))
        self.levels.combine(done, partial, level)
        return done

    def value(self, block: RowCall, done: np.ndarray, extra: np.ndarray | None = None):
        """(each row's loss, each row's share of the mean's divisor) from the whole partials; `extra`
        (rows, outputs) receives the spec's `output` values. A label outside the classes raises
        LossLabelError naming its row (an index of the rows' shape)."""
        rows = block.rows
        out, norms, bad = np.empty(rows, self.dtype), np.empty(rows), np.zeros(rows, np.int8)
        shown = extra if extra is not None else np.empty((0, 0), self.dtype)
        threads.run(self.module.loss_block_value, rows, rows,
                    self.arguments(block, "loss_block_value", 0, done, {
                        "__weight": block.weights, "__scale": 1.0, "__out": out, "__norms": norms, "__bad": bad,
                        "__extra": shown}))
        if bad.any():
            row = int(np.argmax(bad))
            label = next((int(block.arrays[k][row]) for k in block.label_inputs
                          if not 0 <= block.arrays[k][row] < self.classes), None)
            index = tuple(int(i) for i in np.unravel_index(row, block.shape))
            if label is None:  # one of the list axis's labels (which positions count, only the kernel knew)
                raise LossLabelError(f"{self.loss.name}: a label along the list axis at row {index} is outside "
                                     f"the {self.classes} classes", index, -1)
            raise LossLabelError(f"{self.loss.name}: label {label} at row {index} is outside the {self.classes} "
                                 "classes", index, label)
        return out.reshape(block.shape), norms

    def gradient(self, block: RowCall, lo: int, done: np.ndarray, grad: np.ndarray | dict, scale: float = 1.0) -> None:
        """This block's gradient (times `scale`) into `grad`, flat and C-ordered like the block's first
        input, which it may be; or, for a loss differentiated for several inputs, into `grad[name]` for each."""
        grads = grad if isinstance(grad, dict) else {name: grad for name in self.loss.wrt}
        gradient = {f"__grad_{safe_name(name)}": grads[name] for name in self.loss.wrt}
        threads.run(self.module.loss_block_grad, block.rows, block.work,
                    self.arguments(block, "loss_block_grad", lo, done, {
                        "__weight": block.weights, "__scale": 1.0, "__gscale": scale, **gradient}))

    def arguments(self, block: RowCall, kernel: str, lo: int, done: np.ndarray, others: dict) -> tuple:
        """`kernel`'s arguments for one block: its classes lo .. lo + __width - 1 of __C."""
        named = {**block.named, **self.loss.kernel_params, "__width": block.length, "__lo": lo, "__C": self.classes,
                 "__done": done}
        return bind(self.module, kernel, {**named, **others})
