"""The synthetic dataset: determinism, splits, caption uniqueness, attribute coverage, real decodable H.264."""

from __future__ import annotations

import json
import os
import subprocess

import numpy as np

from preprocess.decode import decode_frames, ffmpeg_binary, probe
from preprocess.synth import BACKGROUNDS, COLORS, DIRECTIONS, SHAPES, generate, main, make_specs, render


def test_specs_are_deterministic_and_cover_every_combination():
    a = make_specs(300, 100, 100, seconds=3, size=112, seed=0)
    assert a == make_specs(300, 100, 100, seconds=3, size=112, seed=0)
    assert a != make_specs(300, 100, 100, seconds=3, size=112, seed=1)
    train = [s for s in a if s.split == "train"]
    combos = {(s.shape, s.color, s.background, s.direction) for s in train}
    assert len(combos) == len(SHAPES) * len(COLORS) * len(BACKGROUNDS) * len(DIRECTIONS) == 288
    for split in ("val", "test"):
        caps = [s.caption for s in a if s.split == split]
        assert len(caps) == 100 and len(set(caps)) == 100
    assert len({s.video_id for s in a}) == 500
    for s in a:
        article = "an" if s.color == "orange" else "a"
        assert s.caption == f"{article} {s.color} {s.shape} moves {s.direction} on a {s.background} background"
    orange = next(s for s in a if s.color == "orange")
    assert orange.caption.startswith("an orange ")


def _centroid(frame: np.ndarray, bg: tuple[int, int, int]) -> np.ndarray:
    mask = np.abs(frame.astype(int) - np.array(bg)).sum(-1) > 60
    ys, xs = np.nonzero(mask)
    return np.array([xs.mean(), ys.mean()])


def test_render_moves_the_shape_in_its_direction():
    for spec in make_specs(16, 0, 0, seconds=2, size=64, seed=3):
        frames = render(spec, seconds=2, fps=4, size=64)
        assert frames.shape == (8, 64, 64, 3)
        shift = _centroid(frames[-1], BACKGROUNDS[spec.background]) - _centroid(frames[0], BACKGROUNDS[spec.background])
        dx, dy = DIRECTIONS[spec.direction]
        along = shift[0] * dx + shift[1] * dy
        assert along > 0.25 * 64 * (7 / 8), (spec, shift)
        assert abs(shift[0] * dy + shift[1] * dx) < 1.0  # no movement across the direction
        # the shape has its colour
        mask = np.abs(frames[0].astype(int) - np.array(BACKGROUNDS[spec.background])).sum(-1) > 60
        assert np.abs(frames[0][mask].mean(0) - np.array(COLORS[spec.color])).max() < 1


def test_generate_writes_real_h264_and_jsonl(tmp_path):
    out = str(tmp_path / "synth")
    assert main(["--out", out, "--num-train", "6", "--num-val", "2", "--num-test", "2", "--seconds", "1",
                 "--fps", "8", "--size", "64", "--workers", "1"]) == 0
    rows = [json.loads(line) for line in open(os.path.join(out, "annotations.jsonl"), encoding="utf-8")]
    assert [r["split"] for r in rows] == ["train"] * 6 + ["val"] * 2 + ["test"] * 2
    assert set(rows[0]) >= {"video_path", "caption", "split", "video_id"}
    first = os.path.join(out, rows[0]["video_path"])
    info = probe(first, backend="ffmpeg")
    assert (info.num_frames, info.fps, info.width, info.height) == (8, 8.0, 64, 64)
    head = open(first, "rb").read(64)
    assert b"ftyp" in head
    codec = subprocess.run([ffmpeg_binary(), "-hide_banner", "-i", first], capture_output=True, text=True).stderr
    assert "Video: h264" in codec and "yuv420p" in codec
    # decoded pixels match the rendered frames (H.264 at crf 18 is close)
    spec = make_specs(6, 2, 2, seconds=1, size=64, seed=0)[0]
    want = render(spec, seconds=1, fps=8, size=64)
    got = decode_frames(first, list(range(8)), size=64)
    assert np.abs(got.astype(int) - want.astype(int)).mean() < 3
    # deterministic: a second run gives byte-identical files
    before = {r["video_path"]: open(os.path.join(out, r["video_path"]), "rb").read() for r in rows}
    generate(out, num_train=6, num_val=2, num_test=2, seconds=1, fps=8, size=64, workers=2)
    assert before == {p: open(os.path.join(out, p), "rb").read() for p in before}
    # the generic JSONL reader accepts the file
    from preprocess.annotations import load_items

    items = load_items("jsonl", "val", os.path.join(out, "annotations.jsonl"), out)
    assert [it.captions[0] for it in items] == [r["caption"] for r in rows if r["split"] == "val"]
    assert all(os.path.isfile(it.source) for it in items)


def test_hard_mode_is_long_tailed_with_near_duplicates_and_two_captions():
    from collections import Counter

    from preprocess.synth import HARD_DUP_RATE

    specs = make_specs(300, 100, 1000, seconds=2, size=64, seed=3, mode="hard")
    test = [s for s in specs if s.split == "test"]
    assert len(test) == 1000 and len(specs) == 1400  # beyond the 288 distinct combinations
    assert specs == make_specs(300, 100, 1000, seconds=2, size=64, seed=3, mode="hard")  # deterministic
    freq = sorted(Counter((s.shape, s.color, s.background, s.direction) for s in test).values(), reverse=True)
    assert freq[0] >= 10 * np.median(freq)  # long tail: the head combination is far above the typical one
    dups = sum(1 for a, b in zip(test, test[1:]) if (a.shape, a.color, a.background, a.direction)
               == (b.shape, b.color, b.background, b.direction) and abs(a.x0 - b.x0) <= 1 and abs(a.y0 - b.y0) <= 1)
    assert 0.5 * HARD_DUP_RATE * 999 <= dups <= 2 * HARD_DUP_RATE * 999
    generic = Counter(s.generic_caption for s in test)
    assert all(s.generic_caption and s.generic_caption != s.caption for s in test)
    assert max(generic.values()) > 30  # a generic caption matches many clips
    s = test[0]
    assert s.generic_caption in (f"a {s.shape} moves {s.direction}",
                                 f"something {s.color} on a {s.background} background")
    # easy mode is unchanged (no generic captions) and a bad mode is a clear error
    assert all(x.generic_caption is None for x in make_specs(6, 2, 2, seconds=1, size=64, seed=0))
    import pytest

    with pytest.raises(ValueError, match="--mode must be one of"):
        make_specs(6, 2, 2, seconds=1, size=64, mode="medium")


def test_hard_mode_writes_both_captions_as_one_item(tmp_path):
    from preprocess.annotations import load_items

    out = str(tmp_path / "hard")
    assert main(["--out", out, "--num-train", "3", "--num-val", "1", "--num-test", "2", "--seconds", "1",
                 "--fps", "4", "--size", "32", "--workers", "1", "--mode", "hard"]) == 0
    rows = [json.loads(line) for line in open(os.path.join(out, "annotations.jsonl"), encoding="utf-8")]
    assert len(rows) == 12 and len(os.listdir(os.path.join(out, "videos"))) == 6
    items = load_items("jsonl", "test", os.path.join(out, "annotations.jsonl"), out)
    specs = make_specs(3, 1, 2, seconds=1, size=32, seed=0, mode="hard")[4:]
    assert [it.captions for it in items] == [(s.caption, s.generic_caption) for s in specs]
