"""Intrinsics: what no closed formula gives (sums over all alignments, ...), as hand-written
value-and-gradient kernels that spec files call like functions. One table row each.

A spec calls an intrinsic on a line of its own (`nll = ctc_nll(log_probs, targets, blank)`);
the compiler (lossdsl/staging.py) splits the spec there: what the intrinsic's scores argument
computes over the class axis runs before it, what the rest of the spec makes of its
per-sequence result runs after it, and the chain rule joins the three.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Intrinsic:
    name: str
    arguments: tuple[str, ...]  # in call order: "scores" (over the class axis), "labels" (ragged), "index"
    cpu: str  # module in this package with check_inputs and forward_backward
    cuda: str  # module with forward_backward_cuda
    doc: str


INTRINSICS: dict[str, Intrinsic] = {i.name: i for i in [
    Intrinsic("ctc_nll", ("scores", "labels", "index"), "ctc", "ctc_cuda",
              "ctc_nll(log_probs, labels, blank): -log of the probability, summed over every alignment of the "
              "labels with blanks interleaved, of log_probs (T, N, C) over the class axis; one value per "
              "sequence, inf where none exists. blank < 0 counts from the last class."),
]}
