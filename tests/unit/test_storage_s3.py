"""rayml.storage and the model registry (rayml.artifacts) on s3://, against a real moto_server (no Ray)."""

from __future__ import annotations

import hashlib
import json
import threading
import uuid
from pathlib import Path

import pytest

from rayml import artifacts as A
from rayml import storage as S
from rayml.errors import RegistryError
from rayml.storage import StorageError


@pytest.fixture
def s3(s3_server, monkeypatch):
    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    return s3_server


@pytest.fixture
def prefix(s3) -> str:
    return s3.uri(f"t-{uuid.uuid4().hex[:8]}")  # each test in its own prefix of the session's bucket


def test_write_read_list_and_delete_objects(prefix):
    S.write_json(f"{prefix}/a/state.json", {"x": 1})
    S.write_text(f"{prefix}/a/b/notes.txt", "hello")
    S.write_bytes(f"{prefix}/a/_SUCCESS", b"")
    S.write_bytes(f"{prefix}/a/.tmp/part.csv", b"x")
    assert S.read_json(f"{prefix}/a/state.json") == {"x": 1}
    assert S.read_text(f"{prefix}/a/b/notes.txt") == "hello"
    entries = S.list_files(f"{prefix}/a")
    assert [e.path for e in entries] == [f"{prefix}/a/b/notes.txt", f"{prefix}/a/state.json"]
    assert entries[0].size == 5
    assert [e.path for e in S.list_files(f"{prefix}/a", (".txt",))] == [f"{prefix}/a/b/notes.txt"]
    assert S.list_children(f"{prefix}/a") == [".tmp", "_SUCCESS", "b", "state.json"]
    assert S.file_type(f"{prefix}/a") == "directory" and S.file_type(f"{prefix}/a/state.json") == "file"
    assert not S.exists(f"{prefix}/nothing")
    S.delete(f"{prefix}/a/state.json")
    assert not S.exists(f"{prefix}/a/state.json")
    S.delete(f"{prefix}/a")
    assert S.list_files(prefix) == [] and not S.exists(f"{prefix}/a")


def test_writes_replace_an_object_whole(prefix):
    S.write_json(f"{prefix}/m.json", {"v": 1})
    S.write_json(f"{prefix}/m.json", {"v": 2})
    assert S.read_json(f"{prefix}/m.json") == {"v": 2}
    assert S.list_children(prefix) == ["m.json"]  # nothing temporary left beside it


def test_upload_a_directory_and_download_the_prefix(prefix, tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "model.onnx").write_bytes(bytes(range(256)) * 4000)  # 1 MB: more than one read chunk
    (src / "sub" / ".meta").write_text("hidden files travel too")
    written = S.upload(src, f"{prefix}/up")
    assert written == [f"{prefix}/up/model.onnx", f"{prefix}/up/sub/.meta"]
    local = S.download(f"{prefix}/up", tmp_path / "cache")
    assert (local / "model.onnx").read_bytes() == (src / "model.onnx").read_bytes()
    assert (local / "sub" / ".meta").read_text() == "hidden files travel too"
    S.download(f"{prefix}/up/model.onnx", tmp_path / "one")
    assert (tmp_path / "one" / "model.onnx").stat().st_size == 1_024_000
    S.copy_file(f"{prefix}/up/model.onnx", f"{prefix}/copy.onnx")
    assert S.list_files(f"{prefix}/copy.onnx")[0].size == 1_024_000


def test_a_missing_bucket_is_named_with_the_fix(s3):
    for call in (lambda: S.list_files("s3://no-such-bucket/data"), lambda: S.exists("s3://no-such-bucket/x"),
                 lambda: S.write_text("s3://no-such-bucket/x.txt", "x")):
        with pytest.raises(StorageError) as info:
            call()
        assert "bucket 'no-such-bucket' does not exist at 127.0.0.1:" in str(info.value)
        assert "create it (e.g. `aws s3 mb s3://no-such-bucket`)" in str(info.value)


def test_reading_a_missing_object_names_it(prefix):
    with pytest.raises(StorageError, match=f"cannot open {prefix}/missing.json: no such object"):
        S.read_json(f"{prefix}/missing.json")
    with pytest.raises(StorageError, match="nothing exists there"):
        S.download(f"{prefix}/missing", "/tmp/never-used")


# ---------------------------------------------------------------- the model registry on s3://


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    (tmp_path / "m.onnx").write_bytes(b"\x08\x07onnx-bytes" * 100)
    (tmp_path / "f.json").write_text('{"version": 2}')
    return {"model.onnx": tmp_path / "m.onnx", "featurizer.json": tmp_path / "f.json"}


