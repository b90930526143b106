"""Elastic resume: an epoch interrupted under W ranks x K workers continues under W' x K' with every remaining
sample delivered exactly once, equal batch counts per rank, and each global step holding the same sample ids as
the uninterrupted run (plan level, and through the real loader reading shards with DataLoader workers); the
epochs after it too, because every epoch is planned in the run's canonical layout (the first start's), which
the loader state carries across resumes (also with real gloo ranks, tests/elastic_worker.py)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from shard_fixtures import write_split

from shards.plan import elastic_plan, make_plan
from shards.reader import LoaderConfig, build_loader, canonical_layout, canonical_plan
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

    assert after[0]["canonical"] == {"world_size": w0, "workers": k0, "batch_size": G // w0}


# -- later epochs: planned in the run's canonical layout --------------------------------------------------------


def _make(world: int, workers: int, epoch: int):
    """The base plan of ``_cfg``'s loader (the same arguments the loader passes to make_plan)."""
    return make_plan(seed=9, epoch=epoch, world_size=world, workers=workers, batch_size=G // world,
                     shard_sizes=SIZES, caption_mode="random", shuffle_buffer=5)  # fmt: skip


def test_canonical_plan_rule():
    """Same layout: make_plan itself; another: elastic_plan of the canonical plan, for any epoch."""
    canon = {"world_size": 2, "workers": 2, "batch_size": 2}
    for epoch in (1, 2, 3):
        make = lambda w, k, b, e=epoch: _make(w, k, e)  # noqa: E731
        assert canonical_plan(make, canon, canon) == _make(2, 2, epoch)
        for w1, k1 in ((1, 1), (1, 3), (2, 1), (4, 2)):
            got = canonical_plan(make, canon, {"world_size": w1, "workers": k1, "batch_size": G // w1})
            assert got == elastic_plan(_make(2, 2, epoch), 0, world_size=w1, workers=k1)
            assert _global_steps(got) == _global_steps(_make(2, 2, epoch))
        with pytest.raises(ValueError, match="3 does not divide 4"):
            canonical_plan(make, canon, {"world_size": 3, "workers": 1, "batch_size": 1})


def test_canonical_layout_of_old_states():
    """States written before the ``canonical`` entry: the epoch's first layout, else the saved layout."""
    saved = {"world_size": 1, "workers": 3, "batch_size": 4, "batches": 2, "elastic": []}
    assert canonical_layout(saved) == {"world_size": 1, "workers": 3, "batch_size": 4}
    hop = {"world_size": 2, "workers": 2, "batch_size": 2, "batches": 1}
    assert canonical_layout({**saved, "elastic": [hop]}) == {"world_size": 2, "workers": 2, "batch_size": 2}
    new = {**saved, "elastic": [hop], "canonical": {"world_size": 4, "workers": 1, "batch_size": 1}}
    assert canonical_layout(new) == {"world_size": 4, "workers": 1, "batch_size": 1}


def _epochs(root, world, workers, tokenizer, epochs, *, state=None, stop=None, augment=False):
    """Each rank's ``{epoch: [(uids, pads, keys, frame digests) per batch]}`` reading ``epochs`` in turn (set_epoch
    between them, as the trainer does), from ``state``; stop after ``stop = (epoch, batches)``. Returns the
    per-rank results and rank 0's final state (JSON round trip)."""
    out, saved = [], None
    for r in range(world):
        cfg = dataclasses.replace(_cfg(root, world, workers), augment=augment)
        loader = build_loader(
            cfg, rank=r, world_size=world, epoch=epochs[0], state=state, tokenizer=tokenizer
        )
        got: dict[int, list] = {}
        for e in epochs:
            if e != epochs[0]:
                loader.set_epoch(e)
            got[e] = []
            for b in loader:
                digests = [hashlib.blake2s(f.numpy().tobytes()).hexdigest() for f in b["frames"]]
                got[e].append((b["sample_index"].tolist(), b["is_pad"].tolist(), b["keys"], digests))
                if stop == (e, loader.state_dict()["batches"]):
                    break
            if stop is not None and stop[0] == e:
                break
        out.append(got)
        if r == 0:
            saved = json.loads(json.dumps(loader.state_dict()))
    return out, saved


def _steps(runs, epoch) -> list[tuple]:
    """Global steps of ``epoch`` over consecutive partial runs: per step, the (uid, frame digest) rows in rank
    order."""
    steps = []
    for ranks in runs:
        if epoch not in ranks[0]:
            continue
        assert len({len(rank[epoch]) for rank in ranks}) == 1  # equal batch counts on every rank
        for j in range(len(ranks[0][epoch])):
            steps.append(tuple(row for rank in ranks for row in zip(rank[epoch][j][0], rank[epoch][j][3])))
    return steps


def _keys(runs, epoch) -> Counter:
    return Counter(
        k
        for ranks in runs
        for rank in ranks
        for _, pads, ks, _ in rank.get(epoch, [])
        for p, k in zip(pads, ks, strict=True)
        if not p
    )


def test_loader_elastic_later_epochs_keep_global_steps_and_augmentation(split, tokenizer):
    """2x2 -> 1x3 in epoch 1, on through epoch 2, then back to 2x2 mid-epoch 2: every global step of both epochs
    has the sample ids AND the augmented frames of the uninterrupted 2x2 run."""
    root, specs = split
    full, _ = _epochs(root, 2, 2, tokenizer, [1, 2], augment=True)
    head, s1 = _epochs(root, 2, 2, tokenizer, [1], stop=(1, 2), augment=True)
    mid, s2 = _epochs(root, 1, 3, tokenizer, [1, 2], state=s1, stop=(2, 3), augment=True)
    assert s2["canonical"] == {"world_size": 2, "workers": 2, "batch_size": 2} and s2["epoch"] == 2
    tail, _ = _epochs(root, 2, 2, tokenizer, [2], state=s2, augment=True)
    for epoch in (1, 2):
        assert _steps([head, mid, tail], epoch) == _steps([full], epoch), epoch
        assert _keys([head, mid, tail], epoch) == Counter(s.key for s in specs), epoch


def test_layout_state_carries_the_canonical_layout(split, tokenizer):
    """The epoch-boundary state (no position): a loader of another layout plans the next epoch like the run."""
    root, _ = split
    first = build_loader(_cfg(root, 2, 2), rank=0, world_size=2, epoch=1, tokenizer=tokenizer)
    boundary = json.loads(json.dumps(first.layout_state()))
    later = build_loader(_cfg(root, 1, 1), rank=0, world_size=1, epoch=2, state=boundary, tokenizer=tokenizer)
    assert later.epoch == 2 and later.state_dict()["batches"] == 0
    assert later.canonical == {"world_size": 2, "workers": 2, "batch_size": 2}
    assert _global_steps(later.plan()) == _global_steps(_make(2, 2, 2))
    back = build_loader(_cfg(root, 2, 2), rank=1, world_size=2, epoch=3, state=later.layout_state(),
                        tokenizer=tokenizer)  # fmt: skip
    assert back.plan() == _make(2, 2, 3)  # the canonical layout again: exactly the plain plan


def test_resume_refused_when_the_world_size_does_not_divide_the_global_batch(split, tokenizer):
    """G = 4 cannot be kept on 3 ranks: refused for a mid-epoch state, an epoch-boundary state, and a
    canonical layout passed directly (the bank pre-fill loader's path)."""
    root, _ = split
    two = build_loader(_cfg(root, 2, 1), rank=0, world_size=2, epoch=1, tokenizer=tokenizer)
    three = dataclasses.replace(_cfg(root, 2, 1), batch_size=1)
    for state in (two.state_dict(), two.layout_state()):
        with pytest.raises(ValueError, match="global batch"):
            build_loader(three, rank=0, world_size=3, epoch=2, state=state, tokenizer=tokenizer)
    with pytest.raises(ValueError, match="global batch"):
        build_loader(three, rank=0, world_size=3, canonical=two.canonical, tokenizer=tokenizer)


# -- real gloo processes --------------------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "elastic_worker.py"


def _torchrun(nproc: int, root: str, out: Path, stop: int, state: dict | None = None, *, workers: int = 2,
              last_epoch: int = 2, stop_epoch: int | None = None) -> list[dict]:  # fmt: skip
    """Run ``elastic_worker.py`` on ``nproc`` gloo ranks; each rank's record."""
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           str(WORKER), root, str(out), str(stop)]  # fmt: skip
    if state is not None:
        (out / "state.json").write_text(json.dumps(state))  # what a checkpoint stores (rank 0's)
        cmd.append(str(out / "state.json"))
    cmd += ["--workers", str(workers), "--last-epoch", str(last_epoch)]
    if stop_epoch is not None:
        cmd += ["--stop-epoch", str(stop_epoch)]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    recs = [json.loads((out / f"rank{r}.json").read_text()) for r in range(nproc)]
    states = {json.dumps({k: v for k, v in rec["state"].items() if k != "rank"}) for rec in recs}
    assert len(states) == 1  # every rank saves the same position (so rank 0's state is enough)
    for epoch in recs[0]["epochs"]:  # equal batch counts on every rank
        assert len({rec["epochs"][epoch]["batches"] for rec in recs}) == 1, epoch
    return recs


def _gloo_steps(parts: list[list[dict]], epoch: str) -> list[list[int]]:
    return [s for recs in parts if epoch in recs[0]["epochs"] for s in recs[0]["epochs"][epoch]["steps"]]


def _gloo_keys(parts: list[list[dict]], epoch: str) -> Counter:
    return Counter(
        k
        for recs in parts
        for rec in recs
        if epoch in rec["epochs"]
        for k, p in zip(rec["epochs"][epoch]["keys"], rec["epochs"][epoch]["pads"], strict=True)
        if not p
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("w0", "hops"),
    [
        (2, [(1, 3, (2, 3)), (2, 2, None)]),  # 2x2 -> 1x3 (epoch 1 step 2) -> 2x2 (epoch 2 step 3)
        (1, [(2, 1, None)]),  # 1x2 -> 2x1 (epoch 1 step 2), on through epoch 2
    ],
    ids=["2-1-2", "1-2"],
)
def test_gloo_elastic_resume_two_epochs(split, tmp_path, w0, hops):
    """Real gloo ranks: after each resume (other world size and worker count), every global step of the
    interrupted AND the next epoch holds the uninterrupted run's sample ids, every key once per epoch (exact
    multiset), equal batch counts per rank; the canonical layout survives the resumes."""
    root, specs = split
    full = _torchrun(w0, root, tmp_path / "full", 0)
    parts = [_torchrun(w0, root, tmp_path / "head", 2, stop_epoch=1)]
    for i, (world, workers, stop) in enumerate(hops):
        state = parts[-1][0]["state"]
        assert state["canonical"] == {"world_size": w0, "workers": 2, "batch_size": G // w0}
        run = _torchrun(world, root, tmp_path / f"hop{i}", stop[1] if stop else 0, state, workers=workers,
                        stop_epoch=stop[0] if stop else None)  # fmt: skip
        parts.append(run)
    for epoch in ("1", "2"):
        assert _gloo_steps(parts, epoch) == _gloo_steps([full], epoch), epoch
        assert _gloo_keys(parts, epoch) == Counter(s.key for s in specs), epoch
        assert sum(len(recs[0]["epochs"].get(epoch, {}).get("steps", [])) for recs in parts) == len(
            full[0]["epochs"][epoch]["steps"]
        )
