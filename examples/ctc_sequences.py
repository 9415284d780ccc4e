"""Train a tiny model with CTC: label sequences from unaligned, noisy frames.

Run as `python examples/ctc_sequences.py`. Each sample is a word over the alphabet a, b, c,
spoken as frames: every letter lasts one to three frames, blanks (silence) fall between some
letters and always between a repeated one, and each frame is a noisy one-hot vector of what it
holds. Nobody says which frame belongs to which letter: CTC sums over every alignment. The
model is one linear layer from frames to four scores (a, b, c, blank last, as MXNet Gluon has
it); the catalogue's ctc_mxnet takes the scores unnormalised and applies log_softmax itself,
and its gradient reaches them through that log_softmax by the compiler's chain rule.
"""
from __future__ import annotations

import numpy as np

import lossdsl

LETTERS, BLANK, FRAMES = "abc", 3, 16


def make_data(rng: np.random.Generator, count: int, noise: float = 0.35):
    """(frames (N, T, 4), labels (N, 4) padded with -1, frame counts (N,))."""
    frames = np.zeros((count, FRAMES, 4))
    labels = np.full((count, 4), -1)
    lengths = np.zeros(count, np.int64)
    for n in range(count):
        word = rng.integers(0, 3, rng.integers(1, 5))
        symbols = []
        for k, letter in enumerate(word):
            if k and (word[k - 1] == letter or rng.random() < 0.5):
                symbols.append(BLANK)  # a repeated letter needs a blank between
            symbols += [letter] * rng.integers(1, 4)
        labels[n, :len(word)] = word
        lengths[n] = len(symbols)
        frames[n, np.arange(len(symbols)), symbols] = 1.0
        frames[n, len(symbols):, BLANK] = 1.0  # padding frames hold silence
    return frames + rng.normal(0.0, noise, frames.shape), labels, lengths


def greedy_decode(scores: np.ndarray, lengths: np.ndarray) -> list[str]:
    """The best class of each frame, repeats merged, blanks dropped."""
    words = []
    for best, length in zip(scores.argmax(axis=2), lengths):
        kept = [c for k, c in enumerate(best[:length]) if c != BLANK and (k == 0 or c != best[k - 1])]
        words.append("".join(LETTERS[c] for c in kept))
    return words


def main(steps: int = 60, learning_rate: float = 2.0, seed: int = 0, verbose: bool = True):
    """(losses per step, share of test words decoded exactly)."""
    rng = np.random.default_rng(seed)
    frames, labels, lengths = make_data(rng, 64)
    ctc = lossdsl.load("ctc_mxnet")  # layout NTC, blank last, labels padded with -1
    weights, bias = rng.normal(0.0, 0.1, (4, 4)), np.zeros(4)
    history = []
    for step in range(steps):
        scores = frames @ weights + bias  # (N, T, 4)
        value, grad = ctc.value_and_grad(scores, labels, lengths, reduction="mean")
        weights -= learning_rate * np.einsum("ntd,ntc->dc", frames, grad)
        bias -= learning_rate * grad.sum(axis=(0, 1))
        history.append(float(value))
        if verbose and step % 10 == 0:
            print(f"step {step:3d}  CTC loss {value:.4f}")
    test_frames, test_labels, test_lengths = make_data(rng, 200)
    decoded = greedy_decode(test_frames @ weights + bias, test_lengths)
    truth = ["".join(LETTERS[c] for c in row if c >= 0) for row in test_labels]
    accuracy = float(np.mean([d == t for d, t in zip(decoded, truth)]))
    if verbose:
        print(f"final CTC loss {history[-1]:.4f}; test words decoded exactly: {accuracy:.0%}")
        print("e.g. " + ", ".join(f"{t} -> {d}" for t, d in list(zip(truth, decoded))[:5]))
    return history, accuracy


if __name__ == "__main__":
    main()
