"""Video probing and frame decoding: decord first, an ffmpeg-python fallback.

Both paths return the same thing for the same frame indices: frames resized so that the short side is ``S``
(aspect kept) and centre-cropped to ``S x S``, as a uint8 array ``[K, S, S, 3]`` (RGB).

- decord: ``VideoReader(path, width=w, height=h, num_threads=1)`` decodes straight at the resized size
  (libswscale inside decord, bilinear), then :func:`center_crop` in numpy.
- ffmpeg: one process, one filter pass ``select=eq(n,i1)+eq(n,i2)+... , scale=w:h:flags=bilinear (decord's
  scaler), format=rgb24, crop=S:S`` to a rawvideo rgb24 pipe (``-fps_mode passthrough`` so no frame is
  duplicated; ``-xerror`` so a corrupt stretch fails the video rather than dropping frames, which would shift
  the frame counter ``n``). The binary is :func:`ffmpeg_decoder_binary` (the static imageio-ffmpeg build when
  installed: it starts in a sixth of the CPU time of a shared-library build), handed to ffmpeg-python through
  ``cmd=``. A timeout kills it.

Only the packets the frames need (``reference_only=True``, the default): for H.264 in MP4,
:mod:`preprocess.avc_packets` keeps the requested pictures, the reference pictures before them back to their
IDR, and nothing else (no unrequested non-reference picture, no GOP without a requested frame, nothing after
the last requested frame). decord reads those packets as an in-memory MP4, ffmpeg as Annex B on stdin; the frame
indices become ranks among the kept frames. The pixels are bit-identical to decoding the whole file (tested);
any other file, or a plan decord does not accept, is decoded whole. Measured on 10 s 640x480 libx264
``veryfast`` clips (keyint 250): 165 of 300 pictures decoded for 12 uniform frames, ~40% less CPU.

Probing (fps, frame count, duration, width, height) uses decord's metadata (decoding frame 0 for the size) or,
on the ffmpeg path, one stream-copy pass ``ffmpeg -i f -map 0:v:0 -c copy -f framecrc pipe:`` whose log gives
the stream header and whose output has one line per packet (the exact count, in every ffmpeg version: 7.0 leaves
the ``frame=`` statistics out for stream copies). ffprobe is not needed at run time.

decord quirk: some tiny frame widths (48 px) fail with "DECORDArrayCopyFromTo: The size must exactly match";
the job's ffmpeg fallback covers them.

Failures raise :class:`DecodeError` with a message naming the file and the problem; nothing is zero-filled.
"""

from __future__ import annotations

import io
import logging
import math
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from preprocess.avc_packets import plan_packets

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
    """Metadata of a video stream: ``fps`` (average), ``num_frames`` (shown frames), ``duration`` = num_frames /
    fps (s), ``width`` and ``height`` of the coded frames."""

    fps: float
    num_frames: int
    duration: float
    width: int
    height: int


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


def _probe_decord(path: str) -> VideoInfo:
    vr = _decord_reader(path)
    n = len(vr)
    fps = float(vr.get_avg_fps())
    if n <= 0:
        raise DecodeError(f"no frames in {path}")
    try:
        h, w = vr[0].shape[:2]
    except Exception as exc:  # noqa: BLE001
        raise DecodeError(f"decord cannot decode frame 0 of {path}: {_short(exc)}") from exc
    if not fps > 0 or not math.isfinite(fps):
        raise DecodeError(f"no usable frame rate in {path} (fps={fps})")
    try:  # presentation start of frame 0 from the index (no decoding): an edit list's pre-roll is negative
        first = float(vr.get_frame_timestamp([0])[0, 0])
    except Exception as exc:  # noqa: BLE001
        raise DecodeError(f"decord cannot read the frame timestamps of {path}: {_short(exc)}") from exc
    if first < -0.5 / fps:
        # e.g. a stream-copy cut at a non-key time (ffmpeg -ss 0.5 -c copy): decord counts the hidden pre-roll
        # frames but its random access and batch decoding disagree on their numbering, so it cannot be trusted
        # here; ffmpeg drops them itself (the job falls back to it)
        raise DecodeError(
            f"{path}: its MP4 edit list hides about {round(-first * fps)} leading frames, which decord numbers "
            "inconsistently"
        )
    return VideoInfo(fps=fps, num_frames=n, duration=n / fps, width=int(w), height=int(h))


def _decode_decord(
    path: str, unique: list[int], size: int, info: VideoInfo, reference_only: bool = True
) -> np.ndarray:
    w, h = resize_dims(info.width, info.height, size)
    plan = plan_packets(path, unique, info.num_frames, form="mp4") if reference_only else None
    if plan is not None:
        try:  # the needed packets remuxed in memory; any surprise falls back to the whole file
            vr = _decord_reader(path, width=w, height=h, data=plan.stream)
            if len(vr) == plan.kept:
                logger.debug("%s: decoding %d of %d packets", path, plan.kept, plan.total)
                return center_crop(_decord_batch(vr, plan.ranks, path, w, h), size)
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
    return center_crop(_decord_batch(vr, unique, path, w, h), size)


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
_DURATION_RE = re.compile(r"Duration: (\d+):(\d+):(\d+(?:\.\d+)?)")
_VIDEO_RE = re.compile(r"Stream #\d+:\d+.*?: Video: (?P<rest>.*)")
_SIZE_RE = re.compile(r"(?<![0-9a-fx])(\d{1,5})x(\d{1,5})(?![0-9])")
_FPS_RE = re.compile(r"(\d+(?:\.\d+)?)(k?) (fps|tbr)")


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