def test_register_versions_resolve_and_verify_on_s3(prefix, files):
    registry = f"{prefix}/registry"
    first = A.register(registry, "fraud", files, {"metrics": {"auc": 0.9}})
    second = A.register(registry, "fraud", files, {"metrics": {"auc": 0.95}})
    assert (first, second) == (f"{registry}/fraud/1", f"{registry}/fraud/2")
    assert A.versions(f"{registry}/fraud") == [1, 2]
    assert A.resolve_version_dir(f"{registry}/fraud") == second
    assert A.resolve_version_dir(first) == first
    manifest = A.verify(second)
    assert manifest["version"] == "2" and manifest["metrics"] == {"auc": 0.95}
    assert manifest["files"]["model.onnx"] == hashlib.sha256(files["model.onnx"].read_bytes()).hexdigest()
    assert S.list_children(second) == ["featurizer.json", "manifest.json", "model.onnx"]  # no claim left
    assert A.read_json(f"{second}/featurizer.json") == {"version": 2}


def test_verify_on_s3_detects_a_tampered_or_missing_file(prefix, files):
    vdir = A.register(f"{prefix}/registry", "fraud", files, {})
    S.write_bytes(f"{vdir}/model.onnx", b"tampered")
    with pytest.raises(RegistryError, match=f"{vdir}/model.onnx fails its checksum"):
        A.verify(vdir)
    S.delete(f"{vdir}/featurizer.json")
    with pytest.raises(RegistryError, match="featurizer.json is listed in the manifest but missing"):
        A.verify(vdir)


def test_a_version_without_manifest_is_invisible_and_its_number_is_not_reused(prefix, files):
    registry = f"{prefix}/registry"
    S.write_bytes(f"{registry}/fraud/1/model.onnx", b"half-written by a crashed writer")
    assert A.versions(f"{registry}/fraud") == []
    with pytest.raises(RegistryError, match="neither a registered model version"):
        A.resolve_version_dir(f"{registry}/fraud")
    assert A.register(registry, "fraud", files, {}) == f"{registry}/fraud/2"


def test_concurrent_registrations_on_s3_get_distinct_versions(prefix, files):
    registry = f"{prefix}/registry"
    results: list[str] = []
    errors: list[BaseException] = []

    def register() -> None:
        try:
            results.append(A.register(registry, "fraud", files, {}))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=register) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    numbers = sorted(int(S.basename(vdir)) for vdir in results)
    assert len(set(numbers)) == 4  # distinct (a number lost to a collision may be skipped, never shared)
    assert A.versions(f"{registry}/fraud") == numbers
    for vdir in results:
        A.verify(vdir)


def test_local_version_dir_fetches_a_verified_copy_once(prefix, files, tmp_path):
    vdir = A.register(f"{prefix}/registry", "fraud", files, {"k": "v"})
    cache = tmp_path / "cache"
    local = A.local_version_dir(f"{prefix}/registry/fraud", cache_dir=cache)
    assert local == cache.joinpath("registry", *S.fs_path(vdir).split("/"))
    assert A.verify(local)["k"] == "v"
    assert (local / "model.onnx").read_bytes() == files["model.onnx"].read_bytes()
    stamp = (local / "model.onnx").stat().st_mtime_ns
    assert A.local_version_dir(vdir, cache_dir=cache) == local
    assert (local / "model.onnx").stat().st_mtime_ns == stamp  # reused, not fetched again
    (local / "model.onnx").write_bytes(b"damaged cache")
    assert A.verify(A.local_version_dir(vdir, cache_dir=cache))["k"] == "v"  # a damaged copy is fetched again


def test_local_version_dir_refuses_a_tampered_remote_version(prefix, files, tmp_path):
    vdir = A.register(f"{prefix}/registry", "fraud", files, {})
    S.write_bytes(f"{vdir}/model.onnx", b"tampered")
    with pytest.raises(RegistryError, match="fails its checksum"):
        A.local_version_dir(vdir, cache_dir=tmp_path)
    assert not any(p.name == "1" for p in tmp_path.rglob("*"))  # nothing unverified left in the cache


def test_run_manifests_on_s3(prefix):
    stage = f"{prefix}/runs/r1/validate"
    assert A.read_manifest(stage) is None
    A.write_manifest(stage, "validate", {"rows": 3})
    manifest = A.read_manifest(stage)
    assert manifest["stage"] == "validate" and manifest["rows"] == 3
    assert json.loads(S.read_text(f"{stage}/manifest.json"))["rows"] == 3
