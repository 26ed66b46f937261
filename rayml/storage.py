"""Local paths and ``s3://bucket/key`` URIs behind one small API, on pyarrow.fs.

A path without a scheme is local; ``s3://bucket/key`` goes through pyarrow's S3FileSystem, set up from a
``StorageConfig`` and, for what it leaves unset, the AWS variables: AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL
(an S3-compatible server: MinIO, moto), AWS_REGION / AWS_DEFAULT_REGION, AWS_ACCESS_KEY_ID /
AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN. A config names the variables holding keys, never the keys; with
no keys in the environment the AWS SDK's own chain applies (~/.aws files, instance or pod roles). Writes are
atomic (local: written beside the target, then renamed; S3: an object appears whole). S3 failures become
``StorageError`` naming the path and the fix.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import urlsplit

from pydantic import Field, model_validator

from rayml.config import StrictModel
from rayml.errors import RaymlError

if TYPE_CHECKING:
    import pyarrow.fs as pafs

S3 = "s3://"
DEFAULT_REGION = "us-east-1"
_ENV = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"
_KEY_LIKE = re.compile(r"^(AKIA|ASIA)[A-Z0-9]{12,}$")  # what an AWS access key id looks like
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


class StorageError(RaymlError):
    """Object storage is unreachable, refuses access, or lacks the bucket or object a path names."""


def _env_name(default: str, holds: str) -> Any:
    return Field(default, pattern=_ENV, description=f"NAME of the environment variable holding {holds}")


class S3Config(StrictModel):
    """How to reach S3 or an S3-compatible server; every unset value falls back to the AWS variables."""

    endpoint_url: str | None = Field(
        None, pattern=r"^https?://[^/\s?#]+/?$",
        description="http(s)://host[:port] of an S3-compatible server; default $AWS_ENDPOINT_URL_S3, "
                    "$AWS_ENDPOINT_URL, else AWS itself",
    )
    region: str | None = Field(
        None, pattern=r"^[a-z0-9-]{1,32}$",
        description=f"bucket region; default $AWS_REGION, $AWS_DEFAULT_REGION, else {DEFAULT_REGION}",
    )
    access_key_id_env: str = _env_name("AWS_ACCESS_KEY_ID", "the access key id")
    secret_access_key_env: str = _env_name("AWS_SECRET_ACCESS_KEY", "the secret access key")
    session_token_env: str = _env_name("AWS_SESSION_TOKEN", "a session token (optional)")
    anonymous: bool = Field(False, description="send unsigned requests (public buckets)")
    connect_timeout_s: float = Field(5.0, gt=0, le=300, description="seconds to wait for a connection")
    request_timeout_s: float = Field(60.0, gt=0, le=3600, description="seconds to wait for one request")
    max_attempts: int = Field(3, ge=1, le=20, description="attempts per request (retries with backoff)")

    @model_validator(mode="after")
    def _names_not_keys(self) -> S3Config:
        for key in ("access_key_id_env", "secret_access_key_env", "session_token_env"):
            if _KEY_LIKE.fullmatch(getattr(self, key)):
                raise ValueError(
                    f"s3.{key} looks like an access key itself; put the key in an environment variable "
                    f"and write that variable's NAME here (e.g. {key}: AWS_ACCESS_KEY_ID)"
                )
        return self


class StorageConfig(StrictModel):
    """Settings for the object stores that ``s3://`` paths name (local paths need none)."""

    s3: S3Config = Field(default_factory=S3Config, description="S3 endpoint, region and credential variables")


class FileEntry(NamedTuple):
    path: str  # as the caller would write it: a local path or an s3:// URI
    size: int | None


class _S3Settings(NamedTuple):
    endpoint: str | None  # host[:port]
    scheme: str
    region: str
    access_key: str | None
    secret_key: str | None
    session_token: str | None
    config: S3Config  # anonymous, timeouts, attempts


# ---------------------------------------------------------------- paths


def is_remote(path: str | Path) -> bool:
    """Whether ``path`` is an ``s3://`` URI (anything else with a scheme is refused by ``resolve``)."""
    return isinstance(path, str) and path.startswith(S3)


def join(base: str | Path, *parts: str) -> str | Path:
    """``base/part/...``: a Path for a local base, a URI string for a remote one."""
    if is_remote(base):
        text = str(base).rstrip("/")
        for part in parts:
            text = f"{text}/{part.strip('/')}"
        return text
    return Path(base).joinpath(*parts)


def basename(path: str | Path) -> str:
    """The last component of a local path or URI."""
    return str(path).rstrip("/").rsplit("/", 1)[-1]


