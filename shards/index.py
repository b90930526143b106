"""Split-level index files: ``sizes.json``, ``shardindex.json`` (wids v1), ``captions.json`` and ``manifest.json``.

Usage::

    python -m shards.index ROOT/SPLIT [--config job.json] [--allow-incomplete] [--endpoint-url URL]

:func:`build_index` reads every shard's ``stats.json`` and ``failures.jsonl`` (shards must be contiguous from
``000000``; a tar without ``stats.json`` is incomplete), hashes every tar (md5 + size, streamed) and writes the four
files atomically, ``manifest.json`` last. Works on local folders and ``s3://`` prefixes.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import os
import sys
import tarfile
from typing import Any

from shards import fs as sfs
from shards.schema import (
    MANIFEST_FILE,
    SCHEMA_VERSION,
    SHARDINDEX_FILE,
    SIZES_FILE,
    failures_name,
    frame_index,
    is_frame_member,
    shard_index_of,
    shard_name,
    stats_name,
)

__all__ = [
    "CAPTIONS_FILE",
    "WIDS_KIND",
    "ShardIndexError",
    "build_index",
    "list_shards",
    "file_md5",
    "estimate_jpeg_quality",
    "main",
]

logger = logging.getLogger(__name__)

CAPTIONS_FILE = "captions.json"
WIDS_KIND = "wids-shard-index-v1"
_CHUNK = 1 << 22

# IJG (libjpeg) standard luminance quantisation table, natural order; quality q scales it by
# s = 5000/q (q < 50) or 200 - 2q (q >= 50), in percent.
_IJG_LUMA = (
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99,
)  # fmt: skip


class ShardIndexError(RuntimeError):
    """A split that cannot be indexed (missing, non-contiguous or incomplete shards, inconsistent sidecars)."""


def split_name(split_url: str) -> str:
    """The split name: the last path component of ``split_url``."""
    name = split_url.rstrip("/").rsplit("/", 1)[-1]
    if not name:
        raise ValueError(f"cannot take a split name from {split_url!r}")
    return name


def list_shards(split_url: str, storage: sfs.StorageOptions | None = None) -> tuple[list[str], set[str]]:
    """Sorted shard names ``{split}-NNNNNN.tar`` under ``split_url`` and the set of all file names there."""
    split = split_name(split_url)
    names = sfs.listdir(split_url, storage)
    shards = []
    for n in names:
        if n.startswith(f"{split}-") and n.endswith(".tar") and not n.startswith("."):
            try:
                shard_index_of(n)
            except ValueError:
                continue
            shards.append(n)
    return sorted(shards, key=shard_index_of), set(names)


def file_md5(url: str, storage: sfs.StorageOptions | None = None) -> tuple[str, int]:
    """``(md5 hex digest, size in bytes)`` of a file, streamed in 4 MiB chunks."""
    fs, path = sfs.filesystem(url, storage)
    h = hashlib.md5()
    size = 0
    with fs.open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def estimate_jpeg_quality(jpeg: bytes) -> int | None:
    """The IJG quality (1..100) whose standard luminance table is closest to this JPEG's, or None.

    For a table scaled by ``s`` percent, ``Q[i] = clamp((base[i] * s + 50) // 100, 1, 255)``; we try every quality
    and return the one that reproduces the file's luminance table with the smallest absolute error (exact for
    files written by libjpeg/libjpeg-turbo/Pillow/simplejpeg with standard tables).
    """
    from PIL import Image

    try:
        with Image.open(io.BytesIO(jpeg)) as im:
            tables = getattr(im, "quantization", None)
    except Exception:  # noqa: BLE001 - undecodable header: no estimate
        return None
    if not tables or 0 not in tables or len(tables[0]) != 64:
        return None
    table = list(tables[0])
    best, best_err = None, None
    for q in range(1, 101):
        s = 5000 // q if q < 50 else 200 - 2 * q
        ref = [min(max((b * s + 50) // 100, 1), 255) for b in _IJG_LUMA]
        err = sum(abs(a - b) for a, b in zip(ref, table))
        if best_err is None or err < best_err:
            best, best_err = q, err
    return best


def _first_sample_settings(url: str, storage: sfs.StorageOptions | None) -> dict[str, Any]:
    """``num_frames``, ``frame_size`` ([h, w]) and ``jpeg_quality`` read from the first sample of a tar."""
    fs, path = sfs.filesystem(url, storage)
    members: dict[str, bytes] = {}
    key = None
    with fs.open(path, "rb") as f, tarfile.open(fileobj=f, mode="r|") as tar:
        for info in tar:
            if not info.isfile():
                continue
            base = info.name.rsplit("/", 1)[-1]
            k, _, ext = base.partition(".")
            if key is None:
                key = k
            elif k != key:
                break
            data = tar.extractfile(info)
            members[ext] = data.read() if data is not None else b""
    out: dict[str, Any] = {}
    meta: dict[str, Any] = {}
    if "json" in members:
        try:
            meta = json.loads(members["json"])
        except ValueError:
            meta = {}
    frames = sorted((frame_index(e), e) for e in members if is_frame_member(e))
    out["num_frames"] = meta.get("num_frames", len(frames) if frames else None)
    if "height" in meta and "width" in meta:
        out["frame_size"] = [meta["height"], meta["width"]]
    out["jpeg_quality"] = None
    if frames:
        first = members[frames[0][1]]
        out["jpeg_quality"] = estimate_jpeg_quality(first)
        if "frame_size" not in out:
            import simplejpeg

            try:
                h, w, _, _ = simplejpeg.decode_jpeg_header(first)
                out["frame_size"] = [h, w]
            except ValueError:
                pass
    out.setdefault("frame_size", None)
    return out


def _frame_size(value: Any) -> list[int]:
    if isinstance(value, int):
        return [value, value]
    if isinstance(value, list | tuple) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return [int(value[0]), int(value[1])]
    raise ValueError(f"config frame_size must be an int or [h, w], got {value!r}")


def build_index(
    split_url: str,
    *,
    storage: sfs.StorageOptions | None = None,
    config: dict | None = None,
    allow_incomplete: bool = False,
) -> dict:
    """Index the split at ``split_url`` (``ROOT/SPLIT``) and return the manifest dict.

    Writes ``sizes.json`` = ``{shard: nsamples}``, ``shardindex.json`` (wids v1: ``{"__kind__", "wids_version",
    "name", "shardlist": [{"url", "nsamples", "filesize", "md5sum"}]}``), ``captions.json`` = ``{shard: [caption
    count per sample]}`` and ``manifest.json`` = ``{"schema", "split", "shards", "inputs", "ok", "failed",
    "frames_per_sample", "frame_size": [h, w], "jpeg_quality", "config"}`` with ``ok = sum(nsamples)``,
    ``failed = number of failures.jsonl rows`` and ``inputs = ok + failed``.

    ``frames_per_sample``, ``frame_size`` and ``jpeg_quality`` come from ``config`` keys ``num_frames``,
    ``frame_size`` (int or [h, w]) and ``jpeg_quality``; absent keys are read from the first sample (its json,
    its first frame's header and quantisation table).

    Raises :class:`ShardIndexError` when there are no shards, shard numbers have a gap, a tar has no
    ``stats.json`` (unless ``allow_incomplete``: such shards, which must come last, are left out and logged) or a
    sidecar is unreadable or disagrees with ``stats.json``.
    """
    config = dict(config or {})
    split = split_name(split_url)
    shards, names = list_shards(split_url, storage)
    if not shards:
        raise ShardIndexError(f"no shards {split}-NNNNNN.tar under {split_url}")
    for i, name in enumerate(shards):
        if shard_index_of(name) != i:
            raise ShardIndexError(
                f"shards under {split_url} are not contiguous: {shard_name(split, i)} is missing (next is {name})"
            )
    for n in sorted(names):
        if n.endswith(".stats.json") and n[: -len(".stats.json")] + ".tar" not in names:
            raise ShardIndexError(f"{sfs.join(split_url, n)} has no tar {n[: -len('.stats.json')]}.tar")

    complete: list[str] = []
    for name in shards:
        idx = shard_index_of(name)
        if stats_name(split, idx) in names:
            if len(complete) != idx:
                raise ShardIndexError(
                    f"{sfs.join(split_url, name)} is complete but an earlier shard "
                    f"{shard_name(split, len(complete))} is not (no stats.json)"
                )
            complete.append(name)
        elif allow_incomplete:
            logger.warning(
                "skipping incomplete shard %s (no %s)", sfs.join(split_url, name), stats_name(split, idx)
            )
        else:
            raise ShardIndexError(
                f"shard {sfs.join(split_url, name)} is incomplete: no {stats_name(split, idx)} "
                "(rerun the shard job, or pass allow_incomplete)"
            )
    if not complete:
        raise ShardIndexError(f"no complete shard under {split_url}")

    sizes: dict[str, int] = {}
    captions: dict[str, list[int]] = {}
    shardlist: list[dict[str, Any]] = []
    failed = 0
    for name in complete:
        idx = shard_index_of(name)
        s_url = sfs.join(split_url, stats_name(split, idx))
        try:
            stats = json.loads(sfs.read_bytes(s_url, storage))
            nsamples = int(stats["samples"])
            n_failed = int(stats.get("failed", 0))
        except (ValueError, KeyError, TypeError) as e:
            raise ShardIndexError(f"{s_url}: unreadable stats ({type(e).__name__}: {e})") from None
        f_url = sfs.join(split_url, failures_name(split, idx))
        rows = 0
        if failures_name(split, idx) in names:
            for ln, line in enumerate(sfs.read_bytes(f_url, storage).decode("utf-8").splitlines(), start=1):
                if not line.strip():
                    continue
                try:
                    json.loads(line)
                except ValueError:
                    raise ShardIndexError(f"{f_url}, line {ln}: invalid JSON") from None
                rows += 1
        if rows != n_failed:
            raise ShardIndexError(f"{f_url} has {rows} rows but {s_url} says failed={n_failed}")
        failed += rows
        caps = stats.get("captions")
        if not (isinstance(caps, list) and len(caps) == nsamples and all(isinstance(c, int) for c in caps)):
            raise ShardIndexError(f"{s_url}: 'captions' must list one caption count per sample ({nsamples})")
        md5, size = file_md5(sfs.join(split_url, name), storage)
        sizes[name] = nsamples
        captions[name] = list(caps)
        shardlist.append({"url": name, "nsamples": nsamples, "filesize": size, "md5sum": md5})

    ok = sum(sizes.values())
    missing = [k for k in ("num_frames", "frame_size", "jpeg_quality") if config.get(k) is None]
    found: dict[str, Any] = {}
    if missing:
        first = next((e["url"] for e in shardlist if e["nsamples"] > 0), None)
        if first is not None:
            found = _first_sample_settings(sfs.join(split_url, first), storage)
    frame_size = config.get("frame_size", found.get("frame_size"))
    manifest = {
        "schema": SCHEMA_VERSION,
        "split": split,
        "shards": len(shardlist),
        "inputs": ok + failed,
        "ok": ok,
        "failed": failed,
        "frames_per_sample": config.get("num_frames", found.get("num_frames")),
        "frame_size": _frame_size(frame_size) if frame_size is not None else None,
        "jpeg_quality": config.get("jpeg_quality", found.get("jpeg_quality")),
        "config": config,
    }
    shardindex = {"__kind__": WIDS_KIND, "wids_version": 1, "name": split, "shardlist": shardlist}
    for fname, obj in (
        (SIZES_FILE, sizes),
        (SHARDINDEX_FILE, shardindex),
        (CAPTIONS_FILE, captions),
        (MANIFEST_FILE, manifest),
    ):
        sfs.write_bytes_atomic(sfs.join(split_url, fname), _pretty(obj), storage)
    logger.info("indexed %s: %d shards, %d samples, %d failed", split_url, len(shardlist), ok, failed)
    return manifest


def _pretty(obj: Any) -> bytes:
    return (json.dumps(obj, indent=1, sort_keys=False, ensure_ascii=False) + "\n").encode("utf-8")


def _load_config(path: str) -> dict:
    text = sfs.read_bytes(path).decode("utf-8")
    if path.endswith((".yaml", ".yml")):
        import yaml

        obj = yaml.safe_load(text)
    else:
        obj = json.loads(text)
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: config must be a mapping")
    return obj


def main(argv: list[str] | None = None) -> int:
    """CLI: index ``ROOT/SPLIT`` and print a one-line summary; exit 1 if the split cannot be indexed."""
    p = argparse.ArgumentParser(prog="nr-shards-index", description=__doc__.split("\n")[0])
    p.add_argument(
        "split_url", help="split folder or URL, e.g. data/shards/train or s3://bucket/shards/train"
    )
    p.add_argument("--config", help="JSON or YAML file of job settings stored in manifest.json's 'config'")
    p.add_argument(
        "--allow-incomplete", action="store_true", help="leave out trailing shards without stats.json"
    )
    p.add_argument("--endpoint-url", help="S3 endpoint (default: AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL)")
    import nrconfig  # here, not at import time: shard readers never load the config machinery

    nrconfig.add_version(p)
    args = p.parse_args(argv)
    if "://" not in args.split_url and not os.path.isdir(args.split_url):
        return nrconfig.cli_error(p.prog, f"split folder {args.split_url!r} does not exist")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    storage = sfs.StorageOptions(endpoint_url=args.endpoint_url) if args.endpoint_url else None
    try:
        config = _load_config(args.config) if args.config else None
        m = build_index(
            args.split_url, storage=storage, config=config, allow_incomplete=args.allow_incomplete
        )
    except (ShardIndexError, ValueError, OSError) as e:
        sys.stderr.write(f"nr-shards-index: error: {e}\n")
        return 1
    sys.stdout.write(
        f"{args.split_url}: shards={m['shards']} ok={m['ok']} failed={m['failed']} inputs={m['inputs']} "
        f"frames_per_sample={m['frames_per_sample']} frame_size={m['frame_size']} jpeg_quality={m['jpeg_quality']}\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
