"""Source check: re-decode random samples from their source videos through an independent path and compare.

``python -m shards.verify ROOT/SPLIT --source-check N`` picks ``N`` samples of the split (reservoir sampling over
one streaming pass of its tars, seeded, so a run is repeatable) and, for each stored frame ``k`` with recorded
time ``t_k`` (json ``frame_times``, 0 = the first shown frame; ``stream_start_time`` = that frame on the
container clock):

- **Timestamp**: the source has a packet whose presentation time is within half a frame of
  ``stream_start_time + t_k`` (ffprobe JSON of the video stream's packets: demuxing only).
- **Pixels**: the ffmpeg CLI decodes up to the frame (output-side ``-ss`` at the recorded time minus a quarter
  frame, relative to the container start, then one frame; input-side seeking was measured to return no frame on
  MPEG-TS with a start offset and a wrong frame on AVI with B-frames, so it is not used), its own autorotate and SAR-aware ``scale`` + centre ``crop``) and the mean
  absolute difference to the stored JPEG must be below :data:`MAX_MEAN_ABS_DIFF` grey levels. JPEG at the
  job's quality differs from the source by ~1-3 levels; a neighbour frame of moving video by far more.

This path shares no code with the shard job's decoder (no decord, no packet planning, no pts selection), so a
bug there cannot hide itself. Sources may be local paths or ``s3://`` URLs (fetched to a temporary file).
Problems name the shard, the sample key and the frame.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import tarfile
import tempfile
from fractions import Fraction

import numpy as np
import simplejpeg

from shards import fs as sfs
from shards.schema import SHARDINDEX_FILE, frame_member

__all__ = ["MAX_MEAN_ABS_DIFF", "pick_samples", "source_check"]

MAX_MEAN_ABS_DIFF = 8.0


def pick_samples(
    split_url: str, n: int, storage: sfs.StorageOptions | None = None, seed: int = 0
) -> list[tuple[str, str, dict[str, bytes]]]:
    """Up to ``n`` uniformly chosen samples ``(shard, key, members)`` of the split (reservoir sampling, seeded)."""
    index = json.loads(sfs.read_bytes(sfs.join(split_url, SHARDINDEX_FILE), storage))
    rng = random.Random(seed)
    chosen: list[tuple[str, str, dict[str, bytes]]] = []
    seen = 0
    for entry in index.get("shardlist", []):
        name = entry["url"].rsplit("/", 1)[-1]
        fs, path = sfs.filesystem(sfs.join(split_url, name), storage)
        with fs.open(path, "rb") as raw, tarfile.open(fileobj=raw, mode="r|") as tar:  # type: ignore[call-overload]
            samples: dict[str, dict[str, bytes]] = {}
            for info in tar:
                f = tar.extractfile(info) if info.isfile() else None
                if f is None or "." not in info.name:
                    continue
                key, _, ext = info.name.partition(".")
                samples.setdefault(key, {})[ext] = f.read()
        for key, members in samples.items():
            seen += 1
            if len(chosen) < n:
                chosen.append((name, key, members))
            else:
                j = rng.randrange(seen)
                if j < n:
                    chosen[j] = (name, key, members)
    return chosen


def _ffprobe(path: str) -> dict:
    exe = shutil.which("ffprobe")
    if exe is None:
        raise RuntimeError("the source check needs ffprobe (apt-get install ffmpeg)")
    out = subprocess.run(
        [
            exe,
            "-v",
            "error",
            "-of",
            "json",
            "-select_streams",
            "v:0",
            "-show_streams",
            "-show_format",
            "-show_entries",
            "packet=pts_time,dts_time",
            path,
        ],
        capture_output=True,
        timeout=300,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    data = json.loads(out.stdout or b"{}")
    if not data.get("streams"):
        raise RuntimeError(f"ffprobe cannot read {path}")
    return data


def _shown_size(stream: dict) -> tuple[int, int]:
    w, h = int(stream["width"]), int(stream["height"])
    sar = str(stream.get("sample_aspect_ratio", "1:1"))
    try:
        ratio = Fraction(sar.replace(":", "/"))
    except (ValueError, ZeroDivisionError):
        ratio = Fraction(1)
    if ratio > 0:
        w = max(1, round(w * ratio))
    rot = next(
        (int(float(sd["rotation"])) for sd in stream.get("side_data_list") or [] if "rotation" in sd), 0
    )
    return (h, w) if rot % 180 else (w, h)


def _frame_at(path: str, seek: float, width: int, height: int, size: int) -> np.ndarray | None:
    """The first frame at or after ``seek`` (s from the container start) by the ffmpeg CLI, ``[size, size, 3]``."""
    short = min(width, height)
    sw, sh = max(size, round(width * size / short)), max(size, round(height * size / short))
    exe = shutil.which("ffmpeg")
    if exe is None:
        raise RuntimeError("the source check needs ffmpeg")
    out = subprocess.run(
        [
            exe,
            "-v",
            "error",
            "-nostdin",
            "-i",
            path,
            "-ss",
            f"{max(0.0, seek):.6f}",
            "-map",
            "0:v:0",
            "-frames:v",
            "1",
            "-vf",
            f"scale={sw}:{sh}:flags=bilinear,crop={size}:{size}",
            "-f",
            "rawvideo",
            "-pix_fmt",
            "rgb24",
            "pipe:",
        ],
        capture_output=True,
        timeout=300,
        check=False,
    )
    if len(out.stdout) != size * size * 3:
        return None
    return np.frombuffer(out.stdout, np.uint8).reshape(size, size, 3)


def _local(source: str, storage: sfs.StorageOptions | None, tmp: str) -> str:
    if not sfs.is_remote(source):
        return source
    fs, path = sfs.filesystem(source, storage)
    local = os.path.join(tmp, "source" + os.path.splitext(path)[1])
    fs.get_file(path, local)
    return local


def check_sample(key: str, members: dict[str, bytes], storage: sfs.StorageOptions | None = None) -> list[str]:
    """Problems (one message per bad frame) of one sample against its source video."""
    meta = json.loads(members["json"])
    problems: list[str] = []
    with tempfile.TemporaryDirectory(prefix="nr-source-check-") as tmp:
        try:
            path = _local(meta["source"], storage, tmp)
            info = _ffprobe(path)
        except (OSError, RuntimeError, ValueError, subprocess.TimeoutExpired) as e:
            return [f"source {meta.get('source')!r} unreadable: {e}"]
        stream = info["streams"][0]
        fmt_start = float((info.get("format") or {}).get("start_time") or 0.0)
        stamps = sorted(
            float(p.get("pts_time", p.get("dts_time")))
            for p in info.get("packets", [])
            if p.get("pts_time", p.get("dts_time")) is not None
        )
        stream_start = meta.get("stream_start_time", stamps[0] if stamps else 0.0)
        rate = Fraction(str(stream.get("avg_frame_rate", "0/1")))
        frame_dur = float(1 / rate) if rate > 0 else 1.0 / float(meta.get("src_fps") or 25.0)
        width, height = _shown_size(stream)
        arr = np.asarray(stamps)
        for k, t in enumerate(meta["frame_times"]):
            when = stream_start + float(t)
            if arr.size == 0 or float(np.min(np.abs(arr - when))) > frame_dur / 2 + 1e-6:
                problems.append(f"frame {k} (t={t:.3f} s): no source frame within half a frame of its time")
                continue
            ref = _frame_at(path, when - fmt_start - frame_dur / 4, width, height, int(meta["width"]))
            if ref is None:
                problems.append(f"frame {k} (t={t:.3f} s): ffmpeg could not decode the source there")
                continue
            got = simplejpeg.decode_jpeg(members[frame_member(k)], colorspace="RGB")
            mad = float(np.abs(got.astype(np.float64) - ref).mean())
            if mad > MAX_MEAN_ABS_DIFF:
                problems.append(
                    f"frame {k} (t={t:.3f} s) differs from the source frame at that time "
                    f"(mean abs diff {mad:.1f} > {MAX_MEAN_ABS_DIFF:g})"
                )
    return problems


def source_check(
    split_url: str, n: int, storage: sfs.StorageOptions | None = None, seed: int = 0
) -> tuple[int, list[tuple[str, str, str]]]:
    """Check ``n`` random samples of the split; returns ``(checked, [(shard, key, message), ...])``."""
    picked = pick_samples(split_url, n, storage, seed)
    out: list[tuple[str, str, str]] = []
    for shard, key, members in picked:
        out.extend((shard, key, msg) for msg in check_sample(key, members, storage))
    return len(picked), out