def split_uri(uri: str) -> tuple[str, str]:
    """(bucket, key) of ``s3://bucket/key``; StorageError for a malformed URI."""
    rest = uri[len(S3):]
    bucket, _, key = rest.partition("/")
    if not _BUCKET.fullmatch(bucket):
        raise StorageError(
            f"{uri!r} does not name a valid bucket ({bucket!r}); write s3://<bucket>/<key>, the bucket 3-63 "
            "lower-case letters, digits, '.' or '-'"
        )
    if ".." in key.split("/"):
        raise StorageError(f"{uri!r} contains '..'; give the object's full key")
    return bucket, key.strip("/")


def resolve(path: str | Path, config: StorageConfig | None = None) -> tuple[pafs.FileSystem, str]:
    """The pyarrow FileSystem that holds ``path`` and the path within it (``bucket/key`` for S3).

    This is what Ray Data (``filesystem=``) and Ray Train (``RunConfig(storage_filesystem=...)``) take.
    """
    import pyarrow.fs as pafs

    text = str(path)
    if is_remote(text):
        return _s3_filesystem(s3_settings(config)), fs_path(text)
    if "://" in text:
        raise StorageError(f"{text!r}: unsupported scheme; use a local path or s3://<bucket>/<key>")
    return pafs.LocalFileSystem(), fs_path(text)


def fs_path(path: str | Path) -> str:
    """``path`` as its filesystem knows it: ``bucket/key`` for an s3:// URI, else an absolute local path."""
    if is_remote(path):
        bucket, key = split_uri(str(path))
        return f"{bucket}/{key}".rstrip("/")
    return os.path.abspath(path)


def s3_settings(config: StorageConfig | None = None) -> _S3Settings:
    """Resolve ``config`` against the AWS environment variables (read now, never at import)."""
    s3 = (config or StorageConfig()).s3
    endpoint_url = s3.endpoint_url
    if endpoint_url is None:
        endpoint_url = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None
    endpoint, scheme = None, "https"
    if endpoint_url:
        parts = urlsplit(endpoint_url)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/"):
            raise StorageError(
                f"S3 endpoint {endpoint_url!r} (storage.s3.endpoint_url or $AWS_ENDPOINT_URL_S3/"
                "$AWS_ENDPOINT_URL) is not http(s)://host[:port]; set it to e.g. http://127.0.0.1:9000"
            )
        endpoint, scheme = parts.netloc, parts.scheme
    region = s3.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    access = os.environ.get(s3.access_key_id_env) or None
    secret = os.environ.get(s3.secret_access_key_env) or None
    if (access is None) != (secret is None) and not s3.anonymous:
        have, lack = (s3.access_key_id_env, s3.secret_access_key_env) if access else (
            s3.secret_access_key_env, s3.access_key_id_env)
        raise StorageError(
            f"${have} is set but ${lack} is not; export both (or neither, to use ~/.aws or an instance role)"
        )
    token = os.environ.get(s3.session_token_env) or None if access else None
    return _S3Settings(endpoint, scheme, region or DEFAULT_REGION, access, secret, token, s3)


@functools.lru_cache(maxsize=16)
def _s3_filesystem(settings: _S3Settings) -> pafs.S3FileSystem:
    import pyarrow.fs as pafs

    s3 = settings.config
    return pafs.S3FileSystem(
        access_key=settings.access_key, secret_key=settings.secret_key, session_token=settings.session_token,
        anonymous=s3.anonymous, region=settings.region, endpoint_override=settings.endpoint,
        scheme=settings.scheme, connect_timeout=s3.connect_timeout_s, request_timeout=s3.request_timeout_s,
        retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=s3.max_attempts),
    )


# ---------------------------------------------------------------- errors


def describe_error(path: str, action: str, exc: BaseException, config: StorageConfig | None = None
                   ) -> StorageError:
    """A StorageError for a failed S3 call: what failed, on which path, and what to change."""
    text = str(exc)
    try:
        where = s3_settings(config).endpoint or "AWS S3"
    except StorageError:
        where = "the configured endpoint"
    bucket = path[len(S3):].split("/", 1)[0] if is_remote(path) else "?"
    if "NO_SUCH_BUCKET" in text or "bucket does not exist" in text or "NoSuchBucket" in text:
        fix = (f"bucket {bucket!r} does not exist at {where}; create it (e.g. `aws s3 mb s3://{bucket}`) or "
               "fix the bucket in the path")
    elif any(s in text for s in ("ACCESS_DENIED", "AccessDenied", "HTTP status 403", "INVALID_ACCESS_KEY_ID",
                                 "SIGNATURE_DOES_NOT_MATCH", "InvalidAccessKeyId", "SignatureDoesNotMatch")):
        fix = (f"access denied by {where}; check the keys in $AWS_ACCESS_KEY_ID/$AWS_SECRET_ACCESS_KEY (or "
               "the variables storage.s3.*_env names) and that they may use this bucket")
    elif any(s in text for s in ("NETWORK_CONNECTION", "curlCode", "Could not connect", "Could not resolve",
                                 "Connection refused", "Timeout")):
        fix = (f"cannot reach the S3 endpoint {where}; check storage.s3.endpoint_url or "
               "$AWS_ENDPOINT_URL(_S3) and that the server is up")
    elif isinstance(exc, FileNotFoundError):
        fix = "no such object; check the path"
    else:
        fix = "see the cause above"
    cause = text.splitlines()[0] if text else type(exc).__name__
    return StorageError(f"cannot {action} {path}: {fix} ({cause})")


