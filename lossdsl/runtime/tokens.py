"""How the tokens of a batch of sequences add up to one loss: the normalisations RL trainers use, as
per-token weights for a per-token loss called with reduction="sum" (lossdsl.token_weights).

    weights = lossdsl.token_weights(completion_mask, "grpo")
    value, grad = lossdsl.load("grpo").value_and_grad(logits, labels, old_logp, advantages,
                                                      sample_weight=weights, reduction="sum")

With mask m (B, T), 1 where a token counts, each as TRL's GRPOTrainer defines its loss_type:
- "grpo": every sequence's mean over its tokens, then the mean over sequences:
  m / (max(sum_t m, 1) * sequences); a sequence with no token counted adds 0 (TRL clamps the count at 1);
- "bnpo": the mean over every token counted in the batch: m / max(sum m, 1) (m / num_items_in_batch when
  given: the whole batch's count);
- "dr_grpo" (Dr. GRPO): the sum over tokens / (sequences * max_length), max_length T by default
  (TRL's max_completion_length);
- "dapo": the sum over tokens / num_items_in_batch, the tokens counted in the whole batch across
  micro-batches and processes (given by the caller; this micro-batch's count, at least 1, by default).
`sequences` (the batch's sequences, default B) and `num_items_in_batch` let a micro-batch of a larger
batch use the whole batch's divisors: the micro-batches' sums then add up to the whole batch's loss and
gradient (tested), where TRL's per-micro-batch means would not.
"""
from __future__ import annotations

import numpy as np

from ..errors import LossInputError

LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")


def token_weights(mask, loss_type: str = "grpo", *, sequences: int | None = None, max_length: int | None = None,
                  num_items_in_batch: float | None = None, dtype=np.float64) -> np.ndarray:
    """Per-token weights (B, T) that make reduction="sum" of a per-token loss TRL's `loss_type` mean."""
    m = np.asarray(mask)
    if m.ndim != 2:
        raise LossInputError(f"token_weights: mask must be (sequences, tokens); got shape {m.shape}")
    if m.dtype.kind not in "biuf":
        raise LossInputError(f"token_weights: mask must hold numbers; got dtype {m.dtype}")
    if loss_type not in LOSS_TYPES:
        raise LossInputError(f"token_weights: loss_type must be one of {', '.join(LOSS_TYPES)}; got {loss_type!r}")
    m = m.astype(np.float64)
    count = sequences if sequences is not None else m.shape[0]
    if loss_type == "grpo":
        divisor = np.maximum(m.sum(axis=1, keepdims=True), 1.0) * count
    elif loss_type == "bnpo":
        divisor = max(float(m.sum()), 1.0) if num_items_in_batch is None else float(num_items_in_batch)
    elif loss_type == "dr_grpo":
        divisor = count * (max_length if max_length is not None else m.shape[1])
    else:
        divisor = max(float(m.sum()), 1.0) if num_items_in_batch is None else float(num_items_in_batch)
    if np.any(np.asarray(divisor) <= 0):
        raise LossInputError(f"token_weights: the {loss_type} divisor must be positive; got {divisor}")
    return (m / divisor).astype(dtype)
