"""Unit tests for rayml.artifacts: the versioned model registry, checksums and atomic JSON (no Ray)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from rayml import artifacts as A
from rayml.errors import RaymlError, RegistryError


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    src = tmp_path / "src"
    src.mkdir()
    onnx = src / "exported.onnx"
    onnx.write_bytes(b"\x08\x07onnx-bytes" * 100)
    feat = src / "state.json"
    feat.write_text('{"version": 1}')
    return {"model.onnx": onnx, "featurizer.json": feat}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _leftovers(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.name.startswith("."))


# ---------------------------------------------------------------- register / verify


def test_register_creates_versions_1_2_3(tmp_path, files):
    registry = tmp_path / "registry"
    dirs = [A.register(registry, "fraud", files, {"metrics": {"auc": 0.9 + i / 100}}) for i in range(3)]
    assert dirs == [registry / "fraud" / v for v in ("1", "2", "3")]
    assert A.versions(registry / "fraud") == [1, 2, 3]
    assert sorted(p.name for p in (registry / "fraud").iterdir()) == ["1", "2", "3"]  # no staging dirs left
    assert _leftovers(registry) == []


def test_manifest_lists_sha256_of_each_file(tmp_path, files):
    vdir = A.register(tmp_path / "registry", "fraud", files, {"metrics": {"auc": 0.93}})
    manifest = json.loads((vdir / A.MANIFEST).read_text())
    assert manifest["files"] == {name: _sha(src) for name, src in files.items()}
    assert manifest["model_name"] == "fraud"
    assert manifest["version"] == "1"
    assert manifest["metrics"] == {"auc": 0.93}
    assert "registered_at" in manifest
    for name, src in files.items():
        assert (vdir / name).read_bytes() == src.read_bytes()
    assert sorted(p.name for p in vdir.iterdir()) == sorted([*files, A.MANIFEST])


def test_verify_returns_the_manifest_of_an_intact_version(tmp_path, files):
    vdir = A.register(tmp_path / "registry", "fraud", files, {"k": "v"})
    manifest = A.verify(vdir)
    assert manifest["k"] == "v" and manifest["version"] == "1"


def test_verify_detects_a_tampered_file(tmp_path, files):
    vdir = A.register(tmp_path / "registry", "fraud", files, {})
    data = bytearray((vdir / "model.onnx").read_bytes())
    data[5] ^= 0xFF
    (vdir / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(RegistryError, match="model.onnx fails its checksum") as info:
        A.verify(vdir)
    assert isinstance(info.value, RaymlError)


def test_verify_detects_a_missing_file(tmp_path, files):
    vdir = A.register(tmp_path / "registry", "fraud", files, {})
    (vdir / "featurizer.json").unlink()
    with pytest.raises(RegistryError, match="featurizer.json is listed in the manifest but missing"):
        A.verify(vdir)


def test_verify_rejects_a_directory_without_manifest(tmp_path):
    with pytest.raises(RegistryError, match="has no manifest.json"):
        A.verify(tmp_path)


def test_verify_rejects_traversal_in_manifest_file_names(tmp_path, files):
    vdir = A.register(tmp_path / "registry", "fraud", files, {})
    manifest = json.loads((vdir / A.MANIFEST).read_text())
    manifest["files"]["../../secret"] = "0" * 64
    A.write_json(vdir / A.MANIFEST, manifest)
    with pytest.raises(RegistryError, match="not allowed"):
        A.verify(vdir)


def test_register_rejects_a_bad_model_name_before_writing(tmp_path, files):
    registry = tmp_path / "registry"
    with pytest.raises(RegistryError, match="model name '../x' is not allowed"):
        A.register(registry, "../x", files, {})
    assert not registry.exists()


# ---------------------------------------------------------------- resolve_version_dir


def _fake_version(model_dir: Path, version: str) -> Path:
    A.write_json(model_dir / version / A.MANIFEST, {"version": version, "files": {}})
    return model_dir / version


def test_resolve_model_dir_gives_latest_version_numerically(tmp_path):
    model_dir = tmp_path / "fraud"
    for v in ("2", "10", "9"):
        _fake_version(model_dir, v)
    (model_dir / "11").mkdir()  # no manifest: not a version
    (model_dir / "notes").mkdir()
    assert A.versions(model_dir) == [2, 9, 10]
    assert A.resolve_version_dir(model_dir) == model_dir / "10"


def test_resolve_registered_model_dir(tmp_path, files):
    registry = tmp_path / "registry"
    A.register(registry, "fraud", files, {})
    latest = A.register(registry, "fraud", files, {})
    assert A.resolve_version_dir(registry / "fraud") == latest
    assert A.resolve_version_dir(registry / "fraud" / "1") == registry / "fraud" / "1"


@pytest.mark.parametrize("make", [False, True])
def test_resolve_without_versions_is_a_clear_error(tmp_path, make):
    target = tmp_path / "fraud"
    if make:
        target.mkdir()
    with pytest.raises(RegistryError) as info:
        A.resolve_version_dir(target)
    assert str(target) in str(info.value)
    assert "<registry>/<model>/<version>" in str(info.value)


def test_versions_of_missing_dir_is_empty(tmp_path):
    assert A.versions(tmp_path / "nothing") == []


# ---------------------------------------------------------------- check_name


@pytest.mark.parametrize("name", ["../x", "a/b", "", "..", ".", "-x", ".hidden", "a b", "x" * 65, "a\\b"])
def test_check_name_rejects_unsafe_names(name):
    with pytest.raises(RegistryError) as info:
        A.check_name(name, "model name")
    assert f"model name {name!r} is not allowed" in str(info.value)
    assert "1-64 letters, digits" in str(info.value)


@pytest.mark.parametrize("name", ["fraud", "Fraud-model_v1.2", "7", "x" * 64])
def test_check_name_accepts_safe_names(name):
    assert A.check_name(name, "model name") == name


# ---------------------------------------------------------------- write_json and manifests


def test_write_json_creates_parents_and_replaces_atomically(tmp_path):
    target = tmp_path / "a" / "b" / "out.json"
    assert A.write_json(target, {"x": 1}) == target
    assert json.loads(target.read_text()) == {"x": 1}
    A.write_json(target, {"x": 2, "path": Path("/p")})  # default=str for non-JSON values
    assert json.loads(target.read_text()) == {"x": 2, "path": "/p"}
    assert os.listdir(target.parent) == ["out.json"]


def test_write_and_read_manifest(tmp_path):
    stage = tmp_path / "runs" / "r1" / "validate"
    assert A.read_manifest(stage) is None
    A.write_manifest(stage, "validate", {"rows": 10})
    manifest = A.read_manifest(stage)
    assert manifest["stage"] == "validate" and manifest["rows"] == 10
    assert "created_at" in manifest and "rayml_version" in manifest


def test_fingerprint_is_stable_and_order_independent():
    assert A.fingerprint({"a": 1, "b": [1, 2]}) == A.fingerprint({"b": [1, 2], "a": 1})
    assert A.fingerprint({"a": 1}) != A.fingerprint({"a": 2})
    assert len(A.fingerprint({})) == 16


# ---------------------------------------------------------------- regressions (bugs found and fixed)


def test_write_json_leaves_no_temp_file_when_serialization_fails(tmp_path):
    target = tmp_path / "out.json"
    A.write_json(target, {"ok": True})
    with pytest.raises(TypeError):
        A.write_json(target, {("tuple", "key"): 1})
    assert json.loads(target.read_text()) == {"ok": True}  # the old file is intact (this part holds)
    assert os.listdir(tmp_path) == ["out.json"]


def test_verify_reports_corrupt_manifest_as_registry_error(tmp_path, files):
    vdir = A.register(tmp_path / "registry", "fraud", files, {})
    (vdir / A.MANIFEST).write_text('{"files": {')
    with pytest.raises(RegistryError):
        A.verify(vdir)


def test_register_rejects_file_names_that_leave_the_version_dir(tmp_path, files):
    registry = tmp_path / "registry"
    try:
        A.register(registry, "fraud", {"../escape": files["model.onnx"]}, {})
    except RegistryError:
        pass
    assert not (registry / "fraud" / "escape").exists()


def test_check_name_rejects_trailing_newline():
    with pytest.raises(RegistryError):
        A.check_name("model\n", "model name")


def test_register_skips_a_stray_non_version_directory(tmp_path, files):
    registry = tmp_path / "registry"
    A.register(registry, "fraud", files, {})
    stray = registry / "fraud" / "2"
    stray.mkdir()
    (stray / "leftover.txt").write_text("x")
    vdir = A.register(registry, "fraud", files, {})
    assert vdir.name == "3"
