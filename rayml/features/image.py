"""Images: decode, convert to grayscale or RGB, resize to a fixed size, normalize; float32 NCHW out.

A row is encoded bytes (PNG, JPEG or anything else Pillow reads) in a binary column, or raw uint8 pixels:
an Arrow fixed-shape tensor (pyarrow's, or Ray Data's tensor extension types), nested lists, or numpy
arrays (H, W) / (H, W, C). Every image is resized to exactly ``size`` = (height, width) by Pillow's
``interpolation`` filter (antialiased when shrinking), ignoring aspect ratio. Pixels are scaled to [0, 1],
then ``(x - mean) / std`` per channel, with ``mean``/``std`` given or fitted over the training pixels after
resizing (mergeable per-channel moments).

A row that cannot be used (null, undecodable bytes, more than ``max_pixels`` pixels, a wrong array shape or
pixel type) is never a crash: ``apply`` reports it as a problem naming the row, like ``rayml.validate`` does,
and zero-fills its output, so the caller quarantines it (training) or answers 4xx (serving). Fitting skips
such rows and counts them.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any, ClassVar, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field, model_validator

from rayml.config import StrictModel
from rayml.errors import RaymlError
from rayml.features import stats as S
from rayml.features.base import Applied, ColumnStep, OutputSpec, State, Stats, make_state
from rayml.features.columns import column_of

_TINY = 1e-12


class _Normalize(StrictModel):
    mean: list[float] = Field(min_length=1, max_length=3)
    std: list[float] = Field(min_length=1, max_length=3)
    fitted_images: int = Field(ge=0)
    skipped_images: int = Field(ge=0)


class ImageFeatures(ColumnStep):
    """Decoded, resized, normalized pixels: float32 [rows, channels, height, width]."""

    kind: Literal["image"] = "image"
    size: tuple[int, int] = Field(description="output (height, width) in pixels")
    mode: Literal["L", "RGB"] = Field("RGB", description="L: 1 grayscale channel; RGB: 3 channels")
    interpolation: Literal["nearest", "bilinear", "bicubic", "lanczos"] = Field("bilinear")
    mean: list[float] | None = Field(None, description="per-channel mean of [0, 1] pixels; fitted when unset")
    std: list[float] | None = Field(None, description="per-channel std of [0, 1] pixels; fitted when unset")
    max_pixels: int = Field(40_000_000, ge=1, description="larger images are rejected (decompression bombs)")
    VERSION: ClassVar[int] = 1
    Params: ClassVar[type[StrictModel]] = _Normalize

    @model_validator(mode="after")
    def _consistent(self) -> ImageFeatures:
        if not all(1 <= side <= 4096 for side in self.size):
            raise ValueError(f"size {list(self.size)} must be two sides in 1..4096 (height, width)")
        if (self.mean is None) != (self.std is None):
            raise ValueError("set both mean and std, or neither (then both are fitted)")
        channels = 1 if self.mode == "L" else 3
        for key, values in (("mean", self.mean), ("std", self.std)):
            if values is not None and len(values) != channels:
                raise ValueError(f"{key} has {len(values)} values; mode {self.mode} has {channels} channels")
        if self.std is not None and min(self.std) <= 0:
            raise ValueError(f"std {self.std} must be positive")
        return self

    def needs_fit(self) -> bool:
        return self.mean is None

    def partial_fit(self, batch: Any) -> Stats:
        config = self.model_dump()
        channels = _channels(config)
        moments = [[0.0, 0.0, 0.0] for _ in range(channels)]
        seen = skipped = 0
        if self.mean is None:
            for _, pixels, problem in _images(column_of(batch, self.column), config):
                if problem is not None:
                    skipped += 1
                    continue
                seen += 1
                for c in range(channels):
                    moments[c] = S.merge_moments(moments[c], S.moments(pixels[c].ravel().astype(np.float64)))
        return {"moments": moments, "images": seen, "skipped": skipped}

    def merge(self, a: Stats, b: Stats) -> Stats:
        moments = [S.merge_moments(x, y) for x, y in zip(a["moments"], b["moments"])]
        images, skipped = a["images"] + b["images"], a["skipped"] + b["skipped"]
        return {"moments": moments, "images": images, "skipped": skipped}

    def finalize(self, stats: Stats) -> State:
        if self.mean is not None and self.std is not None:
            params = {"mean": self.mean, "std": self.std, "fitted_images": 0, "skipped_images": 0}
            return make_state(self, self.VERSION, params)
        moments = stats.get("moments") or [[0.0, 0.0, 0.0]] * _channels(self.model_dump())
        means = [m[1] if m[0] else 0.0 for m in moments]
        stds = [S.std(m) if S.std(m) > _TINY else 1.0 for m in moments]
        params = {"mean": means, "std": stds, "fitted_images": stats.get("images", 0),
                  "skipped_images": stats.get("skipped", 0)}
        return make_state(self, self.VERSION, params)

    @staticmethod
    def apply(state: State, batch: Any) -> Applied:
        config, params = state["config"], state["params"]
        height, width = config["size"]
        values = column_of(batch, config["column"])
        out = np.zeros((len(values), _channels(config), height, width), dtype=np.float32)
        mean = np.asarray(params["mean"], np.float32)[:, None, None]
        std = np.asarray(params["std"], np.float32)[:, None, None]
        problems: dict[int, str] = {}
        for row, pixels, problem in _images(values, config):
            if problem is not None:
                problems[row] = f"{config['column']}: {problem}"
            else:
                out[row] = (pixels - mean) / std
        return Applied({_out(state): out}, problems)

    @staticmethod
    def output_spec(state: State) -> list[OutputSpec]:
        height, width = state["config"]["size"]
        return [OutputSpec(_out(state), "float32", (_channels(state["config"]), height, width))]


def _out(state: State) -> str:
    return state["config"]["name"] or state["config"]["column"]


def _channels(config: dict[str, Any]) -> int:
    return 1 if config["mode"] == "L" else 3


def _images(values: Any, config: dict[str, Any]) -> Iterator[tuple[int, np.ndarray | None, str | None]]:
    """(row, [C, H, W] float32 pixels in [0, 1] or None, problem or None) for every row of a column."""
    try:
        from PIL import Image
    except ImportError as exc:
        raise RaymlError("image features need Pillow; pip install 'rayml[features]'") from exc
    for row, item in enumerate(_rows(values)):
        try:
            image = _open(item, config["max_pixels"], Image)
            image = image.convert(config["mode"])
            resample = getattr(Image.Resampling, config["interpolation"].upper())
            height, width = config["size"]
            pixels = np.asarray(image.resize((width, height), resample=resample), dtype=np.float32) / 255.0
        except _BadImage as exc:
            yield row, None, str(exc)
            continue
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            yield row, None, f"cannot decode the image ({type(exc).__name__}: {exc}); send PNG/JPEG bytes"
            continue
        yield row, (pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)), None


class _BadImage(ValueError):
    pass


def _open(item: Any, max_pixels: int, Image: Any) -> Any:
    """A Pillow image from bytes or a uint8 array, refusing oversized or ill-shaped input with a reason."""
    if item is None:
        raise _BadImage("null image; send image bytes or pixels")
    if isinstance(item, (bytes, bytearray, memoryview)):
        image = Image.open(io.BytesIO(bytes(item)))
        if image.width * image.height > max_pixels:
            raise _BadImage(f"image of {image.width}x{image.height} pixels exceeds max_pixels={max_pixels}")
        image.load()  # decode now, so a truncated file fails here with its row
        return image
    pixels = np.asarray(item)
    if pixels.dtype.kind not in "iub" or pixels.size == 0 or pixels.min() < 0 or pixels.max() > 255:
        raise _BadImage(f"pixels must be integers in 0..255 (uint8), got {pixels.dtype} values")
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    if not (pixels.ndim == 2 or (pixels.ndim == 3 and pixels.shape[2] in (3, 4))):
        raise _BadImage(f"pixel array of shape {list(pixels.shape)}; expected (H, W) or (H, W, 1|3|4)")
    if pixels.shape[0] * pixels.shape[1] > max_pixels:
        height, width = pixels.shape[:2]
        raise _BadImage(f"image of {width}x{height} pixels exceeds max_pixels={max_pixels}")
    return Image.fromarray(pixels.astype(np.uint8))


def _rows(values: Any) -> Iterator[Any]:
    """Each row of an image column as bytes, a numpy array, or None."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if isinstance(values, np.ndarray) and values.dtype != object:
        yield from values  # a stacked [N, H, W(, C)] array
        return
    if not isinstance(values, pa.Array):
        yield from values
        return
    kind = values.type
    if isinstance(kind, pa.BaseExtensionType):
        storage = values.storage
        shape = getattr(kind, "shape", None)
        fixed = shape is not None and all(isinstance(side, int) for side in shape)
        for i in range(len(values)):
            if not values[i].is_valid:
                yield None
            elif fixed:  # flattened values in a list
                yield storage[i].values.to_numpy(zero_copy_only=False).reshape(shape)
            else:  # Ray's variable-shaped tensors (shape (None, ...)): struct<data, shape>
                cell = storage[i]
                data = cell["data"].values.to_numpy(zero_copy_only=False)
                yield data.reshape(cell["shape"].as_py())
        return
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind) or pa.types.is_fixed_size_binary(kind):
        yield from values.to_pylist()
        return
    for cell in values.to_pylist():
        yield None if cell is None else np.asarray(cell)
