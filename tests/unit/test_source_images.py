"""The image-directory source and the binary column type (no Ray): <root>/<label>/<file> -> path, image bytes,
label; a corrupt file is quarantined with its path and reason, and the read goes on."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from rayml.config import parse
from rayml.errors import ConfigError
from rayml.features.image import ImageFeatures
from rayml.source import image_batch, image_groups, image_label, list_files, records_table, validated_images
from rayml.validate import ERROR, RAW, SOURCE_FILE, SOURCE_ROW, ColumnSpec, ValidateConfig, image_problem, \
    validate_batch

COLUMNS = [
    ColumnSpec(name="path", type="string"),
    ColumnSpec(name="image", type="binary", check_image=True),
    ColumnSpec(name="label", type="string"),
]


def png(value: int, size: tuple[int, int] = (6, 4), mode: str = "L") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, value if mode == "L" else (value, 0, 255 - value)).save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (value, value, value)).save(buffer, format="JPEG")
    return buffer.getvalue()


@pytest.fixture
def images(tmp_path: Path) -> Path:
    root = tmp_path / "images"
    files = {
        "cat/1.png": png(10), "cat/2.PNG": png(20, mode="RGB"), "dog/a.jpg": jpeg(200), "dog/b.jpeg": jpeg(90),
        "dog/nested/c.png": png(30),
        "dog/broken.png": png(40)[:30],  # truncated: the header is there, the pixels are not
        "bird/fake.png": b"not an image at all",
        "cat/notes.txt": b"ignored: not an image suffix", "cat/.thumb.png": png(1), "_tmp/x.png": png(1),
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def _read(root: Path) -> pa.Table:
    files = list_files(str(root), "images")
    return pa.concat_tables(validated_images(files, str(root), COLUMNS))


def test_list_files_finds_png_and_jpeg_under_label_folders(images):
    found = [Path(f).relative_to(images).as_posix() for f in list_files(str(images), "images")]
    assert found == ["bird/fake.png", "cat/1.png", "cat/2.PNG", "dog/a.jpg", "dog/b.jpeg", "dog/broken.png",
                     "dog/nested/c.png"]


def test_one_record_per_image_with_path_bytes_and_folder_label(images):
    files = list_files(str(images), "images")
    raw = image_batch(files, str(images))
    assert raw.table.column_names == ["path", "image", "label"]
    assert raw.table.schema.field("image").type == pa.binary()
    rows = {Path(r["path"]).relative_to(images).as_posix(): r for r in raw.table.to_pylist()}
    assert rows["cat/1.png"]["image"] == (images / "cat/1.png").read_bytes()
    assert {k: r["label"] for k, r in rows.items()} == {
        "bird/fake.png": "bird", "cat/1.png": "cat", "cat/2.PNG": "cat", "dog/a.jpg": "dog", "dog/b.jpeg": "dog",
        "dog/broken.png": "dog", "dog/nested/c.png": "dog"}
    assert raw.files == files and raw.problems is None


def test_corrupt_images_are_quarantined_with_path_and_reason_and_the_rest_read_on(images):
    out = _read(images)
    assert out.num_rows == 7
    bad = {Path(r[SOURCE_FILE]).relative_to(images).as_posix(): r for r in out.to_pylist() if r[ERROR]}
    assert sorted(bad) == ["bird/fake.png", "dog/broken.png"]
    assert bad["bird/fake.png"][ERROR] == (
        "image: cannot decode the image (UnidentifiedImageError: cannot identify image file); "
        "expected PNG or JPEG bytes")
    assert bad["dog/broken.png"][ERROR].startswith("image: cannot decode the image (")
    assert bad["dog/broken.png"]["image"] is None and bad["dog/broken.png"][SOURCE_ROW] == 0
    raw = json.loads(bad["bird/fake.png"][RAW])  # the original record, bytes as base64 as in a JSON request
    assert base64.b64decode(raw["image"]) == b"not an image at all" and raw["label"] == "bird"
    good = [r for r in out.to_pylist() if not r[ERROR]]
    assert len(good) == 5 and all(r["image"] and r["path"] == r[SOURCE_FILE] for r in good)


def test_an_image_outside_a_label_folder_is_quarantined(tmp_path):
    (tmp_path / "loose.png").write_bytes(png(5))
    (tmp_path / "ok").mkdir()
    (tmp_path / "ok" / "a.png").write_bytes(png(6))
    out = _read(tmp_path)
    errors = {Path(r[SOURCE_FILE]).name: r[ERROR] for r in out.to_pylist()}
    assert errors["a.png"] is None
    assert "image is not inside a <label>/ folder under" in errors["loose.png"]


def test_an_unreadable_file_is_quarantined_not_fatal(images):
    files = [*list_files(str(images), "images"), str(images / "cat" / "vanished.png")]
    out = pa.concat_tables(validated_images(files, str(images), COLUMNS))
    row = next(r for r in out.to_pylist() if r[SOURCE_FILE].endswith("vanished.png"))
    assert row[ERROR].startswith("cannot read the file (") and "No such file" in row[ERROR]
    assert out.num_rows == 8


def test_image_label_of_local_and_s3_paths():
    assert image_label("s3://b/imgs/cat/1.png", "s3://b/imgs/") == "cat"
    assert image_label("s3://b/imgs/1.png", "s3://b/imgs") is None
    assert image_label("data/imgs/dog/x/y.png", "data/imgs") == "dog"
    assert image_label("elsewhere/dog/y.png", "data/imgs") is None
    assert image_label("data/imgs/dog/y.png", "data/imgs/dog/y.png") == "dog"  # a single-file source


def test_image_groups_spread_files_over_tasks_within_the_limits():
    files = [f"f{i}" for i in range(10)]
    assert image_groups(files, [1] * 10, batch_rows=1000, parallelism=3) == [files[0:4], files[4:8], files[8:]]
    assert image_groups(files, [1] * 10, batch_rows=2, parallelism=1) == [files[i:i + 2] for i in range(0, 10, 2)]
    big = image_groups(files[:3], [20 << 20, 20 << 20, None], batch_rows=1000, parallelism=1)
    assert big == [["f0"], ["f1", "f2"]]  # 32 MiB of encoded bytes per task at most; unknown sizes count 0


# ---------------------------------------------------------------- the binary column type


def test_binary_column_takes_arrow_bytes_and_base64_json_text():
    columns = [ColumnSpec(name="image", type="binary")]
    data = png(77)
    table = records_table([{"image": base64.b64encode(data).decode()}, {"image": "not base64!"},
                           {"image": "QUJD"}, {"image": 5}])
    out = validate_batch(table, columns, "request", 0).to_pylist()
    assert out[0]["image"] == data and out[0][ERROR] is None
    assert out[1][ERROR] == "image: got 'not base64!'; expected bytes (base64 text in JSON)"
    assert out[2]["image"] == b"ABC" and out[2][ERROR] is None  # any bytes: the image check is opt-in
    assert out[3][ERROR] == "image: got '5'; expected bytes (base64 text in JSON)"
    long_text = records_table([{"image": "!" * 5000}])
    message = validate_batch(long_text, columns, "request", 0).column(ERROR)[0].as_py()
    assert message == "image: got a 5000-character string; expected bytes (base64 text in JSON)"


def test_check_image_on_json_requests_gives_a_clear_reason():
    columns = [ColumnSpec(name="image", type="binary", check_image=True)]
    table = records_table([{"image": base64.b64encode(png(3)).decode()}, {"image": "QUJD"}])
    errors = validate_batch(table, columns, "request", 0).column(ERROR).to_pylist()
    assert errors[0] is None
    assert errors[1] == ("image: cannot decode the image (UnidentifiedImageError: cannot identify image file); "
                         "expected PNG or JPEG bytes")


def test_validation_accepts_exactly_what_the_image_featurizer_decodes(images):
    blobs = [p.read_bytes() for p in sorted(images.rglob("*.*")) if p.suffix.lower() in (".png", ".jpg", ".jpeg")]
    step = ImageFeatures(column="image", size=(4, 4), mode="L", mean=[0.5], std=[0.25])
    state = step.finalize(step.partial_fit({"image": []}))
    applied = ImageFeatures.apply(state, {"image": pa.array(blobs, pa.binary())})
    for i, blob in enumerate(blobs):
        assert (image_problem(blob) is None) == (i not in applied.problems)
    assert len(applied.problems) == 2


def test_image_problem_refuses_oversized_images():
    assert image_problem(png(1, size=(300, 200)), max_pixels=50_000) == (
        "image of 300x200 pixels exceeds max_pixels=50000")


def test_check_image_only_on_binary_columns():
    with pytest.raises(ConfigError) as info:
        parse(ValidateConfig, {"columns": [{"name": "x", "type": "string", "check_image": True}]}, "job.yaml")
    assert "check_image applies to binary columns, not string; remove it" in info.value.problems[0]


def test_binary_arrow_type_in_the_output_schema():
    out = validate_batch(pa.table({"b": pa.array([b"\x00\xff", None], pa.binary())}),
                         [ColumnSpec(name="b", type="binary", nullable=True)], "f.parquet", 0)
    assert out.schema.field("b").type == pa.binary()
    assert out.column("b").to_pylist() == [b"\x00\xff", None] and out.column(ERROR).null_count == 2
    assert np.array_equal(out.column(SOURCE_ROW).to_numpy(), [0, 1])


def test_an_image_directory_on_s3(s3_server, monkeypatch, images):
    from rayml import storage

    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)
    root = s3_server.uri("images-unit")
    storage.upload(images, root)
    files = list_files(root, "images")
    assert files[0] == f"{root}/bird/fake.png" and len(files) == 7
    filesystem = storage.resolve(root)[0]
    out = pa.concat_tables(validated_images(files, root, COLUMNS, filesystem)).to_pylist()
    assert [r["label"] for r in out] == ["bird", "cat", "cat", "dog", "dog", "dog", "dog"]
    assert [r[SOURCE_FILE] for r in out if r[ERROR]] == [f"{root}/bird/fake.png", f"{root}/dog/broken.png"]
    assert out[1]["image"] == (images / "cat" / "1.png").read_bytes()
