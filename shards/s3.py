"""Opening shards and index files for reading: local paths and any fsspec URL (``s3://``, ``gs://``, ``az://``,
``http(s)://``, ...), under one bounded retry policy (:mod:`shards.retry`), with resume-at-offset and an optional
local cache; plus the ``s3`` scheme for ``webdataset.gopen`` (webdataset 1.0.2 ships none).

Remote reads are *range reads* of ``block_size`` bytes (``fs.cat_file(path, start, end)``): the reader is seekable
(so the tar reader can jump over members it does not need), and a dropped connection, a 5xx or a timeout only
repeats the block being read, from the byte offset reached. The filesystems used here are built by
:func:`read_filesystem` with their own retry layers off (botocore ``max_attempts=1``, s3fs ``retries=1``; fsspec's
HTTP filesystem has none) and ``StorageOptions.request_timeout`` on connect and every socket read, so the only
retries are ours and a stalled read raises a timeout. gcsfs and adlfs keep their own (bounded) retry loops, which
their constructors do not let us switch off; pass their options through ``StorageOptions.options``.

Filesystems are created lazily, once per process id: fsspec's async filesystems are not fork-safe, so a
DataLoader worker never uses one built in its parent.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import tempfile
from typing import Any, BinaryIO

from shards.fs import StorageOptions, protocol
from shards.retry import RetryBudget, ShardUnavailableError

__all__ = [
    "RangeReader",
    "S3RangeReader",
    "ShardUnavailableError",
    "open_shard",
    "read_remote_bytes",
    "read_filesystem",
    "s3_filesystem",
    "gopen_s3",
    "register_gopen",
    "is_transient",
    "retry_count",
]

log = logging.getLogger(__name__)

DEFAULT_BLOCK_SIZE = 8 << 20
_FS: dict[tuple[int, tuple], Any] = {}
_RETRIES = {"count": 0}


def retry_count() -> int:
    """Retries performed by S3 reads in this process so far (for stats and tests)."""
    return _RETRIES["count"]


def _build_filesystem(proto: str, opts: StorageOptions):
    t = float(opts.request_timeout)
    if proto == "s3":
        import s3fs

        kw = opts.s3fs_kwargs()
        kw["config_kwargs"] = {
            **kw.get("config_kwargs", {}),
            "retries": {"total_max_attempts": 1, "mode": "standard"},  # botocore: 1 attempt, no retry
            "connect_timeout": t,
            "read_timeout": t,
        }
        fs = s3fs.S3FileSystem(skip_instance_cache=True, **kw)
        fs.retries = 1  # s3fs's own _error_wrapper loop: a single try
        return fs
    import fsspec

    kw = dict(opts.options)
    if proto in ("http", "https"):
        import aiohttp

        kw.setdefault("client_kwargs", {}).setdefault(
            "timeout", aiohttp.ClientTimeout(total=None, connect=t, sock_connect=t, sock_read=t)
        )
    return fsspec.filesystem(proto, skip_instance_cache=True, **kw)


def read_filesystem(url: str, storage: StorageOptions | None = None) -> tuple[Any, str]:
    """``(filesystem, path)`` for reading ``url`` in *this* process (built on first use after a fork), with the
    filesystem's own retries off and ``request_timeout`` applied (see the module docstring)."""
    opts = storage or StorageOptions()
    proto = protocol(url)
    ident = (os.getpid(), proto, repr(sorted(opts.to_dict().items(), key=lambda kv: kv[0])))
    fs = _FS.get(ident)
    if fs is None:
        for k in [k for k in _FS if k[0] != os.getpid()]:  # instances inherited through fork: never reuse
            del _FS[k]
        fs = _build_filesystem(proto, opts)
        _FS[ident] = fs
    path = url.split("://", 1)[1] if proto in ("s3", "gs", "gcs", "az", "abfs", "adl") else url
    return fs, path


