"""Preference losses over sequences, from the policy's logits (or its linear head) token by token.

    dpo = lossdsl.preference("dpo", beta=0.1)
    value, grad = dpo.value_and_grad(logits, labels, ref_chosen_logp=rc, ref_rejected_logp=rr)

A sequence loss (specs/dpo.loss: an elementwise loss of sequence log-probabilities) meets the tokens through
the chain rule, in three steps, as SequenceLoss joins CTC to its stages:

    logits --token nll--> (S, T) --masked sum over T--> logp (S,) --sequence loss--> reduced
    grad <--token nll's gradient, weighted-- u = -dL/dlogp * mask (+ the NLL term's weight) <--loss's gradient--

A loss with two `wrt` inputs is over pairs: the batch holds the chosen sequences first and the rejected
ones second (TRL's and Liger-Kernel's layout), rows (2B, T). One with a single `wrt` input is unpaired
(KTO, GSPO): one value per sequence, and its other inputs may come per token, (S, T) as the labels,
reduced as the policy's. The class axis is last. Sequences may also be packed end to end: labels (N,),
logits (N, C) (a head's input (N, D)) and `sequence_lengths=` (S,), in the same order. Chosen and rejected
may also come apart, the logits (or hidden states), labels, mask and lengths each as a pair (chosen,
rejected), the two sides of their own lengths: they are copied end to end as packed sequences and the
gradient split back. The token loss is cross_entropy (its nll, ignore_index -100), or linear_cross_entropy
for `head=True`: its first call
(values only) gives every token's nll, its second (the gradient of sum(u * nll)) the gradient, so a head
computes its logits twice, a chunk at a time, and they are never whole.

What a spec declares, read here: its `sequence` line (`sequence mean`: each sequence's log-probability is the
mean over its counted tokens, not the sum; DPO's says so for loss_type "ipo", as TRL) and `nll_weight` (that
times the chosen sequences' token NLL, the mean over all their counted tokens as torch's CrossEntropyLoss
takes it, is added to the loss: ORPO's SFT term, CPO's cpo_alpha). A sequence with no counted token (all
masked) carries no preference: its pair (or it, unpaired) adds 0 to the loss and gets no gradient, and the
"mean" still divides by the number of pairs (sequences), so micro-batches add up.
"""
from __future__ import annotations

import numpy as np

from ..errors import LossInputError

_POLICY_INPUTS = {False: ("logits", "labels"), True: ("input", "linear_weight", "labels")}


def preference(pair: str = "dpo", /, head: bool = False, average: bool | None = None, ignore_index: int = -100,
               all_reduce=None, **params) -> "PreferenceLoss":
    """The sequence loss `pair` (a catalogue name or spec file; parameters as keywords) over the sequences of
    a policy's logits, or with `head=True` of its linear head (hidden states, weight, labels, linear_bias=).
    `average` length-normalises the sequence log-probabilities (True) or sums them (False); by default as the
    spec's `sequence` line says (sum where it has none). With `all_reduce` (as
    lossdsl.classaxis.sharding takes it), the class axis is split across processes: each calls with its slice
    of the logits (or of the head's weight and bias rows) and `class_start=`, `classes=`, and gets the same
    loss and its slice's gradient (a head: the whole hidden states' gradient, all-reduced, and its weight and
    bias slices')."""
    from ..compiler import load
    pair_loss = load(pair, **params)
    token = load("linear_cross_entropy" if head else "cross_entropy", ignore_index=ignore_index)
    if all_reduce is not None and not head:  # a head is made sharded per call: its slice comes with the call
        from ..classaxis.sharding import ShardedLoss
        token = ShardedLoss(token, all_reduce)
    if average is None:
        average = pair_loss.signature.sequence == "mean"
    return PreferenceLoss(pair_loss, token, head, bool(average), ignore_index, all_reduce)


