"""``shards.verify --source-check N``: shards of real-world files pass; one injected wrong frame is named."""

from __future__ import annotations

import io
import json
import os
import tarfile

from test_real_world_video import corpus  # noqa: F401 - module-scoped fixture (the generated corpus)
from video_fixtures import write_jsonl

from preprocess.config import load_config
from preprocess.job import run_job
from shards import fs as sfs
from shards.index import build_index
from shards.schema import make_key
from shards.verify import main as verify_main

NAMES = ["cfr.mp4", "vfr.mp4", "start_offset.ts", "rot90.mp4", "anamorphic.mp4", "xvid_bframes.avi", "vp9.webm"]


def _vid(name: str) -> str:
    return name.replace(".", "_")


def _job(rows: list[dict], video_root: str, out: str, tmp_path) -> None:
    anno = write_jsonl(str(tmp_path / "anno.jsonl"), rows)
    cfg = load_config(None, list({
        "dataset": "jsonl", "anno_path": anno, "video_root": video_root, "out": out, "split": "train",
        "num_frames": 4, "frame_size": 64, "shard_size": 4, "num_workers": 1, "progress": False,
    }.items()))
    summary = run_job(cfg)
    assert (summary.ok, summary.failed) == (len(rows), 0)


def _swap_frame(tar_path: str, key: str, bad: str, good: str) -> None:
    """Rewrite the tar with ``key.bad`` replaced by the bytes of ``key.good`` (a real frame of the same video)."""
    with tarfile.open(tar_path) as tf:
        members = [(m, tf.extractfile(m).read()) for m in tf.getmembers()]
    data = dict((m.name, d) for m, d in members)
    with tarfile.open(tar_path, "w") as tf:
        for m, d in members:
            if m.name == f"{key}.{bad}":
                d = data[f"{key}.{good}"]
                m.size = len(d)
            tf.addfile(m, io.BytesIO(d))


def test_source_check_passes_on_real_world_shards_and_names_an_injected_frame(corpus, tmp_path, capsys):  # noqa: F811
    rows = [{"video_path": corpus[n], "caption": n, "video_id": _vid(n)} for n in NAMES]
    out = str(tmp_path / "out")
    _job(rows, "", out, tmp_path)
    split = os.path.join(out, "train")
    assert verify_main([split, "--source-check", "100"]) == 0
    assert "problems=0" in capsys.readouterr().out

    key = make_key("jsonl", _vid("vfr.mp4"))
    tar_path = next(
        os.path.join(split, n) for n in sorted(os.listdir(split))
        if n.endswith(".tar") and f"{key}.json" in tarfile.open(os.path.join(split, n)).getnames()
    )
    _swap_frame(tar_path, key, "f002.jpg", "f001.jpg")
    build_index(split)  # the index matches the tampered tar: only the source check can see it
    assert verify_main([split]) == 0
    capsys.readouterr()
    assert verify_main([split, "--source-check", "100"]) == 1
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("PROBLEM")]
    assert len(lines) == 1, lines
    assert key in lines[0] and "source check: frame 2 (t=" in lines[0] and "differs from the source frame" in lines[0]


def test_source_check_with_s3_sources_and_shards(corpus, tmp_path, s3_bucket, capsys):  # noqa: F811
    rows = []
    for n in ("start_offset.ts", "rot90.mp4"):
        fs, path = sfs.filesystem(f"{s3_bucket}/videos/{n}")
        fs.put_file(corpus[n], path)
        rows.append({"video_path": f"videos/{n}", "caption": n, "video_id": _vid(n)})
    out = f"{s3_bucket}/shards"
    _job(rows, s3_bucket, out, tmp_path)
    assert verify_main([f"{out}/train", "--source-check", "2"]) == 0
    text = capsys.readouterr().out
    assert "problems=0" in text and "samples=2" in text
    meta = json.loads(sfs.read_bytes(f"{out}/train/manifest.json"))
    assert (meta["ok"], meta["failed"]) == (2, 0)


def test_source_check_names_a_missing_source(corpus, tmp_path, capsys):  # noqa: F811
    src = str(tmp_path / "gone.mp4")
    with open(corpus["cfr.mp4"], "rb") as f, open(src, "wb") as g:
        g.write(f.read())
    out = str(tmp_path / "out")
    _job([{"video_path": src, "caption": "x", "video_id": "gone"}], "", out, tmp_path)
    os.remove(src)
    assert verify_main([os.path.join(out, "train"), "--source-check", "1"]) == 1
    text = capsys.readouterr().out
    assert make_key("jsonl", "gone") in text and "unreadable" in text


