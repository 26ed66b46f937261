"""The pieces of training that run without Ray: loss weighting, device choice, checkpoints."""

from __future__ import annotations

import math

import pytest
import torch

from rayml.errors import ConfigError
from rayml.models import ModelConfig, build_model, load_trained
from rayml.train import TrainConfig, load_checkpoint, pos_weight, save_checkpoint, use_gpu


@pytest.mark.parametrize(("mode", "expected"), [("auto", 99.0), ("sqrt", math.sqrt(99.0)), ("none", 1.0), (4.5, 4.5)])
def test_positive_class_weight(mode, expected):
    assert pos_weight(TrainConfig(class_weight=mode), {"0": 990, "1": 10}) == pytest.approx(expected)


def test_positive_class_weight_without_positives_is_neutral():
    assert pos_weight(TrainConfig(class_weight="auto"), {"0": 100, "1": 0}) == 1.0


def test_device_choice():
    assert use_gpu("cpu", 2, cluster_gpus=8) is False
    assert use_gpu("auto", 2, cluster_gpus=0) is False
    assert use_gpu("auto", 2, cluster_gpus=1) is False  # not one GPU per worker: stay on CPU
    assert use_gpu("auto", 2, cluster_gpus=2) is True
    assert use_gpu("cuda", 1, cluster_gpus=1) is True
    with pytest.raises(ConfigError, match="train.device: got 'cuda' but the cluster has 0 GPU"):
        use_gpu("cuda", 2, cluster_gpus=0)


def test_checkpoint_round_trip_restores_model_optimizer_and_history(tmp_path):
    torch.manual_seed(0)
    config = ModelConfig(hidden=[8], dropout=0.0)
    model = build_model(config, 5)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    loss = model(torch.randn(16, 5)).pow(2).mean()
    loss.backward()
    optimizer.step()
    history = [{"epoch": 1, "train_loss": 0.5}, {"epoch": 2, "train_loss": 0.4}]
    save_checkpoint(tmp_path, model, optimizer, 2, history)

    restored = build_model(config, 5)
    restored_opt = torch.optim.AdamW(restored.parameters(), lr=0.01)
    epoch, restored_history = load_checkpoint(tmp_path, restored, restored_opt)
    assert (epoch, restored_history) == (2, history)
    for a, b in zip(model.state_dict().values(), restored.state_dict().values()):
        assert torch.equal(a, b)
    assert restored_opt.state_dict()["state"][0]["step"] == optimizer.state_dict()["state"][0]["step"]
    assert torch.equal(load_trained(tmp_path, config, 5).net[0].weight, model.net[0].weight)


def test_checkpoint_of_another_architecture_is_a_config_error(tmp_path):
    model = build_model(ModelConfig(hidden=[8]), 5)
    save_checkpoint(tmp_path, model, torch.optim.AdamW(model.parameters()), 1, [])
    with pytest.raises(ConfigError, match="does not fit this model"):
        load_checkpoint(tmp_path, build_model(ModelConfig(hidden=[16]), 5))
