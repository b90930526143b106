"""Check a split of shard format v1 end to end.

Usage::

    python -m shards.verify ROOT/SPLIT [--no-decode] [--endpoint-url URL] [--source-check N]

For every shard listed in ``shardindex.json``: the file exists; its size and md5 match the index; the number of
samples in the tar equals ``nsamples``; every sample has ``txt`` + ``json`` + frames ``f000.jpg`` ...
``f{T-1}.jpg`` (T = json ``num_frames``) and nothing else, its members are contiguous, its key is valid and unique
across the split, its json has every field of :data:`~shards.schema.SAMPLE_JSON_FIELDS` with ``schema == 1``, its
txt equals the json ``caption`` and every frame decodes as a JPEG of the json's ``height`` x ``width`` (with
``decode=False`` only the JPEG headers are parsed). Split files must agree: ``sizes.json`` = index counts,
``captions.json`` = caption counts of the samples, ``manifest.json`` totals (``ok`` = sum of ``nsamples``,
``ok + failed = inputs``). The tar is read once, as a stream, for both the hash and the samples.

``--source-check N`` also re-decodes N random samples from their source videos through an independent ffmpeg
path and compares pixels and timestamps (:mod:`shards.source_check`).

The CLI prints one line per problem (naming shard and sample key) and a summary, and exits 1 on any problem.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import tarfile
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from shards import fs as sfs
from shards.index import CAPTIONS_FILE, WIDS_KIND, split_name
from shards.schema import (
    MANIFEST_FILE,
    SAMPLE_JSON_FIELDS,
    SCHEMA_VERSION,
    SHARDINDEX_FILE,
    SIZES_FILE,
    frame_index,
    frame_member,
    is_frame_member,
    shard_index_of,
    shard_name,
    stats_name,
    validate_key,
)

__all__ = ["Problem", "VerifyReport", "verify_split", "verify_shard", "main"]

logger = logging.getLogger(__name__)

_CHUNK = 1 << 22
SPLIT_LEVEL = "-"  # the ``key`` of a problem that concerns a whole shard or a split file


@dataclass(frozen=True)
class Problem:
    """One thing wrong: ``shard`` (shard or split-file name), ``key`` (sample key or ``-``) and a message."""

    shard: str
    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.shard} {self.key}: {self.message}"


@dataclass
class VerifyReport:
    """Totals of what was checked and every problem found (``ok`` when there is none)."""

    split_url: str
    shards: int = 0
    samples: int = 0
    frames: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, shard: str, key: str, message: str) -> None:
        self.problems.append(Problem(shard, key, message))

    def summary(self) -> str:
        return (
            f"{self.split_url}: shards={self.shards} samples={self.samples} frames={self.frames} "
            f"problems={len(self.problems)}"
        )


class _HashingReader:
    """A read-only file wrapper that md5-hashes and counts every byte read through it."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self.md5 = hashlib.md5()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        self.md5.update(data)
        self.size += len(data)
        return data

    def drain(self) -> None:
        while self.read(_CHUNK):
            pass


@dataclass
class _ShardResult:
    samples: int = 0
    frames: int = 0
    size: int = 0
    md5: str = ""
    captions: list[int] = field(default_factory=list)


def _check_jpeg(data: bytes, decode: bool) -> tuple[int, int]:
    """``(height, width)`` of a JPEG; raises ValueError if it does not decode (or its header does not parse)."""
    import simplejpeg

    if decode:
        arr = simplejpeg.decode_jpeg(data, colorspace="RGB", strict=True)
        return int(arr.shape[0]), int(arr.shape[1])
    h, w, _, _ = simplejpeg.decode_jpeg_header(data)
    return int(h), int(w)


