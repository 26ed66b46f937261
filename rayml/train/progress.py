"""The JSON part of a training checkpoint (state.json, rng.json): where training stands, readable without torch.
``rayml.train.checkpoint`` writes and restores whole checkpoints."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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


def read_progress(directory: Path) -> Progress:
    """The JSON part of a checkpoint (state.json and rng.json), without touching tensors."""
    state = json.loads((directory / STATE_FILE).read_text())
    rng_path = directory / RNG_FILE
    rng = json.loads(rng_path.read_text())["ranks"] if rng_path.is_file() else []
    known = set(Progress.__dataclass_fields__) - {"rng"}
    return Progress(**{k: v for k, v in state.items() if k in known}, rng=rng)
