"""The trainer: schedule and parameter groups (unit), and a 2-process CPU run through ``accelerate launch``
that
trains, validates, checkpoints and scores (integration)."""

from __future__ import annotations

import glob
import json
import math
import os

import numpy as np
import pytest
import torch
from torch import nn
from train_fixtures import run_cli, tiny_config_text, write_dataset

from training.config import OptimConfig
from training.logging_utils import read_metrics
from training.optim import build_scheduler, param_groups, warmup_cosine

# ------------------------------------------------------------------------------------------------------------
# unit
# ------------------------------------------------------------------------------------------------------------


def test_warmup_cosine_hand_values():
    # x = step/total; x < 0.1: x / 0.1; else 0.5 (1 + cos(pi x)) (not re-based: 1 -> 0.9755 at x = 0.1)
    assert warmup_cosine(0, 100, 0.1) == 0.0
    assert warmup_cosine(5, 100, 0.1) == pytest.approx(0.5)
    assert warmup_cosine(10, 100, 0.1) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.1)))
    assert warmup_cosine(10, 100, 0.1) == pytest.approx(0.97552826)
    assert warmup_cosine(50, 100, 0.1) == pytest.approx(0.5)
    assert warmup_cosine(100, 100, 0.1) == pytest.approx(0.0)
    assert warmup_cosine(30, 100, 0.0) == pytest.approx(0.5 * (1 + math.cos(0.3 * math.pi)))
    with pytest.raises(ValueError, match="total steps must be > 0"):
        warmup_cosine(1, 0, 0.1)


class _Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.clip = nn.Module()
        self.clip.proj = nn.Linear(4, 4)  # clip: weight decay, bias no decay
        self.clip.ln_final = nn.LayerNorm(4)
        self.clip.positional_embedding = nn.Parameter(torch.zeros(7, 4))
        self.clip.logit_scale = nn.Parameter(torch.tensor(4.6))
        self.clip.frozen = nn.Parameter(torch.zeros(3, 3), requires_grad=False)
        self.head = nn.Linear(4, 2)
        self.frame_position_embeddings = nn.Embedding(12, 4)


def test_param_groups_split_clip_and_decay():
    cfg = OptimConfig(lr=1e-4, coef_lr=1e-3, weight_decay=0.2)
    model = _Toy()
    groups = {g["name"]: g for g in param_groups(model, cfg)}
    ids = {name: {id(p) for p in g["params"]} for name, g in groups.items()}
    assert ids["clip/decay"] == {id(model.clip.proj.weight)}
    assert ids["clip/no_decay"] == {
        id(model.clip.proj.bias),
        id(model.clip.ln_final.weight),
        id(model.clip.ln_final.bias),
        id(model.clip.positional_embedding),
        id(model.clip.logit_scale),
    }
    assert ids["rest/decay"] == {id(model.head.weight)}
    assert ids["rest/no_decay"] == {id(model.head.bias), id(model.frame_position_embeddings.weight)}
    assert groups["clip/decay"]["lr"] == pytest.approx(1e-7) and groups["rest/decay"]["lr"] == pytest.approx(
        1e-4
    )
    assert groups["clip/no_decay"]["weight_decay"] == 0.0 and groups["rest/decay"]["weight_decay"] == 0.2
    assert all(id(model.clip.frozen) not in s for s in ids.values())


def test_scheduler_follows_warmup_cosine_and_saves_plain_numbers(tmp_path):
    model = _Toy()
    opt = torch.optim.AdamW(param_groups(model, OptimConfig(lr=1e-3, coef_lr=0.1)), lr=1e-3)
    sched = build_scheduler(opt, total_steps=20, warmup=0.1)
    lrs = []
    for _ in range(20):
        lrs.append(opt.param_groups[-1]["lr"])
        opt.step()
        sched.step()
    expected = [1e-3 * warmup_cosine(s, 20, 0.1) for s in range(20)]
    np.testing.assert_allclose(lrs, expected, rtol=1e-9, atol=1e-15)
    torch.save(sched.state_dict(), tmp_path / "s.bin")
    assert torch.load(tmp_path / "s.bin", weights_only=True)["last_epoch"] == 20


