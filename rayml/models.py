"""Plain PyTorch modules and ``build_model``. No Ray imports: the same classes train, export and test.

Every model reads the featurizer's matrix ``features[batch, input_dim]`` and returns logits: ``[batch]`` for one
output (binary classification, regression), ``[batch, outputs]`` otherwise. The featurizer state's ``layout``
says which columns of that matrix are what (see ``featurize.layout``): the CNN reads its image block from it,
the factorization machine its embedded categorical fields.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import torch

from rayml import storage as store
from rayml.model_config import WEIGHTS_FILE, ModelConfig, output_count

__all__ = ["CNN", "MLP", "WEIGHTS_FILE", "FactorizationMachine", "ModelConfig", "Probability", "build_model",
           "load_trained", "output_count", "set_output_bias"]


def _dense(width: int, hidden: list[int], dropout: float, outputs: int) -> torch.nn.Sequential:
    layers: list[torch.nn.Module] = []
    for size in hidden:
        layers += [torch.nn.Linear(width, size), torch.nn.ReLU(), torch.nn.Dropout(dropout)]
        width = size
    layers.append(torch.nn.Linear(width, outputs))
    return torch.nn.Sequential(*layers)


def _squeeze(logits: torch.Tensor, outputs: int) -> torch.Tensor:
    return logits.squeeze(-1) if outputs == 1 else logits


class MLP(torch.nn.Module):
    """Feed-forward network: one logit per row, or ``outputs`` logits."""

    def __init__(self, input_dim: int, hidden: list[int], dropout: float, outputs: int = 1) -> None:
        super().__init__()
        self.outputs = outputs
        self.net = _dense(input_dim, hidden, dropout, outputs)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return _squeeze(self.net(features), self.outputs)


class CNN(torch.nn.Module):
    """conv -> ReLU -> pool blocks over the image block of ``features``, then dense layers.

    Columns outside the image block (other inputs of the job) join the flattened conv output before the
    dense layers.
    """

    def __init__(self, input_dim: int, image: dict[str, Any], config: ModelConfig, outputs: int) -> None:
        super().__init__()
        self.outputs = outputs
        self.offset, self.width = int(image["offset"]), int(image["width"])
        self.shape = [int(s) for s in image["shape"]]  # [channels, height, width]
        blocks: list[torch.nn.Module] = []
        channels, height, width = self.shape
        for size in config.channels:
            blocks += [torch.nn.Conv2d(channels, size, config.kernel_size, padding=config.kernel_size // 2),
                       torch.nn.ReLU(), torch.nn.MaxPool2d(2)]
            channels, height, width = size, height // 2, width // 2
        if height < 1 or width < 1:
            raise ValueError(f"{len(config.channels)} conv blocks pool a {self.shape[1]}x{self.shape[2]} image to "
                             "nothing; use fewer train.model.channels or larger images")
        self.conv = torch.nn.Sequential(*blocks)
        self.other = input_dim - self.width
        self.head = _dense(channels * height * width + self.other, config.hidden, config.dropout, outputs)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        pixels = features[:, self.offset:self.offset + self.width].reshape(-1, *self.shape)
        flat = self.conv(pixels).flatten(1)
        if self.other:
            rest = torch.cat([features[:, :self.offset], features[:, self.offset + self.width:]], dim=1)
            flat = torch.cat([flat, rest], dim=1)
        return _squeeze(self.head(flat), self.outputs)


class FactorizationMachine(torch.nn.Module):
    """Second-order factorization machine over embedded categorical fields (Rendle, 2010).

    score = bias + sum of per-value biases + sum over field pairs of <v_i, v_j> + linear(dense columns).
    With two fields (user, item) and no dense columns this is biased matrix factorization. Index 0 of every
    field is the '<unseen>' value (users or items not seen in training): its factor and bias stay zero, so an
    unknown user or item scores by the global bias and the known fields' terms.
    """

    def __init__(self, input_dim: int, fields: list[dict[str, Any]], config: ModelConfig) -> None:
        super().__init__()
        if not fields:
            raise ValueError("an fm model needs embedded categorical fields; list them under features.embed")
        self.columns = [int(f["offset"]) for f in fields]
        sizes = [int(f["cardinality"]) for f in fields]
        # padding_idx=0: the '<unseen>' row stays zero, so an unknown user or item scores as the average
        # (bias terms of the known fields only) instead of through weights no training row ever reached.
        self.factors = torch.nn.ModuleList(torch.nn.Embedding(n, config.factors, padding_idx=0) for n in sizes)
        self.biases = torch.nn.ModuleList(torch.nn.Embedding(n, 1, padding_idx=0) for n in sizes)
        with torch.no_grad():
            for table in self.factors:
                torch.nn.init.normal_(table.weight, std=1.0 / math.sqrt(config.factors))
                table.weight[0].zero_()
            for table in self.biases:
                torch.nn.init.zeros_(table.weight)
        self.bias = torch.nn.Parameter(torch.zeros(1))
        self.l2 = config.l2
        self.penalty: torch.Tensor | None = None  # the last training forward's L2 term (see train.steps)
        embedded = set(self.columns)
        self.dense_columns = [i for i in range(input_dim) if i not in embedded]
        self.linear = torch.nn.Linear(len(self.dense_columns), 1, bias=False) if self.dense_columns else None

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        score = self.bias.expand(features.shape[0])
        vectors = []
        squares = torch.zeros((), device=features.device)
        for column, factors, biases in zip(self.columns, self.factors, self.biases):
            index = features[:, column].round().long()
            vector, bias = factors(index), biases(index).squeeze(-1)
            vectors.append(vector)
            score = score + bias
            if self.training and self.l2:
                squares = squares + (vector.pow(2).sum(dim=1) + bias.pow(2)).mean()
        self.penalty = self.l2 * squares if self.training and self.l2 else None
        stacked = torch.stack(vectors, dim=1)  # [batch, fields, factors]
        # sum over pairs i<j of <v_i, v_j> = ((sum v)^2 - sum v^2) / 2, summed over factors
        pairs = 0.5 * (stacked.sum(dim=1).pow(2) - stacked.pow(2).sum(dim=1)).sum(dim=1)
        score = score + pairs
        if self.linear is not None:
            score = score + self.linear(features[:, self.dense_columns]).squeeze(-1)
        return score


class Probability(torch.nn.Module):
    """Wraps a logit model so its output is what gets served: a probability (binary), class probabilities
    (multiclass) or the prediction itself (regression). This is what gets exported."""

    def __init__(self, model: torch.nn.Module, task: str = "binary") -> None:
        super().__init__()
        self.model = model
        self.task = task

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        logits = self.model(features)
        if self.task == "binary":
            return torch.sigmoid(logits)
        if self.task == "multiclass":
            return torch.softmax(logits, dim=-1)
        return logits


def set_output_bias(model: torch.nn.Module, value: float) -> None:
    """Start the model's output at ``value`` (the train split's mean label for regression), so the first epochs
    learn the signal rather than the scale of the target: the fm's global bias, else the last layer's bias."""
    with torch.no_grad():
        if isinstance(model, FactorizationMachine):
            model.bias.fill_(value)
            return
        layers = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.bias is not None]
        if not layers:
            raise ValueError(f"{type(model).__name__} has no output bias to set")
        layers[-1].bias.fill_(value)


def build_model(
    config: ModelConfig, input_dim: int, outputs: int = 1, layout: list[dict[str, Any]] | None = None
) -> torch.nn.Module:
    """A freshly initialized model for ``input_dim`` features; ``layout`` is the featurizer state's."""
    if input_dim < 1:
        raise ValueError(f"input_dim must be positive, got {input_dim}")
    if outputs < 1:
        raise ValueError(f"outputs must be positive, got {outputs}")
    blocks = layout or []
    if config.kind == "cnn":
        images = [b for b in blocks if b["kind"] == "image"]
        if len(images) != 1:
            raise ValueError(f"a cnn needs exactly one image input (features.image), found {len(images)}")
        return CNN(input_dim, images[0], config, outputs)
    if config.kind == "fm":
        if outputs != 1:
            raise ValueError("an fm model scores one value per row (binary or regression), not several classes")
        return FactorizationMachine(input_dim, [b for b in blocks if b["kind"] == "embed"], config)
    return MLP(input_dim, list(config.hidden), config.dropout, outputs)


def load_trained(
    checkpoint_dir: str | Path,
    config: ModelConfig,
    input_dim: int,
    outputs: int = 1,
    layout: list[dict[str, Any]] | None = None,
    filesystem: Any = None,
) -> torch.nn.Module:
    """The model of a training checkpoint directory, in eval mode on the CPU.

    An s3:// ``checkpoint_dir`` is read through ``filesystem`` (the pyarrow filesystem ``rayml.storage.resolve``
    gives; it pickles, so a Ray worker needs no S3 settings of its own), else one set up from the AWS variables.
    """
    weights = store.join(checkpoint_dir, WEIGHTS_FILE)
    source: Any = weights
    if store.is_remote(weights):
        fs = filesystem or store.resolve(weights)[0]
        with store.translated(weights, "read"), fs.open_input_file(store.fs_path(weights)) as fh:
            source = io.BytesIO(fh.read())
    model = build_model(config, input_dim, outputs, layout)
    model.load_state_dict(torch.load(source, weights_only=True, map_location="cpu"))
    return model.eval()
