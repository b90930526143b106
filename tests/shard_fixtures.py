"""Helpers that write small test splits with :class:`shards.writer.ShardWriter` plus the split index files
(``sizes.json``, ``captions.json``) from the writer's stats, so reader tests do not depend on ``shards.index``."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import simplejpeg

from shards import fs as sfs
from shards.writer import ShardWriter, encode_json

__all__ = ["SampleSpec", "make_jpeg", "write_split", "sample_key"]


def sample_key(shard: int, i: int) -> str:
    return f"s{shard:02d}_{i:03d}"


def make_jpeg(seed: int, size: int = 16) -> bytes:
    """A small smooth RGB JPEG (quality 90) that differs with ``seed``."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(1, 1, 3))
    yy, xx = np.mgrid[0:size, 0:size]
    img = (base + 4 * yy[..., None] + 2 * xx[..., None]) % 256
    return simplejpeg.encode_jpeg(np.ascontiguousarray(img.astype(np.uint8)), quality=90, colorspace="RGB")


@dataclass
class SampleSpec:
    """What the fixture wrote for one sample (in tar order)."""

    shard: int
    index: int
    key: str
    video_id: str
    captions: list[str]
    frames: list[bytes] = field(repr=False)


def write_split(
    root: str,
    split: str,
    shard_sizes: list[int],
    *,
    num_frames: int = 4,
    size: int = 16,
    captions_per_sample=lambda s, i: 1 + (s + i) % 3,
    frames_per_sample=None,
    corrupt: dict[tuple[int, int], str] | None = None,
    storage: sfs.StorageOptions | None = None,
) -> list[SampleSpec]:
    """Write shards ``{root}/{split}/{split}-NNNNNN.tar`` with ``shard_sizes[s]`` samples each.

    ``corrupt`` maps ``(shard, index)`` to ``"jpeg"`` (frame 1 is garbage), ``"no_txt"`` (the txt member is left
    out) or ``"json"`` (the json member is not JSON). Returns the specs of all samples in global tar order.
    """
    corrupt = corrupt or {}
    specs: list[SampleSpec] = []
    sizes: dict[str, int] = {}
    captions: dict[str, list[int]] = {}
    for s, n in enumerate(shard_sizes):
        with ShardWriter(root, split, s, storage=storage) as w:
            for i in range(n):
                key = sample_key(s, i)
                nf = frames_per_sample(s, i) if frames_per_sample else num_frames
                caps = [f"caption {j} of video {key}" for j in range(captions_per_sample(s, i))]
                frames = [make_jpeg(1000 * s + 10 * i + f, size) for f in range(nf)]
                members = {f"f{f:03d}.jpg": b for f, b in enumerate(frames)}
                members["txt"] = caps[0].encode()
                members["json"] = encode_json(
                    {
                        "schema": 1,
                        "video_id": f"vid_{key}",
                        "caption": caps[0],
                        "captions": caps,
                        "num_frames": nf,
                    }
                )
                kind = corrupt.get((s, i))
                if kind == "jpeg":
                    members["f001.jpg"] = b"\xff\xd8 this is not a jpeg"
                elif kind == "no_txt":
                    del members["txt"]
                elif kind == "json":
                    members["json"] = b"{not json"
                w.write(key, members)
                specs.append(SampleSpec(s, i, key, f"vid_{key}", caps, frames))
        assert w.stats is not None
        sizes[w.stats.shard] = w.stats.samples
        captions[w.stats.shard] = w.stats.captions
    split_url = sfs.join(root, split)
    sfs.write_bytes_atomic(sfs.join(split_url, "sizes.json"), json.dumps(sizes).encode(), storage)
    sfs.write_bytes_atomic(sfs.join(split_url, "captions.json"), json.dumps(captions).encode(), storage)
    return specs