# ------------------------------------------------------------------------------------------------------------
# integration: 2 processes on CPU (gloo) through accelerate launch
# ------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("train2p")
    root = write_dataset(str(base / "data"))
    out = str(base / "run")
    cfg = base / "cfg.yaml"
    cfg.write_text(tiny_config_text(root, out))
    proc = run_cli(
        [
            "training.train",
            "--config",
            str(cfg),
            "optim.epochs=2",
            "run.save_every_steps=2",
            "run.keep_last=2",
            "eval.every_steps=4",
            "run.trackers=[tensorboard]",
        ],
        nproc=2,
    )
    return {"root": root, "out": out, "proc": proc}


@pytest.mark.slow
def test_two_process_run_trains_validates_checkpoints(trained_run):
    out = trained_run["out"]
    train = read_metrics(os.path.join(out, "metrics.jsonl"), "train")
    val = read_metrics(os.path.join(out, "metrics.jsonl"), "val")
    # 48 train videos / global batch 8 = 6 steps per epoch, 2 epochs
    assert [r["step"] for r in train] == list(range(1, 13))
    assert [r["epoch"] for r in train] == [0] * 6 + [1] * 6
    losses = [r["loss/total"] for r in train]
    assert all(math.isfinite(v) for v in losses)
    assert np.mean(losses[-3:]) < np.mean(losses[:3]), losses  # loss falls
    for r in train:
        assert set(r) >= {
            "loss/wti",
            "loss/nbi",
            "loss/opt",
            "loss/kl",
            "lr",
            "data_wait_s",
            "compute_s",
            "samples_per_s",
            "skipped",
            "sample_index",
        }
        assert len(r["sample_index"]) == 8  # the gathered global batch
        assert r["bank_size"] == 16  # pre-filled 2 x 8, then FIFO at capacity
    for epoch in (0, 1):  # every training video seen in each epoch (random caption mode: unit = video)
        seen = {i for r in train if r["epoch"] == epoch for i in r["sample_index"]}
        assert seen == set(range(48))
    orders = [[i for r in train if r["epoch"] == e for i in r["sample_index"]] for e in (0, 1)]
    assert orders[0] != orders[1]  # reshuffled each epoch
    # validation every 4 steps and at each epoch end (steps 4, 6, 8, 12)
    assert [r["step"] for r in val] == [4, 6, 8, 12]
    for r in val:
        assert {
            "val/t2v/R@1",
            "val/v2t/R@1",
            "val/t2v/MdR",
            "val/v2t/MnR",
            "val/hub/t2v/k5/skew",
            "val/mean_R@1",
        } <= set(r)
        assert r["val/mean_R@1"] == pytest.approx(0.5 * (r["val/t2v/R@1"] + r["val/v2t/R@1"]))
    best = json.loads(open(os.path.join(out, "best", "selection.json")).read())
    best_val = max(val, key=lambda r: r["val/mean_R@1"])  # first maximum wins (strictly better replaces)
    assert best["metric"] == "val/mean_R@1" and best["step"] == best_val["step"]
    assert best["value"] == pytest.approx(best_val["val/mean_R@1"]) and best["selected_on_test"] is False
    # keep-last-2 periodic checkpoints; the last is the epoch-end one
    ckpts = sorted(os.listdir(os.path.join(out, "checkpoints")))
    assert ckpts == ["step-00000010", "step-00000012"]
    assert glob.glob(os.path.join(out, "tb", "events.out.tfevents.*"))
    assert os.path.exists(os.path.join(out, "config.yaml"))


@pytest.mark.slow
def test_every_checkpoint_file_loads_without_pickle(trained_run):
    from safetensors.torch import load_file

    ck = os.path.join(trained_run["out"], "checkpoints", "step-00000010")
    names = set(os.listdir(ck))
    assert names == {
        "pytorch_model.bin",
        "optimizer.pt",
        "scheduler.json",
        "trainer.json",
        "bank.safetensors",
        "rng_0.safetensors",
        "rng_1.safetensors",
        "data_state_0.json",
        "data_state_1.json",
        "config.yaml",
        "manifest.json",
    }
    manifest = json.load(open(os.path.join(ck, "manifest.json")))
    assert manifest["format"] == 2 and manifest["step"] == 10 and manifest["world_size"] == 2
    assert manifest["files"] == {n: os.path.getsize(os.path.join(ck, n)) for n in names - {"manifest.json"}}
    for f in glob.glob(os.path.join(ck, "*.pt")) + glob.glob(os.path.join(ck, "*.bin")):
        torch.load(f, map_location="cpu", weights_only=True)  # raises on anything but tensors/containers
    torch.load(os.path.join(trained_run["out"], "best", "pytorch_model.bin"), weights_only=True)
    progress = json.load(open(os.path.join(ck, "trainer.json")))["progress"]
    assert progress["step"] == 10 and progress["epoch"] == 1 and progress["step_in_epoch"] == 4
    data = json.load(open(os.path.join(ck, "data_state_1.json")))
    assert data["batches"] == 4 and data["epoch"] == 1 and data["rank"] == 1
    assert load_file(os.path.join(ck, "bank.safetensors"))["text_tokens"].shape[0] == 16
    rng = load_file(os.path.join(ck, "rng_0.safetensors"))
    assert rng["torch_cpu"].dtype == torch.uint8 and rng["numpy_keys"].shape == (624,)


