"""Run directories, per-stage ``manifest.json`` files, checksums, and the versioned model registry.

Layout of a run:       <runs>/<run name>/<stage>/manifest.json (+ the stage's outputs)
Layout of the registry: <registry>/<model name>/<version>/{model.onnx, featurizer.json, model.pt, manifest.json}
Nothing written here is a pickle. Every path may be local or ``s3://`` (``rayml.storage``): a function given a
local path returns a ``Path``, one given a URI returns a URI string.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import random
import re
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from rayml import __version__
from rayml import storage as store
from rayml.errors import RegistryError
from rayml.storage import StorageConfig, StorageError

MANIFEST = "manifest.json"
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_NAME = re.compile(NAME_PATTERN)


def utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def check_name(name: str, what: str) -> str:
    """Return ``name`` if it is a safe single path component, else raise RegistryError."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or name in (".", ".."):
        raise RegistryError(
            f"{what} {name!r} is not allowed; use 1-64 letters, digits, '_', '-' or '.', starting with a "
            "letter or digit"
        )
    return name


def write_json(path: str | Path, payload: dict[str, Any], storage: StorageConfig | None = None) -> Path | str:
    """Write JSON atomically: a reader sees the old file or the new one, never half of one."""
    return store.write_json(path, payload, storage)


def write_manifest(stage_dir: str | Path, stage: str, payload: dict[str, Any],
                   storage: StorageConfig | None = None) -> Path | str:
    """Write ``<stage_dir>/manifest.json``; the next stage reads it. Written last, so it marks completion."""
    record = {"stage": stage, "created_at": utc_now(), "rayml_version": __version__, **payload}
    return write_json(store.join(stage_dir, MANIFEST), record, storage)


def read_manifest(stage_dir: str | Path, storage: StorageConfig | None = None) -> dict[str, Any] | None:
    """The stage's manifest, or None if the stage has not completed."""
    path = store.join(stage_dir, MANIFEST)
    if store.file_type(path, storage) != "file":
        return None
    return store.read_json(path, storage)


def fingerprint(payload: Any) -> str:
    """A short stable hash of JSON-able data, used to tell whether a stage's inputs changed."""
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def sha256_file(path: str | Path, storage: StorageConfig | None = None) -> str:
    digest = hashlib.sha256()
    with (store.open_input(path, storage) if store.is_remote(path) else open(path, "rb")) as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def register(registry: str | Path, model_name: str, files: dict[str, Path], manifest: dict[str, Any],
             storage: StorageConfig | None = None) -> Path | str:
    """Copy ``files`` into the next version of ``model_name`` with a manifest of their sha256; return its dir.

    The version directory appears atomically (built under a temporary name, then renamed), so a server or a
    concurrent reader never sees a half-written version. On S3 the manifest is written last: a version
    without one is invisible (see ``_register_remote``).
    """
    check_name(model_name, "model name")
    if store.is_remote(registry):
        return _register_remote(str(registry), model_name, files, manifest, storage)
    model_dir = Path(registry) / model_name
    model_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=model_dir, prefix=".staging-"))
    try:
        checksums = {}
        for name, src in files.items():
            check_name(name, "registry file name")
            store.copy_file(src, staging / name, storage)
            checksums[name] = sha256_file(staging / name)
        for _ in range(100):
            # Any numeric directory counts, even one without a manifest (a crashed writer's leftover), so a
            # retry never picks a taken number again.
            taken = [int(p.name) for p in model_dir.iterdir() if p.name.isdigit()]
            version = str(max(taken, default=0) + 1)
            record = {**manifest, "model_name": model_name, "version": version, "files": checksums,
                      "registered_at": utc_now()}
            write_json(staging / MANIFEST, record)
            try:
                os.rename(staging, model_dir / version)
                return model_dir / version
            except OSError:
                continue  # another writer took this version number; take the next one
        raise RegistryError(f"could not allocate a version under {model_dir}")
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _register_remote(registry: str, model_name: str, files: dict[str, Path], manifest: dict[str, Any],
                     storage: StorageConfig | None) -> str:
    """Register on S3, which has no rename. A writer claims the next free version number by writing a claim
    object under it, and keeps the number only if its claim is the only object there when it lists them
    (S3 lists are strongly consistent): of two writers on one number at least one sees the other and moves
    on (so under contention a number can be skipped, never shared). The files go up next and
    ``manifest.json`` last, so a reader never sees a partial version."""
    checksums = {}
    for name, src in files.items():
        check_name(name, "registry file name")
        checksums[name] = sha256_file(src, storage)
    model_dir = store.join(registry, model_name)
    for attempt in range(100):
        taken = [int(n) for n in store.list_children(model_dir, storage) if n.isdigit()]
        version = str(max(taken, default=0) + 1)
        vdir = store.join(model_dir, version)
        claim = f".claim-{uuid.uuid4().hex}"
        store.write_bytes(store.join(vdir, claim), b"", storage)
        if store.list_children(vdir, storage) != [claim]:
            store.delete(store.join(vdir, claim), storage)  # another writer is on this number; back off
            time.sleep(random.uniform(0.0, 0.05 * (attempt + 1)))
            continue
        for name, src in files.items():
            store.copy_file(src, store.join(vdir, name), storage)
        record = {**manifest, "model_name": model_name, "version": version, "files": checksums,
                  "registered_at": utc_now()}
        write_json(store.join(vdir, MANIFEST), record, storage)
        store.delete(store.join(vdir, claim), storage)
        return str(vdir)
    raise RegistryError(f"could not allocate a version under {model_dir}")


