"""Video probing and frame decoding: decord first, an ffmpeg-python fallback.

Both paths return the same thing for the same frame indices: frames resized so that the short side is ``S``
(aspect kept) and centre-cropped to ``S x S``, as a uint8 array ``[K, S, S, 3]`` (RGB).

- decord: ``VideoReader(path, width=w, height=h, num_threads=1)`` decodes straight at the resized size
  (libswscale inside decord, bilinear), then :func:`center_crop` in numpy.
- ffmpeg: one process, one filter pass ``select=eq(pts,p1)+eq(pts,p2)+... , scale=w:h:flags=bilinear (decord's
  scaler), format=rgb24`` to a rawvideo rgb24 pipe, cropped in numpy (``-fps_mode passthrough`` so no frame is
  duplicated; ``-xerror`` so a corrupt stretch fails the video rather than dropping frames; ``eq(n,r)`` ranks
  only on the packet-skip stream below, whose frames have no timestamps). The binary is :func:`ffmpeg_decoder_binary` (the static imageio-ffmpeg build when
  installed: it starts in a sixth of the CPU time of a shared-library build), handed to ffmpeg-python through
  ``cmd=``. A timeout kills it.

Only the packets the frames need (``reference_only=True``, the default): for H.264 in MP4,
:mod:`preprocess.avc_packets` keeps the requested pictures, the reference pictures before them back to their
IDR, and nothing else (no unrequested non-reference picture, no GOP without a requested frame, nothing after
the last requested frame). decord reads those packets as an in-memory MP4, ffmpeg as Annex B on stdin; the frame
indices become ranks among the kept frames. The pixels are bit-identical to decoding the whole file (tested);
any other file, or a plan decord does not accept, is decoded whole. Measured on 10 s 640x480 libx264
``veryfast`` clips (keyint 250): 165 of 300 pictures decoded for 12 uniform frames, ~40% less CPU.

Probing is structured (:mod:`preprocess.probe`: ffprobe JSON, else PyAV's demuxer), never log text: exact rational
fps, shown-frame count, per-frame presentation timestamps, coded size, rotation and SAR. Frames are chosen on
presentation time; the ffmpeg whole-file path selects them by pts (``-copyts``, ``select=eq(pts,P)+...``), so a
decoder that drops undecodable leading pictures (MPEG-TS cut mid-GOP) cannot shift the selection. decord is used
only where its index agrees with the probe (same count, same times within half a frame) and the container and
geometry are ones it handles; elsewhere :func:`probe` with ``backend="decord"`` raises and the job uses ffmpeg.

Geometry as displayed, identical on both backends: the coded picture is scaled to the size that, after rotation,
has the displayed aspect ratio (SAR applied) and short side ``S``; then ``np.rot90`` (the display matrix's
counter-clockwise angle, ``-noautorotate`` on the ffmpeg CLI so it is applied once) and the centre crop.

decord quirk: some tiny frame widths (48 px) fail with "DECORDArrayCopyFromTo: The size must exactly match";
the job's ffmpeg fallback covers them.

Failures raise :class:`DecodeError` with a message naming the file and the problem; nothing is zero-filled.
"""

from __future__ import annotations

import io
import logging
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache

import numpy as np

from preprocess.avc_packets import plan_packets
from preprocess.probe import ProbeError, StreamProbe, probe_stream

__all__ = [
    "BACKENDS",
    "DecodeError",
    "VideoInfo",
    "center_crop",
    "decode_frames",
    "ffmpeg_binary",
    "ffmpeg_decoder_binary",
    "probe",
    "resize_dims",
]

logger = logging.getLogger(__name__)

BACKENDS = ("decord", "ffmpeg")


class DecodeError(RuntimeError):
    """A video could not be probed or decoded; the message names the file and the reason."""


class _Timeout(DecodeError):
    """ffmpeg ran past its timeout (not retried on the whole file)."""


