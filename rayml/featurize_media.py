"""Image and text inputs of the featurizer: blocks of the feature matrix that cannot be fused into ONNX.

    image   decoded, resized, normalized pixels (``rayml.features.image.ImageFeatures``), flattened C*H*W;
            the CNN reshapes them back (the state's ``layout`` carries the shape)
    text    the frozen all-MiniLM-L6-v2 sentence embedding (384 floats, unit length) of a text column,
            tokenized by ``rayml.features.text.Tokenize`` and encoded by ``rayml.text_encoder``

The same ``apply_*`` functions run in the featurize stage (on Ray Data) and in a serving replica, so a served
text or image model sees exactly the features it was trained on.
"""

from __future__ import annotations

import functools
from typing import Any, Literal

import numpy as np
from pydantic import Field

from rayml.config import StrictModel
from rayml.features.base import FeatureInputError

EMBEDDING_DIM = 384  # all-MiniLM-L6-v2


class ImageInput(StrictModel):
    """An image column (encoded bytes) turned into normalized pixels."""

    column: str = Field(min_length=1, description="binary column of encoded images (PNG, JPEG, ...)")
    size: tuple[int, int] = Field((28, 28), description="(height, width) every image is resized to")
    mode: Literal["L", "RGB"] = Field("L", description="L: 1 grayscale channel; RGB: 3 channels")


class TextInput(StrictModel):
    """A text column turned into its frozen MiniLM sentence embedding."""

    column: str = Field(min_length=1, description="string column of text")
    max_length: int = Field(128, ge=8, le=512, description="tokens per text; longer texts are truncated")
    threads: int = Field(1, ge=1, le=64, description="torch threads of the encoder in each featurize task")


def image_step(config: ImageInput) -> Any:
    from rayml.features.image import ImageFeatures

    return ImageFeatures(column=config.column, size=config.size, mode=config.mode)


def image_partial(batch: Any, config: ImageInput) -> dict[str, Any]:
    return image_step(config).partial_fit(batch)


def image_state(parts: list[dict[str, Any]], config: ImageInput) -> dict[str, Any]:
    step = image_step(config)
    merged = parts[0] if parts else step.partial_fit({config.column: []})
    for part in parts[1:]:
        merged = step.merge(merged, part)
    return step.finalize(merged)


def image_shape(state: dict[str, Any]) -> list[int]:
    height, width = state["config"]["size"]
    return [1 if state["config"]["mode"] == "L" else 3, height, width]


def apply_image(batch: Any, state: dict[str, Any]) -> np.ndarray:
    """Pixels [rows, C*H*W]; an image that cannot be decoded is a FeatureInputError naming its rows."""
    from rayml.features.image import ImageFeatures

    applied = ImageFeatures.apply(state, batch)
    _raise_problems(applied.problems, state["config"]["column"])
    (pixels,) = applied.outputs.values()
    return pixels.reshape(pixels.shape[0], -1)


def text_state(config: TextInput) -> dict[str, Any]:
    from rayml.features.text import Tokenize

    return {"tokenize": Tokenize(column=config.column, max_length=config.max_length).finalize({}),
            "threads": config.threads, "dim": EMBEDDING_DIM}


def apply_text(batch: Any, state: dict[str, Any]) -> np.ndarray:
    """Sentence embeddings [rows, 384] of the text column (null text embeds as the empty string)."""
    import torch

    from rayml.features.text import Tokenize

    tokens = Tokenize.apply(state["tokenize"], batch).outputs
    column = state["tokenize"]["config"]["column"]
    ids, mask = tokens[f"{column}_input_ids"], tokens[f"{column}_attention_mask"]
    encoder = _encoder()
    torch.set_num_threads(int(state["threads"]))
    out = np.zeros((ids.shape[0], state["dim"]), dtype=np.float32)
    step = 64
    with torch.inference_mode():
        for start in range(0, ids.shape[0], step):
            # Trim padding every row of the chunk shares: attention cost grows with the sequence length.
            chunk_mask = mask[start:start + step]
            width = max(int(chunk_mask.sum(axis=1).max()), 1) if chunk_mask.size else 1
            embedded = encoder(torch.from_numpy(ids[start:start + step, :width]),
                               torch.from_numpy(chunk_mask[:, :width]))
            out[start:start + step] = embedded.numpy()
    return out


@functools.lru_cache(maxsize=1)
def _encoder() -> Any:
    """The bundled encoder, loaded once per process (a Ray worker or a serving replica)."""
    from rayml.text_encoder import load_encoder

    return load_encoder()


def _raise_problems(problems: dict[int, str], column: str) -> None:
    if problems:
        rows = sorted(problems)
        shown = "; ".join(f"row {r}: {problems[r]}" for r in rows[:5])
        raise FeatureInputError(f"{len(rows)} row(s) cannot be featurized: {shown}", column, rows)