def s3_filesystem(storage: StorageOptions | None = None):
    """The read filesystem for ``s3://`` in this process (see :func:`read_filesystem`)."""
    return read_filesystem("s3://", storage)[0]


def is_transient(exc: BaseException) -> bool:
    """True for errors worth retrying: connection resets/drops, timeouts, throttling and 5xx responses.

    Not transient: a missing object (404 -> ``FileNotFoundError``), denied access, bad arguments.
    """
    if isinstance(exc, FileNotFoundError | PermissionError | IsADirectoryError | NotADirectoryError):
        return False
    if isinstance(exc, ShardUnavailableError):
        return False
    if isinstance(exc, TimeoutError | asyncio.TimeoutError | ConnectionError):
        return True
    try:
        import aiohttp

        if isinstance(exc, aiohttp.ClientResponseError):
            return exc.status >= 500 or exc.status in (408, 429)
        if isinstance(exc, aiohttp.ClientError):
            return True
    except ImportError:  # pragma: no cover - aiohttp comes with s3fs
        pass
    try:
        from botocore.exceptions import BotoCoreError, ClientError

        if isinstance(exc, ClientError):
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            code = exc.response.get("Error", {}).get("Code", "")
            return status >= 500 or code in ("SlowDown", "RequestTimeout", "Throttling", "InternalError")
        if isinstance(exc, BotoCoreError):
            return True
    except ImportError:  # pragma: no cover
        pass
    try:
        from fsspec.exceptions import FSTimeoutError

        if isinstance(exc, FSTimeoutError):
            return True
    except ImportError:  # pragma: no cover
        pass
    # s3fs maps other HTTP failures to plain OSError (e.g. 500/503 after its own retries).
    return type(exc) is OSError


class RangeReader(io.RawIOBase):
    """A read-only, seekable file over one remote object, read in ``block_size`` range requests.

    Each block is fetched with ``cat_file(path, start, end)``; every request (the size lookup included) runs under
    one :class:`shards.retry.RetryBudget` for the file: ``retries`` retries in a row at most, and given up with
    :class:`ShardUnavailableError` naming the URL once it has been failing for ``storage.deadline`` seconds. A
    missing object raises ``FileNotFoundError("shard not found: URL")``.
    """

    def __init__(
        self,
        url: str,
        storage: StorageOptions | None = None,
        *,
        retries: int = 5,
        block_size: int = DEFAULT_BLOCK_SIZE,
    ) -> None:
        super().__init__()
        if "://" not in url or protocol(url) == "file":
            raise ValueError(f"not a remote URL: {url!r}")
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        self.url = url
        self.storage, self.retries, self.block_size = storage or StorageOptions(), retries, block_size
        self.budget = RetryBudget(url, retries=retries, deadline=float(self.storage.deadline), transient=is_transient)
        self._pos = 0
        self._block_start = 0
        self._block = b""
        self.size = int(self._with_retries(lambda fs, p: fs.info(p), "stat")["size"])

    def _with_retries(self, fn, what: str):
        def attempt():
            fs, path = read_filesystem(self.url, self.storage)
            return fn(fs, path)

        before = self.budget.total_retries
        try:
            return self.budget.run(attempt, what)
        except FileNotFoundError as e:
            raise FileNotFoundError(f"shard not found: {self.url}") from e
        except ShardUnavailableError:
            raise
        except Exception as e:  # a permanent error: name the URL
            raise OSError(f"reading {self.url} ({what}) failed: {e!r}") from e
        finally:
            _RETRIES["count"] += self.budget.total_retries - before

    def _fetch(self, start: int) -> None:
        end = min(self.size, start + self.block_size)

        def get(fs, path):
            data = fs.cat_file(path, start=start, end=end)
            if len(data) != end - start:  # a body cut short without an error: retry like a dropped connection
                raise ConnectionError(f"short read: bytes {start}-{end} gave {len(data)}")
            return data

        self._block_start, self._block = start, self._with_retries(get, f"bytes {start}-{end}")

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        pos = base + offset
        if pos < 0:
            raise ValueError(f"negative seek position {pos} in {self.url}")
        self._pos = pos
        return pos

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        n = 0
        while n < len(view) and self._pos < self.size:
            rel = self._pos - self._block_start
            if not 0 <= rel < len(self._block):
                self._fetch(self._pos)
                rel = 0
            take = min(len(view) - n, len(self._block) - rel)
            view[n : n + take] = self._block[rel : rel + take]
            n += take
            self._pos += take
        return n