def _shown_packet(line: bytes) -> bool:
    """A framecrc line of a packet that will be shown: not a comment, not flagged discard (``F=`` bit 0x4: the
    packets an MP4 edit list hides, which ffmpeg's decoding then drops)."""
    if not line.strip() or line.startswith(b"#"):
        return False
    flags = line.rpartition(b"F=0x")[2] if b"F=0x" in line else b"0"
    try:
        return not int(flags.split(b",")[0].strip() or b"0", 16) & 0x4
    except ValueError:
        return True


def _probe_ffmpeg(path: str, timeout: float | None = None) -> VideoInfo:
    import ffmpeg

    # one framecrc line per video packet on stdout: the frame count without relying on the "frame=" statistics
    # field, which some ffmpeg builds (7.0) leave out for stream copies
    stream = ffmpeg.input(path).output("pipe:", format="framecrc", map="0:v:0", c="copy")
    args = ffmpeg.compile(stream, cmd=ffmpeg_decoder_binary())
    args[1:1] = ["-hide_banner", "-nostdin"]
    proc = _run(args, path, timeout)
    log = proc.stderr.decode("utf-8", "replace")
    video = _VIDEO_RE.search(log)
    if video is None:
        if "Stream #" in log:
            raise DecodeError(f"no video stream in {path}")
        raise DecodeError(f"ffmpeg cannot read {path}: {_last_error(proc.stderr)}")
    rest = video.group("rest")
    size = _SIZE_RE.search(rest)
    fps_m = _FPS_RE.search(rest)
    packets = sum(1 for line in proc.stdout.splitlines() if _shown_packet(line))
    if size is None or fps_m is None:
        raise DecodeError(f"ffmpeg reports no frame size / rate for {path}: {rest[:200]}")
    fps = float(fps_m.group(1)) * (1000.0 if fps_m.group(2) else 1.0)
    n = packets
    if proc.returncode != 0 or n <= 0:
        raise DecodeError(f"ffmpeg cannot read the video stream of {path}: {_last_error(proc.stderr)}")
    return VideoInfo(
        fps=fps, num_frames=n, duration=n / fps, width=int(size.group(1)), height=int(size.group(2))
    )


def _decode_ffmpeg(
    path: str,
    unique: list[int],
    size: int,
    info: VideoInfo,
    timeout: float | None,
    reference_only: bool = True,
) -> np.ndarray:
    import ffmpeg

    w, h = resize_dims(info.width, info.height, size)
    plan = plan_packets(path, unique, info.num_frames) if reference_only else None
    if plan is not None:  # H.264 in MP4: only the packets the frames need, as Annex B on stdin
        logger.debug("%s: decoding %d of %d packets", path, plan.kept, plan.total)
        try:
            return _ffmpeg_frames(
                ffmpeg.input("pipe:", format="h264"), plan.ranks, path, w, h, size, timeout, plan.stream
            )
        except _Timeout:
            raise
        except DecodeError as exc:  # any other surprise: the whole file decides
            logger.warning("planned ffmpeg decode of %s failed (%s); decoding the whole file", path, exc)
    return _ffmpeg_frames(ffmpeg.input(path), unique, path, w, h, size, timeout, None)


def _ffmpeg_frames(
    source, picks: list[int], path: str, w: int, h: int, size: int, timeout: float | None, feed: bytes | None
) -> np.ndarray:
    """Frames ``picks`` (decoder output counter ``n``) of ``source``: uint8 ``[len(picks), size, size, 3]``."""
    import ffmpeg

    expr = "+".join(f"eq(n,{i})" for i in picks)
    stream = (
        source.video.filter("select", expr)
        .filter("scale", w, h, flags="bilinear")  # decord's scaler: both paths give the same pixels
        .filter("format", "rgb24")  # crop in RGB: a yuv420p crop would round an odd x offset to even
        .filter("crop", size, size, (w - size) // 2, (h - size) // 2)  # same offsets as center_crop
        .output("pipe:", format="rawvideo", pix_fmt="rgb24", fps_mode="passthrough", threads=1)
    )
    args = ffmpeg.compile(stream, cmd=ffmpeg_decoder_binary())
    # -xerror: a decoding error (corrupt stretch) fails the video instead of silently dropping frames, which
    # would shift select's frame counter n and return the wrong frames
    args[1:1] = ["-hide_banner", "-nostdin", "-loglevel", "error", "-xerror", "-threads", "1"]
    proc = _run(args, path, timeout, feed)
    frame_bytes = size * size * 3
    got = len(proc.stdout) // frame_bytes
    if proc.returncode != 0 and got < len(picks):
        raise DecodeError(f"ffmpeg failed on {path}: {_last_error(proc.stderr)}")
    if got != len(picks) or len(proc.stdout) % frame_bytes:
        raise DecodeError(
            f"ffmpeg returned {got} of {len(picks)} requested frames from {path} "
            "(truncated or corrupt stream?)"
        )
    return np.frombuffer(proc.stdout, np.uint8).reshape(got, size, size, 3).copy()


# -- public -----------------------------------------------------------------------------------------------------
def probe(path: str, *, backend: str = "decord", timeout: float | None = None) -> VideoInfo:
    """Probe ``path`` with ``backend`` (``decord`` or ``ffmpeg``); raises :class:`DecodeError`."""
    _check_file(path)
    if backend == "decord":
        return _probe_decord(path)
    if backend == "ffmpeg":
        return _probe_ffmpeg(path, timeout)
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
