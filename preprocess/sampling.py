"""Frame-time selection: which source frames of a clip window become the T frames of a sample.

Conventions (presentation time; :mod:`preprocess.probe`):

- Frame ``i`` has presentation time ``t_i`` (seconds, ascending; **0 = the first shown frame**, whatever the
  container's start time) and is shown during ``[t_i, t_{i+1})`` (the last one until ``duration``). Without
  probed times (``frame_times=None``) the stream is taken as constant-rate: ``t_i = i / fps``.
- A clip window ``[start, end)`` (seconds on that axis; ``None`` = start / end of the video, clipped to
  ``[0, duration]``) covers the frames ``first`` = the frame shown at ``start`` (last ``i`` with ``t_i <= start``)
  ... ``last`` = the last frame with ``t_i < end``. For constant rate: ``floor(start * fps)`` ...
  ``ceil(end * fps) - 1``.
- ``round(x)`` below is round-half-up, ``floor(x + 0.5)``, so results never depend on banker's rounding.

Samplers (every one returns exactly ``T`` indices, in temporal order):

- ``uniform``: ``idx_k = first + round(k * (last - first) / (T - 1))`` for ``k = 0 .. T-1`` (both window ends
  included; ``T = 1`` takes ``first``).
- ``fps``: candidate times ``t_j = start + j / N`` for ``t_j < end`` (``N`` = ``sample_fps``), candidate frames
  the frames shown at ``t_j`` with repeats removed (``M`` of them), then ``cand[round(k * (M - 1) / (T - 1))]``: uniform
  down-sampling when ``M >= T``.
- ``head``: one frame per second from the window start, the frame shown at ``start + k`` for ``start + k < end``, the
  first ``T`` of them (the official MSR-VTT loader, docs/method.md §8-Q5).

Too few frames (documented choice): the sample still has exactly ``T`` frames. ``uniform`` and ``fps`` repeat the
nearest source frame (the same formulas stretch ``M < T`` candidates over ``T`` slots); ``head`` repeats its last
frame so frames ``0 .. M-1`` are exactly the official ones. ``padded_frames = T - (number of distinct source
frames)`` records how many slots are repeats; frames are never zero-filled.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass

from shards.schema import SAMPLERS

__all__ = ["FrameSelection", "SamplingError", "clip_window", "select_frames"]

_EPS = 1e-6


class SamplingError(ValueError):
    """The clip window or sampling settings cannot give a frame (window after the end of the video, ...)."""


@dataclass(frozen=True)
class FrameSelection:
    """The chosen frames of one sample.

    ``indices``: T source frame indices (non-decreasing, may repeat); ``times``: T presentation times in seconds
    (``t_index``, rounded to microseconds); ``padded_frames``: T minus the number of distinct indices.
    """

    indices: tuple[int, ...]
    times: tuple[float, ...]
    padded_frames: int


def _round(x: float) -> int:
    return int(math.floor(x + 0.5))


def _axis(num_src_frames: int, src_fps: float, frame_times, duration: float | None) -> tuple[list[float], float]:
    if num_src_frames <= 0:
        raise SamplingError(f"video has no frames (frame count {num_src_frames})")
    if not src_fps > 0 or not math.isfinite(src_fps):
        raise SamplingError(f"video has no usable frame rate ({src_fps})")
    if frame_times is None or len(frame_times) == 0:
        return [i / src_fps for i in range(num_src_frames)], num_src_frames / src_fps
    times = [float(t) for t in frame_times]
    if len(times) != num_src_frames or any(b < a for a, b in zip(times, times[1:])):
        raise SamplingError(f"frame times must be {num_src_frames} ascending values, got {len(times)}")
    dur = float(duration) if duration is not None else times[-1] + 1.0 / src_fps
    return times, max(dur, times[-1] + _EPS)


def clip_window(
    num_src_frames: int,
    src_fps: float,
    start: float | None = None,
    end: float | None = None,
    *,
    frame_times=None,
    duration: float | None = None,
) -> tuple[float, float, int, int]:
    """Clip ``[start, end)`` to the video and return ``(start_s, end_s, first, last)`` (frame indices inclusive).

    ``frame_times``: presentation time of each frame (s, 0 = first shown frame; default ``i / src_fps``);
    ``duration``: end of the last frame (default last time + ``1 / src_fps``). Raises :class:`SamplingError`
    when the video has no frames, the frame rate is not positive, or the window starts at or after the end.
    """
    times, dur = _axis(num_src_frames, src_fps, frame_times, duration)
    return _window(times, dur, start, end)


def _window(times: list[float], duration: float, start, end) -> tuple[float, float, int, int]:
    start_s = max(0.0, float(start)) if start is not None else 0.0
    end_s = min(float(end), duration) if end is not None else duration
    if start_s >= duration - _EPS:
        raise SamplingError(f"clip window starts at {start_s:.3f} s, after the end of the video ({duration:.3f} s)")
    if end_s <= start_s:
        raise SamplingError(f"clip window [{start_s:.3f}, {end_s:.3f}] s is empty")
    first = max(0, bisect.bisect_right(times, start_s + _EPS) - 1)
    last = bisect.bisect_left(times, end_s - _EPS) - 1
    return start_s, end_s, first, max(first, min(len(times) - 1, last))


def _stretch(candidates: list[int], num_frames: int) -> list[int]:
    """``candidates[round(k * (M - 1) / (T - 1))]`` for k < T: uniform down-sampling or nearest repetition."""
    m = len(candidates)
    if num_frames == 1:
        return [candidates[0]]
    return [candidates[_round(k * (m - 1) / (num_frames - 1))] for k in range(num_frames)]


def select_frames(
    sampler: str,
    *,
    num_frames: int,
    src_fps: float,
    num_src_frames: int,
    start: float | None = None,
    end: float | None = None,
    sample_fps: float = 1.0,
    frame_times=None,
    duration: float | None = None,
) -> FrameSelection:
    """Choose ``num_frames`` source frames of the window ``[start, end)`` with ``sampler`` (see module doc).

    ``frame_times`` (length ``num_src_frames``, ascending seconds, 0 = first shown frame) and ``duration`` are the
    probed presentation times; without them the stream is constant-rate (``t_i = i / src_fps``)."""
    if sampler not in SAMPLERS:
        raise SamplingError(f"unknown sampler {sampler!r}; expected one of {', '.join(SAMPLERS)}")
    if num_frames < 1:
        raise SamplingError(f"num_frames must be >= 1, got {num_frames}")
    times, dur = _axis(num_src_frames, src_fps, frame_times, duration)
    start_s, end_s, first, last = _window(times, dur, start, end)

    def frame_at(t: float) -> int:
        return min(last, max(first, bisect.bisect_right(times, t + _EPS) - 1))

    if sampler == "uniform":
        span = last - first
        if num_frames == 1:
            indices = [first]
        else:
            indices = [first + _round(k * span / (num_frames - 1)) for k in range(num_frames)]
    elif sampler == "fps":
        if not sample_fps > 0:
            raise SamplingError(f"sample_fps must be > 0 for the fps sampler, got {sample_fps}")
        candidates: list[int] = []
        j = 0
        while True:
            t = start_s + j / sample_fps
            if t >= end_s - _EPS:
                break
            idx = frame_at(t)
            if not candidates or candidates[-1] != idx:
                candidates.append(idx)
            j += 1
        indices = _stretch(candidates or [first], num_frames)
    else:  # head
        candidates = []
        k = 0
        while k < num_frames and start_s + k < end_s - _EPS:
            candidates.append(frame_at(start_s + k))
            k += 1
        candidates = candidates or [first]
        indices = candidates + [candidates[-1]] * (num_frames - len(candidates))
    chosen = tuple(round(times[i], 6) for i in indices)
    return FrameSelection(tuple(indices), chosen, num_frames - len(set(indices)))
