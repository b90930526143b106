"""The streaming reader: shards (local or ``s3://``) -> training/eval batches, deterministic and resumable.

How it runs. :func:`build_loader` reads the split's ``sizes.json`` (and ``captions.json`` for
``caption_mode="all"``) once, and for each epoch computes the pure plan (:mod:`shards.plan`). Each DataLoader
worker executes its slot of the plan: it opens the slot's shards in order, walks the tar headers, reads the bytes
only of the samples it still has to deliver (others are skipped by seeking, never decoded; shards with nothing left
are not opened), reorders the raw samples into the plan's shuffle-buffer order, and only then decodes, transforms,
tokenises and collates whole batches. The DataLoader collects batches from its workers round robin, which is the
plan's per-rank order, so the batch sequence does not depend on worker timing.

Frames on the way (``convert_in="main"``, the default). A worker decodes each JPEG straight into a uint8 "wire"
batch ``[B,T,H,W,3]`` in shared memory (HWC, the decoder's layout; 1.8 MB per 12x224x224 clip instead of 7.2 MB of
float) and the main process converts it into the output ``[B,T,3,H,W]`` (float normalised or uint8) while the
worker decodes the next batch, see :func:`shards.transforms.frames_from_hwc`. Buffers are reused instead of
being allocated (and page-faulted) per batch, safely:

* wire buffers: the main process creates a small ring of shared buffers per worker (``prefetch_factor + 2``
  batches each; the workers inherit them, so only a tag crosses the process boundary per batch) and keeps them
  for later epochs. After converting batch n of slot k it writes n+1 into a shared release table; a worker
  refills a slot only after reading that release (else it allocates a fresh buffer that travels with the
  batch), so a worker never writes into a buffer the main process may still read. A set is reused by a later
  iteration only after the iteration that used it completed (its workers have exited). Wire buffers never
  reach the caller. Shared memory held per worker: ``(prefetch_factor + 2) * B*T*H*W*3`` bytes.
* output buffers: numpy-backed, reused only when nothing but the pool references the array (every tensor, view,
  storage or ``.numpy()`` made from a batch keeps it alive), so a batch the caller still holds is never
  overwritten. At most ``output_buffers`` are kept, for the loader's lifetime (later epochs reuse them; call
  :meth:`ShardLoader.release_buffers` to drop them and the idle wire buffers). With ``pin_memory`` (and CUDA)
  outputs come from torch's caching pinned allocator instead.

``convert_in="worker"`` converts in the worker into fresh shared memory (the output then crosses the process
boundary at full size): use it when the main process is the bottleneck, e.g. many workers feeding float batches.

Resume. The state is ``{epoch, batches delivered by this rank}`` (plus the layout it is valid for). Batches of a
rank alternate between workers, so the count fixes how many batches each worker delivered; a restored loader
rotates the worker roles so that DataLoader worker 0 plays the worker that owns the next batch, and every worker
skips exactly its delivered units before any decoding.

Elastic resume. The state also carries the run's *canonical layout* (world size, workers per rank and per-rank
batch of the run's first start), kept across any number of resumes. Every epoch is planned in that layout
(:func:`shards.plan.make_plan`); a loader whose own layout differs executes it re-laid out by
:func:`shards.plan.elastic_plan`, so every global step of every epoch holds the units (and augmentation draws) of
the uninterrupted run. See docs/cluster.md, "Elastic resume".

Corrupt data. Under ``on_error="skip"`` a missing shard, a truncated tar, a sample without ``txt`` or frames, a
corrupt JPEG or JSON is counted (see :meth:`ShardLoader.stats`) and logged at a limited rate; its batch row is
filled with the worker's previous good sample marked ``is_pad`` (a blank row when there is none), so every rank
still delivers exactly ``len(loader)`` batches and DDP cannot hang. Under ``"raise"`` the first problem stops the
epoch with a :class:`shards.errors.ShardDataError` naming the shard URL and the sample key.

NEVER pass this loader (or its DataLoader) through ``accelerator.prepare``: for an IterableDataset accelerate
either dispatches batches from rank 0 (``dispatch_batches=True``) or wraps it in ``IterableDatasetShard``, which
splits the stream across ranks a second time; with our plan, which already gives each rank its own units, data would
be silently dropped or read world_size times (docs/design-notes.md §0.4, accelerate#3547/#4075). Prepare only the model,
optimizer and scheduler, move batches to ``accelerator.device`` yourself, and register this loader with
``accelerator.register_for_checkpointing(loader)`` for mid-epoch resume.
"""

from __future__ import annotations

import json
import logging
import mmap
import sys
import tarfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from shards import fs as sfs
from shards.errors import ERROR_KINDS, ErrorCounter, ShardDataError
from shards.plan import (
    CAPTION_MODES,
    EpochPlan,
    Unit,
    elastic_plan,
    make_plan,
    mix_seed,
    worker_batches_consumed,
)
from shards.retry import ShardUnavailableError
from shards.s3 import DEFAULT_BLOCK_SIZE, open_shard, read_remote_bytes, register_gopen, retry_count
from shards.schema import CAPTIONS_FILE, SIZES_FILE, is_frame_member, stats_name
from shards.transforms import (
    Tokenizer,
    decode_jpeg,
    default_tokenizer,
    frames_from_hwc,
    frames_to_hwc,
    jpeg_size,
    parse_meta,
    sample_augment,
    select_frames,
)

__all__ = [
    "LoaderConfig",
    "ShardLoader",
    "build_loader",
    "iter_tar_samples",
    "resolve_shards",
    "STATE_VERSION",
    "canonical_layout",
    "canonical_plan",
]

log = logging.getLogger(__name__)

STATE_VERSION = 1
_ERRORS_KEY = "__errors__"
_WIRE_KEY = "__wire__"
CONVERT_IN = ("main", "worker")
_LAYOUT_KEYS = ("world_size", "workers", "batch_size")
_RING_SPARE = 2  # wire buffers per worker beyond prefetch_factor (fewer only cost fresh allocations)