@dataclass(frozen=True)
class VideoInfo:
    """Metadata of a video stream (from :mod:`preprocess.probe`).

    ``fps`` (average, float of the exact rational), ``num_frames`` (shown frames), ``duration`` (s: last frame's
    time + one frame), ``width`` x ``height`` of the coded frames; ``times``: presentation time of each shown frame
    in seconds, 0 = the first shown frame; ``pts``: the same in stream ``time_base`` ticks (what the ffmpeg path
    selects on); ``rotation`` (counter-clockwise degrees applied for display), ``sar`` (sample aspect ratio),
    ``display_width`` x ``display_height`` (the picture as shown: SAR then rotation applied); ``format_name`` and
    ``timing_source`` (``packets``: timestamps from trusted packets; ``frames``: from a decode).
    Empty ``times`` (hand-made infos) means constant rate: ``times[i] = i / fps``.
    """

    fps: float
    num_frames: int
    duration: float
    width: int
    height: int
    times: tuple[float, ...] = ()
    pts: tuple[int, ...] = ()
    rotation: int = 0
    sar: Fraction = Fraction(1)
    display_width: int = 0
    display_height: int = 0
    format_name: str = ""
    timing_source: str = "packets"
    start_time: float = 0.0

    @property
    def shown_size(self) -> tuple[int, int]:
        """``(w, h)`` of the displayed picture (coded size when not probed)."""
        return (self.display_width or self.width, self.display_height or self.height)


def info_from_probe(sp: StreamProbe) -> VideoInfo:
    """:class:`VideoInfo` of a structured probe."""
    return VideoInfo(
        fps=float(sp.fps), num_frames=sp.num_frames, duration=sp.duration, width=sp.coded_width,
        height=sp.coded_height, times=sp.times, pts=sp.pts, rotation=sp.rotation, sar=sp.sar,
        display_width=sp.display_width, display_height=sp.display_height, format_name=sp.format_name,
        timing_source=sp.timing_source, start_time=sp.start_time,
    )


def _structured(path: str, timeout: float | None) -> VideoInfo:
    try:
        return info_from_probe(probe_stream(path, timeout=timeout))
    except ProbeError as exc:
        raise DecodeError(str(exc)) from exc


def _scaled_dims(info: VideoInfo, size: int) -> tuple[int, int]:
    """Size ``(w, h)`` to scale the *coded* picture to, so that after rotation its short side is ``size`` with the
    displayed aspect ratio (SAR applied): ``resize_dims`` of the shown size, swapped for 90 / 270."""
    w, h = resize_dims(*info.shown_size, size)
    return (h, w) if info.rotation in (90, 270) else (w, h)


