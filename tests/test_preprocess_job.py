"""The shard job end to end: round trip, determinism, resume after kill -9, two concurrent jobs on S3."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time

import numpy as np
import pytest
from video_fixtures import read_index, videos, write_jsonl  # noqa: F401 - fixture

from preprocess.config import ConfigError, load_config, parse_overrides
from preprocess.decode import decode_frames
from preprocess.frames import decode_jpeg
from preprocess.job import job_shards, run_job, sample_keys
from shards import fs as sfs
from shards.schema import SAMPLE_JSON_FIELDS, SAMPLE_JSON_OPTIONAL_FIELDS, make_key

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cfg(anno: str, video_root: str, out: str, **kw):
    base = {"dataset": "jsonl", "anno_path": anno, "video_root": video_root, "out": out, "split": "train",
            "num_frames": 6, "frame_size": 64, "shard_size": 2, "num_workers": 2, "progress": False}
    base.update(kw)
    return load_config(None, list(base.items()))


def _tar_digests(split_dir: str) -> dict[str, str]:
    return {n: hashlib.md5(open(os.path.join(split_dir, n), "rb").read()).hexdigest()
            for n in sorted(os.listdir(split_dir)) if n.endswith(".tar")}


def _samples(split_dir: str) -> dict[str, dict[str, bytes]]:
    out: dict[str, dict[str, bytes]] = {}
    for n in sorted(os.listdir(split_dir)):
        if n.endswith(".tar"):
            with tarfile.open(os.path.join(split_dir, n)) as tf:
                for m in tf.getmembers():
                    key, ext = m.name.split(".", 1)
                    out.setdefault(key, {})[ext] = tf.extractfile(m).read()
    return out


# -- config -----------------------------------------------------------------------------------------------------
def test_config_yaml_and_overrides(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("dataset: jsonl\nanno_path: a.jsonl\nout: o\nnum_frames: 8\nstorage:\n  endpoint_url: http://x\n")
    cfg = load_config(str(y), parse_overrides(["--num_workers", "3", "--sampler=head", "--storage.anon", "true",
                                               "--progress", "false"]))
    assert (cfg.num_frames, cfg.num_workers, cfg.sampler, cfg.progress) == (8, 3, "head", False)
    assert cfg.storage.endpoint_url == "http://x" and cfg.storage.anon is True
    with pytest.raises(ConfigError, match="unknown config key 'num_frame' \\(did you mean 'num_frames'"):
        load_config(str(y), [("num_frame", "3")])
    with pytest.raises(ConfigError, match="sampler 'random'"):
        load_config(str(y), [("sampler", "random")])
    with pytest.raises(ConfigError, match="num_workers: Value 'x' of type 'str' could not be converted to Integer"):
        load_config(str(y), [("num_workers", "x")])
    with pytest.raises(ConfigError, match=r"job_index 2 not in \[0, num_jobs=2\)"):
        load_config(str(y), [("num_jobs", "2"), ("job_index", "2")])
    with pytest.raises(ConfigError, match="unexpected argument 'stray'"):
        parse_overrides(["stray"])


@pytest.mark.parametrize("name", ["msrvtt", "msvd", "didemo", "activitynet", "synth"])
def test_shipped_configs_load(name):
    from preprocess.annotations import DATASETS

    cfg = load_config(os.path.join(ROOT, "configs", "preprocess", f"{name}.yaml"))
    assert cfg.dataset in DATASETS and cfg.num_frames in (12, 64) and cfg.jpeg_quality == 90


def test_partitioning_and_keys():
    assert job_shards(10, 3) == [0, 1, 2, 3]
    assert job_shards(10, 3, 0, 2) == [0, 2] and job_shards(10, 3, 1, 2) == [1, 3]
    assert sorted(job_shards(7, 1, 0, 3) + job_shards(7, 1, 1, 3) + job_shards(7, 1, 2, 3)) == list(range(7))
    from preprocess.items import VideoItem

    items = [VideoItem("d", "train", "a", "a.mp4", ("x",), 0, 1), VideoItem("d", "train", "b", "b.mp4", ("y",)),
             VideoItem("d", "train", "a", "a.mp4", ("z",), 1, 2)]
    assert sample_keys(items) == ["d_a_000", "d_b", "d_a_001"]


# -- round trip ---------------------------------------------------------------------------------------------------
@pytest.fixture
def round_trip_anno(videos, tmp_path):  # noqa: F811
    rows = [
        {"video_path": videos["good"], "caption": "first caption", "video_id": "v1"},
        {"video_path": videos["good"], "caption": "second caption", "video_id": "v1"},
        {"video_path": videos["good2"], "caption": "clip a", "start": 0.5, "end": 1.5, "video_id": "v2"},
        {"video_path": videos["good2"], "caption": "clip b", "start": 1.0, "end": 2.0, "video_id": "v2"},
        {"video_path": os.path.basename(videos["spaces"]), "caption": "ünïcode caption"},
    ]
    return write_jsonl(str(tmp_path / "anno.jsonl"), rows)


def test_round_trip_metadata_frames_and_determinism(videos, round_trip_anno, tmp_path):  # noqa: F811
    import webdataset as wds

    root = os.path.dirname(videos["good"])
    cfg = _cfg(round_trip_anno, root, str(tmp_path / "a"))
    summary = run_job(cfg)
    assert (summary.inputs, summary.ok, summary.failed, summary.shards_total) == (4, 4, 0, 2)
    assert summary.manifest["ok"] == 4 and summary.manifest["inputs"] == 4
    split_dir = str(tmp_path / "a" / "train")
    spaces_key = make_key("jsonl", "clip with spaces é")
    # stock webdataset reads the shards with no project code
    ds = wds.WebDataset(sorted(os.path.join(split_dir, n) for n in os.listdir(split_dir) if n.endswith(".tar")),
                        shardshuffle=False).decode("rgb8")
    got = {s["__key__"]: s for s in ds}
    assert list(got) == ["jsonl_v1", "jsonl_v2_000", "jsonl_v2_001", spaces_key]
    fps = {"jsonl_v1": 16.0, "jsonl_v2_000": 20.0, "jsonl_v2_001": 20.0, spaces_key: 20.0}
    for key, s in got.items():
        meta = s["json"]
        assert set(meta) == set(SAMPLE_JSON_FIELDS) | set(SAMPLE_JSON_OPTIONAL_FIELDS)
        assert (meta["rotation"], meta["sar"], meta["time_origin"]) == (0, "1:1", "first_shown_frame")
        assert meta["src_fps"] == fps[key] and meta["num_frames"] == 6 and meta["width"] == meta["height"] == 64
        assert meta["caption"] == s["txt"] == meta["captions"][0]
        frames = [s[f"f{i:03d}.jpg"] for i in range(6)]
        assert all(f.shape == (64, 64, 3) for f in frames)
        # each stored frame is exactly the source frame at its recorded time ...
        indices = [round(t * meta["src_fps"]) for t in meta["frame_times"]]
        assert [read_index(f) for f in frames] == indices
        # ... and within JPEG tolerance of decoding the source directly there
        direct = decode_frames(meta["source"], indices, size=64, backend="ffmpeg").astype(int)
        assert np.abs(np.stack(frames).astype(int) - direct).mean() < 2.0
    assert got["jsonl_v1"]["json"]["captions"] == ["first caption", "second caption"]
    assert got["jsonl_v1"]["json"]["frame_times"] == [0.0, 0.8125, 1.5625, 2.375, 3.125, 3.9375]  # frames 0 13 25 38 50 63
    clip_a = got["jsonl_v2_000"]["json"]
    assert (clip_a["start"], clip_a["end"], clip_a["caption"]) == (0.5, 1.5, "clip a")
    # window [0.5, 1.5) at 20 fps = frames 10..29: 10 + round-half-up(k * 19 / 5)
    assert [round(t * 20) for t in clip_a["frame_times"]] == [10, 14, 18, 21, 25, 29]
    assert got[spaces_key]["json"]["caption"] == "ünïcode caption"
    assert got[spaces_key]["json"]["source"] == videos["spaces"]

    # same inputs, one worker, other folder: byte-identical tars; re-running skips every complete shard
    again = run_job(_cfg(round_trip_anno, root, str(tmp_path / "b"), num_workers=1))
    assert _tar_digests(str(tmp_path / "b" / "train")) == _tar_digests(split_dir)
    resumed = run_job(cfg)
    assert (resumed.shards_skipped, resumed.shards_written, resumed.ok) == (2, 0, 0)
    assert again.manifest["inputs"] == resumed.manifest["inputs"] == 4


def test_cli_main_runs_a_yaml_config(videos, round_trip_anno, tmp_path, capsys):  # noqa: F811
    from preprocess.__main__ import main

    y = tmp_path / "c.yaml"
    y.write_text(f"dataset: jsonl\nanno_path: {round_trip_anno}\nvideo_root: {os.path.dirname(videos['good'])}\n"
                 f"out: {tmp_path / 'o'}\nnum_frames: 3\nframe_size: 32\nshard_size: 10\nnum_workers: 1\n")
    assert main(["--config", str(y), "--sampler", "head", "--progress", "false"]) == 0
    out = capsys.readouterr().out
    assert "4 inputs" in out and "4 ok, 0 failed" in out and "manifest: 4 inputs = 4 ok + 0 failed" in out
    meta = json.loads(_samples(str(tmp_path / "o" / "train"))["jsonl_v1"]["json"])
    assert meta["sampler"] == "head" and meta["frame_times"] == [0.0, 1.0, 2.0]


# -- kill -9 and resume -------------------------------------------------------------------------------------------
def _many_videos(videos, tmp_path, n: int) -> str:  # noqa: F811
    d = tmp_path / "many"
    d.mkdir()
    rows = []
    for i in range(n):
        src = videos["good"] if i % 2 == 0 else videos["good2"]
        shutil.copyfile(src, d / f"v{i:02d}.mp4")
        rows.append({"video_path": f"v{i:02d}.mp4", "caption": f"caption {i}"})
    return write_jsonl(str(d / "anno.jsonl"), rows)


def _job_cmd(anno: str, out: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "preprocess", "--log-level", "WARNING", "--dataset", "jsonl", "--anno_path", anno,
            "--video_root", os.path.dirname(anno), "--out", out, "--num_frames", "4", "--frame_size", "48",
            "--shard_size", "2", "--num_workers", "1", "--progress", "false", *extra]


def test_kill9_then_resume_gives_identical_shards(videos, tmp_path):  # noqa: F811
    anno = _many_videos(videos, tmp_path, 12)
    ref = run_job(_cfg(anno, os.path.dirname(anno), str(tmp_path / "ref"), num_frames=4, frame_size=48,
                       num_workers=1))
    assert ref.ok == 12
    out = str(tmp_path / "killed")
    split_dir = os.path.join(out, "train")
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.Popen(_job_cmd(anno, out), cwd=ROOT, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    killed_during = None
    deadline = time.time() + 120
    try:
        while proc.poll() is None and time.time() < deadline:
            names = os.listdir(split_dir) if os.path.isdir(split_dir) else []
            # a shard after the first is being written: its temp tar exists and its stats.json does not
            partial = [n for n in names if n.startswith(".train-") and n.endswith(".tmp")
                       and not n.startswith(".train-000000")]
            if partial:
                os.killpg(proc.pid, signal.SIGKILL)
                killed_during = partial[0]
                break
            time.sleep(0.002)
    finally:
        if proc.poll() is None and killed_during is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    assert killed_during is not None, "the job finished before it could be killed"
    names = os.listdir(split_dir)
    assert killed_during in names  # the stale temp file is really there
    assert sum(n.endswith(".stats.json") for n in names) < 6
    rerun = subprocess.run(_job_cmd(anno, out), cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert "already complete" in rerun.stdout
    after = sorted(os.listdir(split_dir))
    assert not [n for n in after if n.startswith(".")], after  # stale temp files removed
    assert after == sorted(os.listdir(os.path.join(str(tmp_path / "ref"), "train")))
    assert _tar_digests(split_dir) == _tar_digests(str(tmp_path / "ref" / "train"))
    assert set(_samples(split_dir)) == {make_key("jsonl", f"v{i:02d}") for i in range(12)}


# -- two concurrent jobs on S3 -----------------------------------------------------------------------------------
def test_two_jobs_concurrently_on_s3_then_index_and_verify(videos, tmp_path, s3_bucket):  # noqa: F811
    from shards.index import build_index
    from shards.verify import verify_split

    anno = _many_videos(videos, tmp_path, 6)
    out = f"{s3_bucket}/root"
    env = dict(os.environ, PYTHONPATH=ROOT)
    procs = [subprocess.Popen(_job_cmd(anno, out, "--num_jobs", "2", "--job_index", str(j)), cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for j in (0, 1)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_o, e) in zip(procs, outs):
        assert p.returncode == 0, e
    assert "2 owned" in outs[0][0] and "1 owned" in outs[1][0]  # shards 0, 2 and shard 1
    split_url = sfs.join(out, "train")
    names = sfs.listdir(split_url)
    assert "manifest.json" not in names  # multi-job runs leave indexing to the user
    assert [n for n in names if n.endswith(".tar")] == [f"train-00000{i}.tar" for i in range(3)]
    manifest = build_index(split_url, config={"num_frames": 4, "frame_size": 48, "jpeg_quality": 90})
    assert (manifest["inputs"], manifest["ok"], manifest["failed"], manifest["shards"]) == (6, 6, 0, 3)
    report = verify_split(split_url)
    assert report.ok, [str(p) for p in report.problems]
    assert report.samples == 6 and report.frames == 24
    data = sfs.read_bytes(sfs.join(split_url, "train-000001.tar"))
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        first = tf.getnames()[0]
        assert first == f"{make_key('jsonl', 'v02')}.f000.jpg"  # shard 1 holds inputs 2 and 3
        assert decode_jpeg(tf.extractfile(first).read()).shape == (48, 48, 3)


# -- other paths: ffmpeg decoder, videos read from S3 ------------------------------------------------------------
def test_ffmpeg_decoder_job_and_s3_video_source(videos, tmp_path, s3_bucket):  # noqa: F811
    fs, path = sfs.filesystem(f"{s3_bucket}/videos/clip one.mp4")
    fs.put_file(videos["good2"], path)
    rows = [{"video_path": "videos/clip one.mp4", "caption": "from s3", "video_id": "remote"},
            {"video_path": videos["good2"], "caption": "local", "video_id": "local"}]
    anno = write_jsonl(str(tmp_path / "anno.jsonl"), rows)
    results = {}
    for decoder in ("ffmpeg", "decord"):
        out = tmp_path / decoder
        summary = run_job(_cfg(anno, s3_bucket, str(out), decoder=decoder, num_frames=5, shard_size=4))
        assert (summary.ok, summary.failed) == (2, 0)
        results[decoder] = _samples(str(out / "train"))
    for decoder, samples in results.items():
        remote = samples["jsonl_remote"]
        meta = json.loads(remote["json"])
        assert meta["source"] == f"{s3_bucket}/videos/clip one.mp4"
        idx = [round(t * 20) for t in meta["frame_times"]]
        assert idx == [0, 10, 20, 29, 39]  # round-half-up(k * 39 / 4)
        assert [read_index(decode_jpeg(remote[f"f{i:03d}.jpg"])) for i in range(5)] == idx, decoder
        local = json.loads(samples["jsonl_local"]["json"])
        same = set(SAMPLE_JSON_FIELDS) - {"caption", "captions", "video_id", "source"}
        assert {k: local[k] for k in same} == {k: meta[k] for k in same}
    # both decoders pick the same frames with the same scaler: pixels agree to JPEG noise
    a = np.stack([decode_jpeg(results["decord"]["jsonl_local"][f"f{i:03d}.jpg"]) for i in range(5)]).astype(int)
    b = np.stack([decode_jpeg(results["ffmpeg"]["jsonl_local"][f"f{i:03d}.jpg"]) for i in range(5)]).astype(int)
    assert np.abs(a - b).mean() < 1.0