@dataclass
class LoaderConfig:
    """Everything the reader needs. Either ``root`` + ``split`` or an explicit ``urls`` list."""

    root: str | None = None  # dataset root (local folder or s3://bucket/prefix); shards in {root}/{split}/
    split: str = "train"  # split folder and shard-name prefix
    # explicit shard URLs (any fsspec URL; brace patterns such as train-{000000..000099}.tar are expanded)
    # instead of root+split; each folder's sizes.json lists its shards
    urls: list[str] | None = None
    batch_size: int = 32  # per rank
    num_workers: int = 2  # DataLoader workers per rank (0 = read in the main process)
    num_frames: int = 12  # T: frames per clip (fewer in the shard -> zero padding + frame_mask 0)
    max_words: int = 32  # L: text length incl. SOT and EOT
    frame_size: int | tuple[int, int] = 224  # output H, W (an int means square)
    # "float" (x/255, normalised with CLIP mean/std if normalize) or "uint8". For GPU training prefer "uint8" and
    # normalise on the device (4x fewer bytes to move); float costs the main process one conversion pass per clip.
    output: str = "float"
    convert_in: str = "main"  # where the uint8 wire batch becomes the output: "main" process | "worker"
    output_buffers: int = 2  # output batches kept for reuse in the main process (0: allocate every batch)
    normalize: bool = True  # CLIP mean/std normalisation of float output
    augment: bool = False  # random crop/flip/colour, same ops for every frame of a clip, seeded
    caption_mode: str = "random"  # random: one per video per epoch | all: every caption once | first: primary
    shuffle: bool = True  # shard-order permutation per epoch + shuffle buffer (eval: False)
    shuffle_buffer: int = 256  # units held (undecoded) by each worker's shuffle buffer
    seed: int = 0
    drop_last: bool = False  # True: drop the tail instead of padding (never uneven across ranks either way)
    on_error: str = "skip"  # "skip" (count, log, fill the row) | "raise"
    storage: sfs.StorageOptions | None = None  # S3 endpoint/credentials (defaults: AWS env vars)
    cache_dir: str | None = None  # download S3 shards whole into this folder, then read locally
    retries: int = 5  # retries in a row per remote file (deadline/timeout: storage.deadline, request_timeout)
    read_block_size: int = DEFAULT_BLOCK_SIZE  # bytes per S3 range request
    prefetch_factor: int = 2  # batches prefetched per worker
    pin_memory: bool = False
    mp_context: str | None = None  # DataLoader multiprocessing context (None = platform default)

    def frame_hw(self) -> tuple[int, int]:
        if isinstance(self.frame_size, int):
            return (self.frame_size, self.frame_size)
        h, w = self.frame_size
        return (int(h), int(w))

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad field."""
        if not self.urls and not self.root:
            raise ValueError("LoaderConfig needs root (+ split) or urls")
        if self.caption_mode not in CAPTION_MODES:
            raise ValueError(f"caption_mode must be one of {CAPTION_MODES}, got {self.caption_mode!r}")
        if self.output not in ("uint8", "float"):
            raise ValueError(f"output must be 'uint8' or 'float', got {self.output!r}")
        if self.convert_in not in CONVERT_IN:
            raise ValueError(f"convert_in must be one of {CONVERT_IN}, got {self.convert_in!r}")
        if self.on_error not in ("skip", "raise"):
            raise ValueError(f"on_error must be 'skip' or 'raise', got {self.on_error!r}")
        for name in ("batch_size", "num_frames", "read_block_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_words < 2:
            raise ValueError(f"max_words must be >= 2, got {self.max_words}")
        if self.num_workers < 0 or self.shuffle_buffer < 0 or self.retries < 0 or self.output_buffers < 0:
            raise ValueError("num_workers, shuffle_buffer, retries and output_buffers must be >= 0")
        if min(self.frame_hw()) < 1:
            raise ValueError(f"frame_size must be positive, got {self.frame_size}")


# -- shard list -------------------------------------------------------------------------------------------------


def _read_json(
    url: str, storage: sfs.StorageOptions | None, retries: int = 5, *, missing_ok: bool = False
) -> Any:
    """Parse an index file (local or remote; remote reads under the retry policy of :mod:`shards.s3`). Every
    error names the URL; ``missing_ok`` returns None for a file that does not exist."""
    try:
        if sfs.protocol(url) == "file":
            with open(url[len("file://") :] if url.startswith("file://") else url, "rb") as f:
                data = f.read()
        else:
            data = read_remote_bytes(url, storage, retries=retries)
    except FileNotFoundError as e:
        if missing_ok:
            return None
        raise FileNotFoundError(f"index file not found: {url}") from e
    except ShardUnavailableError:
        raise
    except OSError as e:
        raise OSError(f"cannot read index file {url}: {e}") from e
    try:
        return json.loads(data.decode("utf-8"))
    except ValueError as e:
        raise ValueError(f"{url} is not valid JSON: {e}") from e


def resolve_shards(cfg: LoaderConfig) -> tuple[list[str], list[int], list[list[int]] | None]:
    """``(shard URLs, samples per shard, captions per sample per shard or None)`` from the split's index files.

    Caption counts come from ``captions.json`` or, when it is absent, from each shard's ``stats.json``; they are
    required only for ``caption_mode="all"``.
    """
    if cfg.urls:
        urls = sfs.expand_urls(cfg.urls)
    else:
        split_url = sfs.join(cfg.root or "", cfg.split)
        sizes = _read_json(sfs.join(split_url, SIZES_FILE), cfg.storage, cfg.retries)
        if not isinstance(sizes, dict) or not sizes:
            raise ValueError(
                f"{sfs.join(split_url, SIZES_FILE)} must be a non-empty object of shard -> count"
            )
        urls = [sfs.join(split_url, name) for name in sorted(sizes)]
    folders: dict[str, tuple[dict, dict | None]] = {}
    sizes_out: list[int] = []
    caps_out: list[list[int]] | None = [] if cfg.caption_mode == "all" else None
    for url in urls:
        if url.startswith("pipe:"):
            raise ValueError(f"pipe: URLs are not accepted: {url!r}")
        folder, name = url.rsplit("/", 1) if "/" in url else (".", url)
        if folder not in folders:
            sizes = _read_json(sfs.join(folder, SIZES_FILE), cfg.storage, cfg.retries)
            captions = None
            if caps_out is not None:
                captions = _read_json(
                    sfs.join(folder, CAPTIONS_FILE), cfg.storage, cfg.retries, missing_ok=True
                )
            folders[folder] = (sizes, captions)
        sizes, captions = folders[folder]
        if name not in sizes:
            raise ValueError(f"shard {url} is not listed in {sfs.join(folder, SIZES_FILE)}")
        n = int(sizes[name])
        sizes_out.append(n)
        if caps_out is not None:
            if captions is not None and name in captions:
                counts = [int(c) for c in captions[name]]
            else:
                stem = name[: -len(".tar")]
                split, idx = stem.rsplit("-", 1)
                stats_url = sfs.join(folder, stats_name(split, int(idx)))
                counts = [int(c) for c in _read_json(stats_url, cfg.storage, cfg.retries).get("captions", [])]
            if len(counts) != n:
                raise ValueError(f"{url}: {n} samples in sizes.json but {len(counts)} caption counts")
            caps_out.append(counts)
    return urls, sizes_out, caps_out


# -- tar reading ----------------------------------------------------------------------------------------------


def _split_name(name: str) -> tuple[str, str]:
    """webdataset's rule: key = path up to the first dot of the basename, extension = the rest, lower-cased."""
    folder, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


