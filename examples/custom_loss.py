"""A custom loss in a few lines: write the spec, load it, look at its gradient, use it.

Run as `python examples/custom_loss.py`. It loads the design card's focal loss from
the spec file next to it, prints the gradient SymPy derived, and evaluates it on the
PyTorch focal-loss tutorial's hard and easy samples (0.0866 and 0.0005 there).
"""
from pathlib import Path

import numpy as np

import lossdsl


def main() -> None:
    focal = lossdsl.load(Path(__file__).with_name("focal_design_card.loss"), alpha=0.75, gamma=2.0)
    print(focal)
    print(focal.explain())  # the formula and the gradient SymPy derived (focal.gradient_formula has them as SymPy)
    y = np.array([[1.0], [0.0]], np.float32)
    for label, p in (("hard", [[0.5], [0.5]]), ("easy", [[0.9], [0.1]])):
        value, grad = focal.value_and_grad(np.array(p, np.float32), y)
        print(f"{label} samples: loss {value:.4f}, gradient {grad.ravel()}")


if __name__ == "__main__":
    main()