@contextmanager
def translated(path: str | Path, action: str, config: StorageConfig | None = None) -> Iterator[None]:
    """Turn S3 OSErrors inside the block into StorageErrors naming ``path``; local errors pass through."""
    try:
        yield
    except StorageError:
        raise
    except OSError as exc:
        if not is_remote(path):
            raise
        raise describe_error(str(path), action, exc, config) from exc


# ---------------------------------------------------------------- reading


def file_type(path: str | Path, config: StorageConfig | None = None) -> str:
    """'file', 'directory' or 'missing' (an S3 'directory' is a prefix with objects under it).

    A path in an S3 bucket that does not exist is a StorageError, not 'missing': it is almost always a typo.
    """
    import pyarrow.fs as pafs

    fs, inner = resolve(path, config)
    with translated(path, "look up", config):
        kind = fs.get_file_info(inner).type
        if kind == pafs.FileType.NotFound and is_remote(path):
            _check_bucket(fs, str(path), config)
    return {pafs.FileType.File: "file", pafs.FileType.Directory: "directory"}.get(kind, "missing")


def _check_bucket(fs: pafs.FileSystem, uri: str, config: StorageConfig | None) -> None:
    bucket = split_uri(uri)[0]
    if fs.get_file_info(bucket).type.name == "NotFound":
        raise describe_error(uri, "use", FileNotFoundError(f"NoSuchBucket: {bucket}"), config)


def exists(path: str | Path, config: StorageConfig | None = None) -> bool:
    return file_type(path, config) != "missing"  # a missing bucket is a StorageError, as in file_type


def list_files(path: str | Path, suffixes: tuple[str, ...] | None = None,
               config: StorageConfig | None = None) -> list[FileEntry]:
    """Files under ``path`` (recursively; or ``path`` itself when it is a file), sorted by relative path.

    Names starting with ``_`` or ``.`` (metadata, temporaries) are skipped at any depth below ``path``;
    ``suffixes`` filters by ending, case-insensitively. A missing ``path`` gives an empty list.
    """
    import pyarrow.fs as pafs

    fs, inner = resolve(path, config)
    base = str(path).rstrip("/") if is_remote(path) else str(path)
    with translated(path, "list", config):
        info = fs.get_file_info(inner)
        if info.type == pafs.FileType.File:
            return [FileEntry(str(path), info.size)]
        selector = pafs.FileSelector(inner, recursive=True, allow_not_found=True)
        infos = fs.get_file_info(selector)
        if not infos and is_remote(path):
            _check_bucket(fs, str(path), config)
    found: list[tuple[tuple[str, ...], FileEntry]] = []
    for item in infos:
        if item.type != pafs.FileType.File:
            continue
        rel = item.path[len(inner):].strip("/").split("/")
        if any(part.startswith(("_", ".")) for part in rel):
            continue
        if suffixes is not None and not rel[-1].lower().endswith(suffixes):
            continue
        full = "/".join([base, *rel]) if is_remote(path) else os.path.join(base, *rel)
        found.append((tuple(rel), FileEntry(full, item.size)))
    return [entry for _, entry in sorted(found)]


def list_children(path: str | Path, config: StorageConfig | None = None) -> list[str]:
    """Names directly under a directory or prefix: files and sub-directories, hidden ones too; [] if none."""
    import pyarrow.fs as pafs

    fs, inner = resolve(path, config)
    with translated(path, "list", config):
        infos = fs.get_file_info(pafs.FileSelector(inner, recursive=False, allow_not_found=True))
    return sorted(basename(info.path) for info in infos)


def open_input(path: str | Path, config: StorageConfig | None = None) -> Any:
    """A seekable binary pyarrow file (a context manager) for reading ``path``."""
    fs, inner = resolve(path, config)
    with translated(path, "open", config):
        return fs.open_input_file(inner)


def read_bytes(path: str | Path, config: StorageConfig | None = None) -> bytes:
    if not is_remote(path):
        return Path(path).read_bytes()
    with open_input(path, config) as fh, translated(path, "read", config):
        return fh.read()


