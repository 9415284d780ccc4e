"""Focal loss with L1 and L2 regularisation on imbalanced data, trained with PyTorch through lossdsl.torch.

Run as `python examples/focal_two_circles.py` (needs PyTorch). The PyTorch loss tutorial's setting:
200 positives on a circle of radius 5 and 6000 negatives on one of radius 8 (radial noise 1), a
2-4-8-1 network with a sigmoid output, 70 % for training. The objective is the catalogue's focal
loss on probabilities plus 0.001 x L2 and 0.001 x L1 of the weights (not the biases), as the
tutorial writes them (its focal loss: gamma 2, alpha 0.75 on the positives); the same network
trained on plain binary cross-entropy is the comparison.
It prints accuracy and the recall of the rare positives for both.
"""
from __future__ import annotations

import numpy as np
import torch

import lossdsl.torch


def make_data(generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    def ring(count: int, radius: float) -> torch.Tensor:
        r = radius + torch.normal(0.0, 1.0, size=(count, 1), generator=generator)
        theta = 2 * np.pi * torch.rand((count, 1), generator=generator)
        return torch.cat([r * torch.cos(theta), r * torch.sin(theta)], dim=1)

    x = torch.cat([ring(200, 5.0), ring(6000, 8.0)])
    y = torch.cat([torch.ones(200, 1), torch.zeros(6000, 1)])
    return x, y


def network() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.ReLU(), torch.nn.Linear(4, 8), torch.nn.ReLU(),
                               torch.nn.Linear(8, 1), torch.nn.Sigmoid())


def regularisation(model: torch.nn.Module, l2: float = 0.001, l1: float = 0.001) -> torch.Tensor:
    weights = [p for name, p in model.named_parameters() if "bias" not in name]
    return sum(0.5 * l2 * (w ** 2).sum() + l1 * w.abs().sum() for w in weights)


def train(criterion, x, y, epochs: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = network()
    optimiser = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(epochs):
        order = torch.randperm(len(x))
        for start in range(0, len(x), 100):
            batch = order[start:start + 100]
            optimiser.zero_grad()
            p = model(x[batch]).clamp(1e-6, 1 - 1e-6)
            (criterion(p, y[batch]) + regularisation(model)).backward()
            optimiser.step()
    return model


def main(epochs: int = 30, verbose: bool = True) -> dict[str, tuple[float, float]]:
    """{loss: (validation accuracy, recall of the positives)}."""
    generator = torch.Generator().manual_seed(0)
    x, y = make_data(generator)
    order = torch.randperm(len(x), generator=generator)
    train_rows, valid_rows = order[:int(0.7 * len(x))], order[int(0.7 * len(x)):]
    results = {}
    for name, criterion in (("focal", lossdsl.torch.Loss("focal", alpha=0.75, gamma=2.0)), ("bce", lossdsl.torch.Loss("bce"))):
        model = train(criterion, x[train_rows], y[train_rows], epochs, seed=1)
        with torch.no_grad():
            predicted = (model(x[valid_rows]) > 0.5).float()
        truth = y[valid_rows]
        accuracy = float((predicted == truth).float().mean())
        recall = float(predicted[truth == 1].mean())
        results[name] = (accuracy, recall)
        if verbose:
            print(f"{name:6s} validation accuracy {accuracy:.4f}, recall of the positives {recall:.3f}")
    return results


if __name__ == "__main__":
    main()
