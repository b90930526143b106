"""Synthetic video-caption dataset: a coloured shape moving over a coloured background.

``python -m preprocess.synth --out DIR [--num-train 600 --num-val 100 --num-test 100 --seconds 3 --fps 8
--size 112 --seed 0 --workers 2]`` writes

- ``DIR/videos/{video_id}.mp4``: real H.264 files (libx264, yuv420p, one thread, so byte-deterministic for one
  ffmpeg build), frames rendered with numpy and piped to ffmpeg as rgb24;
- ``DIR/annotations.jsonl``: the generic JSONL annotation format, one row per video: ``video_path`` (relative to
  DIR), ``caption``, ``split``, ``video_id`` plus the attributes ``shape``, ``color``, ``background``,
  ``direction`` (ignored by the reader, handy for analysis).

Captions are compositional: ``"a red circle moves left on a black background"``. Attributes:
:data:`SHAPES` x :data:`COLORS` x :data:`BACKGROUNDS` x :data:`DIRECTIONS` (288 combinations). The first
combinations of train enumerate every combination (so all are seen in training, when ``num_train >= 288``; the
rest are drawn at random); val and test each use distinct combinations, so captions are unique within each.
Start position, size and speed vary per video. Everything is drawn from ``numpy.random.default_rng(seed)``.

``--mode hard`` makes a hubness-prone variant for method comparisons (any split size, e.g. a 1,000-video test):

- long-tailed concept frequencies: each split draws its attribute combinations with Zipf weights
  p(rank r) ~ 1 / r^s (s = :data:`HARD_ZIPF`) over one seeded ordering of the 288 combinations, so a few
  combinations are frequent (their captions are shared by many videos) and most are rare;
- near-duplicate videos: with probability :data:`HARD_DUP_RATE` a clip repeats the previous clip of its split with
  the same attributes and a geometry jittered by at most 1 px (and 2 % speed);
- generic and specific captions per clip: every clip has its specific caption and one generic one that names only
  part of it (``"a circle moves left"`` or ``"something red on a black background"``), written as a second
  annotation row for the same video (the reader makes one item with both captions).
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import multiprocessing as mp
import os
import subprocess
import time
from dataclasses import asdict, dataclass

import numpy as np

from preprocess.decode import ffmpeg_binary

__all__ = ["SHAPES", "COLORS", "BACKGROUNDS", "DIRECTIONS", "ClipSpec", "make_specs", "render", "generate", "main"]

logger = logging.getLogger(__name__)

SHAPES = ("circle", "square", "triangle", "cross")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (230, 30, 30),
    "green": (30, 200, 40),
    "blue": (40, 80, 240),
    "yellow": (245, 225, 30),
    "purple": (150, 40, 200),
    "orange": (250, 140, 20),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {"black": (0, 0, 0), "white": (250, 250, 250), "gray": (128, 128, 128)}
DIRECTIONS: dict[str, tuple[int, int]] = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
SPLITS = ("train", "val", "test")
MODES = ("easy", "hard")
HARD_ZIPF = 1.1  # Zipf exponent of the combination frequencies (hard mode)
HARD_DUP_RATE = 0.15  # share of near-duplicate clips (hard mode)


@dataclass(frozen=True)
class ClipSpec:
    """One clip: attributes plus geometry in pixels (centre ``(x0, y0)`` at t=0, ``speed`` px/s, ``radius``)."""

    video_id: str
    split: str
    shape: str
    color: str
    background: str
    direction: str
    x0: float
    y0: float
    speed: float
    radius: float
    generic: int = -1  # hard mode: which generic caption template (0 or 1); -1: none

    @property
    def generic_caption(self) -> str | None:
        """The clip's generic caption (hard mode), naming only the shape and direction or the colour and background."""
        if self.generic < 0:
            return None
        if self.generic == 0:
            return f"a {self.shape} moves {self.direction}"
        return f"something {self.color} on a {self.background} background"

    @property
    def caption(self) -> str:
        article = "an" if self.color[0] in "aeiou" else "a"
        return f"{article} {self.color} {self.shape} moves {self.direction} on a {self.background} background"


def _combos() -> list[tuple[str, str, str, str]]:
    return list(itertools.product(SHAPES, COLORS, BACKGROUNDS, DIRECTIONS))


