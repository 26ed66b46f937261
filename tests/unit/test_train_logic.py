"""The pieces of training that run without Ray: loss weighting, device and precision choice, LR schedule,
early stopping, checkpoint choice, and checkpoints that resume to exactly the uninterrupted result."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from rayml.config import parse
from rayml.errors import ConfigError
from rayml.models import ModelConfig, build_model, load_trained
from rayml.train import (
    TrainConfig, check_precision, choose_checkpoint, loop_config, pos_weight, steps_per_epoch, use_gpu,
)
from rayml.train.checkpoint import (
    Progress, load_checkpoint, read_progress, rng_state, save_checkpoint, seed_all, set_rng_state,
)
from rayml.train.steps import (
    autocast, build_scheduler, grad_scaler, lr_factor, should_stop, train_epoch, validate_epoch,
)

CPU = torch.device("cpu")


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


def test_fp16_needs_cuda_and_says_what_to_set():
    check_precision("fp16", gpu=True)
    check_precision("bf16", gpu=False)
    with pytest.raises(ConfigError, match=r"train.precision: got 'fp16'.*Set train.precision: bf16"):
        check_precision("fp16", gpu=False)
    with pytest.raises(ConfigError, match="train.precision: got 'fp16' but the workers run on cpu"):
        grad_scaler("fp16", CPU)
    assert grad_scaler("bf16", CPU) is None and grad_scaler("fp32", CPU) is None
    with pytest.raises(ConfigError) as info:
        parse(TrainConfig, {"precision": "fp16", "device": "cpu"}, source="job.yaml")
    assert "set train.precision: bf16" in str(info.value)


def test_bad_training_settings_name_the_field_and_the_fix():
    with pytest.raises(ConfigError) as info:
        parse(TrainConfig, {"epochs": 2, "warmup_epochs": 2}, source="job.yaml")
    assert "warmup_epochs (2) must be below epochs (2); lower train.warmup_epochs" in str(info.value)
    with pytest.raises(ConfigError) as info:
        parse(TrainConfig, {"schedule": "step", "checkpoint_metric": "accuracy", "keep_checkpoints": 0})
    problems = "\n".join(info.value.problems)
    for field in ("schedule", "checkpoint_metric", "keep_checkpoints"):
        assert f"{field}: got" in problems
    assert "'constant', 'cosine' or 'linear'" in problems and "best N by checkpoint_metric" in problems


def test_lr_schedule_warms_up_linearly_then_decays_to_zero():
    kw = {"warmup_steps": 4, "total_steps": 20}
    for schedule in ("constant", "cosine", "linear"):
        assert [lr_factor(s, schedule=schedule, **kw) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_factor(19, schedule="constant", **kw) == 1.0
    assert lr_factor(12, schedule="cosine", **kw) == pytest.approx(0.5)  # halfway through the decay
    assert lr_factor(12, schedule="linear", **kw) == pytest.approx(0.5)
    assert lr_factor(20, schedule="cosine", **kw) == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(25, schedule="linear", **kw) == 0.0  # past the planned total (a longer shard): stays at 0
    assert lr_factor(0, schedule="cosine", warmup_steps=0, total_steps=10) == 1.0


def test_loop_config_sizes_the_schedule_from_the_rows_per_worker():
    assert steps_per_epoch(1000, 2, 64) == 8  # 500 rows per worker -> 8 batches of <= 64
    cfg = loop_config(TrainConfig(epochs=5, batch_size=64, warmup_epochs=0.5, schedule="cosine"), input_dim=3,
                      positive_weight=1.0, train_rows=1000, run_name="r")
    assert (cfg["total_steps"], cfg["warmup_steps"], cfg["schedule"]) == (40, 4, "cosine")


def test_early_stopping_counts_epochs_since_the_best_value():
    history = [{"val_loss": v, "val_pr_auc": 1 - v} for v in (0.5, 0.4, 0.45, 0.41, 0.40)]
    assert not should_stop(history, "val_loss", None)
    assert not should_stop(history[:3], "val_loss", 2)
    assert should_stop(history[:4], "val_loss", 2)  # best at epoch 2, then two epochs without improvement
    assert should_stop(history, "val_loss", 3)  # 0.40 again is no improvement: equal is not better
    assert should_stop(history[:4], "val_pr_auc", 2) and not should_stop(history[:4], "val_pr_auc", 3)
    assert not should_stop([], "val_loss", 1)


def test_checkpoint_choice_takes_the_best_by_the_metric_and_says_why():
    history = [{"epoch": e, "val_loss": v, "val_roc_auc": a} for e, v, a in
               [(1, 0.5, 0.80), (2, 0.3, 0.90), (3, 0.35, 0.90), (4, 0.4, 0.85)]]
    candidates = [(f"ckpt{h['epoch']}", h) for h in history[1:]]
    path, choice = choose_checkpoint(candidates, history, "val_loss")
    assert (path, choice["epoch"], choice["mode"]) == ("ckpt2", 2, "min")
    assert "best val_loss (lowest) of the 4 epoch(s): epoch 2 with val_loss=0.3000" in choice["reason"]
    path, choice = choose_checkpoint(candidates, history, "val_roc_auc")
    assert (path, choice["epoch"], choice["mode"]) == ("ckpt3", 3, "max")  # a tie goes to the later epoch
    assert choose_checkpoint([("last", {})], history, "val_loss")[0] == "last"


def _model_and_optim(seed: int = 0):
    torch.manual_seed(seed)
    model = build_model(ModelConfig(hidden=[16, 8], dropout=0.3), 6)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.01)
    scheduler = build_scheduler(optimizer, schedule="cosine", warmup_steps=3, total_steps=4 * 8)
    return model, optimizer, scheduler


def _batches(epoch: int) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(100 + epoch)  # the data order of each epoch, fixed per epoch
    features = torch.randn(8 * 16, 6, generator=generator)
    labels = (features[:, 0] + 0.3 * features[:, 1] > 0.5).float()
    return [{"features": features[i:i + 16], "label": labels[i:i + 16]} for i in range(0, len(labels), 16)]


def _train(model, optimizer, scheduler, epochs: range, progress: Progress) -> Progress:
    """The loop's per-epoch sequence, without Ray: train, validate, advance the progress."""
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor(2.0))
    for epoch in epochs:
        totals, taken = train_epoch(model, _batches(epoch), optimizer, scheduler, loss_fn, device=CPU,
                                    grad_clip=1.0)
        val_totals, _ = validate_epoch(model, _batches(99), loss_fn, device=CPU)
        progress.global_step += taken
        progress.epoch = epoch + 1
        progress.history.append({"epoch": epoch + 1, "train_loss": float(totals[0] / totals[1]),
                                 "val_loss": float(val_totals[0] / val_totals[1])})
    return progress


