"""Train a language model's output layer without ever holding its logits.

Run as `python examples/large_vocabulary.py`. Each token's hidden state (the output of a model
we keep fixed) is a noisy code of the next token; the output layer W (vocabulary x width) and its
bias are learnt with the catalogue's linear_cross_entropy head, which computes the logits a block
of classes at a time (here forced small with chunk_classes, as a 128k vocabulary would need) and
returns the gradients for the hidden states, W and the bias. Each step accumulates micro-batches
exactly: each is reduced with "sum", and the summed normaliser (the tokens not ignored) divides
the total, so the step equals one full-batch "mean" step. The same pass also returns each row's
log-sum-exp (what cross_entropy's z_loss option penalises), printed as training goes.
"""
from __future__ import annotations

import numpy as np

import lossdsl

VOCABULARY, WIDTH, TOKENS, PAD = 3000, 32, 1024, -100


def make_data(rng: np.random.Generator):
    """(hidden states (TOKENS, WIDTH), next tokens with a few padding positions ignored)."""
    codes = rng.normal(size=(VOCABULARY, WIDTH))
    targets = rng.integers(0, VOCABULARY // 10, TOKENS)  # a vocabulary mostly unused, as in real text
    hidden = codes[targets] + 0.3 * rng.normal(size=(TOKENS, WIDTH))
    targets[rng.random(TOKENS) < 0.05] = PAD
    return hidden, targets


def train(steps: int = 40, micro_batches: int = 4, rate: float = 2.0, verbose: bool = True):
    rng = np.random.default_rng(0)
    hidden, targets = make_data(rng)
    weight, bias = np.zeros((VOCABULARY, WIDTH)), np.zeros(VOCABULARY)
    head = lossdsl.load("linear_cross_entropy", label_smoothing=0.05)
    parts = np.array_split(np.arange(TOKENS), micro_batches)
    history = []
    for step in range(steps):
        total, lse, d_weight, d_bias = 0.0, [], np.zeros_like(weight), np.zeros_like(bias)
        normalizer = sum(head.normalizer(hidden[p], weight, targets[p]) for p in parts)  # tokens not ignored
        for p in parts:
            value, (_, d_w, d_b), outputs = head.value_and_grad(
                hidden[p], weight, targets[p], linear_bias=bias, reduction="sum", chunk_classes=500, outputs=True)
            total, d_weight, d_bias = total + value, d_weight + d_w, d_bias + d_b
            lse.append(outputs["lse"])
        weight -= rate * d_weight / normalizer
        bias -= rate * d_bias / normalizer
        history.append(total / normalizer)
        if verbose and (step % 10 == 0 or step == steps - 1):
            mean_lse = np.nanmean(np.concatenate(lse))  # NaN where a token is padding
            print(f"step {step:3d}  loss {history[-1]:.3f}  mean log-sum-exp {mean_lse:.2f}")
    logits = hidden @ weight.T + bias
    kept = targets != PAD
    accuracy = float(np.mean(np.argmax(logits[kept], axis=1) == targets[kept]))
    if verbose:
        print(f"next-token accuracy {accuracy:.1%} over {kept.sum()} tokens")
    return history, accuracy


if __name__ == "__main__":
    train()
