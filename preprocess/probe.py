"""Structured probing of a video's first video stream: exact rates, presentation timestamps and display geometry.

Sources: PyAV's demuxer in-process for files whose packets can be trusted (MP4/MOV/MKV/WebM: ~8 ms CPU, against
~100 ms to start a shared-library ffprobe, which would cost the job a third of its per-video budget), else
``ffprobe -of json`` (stream, format and per-packet or per-frame records), or, where no ffprobe binary exists (the
static imageio-ffmpeg build ships only ``ffmpeg``), PyAV decoding. No log text is ever parsed.

What is measured (:class:`StreamProbe`):

- ``pts``: the presentation timestamps (stream time-base ticks, ascending) of the frames a decoder *shows*.
  From packets when they are trustworthy: every packet has a pts, packets flagged discard (``D``: the frames an MP4
  edit list hides) are left out, and the first packet in decode order is a keyframe. Otherwise (MPEG-TS cut
  mid-GOP, whose leading pictures the decoder drops; AVI without packet pts; packed B-frames) the stream is decoded
  once (``-show_frames``) and the frames' ``best_effort_timestamp`` are used: the same timestamps the ffmpeg CLI
  gives its filters, so selecting by pts later is exact.
- ``times``: ``(pts - pts[0]) * time_base`` in seconds. **Time 0 is the first shown frame** (not the container
  start): an MPEG-TS stream starting at 1.48 s, a negative-pts edit list and an mp4 starting at 0 all start at
  0 s, and clip windows are read on this axis.
- ``fps``: exact rational ``avg_frame_rate`` (``Fraction``; falls back to ``r_frame_rate``, then to the shown
  frame count over the pts span); ``duration`` = last time + one frame (the last frame's packet duration when
  known, else ``1 / fps``).
- ``coded_width`` x ``coded_height``; ``sar`` (sample aspect ratio, ``Fraction``; 1 when unknown/0:1);
  ``rotation``: counter-clockwise degrees (0, 90, 180, 270) the picture is turned for display (``np.rot90(frame,
  rotation // 90)``), from the display matrix side data or the legacy ``rotate`` tag.
- ``display_width`` x ``display_height``: coded width stretched by the SAR, then swapped for 90 / 270.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import subprocess
from dataclasses import dataclass, field
from fractions import Fraction

__all__ = ["ProbeError", "StreamProbe", "ffprobe_binary", "probe_stream"]

logger = logging.getLogger(__name__)


class ProbeError(RuntimeError):
    """The file has no readable video stream; the message names the file and the reason."""


@dataclass(frozen=True)
class StreamProbe:
    """Structured metadata of a video stream (see module doc); ``pts`` ticks of ``time_base`` seconds."""

    path: str
    format_name: str
    codec: str
    time_base: Fraction
    pts: tuple[int, ...]
    fps: Fraction
    duration: float
    coded_width: int
    coded_height: int
    sar: Fraction = Fraction(1)
    rotation: int = 0
    start_time: float = 0.0  # pts[0] in seconds on the container clock (documented, not used as an origin)
    timing_source: str = "packets"  # packets | frames | pyav
    times: tuple[float, ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        if not self.times:
            t0 = self.pts[0]
            object.__setattr__(self, "times", tuple(float((p - t0) * self.time_base) for p in self.pts))

    @property
    def num_frames(self) -> int:
        return len(self.pts)

    @property
    def display_width(self) -> int:
        w, h = self._stretched()
        return h if self.rotation in (90, 270) else w

    @property
    def display_height(self) -> int:
        w, h = self._stretched()
        return w if self.rotation in (90, 270) else h

    def _stretched(self) -> tuple[int, int]:
        """Coded size with the SAR applied to the width (the picture before rotation)."""
        w = max(1, int(round(self.coded_width * self.sar)))
        return w, self.coded_height


def ffprobe_binary() -> str | None:
    """``ffprobe`` on PATH, or None."""
    return shutil.which("ffprobe")


def _fraction(text: object) -> Fraction | None:
    """``"30000/1001"`` / ``"8:9"`` -> Fraction; None for missing, ``0/0``, ``N/A`` or non-positive values."""
    if text is None:
        return None
    s = str(text).replace(":", "/")
    try:
        f = Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None
    return f if f > 0 else None


def _rotation_ccw(stream: dict) -> int:
    """Counter-clockwise display rotation in {0, 90, 180, 270}: the display matrix's angle (ffprobe's ``rotation``,
    which the ffmpeg CLI's autorotate applies counter-clockwise, checked by the tests) or minus the legacy
    ``rotate`` tag (clockwise)."""
    for sd in stream.get("side_data_list") or []:
        if "rotation" in sd:
            return int(round(float(sd["rotation"]))) % 360 // 90 * 90
    tag = (stream.get("tags") or {}).get("rotate")
    if tag is not None:
        try:
            return int(round(-float(tag))) % 360 // 90 * 90
        except ValueError:
            return 0
    return 0


def _run_json(args: list[str], path: str, timeout: float | None) -> dict:
    try:
        proc = subprocess.run(
            args, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise ProbeError(f"ffprobe timed out after {timeout} s on {path}") from exc
    try:
        data = json.loads(proc.stdout.decode("utf-8", "replace") or "{}")
    except json.JSONDecodeError as exc:
        raise ProbeError(f"ffprobe wrote no JSON for {path}") from exc
    if proc.returncode != 0 and not data.get("streams"):
        err = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        raise ProbeError(f"ffprobe cannot read {path}: {(err[-1] if err else 'no message')[:300]}")
    return data


def _finish(
    path: str,
    fmt: str,
    codec: str,
    tb: Fraction,
    pts: list[int],
    rate: Fraction | None,
    last_dur: int | None,
    width: int,
    height: int,
    sar: Fraction | None,
    rotation: int,
    source: str,
) -> StreamProbe:
    if not pts:
        raise ProbeError(f"no frames in the video stream of {path}")
    if width <= 0 or height <= 0:
        raise ProbeError(f"invalid frame size {width}x{height} in {path}")
    pts = sorted(set(pts))
    span = float((pts[-1] - pts[0]) * tb)
    fps = rate
    if fps is None:
        if len(pts) < 2 or span <= 0:
            raise ProbeError(f"no usable frame rate in {path}")
        fps = Fraction(len(pts) - 1) / Fraction(span).limit_denominator(1_000_000)
    frame = float(last_dur * tb) if last_dur and last_dur > 0 else 1.0 / float(fps)
    return StreamProbe(
        path=path,
        format_name=fmt,
        codec=codec,
        time_base=tb,
        pts=tuple(pts),
        fps=fps,
        duration=span + frame,
        coded_width=int(width),
        coded_height=int(height),
        sar=sar or Fraction(1),
        rotation=rotation,
        start_time=float(pts[0] * tb),
        timing_source=source,
    )


def _probe_ffprobe(path: str, exe: str, timeout: float | None) -> StreamProbe:
    base = [exe, "-v", "error", "-of", "json", "-select_streams", "v:0"]
    data = _run_json(
        [*base, "-show_streams", "-show_format", "-show_entries", "packet=pts,dts,duration,flags", path],
        path,
        timeout,
    )
    streams = data.get("streams") or []
    if not streams:
        raise ProbeError(f"no video stream in {path}")
    st = streams[0]
    tb = _fraction(st.get("time_base"))
    if tb is None:
        raise ProbeError(f"no time base for the video stream of {path}")
    fmt = (data.get("format") or {}).get("format_name", "")
    packets = data.get("packets") or []
    shown = [p for p in packets if "D" not in str(p.get("flags", ""))]
    trusted = (
        bool(shown)
        and all(isinstance(p.get("pts"), int) for p in shown)
        and "K" in str(packets[0].get("flags", ""))
        and "mpegts" not in fmt
        and "avi" not in fmt
    )
    last_dur = None
    if trusted:
        pts = [p["pts"] for p in shown]
        by_pts = max(shown, key=lambda p: p["pts"])
        last_dur = by_pts.get("duration") if isinstance(by_pts.get("duration"), int) else None
        source = "packets"
    else:  # decode once: the frames the decoder shows, with the timestamps the ffmpeg CLI uses
        frames = (
            _run_json(
                [*base, "-show_entries", "frame=best_effort_timestamp,pkt_duration,duration", path],
                path,
                timeout,
            ).get("frames")
            or []
        )
        pts = [f["best_effort_timestamp"] for f in frames if isinstance(f.get("best_effort_timestamp"), int)]
        if frames and frames[-1].get("duration") is not None:
            try:
                last_dur = int(frames[-1]["duration"])
            except (TypeError, ValueError):
                last_dur = None
        source = "frames"
    rate = _fraction(st.get("avg_frame_rate")) or _fraction(st.get("r_frame_rate"))
    if source == "frames" and len(pts) > 1:  # the decoded frames decide (tree.avi: 68 frames over 29.5 s)
        span = Fraction(max(pts) - min(pts)) * tb
        if span > 0:
            measured = Fraction(len(set(pts)) - 1) / span
            if rate is None or abs(float(measured / rate) - 1) > 0.01:
                rate = measured.limit_denominator(100_000)
    return _finish(
        path,
        fmt,
        st.get("codec_name", ""),
        tb,
        pts,
        rate,
        last_dur,
        int(st.get("width") or 0),
        int(st.get("height") or 0),
        _fraction(st.get("sample_aspect_ratio")),
        _rotation_ccw(st),
        source,
    )


def _probe_pyav(path: str) -> StreamProbe:
    """PyAV demuxer probe (no ffprobe binary): packet pts, or decoded frame pts when packets lack them.

    Rotation is not available from PyAV's stream API without decoding; it is read from the legacy ``rotate``
    metadata tag only (documented limitation of this fallback)."""
    import av

    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise ProbeError(f"no video stream in {path}")
            stream = container.streams.video[0]
            tb = Fraction(stream.time_base)
            first_key = None
            pts: list[int | None] = []
            for pkt in container.demux(stream):
                if pkt.size == 0:
                    continue
                if first_key is None:
                    first_key = bool(pkt.is_keyframe)
                if not pkt.is_discard:
                    pts.append(pkt.pts)
            fmt = container.format.name
            if not first_key or any(p is None for p in pts) or "mpegts" in fmt or "avi" in fmt:
                container.seek(0)
                pts = [f.pts for f in container.decode(stream) if f.pts is not None]
            cc = stream.codec_context
            rate = Fraction(stream.average_rate) if stream.average_rate else None
            sar = Fraction(cc.sample_aspect_ratio) if cc.sample_aspect_ratio else None
            tag = stream.metadata.get("rotate")
            rotation = int(round(-float(tag))) % 360 // 90 * 90 if tag else 0
            return _finish(
                path,
                fmt,
                cc.name,
                tb,
                [p for p in pts if p is not None],
                rate,
                None,
                cc.width,
                cc.height,
                sar,
                rotation,
                "pyav",
            )
    except ProbeError:
        raise
    except Exception as exc:  # noqa: BLE001 - PyAV raises av.error.* subclasses
        raise ProbeError(f"PyAV cannot read {path}: {exc}") from exc


def _probe_pyav_packets(path: str) -> StreamProbe | None:
    """In-process fast path: PyAV's demuxer when the packets are trustworthy (MP4 / MOV / MKV / WebM, every shown
    packet has a pts, the first packet is a keyframe); rotation from the first decoded frame's display matrix
    (same angle as ffprobe's ``rotation``). ``None`` when the packets cannot be trusted (the caller then decodes
    with ffprobe). Measured: ~8 ms CPU per file against ~100 ms for starting a shared-library ffprobe."""
    try:
        import av
    except ImportError:
        return None
    try:
        with av.open(path) as container:
            fmt = container.format.name
            if not container.streams.video or "mpegts" in fmt or "avi" in fmt:
                return None
            stream = container.streams.video[0]
            tb = Fraction(stream.time_base) if stream.time_base else None
            if tb is None:
                return None
            pts: list[int] = []
            last: tuple[int, int | None] | None = None
            first = True
            for pkt in container.demux(stream):
                if pkt.size == 0:
                    continue
                if first and not pkt.is_keyframe:
                    return None
                first = False
                if pkt.is_discard:
                    continue
                if pkt.pts is None:
                    return None
                pts.append(pkt.pts)
                if last is None or pkt.pts > last[0]:
                    last = (pkt.pts, pkt.duration)
            if not pts:
                return None
            container.seek(0, stream=stream)
            rotation = 0
            for frame in container.decode(stream):
                rotation = int(round(float(getattr(frame, "rotation", 0) or 0))) % 360 // 90 * 90
                break
            cc = stream.codec_context
            rate = Fraction(stream.average_rate) if stream.average_rate else None
            sar = Fraction(cc.sample_aspect_ratio) if cc.sample_aspect_ratio else None
            return _finish(
                path,
                fmt,
                cc.name,
                tb,
                pts,
                rate if rate and rate > 0 else None,
                last[1] if last else None,
                cc.width,
                cc.height,
                sar,
                rotation,
                "packets",
            )
    except ProbeError:
        raise
    except Exception as exc:  # noqa: BLE001 - any PyAV trouble: ffprobe decides
        logger.debug("PyAV fast probe of %s failed (%s); using ffprobe", path, exc)
        return None


def probe_stream(path: str, *, timeout: float | None = None) -> StreamProbe:
    """Probe the first video stream of ``path``: PyAV's demuxer in-process where its packets are trustworthy,
    else ffprobe JSON (decoding once where packets cannot be trusted), else PyAV decoding; raises
    :class:`ProbeError`."""
    fast = _probe_pyav_packets(path)
    if fast is not None:
        return fast
    exe = ffprobe_binary()
    if exe:
        return _probe_ffprobe(path, exe, timeout)
    logger.debug("no ffprobe on PATH; probing %s with PyAV", path)
    return _probe_pyav(path)


def frame_at(times: tuple[float, ...], t: float, eps: float = 1e-6) -> int:
    """Index of the frame shown at time ``t``: the last ``i`` with ``times[i] <= t + eps`` (0 before the first)."""
    import bisect

    return max(0, bisect.bisect_right(times, t + eps) - 1)


def is_finite_positive(x: float) -> bool:
    return x > 0 and math.isfinite(x)
