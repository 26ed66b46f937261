"""Unit tests for rayml.storage without a server: path handling, S3 settings from config and environment,
config errors, error messages, and the helpers on local paths (no Ray)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from rayml import storage as S
from rayml.config import parse
from rayml.errors import ConfigError, RaymlError
from rayml.storage import S3Config, StorageConfig, StorageError
from tests.conftest import free_port

AWS_VARS = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


@pytest.fixture(autouse=True)
def clean_aws_env(monkeypatch):
    for name in AWS_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


# ---------------------------------------------------------------- paths


def test_join_keeps_local_paths_as_paths_and_uris_as_strings(tmp_path):
    assert S.join(tmp_path, "a", "b.json") == tmp_path / "a" / "b.json"
    assert S.join("s3://bkt/runs/", "r1", "manifest.json") == "s3://bkt/runs/r1/manifest.json"
    assert S.join("s3://bkt", "x") == "s3://bkt/x"
    assert S.basename("s3://bkt/a/b/") == "b" and S.basename(tmp_path / "c.txt") == "c.txt"
    assert S.is_remote("s3://bkt/x") and not S.is_remote("runs/x") and not S.is_remote(Path("s3:/x"))


def test_split_uri_gives_bucket_and_key():
    assert S.split_uri("s3://my-bucket/a/b.parquet") == ("my-bucket", "a/b.parquet")
    assert S.split_uri("s3://my-bucket") == ("my-bucket", "")
    assert S.fs_path("s3://my-bucket/a/") == "my-bucket/a"


@pytest.mark.parametrize("uri", ["s3://", "s3:///key", "s3://Upper/key", "s3://a/key", "s3://bad_bucket/k"])
def test_a_uri_without_a_valid_bucket_is_a_clear_error(uri):
    with pytest.raises(StorageError, match=r"does not name a valid bucket.*write s3://<bucket>/<key>"):
        S.split_uri(uri)


def test_a_uri_with_dot_dot_is_refused():
    with pytest.raises(StorageError, match="contains '..'"):
        S.resolve("s3://bkt/a/../../etc")


def test_resolve_local_path_gives_the_local_filesystem_and_an_absolute_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fs, inner = S.resolve("data/x.csv")
    assert isinstance(fs, pafs.LocalFileSystem)
    assert inner == str(tmp_path / "data" / "x.csv")


def test_resolve_refuses_other_schemes():
    with pytest.raises(StorageError, match="unsupported scheme; use a local path or s3://"):
        S.resolve("gs://bucket/x")


def test_resolve_s3_path_gives_an_s3_filesystem_built_from_the_environment(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    fs, inner = S.resolve("s3://bkt/data/part-0.parquet")
    assert isinstance(fs, pafs.S3FileSystem) and inner == "bkt/data/part-0.parquet"
    assert fs.region == "us-east-1"
    assert S.resolve("s3://bkt/other")[0] is fs  # one client per settings, reused


# ---------------------------------------------------------------- settings: config, then AWS variables


def test_settings_fall_back_to_the_standard_aws_variables(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://generic:1")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "https://s3-only:2")  # the service-specific one wins
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "token")
    settings = S.s3_settings()
    assert (settings.endpoint, settings.scheme, settings.region) == ("s3-only:2", "https", "eu-west-1")
    assert (settings.access_key, settings.secret_key, settings.session_token) == ("id", "secret", "token")
    monkeypatch.setenv("AWS_REGION", "ap-south-1")  # AWS_REGION before AWS_DEFAULT_REGION
    assert S.s3_settings().region == "ap-south-1"


def test_defaults_without_any_variable_are_aws_itself_in_us_east_1():
    settings = S.s3_settings()
    assert settings.endpoint is None and settings.scheme == "https" and settings.region == "us-east-1"
    assert settings.access_key is None and settings.secret_key is None  # the SDK's own chain applies


def test_config_values_win_over_the_environment_and_name_the_key_variables(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://from-env:1")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    monkeypatch.setenv("MINIO_KEY", "minio-id")
    monkeypatch.setenv("MINIO_SECRET", "minio-secret")
    config = StorageConfig(s3=S3Config(endpoint_url="http://127.0.0.1:9000", region="us-west-2",
                                       access_key_id_env="MINIO_KEY", secret_access_key_env="MINIO_SECRET"))
    settings = S.s3_settings(config)
    assert (settings.endpoint, settings.scheme, settings.region) == ("127.0.0.1:9000", "http", "us-west-2")
    assert (settings.access_key, settings.secret_key) == ("minio-id", "minio-secret")


def test_a_key_id_without_its_secret_names_both_variables(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "id")
    with pytest.raises(StorageError) as info:
        S.s3_settings()
    assert "$AWS_ACCESS_KEY_ID is set but $AWS_SECRET_ACCESS_KEY is not" in str(info.value)
    assert "export both" in str(info.value)


def test_a_malformed_endpoint_in_the_environment_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "127.0.0.1:9000")  # no scheme
    with pytest.raises(StorageError, match=r"is not http\(s\)://host\[:port\]; set it to e.g. http://127"):
        S.resolve("s3://bkt/x")


# ---------------------------------------------------------------- config errors (as `rayml check` shows them)


def _problems(data: dict) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse(StorageConfig, data, "job.yaml")
    return info.value.problems


def test_config_rejects_an_endpoint_that_is_not_a_url_and_unknown_keys():
    problems = _problems({"s3": {"endpoint_url": "minio:9000", "secret_key": "x"}})
    assert any(p.startswith("s3.endpoint_url:") and "pattern" in p for p in problems)
    assert any(p.startswith("s3.secret_key: unknown key") and "secret_access_key_env" in p for p in problems)


def test_config_refuses_a_key_pasted_where_a_variable_name_belongs_without_echoing_it():
    key = "AKIAIOSFODNN7EXAMPLE"
    (problem,) = _problems({"s3": {"access_key_id_env": key}})
    assert "looks like an access key itself" in problem and "NAME" in problem
    assert key not in problem


def test_config_refuses_a_secret_pasted_as_a_variable_name():
    (problem,) = _problems({"s3": {"secret_access_key_env": "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"}})
    assert problem.startswith("s3.secret_access_key_env:")


def test_storage_config_defaults_parse_from_an_empty_section():
    config = parse(StorageConfig, {}, "job.yaml")
    assert config.s3.access_key_id_env == "AWS_ACCESS_KEY_ID" and config.s3.endpoint_url is None


# ---------------------------------------------------------------- error messages


@pytest.mark.parametrize(("cause", "expected"), [
    ("AWS Error ACCESS_DENIED during HeadObject operation: Access Denied",
     "access denied by x:1; check the keys in $AWS_ACCESS_KEY_ID/$AWS_SECRET_ACCESS_KEY"),
    ("AWS Error UNKNOWN (HTTP status 403) during HeadObject operation: No response body.", "access denied"),
    ("AWS Error NO_SUCH_BUCKET during ListObjectsV2 operation: The specified bucket does not exist",
     "bucket 'bkt' does not exist at x:1; create it (e.g. `aws s3 mb s3://bkt`)"),
    ("AWS Error NETWORK_CONNECTION during HeadObject operation: curlCode: 7, Could not connect to server",
     "cannot reach the S3 endpoint x:1; check storage.s3.endpoint_url or $AWS_ENDPOINT_URL"),
])
def test_s3_failures_are_explained_with_the_path_and_the_fix(monkeypatch, cause, expected):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://x:1")
    error = S.describe_error("s3://bkt/data/a.csv", "read", OSError(cause))
    assert isinstance(error, RaymlError)
    assert str(error).startswith("cannot read s3://bkt/data/a.csv: ")
    assert expected in str(error) and cause in str(error)


def test_a_wrong_endpoint_gives_a_clear_error_naming_it_and_the_fix(monkeypatch):
    port = free_port()  # nothing listens there
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    with pytest.raises(StorageError) as info:
        S.read_json("s3://bkt/runs/r1/manifest.json")
    message = str(info.value)
    assert message.startswith("cannot ") and "s3://bkt/runs/r1/manifest.json" in message
    assert f"cannot reach the S3 endpoint 127.0.0.1:{port}" in message
    assert "check storage.s3.endpoint_url or $AWS_ENDPOINT_URL(_S3) and that the server is up" in message
    assert isinstance(info.value.__cause__, OSError)


# ---------------------------------------------------------------- helpers on local paths


def test_write_and_read_json_and_text_atomically(tmp_path):
    target = tmp_path / "a" / "b" / "state.json"
    assert S.write_json(target, {"b": 1, "a": Path("/p")}) == target
    assert S.read_json(target) == {"a": "/p", "b": 1}
    assert target.read_text().endswith("\n")
    S.write_text(tmp_path / "t.txt", "héllo")
    assert S.read_text(tmp_path / "t.txt") == "héllo"
    with pytest.raises(TypeError):
        S.write_json(target, {("tuple",): 1})
    assert S.read_json(target) == {"a": "/p", "b": 1}
    assert os.listdir(target.parent) == ["state.json"]  # no temporary file left


def test_list_files_recurses_sorts_filters_and_skips_metadata(tmp_path):
    for rel in ["b.csv", "A.CSV", "sub/c.csv", "_SUCCESS", ".x.csv", "_tmp/d.csv", "sub/.hidden/e.csv", "f.txt"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x" * len(rel))
    found = S.list_files(tmp_path, (".csv",))
    assert [Path(e.path).relative_to(tmp_path).as_posix() for e in found] == ["A.CSV", "b.csv", "sub/c.csv"]
    assert [e.size for e in found] == [5, 5, 9]
    assert S.list_files(tmp_path / "b.csv") == [S.FileEntry(str(tmp_path / "b.csv"), 5)]
    assert S.list_files(tmp_path / "missing") == []


def test_file_type_exists_children_and_delete(tmp_path):
    (tmp_path / "d" / "e").mkdir(parents=True)
    (tmp_path / "d" / "f.txt").write_text("x")
    assert S.file_type(tmp_path / "d") == "directory" and S.file_type(tmp_path / "d" / "f.txt") == "file"
    assert S.file_type(tmp_path / "nope") == "missing" and not S.exists(tmp_path / "nope")
    assert S.list_children(tmp_path / "d") == ["e", "f.txt"] and S.list_children(tmp_path / "nope") == []
    S.delete(tmp_path / "d" / "f.txt")
    S.delete(tmp_path / "d")
    S.delete(tmp_path / "never-existed")
    assert not (tmp_path / "d").exists()


def test_upload_and_download_between_local_places(tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.bin").write_bytes(b"\x00\x01")
    (src / "sub" / "b.json").write_text(json.dumps({"k": 1}))
    written = S.upload(src, tmp_path / "dst")
    assert written == [str(tmp_path / "dst" / "a.bin"), str(tmp_path / "dst" / "sub" / "b.json")]
    assert (tmp_path / "dst" / "sub" / "b.json").read_text() == '{"k": 1}'
    with pytest.raises(StorageError, match="no such file or directory"):
        S.upload(tmp_path / "missing", tmp_path / "x")