def make_specs(
    num_train: int, num_val: int, num_test: int, *, seconds: float, size: int, seed: int = 0, mode: str = "easy"
) -> list[ClipSpec]:
    """Deterministic clip specs for all splits (train, then val, then test); ``mode`` "easy" or "hard"."""
    if mode not in MODES:
        raise ValueError(f"--mode must be one of {MODES}, got {mode!r}")
    if mode == "hard":
        return _hard_specs(num_train, num_val, num_test, seconds=seconds, size=size, seed=seed)
    combos = _combos()
    for name, n in (("val", num_val), ("test", num_test)):
        if n > len(combos):
            raise ValueError(f"--num-{name} {n} exceeds the {len(combos)} distinct captions")
    rng = np.random.default_rng(seed)
    chosen: list[tuple[str, tuple[str, str, str, str]]] = []
    order = rng.permutation(len(combos))
    train = [combos[i] for i in order[: min(num_train, len(combos))]]
    train += [combos[i] for i in rng.integers(0, len(combos), max(0, num_train - len(combos)))]
    chosen += [("train", c) for c in train]
    for split, n in (("val", num_val), ("test", num_test)):
        chosen += [(split, combos[i]) for i in rng.permutation(len(combos))[:n]]
    return [_geometry(rng, idx, split, combo, seconds, size) for idx, (split, combo) in enumerate(chosen)]


def _hard_specs(num_train: int, num_val: int, num_test: int, *, seconds: float, size: int, seed: int) -> list[ClipSpec]:
    """Hard-mode specs: Zipf-weighted combinations, near-duplicate clips, a generic caption per clip."""
    combos = _combos()
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(combos))
    weights = 1.0 / np.arange(1, len(combos) + 1) ** HARD_ZIPF
    weights /= weights.sum()
    specs: list[ClipSpec] = []
    for split, n in (("train", num_train), ("val", num_val), ("test", num_test)):
        prev: ClipSpec | None = None
        for _ in range(n):
            idx = len(specs)
            generic = int(rng.integers(0, 2))
            if prev is not None and rng.uniform() < HARD_DUP_RATE:
                jx, jy = rng.uniform(-1.0, 1.0, 2)
                spec = ClipSpec(f"synth{idx:05d}", split, prev.shape, prev.color, prev.background, prev.direction,
                                prev.x0 + float(jx), prev.y0 + float(jy), prev.speed * float(rng.uniform(0.98, 1.02)),
                                prev.radius, generic)
            else:
                combo = combos[order[rng.choice(len(combos), p=weights)]]
                spec = _geometry(rng, idx, split, combo, seconds, size, generic)
            specs.append(spec)
            prev = spec
    return specs


def _geometry(
    rng: np.random.Generator, idx: int, split: str, combo: tuple[str, str, str, str], seconds: float, size: int,
    generic: int = -1,
) -> ClipSpec:
    """One clip of the given attributes with random radius, travel and a start that keeps it inside the frame."""
    shape, color, bg, direction = combo
    radius = float(rng.uniform(0.12, 0.18) * size)
    travel = float(rng.uniform(0.35, 0.55) * size)  # pixels over the clip
    dx, dy = DIRECTIONS[direction]
    margin = radius + 1
    # the along-axis start leaves room for the travel; the cross-axis position is free within the frame
    along = float(rng.uniform(margin, size - margin - travel))
    across = float(rng.uniform(margin, size - margin))
    if dx:
        x0 = along if dx > 0 else size - along
        y0 = across
    else:
        y0 = along if dy > 0 else size - along
        x0 = across
    return ClipSpec(f"synth{idx:05d}", split, shape, color, bg, direction, x0, y0, travel / seconds, radius,
                    generic)


def render(spec: ClipSpec, *, seconds: float, fps: int, size: int) -> np.ndarray:
    """Frames uint8 ``[seconds * fps, size, size, 3]`` of ``spec``: shape centre at ``(x0, y0) + speed * t * dir``."""
    n = int(round(seconds * fps))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    bg = np.array(BACKGROUNDS[spec.background], np.uint8)
    fg = np.array(COLORS[spec.color], np.uint8)
    dx, dy = DIRECTIONS[spec.direction]
    out = np.empty((n, size, size, 3), np.uint8)
    r = spec.radius
    for k in range(n):
        t = k / fps
        cx, cy = spec.x0 + dx * spec.speed * t, spec.y0 + dy * spec.speed * t
        u, v = xx - cx, yy - cy
        if spec.shape == "circle":
            mask = u * u + v * v <= r * r
        elif spec.shape == "square":
            mask = (np.abs(u) <= r * 0.85) & (np.abs(v) <= r * 0.85)
        elif spec.shape == "triangle":  # apex up, base at v = +0.8 r
            mask = (v <= 0.8 * r) & (v >= -r + 2.0 * np.abs(u) * 1.0)
        else:  # cross
            arm = r * 0.3
            mask = ((np.abs(u) <= arm) & (np.abs(v) <= r)) | ((np.abs(v) <= arm) & (np.abs(u) <= r))
        frame = out[k]
        frame[:] = bg
        frame[mask] = fg
    return out


