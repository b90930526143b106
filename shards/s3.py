"""Opening shards for reading: local paths and ``s3://`` URLs (s3fs), with retries, resume-at-offset and an
optional local cache; plus the ``s3`` scheme for ``webdataset.gopen`` (webdataset 1.0.2 ships none).

S3 reads are *range reads* of ``block_size`` bytes: the reader is seekable (so the tar reader can jump over
members it does not need), and a dropped connection or a 5xx/timeout only repeats the block being read, from the
byte offset reached, after an exponential backoff. The s3fs filesystem is created lazily, once per process id:
s3fs objects are not fork-safe, so a DataLoader worker never uses one built in its parent.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import random
import tempfile
import time
from typing import Any, BinaryIO

from shards.fs import StorageOptions

__all__ = [
    "S3RangeReader",
    "open_shard",
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


def s3_filesystem(storage: StorageOptions | None = None):
    """The ``s3fs.S3FileSystem`` for ``storage`` in *this* process (built on first use after a fork)."""
    import s3fs

    opts = storage or StorageOptions()
    kw = opts.s3fs_kwargs()
    ident = (os.getpid(), repr(sorted(kw.items(), key=lambda kv: kv[0])))
    fs = _FS.get(ident)
    if fs is None:
        for k in [k for k in _FS if k[0] != os.getpid()]:  # instances inherited through fork: never reuse
            del _FS[k]
        fs = s3fs.S3FileSystem(skip_instance_cache=True, **kw)
        _FS[ident] = fs
    return fs


def is_transient(exc: BaseException) -> bool:
    """True for errors worth retrying: connection resets/drops, timeouts, throttling and 5xx responses.

    Not transient: a missing object (404 -> ``FileNotFoundError``), denied access, bad arguments.
    """
    if isinstance(exc, FileNotFoundError | PermissionError | IsADirectoryError | NotADirectoryError):
        return False
    if isinstance(exc, TimeoutError | asyncio.TimeoutError | ConnectionError):
        return True
    try:
        import aiohttp

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


def _backoff(attempt: int) -> float:
    """Seconds to wait before retry ``attempt`` (1-based): 0.05 * 2^(attempt-1), capped at 5 s, with jitter."""
    return min(5.0, 0.05 * 2 ** (attempt - 1)) * (0.5 + random.random())


class S3RangeReader(io.RawIOBase):
    """A read-only, seekable file over one S3 object, read in ``block_size`` range requests with retries.

    Each block is fetched with ``cat_file(path, start, end)``; on a transient error the same range (from the byte
    offset reached) is requested again, up to ``retries`` times with exponential backoff; then the error
    propagates with the URL named.
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
        if not url.startswith("s3://"):
            raise ValueError(f"not an s3:// URL: {url!r}")
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        self.url, self.path = url, url[len("s3://") :]
        self.storage, self.retries, self.block_size = storage, retries, block_size
        self._pos = 0
        self._block_start = 0
        self._block = b""
        self.size = int(self._with_retries(lambda fs: fs.info(self.path), "stat")["size"])

    def _with_retries(self, fn, what: str):
        attempt = 0
        while True:
            try:
                return fn(s3_filesystem(self.storage))
            except FileNotFoundError as e:
                raise FileNotFoundError(f"shard not found: {self.url}") from e
            except Exception as e:
                if not is_transient(e) or attempt >= self.retries:
                    raise OSError(f"reading {self.url} ({what}) failed after {attempt} retries: {e!r}") from e
                attempt += 1
                _RETRIES["count"] += 1
                wait = _backoff(attempt)
                log.info(
                    "retry %d/%d of %s (%s) in %.2fs after %r", attempt, self.retries, self.url, what, wait, e
                )
                time.sleep(wait)

    def _fetch(self, start: int) -> None:
        end = min(self.size, start + self.block_size)
        data = self._with_retries(
            lambda fs: fs.cat_file(self.path, start=start, end=end), f"bytes {start}-{end}"
        )
        if len(data) != end - start:
            raise OSError(f"short read from {self.url}: bytes {start}-{end} gave {len(data)}")
        self._block_start, self._block = start, data

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
            S3RangeReader(url, storage, retries=retries, block_size=block_size) as src,
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
    """Open a shard for reading: a local path / ``file://`` URL, or an ``s3://`` URL.

    With ``cache_dir``, an S3 shard is first downloaded whole to ``{cache_dir}/{bucket}/{key}`` (temporary name,
    then ``os.replace``) and read locally; a cached copy is reused. Missing shards raise ``FileNotFoundError``
    naming the URL.
    """
    if url.startswith("s3://"):
        if cache_dir:
            dest = _cache_path(cache_dir, url)
            if not os.path.exists(dest):
                _download_atomic(url, dest, storage, retries, block_size)
            return open(dest, "rb")  # noqa: SIM115 - returned to the caller
        return io.BufferedReader(S3RangeReader(url, storage, retries=retries, block_size=block_size), 1 << 16)
    if url.startswith("pipe:"):
        raise ValueError(f"pipe: URLs are not accepted for shards: {url!r}")
    path = url[len("file://") :] if url.startswith("file://") else url
    if "://" in path:
        raise ValueError(f"unsupported shard URL scheme: {url!r} (use a local path or s3://)")
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
