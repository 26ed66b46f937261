"""Plain PyTorch modules and ``build_model``. No Ray imports: the same classes train, export and test."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from pydantic import Field

from rayml.config import StrictModel


class ModelConfig(StrictModel):
    """Architecture of the network."""

    kind: Literal["mlp"] = Field("mlp", description="model family; mlp for tabular features")
    hidden: list[int] = Field([64, 32], min_length=1, max_length=8, description="width of each hidden layer")
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="dropout after each hidden layer")


class MLP(torch.nn.Module):
    """Feed-forward binary classifier: returns one logit per row."""

    def __init__(self, input_dim: int, hidden: list[int], dropout: float) -> None:
        super().__init__()
        layers: list[torch.nn.Module] = []
        width = input_dim
        for size in hidden:
            layers += [torch.nn.Linear(width, size), torch.nn.ReLU(), torch.nn.Dropout(dropout)]
            width = size
        layers.append(torch.nn.Linear(width, 1))
        self.net = torch.nn.Sequential(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features).squeeze(-1)


class Probability(torch.nn.Module):
    """Wraps a logit model so its output is a probability; this is what gets exported and served."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.model(features))


def build_model(config: ModelConfig, input_dim: int) -> torch.nn.Module:
    """A freshly initialized model for ``input_dim`` features."""
    if input_dim < 1:
        raise ValueError(f"input_dim must be positive, got {input_dim}")
    return MLP(input_dim, list(config.hidden), config.dropout)


WEIGHTS_FILE = "model.pt"  # a state_dict saved with torch.save; always loaded with weights_only=True


def load_trained(checkpoint_dir: str | Path, config: ModelConfig, input_dim: int) -> torch.nn.Module:
    """The model of a training checkpoint directory, in eval mode on the CPU."""
    model = build_model(config, input_dim)
    state = torch.load(Path(checkpoint_dir) / WEIGHTS_FILE, weights_only=True, map_location="cpu")
    model.load_state_dict(state)
    return model.eval()