def _encode(frames: np.ndarray, fps: int, path: str) -> None:
    import ffmpeg

    n, h, w, _ = frames.shape
    stream = ffmpeg.input("pipe:", format="rawvideo", pix_fmt="rgb24", s=f"{w}x{h}", r=fps).output(
        path, vcodec="libx264", pix_fmt="yuv420p", preset="veryfast", crf=18, g=fps, threads=1, an=None,
        fflags="+bitexact", **{"flags:v": "+bitexact"},
    )
    args = ffmpeg.compile(stream, cmd=ffmpeg_binary(), overwrite_output=True)
    args[1:1] = ["-hide_banner", "-nostdin", "-loglevel", "error"]
    proc = subprocess.run(args, input=frames.tobytes(), capture_output=True, timeout=120, check=False)
    if proc.returncode != 0 or not os.path.getsize(path):
        raise RuntimeError(f"ffmpeg failed to encode {path}: {proc.stderr.decode('utf-8', 'replace')[-500:]}")


def _make_one(job: tuple[ClipSpec, str, float, int, int]) -> str:
    spec, out_dir, seconds, fps, size = job
    path = os.path.join(out_dir, "videos", f"{spec.video_id}.mp4")
    tmp = path + ".part.mp4"
    _encode(render(spec, seconds=seconds, fps=fps, size=size), fps, tmp)
    os.replace(tmp, path)
    return path


def generate(
    out_dir: str,
    *,
    num_train: int = 600,
    num_val: int = 100,
    num_test: int = 100,
    seconds: float = 3.0,
    fps: int = 8,
    size: int = 112,
    seed: int = 0,
    workers: int = 2,
    mode: str = "easy",
) -> list[ClipSpec]:
    """Write the dataset under ``out_dir``; return the specs (annotation rows in the same order)."""
    if size < 16 or size % 2:
        raise ValueError(f"--size must be an even number >= 16 (yuv420p), got {size}")
    if seconds <= 0 or fps < 1:
        raise ValueError(f"--seconds must be > 0 and --fps >= 1, got {seconds}, {fps}")
    specs = make_specs(num_train, num_val, num_test, seconds=seconds, size=size, seed=seed, mode=mode)
    os.makedirs(os.path.join(out_dir, "videos"), exist_ok=True)
    jobs = [(s, out_dir, seconds, fps, size) for s in specs]
    if workers > 1:
        with mp.get_context("spawn").Pool(workers) as pool:
            for _ in pool.imap_unordered(_make_one, jobs, chunksize=8):
                pass
    else:
        for j in jobs:
            _make_one(j)
    rows = []
    for s in specs:
        d = asdict(s)
        for caption in (s.caption, s.generic_caption):
            if caption is None:
                continue
            rows.append(
                {
                    "video_path": f"videos/{s.video_id}.mp4",
                    "caption": caption,
                    "split": s.split,
                    "video_id": s.video_id,
                    **{k: d[k] for k in ("shape", "color", "background", "direction")},
                }
            )
    tmp = os.path.join(out_dir, "annotations.jsonl.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, sort_keys=True) + "\n")
    os.replace(tmp, os.path.join(out_dir, "annotations.jsonl"))
    return specs


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="nr-synth", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="output folder: videos and annotations.jsonl")
    p.add_argument("--num-train", type=_count, default=600, help="videos in the train split")
    p.add_argument("--num-val", type=_count, default=100, help="videos in the val split")
    p.add_argument("--num-test", type=_count, default=100, help="videos in the test split")
    p.add_argument("--seconds", type=_positive_float, default=3.0, help="length of each video in seconds")
    p.add_argument("--fps", type=_positive, default=8, help="frames per second of the written videos")
    p.add_argument("--size", type=_positive, default=112, help="frame width and height in pixels")
    p.add_argument("--seed", type=int, default=0, help="seed of the generated content (same seed, same videos)")
    p.add_argument("--workers", type=_positive, default=2, help="encoding processes")
    import nrconfig  # here, not at import time: shard readers never load the config machinery

    nrconfig.add_version(p)
    p.add_argument("--mode", choices=MODES, default="easy", help="hard: long-tailed, near-duplicates, 2 captions")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    t0 = time.perf_counter()
    specs = generate(
        a.out, num_train=a.num_train, num_val=a.num_val, num_test=a.num_test, seconds=a.seconds, fps=a.fps,
        size=a.size, seed=a.seed, workers=a.workers, mode=a.mode,
    )
    counts = {s: sum(1 for x in specs if x.split == s) for s in SPLITS}
    print(  # noqa: T201
        f"synth: {len(specs)} videos ({counts['train']} train, {counts['val']} val, {counts['test']} test) "
        f"in {a.out} in {time.perf_counter() - t0:.1f} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