def _orient_and_crop(frames: np.ndarray, info: VideoInfo, size: int) -> np.ndarray:
    """Rotate scaled coded frames ``[K, h, w, 3]`` for display (``np.rot90`` by rotation / 90, counter-clockwise,
    as the ffmpeg CLI's autorotate) and centre-crop to ``size``."""
    k = (info.rotation // 90) % 4
    if k:
        frames = np.rot90(frames, k, axes=(1, 2))
    return center_crop(frames, size)


@lru_cache(maxsize=1)
def ffmpeg_binary() -> str:
    """Path of the ffmpeg executable: ``ffmpeg`` on PATH, else the imageio-ffmpeg static binary."""
    found = shutil.which("ffmpeg")
    if found:
        return found
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except Exception as exc:  # noqa: BLE001 - turned into a clear error
        raise DecodeError(f"no ffmpeg binary: not on PATH and imageio_ffmpeg failed ({exc})") from exc


@lru_cache(maxsize=1)
def ffmpeg_decoder_binary() -> str:
    """The ffmpeg executable for probing and decoding: the imageio-ffmpeg static binary when installed, else
    :func:`ffmpeg_binary`.

    A statically linked ffmpeg starts in ~11 ms of CPU; a distribution build that loads ~200 shared libraries
    takes ~64 ms (Debian 12, measured), paid twice per video (probe + decode). Encoding (synthetic data, test
    videos) keeps :func:`ffmpeg_binary`, so generated files do not change with this choice.
    """
    try:
        import imageio_ffmpeg

        exe = imageio_ffmpeg.get_ffmpeg_exe()
        if exe and os.access(exe, os.X_OK):
            return exe
    except Exception as exc:  # noqa: BLE001 - any failure: use the system binary
        logger.debug("imageio_ffmpeg unavailable (%s); decoding with %s", exc, ffmpeg_binary())
    return ffmpeg_binary()


def resize_dims(width: int, height: int, size: int) -> tuple[int, int]:
    """``(w, h)`` with the short side equal to ``size`` and the aspect ratio kept (long side rounded, >= size).

    >>> resize_dims(640, 480, 224)
    (299, 224)
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"invalid frame size {width}x{height}")
    if width >= height:
        return max(size, int(round(width * size / height))), size
    return size, max(size, int(round(height * size / width)))


def center_crop(frames: np.ndarray, size: int) -> np.ndarray:
    """Centre ``size x size`` crop of ``frames [K, H, W, C]`` (H, W >= size): offsets ``(H - size) // 2``."""
    h, w = frames.shape[1:3]
    if h < size or w < size:
        raise ValueError(f"frames {h}x{w} smaller than crop {size}")
    top, left = (h - size) // 2, (w - size) // 2
    return np.ascontiguousarray(frames[:, top : top + size, left : left + size])


def _check_file(path: str) -> None:
    if not os.path.exists(path):
        raise DecodeError(f"missing file: {path}")
    if not os.path.isfile(path):
        raise DecodeError(f"not a regular file: {path}")
    if os.path.getsize(path) == 0:
        raise DecodeError(f"empty file (0 bytes): {path}")


# -- decord ---------------------------------------------------------------------------------------------------
def _decord_reader(path: str, width: int = -1, height: int = -1, data: bytes | None = None):
    """A one-thread decord reader of ``path`` (or of the in-memory file ``data`` made from it)."""
    import decord

    try:
        source = path if data is None else io.BytesIO(data)
        return decord.VideoReader(source, ctx=decord.cpu(0), width=width, height=height, num_threads=1)
    except Exception as exc:  # noqa: BLE001 - decord raises DECORDError / RuntimeError subclasses
        raise DecodeError(f"decord cannot open {path}: {_short(exc)}") from exc


_DECORD_PREFIX = re.compile(r"\[\d\d:\d\d:\d\d\] \S+:\d+: ")


def _short(exc: BaseException) -> str:
    """First meaningful line of an exception message (decord appends long C++ stack traces)."""
    text = str(exc).strip() or type(exc).__name__
    lines = [
        ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith(("Stack", "[bt]"))
    ]
    first = _DECORD_PREFIX.sub("", lines[0] if lines else text)
    if "cannot find video stream" in first:
        return "no video stream"
    return first[:300]


# decord numbers frames by its own index; it is used only where that index was shown to be the probe's
_DECORD_FORMATS = ("mov", "mp4", "matroska", "webm")


def _probe_decord(path: str, timeout: float | None = None) -> VideoInfo:
    """Structured probe, then decord's own view of the file, accepted only when it agrees: same shown-frame
    count, same presentation times (within half a frame), and a container/geometry decord handles (not MPEG-TS
    or AVI, whose timestamps it misnumbers; no display rotation, which it ignores). Non-square pixels are fine:
    both backends are given the same SAR-corrected output size."""
    vr = _decord_reader(path)  # decord's own verdict first: a file it cannot open is named as such
    info = _structured(path, timeout)
    fmt = info.format_name
    if not any(f in fmt.split(",") for f in _DECORD_FORMATS) or info.timing_source != "packets":
        raise DecodeError(f"decord not used for {path}: container {fmt!r} with {info.timing_source} timing")
    if info.rotation:
        raise DecodeError(f"decord not used for {path}: display rotation {info.rotation} (decord ignores it)")
    n = len(vr)
    if n <= 0:
        raise DecodeError(f"no frames in {path}")
    try:  # presentation start of every frame from the index (no decoding): an edit list's pre-roll is negative
        stamps = vr.get_frame_timestamp(list(range(n)))[:, 0]
    except Exception as exc:  # noqa: BLE001
        raise DecodeError(f"decord cannot read the frame timestamps of {path}: {_short(exc)}") from exc
    half = 0.5 / info.fps
    if float(stamps[0]) < -half:
        # e.g. a stream-copy cut at a non-key time (ffmpeg -ss 0.5 -c copy): decord counts the hidden pre-roll
        # frames but its random access and batch decoding disagree on their numbering
        raise DecodeError(
            f"{path}: its MP4 edit list hides about {round(-float(stamps[0]) * info.fps)} leading frames, which "
            "decord numbers inconsistently"
        )
    if n != info.num_frames:
        raise DecodeError(f"decord sees {n} frames in {path}, the probe {info.num_frames} shown frames")
    rel = stamps - stamps[0]
    worst = float(np.max(np.abs(rel - np.asarray(info.times)))) if n else 0.0
    if worst > half:
        raise DecodeError(f"decord's frame times of {path} differ from the stream's by up to {worst:.3f} s")
    return info


def _decode_decord(
    path: str, unique: list[int], size: int, info: VideoInfo, reference_only: bool = True
) -> np.ndarray:
    w, h = _scaled_dims(info, size)
    plan = plan_packets(path, unique, info.num_frames, form="mp4") if reference_only else None
    if plan is not None:
        try:  # the needed packets remuxed in memory; any surprise falls back to the whole file
            vr = _decord_reader(path, width=w, height=h, data=plan.stream)
            if len(vr) == plan.kept:
                logger.debug("%s: decoding %d of %d packets", path, plan.kept, plan.total)
                return _orient_and_crop(_decord_batch(vr, plan.ranks, path, w, h), info, size)
            logger.warning(
                "decord sees %d of %d planned packets of %s; decoding the whole file",
                len(vr),
                plan.kept,
                path,
            )
        except DecodeError as exc:
            logger.warning("planned decord decode of %s failed (%s); decoding the whole file", path, exc)
    vr = _decord_reader(path, width=w, height=h)
    if len(vr) < unique[-1] + 1:
        raise DecodeError(f"decord sees {len(vr)} frames in {path}, index {unique[-1]} requested")
    return _orient_and_crop(_decord_batch(vr, unique, path, w, h), info, size)


def _decord_batch(vr, indices: list[int], path: str, w: int, h: int) -> np.ndarray:
    try:
        frames = vr.get_batch(indices).asnumpy()
    except Exception as exc:  # noqa: BLE001
        raise DecodeError(f"decord cannot decode frames of {path}: {_short(exc)}") from exc
    if frames.shape != (len(indices), h, w, 3):
        raise DecodeError(
            f"decord returned frames of shape {frames.shape} for {path}, expected {(len(indices), h, w, 3)}"
        )
    return frames


# -- ffmpeg ---------------------------------------------------------------------------------------------------
def _run(
    args: list[str], path: str, timeout: float | None, feed: bytes | None = None
) -> subprocess.CompletedProcess:
    try:
        stdin = subprocess.DEVNULL if feed is None else None  # ``input`` supplies stdin otherwise
        return subprocess.run(args, capture_output=True, timeout=timeout, stdin=stdin, input=feed, check=False)
    except subprocess.TimeoutExpired as exc:
        raise _Timeout(f"ffmpeg timed out after {timeout} s on {path}") from exc


def _last_error(stderr: bytes) -> str:
    lines = [ln.strip() for ln in stderr.decode("utf-8", "replace").splitlines() if ln.strip()]
    return lines[-1][:300] if lines else "no message"


def _decode_ffmpeg(
    path: str,
    unique: list[int],
    size: int,
    info: VideoInfo,
    timeout: float | None,
    reference_only: bool = True,
) -> np.ndarray:
    import ffmpeg

    w, h = _scaled_dims(info, size)
    plan = None
    if reference_only and info.timing_source == "packets" and not info.rotation:
        plan = plan_packets(path, unique, info.num_frames)
    if plan is not None:  # H.264 in MP4: only the packets the frames need, as Annex B on stdin
        logger.debug("%s: decoding %d of %d packets", path, plan.kept, plan.total)
        try:
            frames = _ffmpeg_frames(
                ffmpeg.input("pipe:", format="h264"), _by_rank(plan.ranks), path, w, h, timeout, plan.stream
            )
            return _orient_and_crop(frames, info, size)
        except _Timeout:
            raise
        except DecodeError as exc:  # any other surprise: the whole file decides
            logger.warning("planned ffmpeg decode of %s failed (%s); decoding the whole file", path, exc)
    if info.pts:  # whole file: pick frames by presentation timestamp (never by a decoder frame counter)
        source = ffmpeg.input(path, copyts=None, noautorotate=None)
        picks = _by_pts([info.pts[i] for i in unique])
    else:
        source = ffmpeg.input(path, noautorotate=None)
        picks = _by_rank(unique)
    return _orient_and_crop(_ffmpeg_frames(source, picks, path, w, h, timeout, None), info, size)


def _by_rank(ranks: list[int]) -> tuple[str, int]:
    return "+".join(f"eq(n,{i})" for i in ranks), len(ranks)


def _by_pts(pts: list[int]) -> tuple[str, int]:
    return "+".join(f"eq(pts,{p})" for p in pts), len(pts)


def _ffmpeg_frames(
    source, picks: tuple[str, int], path: str, w: int, h: int, timeout: float | None, feed: bytes | None
) -> np.ndarray:
    """Frames chosen by the select expression ``picks`` (``(expr, count)``) of ``source``, scaled to ``w x h``:
    uint8 ``[count, h, w, 3]`` (coded orientation; the caller rotates and crops)."""
    import ffmpeg

    expr, count = picks
    stream = (
        source.video.filter("select", expr)
        .filter("scale", w, h, flags="bilinear")  # decord's scaler: both paths give the same pixels
        .filter("format", "rgb24")
        .output("pipe:", format="rawvideo", pix_fmt="rgb24", fps_mode="passthrough", threads=1)
    )
    args = ffmpeg.compile(stream, cmd=ffmpeg_decoder_binary())
    # -xerror: a decoding error (corrupt stretch) fails the video instead of silently dropping frames
    args[1:1] = ["-hide_banner", "-nostdin", "-loglevel", "error", "-xerror", "-threads", "1"]
    proc = _run(args, path, timeout, feed)
    frame_bytes = w * h * 3
    got = len(proc.stdout) // frame_bytes
    if proc.returncode != 0 and got < count:
        raise DecodeError(f"ffmpeg failed on {path}: {_last_error(proc.stderr)}")
    if got != count or len(proc.stdout) % frame_bytes:
        raise DecodeError(
            f"ffmpeg returned {got} of {count} requested frames from {path} (truncated or corrupt stream?)"
        )
    return np.frombuffer(proc.stdout, np.uint8).reshape(got, h, w, 3).copy()


# -- public -----------------------------------------------------------------------------------------------------
def probe(path: str, *, backend: str = "decord", timeout: float | None = None) -> VideoInfo:
    """Probe ``path`` with ``backend`` (``decord`` or ``ffmpeg``); raises :class:`DecodeError`."""
    _check_file(path)
    if backend == "decord":
        return _probe_decord(path, timeout)
    if backend == "ffmpeg":
        return _structured(path, timeout)
    raise ValueError(f"unknown decoder backend {backend!r}; expected one of {BACKENDS}")


def decode_frames(
    path: str,
    indices: list[int] | tuple[int, ...],
    *,
    size: int = 224,
    backend: str = "decord",
    info: VideoInfo | None = None,
    timeout: float | None = None,
    reference_only: bool = True,
) -> np.ndarray:
    """Decode source frames ``indices`` (any order, repeats allowed) as uint8 ``[len(indices), size, size, 3]``.

    Each distinct frame is decoded once; repeats are copies. ``info`` skips the probe when already known.
    ``timeout`` (s) bounds the ffmpeg subprocess (decord runs in-process: the job enforces its timeout by
    killing the worker). ``reference_only`` (ffmpeg backend): for H.264 in MP4, feed the decoder only the
    packets the frames need (:mod:`preprocess.avc_packets`; same pixels, fewer pictures decoded); ``False``
    decodes the whole file.
    """
    if not indices:
        raise ValueError("no frame indices requested")
    _check_file(path)
    info = info or probe(path, backend=backend, timeout=timeout)
    unique = sorted(set(int(i) for i in indices))
    if unique[0] < 0 or unique[-1] >= info.num_frames:
        raise DecodeError(
            f"frame indices {unique[0]}..{unique[-1]} outside 0..{info.num_frames - 1} of {path}"
        )
    if backend == "decord":
        frames = _decode_decord(path, unique, size, info, reference_only)
    elif backend == "ffmpeg":
        frames = _decode_ffmpeg(path, unique, size, info, timeout, reference_only)
    else:
        raise ValueError(f"unknown decoder backend {backend!r}; expected one of {BACKENDS}")
    pos = {idx: k for k, idx in enumerate(unique)}
    return frames[[pos[int(i)] for i in indices]]
