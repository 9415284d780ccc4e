"""GRPO, DPO and ORPO through a policy's linear head: lossdsl (grpo with token_weights; lossdsl.preference)
beside PyTorch eager (linear, log_softmax, gather, the formula, backward) and torch.compile of the same:
time of the value and the input and weight gradients, and peak extra memory.

Run: python benchmarks/post_training.py [--repeats 3] [--small] [--only grpo,dpo,orpo]. (B, T, D, C) =
(8, 512, 512, 32000):
4096 tokens, float32, no bias. GRPO: beta 0.04, epsilon_high 0.28, loss_type "grpo" (each sequence's token
mean, then the mean over sequences), a quarter of the tokens masked as padding. DPO: 4 pairs (chosen first),
beta 0.1, the first 128 tokens of each sequence a prompt (labels -100). ORPO: the same pairs, beta 0.1, mean
token log-probabilities, plus the chosen tokens' NLL (TRL ORPOTrainer). Times: median of interleaved
repeats in one process (harness.py). Memory: each runner once in a fresh process, its peak resident memory
above what it had before, less the gradients every runner returns, as a share of the (B*T) x C float32
logits (linear_heads.fresh_peak). "products": the head's three matrix products (GRPO's floor; DPO's and ORPO's
head computes its logits twice, four products).
"""
from __future__ import annotations

import importlib.util

import numpy as np

from harness import autograd_call, machine, median_times, shape_arguments
from linear_heads import fresh_peak, products

SHAPES = [(8, 512, 512, 32000)]
SMALL = [(4, 64, 32, 500)]
PROMPT = 1 / 4  # of each DPO and ORPO sequence
OBJECTIVES = ("grpo", "dpo", "orpo")


def inputs(batch: int, tokens: int, width: int, classes: int):
    rng = np.random.default_rng(0)
    hidden = rng.normal(size=(batch, tokens, width)).astype(np.float32)
    weight = (rng.normal(size=(classes, width)) / np.sqrt(width)).astype(np.float32)
    labels = rng.integers(0, classes, size=(batch, tokens))
    old_logp = (rng.normal(size=(batch, tokens)) * 0.1 - 10.4).astype(np.float32)  # near log(1/32000)
    ref_logp = (old_logp + rng.normal(size=(batch, tokens)).astype(np.float32) * 0.1).astype(np.float32)
    advantages = rng.normal(size=(batch, 1)).astype(np.float32)
    mask = (rng.random((batch, tokens)) > 0.25).astype(np.float32)
    return hidden, weight, labels, old_logp, ref_logp, advantages, mask


def _torch_losses():
    import torch
    F = torch.nn.functional

    def token_logp(hidden, weight, labels):
        return torch.gather(F.log_softmax(F.linear(hidden, weight), -1), -1, labels.clamp(min=0)[..., None])[..., 0]

    def grpo(hidden, weight, labels, old_logp, ref_logp, advantages, mask):
        logp = token_logp(hidden, weight, labels)
        ratio = torch.exp(logp - old_logp)
        per_token = -torch.minimum(ratio * advantages, torch.clamp(ratio, 0.8, 1.28) * advantages)
        per_token = per_token + 0.04 * (torch.exp(ref_logp - logp) - (ref_logp - logp) - 1)
        return ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()

    def dpo(hidden, weight, labels, ref_chosen, ref_rejected):
        logp = token_logp(hidden, weight, labels)
        seq = torch.where(labels != -100, logp, torch.zeros_like(logp)).sum(-1)
        pairs = seq.shape[0] // 2
        margin = (seq[:pairs] - ref_chosen) - (seq[pairs:] - ref_rejected)
        return -F.logsigmoid(0.1 * margin).mean()

    def orpo(hidden, weight, labels):
        logp = token_logp(hidden, weight, labels)
        counted = labels != -100
        seq = torch.where(counted, logp, torch.zeros_like(logp)).sum(-1) / counted.sum(-1).clamp(min=1)
        pairs = seq.shape[0] // 2
        c, r = seq[:pairs], seq[pairs:]
        log_odds = (c - r) - (torch.log1p(-torch.exp(c)) - torch.log1p(-torch.exp(r)))
        chosen = counted[:pairs]
        nll = -torch.where(chosen, logp[:pairs], torch.zeros_like(logp[:pairs])).sum() / chosen.sum()
        return nll - (0.1 * F.logsigmoid(log_odds)).mean()
    return {"grpo": grpo, "dpo": dpo, "orpo": orpo}


