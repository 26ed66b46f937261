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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rayml.errors import ConfigError
from rayml.models import WEIGHTS_FILE

OPTIMIZER_FILE = "optimizer.pt"
STATE_FILE = "state.json"
RNG_FILE = "rng.json"


@dataclass
class Progress:
    """Everything a checkpoint holds besides tensors: where training stands and how it got there.

    ``rng`` holds one ``rng_state()`` per rank, in rank order. ``worker_nodes`` (the Ray node of each rank in
    the attempt that wrote it) is provenance; ``attempts`` counts the loop's starts, so a restart knows its
    own number.
    """

    epoch: int = 0
    global_step: int = 0
    history: list[dict] = field(default_factory=list)
    attempts: int = 1
    worker_nodes: list[str] = field(default_factory=list)
    stopped_early: bool = False
    scheduler: dict[str, Any] = field(default_factory=dict)
    scaler: dict[str, Any] = field(default_factory=dict)
    rng: list[dict[str, Any]] = field(default_factory=list)


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


def read_progress(directory: Path) -> Progress:
    """The JSON part of a checkpoint (state.json and rng.json), without touching tensors."""
    state = json.loads((directory / STATE_FILE).read_text())
    rng_path = directory / RNG_FILE
    rng = json.loads(rng_path.read_text())["ranks"] if rng_path.is_file() else []
    known = set(Progress.__dataclass_fields__) - {"rng"}
    return Progress(**{k: v for k, v in state.items() if k in known}, rng=rng)


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