class PreferenceLoss:
    """A loss of sequence log-probabilities, called with the policy's token inputs (see the module)."""

    def __init__(self, pair, token, head: bool, average: bool, ignore_index: int, all_reduce=None):
        if pair.signature.axis is not None or len(pair.wrt) not in (1, 2):
            raise LossInputError(f"{pair.name}: a preference loss is elementwise in (chosen, rejected) sequence "
                                 "log-probabilities, or in one sequence's (unpaired), differentiated with respect "
                                 "to those")
        self.pair, self.token, self.head, self.average, self.ignore_index = pair, token, head, average, ignore_index
        self.name, self.all_reduce = pair.name, all_reduce
        self.paired = len(pair.wrt) == 2
        self.nll_weight = float(pair.params.get("nll_weight", 0.0))

    def __repr__(self) -> str:
        return f"<lossdsl.PreferenceLoss {self.name} over {'a linear head' if self.head else 'logits'}>"

    def __call__(self, *inputs, mask=None, reduction: str = "mean", linear_bias=None, **pair_inputs):
        """The reduced loss; the sequence loss's other inputs by name (ref_chosen_logp=, ...), a head's
        chunk_rows= and chunk_classes=, and sequence_lengths= for packed sequences."""
        return self._run(inputs, mask, reduction, linear_bias, pair_inputs, gradient=False)[0]

    def value_and_grad(self, *inputs, mask=None, reduction: str = "mean", linear_bias=None, outputs: bool = False,
                       **pair_inputs):
        """(the reduced loss, the gradient of the logits, or of the head's input, weight (and bias)); with
        `outputs`, also a dict: each pair's sequence log-probabilities "chosen_logp" and "rejected_logp" (B,)
        (unpaired: "logp"), "nll" (the NLL term, where the loss has one) and the spec's `output` values
        (implicit rewards, margins: NaN for a pair left out)."""
        value, grads, shown = self._run(inputs, mask, reduction, linear_bias, pair_inputs, gradient=True)
        return (value, grads, shown) if outputs else (value, grads)

    def _run(self, inputs, mask, reduction, linear_bias, pair_inputs, gradient: bool):
        lengths = pair_inputs.pop("sequence_lengths", None)
        if inputs and isinstance(inputs[-1], (tuple, list)):
            if not self.paired:
                raise LossInputError(f"{self.name}: chosen and rejected apart are for a loss over pairs")
            inputs, mask, lengths, split = _joined(self.name, self.head, inputs, mask, lengths)
            value, grads, shown = self._run(inputs, mask, reduction, linear_bias,
                                            {**pair_inputs, "sequence_lengths": lengths}, gradient)
            return value, grads if grads is None else split(grads), shown
        labels, kept, segment, sequences = self._tokens(inputs, mask, reduction, lengths)
        token_counts = np.bincount(segment, kept, sequences)
        counts = np.maximum(token_counts, 1) if self.average else np.ones(sequences)
        token_loss, token = self._token_loss(pair_inputs, linear_bias)
        pair_inputs = self._per_sequence(pair_inputs, labels, lengths, kept, segment, counts, sequences)
        partials = None
        if gradient and self.head and not {"chunk_rows", "chunk_classes"} & token.keys():
            # the gradient's call then sweeps the classes once, reusing each token's log-sum-exp
            values, partials = token_loss.values_and_partials(*inputs, **token)
        else:
            values = (token_loss.value_and_grad(*inputs, reduction="none", **token)[0] if "classes" in token
                      else token_loss(*inputs, reduction="none", **token))
        nll = np.where(kept, np.asarray(values, np.float64).reshape(-1), 0.0)
        logp = -np.bincount(segment, nll, sequences) / counts
        groups = 2 if self.paired else 1
        size = sequences // groups
        counted = (token_counts > 0).reshape(groups, size).all(axis=0)  # the pairs (sequences) that count
        per_pair = [np.where(counted, part, -1.0) for part in logp.reshape(groups, size)]  # finite where left out
        weights = counted / (size if reduction == "mean" else 1)
        chosen = (segment < size) & (self.nll_weight > 0 and self.paired)  # the tokens of the NLL term
        nll_count = max(int(kept[chosen].sum()), 1) if reduction == "mean" else 1
        nll_term = self.nll_weight * nll[chosen].sum() / nll_count if self.nll_weight > 0 else 0.0
        if not gradient:
            return self.pair(*per_pair, reduction="sum", sample_weight=weights, **pair_inputs) + nll_term, None, None
        extra = {}
        if self.pair.signature.outputs:
            value, d_logp, extra = self.pair.value_and_grad(*per_pair, reduction="sum", sample_weight=weights,
                                                            outputs=True, **pair_inputs)
            extra = {name: np.where(counted, shown, np.nan) for name, shown in extra.items()}
        else:
            value, d_logp = self.pair.value_and_grad(*per_pair, reduction="sum", sample_weight=weights, **pair_inputs)
        d_logp = np.concatenate(d_logp) if self.paired else d_logp
        per_sequence = -d_logp / counts  # d loss / d nll of each counted token
        per_token = per_sequence[segment] + np.where(chosen, self.nll_weight / nll_count, 0.0)
        _, grads = token_loss.value_and_grad(*inputs, reduction="sum",
                                             sample_weight=np.where(kept, per_token, 0.0).reshape(labels.shape),
                                             **token, **({"partials": partials} if partials else {}))
        names = ("chosen_logp", "rejected_logp") if self.paired else ("logp",)
        shown = {**dict(zip(names, logp.reshape(groups, size))), **({"nll": nll_term} if self.nll_weight else {}),
                 **extra}
        return value + nll_term, grads, shown

    def _token_loss(self, pair_inputs: dict, linear_bias) -> tuple:
        """(the token loss for this call: a head sharded to the call's slice of the classes; what its calls
        take beside the policy's inputs, taken out of `pair_inputs`: the bias, a head's chunking, the logits'
        sharded slice, the class axis of the logits)."""
        options = {k: pair_inputs.pop(k) for k in ("chunk_rows", "chunk_classes", "class_start", "classes")
                   if k in pair_inputs}
        sharded = self.all_reduce is not None
        if sharded != ("class_start" in options and "classes" in options):
            raise LossInputError(f"{self.name}: class_start= and classes= go with a class axis split across "
                                 "processes (preference(..., all_reduce=)), and it needs both")
        if ("chunk_rows" in options or "chunk_classes" in options) and not self.head:
            raise LossInputError(f"{self.name}: chunk_rows and chunk_classes are for a linear head (head=True)")
        bias = {} if linear_bias is None else {"linear_bias": linear_bias}
        if sharded and self.head:
            return self.token.sharded(options.pop("class_start"), options.pop("classes"), self.all_reduce), {
                **bias, **options}
        return self.token, {**bias, **options, **({} if self.head else {"axis": -1})}

    def _per_sequence(self, pair_inputs: dict, labels, lengths, kept, segment, counts, sequences) -> dict:
        """An unpaired loss's other inputs given per token (the labels' padded shape (S, T): GSPO's old_logp)
        reduced over each sequence's counted tokens as the policy's are; those per sequence as they are."""
        if self.paired or lengths is not None:
            return pair_inputs
        reduced = dict(pair_inputs)
        for name, value in pair_inputs.items():
            if np.ndim(value) == 2 and np.shape(value) == labels.shape:
                per_token = np.where(kept, np.asarray(value, np.float64).reshape(-1), 0.0)
                reduced[name] = np.bincount(segment, per_token, sequences) / counts
        return reduced

    def _tokens(self, inputs, mask, reduction, lengths) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        """(the labels, checked; per token, flat: whether it counts (not ignore_index, mask nonzero) and its
        sequence; the number of sequences). Padded: labels (S, T); packed: labels (N,) and `lengths` (S,)."""
        names = _POLICY_INPUTS[self.head]
        if len(inputs) != len(names):
            raise LossInputError(f"{self.name}: takes the policy's {', '.join(names)}, then the sequence loss's "
                                 f"other inputs by name; got {len(inputs)} positional inputs")
        if reduction not in ("mean", "sum"):
            raise LossInputError(f"{self.name}: reduction must be 'mean' or 'sum' (over "
                                 f"{'pairs' if self.paired else 'sequences'}); got {reduction!r}")
        labels = np.asarray(inputs[-1])
        layout = "(2 * pairs, tokens), chosen sequences first" if self.paired else "(sequences, tokens)"
        if lengths is None:
            if labels.ndim != 2 or (self.paired and labels.shape[0] % 2):
                raise LossInputError(f"{self.name}: labels must be {layout}, or packed (tokens,) with "
                                     f"sequence_lengths=; got shape {labels.shape}")
            segment = np.repeat(np.arange(labels.shape[0]), labels.shape[1])
        else:
            lengths = np.asarray(lengths)
            if (labels.ndim != 1 or lengths.ndim != 1 or not np.issubdtype(lengths.dtype, np.integer)
                    or np.any(lengths < 0) or lengths.sum() != labels.size or (self.paired and lengths.size % 2)):
                raise LossInputError(f"{self.name}: packed sequences take labels (tokens,) and sequence_lengths= "
                                     f"(sequences{', chosen first' if self.paired else ''}), whole numbers adding "
                                     f"up to the tokens; got labels {labels.shape}, lengths {lengths.shape} "
                                     f"adding up to {lengths.sum() if lengths.size else 0}")
            segment = np.repeat(np.arange(lengths.size), lengths)
        kept = labels != self.ignore_index
        if mask is not None:
            mask = np.asarray(mask)
            if mask.shape != labels.shape:
                raise LossInputError(f"{self.name}: mask of shape {mask.shape} must be the labels' {labels.shape}")
            kept = kept & (mask != 0)
        sequences = labels.shape[0] if lengths is None else lengths.size
        return labels, kept.reshape(-1), segment, sequences


