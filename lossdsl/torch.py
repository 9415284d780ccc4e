"""The public import path of the PyTorch adapter (`import lossdsl.torch`); it lives in
`lossdsl.integrations.torch`."""
from .integrations.torch import Loss, PreferenceLoss, ShardedLoss

__all__ = ["Loss", "PreferenceLoss", "ShardedLoss"]