def test_a_resumed_run_ends_with_exactly_the_uninterrupted_model(tmp_path):
    model, optimizer, scheduler = _model_and_optim()
    seed_all(7)
    straight = _train(model, optimizer, scheduler, range(4), Progress())

    first, first_opt, first_sched = _model_and_optim()
    seed_all(7)
    progress = _train(first, first_opt, first_sched, range(2), Progress())
    progress.rng = [rng_state()]
    save_checkpoint(tmp_path, first, first_opt, progress, first_sched)
    seed_all(12345)  # a new process: other weights, other random state
    resumed, resumed_opt, resumed_sched = _model_and_optim(seed=99)
    restored = load_checkpoint(tmp_path, resumed, resumed_opt, resumed_sched)
    set_rng_state(restored.rng[0])
    assert (restored.epoch, restored.global_step) == (2, 16)
    finished = _train(resumed, resumed_opt, resumed_sched, range(restored.epoch, 4), restored)

    assert finished.history == straight.history and finished.global_step == straight.global_step == 32
    for a, b in zip(model.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert resumed_opt.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"]
    assert resumed_sched.state_dict() == scheduler.state_dict()


def test_without_its_rng_state_a_resume_would_drift(tmp_path):
    """The check above is sensitive: dropout draws differ unless the RNG state comes back too."""
    model, optimizer, scheduler = _model_and_optim()
    seed_all(7)
    _train(model, optimizer, scheduler, range(3), Progress())
    other, other_opt, other_sched = _model_and_optim()
    seed_all(7)
    progress = _train(other, other_opt, other_sched, range(2), Progress())
    save_checkpoint(tmp_path, other, other_opt, progress, other_sched)
    seed_all(12345)
    load_checkpoint(tmp_path, other, other_opt, other_sched)
    _train(other, other_opt, other_sched, range(2, 3), progress)
    assert not torch.equal(model.net[0].weight, other.net[0].weight)


def test_checkpoint_holds_json_state_and_weights_only_tensors(tmp_path):
    model, optimizer, scheduler = _model_and_optim()
    seed_all(3)
    progress = _train(model, optimizer, scheduler, range(1), Progress(attempts=2, worker_nodes=["a", "b"]))
    progress.rng = [rng_state(), rng_state()]
    save_checkpoint(tmp_path, model, optimizer, progress, scheduler)
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["global_step"] == 8 and state["scheduler"]["last_epoch"] == 8
    assert (state["epoch"], state["attempts"], state["worker_nodes"]) == (1, 2, ["a", "b"])
    assert len(json.loads((tmp_path / "rng.json").read_text())["ranks"]) == 2
    for name in ("model.pt", "optimizer.pt"):
        torch.load(tmp_path / name, weights_only=True)  # plain tensors and containers; no pickled objects
    restored = read_progress(tmp_path)
    assert restored.scheduler == scheduler.state_dict() and restored.scaler == {}
    assert dataclasses.replace(restored, scheduler={}) == progress
    assert torch.equal(load_trained(tmp_path, ModelConfig(hidden=[16, 8], dropout=0.3), 6).net[0].weight,
                       model.net[0].weight)


def test_rng_state_round_trips_torch_numpy_and_python():
    import random

    seed_all(5)
    state = json.loads(json.dumps(rng_state()))  # survives JSON
    expected = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])
    seed_all(6)
    set_rng_state(state)
    got = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1]) and got[2] == expected[2]