@pytest.mark.slow
def test_score_distributed_equals_single_process(trained_run, tmp_path):
    out = trained_run["out"]
    s2, s1 = tmp_path / "s2.npz", tmp_path / "s1.npz"
    run_cli(["training.score", "--run", out, "--split", "test", "--out", str(s2)], nproc=2)
    proc = run_cli(
        ["training.score", "--run", out, "--split", "test", "--out", str(s1), "--metrics"], nproc=1
    )
    assert "32 texts x 16 videos (relevance, caption mode all, local similarity)" in proc.stdout
    a, b = np.load(s2), np.load(s1)
    assert a["scores"].shape == (32, 16) and a["relevance"].shape == (32, 16)
    np.testing.assert_array_equal(a["query_ids"], b["query_ids"])
    np.testing.assert_array_equal(a["gallery_ids"], b["gallery_ids"])
    np.testing.assert_allclose(a["scores"], b["scores"], atol=1e-5)
    np.testing.assert_array_equal(a["relevance"], b["relevance"])
    # two captions per test video, each relevant to its own video only
    assert a["relevance"].sum(1).tolist() == [1] * 32 and a["relevance"].sum(0).tolist() == [2] * 16
    assert list(a["query_ids"][:2]) == ["test_0000#000", "test_0000#001"]
    from eval.scores_io import load_bank, load_scores

    assert load_scores(s2).shape == (32, 16)
    # a query bank (texts of one split x videos of another): with the test texts it must equal the test scores
    sb = tmp_path / "bank.npz"
    proc = run_cli(
        ["training.score", "--run", out, "--split", "test", "--queries", "test", "--out", str(sb)], nproc=1
    )
    assert "query bank 32 test texts x 16 videos" in proc.stdout
    bank = np.load(sb)
    assert set(bank.files) == {"scores", "query_ids", "gallery_ids"}
    np.testing.assert_array_equal(bank["query_ids"], b["query_ids"])
    np.testing.assert_allclose(load_bank(sb, b["gallery_ids"]), b["scores"], atol=1e-6)
    # the best checkpoint's val score file reproduces the logged best metric
    sv = tmp_path / "val.npz"
    run_cli(["training.score", "--run", out, "--split", "val", "--out", str(sv)], nproc=1)
    v = np.load(sv)
    assert "gt" in v and v["scores"].shape == (16, 16)
    t2v_r1 = 100.0 * np.mean(v["scores"].argmax(1) == v["gt"])
    best = json.loads(open(os.path.join(out, "best", "selection.json")).read())
    val_rec = [
        r for r in read_metrics(os.path.join(out, "metrics.jsonl"), "val") if r["step"] == best["step"]
    ][0]
    assert t2v_r1 == pytest.approx(val_rec["val/t2v/R@1"], abs=1e-6)


def test_score_cli_errors(tmp_path, capsys):
    from training.score import main

    assert main(["--run", str(tmp_path / "none"), "--out", str(tmp_path / "s.npz")]) == 2
    assert "neither best/ nor checkpoints/step-* found" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------------------
# validate.score_split: assembly of ids, padding, duplicates, gt / relevance (one process, fake encoder)
# ------------------------------------------------------------------------------------------------------------
class _FakeModel(nn.Module):
    """text tokens = a fixed embedding of the ids; video tokens = the first D pixels of each frame."""

    def __init__(self, d: int = 6) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.emb = nn.Embedding(50, d)
        self.emb.weight.data = torch.randn(50, d, generator=g)
        self.text_weight = nn.Linear(d, 1)
        self.video_weight = nn.Linear(d, 1)
        self.d = d

    def encode_text(self, ids, mask):
        return self.emb(ids)

    def encode_video(self, frames, mask):
        return frames.flatten(2)[..., : self.d]