S3RangeReader = RangeReader  # the name it had when only s3:// was read


def read_remote_bytes(url: str, storage: StorageOptions | None = None, *, retries: int = 5) -> bytes:
    """The whole content of a (small) remote file, e.g. ``sizes.json``, under the same retry policy."""
    with RangeReader(url, storage, retries=retries, block_size=1 << 24) as f:
        return f.read()


def _cache_path(cache_dir: str, url: str) -> str:
    rel = url.split("://", 1)[-1].lstrip("/")
    if ".." in rel.split("/"):
        raise ValueError(f"refusing to cache {url!r}: '..' in the path")
    return os.path.join(cache_dir, rel)


def _download_atomic(
    url: str, dest: str, storage: StorageOptions | None, retries: int, block_size: int
) -> None:
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".dl-", suffix=".tmp", dir=os.path.dirname(dest))
    try:
        with (
            RangeReader(url, storage, retries=retries, block_size=block_size) as src,
            os.fdopen(fd, "wb") as dst,
        ):
            while chunk := src.read(block_size):
                dst.write(chunk)
        os.replace(tmp, dest)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def open_shard(
    url: str,
    storage: StorageOptions | None = None,
    *,
    retries: int = 5,
    cache_dir: str | None = None,
    block_size: int = DEFAULT_BLOCK_SIZE,
) -> BinaryIO:
    """Open a shard for reading: a local path / ``file://`` URL, or any remote fsspec URL.

    With ``cache_dir``, a remote shard is first downloaded whole to ``{cache_dir}/{bucket}/{key}`` (temporary name,
    then ``os.replace``) and read locally; a cached copy is reused. Missing shards raise ``FileNotFoundError``
    naming the URL.
    """
    if url.startswith("pipe:"):
        raise ValueError(f"pipe: URLs are not accepted for shards: {url!r}")
    if protocol(url) != "file":
        if cache_dir:
            dest = _cache_path(cache_dir, url)
            if not os.path.exists(dest):
                _download_atomic(url, dest, storage, retries, block_size)
            return open(dest, "rb")  # noqa: SIM115 - returned to the caller
        return io.BufferedReader(RangeReader(url, storage, retries=retries, block_size=block_size), 1 << 16)
    path = url[len("file://") :] if url.startswith("file://") else url
    try:
        return open(path, "rb", buffering=1 << 16)  # noqa: SIM115
    except FileNotFoundError as e:
        raise FileNotFoundError(f"shard not found: {url}") from e


def gopen_s3(url: str, mode: str = "rb", bufsize: int = 8192, **kw: Any) -> BinaryIO:
    """``webdataset.gopen`` handler for ``s3://`` (read only); endpoint/credentials from the AWS env vars."""
    if mode != "rb":
        raise ValueError(f"s3 gopen handler is read-only, got mode {mode!r} for {url}")
    return open_shard(url, kw.get("storage"), retries=int(kw.get("retries", 5)))


def register_gopen() -> None:
    """Register :func:`gopen_s3` as ``webdataset.gopen.gopen_schemes["s3"]`` (idempotent)."""
    import sys

    import webdataset  # noqa: F401 - makes sure the gopen submodule is loaded

    sys.modules["webdataset.gopen"].gopen_schemes["s3"] = gopen_s3
