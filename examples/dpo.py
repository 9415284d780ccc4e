"""Train a tiny policy with DPO on a synthetic preference task, its logits never whole.

Run as `python examples/dpo.py`. A policy is a linear output layer (vocabulary 500) over fixed 24-wide
hidden states, one per token of 64 pairs of 12-token sequences after a 4-token prompt. In every pair the
chosen completion uses "polite" tokens (the first 50 of the vocabulary) and the rejected one "rude" tokens
(the next 50), some completions padded at the end. A reference policy, the starting layer, fixes the
reference log-probabilities; DPO (sigmoid, beta 0.5) moves the policy's layer with lossdsl.preference's
gradients through the head. Printed as it trains: the loss, the mean margin
(chosen - ref) - (rejected - ref) of the sequence log-probabilities, which rises from 0, and how many
pairs the policy prefers the right way round.
"""
from __future__ import annotations

import numpy as np

import lossdsl

VOCABULARY, WIDTH, PAIRS, PROMPT, LENGTH, PAD = 500, 24, 64, 4, 12, -100


def make_data(rng: np.random.Generator):
    """Hidden states of every token (2 * PAIRS sequences, chosen first), the labels and the padding mask."""
    token_features = rng.normal(size=(VOCABULARY, WIDTH))
    labels = np.concatenate([rng.integers(0, 50, (PAIRS, LENGTH)), rng.integers(50, 100, (PAIRS, LENGTH))])
    hidden = token_features[labels] * 0.5 + rng.normal(size=(2 * PAIRS, LENGTH, WIDTH))
    labels[:, :PROMPT] = PAD  # the prompt: not scored
    mask = np.ones(labels.shape)
    for row in range(2 * PAIRS):  # completions of different lengths
        mask[row, LENGTH - rng.integers(0, 4):] = 0
    return hidden, labels, mask


def train(steps: int = 60, rate: float = 0.1, verbose: bool = True):
    rng = np.random.default_rng(0)
    hidden, labels, mask = make_data(rng)
    weight = rng.normal(size=(VOCABULARY, WIDTH)) * 0.01
    dpo = lossdsl.preference("dpo", beta=0.5, head=True)
    _, _, start = dpo.value_and_grad(hidden, weight, labels, mask=mask, outputs=True)
    reference = {"ref_chosen_logp": start["chosen_logp"], "ref_rejected_logp": start["rejected_logp"]}
    history = []
    for step in range(steps):
        value, (_, d_weight), seq = dpo.value_and_grad(hidden, weight, labels, mask=mask, outputs=True, **reference)
        margin = (seq["chosen_logp"] - reference["ref_chosen_logp"]) - (seq["rejected_logp"]
                                                                        - reference["ref_rejected_logp"])
        weight -= rate * d_weight
        history.append((float(value), float(margin.mean()), float(np.mean(margin > 0))))
        if verbose and (step % 15 == 0 or step == steps - 1):
            print(f"step {step:3d}  loss {value:.4f}  mean margin {margin.mean():7.3f}  "
                  f"pairs preferred right {np.mean(margin > 0):.0%}")
    return history


if __name__ == "__main__":
    train()
