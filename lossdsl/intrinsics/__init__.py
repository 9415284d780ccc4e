"""Intrinsics: what no closed formula gives (sums over all alignments, over pairs of classes, ...), as
hand-written value-and-gradient kernels that spec files call like functions. One table row each.

A spec calls an intrinsic on a line of its own (`nll = ctc_nll(log_probs, targets, blank)`);
the compiler (lossdsl/staging.py) splits the spec there: what the intrinsic's scores argument
computes over the class axis runs before it, what the rest of the spec makes of its
per-sequence (or per-row) result runs after it, and the chain rule joins the three.

Two kinds: a "sequence" intrinsic (CTC) reads scores whose time axis is ragged (`ragged` lines
declare it and its labels), one value per sequence; a "rows" intrinsic reads each row of an input
over the class axis with a padded row of labels of the same shape (`x[c], target[c]`), one value
per row, as a loss over an axis has.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Intrinsic:
    name: str
    kind: str  # "sequence" (ragged time axis, one value per sequence) or "rows" (one value per row)
    # in call order: "scores" (over the class axis), "labels" (ragged, or padded along the class axis),
    # then one whole number of parameters: "index" (CTC's blank) or "padding" (where a row's labels end)
    arguments: tuple[str, ...]
    cpu: str  # module in this package with check_inputs and forward_backward
    cuda: str  # module with forward_backward_cuda
    doc: str


INTRINSICS: dict[str, Intrinsic] = {i.name: i for i in [
    Intrinsic("ctc_nll", "sequence", ("scores", "labels", "index"), "ctc", "ctc_cuda",
              "ctc_nll(log_probs, labels, blank): -log of the probability, summed over every alignment of the "
              "labels with blanks interleaved, of log_probs (T, N, C) over the class axis; one value per "
              "sequence, inf where none exists. blank < 0 counts from the last class."),
    Intrinsic("multilabel_hinge", "rows", ("scores", "labels", "padding"), "multilabel", "multilabel_cuda",
              "multilabel_hinge(scores, labels, padding): per row, the sum over its labels j (the entries of "
              "labels, the scores' shape, before the first `padding`; a repeated label counts each time) and "
              "the classes i not among them of max(0, 1 - (scores[j] - scores[i])), divided by the number of "
              "classes; a pair's gradient counts only where its hinge is positive (0 at the kink)."),
]}
