"""What a training checkpoint holds, and how it is written and read back. Nothing here is a pickle.

    model.pt       the model's state dict (torch.save; loaded with weights_only=True)
    optimizer.pt   the optimizer's state dict (same)
    state.json     epoch, global step, history, attempts, worker nodes, early stop, LR scheduler, grad scaler
    rng.json       the torch, numpy and Python RNG state of every rank (base64 bytes and plain numbers)
"""

from __future__ import annotations

import base64
import json
import random
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rayml.errors import ConfigError
from rayml.model_config import WEIGHTS_FILE
from rayml.train.progress import (  # noqa: F401 (re-exported)
    OPTIMIZER_FILE, RNG_FILE, STATE_FILE, Progress, read_progress,
)


def save_checkpoint(
    directory: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    progress: Progress,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    scaler: torch.amp.GradScaler | None = None,
) -> None:
    """Write a resumable checkpoint into ``directory``."""
    torch.save(model.state_dict(), directory / WEIGHTS_FILE)
    torch.save(optimizer.state_dict(), directory / OPTIMIZER_FILE)
    state = asdict(progress)
    state["scheduler"] = scheduler.state_dict() if scheduler is not None else {}
    state["scaler"] = scaler.state_dict() if scaler is not None else {}
    (directory / RNG_FILE).write_text(json.dumps({"ranks": state.pop("rng")}))
    (directory / STATE_FILE).write_text(json.dumps(state, indent=2))


def load_checkpoint(
    directory: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    scaler: torch.amp.GradScaler | None = None,
) -> Progress:
    """Restore the model (and optimizer, scheduler, scaler where given) from ``directory``; return its progress."""
    try:
        model.load_state_dict(torch.load(directory / WEIGHTS_FILE, weights_only=True, map_location="cpu"))
    except RuntimeError as exc:
        raise ConfigError(
            f"the checkpoint in {directory} does not fit this model ({str(exc).splitlines()[0]}); the "
            "architecture changed since it was written. Use a new run.name to train from scratch",
            "train.model",
        ) from exc
    if optimizer is not None:
        optimizer.load_state_dict(torch.load(directory / OPTIMIZER_FILE, weights_only=True, map_location="cpu"))
    progress = read_progress(directory)
    if scheduler is not None and progress.scheduler:
        scheduler.load_state_dict(progress.scheduler)
    if scaler is not None and progress.scaler:
        scaler.load_state_dict(progress.scaler)
    return progress


def derived_seed(seed: int, rank: int) -> int:
    """The seed of one rank's random streams: distinct per rank, fixed per (seed, rank)."""
    return (seed * 1_000_003 + rank) % 2**32


def seed_all(seed: int) -> None:
    """Seed torch (CPU and CUDA), numpy's global generator and Python's ``random``."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def rng_state() -> dict[str, Any]:
    """This process's RNG state as JSON-able data: torch (CPU, and the current CUDA device), numpy, random."""
    _, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": _b64(torch.get_rng_state()),
        "numpy": {"keys": base64.b64encode(keys.astype("<u4").tobytes()).decode(), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = _b64(torch.cuda.get_rng_state())
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what ``rng_state`` captured."""
    torch.set_rng_state(_tensor(state["torch"]))
    numpy = state["numpy"]
    keys = np.frombuffer(base64.b64decode(numpy["keys"]), dtype="<u4").astype(np.uint32)
    np.random.set_state(("MT19937", keys, numpy["pos"], numpy["has_gauss"], numpy["cached_gaussian"]))
    python = state["python"]
    random.setstate((python["version"], tuple(python["internal"]), python["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(_tensor(state["cuda"]))


def _b64(tensor: torch.Tensor) -> str:
    return base64.b64encode(tensor.cpu().numpy().tobytes()).decode()


def _tensor(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8)