def _batch(keys, vids, caps, pad, seed):
    g = torch.Generator().manual_seed(seed)
    n = len(keys)
    ids = torch.randint(1, 50, (n, 5), generator=g)
    tmask = torch.ones(n, 5, dtype=torch.long)
    tmask[:, 3:] = 0
    frames = torch.stack([torch.full((3, 3, 2, 2), float(int(k[-1])) + 0.1 * j) for j, k in enumerate(keys)])
    frames = frames + torch.randn(frames.shape, generator=g)
    return {
        "keys": keys,
        "video_ids": vids,
        "caption_index": torch.tensor(caps),
        "is_pad": torch.tensor(pad),
        "text_ids": ids,
        "text_mask": tmask,
        "frames": frames,
        "frame_mask": torch.ones(n, 3, dtype=torch.long),
    }


def test_score_split_assembles_ids_gt_and_relevance():
    from training.similarity import apply_token_weighting, local_similarity
    from training.validate import _pooled_scores, score_split

    model = _FakeModel()
    # caption mode "all": k2 has two captions, k1 one, the last row of batch 2 is padding (a repeat of k1)
    b1 = _batch(["k2", "k1"], ["v2", "v1"], [0, 0], [False, False], 1)
    b2 = _batch(["k2", "k1"], ["v2", "v1"], [1, 0], [False, True], 2)
    res = score_split(model, [b1, b2], device="cpu", caption_mode="all", block=1)
    assert res.query_ids == ["k1#000", "k2#000", "k2#001"] and res.gallery_ids == ["k1", "k2"]
    assert res.gt is None and res.relevance.tolist() == [[True, False], [False, True], [False, True]]
    # independent assembly: the texts and videos in sorted-id order
    with torch.no_grad():
        t = torch.stack(
            [
                model.encode_text(b1["text_ids"], b1["text_mask"])[1],
                model.encode_text(b1["text_ids"], b1["text_mask"])[0],
                model.encode_text(b2["text_ids"], b2["text_mask"])[0],
            ]
        )
        tm = torch.stack([b1["text_mask"][1], b1["text_mask"][0], b2["text_mask"][0]])
        v = model.encode_video(b1["frames"], b1["frame_mask"]).flip(0)  # k1, k2 from their first appearance
        vm = b1["frame_mask"]
        want = local_similarity(
            t,
            tm,
            apply_token_weighting(model.text_weight, t, tm),
            v,
            vm,
            apply_token_weighting(model.video_weight, v, vm),
        )
        np.testing.assert_allclose(res.scores, want.numpy(), atol=1e-6)
        pooled = score_split(model, [b1, b2], device="cpu", caption_mode="all", similarity="pooled")
        np.testing.assert_allclose(pooled.scores, _pooled_scores(t, tm, v, vm).numpy(), atol=1e-6)
        eot = torch.nn.functional.normalize(t[:, 2], dim=-1)  # last valid position = 2
        mean = torch.nn.functional.normalize(v.mean(1), dim=-1)
        np.testing.assert_allclose(pooled.scores, (eot @ mean.T).numpy(), atol=1e-6)
    # caption mode "first": one text per key, gt = the key's column
    first = score_split(model, [b1, b2], device="cpu", caption_mode="first")
    assert first.query_ids == ["k1", "k2"] and first.gt.tolist() == [0, 1] and first.relevance is None
    with pytest.raises(ValueError, match="similarity must be 'local' or 'pooled'"):
        score_split(model, [b1], device="cpu", caption_mode="first", similarity="global")


def test_uint8_frames_train_exactly_like_float_frames(tmp_path):
    # data.frames=uint8 moves uint8 batches and normalises in the model: the same losses, bit for bit
    root = write_dataset(str(tmp_path / "data"), n_train=24, n_val=8, n_test=8)
    losses = {}
    for frames in ("float", "uint8"):
        out = tmp_path / f"run_{frames}"
        cfg = tmp_path / f"cfg_{frames}.yaml"
        cfg.write_text(tiny_config_text(root, str(out)))
        run_cli(
            [
                "training.train",
                "--config",
                str(cfg),
                f"data.frames={frames}",
                "optim.max_steps=2",
                "eval.at_epoch_end=false",
                "run.log_every_steps=1",
            ]
        )
        with open(out / "metrics.jsonl") as fh:
            records = [json.loads(line) for line in fh]
        losses[frames] = [r["loss/total"] for r in records if "loss/total" in r]
    assert len(losses["float"]) == 2
    assert losses["uint8"] == losses["float"]
