"""Architectures the baking tests import by name (``baking_test_models:Brittle``)."""

import torch
from torch import nn


class Brittle(nn.Module):
    """Runs as float32 but reads its layer's weight tensor in forward, which a dynamically
    quantised Linear no longer has: the 'pass breaks the forward pass' case."""

    input_shape = (8,)

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) * self.fc.weight.abs().mean()
