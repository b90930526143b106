"""The search index: one safetensors file per shard ("part") plus a JSON manifest.

Layout of an index folder (local path or ``s3://``)::

    manifest.json                 format version, checkpoint hash, config, source, counts, dtype, parts
    parts/part-00007.safetensors  global [n, D], tokens [n, F, D], mask [n, F] uint8, weights [n, F],
                                  thumbs [n, h, w, 3] uint8; metadata "part": JSON {"rows": {keys, video_ids,
                                  captions}, "source": {checkpoint_sha256, dtype, similarity, shard, shard_md5,
                                  shard_bytes}} (one metadata key: safetensors orders several keys differently
                                  from run to run, which would break byte-identical resumed builds)
    bank.npy                      optional query-bank scores [n_bank, G] float32 (QB-Norm / inverted softmax)

Part ``i`` holds the videos of shard ``i`` of the split (sorted shard names), so a part's content depends only
on the checkpoint and that shard: a killed build that is resumed writes the same bytes. Each part is written as
one file published atomically (temp name + rename locally, one PUT on S3), so a part exists whole or not at
all. Under ``accelerate launch`` rank ``r`` writes the parts ``i % world == r``; rank 0 writes the manifest
after every part exists. Only safetensors, npy and JSON are written or read (nothing is unpickled).

Provenance: every part records what it was built from (its "source": checkpoint hash, dtype, similarity, the
shard's name, md5 and size), and the manifest repeats each part's source. A resumed build keeps an existing part
only when its source equals the one it would write now (otherwise a named error, or a re-encode with
``overwrite``); :func:`open_index` refuses a part whose source differs from the manifest's. So an index rebuilt
in place with another checkpoint, dtype or shard set is never a silent mix of old and new embeddings.

A remote index is read from a local download cache (:func:`local_copy`): each file is downloaded once, and a
cached file is reused only while the remote object's identity (size and ETag, or size and modification time
where the store has no ETag) is the one recorded when it was downloaded.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import io
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from shards import fs as sfs
from shards.schema import SHARDINDEX_FILE

__all__ = [
    "FORMAT_VERSION",
    "IndexError_",
    "part_name",
    "checkpoint_hash",
    "encode_part",
    "build_index",
    "Index",
    "open_index",
    "part_globals",
    "local_copy",
    "read_rows",
    "read_block",
    "part_sources",
    "default_cache_dir",
]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 2  # 2: parts carry their source (provenance) and the manifest repeats it
MANIFEST = "manifest.json"
BANK_FILE = "bank.npy"
THUMB_SIZE = 96  # longest thumbnail side in pixels
_DTYPES = {"float16": torch.float16, "float32": torch.float32}


class IndexError_(ValueError):
    """A malformed or inconsistent index folder (the message names the file and the problem)."""


def part_name(i: int) -> str:
    return f"parts/part-{i:05d}.safetensors"


def checkpoint_hash(ckpt: str) -> str:
    """sha256 of the checkpoint's weights file (``pytorch_model.bin`` in a folder, or the file itself)."""
    from training.checkpoint import MODEL_FILE

    file = os.path.join(ckpt, MODEL_FILE) if os.path.isdir(ckpt) else ckpt
    h = hashlib.sha256()
    with open(file, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def _thumbnail(frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The middle real frame of one clip as uint8 [h, w, 3], longest side THUMB_SIZE (or less).

    ``frames`` [F, 3, H, W] are the loader's output: uint8, or float normalised with CLIP mean/std (undone here).
    """
    from shards.transforms import CLIP_MEAN, CLIP_STD

    n = max(1, int(mask.sum()))
    x = frames[(n - 1) // 2].float()
    if frames.dtype != torch.uint8:
        mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
        std = torch.tensor(CLIP_STD).view(3, 1, 1)
        x = (x * std + mean) * 255.0
    h, w = x.shape[-2:]
    scale = min(1.0, THUMB_SIZE / max(h, w))
    if scale < 1.0:
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        x = torch.nn.functional.interpolate(x[None], size=size, mode="area")[0]
    return x.round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).contiguous()


def _shard_captions(url: str, storage: Any) -> dict[str, list[str]]:
    """key -> captions of every sample of one shard (read from the samples' JSON members)."""
    from shards.reader import iter_tar_samples
    from shards.transforms import parse_meta

    fs, path = sfs.filesystem(url, storage)
    out: dict[str, list[str]] = {}
    with fs.open(path, "rb") as f:
        for _i, key, members in iter_tar_samples(f, lambda _o: True):
            if members is None:
                continue
            try:
                _txt, captions, _meta = parse_meta(members)
            except (ValueError, UnicodeDecodeError):
                captions = []
            out[key] = [str(c) for c in captions]
    return out


@torch.no_grad()
def encode_part(
    model: Any, loader: Any, *, similarity: str, dtype: torch.dtype, device: Any
) -> dict[str, Any]:
    """Encode the videos of one shard's loader (caption mode ``first``, padding rows dropped).

    Returns tensors ``global`` [n, D] (L2-normalised: the first-stage cosine), ``tokens`` [n, F, D],
    ``mask`` [n, F], ``weights`` [n, F] (frame weights of the WTI similarity), ``thumbs`` [n, h, w, 3] and
    the lists ``keys``, ``video_ids``. ``similarity`` ``local``: the global embedding is the model's merged
    video token; ``pooled``: the mean of the real frames' tokens (the InfoNCE baseline's feature).
    """
    from training.losses.infonce import pool_video_mean
    from training.similarity import apply_token_weighting

    model.eval()
    keys: list[str] = []
    vids: list[str] = []
    parts: dict[str, list[torch.Tensor]] = {
        "global": [],
        "tokens": [],
        "mask": [],
        "weights": [],
        "thumbs": [],
    }
    seen: set[str] = set()
    for batch in loader:
        rows = [
            i
            for i, k in enumerate(batch["keys"])
            if not bool(batch["is_pad"][i]) and k not in seen and not seen.add(k)  # type: ignore[func-returns-value]
        ]
        if not rows:
            continue
        idx = torch.tensor(rows)
        frames = batch["frames"][idx]
        fmask = batch["frame_mask"][idx]
        tokens = model.encode_video(frames.to(device), fmask.to(device))
        w = apply_token_weighting(model.video_weight, tokens, fmask.to(device))
        if similarity == "pooled":
            g = pool_video_mean(tokens, fmask.to(device))
        else:
            g = model.merge_video(tokens, fmask.to(device))
        g = torch.nn.functional.normalize(g.float(), dim=-1)
        parts["global"].append(g.cpu().to(dtype))
        parts["tokens"].append(tokens.float().cpu().to(dtype))
        parts["mask"].append(fmask.cpu().to(torch.uint8))
        parts["weights"].append(w.float().cpu().to(dtype))
        parts["thumbs"].append(torch.stack([_thumbnail(frames[j], fmask[j]) for j in range(len(rows))]))
        keys += [batch["keys"][i] for i in rows]
        vids += [batch["video_ids"][i] for i in rows]
    out: dict[str, Any] = {k: torch.cat(v) for k, v in parts.items() if v}
    out["keys"], out["video_ids"] = keys, vids
    return out


def part_sources(
    shard_urls: list[str], *, checkpoint_sha256: str, dtype: str, similarity: str, storage: Any = None
) -> list[dict[str, Any]]:
    """What each part is built from: the checkpoint, stored dtype, similarity and its shard (part i = shard i).

    A shard is named by its file name plus its md5 and byte size from its split's ``shardindex.json`` (written by
    ``nr-shards-index``; read once per folder); a shard that file does not list gets its byte size from the store
    and md5 ``None``."""
    listed: dict[str, dict[str, tuple[Any, Any]]] = {}
    out = []
    for url in shard_urls:
        folder, name = url.rsplit("/", 1) if "/" in url else (".", url)
        if folder not in listed:
            try:
                index = json.loads(sfs.read_bytes(sfs.join(folder, SHARDINDEX_FILE), storage))
                rows = index.get("shardlist", []) if isinstance(index, dict) else []
                listed[folder] = {r.get("url"): (r.get("md5sum"), r.get("filesize")) for r in rows}
            except (FileNotFoundError, ValueError):
                listed[folder] = {}
        md5, size = listed[folder].get(name, (None, None))
        if size is None:
            fs, path = sfs.filesystem(url, storage)
            md5, size = None, fs.size(path)
        out.append(
            {
                "checkpoint_sha256": checkpoint_sha256,
                "dtype": dtype,
                "similarity": similarity,
                "shard": name,
                "shard_md5": md5,
                "shard_bytes": int(size),
            }
        )
    return out


def _source_diff(have: dict[str, Any] | None, want: dict[str, Any] | None) -> str:
    """Human-readable fields in which two part sources differ ('' when equal)."""
    if have == want:
        return ""
    if have is None or want is None:
        return "no recorded source (built by an older version)" if have is None else "unexpected source"
    keys = sorted(set(have) | set(want))
    return ", ".join(f"{k} {have.get(k)!r} != {want.get(k)!r}" for k in keys if have.get(k) != want.get(k))


def _part_meta(header: dict[str, Any], path: str) -> dict[str, Any]:
    """The part's metadata JSON ({"rows", "source"}) from a safetensors header."""
    raw = (header.get("__metadata__") or {}).get("part")
    if raw is None:
        raise IndexError_(f"{path}: no 'part' metadata (not an index part, or from an older version)")
    return json.loads(raw)


def _part_bytes(
    enc: dict[str, Any], captions: dict[str, list[str]], source: dict[str, Any] | None = None
) -> bytes:
    from safetensors.torch import save

    rows = {
        "keys": enc["keys"],
        "video_ids": enc["video_ids"],
        "captions": [captions.get(k, []) for k in enc["keys"]],
    }
    tensors = {k: enc[k].contiguous() for k in ("global", "tokens", "mask", "weights", "thumbs")}
    meta = {"rows": rows, "source": source}
    return save(tensors, metadata={"part": json.dumps(meta, sort_keys=True, ensure_ascii=False)})


@dataclass
class BuildReport:
    parts_written: int
    parts_skipped: int
    videos: int
    seconds: float


def build_index(
    *,
    out: str,
    shard_urls: list[str],
    make_loader: Callable[[str], Any],
    model: Any,
    similarity: str,
    dtype: str = "float16",
    device: Any = "cpu",
    rank: int = 0,
    world: int = 1,
    storage: Any = None,
    progress: Callable[[str], None] | None = None,
    sources: list[dict[str, Any]] | None = None,
    overwrite: bool = False,
) -> BuildReport:
    """Write this rank's parts (part i = shard i, i % world == rank) that are missing or built from another source.

    ``make_loader(url)`` returns an in-order eval loader over one shard. Progress lines give videos/s and ETA.
    ``sources[i]`` (:func:`part_sources`) is recorded in part i; an existing part is kept only when its recorded
    source equals ``sources[i]``. Every rank first checks every existing part (so all ranks agree): any that
    differs is an :class:`IndexError_` naming the first such part and the fields that differ, unless
    ``overwrite``, when those parts are encoded again.
    """
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    keep: set[int] = set()
    stale: list[tuple[str, str]] = []
    present = set(sfs.listdir(sfs.join(out, "parts"), storage))  # one listing, not a request per part
    for i in range(len(shard_urls)):
        url = sfs.join(out, part_name(i))
        if os.path.basename(part_name(i)) in present:
            meta = (_read_header(url, storage).get("__metadata__") or {}).get("part")
            have = json.loads(meta).get("source") if meta else None
            want = sources[i] if sources is not None else None
            if meta and not (diff := _source_diff(have, want)):
                keep.add(i)
            else:
                stale.append((url, diff if meta else "no recorded source (written by an older version)"))
    if stale and not overwrite:
        url, diff = stale[0]
        more = f" (and {len(stale) - 1} more parts)" if len(stale) > 1 else ""
        raise IndexError_(
            f"{url}: an existing part built from something else ({diff}){more}; "
            "use another --out, or --overwrite to encode them again"
        )
    mine = [i for i in range(len(shard_urls)) if i % world == rank]
    t0 = time.perf_counter()
    written = skipped = videos = 0
    for done, i in enumerate(mine):
        url = sfs.join(out, part_name(i))
        want = sources[i] if sources is not None else None
        if i in keep:
            skipped += 1
            continue
        enc = encode_part(
            model, make_loader(shard_urls[i]), similarity=similarity, dtype=_DTYPES[dtype], device=device
        )
        if not enc["keys"]:
            raise ValueError(f"{shard_urls[i]}: no samples could be read")
        data = _part_bytes(enc, _shard_captions(shard_urls[i], storage), want)
        sfs.write_bytes_atomic(url, data, storage)
        written += 1
        videos += len(enc["keys"])
        dt = time.perf_counter() - t0
        rate = videos / dt if dt > 0 else 0.0
        left = (len(mine) - done - 1) * (dt / max(written, 1))
        msg = f"part {i} ({len(enc['keys'])} videos): {written + skipped}/{len(mine)} parts, {rate:.1f} videos/s, ETA {left:.0f} s"
        if progress is not None:
            progress(msg)
        else:
            logger.info(msg)
    return BuildReport(written, skipped, videos, time.perf_counter() - t0)


def write_manifest(
    out: str,
    *,
    n_parts: int,
    info: dict[str, Any],
    storage: Any = None,
    sources: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Read every part's header, check it (and its source against ``sources[i]`` when given), and publish
    ``manifest.json`` (rank 0, after all parts exist)."""
    parts = []
    total = 0
    dims: tuple[int, ...] | None = None
    for i in range(n_parts):
        url = sfs.join(out, part_name(i))
        if not sfs.exists(url, storage):
            raise IndexError_(f"{url}: part missing (a rank did not finish); run nr-index again to resume")
        header = _read_header(url, storage)
        n = int(header["global"]["shape"][0])
        shape = tuple(header["tokens"]["shape"][1:])
        if dims is not None and shape != dims:
            raise IndexError_(f"{url}: token shape {shape} != {dims} of part 0")
        dims = shape
        source = _part_meta(header, url).get("source")
        if sources is not None and (diff := _source_diff(source, sources[i])):
            raise IndexError_(f"{url}: built from something else ({diff})")
        parts.append({"file": part_name(i), "videos": n, "source": source})
        total += n
    manifest = {
        "format_version": FORMAT_VERSION,
        "videos": total,
        "frames": dims[0] if dims else 0,
        "dim": dims[1] if dims else 0,
        "parts": parts,
        **info,
    }
    sfs.write_bytes_atomic(
        sfs.join(out, MANIFEST), (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode(), storage
    )
    return manifest


def _read_header(url: str, storage: Any) -> dict[str, Any]:
    """The JSON header of a safetensors file (8-byte little-endian length + JSON), read without the data."""
    fs, path = sfs.filesystem(url, storage)
    with fs.open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if not 2 <= n <= 1 << 28:
            raise IndexError_(f"{url}: not a safetensors file (header length {n})")
        try:
            return json.loads(f.read(n))
        except ValueError as e:
            raise IndexError_(f"{url}: bad safetensors header: {e}") from e


def save_bank(out: str, bank: np.ndarray, storage: Any = None) -> None:
    """Write the query-bank scores [n_bank, G] float32 as ``bank.npy`` (atomic)."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(bank, dtype=np.float32), allow_pickle=False)
    sfs.write_bytes_atomic(sfs.join(out, BANK_FILE), buf.getvalue(), storage)


@dataclass
class Index:
    """An opened index: global embeddings in RAM, token features memory-mapped per part.

    ``global_parts`` the parts' [n_i, D] global embeddings in the stored dtype (L2-normalised), memory-mapped
    (never concatenated: a 1M-video fp16 index keeps 1 GB on disk, not in RAM); ``keys``/``video_ids``/``captions``
    aligned with rows, ``offsets`` [n_parts + 1] first row of each part; ``local`` the folder the files are read
    from (a download cache for remote indexes). Tokens are read with :meth:`tokens` for given rows only.
    """

    root: str
    manifest: dict[str, Any]
    global_parts: list[np.ndarray]
    keys: list[str]
    video_ids: list[str]
    captions: list[list[str]]
    offsets: np.ndarray
    files: list[Any]
    bank: np.ndarray | None = None
    local: str = ""
    _key_row: dict[str, int] = dataclasses.field(default_factory=dict)

    @property
    def size(self) -> int:
        return len(self.keys)

    def tokens(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(tokens [n, F, D], mask [n, F], weights [n, F]) float32 of the given global rows, in that order.

        Only those rows are read from the parts (grouped by part, sorted within each; :func:`read_rows`)."""
        rows = np.asarray(rows, dtype=np.int64)
        f, d = int(self.manifest["frames"]), int(self.manifest["dim"])
        tok = np.empty((len(rows), f, d), dtype=np.float32)
        msk = np.empty((len(rows), f), dtype=np.int64)
        wts = np.empty((len(rows), f), dtype=np.float32)
        part = np.searchsorted(self.offsets, rows, side="right") - 1
        for p in np.unique(part):
            sel = np.nonzero(part == p)[0]
            local = rows[sel] - self.offsets[p]
            order = np.argsort(local, kind="stable")
            mm = self.files[p]
            tok[sel[order]] = read_rows(mm["tokens"], local[order])
            msk[sel[order]] = read_rows(mm["mask"], local[order])
            wts[sel[order]] = read_rows(mm["weights"], local[order])
        return torch.from_numpy(tok), torch.from_numpy(msk), torch.from_numpy(wts)

    def thumbnail(self, row: int) -> np.ndarray:
        """uint8 [h, w, 3] thumbnail of global row ``row``."""
        p = int(np.searchsorted(self.offsets, row, side="right") - 1)
        return np.asarray(self.files[p]["thumbs"][row - self.offsets[p]])


def read_rows(a: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``a[rows]`` for a memory-mapped ``[n, ...]`` tensor of a part, copied with ``pread`` (one call per run of
    consecutive rows; ``rows`` sorted ascending) instead of through the mapping.

    Why not plain fancy indexing on the memmap: each page fault on a mapped file makes the kernel also map up to
    64 KB of already-cached neighbouring pages (fault-around), which then count in the process's RSS. At 1M
    videos, 100 queries x 200 scattered candidates grew the searcher's RSS by 3.8 GB of token, mask and weight
    pages it never read (benchmarks/search.py); ``pread`` copies exactly the bytes asked for.
    """
    rows = np.asarray(rows, dtype=np.int64)
    if not isinstance(a, np.memmap) or len(rows) == 0:
        return np.asarray(a[rows])
    out = np.empty((len(rows), *a.shape[1:]), dtype=a.dtype)
    row_bytes = out[0].nbytes if len(out) else 0
    flat = memoryview(out.reshape(-1).view(np.uint8))
    # runs of consecutive rows: [starts[i], ends[i]) in ``rows`` positions
    breaks = np.nonzero(np.diff(rows) != 1)[0] + 1
    starts, ends = np.r_[0, breaks], np.r_[breaks, len(rows)]
    fd = os.open(a.filename, os.O_RDONLY)
    try:
        for i, j in zip(starts.tolist(), ends.tolist(), strict=True):
            want = (j - i) * row_bytes
            got = os.preadv(fd, [flat[i * row_bytes : j * row_bytes]], a.offset + int(rows[i]) * row_bytes)
            if got != want:
                raise IndexError_(f"{a.filename}: short read ({got} of {want} bytes): the part is truncated")
    finally:
        os.close(fd)
    return out


def read_block(a: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """``a[lo:hi]`` of a memory-mapped tensor, copied with ``pread`` (see :func:`read_rows`)."""
    return read_rows(a, np.arange(lo, min(hi, a.shape[0]), dtype=np.int64))


def _mmap_safetensors(path: str) -> dict[str, np.ndarray]:
    """Memory-map each tensor of a safetensors file as a read-only numpy array (no copy, nothing unpickled).

    Own code instead of ``safetensors.safe_open``: numpy memmaps allow fancy-indexing only the wanted rows of a
    tensor, which ``get_slice`` (contiguous slices) does not.
    """
    types = {"F16": np.float16, "F32": np.float32, "U8": np.uint8, "I64": np.int64}
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    out = {}
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        if spec["dtype"] not in types:
            raise IndexError_(f"{path}: tensor {name} has unsupported dtype {spec['dtype']}")
        a, b = spec["data_offsets"]
        shape = tuple(spec["shape"])
        dt = np.dtype(types[spec["dtype"]])
        if b - a != int(np.prod(shape)) * dt.itemsize:
            raise IndexError_(f"{path}: tensor {name} offsets do not match its shape")
        if b == a:
            out[name] = np.zeros(shape, dtype=dt)
        else:
            out[name] = np.memmap(path, dtype=dt, mode="r", offset=8 + n + a, shape=shape)
    out["__metadata__"] = header.get("__metadata__", {})  # type: ignore[assignment]
    return out


def default_cache_dir(root: str) -> str:
    """The download cache of the remote index ``root``: ``$NEIGHBORRETR_CACHE/index/<hash of root>``, where
    ``NEIGHBORRETR_CACHE`` defaults to ``$XDG_CACHE_HOME/neighborretr`` (``~/.cache/neighborretr``)."""
    base = os.environ.get("NEIGHBORRETR_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "neighborretr"
    )
    return os.path.join(base, "index", hashlib.sha256(root.rstrip("/").encode()).hexdigest()[:16])


def _remote_identity(info: dict[str, Any]) -> dict[str, Any]:
    """What identifies one version of a remote object: its size and ETag (S3, and stores that send one), else its
    size and modification time. A re-upload under the same name changes it."""
    etag = info.get("ETag") or info.get("etag") or info.get("md5Hash")
    if etag:
        return {"size": int(info["size"]), "etag": str(etag)}
    mtime = info.get("LastModified") or info.get("mtime") or info.get("updated") or info.get("last_modified")
    return {"size": int(info["size"]), "mtime": str(mtime)}


def local_copy(root: str, names: list[str], storage: Any = None, cache_dir: str | None = None) -> str:
    """The local folder holding the files ``names`` of the index at ``root``: ``root`` itself when local.

    For a remote index the files are downloaded into ``cache_dir`` (default :func:`default_cache_dir`), each
    published by rename with a ``NAME.source.json`` stamp of the remote object's identity. A cached file is reused
    only while the remote object still has that identity, so an index rebuilt under the same URL is downloaded
    again instead of being read stale. Downloads into one cache folder are serialised with a file lock (several
    processes opening the same index download each file once)."""
    if not sfs.is_remote(root):
        return root
    local = cache_dir or default_cache_dir(root)
    os.makedirs(local, exist_ok=True)
    fs, path = sfs.filesystem(root, storage)
    fs.invalidate_cache()  # object listings cached by fsspec would hide a re-upload
    with open(os.path.join(local, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for name in names:
            src = f"{path.rstrip('/')}/{name}"
            ident = _remote_identity(fs.info(src))
            dst = os.path.join(local, name)
            stamp = dst + ".source.json"
            if os.path.exists(dst) and os.path.exists(stamp):
                with open(stamp, encoding="utf-8") as f:
                    if json.load(f) == ident and os.path.getsize(dst) == ident["size"]:
                        continue
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            fs.get_file(src, dst + ".part")
            got = os.path.getsize(dst + ".part")
            if got != ident["size"]:
                raise IndexError_(f"{src}: downloaded {got} bytes, the store lists {ident['size']}")
            os.replace(dst + ".part", dst)
            with open(stamp + ".part", "w", encoding="utf-8") as f:
                json.dump(ident, f)
            os.replace(stamp + ".part", stamp)
    return local


def part_globals(
    out: str, n_parts: int, storage: Any = None, cache_dir: str | None = None
) -> list[np.ndarray]:
    """The memory-mapped [n_i, D] global embeddings of parts 0..n_parts-1 (before a manifest exists)."""
    local = local_copy(out, [part_name(i) for i in range(n_parts)], storage, cache_dir)
    return [_mmap_safetensors(os.path.join(local, part_name(i)))["global"] for i in range(n_parts)]


def open_index(root: str, storage: Any = None, cache_dir: str | None = None) -> Index:
    """Open an index folder; a remote index is first downloaded into ``cache_dir`` (:func:`local_copy`).

    Each part's recorded source must equal the manifest's entry for it (a part replaced after the manifest was
    written, e.g. by an interrupted rebuild with another checkpoint, is an :class:`IndexError_`)."""
    try:
        manifest = json.loads(sfs.read_bytes(sfs.join(root, MANIFEST), storage))
    except FileNotFoundError as e:
        raise IndexError_(f"{root}: no {MANIFEST} (not an index, or its build did not finish)") from e
    except ValueError as e:
        raise IndexError_(f"{sfs.join(root, MANIFEST)}: not valid JSON: {e}") from e
    if manifest.get("format_version") != FORMAT_VERSION:
        raise IndexError_(
            f"{root}: format version {manifest.get('format_version')!r}, expected {FORMAT_VERSION}"
        )
    names = [p["file"] for p in manifest["parts"]] + ([BANK_FILE] if manifest.get("bank") else [])
    names += [manifest["ann"]["file"]] if manifest.get("ann") else []
    local = local_copy(root, names, storage, cache_dir)
    files, keys, vids, caps, globals_, offsets = [], [], [], [], [], [0]
    for p in manifest["parts"]:
        path = os.path.join(local, p["file"])
        mm = _mmap_safetensors(path)
        meta = _part_meta(mm, path)
        rows = meta["rows"]
        if len(rows["keys"]) != int(p["videos"]) or mm["global"].shape[0] != int(p["videos"]):
            raise IndexError_(f"{path}: {len(rows['keys'])} rows, manifest says {p['videos']}")
        if diff := _source_diff(meta.get("source"), p.get("source")):
            raise IndexError_(f"{path}: not the part the manifest lists ({diff}); rebuild the index")
        files.append(mm)
        keys += rows["keys"]
        vids += rows["video_ids"]
        caps += rows["captions"]
        globals_.append(mm["global"])  # memory-mapped, stored dtype
        offsets.append(offsets[-1] + int(p["videos"]))
    bank = None
    if manifest.get("bank"):
        bank = np.load(os.path.join(local, BANK_FILE), mmap_mode="r", allow_pickle=False)
        if bank.shape[1] != len(keys):
            raise IndexError_(f"{BANK_FILE}: {bank.shape[1]} columns for {len(keys)} videos")
    idx = Index(
        root, manifest, globals_, keys, vids, caps, np.array(offsets, dtype=np.int64), files, bank, local
    )
    idx._key_row = {k: i for i, k in enumerate(keys)}
    return idx