def read_text(path: str | Path, config: StorageConfig | None = None) -> str:
    return read_bytes(path, config).decode("utf-8")


def read_json(path: str | Path, config: StorageConfig | None = None) -> Any:
    return json.loads(read_text(path, config))


# ---------------------------------------------------------------- writing


@contextmanager
def _atomic_local(target: Path) -> Iterator[Any]:
    """A binary file that becomes ``target`` when the block completes (written beside it, then renamed)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes(path: str | Path, data: bytes, config: StorageConfig | None = None) -> str | Path:
    """Write ``data`` atomically: a reader sees the old content or the new, never part of it."""
    if is_remote(path):
        fs, inner = resolve(path, config)
        with translated(path, "write", config), fs.open_output_stream(inner) as out:
            out.write(data)  # the object appears when the upload completes, whole
        return str(path)
    with _atomic_local(Path(path)) as fh:
        fh.write(data)
    return Path(path)


def write_text(path: str | Path, text: str, config: StorageConfig | None = None) -> str | Path:
    return write_bytes(path, text.encode("utf-8"), config)


def write_json(path: str | Path, payload: Any, config: StorageConfig | None = None) -> str | Path:
    """Indented, key-sorted JSON (non-JSON values as ``str``), written atomically."""
    return write_text(path, json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n", config)


def delete(path: str | Path, config: StorageConfig | None = None) -> None:
    """Remove a file or a whole directory/prefix; nothing happens when it does not exist."""
    if not is_remote(path):
        if Path(path).is_dir():
            shutil.rmtree(path)
        else:
            Path(path).unlink(missing_ok=True)
        return
    kind = file_type(path, config)
    fs, inner = resolve(path, config)
    with translated(path, "delete", config):
        if kind == "file":
            fs.delete_file(inner)
        elif kind == "directory":
            fs.delete_dir(inner)


def copy_file(source: str | Path, dest: str | Path, config: StorageConfig | None = None) -> None:
    """Copy one file between any two places, local or s3://; the target appears whole."""
    if is_remote(source) and is_remote(dest):
        write_bytes(dest, read_bytes(source, config), config)
    elif is_remote(source):
        fs, inner = resolve(source, config)
        with translated(source, "download", config):
            _fetch(fs, inner, Path(dest))
    elif is_remote(dest):
        fs, inner = resolve(dest, config)
        with translated(dest, "upload to", config), open(source, "rb") as src:
            with fs.open_output_stream(inner) as out:
                shutil.copyfileobj(src, out, length=1 << 22)
    else:
        with open(source, "rb") as src, _atomic_local(Path(dest)) as out:
            shutil.copyfileobj(src, out, length=1 << 22)


def upload(local: str | Path, dest: str | Path, config: StorageConfig | None = None) -> list[str]:
    """Copy a local file to ``dest``, or a local directory's files to under ``dest``; return the targets."""
    source = Path(local)
    if not source.exists():
        raise StorageError(f"cannot upload {str(source)!r}: no such file or directory")
    inside = [file for file in sorted(source.rglob("*")) if file.is_file()]
    files = [(source, dest)] if source.is_file() else [(f, join(dest, *f.relative_to(source).parts))
                                                         for f in inside]
    for file, target in files:
        copy_file(file, target, config)
    return [str(target) for _, target in files]


def download(path: str | Path, local_dir: str | Path, config: StorageConfig | None = None) -> Path:
    """Copy the file ``path`` into ``local_dir``, or every file under the prefix ``path`` (hidden ones too)
    to the same relative places under ``local_dir``; return ``local_dir``."""
    import pyarrow.fs as pafs

    target = Path(local_dir)
    target.mkdir(parents=True, exist_ok=True)
    fs, inner = resolve(path, config)
    kind = file_type(path, config)
    if kind == "missing":
        raise StorageError(f"cannot download {path}: nothing exists there; check the path")
    with translated(path, "download", config):
        selector = pafs.FileSelector(inner, recursive=True)
        infos = [fs.get_file_info(inner)] if kind == "file" else fs.get_file_info(selector)
        for item in infos:
            if item.type == pafs.FileType.File:
                rel = [basename(inner)] if kind == "file" else item.path[len(inner):].strip("/").split("/")
                if ".." in rel:
                    raise StorageError(f"{path}: object key {item.path!r} leaves the prefix; refusing it")
                _fetch(fs, item.path, target.joinpath(*rel))
    return target


def _fetch(fs: pafs.FileSystem, inner: str, dest: Path) -> None:
    with fs.open_input_stream(inner) as src, _atomic_local(dest) as out:
        shutil.copyfileobj(src, out, length=1 << 22)
