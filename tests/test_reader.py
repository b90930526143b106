"""The local streaming reader: exactly-once epochs, determinism, resume in a new process, content, corruption."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import textwrap
from collections import Counter

import numpy as np
import pytest
import simplejpeg
import torch
from shard_fixtures import write_split

from shards.errors import ShardDataError
from shards.reader import LoaderConfig, build_loader, iter_tar_samples
from shards.transforms import CLIP_MEAN, CLIP_STD, default_tokenizer

SIZES = [7, 5, 6, 4, 8]
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT_DIR = os.path.dirname(HERE)


@pytest.fixture(scope="module")
def tokenizer():
    return default_tokenizer()


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("shards"))
    specs = write_split(root, "train", SIZES, frames_per_sample=lambda s, i: 2 if (s, i) == (1, 3) else 4)
    return root, specs


def _cfg(root_dir: str | None, **kw) -> LoaderConfig:
    base = dict(
        root=root_dir,
        split="train",
        batch_size=4,
        num_workers=0,
        num_frames=4,
        max_words=8,
        frame_size=16,
        output="uint8",
        caption_mode="random",
        shuffle_buffer=5,
        seed=7,
    )
    base.update(kw)
    return LoaderConfig(**base)


def _run_epoch(cfg, world, tokenizer, epoch=0):
    """Per rank: list of batches as (sample_index list, is_pad list)."""
    out = []
    for r in range(world):
        loader = build_loader(cfg, rank=r, world_size=world, epoch=epoch, tokenizer=tokenizer)
        out.append([(b["sample_index"].tolist(), b["is_pad"].tolist()) for b in loader])
        assert len(out[-1]) == len(loader)
        assert loader.stats()["corrupt_jpeg"] == 0
    return out


@pytest.mark.parametrize("workers", [0, 1, 2])
@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("mode", ["random", "all"])
def test_epoch_delivers_every_unit_once(split, tokenizer, world, workers, mode):
    root, specs = split
    cfg = _cfg(root, num_workers=workers, caption_mode=mode)
    per_rank = _run_epoch(cfg, world, tokenizer)
    n_units = len(specs) if mode == "random" else sum(len(s.captions) for s in specs)
    counts = {len(r) for r in per_rank}
    assert len(counts) == 1  # every rank the same number of batches
    real = Counter(i for r in per_rank for ids, pads in r for i, p in zip(ids, pads, strict=True) if not p)
    assert real == Counter(range(n_units))
    n_pad = sum(p for r in per_rank for _, pads in r for p in pads)
    assert n_pad == counts.pop() * 4 * world - n_units
    # the delivered order is the plan's order, whatever the worker timing
    loader = build_loader(cfg, rank=world - 1, world_size=world, tokenizer=tokenizer)
    ref = [([u.uid for u in b], [u.pad for u in b]) for b in loader.plan().rank_batches(world - 1)]
    assert per_rank[-1] == ref


def test_same_seed_same_batches_other_epoch_other_order(split, tokenizer):
    root, _ = split
    cfg = _cfg(root, num_workers=2)
    a = _run_epoch(cfg, 2, tokenizer)
    b = _run_epoch(cfg, 2, tokenizer)
    c = _run_epoch(cfg, 2, tokenizer, epoch=1)
    assert a == b
    assert a != c
    # set_epoch on a live loader gives the same as building it at that epoch
    loader = build_loader(cfg, rank=1, world_size=2, tokenizer=tokenizer)
    loader.set_epoch(1)
    assert [(x["sample_index"].tolist(), x["is_pad"].tolist()) for x in loader] == c[1]


def test_sample_content_frames_text_and_mask(split, tokenizer):
    root, specs = split
    by_uid = {i: s for i, s in enumerate(specs)}
    cfg = _cfg(root, caption_mode="first", shuffle=False, max_words=6)
    loader = build_loader(cfg, rank=0, world_size=1, tokenizer=tokenizer)
    batches = list(loader)
    seen = 0
    for b in batches:
        assert b["frames"].dtype == torch.uint8 and b["frames"].shape == (4, 4, 3, 16, 16)
        for row, uid in enumerate(b["sample_index"].tolist()):
            spec = by_uid[uid]
            assert b["keys"][row] == spec.key and b["video_ids"][row] == spec.video_id
            nf = len(spec.frames)
            assert b["frame_mask"][row].tolist() == [1] * nf + [0] * (4 - nf)
            for f in range(nf):
                ref = torch.from_numpy(simplejpeg.decode_jpeg(spec.frames[f], colorspace="RGB")).permute(
                    2, 0, 1
                )
                assert torch.equal(b["frames"][row, f], ref)
            assert not b["frames"][row, nf:].any()
            toks = tokenizer.encode(spec.captions[0])
            ids = [tokenizer.sot_token_id, *toks[:4], tokenizer.eot_token_id]
            assert b["text_ids"][row].tolist() == ids + [0] * (6 - len(ids))
            assert b["text_mask"][row].tolist() == [1] * len(ids) + [0] * (6 - len(ids))
            assert b["caption_index"][row] == 0
            seen += 1
    assert seen == len(batches) * 4


def test_float_output_is_clip_normalised(split, tokenizer):
    root, specs = split
    kw = dict(caption_mode="first", shuffle=False)
    u8 = next(iter(build_loader(_cfg(root, **kw), rank=0, world_size=1, tokenizer=tokenizer)))
    fl = next(iter(build_loader(_cfg(root, output="float", **kw), rank=0, world_size=1, tokenizer=tokenizer)))
    mean = torch.tensor(CLIP_MEAN).view(1, 1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 1, 3, 1, 1)
    expect = (u8["frames"].float() / 255 - mean) / std
    real = u8["frame_mask"].bool()
    assert fl["frames"].dtype == torch.float32
    torch.testing.assert_close(fl["frames"][real], expect[real])


def test_random_and_all_captions_match_the_json(split, tokenizer):
    root, specs = split
    for mode in ("random", "all"):
        loader = build_loader(
            _cfg(root, caption_mode=mode, max_words=32), rank=0, world_size=1, tokenizer=tokenizer
        )
        for b in loader:
            for row, key in enumerate(b["keys"]):
                spec = next(s for s in specs if s.key == key)
                text = spec.captions[int(b["caption_index"][row])]
                ids = [tokenizer.sot_token_id, *tokenizer.encode(text), tokenizer.eot_token_id]
                assert b["text_ids"][row, : len(ids)].tolist() == ids


def test_augment_same_ops_for_every_frame_and_seeded(tmp_path, tokenizer):
    root = str(tmp_path)
    write_split(root, "train", [4], num_frames=3, size=24)
    # make all frames of a clip identical so identical ops give identical output frames
    import tarfile

    from shards.writer import ShardWriter

    tar_path = tmp_path / "train" / "train-000000.tar"
    with tarfile.open(tar_path) as t:
        members = {m.name: t.extractfile(m).read() for m in t.getmembers()}
    with ShardWriter(root, "train", 0) as w:
        for key in sorted({n.split(".")[0] for n in members}):
            f0 = members[f"{key}.f000.jpg"]
            w.write(key, {"f000.jpg": f0, "f001.jpg": f0, "f002.jpg": f0, "txt": members[f"{key}.txt"]})
    cfg = _cfg(root, num_frames=3, frame_size=16, augment=True, caption_mode="first")
    a = next(iter(build_loader(cfg, rank=0, world_size=1, tokenizer=tokenizer)))
    b = next(iter(build_loader(cfg, rank=0, world_size=1, tokenizer=tokenizer)))
    plain = next(
        iter(
            build_loader(
                _cfg(root, num_frames=3, frame_size=16, caption_mode="first"),
                rank=0,
                world_size=1,
                tokenizer=tokenizer,
            )
        )
    )
    assert torch.equal(a["frames"], b["frames"])
    assert torch.equal(a["frames"][:, 0], a["frames"][:, 1]) and torch.equal(
        a["frames"][:, 0], a["frames"][:, 2]
    )
    assert not torch.equal(a["frames"], plain["frames"])
    assert a["frames"].shape == (4, 3, 3, 16, 16)


def test_resume_skips_without_decoding(split, tokenizer, monkeypatch):
    root, _ = split
    cfg = _cfg(root, caption_mode="all")
    full = [b["sample_index"].tolist() for b in build_loader(cfg, rank=1, world_size=2, tokenizer=tokenizer)]
    loader = build_loader(cfg, rank=1, world_size=2, tokenizer=tokenizer)
    it = iter(loader)
    head = [next(it)["sample_index"].tolist() for _ in range(3)]
    state = loader.state_dict()
    assert state["batches"] == 3 and state["epoch"] == 0

    import shards.reader as reader_mod

    calls = []
    real_decode = reader_mod.decode_jpeg
    monkeypatch.setattr(
        reader_mod, "decode_jpeg", lambda data, *out: calls.append(1) or real_decode(data, *out)
    )
    resumed = build_loader(
        cfg, rank=1, world_size=2, state=json.loads(json.dumps(state)), tokenizer=tokenizer
    )
    tail = [b["sample_index"].tolist() for b in resumed]
    assert head + tail == full
    rows = len(tail) * 4
    assert rows < len(calls) <= rows * 4  # at most 4 frames per remaining row; none for the skipped ones
    assert resumed.state_dict()["batches"] == len(full)


def test_resume_in_a_new_process(split, tmp_path, tokenizer):
    root, _ = split
    script = textwrap.dedent(
        f"""
        import json, sys
        sys.path.insert(0, {ROOT_DIR!r})
        from shards.reader import LoaderConfig, build_loader
        cfg = LoaderConfig(root={root!r}, split="train", batch_size=4, num_workers=2, num_frames=4, max_words=8,
                           frame_size=16, output="uint8", caption_mode="random", shuffle_buffer=5, seed=7)
        mode, path = sys.argv[1], sys.argv[2]
        state = json.load(open(path)) if mode == "resume" else None
        loader = build_loader(cfg, rank=0, world_size=2, epoch=2, state=state)
        out = []
        for b in loader:
            out.append(list(zip(b["sample_index"].tolist(), b["is_pad"].tolist())))
            if mode == "stop" and len(out) == 3:
                json.dump(loader.state_dict(), open(path, "w"))
                break
        print(json.dumps(out))
        """
    )
    st = tmp_path / "state.json"

    def run(mode):
        res = subprocess.run(
            [sys.executable, "-c", script, mode, str(st)],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
        assert res.returncode == 0, res.stderr
        return [[tuple(x) for x in b] for b in json.loads(res.stdout.strip().splitlines()[-1])]

    cfg = _cfg(root, num_workers=2)
    full = [
        list(zip(b["sample_index"].tolist(), b["is_pad"].tolist(), strict=True))
        for b in build_loader(cfg, rank=0, world_size=2, epoch=2, tokenizer=tokenizer)
    ]
    head = run("stop")
    tail = run("resume")
    assert len(head) == 3
    assert head + tail == full
    real = [uid for b in head + tail for uid, pad in b if not pad]
    assert len(real) == len(set(real))


def test_state_with_other_layout_is_refused(split, tokenizer):
    root, _ = split
    loader = build_loader(_cfg(root), rank=0, world_size=2, tokenizer=tokenizer)
    state = loader.state_dict()
    with pytest.raises(ValueError, match=r"global batch \(world_size x batch_size\): saved 8 vs now 12"):
        build_loader(_cfg(root), rank=0, world_size=3, state=state, tokenizer=tokenizer)
    with pytest.raises(ValueError, match="version"):
        build_loader(_cfg(root), rank=0, world_size=2, state={**state, "version": 99}, tokenizer=tokenizer)


def test_eval_loader_in_order_without_shuffle(split, tokenizer):
    root, specs = split
    cfg = _cfg(root, shuffle=False, caption_mode="first", num_workers=0)
    ids = [
        i
        for b in build_loader(cfg, rank=0, world_size=1, tokenizer=tokenizer)
        for i in b["sample_index"].tolist()
    ]
    assert ids[: len(specs)] == list(range(len(specs)))


# -- corruption -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def corrupt_split(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("corrupt"))
    specs = write_split(root, "train", [5, 5, 6], corrupt={(0, 1): "jpeg", (1, 2): "no_txt", (0, 3): "json"})
    tar = os.path.join(root, "train", "train-000002.tar")
    data = open(tar, "rb").read()
    keep = int(len(data) * 0.55)
    with tarfile.open(tar) as tf:  # samples with a member ending past the cut are lost (standard tarfile offsets)
        lost = {m.name.split(".")[0] for m in tf.getmembers() if m.offset_data + m.size > keep}
    with open(tar, "wb") as f:  # cut inside the 4th sample's frames
        f.write(data[:keep])
    return root, specs, lost


@pytest.mark.parametrize("workers", [0, 2])
def test_corruption_skipped_and_counted(corrupt_split, tokenizer, workers):
    root, specs, lost = corrupt_split
    cfg = _cfg(root, num_workers=workers, caption_mode="first")
    loader = build_loader(cfg, rank=0, world_size=1, tokenizer=tokenizer)
    batches = list(loader)
    assert len(batches) == len(loader) == 4  # 16 units / 4, nothing lost from the count
    stats = loader.stats()
    assert stats["corrupt_jpeg"] == 1 and stats["missing_members"] == 1 and stats["corrupt_json"] == 1
    assert stats["truncated_tar"] == 1
    real = {b["keys"][i] for b in batches for i in range(4) if not b["is_pad"][i]}
    bad = {"s00_001", "s01_002", "s00_003"}
    cut = {s.key for s in specs if s.shard == 2} - real
    assert not real & bad
    assert cut == lost and lost == {"s02_003", "s02_004", "s02_005"}  # the cut lands in the 4th sample
    assert real | bad | cut == {s.key for s in specs}
    assert stats["replaced_units"] == len(bad) + len(cut)


@pytest.mark.parametrize(
    "corrupt,match",
    [
        ({(0, 1): "jpeg"}, r"corrupt_jpeg: shard .*train-000000\.tar sample 's00_001'"),
        ({(0, 2): "no_txt"}, r"missing_members: shard .*train-000000\.tar sample 's00_002'"),
        ({(0, 0): "json"}, r"corrupt_json: shard .*train-000000\.tar sample 's00_000'"),
    ],
)
@pytest.mark.parametrize("workers", [0, 1])
def test_corruption_raises_with_shard_and_key(tmp_path, tokenizer, corrupt, match, workers):
    root = str(tmp_path)
    write_split(root, "train", [4], corrupt=corrupt)
    cfg = _cfg(root, on_error="raise", num_workers=workers, shuffle=False)
    with pytest.raises(ShardDataError if workers == 0 else Exception, match=match):
        list(build_loader(cfg, rank=0, world_size=1, tokenizer=tokenizer))


def test_truncated_shard_raises_with_url(corrupt_split, tokenizer):
    root, _, _ = corrupt_split
    url = os.path.join(root, "train", "train-000002.tar")
    cfg = _cfg(None, on_error="raise", caption_mode="first", shuffle=False, urls=[url])
    with pytest.raises(ShardDataError, match=r"truncated_tar: shard .*train-000002\.tar"):
        list(build_loader(cfg, rank=0, world_size=1, tokenizer=tokenizer))


def test_iter_tar_samples_groups_and_skips(split):
    root, specs = split
    with open(os.path.join(root, "train", "train-000000.tar"), "rb") as f:
        got = list(iter_tar_samples(f, lambda i: i in (1, 3), last_wanted=3))
    assert [(o, k) for o, k, _ in got] == [(i, specs[i].key) for i in range(4)]
    assert got[0][2] is None and got[2][2] is None
    assert sorted(got[1][2]) == ["f000.jpg", "f001.jpg", "f002.jpg", "f003.jpg", "json", "txt"]
    assert got[3][2]["f000.jpg"] == specs[3].frames[0]


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(caption_mode="any"), "caption_mode"),
        (dict(output="half"), "output"),
        (dict(on_error="ignore"), "on_error"),
        (dict(max_words=1), "max_words"),
    ],
)
def test_bad_config_is_named(split, tokenizer, kw, match):
    root, _ = split
    with pytest.raises(ValueError, match=match):
        build_loader(_cfg(root, **kw), rank=0, world_size=1, tokenizer=tokenizer)
    with pytest.raises(ValueError, match="needs root"):
        build_loader(_cfg(None), rank=0, world_size=1, tokenizer=tokenizer)


def test_missing_index_file_named(tmp_path, tokenizer):
    with pytest.raises(FileNotFoundError, match="sizes.json"):
        build_loader(_cfg(str(tmp_path)), rank=0, world_size=1, tokenizer=tokenizer)


def test_frames_sub_sampled_uniformly_when_more_than_t(tmp_path, tokenizer):
    root = str(tmp_path)
    specs = write_split(root, "train", [2], num_frames=7)
    cfg = _cfg(root, num_frames=3, caption_mode="first", shuffle=False, batch_size=2)
    b = next(iter(build_loader(cfg, rank=0, world_size=1, tokenizer=tokenizer)))
    for f, src in enumerate([0, 3, 6]):
        ref = np.asarray(simplejpeg.decode_jpeg(specs[0].frames[src], colorspace="RGB")).transpose(2, 0, 1)
        assert np.array_equal(b["frames"][0, f].numpy(), ref)
    assert b["frame_mask"][0].tolist() == [1, 1, 1]


def test_tar_parser_reads_stock_tars_pax_long_names_and_pipes(tmp_path):
    """Tars written by Python's tarfile (PAX long names, directories, GNU format) through a non-seekable stream."""
    import io
    import tarfile

    long_dir = "d" * 120
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        t.addfile(tarfile.TarInfo("sub"))  # a regular empty file named like a key without extension
        for key, payload in (("a1", b"x" * 700), ("b2", b"y" * 3)):
            for ext in ("f000.jpg", "txt"):
                info = tarfile.TarInfo(f"{long_dir}/{key}.{ext}")
                data = payload + ext.encode()
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
        dinfo = tarfile.TarInfo("adir")
        dinfo.type = tarfile.DIRTYPE
        t.addfile(dinfo)

    class Pipe(io.RawIOBase):
        def __init__(self, data):
            self.src = io.BytesIO(data)

        def readable(self):
            return True

        def readinto(self, b):
            chunk = self.src.read(min(len(b), 333))
            b[: len(chunk)] = chunk
            return len(chunk)

    stream = io.BufferedReader(Pipe(buf.getvalue()))
    assert not stream.seekable()
    got = list(iter_tar_samples(stream, lambda i: i != 1))
    assert [(o, k) for o, k, _ in got] == [(0, "sub"), (1, f"{long_dir}/a1"), (2, f"{long_dir}/b2")]
    assert got[1][2] is None
    assert got[2][2] == {"f000.jpg": b"yyyf000.jpg", "txt": b"yyytxt"}


def test_tar_parser_rejects_a_damaged_header(tmp_path):
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        info = tarfile.TarInfo("k.txt")
        info.size = 2
        t.addfile(info, io.BytesIO(b"hi"))
    data = bytearray(buf.getvalue())
    data[10] ^= 0xFF  # flip a byte of the name: checksum no longer matches
    with pytest.raises(tarfile.ReadError, match="checksum"):
        list(iter_tar_samples(io.BytesIO(bytes(data)), lambda i: True))


def test_all_mode_falls_back_to_shard_stats_for_caption_counts(tmp_path, tokenizer):
    root = str(tmp_path)
    specs = write_split(root, "train", [3, 2])
    os.remove(os.path.join(root, "train", "captions.json"))
    loader = build_loader(_cfg(root, caption_mode="all"), rank=0, world_size=1, tokenizer=tokenizer)
    assert loader.caption_counts == [[len(s.captions) for s in specs if s.shard == k] for k in (0, 1)]
    got = sorted(i for b in loader for i, p in zip(b["sample_index"].tolist(), b["is_pad"].tolist()) if not p)
    assert got == list(range(sum(len(s.captions) for s in specs)))
