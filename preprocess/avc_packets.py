"""Reference-only packet plans for H.264 in MP4: hand a decoder only the packets a set of frames needs.

Decoding ``K`` frames spread over a clip with long GOPs (libx264's default keyframe interval is 250) means
decoding nearly every frame. Two kinds of packet are not needed to reconstruct the requested frames exactly:

- non-reference pictures (every VCL NAL unit has ``nal_ref_idc == 0``, H.264 7.4.1) that are not requested:
  no other picture predicts from them (libavcodec's ``skip_frame=noref`` drops the same pictures; typically the
  non-pyramid B-frames, ~45% of a libx264 ``veryfast`` stream);
- everything outside the GOPs that hold a requested frame, and in those GOPs everything after the last
  requested frame in decode order. GOPs here start at IDR pictures only (``nal_unit_type == 5``): no picture
  after an IDR references one before it, so cutting there is exact (open-GOP I-frames are not cut points).

:func:`plan_packets` reads the MP4 sample table (``stsz``/``stco``/``co64``/``stsc``/``stts``/``ctts``/``stss``,
``avcC``, ``elst``), keeps those packets in decode order, converts them to an Annex B byte stream (4-byte start
codes, the ``avcC`` SPS/PPS before every IDR) and gives, for each requested frame, its rank among the kept
frames in presentation order, i.e. the frame counter ``n`` a decoder of the kept stream reaches it at. Decoding
is bit exact: the kept pictures decode to the same samples as in a full decode.

Anything outside the plain case returns ``None`` and the caller decodes the file as usual: not an ISO BMFF
file, no or several video tracks, not ``avc1`` (``avc3`` keeps its parameter sets in band, where a skipped
packet could hold them), a sample carrying an SPS/PPS that ``avcC`` lacks, a sample without a slice, fragmented
MP4, an edit list that hides, delays or rescales frames (e.g. a stream copy cut at a non-key time), duplicate
presentation times, a first sample that is not IDR, malformed NAL lengths, or kept samples over ``max_bytes``.
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

__all__ = ["AvcTrack", "PacketPlan", "plan_packets", "read_avc_track"]

logger = logging.getLogger(__name__)

_CONTAINERS = {b"moov", b"trak", b"mdia", b"minf", b"stbl", b"edts"}
_START = b"\x00\x00\x00\x01"


@dataclass(frozen=True)
class AvcTrack:
    """The one H.264 video track of an MP4, samples in decode order.

    ``offsets``, ``sizes`` int64 ``[N]`` (file byte ranges), ``pts`` int64 ``[N]`` (dts + composition offset,
    media time scale), ``sync`` bool ``[N]`` (``stss``; all True without it), ``length_size`` (bytes of each NAL
    length prefix, 1..4), ``parameter_sets`` (Annex B SPS + PPS from ``avcC``).
    """

    offsets: np.ndarray
    sizes: np.ndarray
    pts: np.ndarray
    sync: np.ndarray
    length_size: int
    parameter_sets: bytes
    dts: np.ndarray
    media_scale: int
    sample_description: bytes
    width: int
    height: int


@dataclass(frozen=True)
class PacketPlan:
    """``stream``: Annex B H.264 of the kept packets; ``ranks[j]``: position of requested frame ``j`` (sorted
    unique presentation indices) among the kept frames in presentation order; ``kept`` / ``total`` packets."""

    stream: bytes
    ranks: list[int]
    kept: int
    total: int


class _NotPlain(Exception):
    """The file is outside what the plan handles (the caller falls back to a full decode)."""


# -- ISO BMFF --------------------------------------------------------------------------------------------------
def _boxes(f: BinaryIO, start: int, end: int):
    """Yield ``(type, payload_start, payload_end)`` of the boxes in ``[start, end)``."""
    pos = start
    while pos + 8 <= end:
        f.seek(pos)
        head = f.read(16)
        if len(head) < 8:
            raise _NotPlain("truncated box header")
        size, kind = struct.unpack(">I4s", head[:8])
        hdr = 8
        if size == 1:
            if len(head) < 16:
                raise _NotPlain("truncated large box header")
            size, hdr = struct.unpack(">Q", head[8:16])[0], 16
        elif size == 0:
            size = end - pos
        if size < hdr or pos + size > end:
            raise _NotPlain(f"bad box size {size} for {kind!r}")
        yield kind, pos + hdr, pos + size
        pos += size


def _read(f: BinaryIO, start: int, end: int) -> bytes:
    f.seek(start)
    data = f.read(end - start)
    if len(data) != end - start:
        raise _NotPlain("truncated box")
    return data


def _walk(
    f: BinaryIO, start: int, end: int, out: dict[bytes, list[tuple[int, int]]], path: bytes = b""
) -> None:
    for kind, a, b in _boxes(f, start, end):
        key = path + b"/" + kind
        out.setdefault(key, []).append((a, b))
        if kind in _CONTAINERS:
            _walk(f, a, b, out, key)


def _table(data: bytes, count_at: int, fields: int, dtype: str) -> np.ndarray:
    count = struct.unpack_from(">I", data, count_at)[0]
    need = count_at + 4 + count * fields * np.dtype(dtype).itemsize
    if need > len(data):
        raise _NotPlain("truncated sample table")
    return np.frombuffer(data, dtype, count * fields, count_at + 4).reshape(count, fields).astype(np.int64)


def _parse_avcc(stsd: bytes) -> tuple[int, bytes]:
    """``(length_size, annex B SPS+PPS)`` from an ``stsd`` payload holding one ``avc1`` entry."""
    if struct.unpack_from(">I", stsd, 4)[0] != 1:
        raise _NotPlain("several sample descriptions")
    size, kind = struct.unpack_from(">I4s", stsd, 8)
    if kind != b"avc1":
        raise _NotPlain(f"sample entry {kind!r} is not H.264 with out-of-band parameter sets (avc1)")
    entry = stsd[8 : 8 + size]
    pos = 8 + 78  # visual sample entry fields
    while pos + 8 <= len(entry):
        bsize, bkind = struct.unpack_from(">I4s", entry, pos)
        if bsize < 8:
            break
        if bkind == b"avcC":
            c = entry[pos + 8 : pos + bsize]
            length_size = (c[4] & 3) + 1
            sets, p = [], 6
            for count_byte in (c[5] & 31, None):
                if count_byte is None:
                    count_byte, p = c[p], p + 1
                for _ in range(count_byte):
                    n = struct.unpack_from(">H", c, p)[0]
                    sets.append(_START + c[p + 2 : p + 2 + n])
                    p += 2 + n
            if p > len(c):
                raise _NotPlain("truncated avcC")
            return length_size, b"".join(sets)
        pos += bsize
    raise _NotPlain("no avcC box")


def _video_track(f: BinaryIO, file_end: int) -> tuple[dict[bytes, list[tuple[int, int]]], int]:
    top = {}
    for kind, a, b in _boxes(f, 0, file_end):
        top.setdefault(kind, []).append((a, b))
    if b"moov" not in top or b"moof" in top:
        raise _NotPlain("no moov box or a fragmented MP4")
    moov_a, moov_b = top[b"moov"][0]
    tracks, movie_scale = [], 0
    for kind, a, b in _boxes(f, moov_a, moov_b):
        if kind == b"mvex":
            raise _NotPlain("fragmented MP4 (mvex)")
        if kind == b"mvhd":
            mvhd = _read(f, a, b)
            movie_scale = struct.unpack_from(">I", mvhd, 20 if mvhd[0] == 1 else 12)[0]
        if kind == b"trak":
            boxes: dict[bytes, list[tuple[int, int]]] = {}
            _walk(f, a, b, boxes)
            hdlr = boxes.get(b"/mdia/hdlr")
            if hdlr and _read(f, *hdlr[0])[8:12] == b"vide":
                tracks.append(boxes)
    if len(tracks) != 1:
        raise _NotPlain(f"{len(tracks)} video tracks")
    if movie_scale <= 0:
        raise _NotPlain("no movie time scale")
    return tracks[0], movie_scale


def read_avc_track(path: str) -> AvcTrack | None:
    """The H.264 video track of the MP4 at ``path``, or ``None`` when the file is outside the plain case."""
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            return _read_track(f, f.tell())
    except (_NotPlain, struct.error, IndexError, ValueError, OSError) as exc:
        logger.debug("no packet plan for %s: %s", path, exc)
        return None


def _read_track(f: BinaryIO, file_end: int) -> AvcTrack:
    boxes, movie_scale = _video_track(f, file_end)

    def payload(name: str) -> bytes | None:
        hit = boxes.get(b"/mdia/minf/stbl/" + name.encode()) if name != "mdhd" else boxes.get(b"/mdia/mdhd")
        return _read(f, *hit[0]) if hit else None

    stsd, stsz, stsc, stts = payload("stsd"), payload("stsz"), payload("stsc"), payload("stts")
    chunk_box, wide = (payload("stco"), False) if payload("co64") is None else (payload("co64"), True)
    mdhd = payload("mdhd")
    if None in (stsd, stsz, stsc, stts, chunk_box, mdhd):
        raise _NotPlain("incomplete sample table")
    length_size, parameter_sets = _parse_avcc(stsd)
    media_scale = struct.unpack_from(">I", mdhd, 20 if mdhd[0] == 1 else 12)[0]

    uniform, n = struct.unpack_from(">II", stsz, 4)
    sizes = np.full(n, uniform, np.int64) if uniform else _table(stsz, 8, 1, ">u4")[:, 0]
    if n == 0 or len(sizes) != n:
        raise _NotPlain("no samples")
    chunks = _table(chunk_box, 4, 1, ">u8" if wide else ">u4")[:, 0]
    s2c = _table(stsc, 4, 3, ">u4")
    # samples per chunk, chunk by chunk (stsc runs hold until the next run's first chunk)
    per_chunk = np.zeros(len(chunks), np.int64)
    firsts = list(s2c[:, 0] - 1) + [len(chunks)]
    for r in range(len(s2c)):
        per_chunk[firsts[r] : firsts[r + 1]] = s2c[r, 1]
    if per_chunk.sum() != n:
        raise _NotPlain("stsc and stsz disagree")
    chunk_of = np.repeat(np.arange(len(chunks)), per_chunk)
    first_in_chunk = np.cumsum(per_chunk) - per_chunk
    ends = np.cumsum(sizes)
    start_of_first = ends[first_in_chunk] - sizes[first_in_chunk]
    offsets = chunks[chunk_of] + (ends - sizes - start_of_first[chunk_of])

    deltas = _table(stts, 4, 2, ">u4")
    dts = np.concatenate([[0], np.cumsum(np.repeat(deltas[:, 1], deltas[:, 0]))])[:n]
    ctts = payload("ctts")
    if ctts is not None:
        runs = _table(ctts, 4, 2, ">i4" if ctts[0] == 1 else ">u4")
        comp = np.repeat(runs[:, 1], runs[:, 0])
        if len(comp) != n:
            raise _NotPlain("ctts and stsz disagree")
        pts = dts + comp
    else:
        pts = dts
    if len(dts) != n or len(np.unique(pts)) != n:
        raise _NotPlain("stts/stsz disagree or duplicate presentation times")
    elst = boxes.get(b"/edts/elst")
    if elst:
        _check_edit_list(_read(f, *elst[0]), pts, movie_scale, media_scale)
    stss = payload("stss")
    sync = np.ones(n, bool)
    if stss is not None:
        sync[:] = False
        sync[_table(stss, 4, 1, ">u4")[:, 0] - 1] = True
    width, height = struct.unpack_from(">HH", stsd, 8 + 32)
    return AvcTrack(
        offsets=offsets,
        sizes=sizes,
        pts=pts,
        sync=sync,
        length_size=length_size,
        parameter_sets=parameter_sets,
        dts=dts,
        media_scale=media_scale,
        sample_description=stsd,
        width=width,
        height=height,
    )


def _check_edit_list(elst: bytes, pts: np.ndarray, movie_scale: int, media_scale: int) -> None:
    """Accept only one edit that starts at or before the first frame and lasts past the last frame's start
    (a demuxer then presents every frame, in order); anything else would change which frames are shown."""
    version, count = elst[0], struct.unpack_from(">I", elst, 4)[0]
    if count != 1:
        raise _NotPlain(f"edit list with {count} entries")
    if version == 1:
        seg, media_time, rate = struct.unpack_from(">QqI", elst, 8)
    else:
        seg, media_time, rate = struct.unpack_from(">IiI", elst, 8)
    if rate != 0x00010000 or media_time < 0 or media_time > pts.min() or seg == 0:
        raise _NotPlain("edit list drops, delays or rescales frames")
    if (int(pts.max()) - media_time) * movie_scale >= seg * media_scale:
        raise _NotPlain("edit list ends before the last frame")


# -- H.264 NAL units -------------------------------------------------------------------------------------------
def _nal_units(sample: bytes, length_size: int) -> list[bytes]:
    units, pos = [], 0
    while pos < len(sample):
        if pos + length_size > len(sample):
            raise _NotPlain("truncated NAL length")
        n = int.from_bytes(sample[pos : pos + length_size], "big")
        pos += length_size
        if n == 0 or pos + n > len(sample):
            raise _NotPlain("bad NAL length")
        units.append(sample[pos : pos + n])
        pos += n
    return units


def _kind(units: list[bytes], parameter_sets: bytes) -> tuple[bool, bool]:
    """``(is_reference, is_idr)`` of a picture's NAL units (slices are NAL types 1 and 5). An in-band SPS/PPS
    (types 7, 8) that ``avcC`` does not hold stops the plan: later pictures might depend on it."""
    for u in units:
        if u[0] & 31 in (7, 8) and _START + u not in parameter_sets:
            raise _NotPlain("in-band parameter set not in avcC")
    vcl = [u[0] for u in units if u[0] & 31 in (1, 5)]
    if not vcl:
        raise _NotPlain("sample without a slice")
    return any(h & 0x60 for h in vcl), any(h & 31 == 5 for h in vcl)


def plan_packets(
    path: str, indices: list[int], num_frames: int, *, form: str = "annexb", max_bytes: int = 64 << 20
) -> PacketPlan | None:
    """Plan the packets needed for presentation-order frames ``indices`` (sorted, unique) of ``path``.

    ``form``: ``"annexb"`` (an H.264 elementary stream for ``ffmpeg -f h264``) or ``"mp4"`` (the kept samples
    remuxed into a minimal MP4 with their original timestamps, for readers that need a container: decord).
    ``num_frames`` is the probed frame count: a sample table that disagrees gives ``None``. Returns ``None``
    whenever the file is outside the plain case (module docstring) or no packet can be left out; the caller
    then decodes the file itself.
    """
    if form not in ("annexb", "mp4"):
        raise ValueError(f"unknown packet plan form {form!r}; expected 'annexb' or 'mp4'")
    track = read_avc_track(path)
    if track is None or len(track.sizes) != num_frames or not indices:
        return None
    try:
        with open(path, "rb") as f:
            kept, samples = _keep(f, track, indices, max_bytes)
    except (_NotPlain, OSError, IndexError) as exc:
        logger.debug("no packet plan for %s: %s", path, exc)
        return None
    n = len(track.sizes)
    if len(kept) == n:
        return None  # nothing to skip: the file itself is the cheaper input
    display_of = np.empty(n, np.int64)
    display_of[np.argsort(track.pts, kind="stable")] = np.arange(n)  # decode index -> presentation index
    kept_display = np.sort(display_of[kept])
    ranks = [int(np.searchsorted(kept_display, i)) for i in indices]  # every requested frame is kept
    if form == "annexb":
        stream = b"".join(_annexb(track, units) for units in samples)
    else:
        stream = _mp4(track, kept, samples)
    return PacketPlan(stream=stream, ranks=ranks, kept=len(kept), total=n)


def _keep(
    f: BinaryIO, track: AvcTrack, indices: list[int], max_bytes: int
) -> tuple[np.ndarray, list[list[bytes]]]:
    """Decode indices of the kept samples (increasing) and their NAL units."""
    order = np.argsort(track.pts, kind="stable")  # presentation index -> decode index
    targets = sorted({int(order[i]) for i in indices})
    wanted = set(targets)

    def sample(k: int) -> list[bytes]:
        f.seek(int(track.offsets[k]))
        data = f.read(int(track.sizes[k]))
        if len(data) != int(track.sizes[k]):
            raise _NotPlain("sample past the end of the file")
        return _nal_units(data, track.length_size)

    # IDR pictures among the sync samples are the cut points; the first sample must be one
    idr_cache: dict[int, bool] = {}

    def is_idr(k: int) -> bool:
        if k not in idr_cache:
            idr_cache[k] = bool(track.sync[k]) and _kind(sample(k), track.parameter_sets)[1]
        return idr_cache[k]

    sync_idx = np.flatnonzero(track.sync)
    if not len(sync_idx) or sync_idx[0] != 0 or not is_idr(0):
        raise _NotPlain("first sample is not an IDR picture")
    spans: dict[int, int] = {}  # GOP start (an IDR) -> last target in it, decode order
    for t in targets:
        pos = int(np.searchsorted(sync_idx, t, side="right")) - 1
        while not is_idr(int(sync_idx[pos])):
            pos -= 1
        start = int(sync_idx[pos])
        spans[start] = max(spans.get(start, t), t)

    kept: list[int] = []
    samples: list[list[bytes]] = []
    total = 0
    for start in sorted(spans):
        for k in range(start, spans[start] + 1):
            units = sample(k)
            ref, _ = _kind(units, track.parameter_sets)
            if not (ref or k in wanted):
                continue
            kept.append(k)
            samples.append(units)
            total += int(track.sizes[k])
            if total > max_bytes:
                raise _NotPlain(f"kept stream over {max_bytes} bytes")
    return np.array(kept, np.int64), samples


def _annexb(track: AvcTrack, units: list[bytes]) -> bytes:
    head = track.parameter_sets if any(u[0] & 31 == 5 for u in units) else b""
    return head + b"".join(_START + u for u in units)


# -- minimal MP4 writer ----------------------------------------------------------------------------------------
def _box(kind: bytes, *payload: bytes) -> bytes:
    body = b"".join(payload)
    return struct.pack(">I4s", 8 + len(body), kind) + body


def _full(kind: bytes, version: int, flags: int, *payload: bytes) -> bytes:
    return _box(kind, struct.pack(">I", (version << 24) | flags), *payload)


_MATRIX = struct.pack(">9I", 0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000)


def _mp4(track: AvcTrack, kept: np.ndarray, samples: list[list[bytes]]) -> bytes:
    """One-track MP4 (``ftyp``, ``moov``, ``mdat``) of the kept samples: original ``stsd``, decode and
    presentation times shifted so the first kept sample decodes at 0; one sample per chunk; sync samples = kept
    IDR pictures; no edit list."""
    n_all = len(track.dts)
    data = [b"".join(len(u).to_bytes(track.length_size, "big") + u for u in units) for units in samples]
    dts = track.dts[kept]
    last = (
        track.dts[kept[-1] + 1] - track.dts[kept[-1]]
        if kept[-1] + 1 < n_all
        else (track.dts[-1] - track.dts[-2] if n_all > 1 else 1)
    )
    deltas = np.append(np.diff(dts), max(int(last), 1))
    comp = track.pts[kept] - dts
    duration = int(dts[-1] - dts[0] + deltas[-1])
    idr = [i + 1 for i, units in enumerate(samples) if any(u[0] & 31 == 5 for u in units)]
    scale = track.media_scale

    def runs(values: np.ndarray) -> bytes:
        out, count, prev = [], 0, None
        for v in values.tolist():
            if v == prev:
                count += 1
                continue
            if prev is not None:
                out.append((count, prev))
            prev, count = v, 1
        out.append((count, prev))
        return struct.pack(">I", len(out)) + b"".join(struct.pack(">Ii", c, v) for c, v in out)

    ftyp = _box(b"ftyp", b"isom", struct.pack(">I", 512), b"isomiso2avc1mp41")
    sizes = struct.pack(f">II{len(data)}I", 0, len(data), *(len(d) for d in data))

    def moov(mdat_start: int) -> bytes:
        offsets = np.cumsum([0] + [len(d) for d in data[:-1]]) + mdat_start
        stbl = _box(
            b"stbl",
            _box(b"stsd", track.sample_description),
            _full(b"stts", 0, 0, runs(deltas)),
            _full(b"ctts", 1, 0, runs(comp)),
            _full(b"stss", 0, 0, struct.pack(f">I{len(idr)}I", len(idr), *idr)),
            _full(b"stsz", 0, 0, sizes),
            _full(b"stsc", 0, 0, struct.pack(">IIII", 1, 1, 1, 1)),
            _full(b"co64", 0, 0, struct.pack(f">I{len(offsets)}Q", len(offsets), *offsets.tolist())),
        )
        dinf = _box(b"dinf", _full(b"dref", 0, 0, struct.pack(">I", 1), _full(b"url ", 0, 1)))
        minf = _box(b"minf", _full(b"vmhd", 0, 1, bytes(8)), dinf, stbl)
        mdhd = _full(b"mdhd", 0, 0, struct.pack(">IIIIHH", 0, 0, scale, duration, 0x55C4, 0))
        hdlr = _full(b"hdlr", 0, 0, bytes(4), b"vide", bytes(12), b"VideoHandler\x00")
        tkhd = _full(
            b"tkhd",
            0,
            3,
            struct.pack(">IIIII", 0, 0, 1, 0, duration),
            bytes(8),
            struct.pack(">hhhH", 0, 0, 0, 0),
            _MATRIX,
            struct.pack(">II", track.width << 16, track.height << 16),
        )
        mvhd = _full(
            b"mvhd",
            0,
            0,
            struct.pack(">IIIIIH", 0, 0, scale, duration, 0x10000, 0x100),
            bytes(10),
            _MATRIX,
            bytes(24),
            struct.pack(">I", 2),
        )
        return _box(b"moov", mvhd, _box(b"trak", tkhd, _box(b"mdia", mdhd, hdlr, minf)))

    head = len(ftyp) + len(moov(0)) + 8  # the moov size does not depend on the offsets (co64)
    return ftyp + moov(head) + struct.pack(">I4s", 8 + sum(len(d) for d in data), b"mdat") + b"".join(data)