_BLOCK = 512


def _header_fields(block: bytes) -> tuple[str, int, bytes]:
    """``(name, size, typeflag)`` of a USTAR/GNU tar header block; ``tarfile.ReadError`` if it is damaged."""
    stored = block[148:156].split(b"\0", 1)[0].strip()
    try:
        checksum = int(stored or b"0", 8)
        size_field = block[124:136]
        if size_field[0] & 0x80:  # GNU base-256 size
            size = int.from_bytes(size_field[1:], "big")
        else:
            size = int(size_field.split(b"\0", 1)[0].strip() or b"0", 8)
    except ValueError as e:
        raise tarfile.ReadError(f"bad tar header: {e}") from None
    if checksum != sum(block) - sum(block[148:156]) + 8 * 32:
        raise tarfile.ReadError("tar header checksum mismatch")
    name = block[0:100].split(b"\0", 1)[0]
    if block[257:262] == b"ustar":
        prefix = block[345:500].split(b"\0", 1)[0]
        if prefix:
            name = prefix + b"/" + name
    return name.decode("utf-8", "surrogateescape"), size, block[156:157]


def _iter_tar_members(f) -> Iterator[tuple[str, int, Callable[[], bytes]]]:
    """Yield ``(name, size, read)`` for each regular file of a tar stream; ``read()`` returns the data, and data
    not read is skipped (by seeking when the stream is seekable). GNU long names and pax ``path`` are honoured.

    Raises ``tarfile.ReadError`` for a damaged header or data cut short; a stream ending on a member boundary
    without the two zero blocks simply ends (callers compare sample counts with ``sizes.json``).
    """
    seekable = f.seekable()
    pos = f.tell() if seekable else 0
    long_name: str | None = None
    while True:
        block = f.read(_BLOCK)
        if len(block) == 0:
            return
        if len(block) < _BLOCK:
            raise tarfile.ReadError("unexpected end of data (truncated header)")
        if block == b"\0" * _BLOCK:
            return
        name, size, kind = _header_fields(block)
        data_start = pos + _BLOCK
        padded = (size + _BLOCK - 1) // _BLOCK * _BLOCK
        state = {"read": False}

        def read(size: int = size, name: str = name, state: dict = state) -> bytes:
            data = f.read(size)
            if len(data) != size:
                raise tarfile.ReadError(f"unexpected end of data in {name!r}")
            state["read"] = True
            return data

        if kind in (b"L", b"x"):  # GNU long name / pax extended header for the next member
            data = read()
            if kind == b"L":
                long_name = data.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            else:
                for rec in data.decode("utf-8", "surrogateescape").splitlines():
                    _, _, kv = rec.partition(" ")
                    if kv.startswith("path="):
                        long_name = kv[len("path=") :]
        elif kind in (b"0", b"\0", b"7"):
            yield (long_name or name), size, read
            long_name = None
        else:
            long_name = None
        next_pos = data_start + padded
        if seekable:
            f.seek(next_pos)
        else:
            remaining = padded - (size if state["read"] else 0)
            while remaining > 0:
                chunk = f.read(min(remaining, 1 << 20))
                if not chunk:
                    raise tarfile.ReadError(f"unexpected end of data in {name!r}")
                remaining -= len(chunk)
        pos = next_pos


def iter_tar_samples(
    fileobj, wanted: Callable[[int], bool], last_wanted: int | None = None
) -> Iterator[tuple[int, str, dict[str, bytes] | None]]:
    """Yield ``(ordinal, key, members)`` for each sample of a tar, grouping contiguous members by key.

    ``members`` maps extension to bytes for samples where ``wanted(ordinal)`` holds, and is ``None`` for the
    others, whose data is never read (seekable inputs jump over it). Stops after sample ``last_wanted``.
    ``tarfile.ReadError`` propagates for a damaged or truncated tar. Keys follow webdataset: the member path up
    to the first dot of its basename; members named ``__*__`` are ignored.
    """
    ordinal, key, members, want = -1, None, {}, False
    for name, _size, read in _iter_tar_members(fileobj):
        k, ext = _split_name(name)
        if k.rpartition("/")[2].startswith("__"):
            continue
        if k != key:
            if key is not None:
                yield ordinal, key, (members if want else None)
                if last_wanted is not None and ordinal >= last_wanted:
                    return
            ordinal, key, members = ordinal + 1, k, {}
            want = wanted(ordinal)
        if want and ext not in members:
            members[ext] = read()
    if key is not None:
        yield ordinal, key, (members if want else None)


# -- one worker's slot ----------------------------------------------------------------------------------------


@dataclass
class _Raw:
    url: str
    key: str
    members: dict[str, bytes]


@dataclass
class _Failed:
    kind: str


