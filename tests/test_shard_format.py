"""Shard format v1: writer determinism and atomicity, index + verify (local and S3), stock readers.

Shards are built directly with ShardWriter from tiny numpy JPEGs (no video decoding).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import simplejpeg

from shards import fs as sfs
from shards.index import ShardIndexError, build_index, estimate_jpeg_quality
from shards.index import main as index_main
from shards.schema import SAMPLE_JSON_FIELDS
from shards.verify import main as verify_main
from shards.verify import verify_split
from shards.writer import ShardWriter, encode_json

T, H, W = 3, 16, 24


def frame(value: int, h: int = H, w: int = W) -> np.ndarray:
    """A flat RGB frame (decodes back almost exactly)."""
    img = np.empty((h, w, 3), np.uint8)
    img[...] = (value % 256, (value * 7) % 256, (value * 13) % 256)
    return img


def sample(key: str, n: int, *, num_frames: int = T, captions: tuple[str, ...] = ()) -> dict[str, bytes]:
    """Members of a valid sample whose frames are flat colours derived from ``n``."""
    caps = list(captions or (f"caption {n}", f"other {n}"))
    members = {
        f"f{i:03d}.jpg": simplejpeg.encode_jpeg(frame(10 * n + i), quality=90) for i in range(num_frames)
    }
    meta = {
        "schema": 1,
        "dataset": "synth",
        "split": "train",
        "video_id": key,
        "caption": caps[0],
        "captions": caps,
        "source": f"/videos/{key}.mp4",
        "start": None,
        "end": None,
        "frame_times": [0.5 * i for i in range(num_frames)],
        "src_fps": 25.0,
        "width": W,
        "height": H,
        "num_frames": num_frames,
        "sampler": "uniform",
        "padded_frames": 0,
    }
    assert set(meta) == set(SAMPLE_JSON_FIELDS)
    members["txt"] = caps[0].encode("utf-8")
    members["json"] = encode_json(meta)
    return members


def write_split(root: str, shards: list[list[tuple[str, dict[str, bytes]]]], failures: int = 0) -> str:
    """Write shards of split ``train`` (each a list of (key, members)); ``failures`` failure rows in shard 0."""
    for idx, samples in enumerate(shards):
        with ShardWriter(root, "train", idx) as w:
            for key, members in samples:
                w.write(key, members)
            if idx == 0:
                for j in range(failures):
                    w.add_failure(f"/videos/bad{j}.mp4", f"bad{j}", "decode error: moov atom not found")
    return sfs.join(root, "train")


def good_split(root: str) -> str:
    return write_split(
        root,
        [
            [("vid_a", sample("vid_a", 0)), ("vid_b", sample("vid_b", 1, captions=("one",)))],
            [("vid_c", sample("vid_c", 2))],
        ],
        failures=2,
    )


# ------------------------------------------------------------------------------------------------------ the writer
def test_writer_is_deterministic_and_members_sorted_and_contiguous(tmp_path):
    samples = [("k1", sample("k1", 1)), ("k0", sample("k0", 0))]
    write_split(str(tmp_path / "a"), [samples])
    write_split(str(tmp_path / "b"), [samples])
    tar_a = (tmp_path / "a/train/train-000000.tar").read_bytes()
    assert tar_a == (tmp_path / "b/train/train-000000.tar").read_bytes()
    with tarfile.open(fileobj=io.BytesIO(tar_a)) as tar:
        infos = tar.getmembers()
    names = [i.name for i in infos]
    per_sample = ["f000.jpg", "f001.jpg", "f002.jpg", "json", "txt"]
    assert names == [f"k1.{e}" for e in per_sample] + [
        f"k0.{e}" for e in per_sample
    ]  # write order, sorted within
    assert {(i.mtime, i.uid, i.gid, i.uname, i.gname, i.mode) for i in infos} == {(0, 0, 0, "", "", 0o444)}
    stats = json.loads((tmp_path / "a/train/train-000000.stats.json").read_bytes())
    assert {k: v for k, v in stats.items() if k != "seconds"} == {
        "shard": "train-000000.tar",
        "samples": 2,
        "failed": 0,
        "bytes": len(tar_a),
        "captions": [2, 2],
    }


def test_writer_publishes_atomically_and_stats_last(tmp_path, monkeypatch):
    split_dir = tmp_path / "train"
    w = ShardWriter(str(tmp_path), "train", 0)
    w.write("k0", sample("k0", 0))
    listing = os.listdir(split_dir)
    assert "train-000000.tar" not in listing
    assert len(listing) == 1 and listing[0].startswith(".train-000000.tar.") and listing[0].endswith(".tmp")
    calls: list[str] = []
    real_put, real_write = sfs.put_file_atomic, sfs.write_bytes_atomic
    monkeypatch.setattr(
        sfs, "put_file_atomic", lambda src, url, o=None: (calls.append(url), real_put(src, url, o))
    )
    monkeypatch.setattr(
        sfs, "write_bytes_atomic", lambda url, d, o=None: (calls.append(url), real_write(url, d, o))
    )
    w.close()
    assert [c.rsplit("/", 1)[-1] for c in calls] == [
        "train-000000.tar",
        "train-000000.failures.jsonl",
        "train-000000.stats.json",
    ]
    assert sorted(os.listdir(split_dir)) == [
        "train-000000.failures.jsonl",
        "train-000000.stats.json",
        "train-000000.tar",
    ]


def test_writer_abort_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError, match="boom"):
        with ShardWriter(str(tmp_path), "train", 3) as w:
            w.write("k0", sample("k0", 0))
            raise RuntimeError("boom")
    assert os.listdir(tmp_path / "train") == []


# ----------------------------------------------------------------------------------------------- index and verify
def expected_manifest(config: dict | None = None) -> dict:
    return {
        "schema": 1,
        "split": "train",
        "shards": 2,
        "inputs": 5,
        "ok": 3,
        "failed": 2,
        "frames_per_sample": T,
        "frame_size": [H, W],
        "jpeg_quality": 90,
        "config": config or {},
    }


def check_index_files(split_url: str) -> None:
    read = lambda name: json.loads(sfs.read_bytes(sfs.join(split_url, name)))  # noqa: E731
    assert read("sizes.json") == {"train-000000.tar": 2, "train-000001.tar": 1}
    assert read("captions.json") == {"train-000000.tar": [2, 1], "train-000001.tar": [2]}
    index = read("shardindex.json")
    tars = {n: sfs.read_bytes(sfs.join(split_url, n)) for n in ("train-000000.tar", "train-000001.tar")}
    assert index == {
        "__kind__": "wids-shard-index-v1",
        "wids_version": 1,
        "name": "train",
        "shardlist": [
            {"url": n, "nsamples": c, "filesize": len(tars[n]), "md5sum": hashlib.md5(tars[n]).hexdigest()}
            for n, c in (("train-000000.tar", 2), ("train-000001.tar", 1))
        ],
    }
    assert read("manifest.json") == expected_manifest()


def test_index_and_verify_round_trip_local(tmp_path):
    split_url = good_split(str(tmp_path))
    assert build_index(split_url) == expected_manifest()
    check_index_files(split_url)
    report = verify_split(split_url)
    assert report.problems == []
    assert (report.shards, report.samples, report.frames, report.ok) == (2, 3, 9, True)


def test_index_and_verify_round_trip_s3(s3_bucket):
    split_url = good_split(f"{s3_bucket}/shards")
    assert build_index(split_url) == expected_manifest()
    check_index_files(split_url)
    report = verify_split(split_url)
    assert report.problems == []
    assert (report.shards, report.samples, report.frames) == (2, 3, 9)


def test_index_config_overrides_first_sample(tmp_path):
    split_url = good_split(str(tmp_path))
    cfg = {"num_frames": 12, "frame_size": 224, "jpeg_quality": 85, "sampler": "uniform"}
    m = build_index(split_url, config=cfg)
    assert (m["frames_per_sample"], m["frame_size"], m["jpeg_quality"], m["config"]) == (
        12,
        [224, 224],
        85,
        cfg,
    )


@pytest.mark.parametrize("quality", [30, 75, 95])
def test_estimate_jpeg_quality(quality):
    rng = np.random.default_rng(quality)
    jpeg = simplejpeg.encode_jpeg(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), quality=quality)
    assert estimate_jpeg_quality(jpeg) == quality
    assert estimate_jpeg_quality(b"not a jpeg") is None


def test_index_errors(tmp_path):
    with pytest.raises(ShardIndexError, match="no shards train-NNNNNN.tar under"):
        build_index(str(tmp_path / "train"))
    split_url = good_split(str(tmp_path))
    (tmp_path / "train/train-000001.stats.json").unlink()
    with pytest.raises(
        ShardIndexError, match=r"train-000001\.tar is incomplete: no train-000001\.stats\.json"
    ):
        build_index(split_url)
    m = build_index(split_url, allow_incomplete=True)
    assert (m["shards"], m["ok"], m["failed"], m["inputs"]) == (1, 2, 2, 4)
    assert json.loads((tmp_path / "train/sizes.json").read_text()) == {"train-000000.tar": 2}
    (tmp_path / "train/train-000000.failures.jsonl").write_text('{"input": "x"}\n')
    with pytest.raises(ShardIndexError, match=r"failures\.jsonl has 1 rows but .*stats\.json says failed=2"):
        build_index(split_url, allow_incomplete=True)
    os.rename(tmp_path / "train/train-000001.tar", tmp_path / "train/train-000002.tar")
    with pytest.raises(
        ShardIndexError, match=r"not contiguous: train-000001\.tar is missing \(next is train-000002"
    ):
        build_index(split_url)


def _drop(ext: str):
    def f(m: dict[str, bytes]) -> None:
        del m[ext]

    return f


def _set(ext: str, data: bytes):
    def f(m: dict[str, bytes]) -> None:
        m[ext] = data

    return f


def _json(**changes):
    def f(m: dict[str, bytes]) -> None:
        meta = json.loads(m["json"])
        for k, v in changes.items():
            if v is ...:
                del meta[k]
            else:
                meta[k] = v
        m["json"] = encode_json(meta)

    return f


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (_drop("f001.jpg"), r"missing frame\(s\) f001\.jpg \(num_frames=3\)"),
        (_set("f002.jpg", b"\xff\xd8\xff\xe0 this is not a jpeg"), r"frame f002\.jpg is not a valid JPEG"),
        (_set("f001.jpg", simplejpeg.encode_jpeg(frame(5))[:300]), r"frame f001\.jpg is not a valid JPEG"),
        (_drop("txt"), r"missing txt"),
        (_drop("json"), r"missing json"),
        (_set("f003.jpg", simplejpeg.encode_jpeg(frame(0))), r"unexpected frame\(s\) f003\.jpg"),
        (_set("mp4", b"\x00"), r"unexpected member bad_1\.mp4"),
        (_json(schema=2), r"json schema is 2, expected 1"),
        (_json(sampler=..., frame_times=...), r"json lacks field\(s\) frame_times, sampler"),
        (_json(height=32), r"frame f000\.jpg is 16x24, json says 32x24 \(3 frame\(s\) differ\)"),
        (_set("txt", b"something else"), r"txt 'something else' differs from json caption"),
    ],
)
def test_verify_detects_bad_sample(tmp_path, mutate, message):
    bad = sample("bad_1", 1)
    mutate(bad)
    split_url = write_split(
        str(tmp_path), [[("ok_0", sample("ok_0", 0)), ("bad_1", bad), ("ok_2", sample("ok_2", 2))]]
    )
    build_index(split_url)
    report = verify_split(split_url)
    assert len(report.problems) == 1, report.problems
    prob = report.problems[0]
    assert (prob.shard, prob.key) == ("train-000000.tar", "bad_1")
    assert str(prob).startswith("train-000000.tar bad_1: ")
    assert re.search(message, prob.message), prob.message
    assert report.samples == 3


def test_verify_detects_flipped_byte_count_mismatch_and_duplicates(tmp_path):
    split_url = good_split(str(tmp_path))
    build_index(split_url)
    tar_path = tmp_path / "train/train-000001.tar"
    data = bytearray(tar_path.read_bytes())
    pos = data.index(b"caption 2")  # inside vid_c.txt
    data[pos] ^= 0x01
    tar_path.write_bytes(bytes(data))
    msgs = {(p.shard, p.key, p.message.split(" ")[0]) for p in verify_split(split_url).problems}
    assert msgs == {("train-000001.tar", "-", "md5"), ("train-000001.tar", "vid_c", "txt")}

    split_url = good_split(str(tmp_path / "again"))
    build_index(split_url)
    index_path = tmp_path / "again/train/shardindex.json"
    index = json.loads(index_path.read_text())
    index["shardlist"][0]["nsamples"] = 5
    index_path.write_text(json.dumps(index))
    report = verify_split(split_url)
    assert [str(p) for p in report.problems] == [
        "train-000000.tar -: tar holds 2 samples, index nsamples is 5",
        "sizes.json -: {'train-000000.tar': 2, 'train-000001.tar': 1} disagrees with shardindex.json counts "
        "{'train-000000.tar': 5, 'train-000001.tar': 1}",
        "manifest.json -: ok 3 != sum of nsamples 6",
    ]

    split_url = write_split(
        str(tmp_path / "dup"), [[("k0", sample("k0", 0)), ("k1", sample("k1", 1))], [("k1", sample("k1", 1))]]
    )
    build_index(split_url)
    assert [str(p) for p in verify_split(split_url).problems] == [
        "train-000001.tar k1: duplicate key (also in train-000000.tar)"
    ]


def test_verify_reports_missing_index_and_missing_shard(tmp_path):
    split_url = good_split(str(tmp_path))
    assert [str(p) for p in verify_split(split_url).problems] == ["shardindex.json -: missing"]
    build_index(split_url)
    (tmp_path / "train/train-000001.tar").unlink()
    report = verify_split(split_url)
    assert "train-000001.tar -: shard file missing" in [str(p) for p in report.problems]


def test_clis_exit_codes_and_output(tmp_path, capsys):
    split_url = good_split(str(tmp_path))
    assert verify_main([split_url]) == 1  # not indexed yet
    assert "shardindex.json -: missing" in capsys.readouterr().out
    assert index_main([split_url]) == 0
    out = capsys.readouterr().out
    assert (
        out
        == f"{split_url}: shards=2 ok=3 failed=2 inputs=5 frames_per_sample=3 frame_size=[16, 24] jpeg_quality=90\n"
    )
    assert verify_main([split_url]) == 0
    assert capsys.readouterr().out == f"{split_url}: shards=2 samples=3 frames=9 problems=0\n"
    assert verify_main([split_url, "--no-decode"]) == 0
    capsys.readouterr()
    tar_path = tmp_path / "train/train-000000.tar"
    tar_path.write_bytes(tar_path.read_bytes()[:-2048] + b"\x01" * 2048)
    assert verify_main([split_url]) == 1
    out = capsys.readouterr().out
    assert "PROBLEM train-000000.tar -: md5 " in out
    assert out.rstrip().endswith("FAILED")
    assert index_main([str(tmp_path / "nothing")]) == 2  # a mistyped folder: a CLI mistake
    assert "split folder" in (err := capsys.readouterr().err) and "does not exist" in err
    (tmp_path / "nothing").mkdir()
    assert index_main([str(tmp_path / "nothing")]) == 1
    assert "no shards nothing-NNNNNN.tar under" in capsys.readouterr().err  # split name = last path component
    (tmp_path / "train/train-000001.stats.json").unlink()
    assert index_main([split_url]) == 1
    assert "train-000001.tar is incomplete" in capsys.readouterr().err


def test_cli_subprocess_on_s3(s3_bucket):
    split_url = good_split(f"{s3_bucket}/shards")
    env = dict(os.environ)
    py = sys.executable  # the interpreter running the tests (its packages, whatever the checkout's layout)
    r = subprocess.run(
        [py, "-m", "shards.index", split_url], env=env, capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr
    assert "shards=2 ok=3 failed=2 inputs=5" in r.stdout
    r = subprocess.run(
        [py, "-m", "shards.verify", split_url], env=env, capture_output=True, text=True, timeout=120
    )
    assert (r.returncode, r.stdout.strip()) == (0, f"{split_url}: shards=2 samples=3 frames=9 problems=0")


# ----------------------------------------------------------------------------------------- stock readers only
def test_stock_webdataset_reads_every_sample(tmp_path):
    import webdataset as wds

    split_url = good_split(str(tmp_path))
    urls = [f"{split_url}/train-000000.tar", f"{split_url}/train-000001.tar"]
    got = list(wds.WebDataset(urls, shardshuffle=False).decode("rgb8"))
    assert [s["__key__"] for s in got] == ["vid_a", "vid_b", "vid_c"]
    for n, s in enumerate(got):
        assert set(s) - {"__key__", "__url__", "__local_path__"} == {
            "f000.jpg",
            "f001.jpg",
            "f002.jpg",
            "txt",
            "json",
        }
        for i in range(T):
            arr = s[f"f{i:03d}.jpg"]
            assert isinstance(arr, np.ndarray) and arr.shape == (H, W, 3) and arr.dtype == np.uint8
            assert np.abs(arr.astype(int) - frame(10 * n + i).astype(int)).max() <= 3
        assert s["txt"] == s["json"]["caption"] == ("one" if n == 1 else f"caption {n}")
        assert s["json"]["num_frames"] == T


def test_stock_tar_lists_members(tmp_path):
    split_url = good_split(str(tmp_path))
    out = subprocess.run(
        ["tar", "tf", f"{split_url}/train-000001.tar"], check=True, capture_output=True, text=True
    ).stdout
    assert out.split() == ["vid_c.f000.jpg", "vid_c.f001.jpg", "vid_c.f002.jpg", "vid_c.json", "vid_c.txt"]


def test_verify_refuses_index_entries_outside_the_split(tmp_path):
    split_url = good_split(str(tmp_path))
    build_index(split_url)
    index_path = tmp_path / "train/shardindex.json"
    index = json.loads(index_path.read_text())
    index["shardlist"][1]["url"] = "../../etc/passwd"
    index_path.write_text(json.dumps(index))
    problems = [str(p) for p in verify_split(split_url).problems]
    assert "shardindex.json -: shardlist[1] is '../../etc/passwd', expected 'train-000001.tar'" in problems
    assert "train-000001.tar -: shard not listed in shardindex.json" in problems
