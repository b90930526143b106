"""Elastic resume: an epoch interrupted under W ranks x K workers continues under W' x K' with every remaining
sample delivered exactly once, equal batch counts per rank, and each global step holding the same sample ids as
the uninterrupted run (plan level, and through the real loader reading shards with DataLoader workers)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from shard_fixtures import write_split

from shards.plan import elastic_plan, make_plan
from shards.reader import LoaderConfig, build_loader
from shards.transforms import default_tokenizer

SIZES = [7, 5, 6, 4, 9]
G = 4  # global batch


def _global_steps(plan) -> list[list[int]]:
    """Sample uids of each global step: ranks' batch j concatenated in rank order."""
    per_rank = [plan.rank_batches(r) for r in range(plan.world_size)]
    return [
        [u.uid for r in range(plan.world_size) for u in per_rank[r][j]] for j in range(plan.batches_per_rank)
    ]


@pytest.mark.parametrize(
    ("w0", "k0", "w1", "k1", "mode"),
    [
        (2, 2, 1, 2, "random"),
        (1, 2, 2, 1, "random"),
        (2, 1, 2, 3, "all"),
        (1, 1, 4, 2, "first"),
        (4, 2, 2, 2, "all"),
    ],
)
def test_plan_elastic_keeps_global_steps_and_exactly_once(w0, k0, w1, k1, mode):
    caps = [[1 + (s + i) % 3 for i in range(n)] for s, n in enumerate(SIZES)]
    base = make_plan(seed=5, epoch=1, world_size=w0, workers=k0, batch_size=G // w0, shard_sizes=SIZES,
                     caption_counts=caps, caption_mode=mode, shuffle_buffer=6)  # fmt: skip
    steps = _global_steps(base)
    for consumed in (0, 1, base.batches_per_rank // 2, base.batches_per_rank):
        new = elastic_plan(base, consumed, world_size=w1, workers=k1)
        assert new.batch_size == G // w1 and new.batches_per_rank == base.batches_per_rank
        assert _global_steps(new)[consumed:] == steps[consumed:]
        # every remaining real unit exactly once, across the whole epoch (before + after the switch)
        real_before = Counter(
            u.uid for r in range(w0) for b in base.rank_batches(r)[:consumed] for u in b if not u.pad
        )
        real_after = Counter(
            u.uid for r in range(w1) for b in new.rank_batches(r)[consumed:] for u in b if not u.pad
        )
        assert real_before + real_after == Counter(range(base.num_units))
        assert not (set(real_before) & set(real_after))
        # caption choice is unchanged too
        old_units = {
            (u.uid, u.caption, u.caption_seed) for r in range(w0) for b in base.rank_batches(r) for u in b
        }
        new_units = {(u.uid, u.caption, u.caption_seed) for r in range(w1) for b in new.rank_batches(r)[consumed:]
                     for u in b}  # fmt: skip
        assert new_units <= old_units


def test_plan_elastic_refuses_a_global_batch_it_cannot_keep():
    base = make_plan(seed=0, epoch=0, world_size=2, workers=1, batch_size=3, shard_sizes=SIZES)
    with pytest.raises(
        ValueError, match=r"global batch of 6 \(2 ranks x 3\) on 4 ranks: 4 does not divide 6"
    ):
        elastic_plan(base, 1, world_size=4, workers=1)


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("elastic"))
    return root, write_split(root, "train", SIZES)


@pytest.fixture(scope="module")
def tokenizer():
    return default_tokenizer()


def _cfg(root, world, workers):
    return LoaderConfig(root=root, split="train", batch_size=G // world, num_workers=workers, num_frames=4,
                        max_words=8, frame_size=16, output="uint8", shuffle_buffer=5, seed=9)  # fmt: skip


def _run(root, world, workers, tokenizer, *, states=None, stop=None):
    """Each rank's batches (uids, pads, keys) and state after ``stop`` batches (or the whole epoch)."""
    out, saved = [], []
    for r in range(world):
        state = states[0] if states else None  # every rank saved the same step count; any rank's state works
        loader = build_loader(_cfg(root, world, workers), rank=r, world_size=world, epoch=1, state=state,
                              tokenizer=tokenizer)  # fmt: skip
        got = []
        for b in loader:
            got.append((b["sample_index"].tolist(), b["is_pad"].tolist(), b["keys"]))
            if stop is not None and loader.state_dict()["batches"] == stop:
                break
        out.append(got)
        saved.append(json.loads(json.dumps(loader.state_dict())))  # JSON round trip, as in a checkpoint
    return out, saved


@pytest.mark.parametrize(("w0", "k0", "w1", "k1"), [(2, 2, 1, 2), (1, 2, 2, 1), (2, 1, 2, 3)])
def test_loader_elastic_resume_exactly_once(split, tokenizer, w0, k0, w1, k1):
    root, specs = split
    full, _ = _run(root, w0, k0, tokenizer)
    full_steps = [sum((full[r][j][0] for r in range(w0)), []) for j in range(len(full[0]))]
    stop = 2
    head, states = _run(root, w0, k0, tokenizer, stop=stop)
    assert all(len(h) == stop for h in head) and all(s["batches"] == stop for s in states)
    tail, after = _run(root, w1, k1, tokenizer, states=states)
    assert len({len(t) for t in tail}) == 1  # equal batch counts on every rank
    tail_steps = [sum((tail[r][j][0] for r in range(w1)), []) for j in range(len(tail[0]))]
    assert full_steps[stop:] == tail_steps  # the same sample ids per global step as the uninterrupted run
    keys = Counter(
        k for part in (head, tail) for rank in part for _, pads, ks in rank for p, k in zip(pads, ks) if not p
    )
    assert keys == Counter(s.key for s in specs)
    assert after[0]["elastic"] == [{"world_size": w0, "workers": k0, "batch_size": G // w0, "batches": stop}]


# -- real gloo processes --------------------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "elastic_worker.py"


def _torchrun(nproc: int, root: str, out: Path, stop: int, state: Path | None = None) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           str(WORKER), root, str(out), str(stop)] + ([str(state)] if state else [])  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(nproc)]


@pytest.mark.slow
@pytest.mark.parametrize(("w0", "w1"), [(2, 1), (1, 2)])
def test_gloo_elastic_resume(split, tmp_path, w0, w1):
    root, specs = split
    full = _torchrun(w0, root, tmp_path / "full", 0)
    head = _torchrun(w0, root, tmp_path / "head", 2)
    state = tmp_path / "state.json"
    state.write_text(
        json.dumps(head[0]["state"])
    )  # what a checkpoint stores (rank 0's; all ranks agree on batches)
    assert {json.dumps({k: v for k, v in h["state"].items() if k != "rank"}) for h in head} == {
        json.dumps({k: v for k, v in head[0]["state"].items() if k != "rank"})
    }
    tail = _torchrun(w1, root, tmp_path / "tail", 0, state)
    assert len({len(t["keys"]) for t in tail}) == 1  # equal batch counts on every rank
    assert head[0]["steps"] + tail[0]["steps"] == full[0]["steps"]  # same ids per global step
    keys = Counter(
        k
        for part in (head, tail)
        for rec in part
        for k, p in zip(rec["keys"], rec["pads"], strict=True)
        if not p
    )
    assert keys == Counter(s.key for s in specs)
