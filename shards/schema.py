"""Shard format v1: names, keys and the per-sample metadata schema.

Layout of one split (see docs/shard-format.md)::

    {root}/{split}/{split}-000000.tar            samples: {key}.f000.jpg ... {key}.f{T-1}.jpg, {key}.txt, {key}.json
    {root}/{split}/{split}-000000.stats.json     written last for a shard; its presence marks the shard complete
    {root}/{split}/{split}-000000.failures.jsonl one row per input that could not be turned into a sample
    {root}/{split}/sizes.json                    {"{split}-000000.tar": n, ...} (the file open_clip reads)
    {root}/{split}/shardindex.json               wids v1 index (nsamples, filesize, md5sum per shard)
    {root}/{split}/manifest.json                 totals (ok + failed = inputs) and the job's settings

Everything here is pure (no I/O) so that writer, reader, verifier and index agree by construction.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

__all__ = [
    "SCHEMA_VERSION",
    "KEY_PATTERN",
    "SAMPLE_JSON_FIELDS",
    "SAMPLE_JSON_OPTIONAL_FIELDS",
    "SAMPLERS",
    "SIZES_FILE",
    "SHARDINDEX_FILE",
    "MANIFEST_FILE",
    "CAPTIONS_FILE",
    "frame_member",
    "frame_index",
    "is_frame_member",
    "shard_name",
    "shard_stem",
    "shard_index_of",
    "stats_name",
    "failures_name",
    "make_key",
    "validate_key",
]

SCHEMA_VERSION = 1
KEY_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,99}$")
SAMPLERS = ("uniform", "fps", "head")

# Fields every sample's json carries (schema v1).
SAMPLE_JSON_FIELDS = (
    "schema",
    "dataset",
    "split",
    "video_id",
    "caption",
    "captions",
    "source",
    "start",
    "end",
    "frame_times",
    "src_fps",
    "width",
    "height",
    "num_frames",
    "sampler",
    "padded_frames",
)

# Optional fields (written by the shard job since the presentation-time work; readers must not require them):
# coded size, display rotation (counter-clockwise degrees), sample aspect ratio "N:D", the origin of
# frame_times ("first_shown_frame": 0 s = the first frame shown), the stream's own start time on the container
# clock (s) and the backend that decoded the frames.
SAMPLE_JSON_OPTIONAL_FIELDS = (
    "coded_width",
    "coded_height",
    "rotation",
    "sar",
    "time_origin",
    "stream_start_time",
    "decoder",
)

SIZES_FILE = "sizes.json"
SHARDINDEX_FILE = "shardindex.json"
MANIFEST_FILE = "manifest.json"
CAPTIONS_FILE = "captions.json"  # extension over the design card: caption counts per sample, for caption_mode "all"

_FRAME_RE = re.compile(r"^f(\d{3})\.jpg$")
_SHARD_RE = re.compile(r"^(?P<split>.+)-(?P<index>\d{6})\.tar$")


def frame_member(i: int) -> str:
    """Extension of frame ``i`` inside a sample: ``f000.jpg`` ... ``f999.jpg``."""
    if not 0 <= i < 1000:
        raise ValueError(f"frame index {i} out of range [0, 1000)")
    return f"f{i:03d}.jpg"


def is_frame_member(ext: str) -> bool:
    """True for a frame extension such as ``f007.jpg``."""
    return _FRAME_RE.match(ext) is not None


def frame_index(ext: str) -> int:
    """Inverse of :func:`frame_member`."""
    m = _FRAME_RE.match(ext)
    if m is None:
        raise ValueError(f"{ext!r} is not a frame member name (fNNN.jpg)")
    return int(m.group(1))


def shard_stem(split: str, index: int) -> str:
    """``{split}-{index:06d}``, the name shared by a shard and its sidecars."""
    if index < 0 or index > 999_999:
        raise ValueError(f"shard index {index} out of range")
    return f"{split}-{index:06d}"


def shard_name(split: str, index: int) -> str:
    """File name of shard ``index`` of ``split``: ``train-000012.tar``."""
    return shard_stem(split, index) + ".tar"


def shard_index_of(name: str) -> int:
    """Shard number from a shard file name (``train-000012.tar`` -> 12)."""
    m = _SHARD_RE.match(name.rsplit("/", 1)[-1])
    if m is None:
        raise ValueError(f"{name!r} is not a shard name ({{split}}-NNNNNN.tar)")
    return int(m.group("index"))


def stats_name(split: str, index: int) -> str:
    return shard_stem(split, index) + ".stats.json"


def failures_name(split: str, index: int) -> str:
    return shard_stem(split, index) + ".failures.jsonl"


def make_key(dataset: str, video_id: str, clip: int | None = None) -> str:
    """A stable sample key from dataset and video id: ``[A-Za-z0-9_-]``, no dots, < 100 chars.

    Characters outside the alphabet become ``_``; when that changes the id (non-ASCII names, dots, spaces) or the
    result is too long, an 8-hex-digit blake2 digest of the original id is appended so distinct ids stay distinct.
    Never uses ``hash()`` (randomised per process).
    """
    raw = f"{dataset}_{video_id}" if clip is None else f"{dataset}_{video_id}_{clip:03d}"
    ascii_id = unicodedata.normalize("NFKD", raw).encode("ascii", "ignore").decode("ascii")
    safe = re.sub(r"[^A-Za-z0-9_-]", "_", ascii_id)
    if safe != raw or len(safe) > 90:
        digest = hashlib.blake2s(raw.encode("utf-8"), digest_size=4).hexdigest()
        safe = f"{safe[:80]}_{digest}"
    validate_key(safe)
    return safe


def validate_key(key: str) -> None:
    """Raise ``ValueError`` naming the key if it breaks the key rules."""
    if not KEY_PATTERN.match(key):
        raise ValueError(f"invalid sample key {key!r}: must match [A-Za-z0-9_-]{{1,99}} (no dots)")