def flattened(inputs) -> tuple[tuple[int, ...], list]:
    """For adapters whose functions take arrays one by one: the policy's inputs with a (chosen, rejected)
    pair spread out, and how many arrays each input was (1, or 2 for a pair)."""
    counts = tuple(len(i) if isinstance(i, (tuple, list)) else 1 for i in inputs)
    return counts, [a for i in inputs for a in (i if isinstance(i, (tuple, list)) else (i,))]


def regrouped(flat, counts) -> list:
    """`flattened`'s inverse: the inputs as PreferenceLoss takes them."""
    grouped, start = [], 0
    for count in counts:
        grouped.append(flat[start] if count == 1 else tuple(flat[start:start + count]))
        start += count
    return grouped


def flat_grads(grads) -> list:
    """A PreferenceLoss's gradients one per differentiated array: the logits' (or a pair of them), or a head's
    input's (or a pair), weight's and bias's."""
    return [g for part in (grads if isinstance(grads, tuple) else (grads,))
            for g in (part if isinstance(part, tuple) else (part,))]


def _joined(name: str, head: bool, inputs, mask, lengths):
    """Chosen and rejected given apart, each policy input but a head's weight (and the mask, the lengths) a
    pair: the two sides' tokens end to end as packed sequences, chosen first; and the function splitting the
    token loss's gradient back into the two sides' shapes."""
    names = _POLICY_INPUTS[head]
    sides = [inputs[0], inputs[-1], mask, lengths]
    for value, what in zip(sides, (names[0], "labels", "mask", "sequence_lengths")):
        if value is not None and not (isinstance(value, (tuple, list)) and len(value) == 2):
            raise LossInputError(f"{name}: with labels given as (chosen, rejected), {what} must be a pair too")
    (first, labels, masks, given_lengths) = sides
    labels = [np.asarray(side) for side in labels]
    first = [np.asarray(side) for side in first]
    packed = given_lengths is not None
    if any(side.ndim != (1 if packed else 2) for side in labels) or (
            not packed and labels[0].shape[0] != labels[1].shape[0]):
        raise LossInputError(f"{name}: chosen and rejected labels must be (pairs, tokens) each, or packed "
                             f"(tokens,) with sequence_lengths=(chosen, rejected); got {labels[0].shape} and "
                             f"{labels[1].shape}")
    for side, label in zip(first, labels):
        if side.shape[:label.ndim] != label.shape:
            raise LossInputError(f"{name}: {names[0]} of shape {side.shape} does not have the labels' "
                                 f"{label.shape} before its last axis")
    if packed:
        side_lengths = [np.asarray(side).reshape(-1) for side in given_lengths]
        if side_lengths[0].size != side_lengths[1].size:
            raise LossInputError(f"{name}: as many chosen sequences as rejected ones; got sequence_lengths of "
                                 f"{side_lengths[0].size} and {side_lengths[1].size}")
    else:
        side_lengths = [np.full(label.shape[0], label.shape[1]) for label in labels]
    if masks is not None:
        masks = [np.asarray(side) for side in masks]
        if [m.shape for m in masks] != [label.shape for label in labels]:
            raise LossInputError(f"{name}: the masks {masks[0].shape}, {masks[1].shape} must be the labels' "
                                 f"{labels[0].shape}, {labels[1].shape}")
        masks = np.concatenate([m.reshape(-1) for m in masks])
    if first[0].shape[labels[0].ndim:] != first[1].shape[labels[1].ndim:]:
        raise LossInputError(f"{name}: chosen and rejected {names[0]} differ after the tokens: "
                             f"{first[0].shape} and {first[1].shape}")
    joined = np.concatenate([side.reshape(-1, *side.shape[label.ndim:]) for side, label in zip(first, labels)])
    tokens = labels[0].size

    def split(grads):
        both = grads[0] if head else grads
        apart = (both[:tokens].reshape(first[0].shape), both[tokens:].reshape(first[1].shape))
        return (apart, *grads[1:]) if head else apart

    inputs = (joined, *inputs[1:-1], np.concatenate([label.reshape(-1) for label in labels]))
    return inputs, masks, np.concatenate(side_lengths), split
