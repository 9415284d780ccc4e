"""Preference losses over pairs of sequences, from the policy's logits (or its linear head) token by token.

    dpo = lossdsl.preference("dpo", beta=0.1)
    value, grad = dpo.value_and_grad(logits, labels, ref_chosen_logp=rc, ref_rejected_logp=rr)

A pair loss (specs/dpo.loss: an elementwise loss of a pair's sequence log-probabilities) meets the tokens
through the chain rule, in three steps, as SequenceLoss joins CTC to its stages:

    logits --token nll--> (2B, T) --masked sum over T--> logp (2B,) --pair loss--> (B,) --> reduced
    grad <--token nll's gradient, weighted-- u = -dL/dlogp * mask <--pair loss's gradient--

The batch holds the chosen sequences first and the rejected ones second (TRL's and Liger-Kernel's layout),
rows (2B, T) and the class axis last. The token loss is cross_entropy (its nll, ignore_index -100), or
linear_cross_entropy for `head=True`: its first call (values only) gives every token's nll, its second (the
gradient of sum(u * nll)) the gradient, so a head computes its logits twice, a chunk at a time, and they are
never whole. `average=True` divides each sequence's log-probability by its token count (IPO, SimPO).
"""
from __future__ import annotations

import numpy as np

from ..errors import LossInputError

_POLICY_INPUTS = {False: ("logits", "labels"), True: ("input", "linear_weight", "labels")}


def preference(pair: str = "dpo", /, head: bool = False, average: bool | None = None, ignore_index: int = -100,
               **params) -> "PreferenceLoss":
    """The pair loss `pair` (a catalogue name or spec file; parameters as keywords) over the sequences of a
    policy's logits, or with `head=True` of its linear head (hidden states, weight, labels, linear_bias=).
    `average` length-normalises the sequence log-probabilities; by default where the pair loss says so (a
    `length_normalized` parameter, as simpo's), and for loss_type "ipo" (as TRL)."""
    from ..compiler import load
    pair_loss = load(pair, **params)
    token = load("linear_cross_entropy" if head else "cross_entropy", ignore_index=ignore_index)
    if average is None:
        average = bool(pair_loss.params.get("length_normalized")) or pair_loss.params.get("loss_type") == "ipo"
    return PreferenceLoss(pair_loss, token, head, bool(average), ignore_index)


class PreferenceLoss:
    """A pair loss of sequence log-probabilities, called with the policy's token inputs (see the module)."""

    def __init__(self, pair, token, head: bool, average: bool, ignore_index: int):
        if pair.signature.axis is not None or len(pair.wrt) != 2:
            raise LossInputError(f"{pair.name}: a preference loss is elementwise in (chosen, rejected) sequence "
                                 "log-probabilities, differentiated with respect to those two")
        self.pair, self.token, self.head, self.average, self.ignore_index = pair, token, head, average, ignore_index
        self.name = pair.name

    def __repr__(self) -> str:
        return f"<lossdsl.PreferenceLoss {self.name} over {'a linear head' if self.head else 'logits'}>"

    def __call__(self, *inputs, mask=None, reduction: str = "mean", linear_bias=None, **pair_inputs):
        """The reduced pair loss; the pair loss's other inputs by name (ref_chosen_logp=, ...), and a head's
        chunk_rows= and chunk_classes=."""
        return self._run(inputs, mask, reduction, linear_bias, pair_inputs, gradient=False)[0]

    def value_and_grad(self, *inputs, mask=None, reduction: str = "mean", linear_bias=None, outputs: bool = False,
                       **pair_inputs):
        """(the reduced pair loss, the gradient of the logits, or of the head's input, weight (and bias)); with
        `outputs`, also {"chosen_logp", "rejected_logp"}: each pair's sequence log-probabilities (B,)."""
        value, grads, logps = self._run(inputs, mask, reduction, linear_bias, pair_inputs, gradient=True)
        return (value, grads, logps) if outputs else (value, grads)

    def _run(self, inputs, mask, reduction, linear_bias, pair_inputs, gradient: bool):
        names = _POLICY_INPUTS[self.head]
        if len(inputs) != len(names):
            raise LossInputError(f"{self.name}: takes the policy's {', '.join(names)}, then the pair loss's other "
                                 f"inputs by name; got {len(inputs)} positional inputs")
        if reduction not in ("mean", "sum"):
            raise LossInputError(f"{self.name}: reduction must be 'mean' or 'sum' (over pairs); got {reduction!r}")
        labels = np.asarray(inputs[-1])
        if labels.ndim != 2 or labels.shape[0] % 2:
            raise LossInputError(f"{self.name}: labels must be (2 * pairs, tokens), chosen sequences first; got "
                                 f"shape {labels.shape}")
        kept = labels != self.ignore_index
        if mask is not None:
            mask = np.asarray(mask)
            if mask.shape != labels.shape:
                raise LossInputError(f"{self.name}: mask of shape {mask.shape} must be the labels' {labels.shape}")
            kept = kept & (mask != 0)
        counts = np.maximum(kept.sum(axis=1), 1) if self.average else np.ones(labels.shape[0])
        chunking = {k: pair_inputs.pop(k) for k in ("chunk_rows", "chunk_classes") if k in pair_inputs}
        if chunking and not self.head:
            raise LossInputError(f"{self.name}: chunk_rows and chunk_classes are for a linear head (head=True)")
        bias = {} if linear_bias is None else {"linear_bias": linear_bias}
        token = {**bias, **chunking, **self._axis()}
        nll = np.asarray(self.token(*inputs, reduction="none", **token), np.float64)
        logp = -(np.where(kept, nll, 0.0)).sum(axis=1) / counts
        pairs = labels.shape[0] // 2
        chosen, rejected = logp[:pairs], logp[pairs:]
        if not gradient:
            return self.pair(chosen, rejected, reduction=reduction, **pair_inputs), None, None
        value, (d_chosen, d_rejected) = self.pair.value_and_grad(chosen, rejected, reduction=reduction, **pair_inputs)
        per_sequence = -np.concatenate([d_chosen, d_rejected]) / counts  # d loss / d nll of each counted token
        weights = np.where(kept, per_sequence[:, None], 0.0)
        _, grads = self.token.value_and_grad(*inputs, reduction="sum", sample_weight=weights, **token)
        return value, grads, {"chosen_logp": chosen, "rejected_logp": rejected}

    def _axis(self) -> dict:
        return {} if self.head else {"axis": -1}