def test_bf16_autocast_trains_on_cpu():
    model, optimizer, scheduler = _model_and_optim()
    dtypes = []
    model.net[0].register_forward_hook(lambda module, args, out: dtypes.append(out.dtype))
    loss_fn = torch.nn.BCEWithLogitsLoss()
    before = model.net[0].weight.detach().clone()
    totals, taken = train_epoch(model, _batches(0), optimizer, scheduler, loss_fn, device=CPU, grad_clip=1.0,
                                precision="bf16")
    assert taken == 8 and set(dtypes) == {torch.bfloat16}  # the forward pass ran in bf16
    assert model.net[0].weight.dtype == torch.float32 and not torch.equal(before, model.net[0].weight)
    assert math.isfinite(float(totals[0])) and int(totals[1]) == 128
    val_totals, hist = validate_epoch(model, _batches(1), loss_fn, device=CPU, precision="bf16")
    assert int(val_totals[1]) == 128 and int(hist.pos.sum() + hist.neg.sum()) == 128
    with autocast(CPU, "fp32"):
        assert model(torch.randn(2, 6)).dtype == torch.float32


def test_checkpoint_of_another_architecture_is_a_config_error(tmp_path):
    model = build_model(ModelConfig(hidden=[8]), 5)
    save_checkpoint(tmp_path, model, torch.optim.AdamW(model.parameters()), Progress(epoch=1))
    with pytest.raises(ConfigError, match="does not fit this model"):
        load_checkpoint(tmp_path, build_model(ModelConfig(hidden=[16]), 5))
