"""Mixed precision and resumable state on a CUDA device: fp16 with its gradient scaler, bf16, and a checkpoint
that brings back the scaler and the CUDA RNG. Skipped where there is no GPU."""

from __future__ import annotations

import math

import pytest
import torch

from rayml.models import ModelConfig, build_model
from rayml.train.checkpoint import Progress, load_checkpoint, rng_state, save_checkpoint, seed_all, set_rng_state
from rayml.train.steps import build_scheduler, grad_scaler, train_epoch

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def _setup(seed: int = 0):
    device = torch.device("cuda")
    torch.manual_seed(seed)
    model = build_model(ModelConfig(hidden=[32, 16], dropout=0.3), 6).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    scheduler = build_scheduler(optimizer, schedule="linear", warmup_steps=2, total_steps=32)
    return device, model, optimizer, scheduler


def _batches(epoch: int, device: torch.device) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(epoch)
    features = torch.randn(128, 6, generator=generator)
    labels = (features[:, 0] > 0.3).float()
    return [{"features": features[i:i + 16].to(device), "label": labels[i:i + 16].to(device)}
            for i in range(0, 128, 16)]


@pytest.mark.parametrize("precision", ["fp16", "bf16", "fp32"])
def test_a_mixed_precision_epoch_trains_on_cuda(precision):
    device, model, optimizer, scheduler = _setup()
    scaler = grad_scaler(precision, device)
    assert (scaler is not None) == (precision == "fp16")
    before = model.net[0].weight.detach().clone()
    totals, steps = train_epoch(model, _batches(0, device), optimizer, scheduler, torch.nn.BCEWithLogitsLoss(),
                                device=device, grad_clip=1.0, precision=precision, scaler=scaler)
    assert steps == 8 and math.isfinite(float(totals[0])) and not torch.equal(before, model.net[0].weight)


def test_fp16_resume_restores_scaler_and_cuda_rng(tmp_path):
    loss_fn = torch.nn.BCEWithLogitsLoss()

    def epochs(parts, span):
        device, model, optimizer, scheduler, scaler = parts
        for epoch in span:
            train_epoch(model, _batches(epoch, device), optimizer, scheduler, loss_fn, device=device,
                        grad_clip=1.0, precision="fp16", scaler=scaler)

    straight = (*_setup(), grad_scaler("fp16", torch.device("cuda")))
    seed_all(3)
    epochs(straight, range(4))

    first = (*_setup(), grad_scaler("fp16", torch.device("cuda")))
    seed_all(3)
    epochs(first, range(2))
    save_checkpoint(tmp_path, first[1], first[2], Progress(epoch=2, rng=[rng_state()]), first[3], first[4])
    seed_all(99)
    resumed = (*_setup(seed=5), grad_scaler("fp16", torch.device("cuda")))
    progress = load_checkpoint(tmp_path, resumed[1], resumed[2], resumed[3], resumed[4])
    assert "cuda" in progress.rng[0] and progress.scaler["scale"] == first[4].get_scale()
    set_rng_state(progress.rng[0])
    epochs(resumed, range(2, 4))
    for a, b in zip(straight[1].state_dict().values(), resumed[1].state_dict().values(), strict=True):
        assert torch.equal(a, b)
