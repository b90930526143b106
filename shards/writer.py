"""Atomic, deterministic writer for one shard of format v1.

Determinism: the same samples in the same order with the same bytes give a byte-identical tar. Every member gets
a fixed mtime (0), uid/gid 0, empty user/group names, mode 0o444, and the USTAR format; a sample's members are
written in sorted name order (``f000.jpg`` < ... < ``json`` < ``txt``) and each sample's members are contiguous.

Atomicity: the tar is written to a local temporary file and published under its final name only once closed
(``os.replace`` locally, one upload on S3). The sidecars follow, ``failures.jsonl`` first and ``stats.json`` last:
a shard whose ``stats.json`` exists is complete, anything else is rewritten by a resumed job.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import Any

from shards import fs as sfs
from shards.schema import failures_name, shard_name, stats_name, validate_key

__all__ = ["ShardWriter", "ShardStats", "encode_json", "FIXED_MTIME"]

FIXED_MTIME = 0


def encode_json(obj: Any) -> bytes:
    """Canonical JSON bytes (sorted keys, UTF-8, compact) so equal metadata gives equal bytes."""
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


@dataclass
class ShardStats:
    """Contents of ``{split}-{NNNNNN}.stats.json``."""

    shard: str
    samples: int
    failed: int
    bytes: int
    seconds: float
    captions: list[int]  # number of captions of each sample, in tar order (for caption_mode "all")


def _caption_count(members: dict[str, bytes]) -> int:
    """Number of captions of a sample: ``len(json["captions"])`` when present, else 1."""
    if "json" not in members:
        return 1
    try:
        caps = json.loads(members["json"]).get("captions")
    except (ValueError, AttributeError):
        return 1
    return len(caps) if isinstance(caps, list) and caps else 1


class ShardWriter:
    """Write shard ``index`` of ``split`` under ``root`` (a local folder or ``s3://bucket/prefix``).

    Usage::

        with ShardWriter(root, "train", 0) as w:
            w.write(key, {"f000.jpg": jpeg, "txt": caption_bytes, "json": encode_json(meta)})
            w.add_failure("videos/bad.mp4", "bad", "decode error: ...")
        w.stats  # ShardStats after close
    """

    def __init__(
        self,
        root: str,
        split: str,
        index: int,
        *,
        storage: sfs.StorageOptions | None = None,
        tmp_dir: str | None = None,
    ) -> None:
        self.root, self.split, self.index = root, split, index
        self.storage = storage
        self.split_url = sfs.join(root, split)
        self.url = sfs.join(self.split_url, shard_name(split, index))
        self._keys: set[str] = set()
        self._captions: list[int] = []
        self._failures: list[dict[str, Any]] = []
        self._start = time.perf_counter()
        # Local target: temp file in the destination folder (same filesystem, so the rename is atomic).
        if not sfs.is_remote(self.split_url):
            os.makedirs(sfs.filesystem(self.split_url)[1], exist_ok=True)
            tmp_dir = sfs.filesystem(self.split_url)[1]
        fd, self._tmp_path = tempfile.mkstemp(prefix=f".{shard_name(split, index)}.", suffix=".tmp", dir=tmp_dir)
        self._file = os.fdopen(fd, "wb")
        self._tar = tarfile.open(fileobj=self._file, mode="w", format=tarfile.USTAR_FORMAT)
        self.stats: ShardStats | None = None

    # -- samples -------------------------------------------------------------------------------------------
    def write(self, key: str, members: dict[str, bytes]) -> None:
        """Append one sample. ``members`` maps extension (``f000.jpg``, ``txt``, ``json``) to bytes."""
        validate_key(key)
        if key in self._keys:
            raise ValueError(f"duplicate sample key {key!r} in {self.url}")
        if not members:
            raise ValueError(f"sample {key!r} has no members")
        for ext in sorted(members):
            data = members[ext]
            if not isinstance(data, bytes | bytearray):
                raise TypeError(f"member {key}.{ext} must be bytes, got {type(data).__name__}")
            info = tarfile.TarInfo(name=f"{key}.{ext}")
            info.size = len(data)
            info.mtime = FIXED_MTIME
            info.mode = 0o444
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            self._tar.addfile(info, io.BytesIO(data))
        self._keys.add(key)
        self._captions.append(_caption_count(members))

    def add_failure(self, input: str, video_id: str | None, reason: str) -> None:
        """Record an input that produced no sample (one row of ``failures.jsonl``)."""
        self._failures.append({"input": input, "video_id": video_id, "reason": reason})

    @property
    def num_samples(self) -> int:
        return len(self._keys)

    # -- publishing ----------------------------------------------------------------------------------------
    def close(self) -> ShardStats:
        """Finish the tar, publish it atomically, then write failures.jsonl and (last) stats.json."""
        if self.stats is not None:
            return self.stats
        self._tar.close()
        self._file.close()
        os.chmod(self._tmp_path, 0o644)  # mkstemp creates 0600; published shards are readable by the group/others
        size = os.path.getsize(self._tmp_path)
        try:
            sfs.put_file_atomic(self._tmp_path, self.url, self.storage)
        finally:
            if os.path.exists(self._tmp_path):
                os.unlink(self._tmp_path)
        failures = b"".join(encode_json(r) + b"\n" for r in self._failures)
        sfs.write_bytes_atomic(sfs.join(self.split_url, failures_name(self.split, self.index)), failures, self.storage)
        self.stats = ShardStats(
            shard=shard_name(self.split, self.index),
            samples=len(self._keys),
            failed=len(self._failures),
            bytes=size,
            seconds=round(time.perf_counter() - self._start, 3),
            captions=list(self._captions),
        )
        sfs.write_bytes_atomic(
            sfs.join(self.split_url, stats_name(self.split, self.index)), encode_json(asdict(self.stats)), self.storage
        )
        return self.stats

    def abort(self) -> None:
        """Drop the partial shard: nothing is published."""
        try:
            self._tar.close()
        except Exception:  # noqa: BLE001 - best effort on an already broken writer
            pass
        self._file.close()
        if os.path.exists(self._tmp_path):
            os.unlink(self._tmp_path)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
