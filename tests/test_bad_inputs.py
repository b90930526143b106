"""Bad inputs: the job finishes, shards every good input, and records each failure with its reason.

Documented choices checked here: a video with fewer frames than requested becomes a sample whose frames repeat
the nearest source frame (``padded_frames`` = T - distinct frames); a corrupt stretch mid-stream fails the video
(both decoders report the decoding error; no frame is ever zero-filled); a malformed annotation file stops the
job before any work with an error naming the file and line.
"""

from __future__ import annotations

import json
import os

import pytest
from video_fixtures import read_index, videos, write_jsonl  # noqa: F401 - fixture

from preprocess.config import load_config
from preprocess.job import run_job
from shards.schema import make_key


def _cfg(anno: str, root: str, out: str, **kw):
    base = {"dataset": "jsonl", "anno_path": anno, "video_root": root, "out": out, "num_frames": 12,
            "frame_size": 48, "shard_size": 4, "num_workers": 2, "progress": False, "timeout": 60}
    base.update(kw)
    return load_config(None, list(base.items()))


def _failures(split_dir: str) -> dict[str, dict]:
    rows = {}
    for n in sorted(os.listdir(split_dir)):
        if n.endswith(".failures.jsonl"):
            for line in open(os.path.join(split_dir, n), encoding="utf-8"):
                r = json.loads(line)
                rows[r["video_id"]] = r
    return rows


def test_every_bad_input_is_one_failure_row_and_the_rest_is_sharded(videos, tmp_path):  # noqa: F811
    import webdataset as wds

    root = os.path.dirname(videos["good"])
    roles = ["good", "missing", "empty", "truncated", "text", "audio_only", "short", "corrupt", "four_k", "spaces"]
    rows = [{"video_path": videos[r], "caption": f"a {r} video", "video_id": r} for r in roles]
    rows.append({"video_path": "nowhere/not_there.mp4", "caption": "annotation names a missing video",
                 "video_id": "ghost"})
    anno = write_jsonl(str(tmp_path / "anno.jsonl"), rows)
    summary = run_job(_cfg(anno, root, str(tmp_path / "out")))
    split_dir = str(tmp_path / "out" / "train")

    ok = {"good", "short", "four_k", "spaces"}
    failures = _failures(split_dir)
    assert set(failures) == set(roles) - ok | {"ghost"}
    assert (summary.ok, summary.failed) == (4, 7)
    m = summary.manifest
    assert (m["inputs"], m["ok"], m["failed"]) == (11, 4, 7)
    assert failures["missing"]["reason"] == f"missing file: {videos['missing']}"
    assert failures["ghost"]["reason"] == f"missing file: {os.path.join(root, 'nowhere/not_there.mp4')}"
    assert failures["ghost"]["input"] == os.path.join(root, "nowhere/not_there.mp4")
    assert failures["empty"]["reason"] == f"empty file (0 bytes): {videos['empty']}"
    assert "no video stream" in failures["audio_only"]["reason"]
    for role in ("truncated", "text", "corrupt", "audio_only"):  # decord failed, then the ffmpeg fallback did
        reason = failures[role]["reason"]
        assert reason.startswith("decord cannot") and "; ffmpeg fallback: " in reason, reason
        assert failures[role]["input"] == videos[role]
    assert "ffmpeg failed" in failures["corrupt"]["reason"] or "frames" in failures["corrupt"]["reason"]

    shards = sorted(os.path.join(split_dir, n) for n in os.listdir(split_dir) if n.endswith(".tar"))
    got = {s["__key__"]: s for s in wds.WebDataset(shards, shardshuffle=False).decode("rgb8")}
    assert set(got) == {make_key("jsonl", r) for r in ok}
    short = got[make_key("jsonl", "short")]
    # 5 source frames stretched over 12 slots: round-half-up(k * 4 / 11), never a blank frame
    assert [read_index(short[f"f{i:03d}.jpg"]) for i in range(12)] == [0, 0, 1, 1, 1, 2, 2, 3, 3, 3, 4, 4]
    assert short["json"]["padded_frames"] == 7
    four_k = got[make_key("jsonl", "four_k")]
    assert four_k["json"]["src_fps"] == 5.0 and four_k["json"]["padded_frames"] == 7
    assert all(four_k[f"f{i:03d}.jpg"].shape == (48, 48, 3) for i in range(12))
    assert four_k["f000.jpg"].std() > 10  # real picture content, not a flat fill
    assert got[make_key("jsonl", "spaces")]["json"]["source"] == videos["spaces"]


def test_timeout_kills_the_worker_and_records_the_input(videos, tmp_path):  # noqa: F811
    rows = [{"video_path": videos["four_k"], "caption": "slow", "video_id": "slow"},
            {"video_path": videos["good"], "caption": "fine", "video_id": "fine"}]
    anno = write_jsonl(str(tmp_path / "anno.jsonl"), rows)
    summary = run_job(_cfg(anno, "", str(tmp_path / "out"), timeout=0.001, num_workers=1))
    failures = _failures(str(tmp_path / "out" / "train"))
    assert summary.ok + summary.failed == 2
    assert failures["slow"]["reason"].startswith("timeout: no result after 0.001 s")


def test_malformed_annotation_stops_before_any_work(tmp_path, capsys):
    from preprocess.__main__ import main

    anno = tmp_path / "bad.jsonl"
    anno.write_text('{"video_path": "a.mp4", "caption": "fine"}\n{"video_path": "b.mp4", "caption": \n')
    out = tmp_path / "out"
    rc = main(["--dataset", "jsonl", "--anno_path", str(anno), "--out", str(out), "--progress", "false"])
    err = capsys.readouterr().err
    assert rc == 2
    assert str(anno) in err and "2" in err
    assert not out.exists()


def test_job_exits_1_when_every_input_failed(tmp_path, capsys):
    from preprocess.__main__ import main

    anno = write_jsonl(str(tmp_path / "anno.jsonl"), [{"video_path": f"gone{i}.mp4", "caption": "c"} for i in range(3)])
    out = tmp_path / "out"
    rc = main(["--dataset", "jsonl", "--anno_path", anno, "--out", str(out), "--progress", "false",
               "--num_workers", "1"])
    assert rc == 1
    assert "all 3 inputs this job decoded failed" in capsys.readouterr().err
    assert len(_failures(str(out / "train"))) == 3  # still recorded, one row each
    assert sorted(os.listdir(out / "train")) == ["train-000000.failures.jsonl"]  # no empty tar, no index


@pytest.mark.parametrize("override,message", [(("num_frames", "0"), "num_frames must be >= 1"),
                                              (("decoder", "opencv"), "decoder 'opencv'")])
def test_bad_settings_are_named(tmp_path, capsys, override, message):
    from preprocess.__main__ import main

    rc = main(["--dataset", "jsonl", "--anno_path", "x.jsonl", "--out", str(tmp_path / "o"),
               f"--{override[0]}", override[1]])
    assert rc == 2 and message in capsys.readouterr().err
