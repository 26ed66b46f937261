"""Run directories, per-stage ``manifest.json`` files, checksums, and the versioned model registry.

Layout of a run:       <runs>/<run name>/<stage>/manifest.json (+ the stage's outputs)
Layout of the registry: <registry>/<model name>/<version>/{model.onnx, featurizer.json, model.pt, manifest.json}
Nothing written here is a pickle.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from rayml import __version__
from rayml.errors import RegistryError

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


def write_json(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write JSON atomically: a reader sees the old file or the new one, never half of one."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(payload, fh, indent=2, sort_keys=True, default=str)
            fh.write("\n")
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def write_manifest(stage_dir: str | Path, stage: str, payload: dict[str, Any]) -> Path:
    """Write ``<stage_dir>/manifest.json``; the next stage reads it. Written last, so it marks completion."""
    record = {"stage": stage, "created_at": utc_now(), "rayml_version": __version__, **payload}
    return write_json(Path(stage_dir) / MANIFEST, record)


def read_manifest(stage_dir: str | Path) -> dict[str, Any] | None:
    """The stage's manifest, or None if the stage has not completed."""
    path = Path(stage_dir) / MANIFEST
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def fingerprint(payload: Any) -> str:
    """A short stable hash of JSON-able data, used to tell whether a stage's inputs changed."""
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def register(registry: str | Path, model_name: str, files: dict[str, Path], manifest: dict[str, Any]) -> Path:
    """Copy ``files`` into the next version of ``model_name`` with a manifest of their sha256; return its dir.

    The version directory appears atomically (built under a temporary name, then renamed), so a server or a
    concurrent reader never sees a half-written version.
    """
    check_name(model_name, "model name")
    model_dir = Path(registry) / model_name
    model_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=model_dir, prefix=".staging-"))
    try:
        checksums = {}
        for name, src in files.items():
            check_name(name, "registry file name")
            shutil.copyfile(src, staging / name)
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


def versions(model_dir: str | Path) -> list[int]:
    """Registered version numbers of one model, ascending."""
    path = Path(model_dir)
    if not path.is_dir():
        return []
    return sorted(int(p.name) for p in path.iterdir() if p.name.isdigit() and (p / MANIFEST).is_file())


def resolve_version_dir(path: str | Path) -> Path:
    """A version directory from either a version directory or a model directory (its latest version)."""
    p = Path(path)
    if (p / MANIFEST).is_file():
        return p
    found = versions(p)
    if not found:
        raise RegistryError(
            f"{str(p)!r} is neither a registered model version (no {MANIFEST}) nor a model directory with "
            "versions; pass <registry>/<model>/<version> or <registry>/<model>"
        )
    return p / str(found[-1])


def verify(version_dir: str | Path) -> dict[str, Any]:
    """Load a version's manifest after checking every listed file against its sha256."""
    vdir = Path(version_dir)
    manifest_path = vdir / MANIFEST
    if not manifest_path.is_file():
        raise RegistryError(f"{str(vdir)!r} has no {MANIFEST}; it is not a registered model version")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RegistryError(f"{manifest_path} is not valid JSON ({exc}); re-register the model") from exc
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise RegistryError(f"{manifest_path} has no 'files' checksums; re-register the model")
    for name, expected in manifest["files"].items():
        check_name(name, "registry file name")
        path = vdir / name
        if not path.is_file():
            raise RegistryError(f"{path} is listed in the manifest but missing; re-register the model")
        actual = sha256_file(path)
        if actual != expected:
            raise RegistryError(f"{path} fails its checksum (sha256 {actual[:12]}... != {expected[:12]}...)")
    return manifest


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())
