"""Run directories on a local disk or on ``s3://``: job.json, where a run lives, and the hand-offs between the
stages and the libraries that only write local files (matplotlib, ONNX export) or take a pyarrow filesystem
(Ray Data, Ray Train).

A local run directory is a ``Path``; an ``s3://`` one is a URI string (``rayml.storage``). Ray Data and Ray
Train get the S3 filesystem the driver resolved, so their workers need no S3 settings of their own.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rayml import storage as store
from rayml.config import apply_overrides, parse
from rayml.errors import ConfigError
from rayml.storage import StorageConfig

JOB_FILE = "job.json"  # the resolved job config of a run, written when it starts; what a resume reruns


def location(run_dir: str | Path) -> tuple[str, str]:
    """(run.root, run.name) of an existing run directory; a local one by its absolute parent."""
    if store.is_remote(run_dir):
        root, _, name = str(run_dir).rstrip("/").rpartition("/")
        return root, name
    path = Path(run_dir)
    return str(path.resolve().parent), path.name


def parent(path: str | Path) -> str | Path:
    """The directory holding ``path`` (a local path or an s3:// URI)."""
    if store.is_remote(path):
        return str(path).rstrip("/").rpartition("/")[0]
    return Path(path).parent


def storage_from_overrides(overrides: list[str]) -> StorageConfig:
    """The ``storage`` section that ``key=value`` overrides set (how to reach an s3:// run directory before its
    job.json, which holds the rest of the job, is read)."""
    section = apply_overrides({}, overrides, source="overrides").get("storage")
    return parse(StorageConfig, section if isinstance(section, dict) else {}, source="overrides")


def read_job(run_dir: str | Path, storage: StorageConfig | None = None) -> dict[str, Any]:
    """The job data saved in ``<run_dir>/job.json``; a ConfigError that says what to pass when it is missing."""
    remote = store.is_remote(run_dir)
    path = str(run_dir).rstrip("/") if remote else Path(run_dir)
    saved = store.join(path, JOB_FILE)
    if store.file_type(saved, storage) != "file":
        missing = store.file_type(path, storage) == "missing" if remote else not Path(path).is_dir()
        what = "does not exist" if missing else f"has no {JOB_FILE}"
        raise ConfigError(
            f"{str(path)!r} {what}, so there is no job to resume. Pass the run directory that `rayml run` "
            f"created (<run.root>/<run.name>, holding {JOB_FILE}), or start it again with `rayml run JOB.yaml "
            f"run.name={store.basename(path)}`",
            str(path),
        )
    try:
        data = store.read_json(saved, storage)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{saved} is not readable JSON ({exc}); start the run again with `rayml run JOB.yaml`",
                          str(saved)) from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{saved} does not hold a job (a JSON object); start the run again with `rayml run "
                          "JOB.yaml`", str(saved))
    return data


def dataset_path(path: str | Path, storage: StorageConfig | None = None) -> tuple[str, Any]:
    """What Ray Data's ``read_parquet``/``write_parquet`` take for ``path``: the path and ``filesystem=`` (the
    resolved S3 filesystem for an s3:// URI, None for a local path)."""
    if store.is_remote(path):
        filesystem, inner = store.resolve(path, storage)
        return inner, filesystem
    return str(path), None


def filesystem(path: str | Path, storage: StorageConfig | None = None) -> Any:
    """The pyarrow filesystem holding an s3:// ``path`` (picklable: hand it to Ray workers), None if local."""
    return store.resolve(path, storage)[0] if store.is_remote(path) else None


@contextmanager
def staged(out_dir: str | Path, storage: StorageConfig | None = None) -> Iterator[Path]:
    """A local directory for a stage's files: ``out_dir`` itself when it is local (created), else a temporary
    directory whose files are uploaded under the s3:// ``out_dir`` when the block completes."""
    if not store.is_remote(out_dir):
        local = Path(out_dir)
        local.mkdir(parents=True, exist_ok=True)
        yield local
        return
    with tempfile.TemporaryDirectory(prefix="rayml-stage-") as tmp:
        yield Path(tmp)
        store.upload(tmp, out_dir, storage)


@contextmanager
def local_files(directory: str | Path, suffix: str, storage: StorageConfig | None = None) -> Iterator[list[Path]]:
    """The files directly in ``directory`` whose names end with ``suffix``, as local paths (an s3:// directory's
    are downloaded to a temporary directory that lives for the block)."""
    if not store.is_remote(directory):
        yield sorted(Path(directory).glob(f"*{suffix}"))
        return
    with tempfile.TemporaryDirectory(prefix="rayml-fetch-") as tmp:
        found = []
        for name in store.list_children(directory, storage):
            if name.endswith(suffix) and store.file_type(store.join(directory, name), storage) == "file":
                store.download(store.join(directory, name), tmp, storage)
                found.append(Path(tmp) / name)
        yield found