def versions(model_dir: str | Path, storage: StorageConfig | None = None) -> list[int]:
    """Registered version numbers of one model, ascending."""
    if store.is_remote(model_dir):
        names = store.list_children(model_dir, storage)
        return sorted(int(n) for n in names if n.isdigit()
                      and store.file_type(store.join(model_dir, n, MANIFEST), storage) == "file")
    path = Path(model_dir)
    if not path.is_dir():
        return []
    return sorted(int(p.name) for p in path.iterdir() if p.name.isdigit() and (p / MANIFEST).is_file())


def resolve_version_dir(path: str | Path, storage: StorageConfig | None = None) -> Path | str:
    """A version directory from either a version directory or a model directory (its latest version)."""
    p = path if store.is_remote(path) else Path(path)
    if store.file_type(store.join(p, MANIFEST), storage) == "file":
        return p
    found = versions(p, storage)
    if not found:
        raise RegistryError(
            f"{str(p)!r} is neither a registered model version (no {MANIFEST}) nor a model directory with "
            "versions; pass <registry>/<model>/<version> or <registry>/<model>"
        )
    return store.join(p, str(found[-1]))


def verify(version_dir: str | Path, storage: StorageConfig | None = None) -> dict[str, Any]:
    """Load a version's manifest after checking every listed file against its sha256."""
    vdir = version_dir if store.is_remote(version_dir) else Path(version_dir)
    manifest_path = store.join(vdir, MANIFEST)
    if store.file_type(manifest_path, storage) != "file":
        raise RegistryError(f"{str(vdir)!r} has no {MANIFEST}; it is not a registered model version")
    try:
        manifest = json.loads(store.read_bytes(manifest_path, storage))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RegistryError(f"{manifest_path} is not valid JSON ({exc}); re-register the model") from exc
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise RegistryError(f"{manifest_path} has no 'files' checksums; re-register the model")
    for name, expected in manifest["files"].items():
        check_name(name, "registry file name")
        path = store.join(vdir, name)
        if store.file_type(path, storage) != "file":
            raise RegistryError(f"{path} is listed in the manifest but missing; re-register the model")
        actual = sha256_file(path, storage)
        if actual != expected:
            raise RegistryError(f"{path} fails its checksum (sha256 {actual[:12]}... != {expected[:12]}...)")
    return manifest


def read_json(path: str | Path, storage: StorageConfig | None = None) -> Any:
    return store.read_json(path, storage)


def local_version_dir(path: str | Path, storage: StorageConfig | None = None,
                      cache_dir: str | Path | None = None) -> Path:
    """A local version directory to load a model from: ``path`` resolved as ``resolve_version_dir`` does, and
    for an s3:// registry a verified copy in ``cache_dir`` (default $RAYML_CACHE_DIR, else ~/.cache/rayml),
    downloaded once: a cached copy is reused while its manifest matches the registry's."""
    vdir = resolve_version_dir(path, storage)
    if not store.is_remote(vdir):
        return Path(vdir)
    bucket, key = store.split_uri(str(vdir))
    root = Path(cache_dir or os.environ.get("RAYML_CACHE_DIR") or Path.home() / ".cache" / "rayml")
    target = root.joinpath("registry", bucket, *key.split("/"))
    remote = store.read_bytes(store.join(vdir, MANIFEST), storage)
    if (target / MANIFEST).is_file() and (target / MANIFEST).read_bytes() == remote:
        try:
            verify(target)
            return target
        except RegistryError:
            pass  # a damaged cached copy: fetch it again
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
    try:
        (staging / MANIFEST).write_bytes(remote)
        for name in json.loads(remote).get("files", {}):
            store.copy_file(store.join(vdir, check_name(name, "registry file name")), staging / name, storage)
        verify(staging)
        shutil.rmtree(target, ignore_errors=True)
        try:
            os.rename(staging, target)
        except OSError:
            verify(target)  # another process on this machine fetched it first
    except (StorageError, json.JSONDecodeError) as exc:
        raise RegistryError(f"cannot fetch model version {vdir} ({exc})") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
