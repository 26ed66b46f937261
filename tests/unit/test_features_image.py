"""Unit tests for rayml.features.image: decode, resize, convert, normalize, corrupt rows (no Ray)."""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow as pa
import pytest
from pydantic import ValidationError

from rayml.features import registry
from rayml.features.base import FeatureInputError
from rayml.features.image import ImageFeatures

Image = pytest.importorskip("PIL.Image", reason="image features need Pillow (the features extra)")


def fit(featurizer, *batches):
    stats = None
    for batch in batches:
        part = featurizer.partial_fit(batch)
        json.dumps(part, allow_nan=False)
        stats = part if stats is None else featurizer.merge(stats, part)
    return featurizer.finalize(stats or {})


def encoded(pixels: np.ndarray, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buffer.getvalue()


@pytest.fixture(scope="module")
def pictures() -> list[np.ndarray]:
    rng = np.random.default_rng(11)
    return [rng.integers(0, 256, (int(h), int(w), 3), dtype=np.uint8)
            for h, w in rng.integers(8, 40, (9, 2))]


def reference(pixels: np.ndarray, size: tuple[int, int], mode: str, resample: int) -> np.ndarray:
    """What the featurizer should produce before normalization, computed with Pillow directly."""
    image = Image.fromarray(pixels).convert(mode).resize((size[1], size[0]), resample=resample)
    array = np.asarray(image, dtype=np.float32) / 255.0
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def test_png_bytes_decode_resize_to_nchw_with_given_normalization(pictures):
    featurizer = ImageFeatures(column="img", size=(12, 16), mean=[0.5, 0.4, 0.3], std=[0.2, 0.25, 0.5])
    assert not featurizer.needs_fit()
    state = fit(featurizer)
    batch = pa.table({"img": pa.array([encoded(p) for p in pictures], pa.binary())})
    x = registry.transform(state, batch)["img"]
    assert x.dtype == np.float32 and x.shape == (len(pictures), 3, 12, 16)
    mean = np.array([0.5, 0.4, 0.3], np.float32)[:, None, None]
    std = np.array([0.2, 0.25, 0.5], np.float32)[:, None, None]
    for row, pixels in enumerate(pictures):
        expected = (reference(pixels, (12, 16), "RGB", Image.Resampling.BILINEAR) - mean) / std
        np.testing.assert_allclose(x[row], expected, rtol=1e-6, atol=1e-6)


def test_a_solid_color_survives_any_resize_exactly():
    solid = np.zeros((30, 50, 3), np.uint8)
    solid[...] = (255, 128, 0)
    for interpolation in ("nearest", "bilinear", "bicubic", "lanczos"):
        state = fit(ImageFeatures(column="img", size=(7, 5), interpolation=interpolation,
                                  mean=[0.0] * 3, std=[1.0] * 3))
        x = registry.transform(state, {"img": [encoded(solid)]})["img"][0]
        np.testing.assert_allclose(x[:, 0, 0], [1.0, 128 / 255, 0.0], atol=1e-6)
        assert np.ptp(x, axis=(1, 2)).max() < 1e-6


def test_jpeg_decodes_close_to_the_original():
    gradient = np.repeat(np.linspace(0, 255, 64, dtype=np.uint8)[None, :, None], 32, axis=0).repeat(3, axis=2)
    state = fit(ImageFeatures(column="img", size=(32, 64), mean=[0.0] * 3, std=[1.0] * 3))
    x = registry.transform(state, pa.table({"img": [encoded(gradient, "JPEG")]}))["img"][0]
    assert np.abs(x - gradient.transpose(2, 0, 1) / 255.0).max() < 0.03


def test_grayscale_mode_uses_itu_601_luma(pictures):
    gray = ImageFeatures(column="img", size=(10, 10), mode="L", interpolation="nearest", mean=[0], std=[1])
    state = fit(gray)
    square = pictures[0][:10, :10] if min(pictures[0].shape[:2]) >= 10 else np.zeros((10, 10, 3), np.uint8)
    x = registry.transform(state, {"img": [encoded(square)]})["img"]
    assert x.shape == (1, 1, 10, 10)
    rgb = square.astype(np.float64)
    luma = (rgb[..., 0] * 299 + rgb[..., 1] * 587 + rgb[..., 2] * 114) / 1000
    assert np.abs(x[0, 0] * 255 - luma).max() <= 1.0


def test_raw_pixel_arrays_in_every_container_match_the_encoded_path(pictures):
    state = fit(ImageFeatures(column="img", size=(8, 8), mean=[0.5] * 3, std=[0.5] * 3))
    same = [p[:8, :8] for p in pictures if min(p.shape[:2]) >= 8][:3]
    expected = registry.transform(state, {"img": [encoded(p) for p in same]})["img"]
    stacked = np.stack(same)
    tensor = pa.FixedShapeTensorArray.from_numpy_ndarray(stacked)
    nested = pa.array([p.tolist() for p in same])
    for column in (stacked, list(same), tensor, nested):
        np.testing.assert_array_equal(registry.transform(state, {"img": column})["img"], expected)
    np.testing.assert_array_equal(registry.transform(state, pa.table({"img": tensor}))["img"], expected)


def test_two_dimensional_arrays_are_grayscale_and_convert_to_rgb():
    gray = np.full((4, 4), 200, np.uint8)
    state = fit(ImageFeatures(column="img", size=(4, 4), mean=[0.0] * 3, std=[1.0] * 3))
    x = registry.transform(state, {"img": [gray, gray[:, :, None]]})["img"]
    np.testing.assert_allclose(x, np.full((2, 3, 4, 4), 200 / 255, np.float32), atol=1e-7)


def test_fitted_normalization_matches_numpy_and_merges(pictures):
    featurizer = ImageFeatures(column="img", size=(9, 11))
    assert featurizer.needs_fit()
    batch = pa.table({"img": pa.array([encoded(p) for p in pictures], pa.binary())})
    state = fit(featurizer, batch)
    pixels = np.stack([reference(p, (9, 11), "RGB", Image.Resampling.BILINEAR) for p in pictures])
    np.testing.assert_allclose(state["params"]["mean"], pixels.mean(axis=(0, 2, 3)), rtol=1e-6)
    np.testing.assert_allclose(state["params"]["std"], pixels.std(axis=(0, 2, 3)), rtol=1e-5)
    assert state["params"]["fitted_images"] == len(pictures)
    split = fit(featurizer, batch.slice(0, 2), batch.slice(2, 0), batch.slice(2, 4), batch.slice(6))
    np.testing.assert_allclose(split["params"]["mean"], state["params"]["mean"], rtol=1e-12)
    np.testing.assert_allclose(split["params"]["std"], state["params"]["std"], rtol=1e-12)
    x = registry.transform(state, batch)["img"]
    np.testing.assert_allclose(x.mean(axis=(0, 2, 3)), 0.0, atol=1e-5)
    np.testing.assert_allclose(x.std(axis=(0, 2, 3)), 1.0, atol=1e-4)


def test_corrupt_images_are_problems_naming_the_row_not_crashes(pictures):
    good = encoded(pictures[0])
    column = [good, b"not an image", good[: len(good) // 2], None, np.zeros((3, 3, 2), np.uint8),
              np.full((3, 3), 1.5)]
    state = fit(ImageFeatures(column="photo", size=(4, 4), mean=[0.0] * 3, std=[1.0] * 3))
    applied = registry.apply(state, {"photo": column})
    assert sorted(applied.problems) == [1, 2, 3, 4, 5]
    assert applied.problems[1].startswith("photo: cannot decode the image (UnidentifiedImageError")
    assert applied.problems[2].startswith("photo: cannot decode the image")
    assert applied.problems[3] == "photo: null image; send image bytes or pixels"
    assert "expected (H, W) or (H, W, 1|3|4)" in applied.problems[4]
    assert "integers in 0..255" in applied.problems[5]
    assert np.abs(applied.outputs["photo"][0]).sum() > 0
    assert not applied.outputs["photo"][1:].any()
    with pytest.raises(FeatureInputError) as err:
        registry.transform(state, {"photo": column})
    assert err.value.column == "photo" and err.value.rows == [1, 2, 3, 4, 5]
    assert "row 1: photo: cannot decode" in str(err.value)


def test_fitting_skips_corrupt_images_and_counts_them(pictures):
    featurizer = ImageFeatures(column="img", size=(5, 5))
    clean = fit(featurizer, {"img": [encoded(p) for p in pictures[:3]]})
    dirty = fit(featurizer, {"img": [encoded(p) for p in pictures[:3]] + [b"\x89PNG broken", None]})
    assert dirty["params"]["skipped_images"] == 2 and dirty["params"]["fitted_images"] == 3
    assert dirty["params"]["mean"] == clean["params"]["mean"]


def test_oversized_images_are_refused_before_decoding():
    state = fit(ImageFeatures(column="img", size=(2, 2), mean=[0.0] * 3, std=[1.0] * 3, max_pixels=100))
    big = encoded(np.zeros((20, 20, 3), np.uint8))
    assert registry.apply(state, {"img": [big]}).problems == {
        0: "img: image of 20x20 pixels exceeds max_pixels=100"
    }


def test_all_null_image_column():
    featurizer = ImageFeatures(column="img", size=(3, 3), mode="L")
    state = fit(featurizer, pa.table({"img": pa.nulls(2, pa.binary())}))
    assert state["params"]["mean"] == [0.0] and state["params"]["std"] == [1.0]
    applied = registry.apply(state, pa.table({"img": pa.nulls(2, pa.binary())}))
    assert sorted(applied.problems) == [0, 1] and applied.outputs["img"].shape == (2, 1, 3, 3)


@pytest.mark.parametrize(
    "kwargs, message",
    [({"mean": [0.5] * 3}, "both mean and std"), ({"mean": [0.5], "std": [0.2]}, "3 channel"),
     ({"size": (0, 4)}, "1..4096"), ({"mean": [0.0] * 3, "std": [1.0, 0.0, 1.0]}, "positive")],
)
def test_config_errors(kwargs, message):
    with pytest.raises(ValidationError, match=message):
        ImageFeatures(column="img", **{"size": (4, 4), **kwargs})


def test_json_round_trip(pictures):
    featurizer = ImageFeatures(column="img", size=(6, 6), mode="L", interpolation="bicubic")
    batch = {"img": [encoded(p) for p in pictures[:4]]}
    state = fit(featurizer, batch)
    again = registry.loads(registry.dumps(state), kind="image")
    expected = registry.transform(state, batch)["img"]
    np.testing.assert_array_equal(registry.transform(again, batch)["img"], expected)
    spec = registry.output_spec(state)[0]
    assert (spec.name, spec.dtype, spec.shape) == ("img", "float32", (1, 6, 6))


def test_ray_data_tensor_columns_decode_without_a_cluster(pictures):
    arrow_tensors = pytest.importorskip("ray.data._internal.tensor_extensions.arrow")
    state = fit(ImageFeatures(column="img", size=(8, 8), mean=[0.5] * 3, std=[0.5] * 3))
    fixed = [p[:8, :8] for p in pictures if min(p.shape[:2]) >= 8][:2]
    expected = registry.transform(state, {"img": [encoded(p) for p in fixed]})["img"]
    column = arrow_tensors.ArrowTensorArray.from_numpy(np.stack(fixed))
    np.testing.assert_array_equal(registry.transform(state, pa.table({"img": column}))["img"], expected)
    cells = np.empty(3, dtype=object)
    for i in range(3):
        cells[i] = pictures[i]  # variable-shaped
    ragged = arrow_tensors.ArrowVariableShapedTensorArray.from_numpy(cells)
    expected = registry.transform(state, {"img": [encoded(p) for p in pictures[:3]]})["img"]
    np.testing.assert_array_equal(registry.transform(state, pa.table({"img": ragged}))["img"], expected)
