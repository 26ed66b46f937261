"""The model section of a job (``train.model``) and the facts about a model that need no torch: how many outputs a
task needs and what a checkpoint's weights file is called. Loading a job imports this, not ``rayml.models``."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from rayml.config import StrictModel

WEIGHTS_FILE = "model.pt"  # a state_dict saved with torch.save; always loaded with weights_only=True


class ModelConfig(StrictModel):
    """Architecture of the network."""

    kind: Literal["mlp", "cnn", "fm"] = Field(
        "mlp", description="model family: mlp (tabular or embedding features), cnn (an image block of the "
        "features), fm (factorization machine over embedded categorical fields: matrix factorization for "
        "recommendation)"
    )
    hidden: list[int] = Field([64, 32], max_length=8, description="width of each dense hidden layer")
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="dropout after each hidden layer")
    channels: list[int] = Field([16, 32], min_length=1, max_length=4,
                                description="cnn: output channels of each conv -> ReLU -> 2x2 max-pool block")
    kernel_size: int = Field(3, ge=1, le=11, description="cnn: square convolution kernel size (odd)")
    factors: int = Field(32, ge=1, le=1024, description="fm: latent factors per embedded value")
    l2: float = Field(0.0, ge=0.0, le=100.0, description="fm: L2 penalty on the factors and biases a row uses, "
                      "added to its loss (the classic matrix-factorization regularizer; weight decay would shrink "
                      "every row at every step, used or not)")

    @model_validator(mode="after")
    def _consistent(self) -> ModelConfig:
        if self.kind == "mlp" and not self.hidden:
            raise ValueError("an mlp needs at least one hidden layer; set train.model.hidden: [64, 32]")
        if self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd (padding keeps the size), got {self.kernel_size}")
        return self


def output_count(task: str, classes: list[str] | None) -> int:
    """Logits the model needs for ``task``: one for binary and regression, one per class for multiclass."""
    return len(classes or []) if task == "multiclass" else 1
