"""PreprocessConfig: the settings of one shard job, loaded from YAML with ``key=value`` CLI overrides.

Example ``configs/preprocess/msrvtt.yaml``::

    dataset: msrvtt
    anno_path: data/msrvtt/MSRVTT_data.json
    video_root: data/msrvtt/videos
    split: test
    out: s3://bucket/msrvtt        # or a local folder
    num_frames: 12

CLI: ``nr-preprocess --config X.yaml num_workers=4 out=/data/shards`` (``storage.endpoint_url=URL`` sets a storage
field; the old ``--key value`` spelling still works, with a deprecation warning). Keys and types are checked by
:mod:`nrconfig` (OmegaConf); :meth:`PreprocessConfig.validate` checks the values.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import nrconfig
from nrconfig import ConfigError
from preprocess.decode import BACKENDS
from shards.fs import StorageOptions
from shards.schema import SAMPLERS

__all__ = ["ConfigError", "PreprocessConfig", "load_config", "parse_overrides"]


@dataclass
class PreprocessConfig:
    """Settings of one shard job (see docs in the fields' comments)."""

    dataset: str = ""  # msrvtt | msvd | didemo | activitynet | csv | jsonl
    anno_path: str = ""  # annotation file (or folder, per reader)
    video_root: str = ""  # folder the annotation's video paths resolve against
    split: str = "train"  # split to shard (the annotation's split name); shards go to {out}/{split}/
    out: str = ""  # output root: local folder or s3://bucket/prefix; shards go to {out}/{split}/
    video_ext: str = ".mp4"  # benchmark readers: video files are {video_root}/{video_id}{video_ext}
    storage: StorageOptions = field(default_factory=StorageOptions)
    num_workers: int = 2  # decoding processes
    shard_size: int = 100  # inputs per shard (shard i holds inputs [i*shard_size, (i+1)*shard_size))
    num_frames: int = 12  # T frames per sample
    sampler: str = "uniform"  # uniform | fps | head
    fps: float = 1.0  # frames per second for the fps sampler
    frame_size: int = 224  # S: short side resized to S, centre crop S x S
    jpeg_quality: int = 90  # JPEG quality 1..100 of the stored frames
    decoder: str = "decord"  # decord (ffmpeg fallback on failure) | ffmpeg
    job_index: int = 0  # this job writes shards i with i % num_jobs == job_index
    num_jobs: int = 1  # parallel jobs sharing this split (each with its own job_index)
    recycle_after: int = 100  # a worker process is replaced after this many videos (decord leaks memory)
    timeout: float = 120.0  # seconds per video; the worker is killed and the input recorded as failed
    build_index: bool = True  # single-machine job (num_jobs == 1): write sizes/shardindex/manifest at the end
    progress: bool = True  # tqdm progress bar
    packet_skip: bool = True  # H.264-in-MP4 fast path (preprocess/avc_packets.py): decode only needed packets

    def validate(self) -> PreprocessConfig:
        """Check every field; raise :class:`ConfigError` naming the first bad one."""
        for name in ("dataset", "anno_path", "out", "split"):
            if not getattr(self, name):
                raise ConfigError(f"preprocess config: {name!r} is required")
        from preprocess.annotations import DATASETS

        if self.dataset not in DATASETS:
            close = [d for d in DATASETS if d.lower() == self.dataset.lower()]
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(
                f"preprocess config: dataset {self.dataset!r} is not one of {', '.join(DATASETS)}{hint}"
            )
        positive = ("num_workers", "shard_size", "num_frames", "frame_size", "num_jobs", "recycle_after")
        for name in positive:
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"preprocess config: {name} must be >= 1, got {getattr(self, name)}")
        if self.num_frames > 1000:
            raise ConfigError(f"preprocess config: num_frames must be <= 1000, got {self.num_frames}")
        if self.sampler not in SAMPLERS:
            raise ConfigError(f"preprocess config: sampler {self.sampler!r} not in {SAMPLERS}")
        if self.decoder not in BACKENDS:
            raise ConfigError(f"preprocess config: decoder {self.decoder!r} not in {BACKENDS}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ConfigError(f"preprocess config: jpeg_quality must be in 1..100, got {self.jpeg_quality}")
        if not self.fps > 0:
            raise ConfigError(f"preprocess config: fps must be > 0, got {self.fps}")
        if not self.timeout > 0:
            raise ConfigError(f"preprocess config: timeout must be > 0, got {self.timeout}")
        if not 0 <= self.job_index < self.num_jobs:
            raise ConfigError(f"preprocess config: job_index {self.job_index} not in [0, num_jobs={self.num_jobs})")
        if "/" in self.split or self.split in (".", ".."):
            raise ConfigError(f"preprocess config: split {self.split!r} must be a plain name")
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (storage secrets dropped) for manifest.json and logs."""
        d = dataclasses.asdict(self)
        d["storage"] = {k: v for k, v in d["storage"].items() if k not in ("key", "secret")}
        return d


def _items(overrides: list[tuple[str, Any]] | list[str] | None) -> list[str] | dict[str, Any]:
    """Overrides as ``key=value`` strings, or ``(key, value)`` pairs (Python values kept as they are)."""
    if not overrides:
        return []
    if all(isinstance(o, str) for o in overrides):
        return [str(o) for o in overrides]
    tree: dict[str, Any] = {}
    for item in overrides:
        key, value = item.split("=", 1) if isinstance(item, str) else item
        node = tree
        parts = str(key).replace("-", "_").split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return tree


def parse_overrides(argv: list[str]) -> list[tuple[str, str]]:
    """``["num_workers=4", "--a", "1", "--b=2"]`` -> ``[("num_workers", "4"), ("a", "1"), ("b", "2")]`` (the
    ``--key value`` spellings are the old ones; the CLI warns about them)."""
    out: list[tuple[str, str]] = []
    i = 0
    while i < len(argv):
        tok = argv[i]
        if not tok.startswith("--") and "=" in tok:
            k, v = tok.split("=", 1)
            i += 1
        elif not tok.startswith("--") or len(tok) < 3:
            raise ConfigError(f"unexpected argument {tok!r}: overrides look like key=value")
        elif "=" in tok:
            k, v = tok[2:].split("=", 1)
            i += 1
        else:
            if i + 1 >= len(argv):
                raise ConfigError(f"override {tok} has no value")
            k, v = tok[2:], argv[i + 1]
            i += 2
        out.append((k.replace("-", "_"), v))
    return out


def load_config(
    path: str | None = None, overrides: list[tuple[str, Any]] | list[str] | None = None
) -> PreprocessConfig:
    """Defaults <- YAML file ``path`` (or the name of a shipped config: ``msrvtt`` is
    ``configs/preprocess/msrvtt.yaml``) <- ``overrides``, then :meth:`PreprocessConfig.validate`. Relative
    paths in the YAML stay relative to the CWD."""
    sources = [nrconfig.resolve_config_path(path, "preprocess")] if path else []
    return nrconfig.build(PreprocessConfig, *sources, overrides=_items(overrides)).validate()