def runners(objective: str, hidden, weight, labels, old_logp, ref_logp, advantages, mask) -> dict:
    """name → a call computing the loss and the input and weight gradients."""
    import lossdsl
    batch, tokens = labels.shape
    dpo_labels = labels.copy()
    dpo_labels[:, :int(tokens * PROMPT)] = -100
    ref = np.full(batch // 2, -10.4 * tokens * (1 - PROMPT))
    if objective == "grpo":
        head = lossdsl.load("grpo", beta=0.04, epsilon_high=0.28).with_linear()
        weights = lossdsl.token_weights(mask, "grpo", dtype=np.float32)
        found = {"lossdsl": lambda: head.value_and_grad(hidden, weight, labels, old_logp, advantages, ref_logp,
                                                        sample_weight=weights, reduction="sum")}
    elif objective == "dpo":
        head = lossdsl.preference("dpo", beta=0.1, head=True)
        found = {"lossdsl": lambda: head.value_and_grad(hidden, weight, dpo_labels, ref_chosen_logp=ref,
                                                        ref_rejected_logp=ref)}
    else:
        head = lossdsl.preference("orpo", beta=0.1, head=True)
        found = {"lossdsl": lambda: head.value_and_grad(hidden, weight, dpo_labels)}
    if importlib.util.find_spec("torch"):
        import torch
        layer = [torch.tensor(a, requires_grad=True) for a in (hidden, weight)]
        given = {"grpo": [torch.as_tensor(labels), *(torch.tensor(a) for a in (old_logp, ref_logp, advantages, mask))],
                 "dpo": [torch.as_tensor(dpo_labels), torch.tensor(ref), torch.tensor(ref)],
                 "orpo": [torch.as_tensor(dpo_labels)]}[objective]
        eager = _torch_losses()[objective]
        found["torch eager"] = autograd_call(eager, layer, given)
        found["torch.compile"] = autograd_call(torch.compile(eager), layer, given)
    return found


def peak_extra_bytes(shape, objective: str, name: str) -> int:
    batch, tokens, width, classes = shape
    small = (2, max(8, tokens // 16), 8, max(16, classes // 16))
    return (fresh_peak("post_training", name, shape, f"{objective!r}, ", small)
            - 4 * (batch * tokens * width + classes * width))


def main() -> None:
    args = shape_arguments(__doc__, only=OBJECTIVES)
    print(machine())
    print("\n| (B, T, D, C) | objective | runner | time | vs lossdsl | peak extra memory | of the logits |")
    print("|---|---|---|---|---|---|---|")
    for shape in SMALL if args.small else SHAPES:
        made = inputs(*shape)
        batch, tokens, width, classes = shape
        floor = median_times({"products": products(made[0].reshape(-1, width), made[1])}, args.repeats)["products"]
        logits = 4 * batch * tokens * classes
        for objective in args.only:
            times = median_times(runners(objective, *made), args.repeats, settle=0.02)
            for name, seconds in times.items():
                extra = peak_extra_bytes(shape, objective, name)
                print(f"| {shape} | {objective} | {name} | {seconds:.3g} s | {seconds / times['lossdsl']:.2f}x "
                      f"| {extra / 2**20:.0f} MiB | {extra / logits:.1%} |", flush=True)
        print(f"| {shape} | | 3 products | {floor:.3g} s | | | |", flush=True)


if __name__ == "__main__":
    main()
