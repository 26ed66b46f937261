"""The image-directory source through the validate stage on Ray Data: one record per image, labels from
sub-folder names, corrupt files quarantined with their path and reason while the rest are read."""

from __future__ import annotations

import io

import pyarrow.parquet as pq
import pytest

from rayml import validate
from rayml.source import SourceConfig
from rayml.validate import ColumnSpec, ValidateConfig

pytestmark = pytest.mark.integration


def _png(value: int) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (8, 8), value).save(buffer, format="PNG")
    return buffer.getvalue()


def test_image_directory_through_the_validate_stage(ray_cluster, tmp_path):
    root = tmp_path / "digits"
    for label in ("0", "1", "2"):
        (root / label).mkdir(parents=True)
        for i in range(10):
            (root / label / f"{i:03d}.png").write_bytes(_png(int(label) * 80 + i))
    (root / "1" / "corrupt.png").write_bytes(_png(7)[:40])
    config = ValidateConfig(columns=[
        ColumnSpec(name="image", type="binary", check_image=True),
        ColumnSpec(name="label", type="int", min=0, max=9),  # folder names typed like any other text
        ColumnSpec(name="path", type="string"),
    ], max_bad_fraction=0.1)

    # batch_rows=8 splits the 31 files over several read tasks
    result = validate.run_stage(SourceConfig(path=str(root), format="images", batch_rows=8), config,
                                tmp_path / "validate")

    assert (result["read_rows"], result["valid_rows"], result["quarantined_rows"]) == (31, 30, 1)
    assert result["quarantine_by_column"] == {"image": 1}
    (bad,) = pq.ParquetDataset(result["quarantine_path"]).read().to_pylist()
    assert bad[validate.SOURCE_FILE] == str(root / "1" / "corrupt.png")
    assert bad[validate.ERROR].startswith("image: cannot decode the image (")
    valid = pq.ParquetDataset(result["valid_path"]).read()
    assert sorted(valid.column("label").to_pylist()) == [0] * 10 + [1] * 10 + [2] * 10
    by_path = {row["path"]: row["image"] for row in valid.select(["path", "image"]).to_pylist()}
    assert by_path[str(root / "2" / "009.png")] == (root / "2" / "009.png").read_bytes()
