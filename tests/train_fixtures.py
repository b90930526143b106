"""Tiny learnable shards and configs for the trainer tests.

Each video is a 32x32 clip of a coloured square on a coloured background (the square moves one pixel per
frame); its caption names the two colours ("a red square on blue"), so a tiny random CLIP can learn to match
them. Splits are written with :class:`shards.writer.ShardWriter`; ``sizes.json`` and ``captions.json`` come
from the writer's stats (the same content ``shards.index.build_index`` produces) so these fixtures only need
the writer.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import simplejpeg

from shards import fs as sfs
from shards.writer import ShardWriter, encode_json

__all__ = [
    "COLOURS",
    "FRAME_SIZE",
    "NUM_FRAMES",
    "clip_frames",
    "write_split",
    "write_dataset",
    "tiny_config_text",
    "REPO",
    "run_cli",
]

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FRAME_SIZE = 32
NUM_FRAMES = 4
COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 200, 40),
    "blue": (30, 60, 220),
    "yellow": (230, 220, 40),
    "purple": (150, 40, 180),
    "orange": (240, 140, 20),
    "white": (240, 240, 240),
    "black": (15, 15, 15),
}


def clip_frames(
    fg: str, bg: str, offset: int, *, num_frames: int = NUM_FRAMES, size: int = FRAME_SIZE
) -> list[bytes]:
    """JPEG frames of a ``fg`` square (size/2) moving right over a ``bg`` background, starting at
    ``offset``."""
    frames = []
    side = size // 2
    for t in range(num_frames):
        img = np.empty((size, size, 3), dtype=np.uint8)
        img[:] = COLOURS[bg]
        x = (offset + t) % (size - side)
        img[side // 2 : side // 2 + side, x : x + side] = COLOURS[fg]
        frames.append(simplejpeg.encode_jpeg(np.ascontiguousarray(img), quality=90, colorspace="RGB"))
    return frames


def _pairs() -> list[tuple[str, str]]:
    names = list(COLOURS)
    return [(f, b) for f in names for b in names if f != b]  # 56 distinct (fg, bg) pairs


def write_split(
    root: str,
    split: str,
    items: list[tuple[str, str, int]],
    *,
    shard_size: int,
    captions_per_video: int = 1,
    storage: sfs.StorageOptions | None = None,
) -> str:
    """Write ``items`` = [(fg, bg, offset)] as shards of ``shard_size`` samples; returns the split URL.

    With ``captions_per_video`` > 1 each sample's json lists several captions (paraphrases of the same
    colours).
    """
    sizes: dict[str, int] = {}
    captions: dict[str, list[int]] = {}
    for s in range(0, len(items), shard_size):
        with ShardWriter(root, split, s // shard_size, storage=storage) as w:
            for i, (fg, bg, offset) in enumerate(items[s : s + shard_size]):
                key = f"{split}_{s + i:04d}"
                caps = [
                    f"a {fg} square on {bg}",
                    f"{fg} box over a {bg} background",
                    f"the {fg} block, {bg} behind",
                ]
                caps = caps[:captions_per_video]
                frames = clip_frames(fg, bg, offset)
                members = {f"f{f:03d}.jpg": b for f, b in enumerate(frames)}
                members["txt"] = caps[0].encode()
                members["json"] = encode_json(
                    {
                        "schema": 1,
                        "dataset": "tiny",
                        "split": split,
                        "video_id": f"v_{split}_{s + i:04d}",
                        "caption": caps[0],
                        "captions": caps,
                        "source": "synthetic",
                        "start": None,
                        "end": None,
                        "frame_times": [float(t) for t in range(NUM_FRAMES)],
                        "src_fps": 1.0,
                        "width": FRAME_SIZE,
                        "height": FRAME_SIZE,
                        "num_frames": NUM_FRAMES,
                        "sampler": "uniform",
                        "padded_frames": 0,
                    }
                )
                w.write(key, members)
        assert w.stats is not None
        sizes[w.stats.shard] = w.stats.samples
        captions[w.stats.shard] = w.stats.captions
    url = sfs.join(root, split)
    sfs.write_bytes_atomic(sfs.join(url, "sizes.json"), json.dumps(sizes).encode(), storage)
    sfs.write_bytes_atomic(sfs.join(url, "captions.json"), json.dumps(captions).encode(), storage)
    return url


def write_dataset(
    root: str,
    *,
    n_train: int = 48,
    n_val: int = 16,
    n_test: int = 16,
    shard_size: int = 12,
    test_captions: int = 2,
    storage: sfs.StorageOptions | None = None,
) -> str:
    """train/val/test splits under ``root`` (val 1:1, test multi-caption); returns ``root``."""
    rng = np.random.default_rng(0)
    pairs = _pairs()
    order = rng.permutation(len(pairs))
    train = [(*pairs[order[i % len(pairs)]], int(rng.integers(0, 8))) for i in range(n_train)]
    held = [pairs[order[(n_train + i) % len(pairs)]] for i in range(n_val + n_test)]
    val = [(f, b, int(rng.integers(0, 8))) for f, b in held[:n_val]]
    test = [(f, b, int(rng.integers(0, 8))) for f, b in held[n_val:]]
    write_split(root, "train", train, shard_size=shard_size, storage=storage)
    write_split(root, "val", val, shard_size=shard_size, storage=storage)
    write_split(root, "test", test, shard_size=shard_size, captions_per_video=test_captions, storage=storage)
    return root


def tiny_config_text(root: str, out: str, **extra: object) -> str:
    """A YAML config for the tiny model on the fixture shards (global batch 8, k = 4 neighbours)."""
    text = f"""
data:
  root: {root}
  batch_size: 8
  eval_batch_size: 8
  num_workers: 0
  eval_num_workers: 0
  frame_size: {FRAME_SIZE}
  shuffle_buffer: 16
model:
  arch: nr-tiny
  temporal_layers: 1
  max_frames: {NUM_FRAMES}
  max_words: 12
loss:
  num_neighbors: 4
bank:
  prefill_batches: 2
optim:
  lr: 2.0e-3
  coef_lr: 1.0
  weight_decay: 0.01
  warmup: 0.1
  epochs: 1
eval:
  every_steps: 0
  ks: [1, 5]
run:
  out: {out}
  seed: 0
  trackers: []
  progress: false
"""
    return text


def trainer_env() -> dict[str, str]:
    """The environment of a trainer subprocess in the tests: offline hub, CPU Accelerate, one BLAS thread, this
    repository first on PYTHONPATH."""
    return dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        ACCELERATE_USE_CPU="1",
        OMP_NUM_THREADS="1",
        PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
    )


def run_cli(
    args: list[str],
    *,
    nproc: int = 1,
    env: dict[str, str] | None = None,
    timeout: float = 300,
    check: bool = True,
) -> subprocess.CompletedProcess:
    """Run ``python -m training.<module> ARGS`` (nproc 1) or under ``accelerate launch --multi_gpu`` on
    CPU."""
    full_env = {**trainer_env(), **(env or {})}
    if nproc == 1:
        cmd = [sys.executable, "-m", *args]
    else:
        cmd = [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--multi_gpu",
            "--num_processes",
            str(nproc),
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            "--main_process_port",
            str(_free_port()),
            "-m",
            *args,
        ]
    proc = subprocess.run(cmd, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
        )
    return proc


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
