"""Distil a teacher's output layer into a smaller student's, neither's logits ever whole.

Run as `python examples/distillation.py`. A teacher (a fixed linear layer over 48-wide hidden states)
scores a vocabulary of 2000 classes; a student sees only a 16-wide projection of the same tokens
and learns its own output layer (weight and bias) with the catalogue's linear_distill head:
0.9 of the generalised JSD against the teacher's softmax at temperature 2 and 0.1 of cross-entropy on
the true next tokens (a few of them padding, ignored by both). The head computes both layers' logits a
chunk of rows at a time and returns the gradients for the student alone. Printed as it trains:
the loss, the per-token KL(teacher || student) from the same pass, and at the end how often the
student's top class agrees with the teacher's and with the true token.
"""
from __future__ import annotations

import numpy as np

import lossdsl

VOCABULARY, TEACHER_WIDTH, STUDENT_WIDTH, TOKENS, PAD = 2000, 48, 16, 1024, -100


def make_data(rng: np.random.Generator):
    """Teacher hidden states and weight, the student's (narrower) hidden states, and the next tokens."""
    teacher_weight = rng.normal(size=(VOCABULARY, TEACHER_WIDTH)) / np.sqrt(TEACHER_WIDTH) * 8.0
    tokens = rng.integers(0, VOCABULARY // 20, TOKENS)  # a few classes in use, as in real text
    teacher_hidden = teacher_weight[tokens] / 8.0 + 0.1 * rng.normal(size=(TOKENS, TEACHER_WIDTH))
    projection = rng.normal(size=(TEACHER_WIDTH, STUDENT_WIDTH)) / np.sqrt(TEACHER_WIDTH)
    student_hidden = teacher_hidden @ projection * 4.0
    targets = tokens.copy()
    targets[rng.random(TOKENS) < 0.05] = PAD
    return teacher_hidden, teacher_weight, student_hidden, targets


def train(steps: int = 80, rate: float = 10.0, verbose: bool = True):
    rng = np.random.default_rng(0)
    teacher_hidden, teacher_weight, student_hidden, targets = make_data(rng)
    weight, bias = np.zeros((VOCABULARY, STUDENT_WIDTH)), np.zeros(VOCABULARY)
    head = lossdsl.load("linear_distill", divergence="jsd", beta=0.5, temperature=2.0,
                        weight_hard=0.1, weight_soft=0.9)
    history = []
    for step in range(steps):
        value, (_, d_weight, d_bias), rows = head.value_and_grad(
            student_hidden, weight, teacher_hidden, teacher_weight, targets, student_bias=bias, outputs=True)
        weight -= rate * d_weight
        bias -= rate * d_bias
        history.append(float(value))
        if verbose and (step % 20 == 0 or step == steps - 1):
            print(f"step {step:3d}  loss {value:.3f}  mean KL(teacher || student) {np.nanmean(rows['kl']):.3f}")
    student = student_hidden @ weight.T + bias
    teacher = teacher_hidden @ teacher_weight.T
    kept = targets != PAD
    agreement = float(np.mean(np.argmax(student, 1) == np.argmax(teacher, 1)))
    accuracy = float(np.mean(np.argmax(student[kept], 1) == targets[kept]))
    if verbose:
        print(f"student agrees with the teacher's top class on {agreement:.1%} of tokens; "
              f"next-token accuracy {accuracy:.1%} (teacher: "
              f"{np.mean(np.argmax(teacher[kept], 1) == targets[kept]):.1%})")
    return history, agreement, accuracy


if __name__ == "__main__":
    train()