def _check_sample(
    shard: str, key: str, members: dict[str, bytes], decode: bool, report: VerifyReport
) -> tuple[int, int]:
    """Check one sample's members; return ``(frames found, caption count)``."""

    def bad(msg: str) -> None:
        report.add(shard, key, msg)

    try:
        validate_key(key)
    except ValueError as e:
        bad(str(e))
    for ext in sorted(members):
        if ext not in ("txt", "json") and not is_frame_member(ext):
            bad(f"unexpected member {key}.{ext}")
    frames = sorted(frame_index(e) for e in members if is_frame_member(e))
    caption_count = 1

    meta: dict[str, Any] | None = None
    if "json" not in members:
        bad("missing json")
    else:
        try:
            obj = json.loads(members["json"].decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            bad(f"json does not parse: {e}")
        else:
            if not isinstance(obj, dict):
                bad(f"json is a {type(obj).__name__}, expected an object")
            else:
                meta = obj
    if meta is not None:
        missing = [f for f in SAMPLE_JSON_FIELDS if f not in meta]
        if missing:
            bad(f"json lacks field(s) {', '.join(missing)}")
        if meta.get("schema") != SCHEMA_VERSION:
            bad(f"json schema is {meta.get('schema')!r}, expected {SCHEMA_VERSION}")
        caps = meta.get("captions")
        if isinstance(caps, list) and caps:
            caption_count = len(caps)

    text: str | None = None
    if "txt" not in members:
        bad("missing txt")
    else:
        try:
            text = members["txt"].decode("utf-8")
        except UnicodeDecodeError as e:
            bad(f"txt is not UTF-8: {e}")
        if text is not None and meta is not None and "caption" in meta and text != meta["caption"]:
            bad(f"txt {text[:40]!r} differs from json caption {str(meta['caption'])[:40]!r}")

    num_frames = meta.get("num_frames") if meta is not None else None
    if meta is not None:
        if not isinstance(num_frames, int) or isinstance(num_frames, bool) or num_frames < 1:
            bad(f"json num_frames must be a positive integer, got {num_frames!r}")
        else:
            expected = set(range(num_frames))
            absent = sorted(expected - set(frames))
            extra = sorted(set(frames) - expected)
            if absent:
                bad(
                    f"missing frame(s) {', '.join(frame_member(i) for i in absent)} (num_frames={num_frames})"
                )
            if extra:
                bad(
                    f"unexpected frame(s) {', '.join(frame_member(i) for i in extra)} (num_frames={num_frames})"
                )
    elif not frames:
        bad("no frames")

    want = None
    if meta is not None and isinstance(meta.get("height"), int) and isinstance(meta.get("width"), int):
        want = (meta["height"], meta["width"])
    wrong_size: list[tuple[str, tuple[int, int]]] = []
    for i in frames:
        name = frame_member(i)
        try:
            hw = _check_jpeg(members[name], decode)
        except (ValueError, RuntimeError) as e:
            bad(f"frame {name} is not a valid JPEG: {e}")
            continue
        if want is not None and hw != want:
            wrong_size.append((name, hw))
    if wrong_size and want is not None:
        name, hw = wrong_size[0]
        bad(
            f"frame {name} is {hw[0]}x{hw[1]}, json says {want[0]}x{want[1]} ({len(wrong_size)} frame(s) differ)"
        )
    return len(frames), caption_count


def verify_shard(
    url: str,
    *,
    storage: sfs.StorageOptions | None = None,
    decode: bool = True,
    report: VerifyReport | None = None,
    seen_keys: dict[str, str] | None = None,
) -> tuple[VerifyReport, _ShardResult]:
    """Stream one tar once: hash it and check every sample (problems go to ``report``).

    ``seen_keys`` (key -> shard) is shared across the shards of a split to find keys used twice.
    """
    report = report if report is not None else VerifyReport(url)
    seen_keys = seen_keys if seen_keys is not None else {}
    shard = url.rstrip("/").rsplit("/", 1)[-1]
    res = _ShardResult()
    fs, path = sfs.filesystem(url, storage)

    def finish(key: str | None, members: dict[str, bytes]) -> None:
        if key is None:
            return
        nframes, ncaps = _check_sample(shard, key, members, decode, report)
        res.samples += 1
        res.frames += nframes
        res.captions.append(ncaps)

    with fs.open(path, "rb") as raw:
        reader = _HashingReader(raw)
        key: str | None = None
        members: dict[str, bytes] = {}
        try:
            with tarfile.open(fileobj=reader, mode="r|") as tar:  # type: ignore[call-overload]
                for info in tar:
                    if not info.isfile():
                        report.add(shard, SPLIT_LEVEL, f"unexpected non-file member {info.name!r}")
                        continue
                    if "/" in info.name or "." not in info.name:
                        report.add(shard, SPLIT_LEVEL, f"unexpected member {info.name!r} (not KEY.EXT)")
                        continue
                    k, _, ext = info.name.partition(".")
                    if k != key:
                        finish(key, members)
                        key, members = k, {}
                        if k in seen_keys:
                            where = seen_keys[k]
                            report.add(
                                shard,
                                k,
                                "members not contiguous (key seen earlier in this shard)"
                                if where == shard
                                else f"duplicate key (also in {where})",
                            )
                        seen_keys[k] = shard
                    if ext in members:
                        report.add(shard, k, f"duplicate member {info.name!r}")
                    f = tar.extractfile(info)
                    members[ext] = f.read() if f is not None else b""
            finish(key, members)
        except (tarfile.TarError, EOFError, OSError) as e:
            finish(key, members)
            report.add(shard, key or SPLIT_LEVEL, f"tar unreadable after {res.samples} samples: {e}")
        reader.drain()
    res.size, res.md5 = reader.size, reader.md5.hexdigest()
    return report, res


def _read_json(url: str, storage: sfs.StorageOptions | None, report: VerifyReport, name: str) -> Any:
    try:
        return json.loads(sfs.read_bytes(url, storage))
    except FileNotFoundError:
        report.add(name, SPLIT_LEVEL, "missing")
    except (ValueError, UnicodeDecodeError) as e:
        report.add(name, SPLIT_LEVEL, f"does not parse: {e}")
    return None


def verify_split(
    split_url: str, *, storage: sfs.StorageOptions | None = None, decode: bool = True
) -> VerifyReport:
    """Check every shard and split file of ``split_url`` (see the module docstring); never raises on bad data.

    Returns a :class:`VerifyReport` with totals (shards, samples, frames) and every problem found.
    """
    report = VerifyReport(split_url)
    split = split_name(split_url)
    index = _read_json(sfs.join(split_url, SHARDINDEX_FILE), storage, report, SHARDINDEX_FILE)
    if index is None:
        return report
    if (
        not isinstance(index, dict)
        or index.get("__kind__") != WIDS_KIND
        or not isinstance(index.get("shardlist"), list)
    ):
        report.add(SHARDINDEX_FILE, SPLIT_LEVEL, f"not a {WIDS_KIND} index with a shardlist")
        return report
    names = set(sfs.listdir(split_url, storage))
    listed: list[tuple[str, int]] = []
    results: dict[str, _ShardResult] = {}
    seen_keys: dict[str, str] = {}
    for i, entry in enumerate(index["shardlist"]):
        try:
            name, nsamples = str(entry["url"]), int(entry["nsamples"])
            filesize, md5 = int(entry["filesize"]), str(entry["md5sum"])
        except (KeyError, TypeError, ValueError) as e:
            report.add(SHARDINDEX_FILE, SPLIT_LEVEL, f"shardlist[{i}] malformed: {e!r}")
            continue
        if name != shard_name(split, i):
            report.add(
                SHARDINDEX_FILE, SPLIT_LEVEL, f"shardlist[{i}] is {name!r}, expected {shard_name(split, i)!r}"
            )
        listed.append((name, nsamples))
        if name not in names:
            report.add(name, SPLIT_LEVEL, "shard file missing")
            continue
        report.shards += 1
        try:
            if stats_name(split, shard_index_of(name)) not in names:
                report.add(
                    name, SPLIT_LEVEL, f"no {stats_name(split, shard_index_of(name))} (shard incomplete)"
                )
        except ValueError:
            pass
        _, res = verify_shard(
            sfs.join(split_url, name), storage=storage, decode=decode, report=report, seen_keys=seen_keys
        )
        results[name] = res
        report.samples += res.samples
        report.frames += res.frames
        if res.size != filesize:
            report.add(name, SPLIT_LEVEL, f"size {res.size} != index filesize {filesize}")
        if res.md5 != md5:
            report.add(name, SPLIT_LEVEL, f"md5 {res.md5} != index md5sum {md5}")
        if res.samples != nsamples:
            report.add(name, SPLIT_LEVEL, f"tar holds {res.samples} samples, index nsamples is {nsamples}")
    listed_names = {n for n, _ in listed}
    for n in sorted(names):
        if n.endswith(".tar") and n.startswith(f"{split}-") and n not in listed_names:
            report.add(n, SPLIT_LEVEL, f"shard not listed in {SHARDINDEX_FILE}")

    expected_sizes = dict(listed)
    sizes = _read_json(sfs.join(split_url, SIZES_FILE), storage, report, SIZES_FILE)
    if sizes is not None and sizes != expected_sizes:
        report.add(
            SIZES_FILE, SPLIT_LEVEL, f"{sizes} disagrees with {SHARDINDEX_FILE} counts {expected_sizes}"
        )
    captions = _read_json(sfs.join(split_url, CAPTIONS_FILE), storage, report, CAPTIONS_FILE)
    if captions is not None:
        if not isinstance(captions, dict) or set(captions) != listed_names:
            report.add(
                CAPTIONS_FILE,
                SPLIT_LEVEL,
                f"shards {sorted(captions) if isinstance(captions, dict) else '?'}"
                f" differ from {SHARDINDEX_FILE} {sorted(listed_names)}",
            )
        else:
            for name, res in results.items():
                if captions[name] != res.captions:
                    report.add(
                        CAPTIONS_FILE, SPLIT_LEVEL, f"caption counts of {name} differ from its samples' json"
                    )
    manifest = _read_json(sfs.join(split_url, MANIFEST_FILE), storage, report, MANIFEST_FILE)
    if manifest is not None:
        total = sum(expected_sizes.values())
        m = manifest if isinstance(manifest, dict) else {}
        checks = [
            (m.get("schema") == SCHEMA_VERSION, f"schema {m.get('schema')!r} != {SCHEMA_VERSION}"),
            (m.get("split") == split, f"split {m.get('split')!r} != {split!r}"),
            (m.get("shards") == len(listed), f"shards {m.get('shards')!r} != {len(listed)} listed"),
            (m.get("ok") == total, f"ok {m.get('ok')!r} != sum of nsamples {total}"),
            (
                isinstance(m.get("failed"), int) and m.get("inputs") == m.get("ok", 0) + m["failed"],
                f"inputs {m.get('inputs')!r} != ok {m.get('ok')!r} + failed {m.get('failed')!r}",
            ),
        ]
        for good, msg in checks:
            if not good:
                report.add(MANIFEST_FILE, SPLIT_LEVEL, msg)
    return report


def _missing_split(prog: str, url: str) -> str | None:
    """A one-line reason when a LOCAL split folder does not exist or holds no shards (a mistyped path)."""
    if "://" in url:
        return None
    if not os.path.isdir(url):
        return f"split folder {url!r} does not exist"
    if not any(n.endswith(".tar") or n == "shardindex.json" for n in os.listdir(url)):
        return f"split folder {url!r} has no shards (no *.tar, no shardindex.json)"
    return None
def add_source_check(
    report: VerifyReport, split_url: str, n: int, storage: sfs.StorageOptions | None = None
) -> None:
    """With ``n > 0``: :func:`shards.source_check.source_check` on ``n`` samples; its problems go to ``report``."""
    if n <= 0:
        return
    from shards.source_check import source_check

    checked, problems = source_check(split_url, n, storage)
    logger.info("source check: %d samples re-decoded from their sources", checked)
    for shard, key, msg in problems:
        report.add(shard, key, f"source check: {msg}")


def main(argv: list[str] | None = None) -> int:
    """CLI: verify ``ROOT/SPLIT``; print each problem and a summary; exit 0 if clean, 1 on any problem."""
    p = argparse.ArgumentParser(prog="nr-shards-verify", description=__doc__.split("\n")[0])
    p.add_argument(
        "split_url", help="split folder or URL, e.g. data/shards/train or s3://bucket/shards/train"
    )
    p.add_argument("--no-decode", action="store_true", help="parse JPEG headers only (faster)")
    p.add_argument("--endpoint-url", help="S3 endpoint (default: AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL)")
    import nrconfig  # here, not at import time: shard readers never load the config machinery

    nrconfig.add_version(p)
    p.add_argument("--source-check", type=int, default=0, metavar="N",
                   help="also re-decode N random samples from their sources and compare (shards.source_check)")
    args = p.parse_args(argv)
    problem = _missing_split(p.prog, args.split_url)
    if problem:
        return nrconfig.cli_error(p.prog, problem)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    storage = sfs.StorageOptions(endpoint_url=args.endpoint_url) if args.endpoint_url else None
    try:
        report = verify_split(args.split_url, storage=storage, decode=not args.no_decode)
        add_source_check(report, args.split_url, args.source_check, storage)
    except OSError as e:
        sys.stderr.write(f"nr-shards-verify: error: {e}\n")
        return 1
    for prob in report.problems:
        sys.stdout.write(f"PROBLEM {prob}\n")
    sys.stdout.write(report.summary() + ("" if report.ok else "  FAILED") + "\n")
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
