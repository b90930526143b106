"""One filesystem layer for local folders and any fsspec URL: ``s3://`` (s3fs), ``gs://`` (gcsfs), ``az://``
(adlfs), ``http(s)://`` (read only) and whatever else fsspec knows; :func:`expand_urls` expands brace patterns.

Every helper here (``exists``, ``read_bytes``, ``listdir``, ``write_bytes_atomic``, ``put_file_atomic``,
``remove``, :func:`filesystem`) takes ``(url, options: StorageOptions | None)``, so callers (the reader, the
preprocess job, the index builder) never branch on the scheme. ``StorageOptions.options`` is passed through to the
fsspec filesystem constructor unchanged (e.g. ``{"token": "anon"}`` for gcsfs, ``{"account_name": ...}`` for
adlfs, ``{"headers": {...}}`` for HTTP). Shard *reads* use :mod:`shards.s3` instead (one bounded retry policy).

The S3 endpoint (MinIO, R2, moto, ...) and credentials come from :class:`StorageOptions` or, when a field is
unset, from the standard AWS environment variables (``AWS_ENDPOINT_URL_S3``/``AWS_ENDPOINT_URL``,
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``), which botocore reads itself.

s3fs filesystem objects are not fork-safe: call :func:`filesystem` inside the process that uses it (each
DataLoader worker builds its own; fsspec caches instances per process id).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import asdict, dataclass, field
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

__all__ = [
    "StorageOptions",
    "filesystem",
    "is_remote",
    "join",
    "exists",
    "read_bytes",
    "write_bytes_atomic",
    "put_file_atomic",
    "listdir",
    "remove",
    "expand_urls",
    "protocol",
]


def protocol(url: str) -> str:
    """The URL's scheme (``"file"`` for local paths and ``file://``)."""
    return url.split("://", 1)[0].lower() if "://" in url else "file"


def expand_urls(urls: str | list[str] | tuple[str, ...]) -> list[str]:
    """Expand brace patterns (``train-{000000..000099}.tar``, ``{a,b}``) with ``braceexpand`` (webdataset's
    dependency; zero padding is kept), in order; a string may hold several URLs separated by whitespace."""
    from braceexpand import braceexpand

    items = urls.split() if isinstance(urls, str) else list(urls)
    return [u for item in items for u in braceexpand(item)]


@dataclass
class StorageOptions:
    """Where and how to reach object storage. Unset fields fall back to the AWS environment variables."""

    endpoint_url: str | None = None  # S3 endpoint URL (None: AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL / AWS)
    key: str | None = None  # access key id (None: AWS_ACCESS_KEY_ID / credential chain)
    secret: str | None = None  # secret access key (None: AWS_SECRET_ACCESS_KEY / credential chain)
    anon: bool = False  # anonymous access (public buckets)
    # botocore's retry attempts for the operations of this module (writes, listings). Shard and index *reads*
    # go through shards.s3 with botocore/s3fs retries off and the loader's own policy (data.retries).
    retries: int = 5  # botocore's retry attempts for writes and listings (reads use the loader's own policy)
    request_timeout: float = 10.0  # seconds: connect and each socket read of one remote read request
    deadline: float = 30.0  # seconds a remote file may keep failing before it is given up (see shards.retry)
    options: dict[str, Any] = field(default_factory=dict)  # passed through to the fsspec filesystem

    def s3fs_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``s3fs.S3FileSystem``."""
        endpoint = self.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        kw: dict[str, Any] = {
            "anon": self.anon,
            "config_kwargs": {"retries": {"max_attempts": self.retries, "mode": "standard"}},
        }
        if endpoint:
            kw["client_kwargs"] = {"endpoint_url": endpoint}
        if self.key:
            kw["key"] = self.key
        if self.secret:
            kw["secret"] = self.secret
        kw.update(self.options)
        return kw

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def is_remote(url: str) -> bool:
    """True for ``s3://`` (or any non-local fsspec protocol) URLs."""
    return "://" in url and not url.startswith("file://")


def filesystem(url: str, options: StorageOptions | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem for ``url`` and the path inside it.

    >>> fs, path = filesystem("/tmp/x")  # LocalFileSystem, "/tmp/x"
    """
    if url.startswith("s3://"):
        import s3fs

        fs = s3fs.S3FileSystem(**(options or StorageOptions()).s3fs_kwargs())
        return fs, url[len("s3://") :]
    if url.startswith("file://"):
        url = url[len("file://") :]
    if "://" in url:
        fs, path = fsspec.core.url_to_fs(url, **(options.options if options else {}))
        return fs, path
    return LocalFileSystem(), os.path.abspath(url)


def join(url: str, *parts: str) -> str:
    """Join path parts onto a local path or URL with ``/``."""
    out = url.rstrip("/")
    for p in parts:
        out = f"{out}/{p.strip('/')}"
    return out


def exists(url: str, options: StorageOptions | None = None) -> bool:
    fs, path = filesystem(url, options)
    if not isinstance(fs, LocalFileSystem):
        fs.invalidate_cache()
    return fs.exists(path)


def read_bytes(url: str, options: StorageOptions | None = None) -> bytes:
    fs, path = filesystem(url, options)
    with fs.open(path, "rb") as f:
        return f.read()


def listdir(url: str, options: StorageOptions | None = None) -> list[str]:
    """Base names of the files directly under ``url`` (empty if it does not exist)."""
    fs, path = filesystem(url, options)
    if not isinstance(fs, LocalFileSystem):
        fs.invalidate_cache()
    if not fs.exists(path):
        return []
    return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False))


def remove(url: str, options: StorageOptions | None = None) -> None:
    fs, path = filesystem(url, options)
    if fs.exists(path):
        fs.rm(path)


def _replace_local(path: str, write) -> None:
    """Write a local file through ``write(fileobj)`` into a temp name in its folder, then ``os.replace`` it
    (atomic on POSIX); mode 0644 (mkstemp creates 0600); the temp file is removed on any failure."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=os.path.dirname(path))
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def put_file_atomic(local_path: str, url: str, options: StorageOptions | None = None) -> None:
    """Publish a finished local file at ``url`` so that readers see either nothing or the whole file.

    Local: copy into the destination folder under a temporary name, then ``os.replace`` (atomic on POSIX).
    S3: a single PUT / multipart upload only becomes visible when complete, which is already atomic.
    """
    fs, path = filesystem(url, options)
    if isinstance(fs, LocalFileSystem):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if os.path.dirname(os.path.abspath(local_path)) == os.path.dirname(path):
            os.replace(local_path, path)
            return

        def copy(dst) -> None:
            with open(local_path, "rb") as src:
                while chunk := src.read(1 << 22):
                    dst.write(chunk)

        _replace_local(path, copy)
    else:
        fs.put_file(local_path, path)
        fs.invalidate_cache()


def write_bytes_atomic(url: str, data: bytes, options: StorageOptions | None = None) -> None:
    """Write ``data`` to ``url`` atomically (temp name + rename locally, one PUT on S3)."""
    fs, path = filesystem(url, options)
    if isinstance(fs, LocalFileSystem):
        _replace_local(path, lambda f: f.write(data))
    else:
        fs.pipe_file(path, data)
        fs.invalidate_cache()
