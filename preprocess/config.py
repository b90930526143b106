"""PreprocessConfig: the settings of one shard job, loaded from YAML with ``--key value`` CLI overrides.

Example ``configs/preprocess/msrvtt.yaml``::

    dataset: msrvtt
    anno_path: data/msrvtt/MSRVTT_data.json
    video_root: data/msrvtt/videos
    split: test
    out: s3://bucket/msrvtt        # or a local folder
    num_frames: 12

CLI: ``python -m preprocess --config X.yaml --num_workers 4 --out /data/shards`` (``--key=value`` works too; keys
may use ``-`` or ``_``; ``--storage.endpoint_url URL`` sets a storage field).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

import yaml

from preprocess.decode import BACKENDS
from shards.fs import StorageOptions
from shards.schema import SAMPLERS

__all__ = ["ConfigError", "PreprocessConfig", "load_config", "parse_overrides"]


class ConfigError(ValueError):
    """A preprocessing setting is missing, unknown or invalid; the message names it."""


@dataclass
class PreprocessConfig:
    """Settings of one shard job (see docs in the fields' comments)."""

    dataset: str = ""  # msrvtt | msvd | didemo | activitynet | csv | jsonl
    anno_path: str = ""  # annotation file (or folder, per reader)
    video_root: str = ""  # folder the annotation's video paths resolve against
    split: str = "train"
    out: str = ""  # output root: local folder or s3://bucket/prefix; shards go to {out}/{split}/
    video_ext: str = ".mp4"
    storage: StorageOptions = field(default_factory=StorageOptions)
    num_workers: int = 2  # decoding processes
    shard_size: int = 100  # inputs per shard (shard i holds inputs [i*shard_size, (i+1)*shard_size))
    num_frames: int = 12  # T frames per sample
    sampler: str = "uniform"  # uniform | fps | head
    fps: float = 1.0  # frames per second for the fps sampler
    frame_size: int = 224  # S: short side resized to S, centre crop S x S
    jpeg_quality: int = 90
    decoder: str = "decord"  # decord (ffmpeg fallback on failure) | ffmpeg
    job_index: int = 0  # this job writes shards i with i % num_jobs == job_index
    num_jobs: int = 1
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


_FIELDS = {f.name: f for f in dataclasses.fields(PreprocessConfig)}
_STORAGE_FIELDS = {f.name: f for f in dataclasses.fields(StorageOptions)}


def _coerce(name: str, value: Any, default: Any) -> Any:
    """Convert a YAML/CLI value to the type of the field's default."""
    if value is None:
        return None
    try:
        if isinstance(default, bool):
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if isinstance(default, int):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if isinstance(default, float):
            return float(value)
        if isinstance(default, str):
            return str(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"preprocess config: {name} = {value!r} is not a valid {type(default).__name__}") from exc
    return value


def _apply(cfg: PreprocessConfig, key: str, value: Any, source: str) -> None:
    key = key.replace("-", "_")
    if key.startswith("storage."):
        sub = key.split(".", 1)[1]
        if sub not in _STORAGE_FIELDS:
            raise ConfigError(f"{source}: unknown storage option {sub!r} (known: {', '.join(_STORAGE_FIELDS)})")
        default = getattr(StorageOptions(), sub)
        setattr(cfg.storage, sub, _coerce(key, value, default) if default is not None else value)
        return
    if key not in _FIELDS:
        raise ConfigError(f"{source}: unknown preprocess option {key!r} (known: {', '.join(_FIELDS)})")
    if key == "storage":
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: storage must be a mapping, got {type(value).__name__}")
        for k, v in value.items():
            _apply(cfg, f"storage.{k}", v, source)
        return
    setattr(cfg, key, _coerce(key, value, getattr(PreprocessConfig(), key)))


def parse_overrides(argv: list[str]) -> list[tuple[str, str]]:
    """``["--a", "1", "--b=2"]`` -> ``[("a", "1"), ("b", "2")]``; raises :class:`ConfigError` on stray words."""
    out: list[tuple[str, str]] = []
    i = 0
    while i < len(argv):
        tok = argv[i]
        if not tok.startswith("--") or len(tok) < 3:
            raise ConfigError(f"unexpected argument {tok!r}: overrides look like --key value or --key=value")
        if "=" in tok:
            k, v = tok[2:].split("=", 1)
            i += 1
        else:
            if i + 1 >= len(argv):
                raise ConfigError(f"override {tok} has no value")
            k, v = tok[2:], argv[i + 1]
            i += 2
        out.append((k, v))
    return out


def load_config(path: str | None = None, overrides: list[tuple[str, Any]] | None = None) -> PreprocessConfig:
    """Defaults <- YAML file ``path`` <- ``overrides``; relative paths in the YAML stay relative to the CWD."""
    cfg = PreprocessConfig(storage=StorageOptions())
    if path:
        if not os.path.isfile(path):
            raise ConfigError(f"config file not found: {path}")
        with open(path, encoding="utf-8") as f:
            try:
                data = yaml.safe_load(f) or {}
            except yaml.YAMLError as exc:
                raise ConfigError(f"{path}: invalid YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
        for k, v in data.items():
            _apply(cfg, str(k), v, path)
    for k, v in overrides or []:
        _apply(cfg, k, v, "command line")
    return cfg.validate()