def _alloc(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """Uninitialised tensor; in a DataLoader worker it lives in shared memory (no copy on transfer)."""
    if get_worker_info() is None:
        return torch.empty(shape, dtype=dtype)
    numel = 1
    for d in shape:
        numel *= d
    try:  # what torch's default_collate does: allocate straight in shared memory
        storage = torch.UntypedStorage._new_shared(numel * dtype.itemsize)
    except (AttributeError, RuntimeError):  # pragma: no cover - private API moved
        return torch.empty(shape, dtype=dtype).share_memory_()
    return torch.empty(0, dtype=dtype).set_(storage).view(shape)


class _WireSet:
    """The uint8 wire batches of one iteration: ``buffers[p][k]`` ``[B,T,H,W,3]`` for producer ``p`` (DataLoader
    worker) and ring slot ``k``, plus the release table ``release[p, k]``. Created by the main process (in shared
    memory when there are workers, which inherit or receive them with the dataset) and reused for later epochs."""

    def __init__(self, producers: int, slots: int, shape: tuple[int, ...], shared: bool) -> None:
        self.key = (producers, slots, shape, shared)
        self.release = torch.zeros((producers, slots), dtype=torch.int64)
        self.buffers = [
            [torch.empty(shape, dtype=torch.uint8) for _ in range(slots)] for _ in range(producers)
        ]
        if shared:
            self.release.share_memory_()
            for row in self.buffers:
                for buf in row:
                    buf.share_memory_()

    def reset(self) -> None:
        """Forget all releases: only valid when no producer of an earlier iteration can still write."""
        self.release.zero_()


class _WireRing:
    """One producer's view of a :class:`_WireSet`: batch ``n`` goes to slot ``n % K``.

    ``release`` (int64 [K], shared with the consumer) holds, per slot, ``n + 1`` for the last batch ``n`` the
    consumer has finished with. A slot's buffer is refilled only if it is unused in this iteration or the consumer
    released the batch it carried; otherwise the batch goes into a freshly allocated buffer that travels with it
    (never a wait, never a write into memory the consumer may still read).
    """

    def __init__(self, buffers: list[torch.Tensor], release: torch.Tensor, producer: int) -> None:
        self.buffers, self.release, self.producer = buffers, release, producer
        self.last = [-1] * len(buffers)  # batch that last used each slot in this iteration
        self.seq = 0
        self.fresh = 0  # batches that needed a fresh buffer (for the debug log)

    def take(self) -> tuple[torch.Tensor, tuple[int, int, int]]:
        """``(buffer, tag)``; ``tag = (producer, slot, seq)``, slot -1 for a fresh buffer."""
        k = self.seq % len(self.buffers)
        n, self.seq = self.seq, self.seq + 1
        if self.last[k] < 0 or int(self.release[k]) == self.last[k] + 1:
            self.last[k] = n
            return self.buffers[k], (self.producer, k, n)
        self.fresh += 1
        return _alloc(tuple(self.buffers[k].shape), torch.uint8), (self.producer, -1, n)


class _SlotReader:
    """Executes slot ``(rank, worker)`` of an epoch plan from batch ``first_batch`` of that worker on.

    With ``convert_in="main"`` it yields batches tagged with ``_WIRE_KEY``: the frames are in the tagged ring
    buffer (or, for slot -1, in the batch's ``frames``) for the main process to convert and release; with
    ``"worker"`` the batch carries the final output.
    """

    def __init__(
        self,
        cfg: LoaderConfig,
        plan: EpochPlan,
        urls: list[str],
        tokenizer: Tokenizer,
        rank: int,
        worker: int,
        first_batch: int,
        ring: _WireRing,
    ) -> None:
        self.cfg, self.plan, self.urls, self.tokenizer = cfg, plan, urls, tokenizer
        self.rank, self.worker, self.first_batch = rank, worker, first_batch
        self.ring = ring
        self.errors = ErrorCounter(log, cfg.on_error)
        self.replaced = 0
        self._retries_seen = retry_count()

    # raw stream in read order -------------------------------------------------------------------------------
    def _reads(self, units: list[Unit], needed: set[int]) -> list[tuple[int, dict[int, list[int]]]]:
        """Group the slot's units into shard reads: ``[(shard, {sample ordinal: [unit idx, ...]})]``."""
        reads: list[tuple[int, dict[int, list[int]]]] = []
        prev_shard, prev_sample = None, -1
        for i, u in enumerate(units):
            if prev_shard != u.shard or u.sample < prev_sample:
                reads.append((u.shard, {}))
            prev_shard, prev_sample = u.shard, u.sample
            if i in needed:
                reads[-1][1].setdefault(u.sample, []).append(i)
        return [r for r in reads if r[1]]

    def _raw_stream(self, units: list[Unit], needed: set[int]) -> Iterator[tuple[int, _Raw | _Failed]]:
        cfg = self.cfg
        for shard, by_sample in self._reads(units, needed):
            url = self.urls[shard]
            seen: set[int] = set()
            fail_kind = "truncated_tar"
            try:
                with open_shard(
                    url,
                    cfg.storage,
                    retries=cfg.retries,
                    cache_dir=cfg.cache_dir,
                    block_size=cfg.read_block_size,
                ) as f:
                    for ordinal, key, members in iter_tar_samples(f, by_sample.__contains__, max(by_sample)):
                        if members is None:
                            continue
                        seen.add(ordinal)
                        item: _Raw | _Failed = _Raw(url, key, members)
                        if "txt" not in members or not any(is_frame_member(m) for m in members):
                            have = ", ".join(sorted(members))
                            self.errors.report(
                                "missing_members", url, key, f"needs txt and fNNN.jpg, has [{have}]"
                            )
                            item = _Failed("missing_members")
                        for idx in by_sample[ordinal]:
                            yield idx, item
                missing = sorted(set(by_sample) - seen)
                if missing:
                    self.errors.report(
                        "truncated_tar",
                        url,
                        None,
                        f"tar ended before sample #{missing[0]} ({len(missing)} missing)",
                    )
            except ShardDataError:
                raise
            except (FileNotFoundError, ShardUnavailableError) as e:  # absent, or unreachable in the deadline
                fail_kind = "missing_shard"
                self.errors.report("missing_shard", url, None, str(e))
            except (tarfile.ReadError, EOFError) as e:
                self.errors.report("truncated_tar", url, None, f"after {len(seen)} samples: {e}")
            except OSError as e:
                fail_kind = "read_error"
                self.errors.report("read_error", url, None, str(e))
            for ordinal in sorted(set(by_sample) - seen):
                for idx in by_sample[ordinal]:
                    yield idx, _Failed(fail_kind)

    # decode ------------------------------------------------------------------------------------------------
    def _decode(self, unit: Unit, raw: _Raw, position: int, out: torch.Tensor) -> dict[str, Any] | None:
        cfg = self.cfg
        try:
            txt, captions, meta = parse_meta(raw.members)
        except (ValueError, UnicodeDecodeError) as e:
            self.errors.report("corrupt_json", raw.url, raw.key, str(e))
            return None
        if cfg.caption_mode == "all":
            if unit.caption >= len(captions):
                self.errors.report(
                    "corrupt_json",
                    raw.url,
                    raw.key,
                    f"caption #{unit.caption} planned, sample has {len(captions)}",
                )
                return None
            ci, text = unit.caption, captions[unit.caption]
        elif cfg.caption_mode == "random":
            ci = unit.caption_seed % len(captions)
            text = captions[ci]
        else:
            ci, text = 0, txt
        names = select_frames(raw.members, cfg.num_frames)
        aug = None
        if cfg.augment:
            # the unit's coordinates in the canonical plan: the same draw under any (elastic) layout
            r0, w0, p0 = self.plan.augment_key(self.rank, self.worker, position)
            aug = sample_augment(mix_seed(cfg.seed, self.plan.epoch, r0, w0, p0, 0xA46))
        dst = out.numpy()  # [T,H,W,3] uint8: this sample's row of the wire batch
        name = names[0]
        try:
            if aug is None and jpeg_size(raw.members[name]) == dst.shape[1:3]:
                for i, name in enumerate(names):  # already the target size: decode in place, no copy
                    decode_jpeg(raw.members[name], dst[i])
                dst[len(names) :] = 0
            else:
                frames = []
                for name in names:
                    frames.append(decode_jpeg(raw.members[name]))
                name = ""
                frames_to_hwc(frames, dst, augment=aug)
        except ValueError as e:
            self.errors.report("corrupt_jpeg", raw.url, raw.key, f"{name}: {e}" if name else str(e))
            return None
        vid = meta.get("video_id", raw.key)
        return {
            "frames": out,
            "num_frames": len(names),
            "tokens": self._tokens(text),
            "key": raw.key.rpartition("/")[2],
            "video_id": str(vid),
            "caption_index": ci,
            "is_pad": unit.pad,
            "sample_index": unit.uid,
        }

    def _substitute(self, last_good: tuple[Unit, _Raw, int] | None, out: torch.Tensor) -> dict[str, Any]:
        """A padding row for a unit that could not be delivered: the last good sample again (decoded anew from
        its raw bytes into this row), else a blank row."""
        self.replaced += 1
        if last_good is not None:
            sample = self._decode(*last_good, out)
            if sample is not None:
                return dict(sample, is_pad=True)
        out.zero_()
        return {
            "frames": out,
            "num_frames": 0,
            "tokens": self._tokens(""),
            "key": "",
            "video_id": "",
            "caption_index": -1,
            "is_pad": True,
            "sample_index": -1,
        }

    def _error_delta(self) -> dict[str, int]:
        out = self.errors.take()
        if self.replaced:
            out["replaced_units"] = self.replaced
            self.replaced = 0
        r = retry_count()
        if r != self._retries_seen:
            out["s3_retries"] = r - self._retries_seen
            self._retries_seen = r
        return out

    def _tokens(self, text: str) -> list[int]:
        """``[SOT] + bpe(text)[: L - 2] + [EOT]`` (what :func:`shards.transforms.tokenize` pads to L)."""
        tok = self.tokenizer
        return [tok.sot_token_id, *tok.encode(text)[: self.cfg.max_words - 2], tok.eot_token_id]

    def _finish(
        self, samples: list[dict[str, Any]], wire: torch.Tensor, tag: tuple[int, int, int] | None
    ) -> dict[str, Any]:
        """The batch dict (keys of :data:`shards.transforms.BATCH_KEYS`), built with one array per field."""
        cfg = self.cfg
        n = len(samples)
        if wire.shape[0] != n:
            raise RuntimeError(f"wire batch has {wire.shape[0]} rows for {n} samples")
        ids = np.zeros((n, cfg.max_words), dtype=np.int64)
        text_len = np.empty(n, dtype=np.int64)
        for i, s in enumerate(samples):
            tokens = s["tokens"]
            ids[i, : len(tokens)] = tokens
            text_len[i] = len(tokens)
        frames_n = np.array([s["num_frames"] for s in samples], dtype=np.int64)
        out: dict[str, Any] = {
            "frames": wire,
            "frame_mask": torch.from_numpy((np.arange(cfg.num_frames) < frames_n[:, None]).astype(np.int64)),
            "text_ids": torch.from_numpy(ids),
            "text_mask": torch.from_numpy((np.arange(cfg.max_words) < text_len[:, None]).astype(np.int64)),
            "keys": [s["key"] for s in samples],
            "video_ids": [s["video_id"] for s in samples],
            "caption_index": torch.tensor([s["caption_index"] for s in samples], dtype=torch.long),
            "is_pad": torch.tensor([s["is_pad"] for s in samples], dtype=torch.bool),
            "sample_index": torch.tensor([s["sample_index"] for s in samples], dtype=torch.long),
        }
        out[_ERRORS_KEY] = self._error_delta()
        if cfg.convert_in == "main":
            out[_WIRE_KEY] = tag
            if tag is not None and tag[1] >= 0:
                del out["frames"]  # the main process reads its own mapping of the ring buffer
            return out
        h, w = cfg.frame_hw()
        dtype = torch.uint8 if cfg.output == "uint8" else torch.float32
        dst = _alloc((len(samples), cfg.num_frames, 3, h, w), dtype)
        out["frames"] = frames_from_hwc(
            wire, out["frame_mask"], output=cfg.output, normalize=cfg.normalize, out=dst
        )
        if tag is not None and tag[1] >= 0:
            self.ring.release[tag[1]] = tag[2] + 1  # converted here: the wire buffer is free again
        return out

    def __iter__(self) -> Iterator[dict[str, Any]]:
        plan, bs = self.plan, self.plan.batch_size
        units = plan.slot_units(self.rank, self.worker)
        order = plan.slot_order(self.rank, self.worker)
        start = self.first_batch * bs
        remaining = order[start:]
        if not remaining:
            return
        needed = set(remaining)
        held: dict[int, _Raw | _Failed] = {}
        ptr = 0
        batch: list[dict[str, Any]] = []
        frames: torch.Tensor | None = None
        tag: tuple[int, int, int] | None = None
        last_good: tuple[Unit, _Raw, int] | None = None
        for idx, item in self._raw_stream(units, needed):
            held[idx] = item
            while ptr < len(remaining) and remaining[ptr] in held:
                i = remaining[ptr]
                got = held.pop(i)
                if frames is None:
                    frames, tag = self.ring.take()
                row = frames[len(batch)]
                sample = self._decode(units[i], got, start + ptr, row) if isinstance(got, _Raw) else None
                if sample is None:
                    sample = self._substitute(last_good, row)
                else:
                    last_good = (units[i], got, start + ptr)
                batch.append(sample)
                ptr += 1
                if len(batch) == bs:
                    yield self._finish(batch, frames, tag)
                    batch, frames, tag = [], None, None
        log.debug("slot (%d, %d): %d of %d batches needed a fresh wire buffer", self.rank, self.worker,
                  self.ring.fresh, self.ring.seq)  # fmt: skip
        if ptr != len(remaining):  # cannot happen: every needed unit is produced or marked failed
            raise RuntimeError(f"slot ({self.rank}, {self.worker}) delivered {ptr} of {len(remaining)} units")


class _EpochDataset(IterableDataset):
    """One rank's epoch as an IterableDataset of ready batches (use with ``batch_size=None``)."""

    def __init__(
        self,
        cfg: LoaderConfig,
        plan: EpochPlan,
        urls: list[str],
        tokenizer: Tokenizer,
        rank: int,
        start: int,
        wires: _WireSet,
    ) -> None:
        super().__init__()
        self.cfg, self.plan, self.urls, self.tokenizer = cfg, plan, urls, tokenizer
        self.rank, self.start = rank, start
        self.wires = wires  # buffers + release table per DataLoader worker (shared memory): see _WireRing

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        dl_worker = info.id if info is not None else 0
        w_count = self.plan.workers
        # Rotate roles on resume: DataLoader worker 0 must produce rank batch `start`, owned by worker start % W.
        worker = (dl_worker + self.start) % w_count
        first = worker_batches_consumed(self.start, worker, w_count)
        if first >= self.plan.worker_num_batches(worker):
            return iter(())
        return iter(
            _SlotReader(
                self.cfg, self.plan, self.urls, self.tokenizer, self.rank, worker, first,
                _WireRing(self.wires.buffers[dl_worker], self.wires.release[dl_worker], dl_worker),
            )
        )  # fmt: skip


# -- the loader -----------------------------------------------------------------------------------------------


def _shared_array(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """An array in anonymous MAP_SHARED memory: forking DataLoader workers does not make it copy-on-write, so
    the main process keeps writing into it without a page fault per page after every epoch's fork."""
    count = 1
    for d in shape:
        count *= d
    mem = mmap.mmap(-1, max(1, count * dtype.itemsize))
    return np.frombuffer(mem, dtype=dtype, count=count).reshape(shape)


class _BufferPool:
    """Output batch buffers reused once nothing outside the pool references them.

    Buffers are numpy arrays (see :func:`_shared_array`) handed out through ``torch.from_numpy``: the tensor's storage holds a reference to
    the array, and so does every view, storage, ``.numpy()`` array or DLPack capsule derived from it. A reference
    count of "the pool only" therefore proves that no batch the caller might still use shares the memory; such a
    buffer is handed out again, any other is left alone. The ``keep`` newest buffers are retained (an older one
    the caller still holds simply stops being the pool's).
    """

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self._arrays: list[np.ndarray] = []
        # read like an entry, so its reference count is the baseline of an unreferenced buffer
        self._probe = [np.empty(0)]
        self.reused = 0

    def get(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        np_dtype = np.dtype(np.uint8) if dtype == torch.uint8 else np.dtype(np.float32)
        if dtype not in (torch.uint8, torch.float32):
            raise ValueError(f"buffer dtype must be uint8 or float32, got {dtype}")
        free = sys.getrefcount(self._probe[0])
        for i in range(len(self._arrays)):
            if sys.getrefcount(self._arrays[i]) == free:
                if self._arrays[i].shape == shape and self._arrays[i].dtype == np_dtype:
                    self.reused += 1
                    return torch.from_numpy(self._arrays[i])
        arr = _shared_array(shape, np_dtype)
        if self.keep > 0:  # keep the newest: a buffer the caller holds on to must not block the pool for good
            self._arrays = [*self._arrays[-(self.keep - 1) :], arr] if self.keep > 1 else [arr]
        return torch.from_numpy(arr)

    def clear(self) -> None:
        """Drop the pool's references (buffers still held by the caller stay valid)."""
        self._arrays = []


class ShardLoader:
    """Iterable over one rank's batches for the current epoch; see the module docstring.

    ``len(loader)`` is the epoch's batches per rank (identical on every rank). ``state_dict()`` /
    ``load_state_dict()`` are the resume state (usable with ``accelerator.register_for_checkpointing``).
    """

    def __init__(
        self,
        cfg: LoaderConfig,
        *,
        rank: int,
        world_size: int,
        epoch: int = 0,
        state: dict | None = None,
        tokenizer: Tokenizer | None = None,
        canonical: dict[str, int] | None = None,
    ) -> None:
        cfg.validate()
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} out of range for world_size {world_size}")
        register_gopen()
        self.cfg, self.rank, self.world_size = cfg, rank, world_size
        self.workers = max(1, cfg.num_workers)
        self.urls, self.sizes, self.caption_counts = resolve_shards(cfg)
        self.tokenizer = tokenizer if tokenizer is not None else default_tokenizer()
        self.epoch = int(epoch)
        self._start = 0  # batch to resume from in the current epoch
        self._consumed = 0  # batches delivered in the current epoch
        self._plan: EpochPlan | None = None
        # elastic resume: layouts the current epoch ran under before this one, oldest first, each
        # {"world_size", "workers", "batch_size", "batches"} (batches: global steps done when it was left);
        # a record only: the plan follows from the canonical layout alone
        self._hops: list[dict[str, int]] = []
        # the run's canonical layout {"world_size", "workers", "batch_size"}: every epoch is planned in it
        self.canonical = self._checked_canonical(canonical if canonical is not None else self.layout())
        self._stats: Counter[str] = Counter({k: 0 for k in ERROR_KINDS})
        self._pool = _BufferPool(cfg.output_buffers)
        self._idle_wires: _WireSet | None = None
        if state is not None:
            self.load_state_dict(state)

    def layout(self) -> dict[str, int]:
        """This loader's own layout: ``{"world_size", "workers", "batch_size"}`` (per-rank batch)."""
        return {"world_size": self.world_size, "workers": self.workers, "batch_size": self.cfg.batch_size}

    def _checked_canonical(self, canonical: dict[str, Any]) -> dict[str, int]:
        """``canonical`` as ints, refused (ValueError) when malformed or when its global batch is not this
        loader's: an epoch planned in it could not keep its global steps."""
        try:
            out = {k: int(canonical[k]) for k in _LAYOUT_KEYS}
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(
                f"canonical layout {canonical!r}: needs integer {', '.join(_LAYOUT_KEYS)}"
            ) from e
        if min(out.values()) < 1:
            raise ValueError(f"canonical layout {out}: every value must be >= 1")
        g_canon, g_now = out["world_size"] * out["batch_size"], self.world_size * self.cfg.batch_size
        if g_canon != g_now:
            raise ValueError(
                f"cannot resume the loader with a different layout (global batch (world_size x batch_size): "
                f"canonical {g_canon} ({out['world_size']} x {out['batch_size']}) vs now {g_now} "
                f"({self.world_size} x {self.cfg.batch_size}); {self.world_size} ranks keep a global batch of "
                f"{g_canon} only when {self.world_size} divides it)"
            )
        return out

    def plan(self) -> EpochPlan:
        """The current epoch's plan (cached): :func:`~shards.plan.make_plan` in the canonical layout, re-laid out
        for this loader's layout by :func:`~shards.plan.elastic_plan` when the two differ (:func:`canonical_plan`)."""
        if self._plan is None or self._plan.epoch != self.epoch:
            self._plan = canonical_plan(self._base_plan, self.canonical, self.layout())
        return self._plan

    def _base_plan(self, world_size: int, workers: int, batch_size: int) -> EpochPlan:
        c = self.cfg
        return make_plan(
            seed=c.seed,
            epoch=self.epoch,
            world_size=world_size,
            workers=workers,
            batch_size=batch_size,
            shard_sizes=self.sizes,
            caption_counts=self.caption_counts,
            caption_mode=c.caption_mode,
            shuffle=c.shuffle,
            drop_last=c.drop_last,
            shuffle_buffer=c.shuffle_buffer,
        )

    def __len__(self) -> int:
        return self.plan().batches_per_rank

    def set_epoch(self, epoch: int) -> None:
        """Start epoch ``epoch`` (new shard order, captions, buffer order) from its first batch."""
        self.epoch, self._start, self._consumed = int(epoch), 0, 0
        self._hops = []  # the record of the interrupted epoch's layouts (the canonical layout stays)

    def _dataloader(self, dataset: _EpochDataset) -> DataLoader:
        c = self.cfg
        kw: dict[str, Any] = {}
        if c.num_workers > 0:
            kw = {"prefetch_factor": c.prefetch_factor, "persistent_workers": False}
            if c.mp_context:
                kw["multiprocessing_context"] = c.mp_context
        # batch_size=None: workers yield ready batches; in_order keeps the round-robin order of the plan.
        # Converting in the main process, we pin the output ourselves (pinning the wire batch would be a copy).
        pin = c.pin_memory and c.convert_in == "worker"
        return DataLoader(dataset, batch_size=None, num_workers=c.num_workers, pin_memory=pin, **kw)

    def _pinning(self) -> bool:
        return self.cfg.pin_memory and self.cfg.convert_in == "main" and torch.cuda.is_available()

    def _take_wires(self, plan: EpochPlan) -> _WireSet:
        """The wire buffers for a new iteration: the set of a completed earlier one when the layout matches
        (never one whose producers might still run, e.g. of an iteration abandoned half-way), else a new set."""
        c = self.cfg
        h, w = c.frame_hw()
        # a worker has at most prefetch_factor batches queued, one being filled and one being converted
        slots = max(1, c.prefetch_factor + _RING_SPARE) if c.num_workers > 0 else 1
        key = (max(1, c.num_workers), slots, (plan.batch_size, c.num_frames, h, w, 3), c.num_workers > 0)
        wires, self._idle_wires = self._idle_wires, None
        if wires is not None and wires.key == key:
            wires.reset()
            return wires
        return _WireSet(*key)

    def _convert(self, wire: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
        """The output frames of a wire batch (see the module docstring), in a reused or pinned buffer."""
        c = self.cfg
        b, t, h, w, _ = wire.shape
        dtype = torch.uint8 if c.output == "uint8" else torch.float32
        if self._pinning():
            out = torch.empty((b, t, 3, h, w), dtype=dtype, pin_memory=True)
        elif c.output_buffers > 0:
            out = self._pool.get((b, t, 3, h, w), dtype)
        else:
            out = None
        return frames_from_hwc(wire, frame_mask, output=c.output, normalize=c.normalize, out=out)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        plan = self.plan()
        start = self._start
        self._consumed = start
        c = self.cfg
        wires = self._take_wires(plan)
        dataset = _EpochDataset(c, plan, self.urls, self.tokenizer, self.rank, start, wires)
        source = iter(dataset) if c.num_workers == 0 else iter(self._dataloader(dataset))
        finished = False
        try:
            for batch in source:
                self._stats.update(batch.pop(_ERRORS_KEY, {}))
                tag = batch.pop(_WIRE_KEY, None)
                if tag is not None:
                    producer, slot, seq = tag
                    wire = batch["frames"] if slot < 0 else wires.buffers[producer][slot]
                    batch["frames"] = self._convert(wire, batch["frame_mask"])
                    if slot >= 0:
                        wires.release[producer, slot] = seq + 1  # converted: the worker may refill it now
                    del wire
                    if self._pinning():
                        for k, v in batch.items():
                            if isinstance(v, torch.Tensor) and k != "frames":
                                batch[k] = v.pin_memory()
                # counted before the caller sees the batch: a checkpoint taken while it is processed excludes it
                self._consumed += 1
                yield batch
            finished = True
        finally:
            if finished:  # every producer is done (the DataLoader joined its workers): reusable next epoch
                self._idle_wires = wires
        if self._consumed != plan.batches_per_rank:
            raise RuntimeError(
                f"rank {self.rank} delivered {self._consumed} batches, planned {plan.batches_per_rank}"
            )
        self._start = 0  # the epoch is complete; iterating again replays it from the start

    def release_buffers(self) -> None:
        """Drop the reusable output and idle wire buffers (batches the caller holds stay valid); they are
        allocated again by the next iteration."""
        self._pool.clear()
        self._idle_wires = None

    def stats(self) -> dict[str, int]:
        """Skipped data by kind (plus ``replaced_units`` rows filled by repeats and ``s3_retries``)."""
        return dict(self._stats)

    def state_dict(self) -> dict[str, Any]:
        """Resume state, JSON-safe (ints, strings, lists of dicts of ints): the epoch and batches delivered by this
        rank (= global steps done, identical on every rank), the layout it was made with, ``canonical``: the
        run's canonical layout (every epoch is planned in it), and ``elastic``: the earlier layouts of this epoch
        after an elastic resume (empty otherwise; a record, the plan does not need it)."""
        plan = self.plan()
        return {
            "version": STATE_VERSION,
            "epoch": self.epoch,
            "batches": self._consumed,
            "worker_batches": [
                worker_batches_consumed(self._consumed, w, self.workers) for w in range(self.workers)
            ],
            "rank": self.rank,
            "world_size": self.world_size,
            "workers": self.workers,
            "batch_size": self.cfg.batch_size,
            "seed": self.cfg.seed,
            "caption_mode": self.cfg.caption_mode,
            "num_units": plan.num_units,
            "elastic": [dict(h) for h in self._hops],
            "canonical": dict(self.canonical),
        }

    def layout_state(self) -> dict[str, Any]:
        """The state to save at an epoch boundary: no position, only what the next epoch needs to be planned
        like the uninterrupted run's (the canonical layout) and the checks of :meth:`load_state_dict`. Loading
        it starts the loader's epoch from its first batch."""
        return {
            "version": STATE_VERSION,
            "seed": self.cfg.seed,
            "caption_mode": self.cfg.caption_mode,
            "canonical": dict(self.canonical),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state`` (see :meth:`state_dict`; or :meth:`layout_state`: the loader's epoch from its
        first batch), also when it was saved with another world size or worker count (elastic resume): the
        saved canonical layout is adopted (:func:`canonical_layout`), so the rest of the interrupted epoch and
        every later epoch keep the uninterrupted run's global steps, which needs ``world_size * batch_size`` (the
        global batch) unchanged. Seed, caption mode and the data (``num_units``) must match."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"loader state version {state.get('version')!r} != {STATE_VERSION}")
        expect = {"seed": self.cfg.seed, "caption_mode": self.cfg.caption_mode}
        bad = {k: (state.get(k), v) for k, v in expect.items() if state.get(k) != v}
        g_now = self.cfg.batch_size * self.world_size
        if "batches" in state:
            g_saved = int(state["batch_size"]) * int(state["world_size"])
            if g_saved != g_now:
                bad["global batch (world_size x batch_size)"] = (g_saved, g_now)
        if bad:
            detail = ", ".join(f"{k}: saved {a!r} vs now {b!r}" for k, (a, b) in bad.items())
            raise ValueError(f"cannot resume the loader with a different layout ({detail})")
        canonical = self._checked_canonical(canonical_layout(state))
        if "batches" not in state:  # an epoch boundary (layout_state): only the canonical layout carries over
            self.canonical, self._hops, self._plan = canonical, [], None
            self._start = self._consumed = 0
            return
        self.epoch = int(state["epoch"])
        hops = [dict(h) for h in state.get("elastic", [])]
        batches = int(state["batches"])
        same = (int(state["world_size"]), int(state["workers"])) == (self.world_size, self.workers)
        if not same and batches > 0:
            hops.append(
                {
                    "world_size": int(state["world_size"]),
                    "workers": int(state["workers"]),
                    "batch_size": int(state["batch_size"]),
                    "batches": batches,
                }
            )
        previous = self.canonical
        self.canonical, self._hops, self._plan = canonical, hops, None
        if self.plan().num_units != state.get("num_units"):
            n = self.plan().num_units
            self.canonical, self._hops, self._plan = previous, [], None
            raise ValueError(
                f"cannot resume the loader with a different layout (num_units: saved {state.get('num_units')!r}"
                f" vs now {n!r})"
            )
        if not 0 <= batches <= len(self):
            raise ValueError(f"loader state has {batches} batches consumed, epoch has {len(self)}")
        self._start = self._consumed = batches


def build_loader(
    cfg: LoaderConfig,
    *,
    rank: int,
    world_size: int,
    epoch: int = 0,
    state: dict | None = None,
    tokenizer: Tokenizer | None = None,
    canonical: dict[str, int] | None = None,
) -> ShardLoader:
    """The rank's loader; see :class:`ShardLoader`. Never pass it through ``accelerator.prepare``.

    ``canonical``: the run's canonical layout (``{"world_size", "workers", "batch_size"}``, e.g. another loader's
    ``.canonical``) to plan every epoch in; default this loader's own layout. A ``state`` overrides it."""
    return ShardLoader(
        cfg,
        rank=rank,
        world_size=world_size,
        epoch=epoch,
        state=state,
        tokenizer=tokenizer,
        canonical=canonical,
    )


def canonical_layout(state: dict[str, Any]) -> dict[str, int]:
    """The canonical layout a loader state records: its ``canonical`` entry; for a state written before that
    entry existed, the layout the interrupted epoch started in (its first ``elastic`` record), else the saved
    layout itself."""
    if "canonical" in state:
        return dict(state["canonical"])
    first = state.get("elastic") or [state]
    try:
        return {k: int(first[0][k]) for k in _LAYOUT_KEYS}
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"loader state without a usable layout ({e!r}): keys {sorted(state)}") from e


def canonical_plan(
    make: Callable[[int, int, int], EpochPlan], canonical: dict[str, int], current: dict[str, int]
) -> EpochPlan:
    """The plan of one epoch for layout ``current`` in a run whose canonical layout is ``canonical`` (both
    ``{"world_size", "workers", "batch_size"}``); ``make(world_size, workers, batch_size)`` is
    :func:`shards.plan.make_plan` for the epoch.

    The same layout: ``make(canonical)``, exactly the plan of a run that never changed its layout. Another one:
    ``elastic_plan(make(canonical), 0, current)``: each global step holds the canonical plan's units, spread
    over the current ranks and workers (``ValueError`` when the current world size does not divide the global
    batch). A resumed loader starts that plan at its saved step; planning the whole epoch (``consumed=0``
    rather than the saved step, which would only turn the steps before it into unread placeholders) gives the
    same remaining batches and keeps a replay of the epoch correct."""
    base = make(canonical["world_size"], canonical["workers"], canonical["batch_size"])
    if (canonical["world_size"], canonical["workers"]) == (current["world_size"], current["workers"]):
        return base
    return elastic_plan(base, 0, world_size=current["world_size"], workers=current["workers"])
