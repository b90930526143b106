"""The pure epoch plan: exactly-once coverage, equal batch counts, determinism, resume arithmetic."""

from __future__ import annotations

import itertools
import subprocess
import sys
from collections import Counter

import pytest

from shards.plan import Segment, Unit, _splitmix64, make_plan, mix_seed, worker_batches_consumed

SIZES = [7, 5, 6, 0, 4, 8]
CAPS = [[1 + (s + i) % 3 for i in range(n)] for s, n in enumerate(SIZES)]


def _plan(**kw):
    args = dict(
        seed=3,
        epoch=0,
        world_size=2,
        workers=2,
        batch_size=4,
        shard_sizes=SIZES,
        caption_counts=CAPS,
        caption_mode="random",
        shuffle=True,
        shuffle_buffer=5,
    )
    args.update(kw)
    return make_plan(**args)


def _brute_units(mode: str) -> list[tuple[int, int, int]]:
    """(shard, sample, caption) of every unit in unshuffled order, written independently of the plan."""
    out = []
    for s, n in enumerate(SIZES):
        for i in range(n):
            caps = range(CAPS[s][i]) if mode == "all" else [0 if mode == "first" else -1]
            out.extend((s, i, c) for c in caps)
    return out


@pytest.mark.parametrize(
    "world,workers,mode", list(itertools.product([1, 2, 3], [1, 2, 3], ["random", "all", "first"]))
)
def test_every_unit_once_plus_recorded_padding(world, workers, mode):
    plan = _plan(world_size=world, workers=workers, caption_mode=mode)
    ref = _brute_units(mode)
    n, bs = len(ref), 4
    assert plan.num_units == n
    assert plan.batches_per_rank == -(-n // (bs * world))
    real: Counter[int] = Counter()
    pads = 0
    for r in range(world):
        batches = plan.rank_batches(r)
        assert len(batches) == plan.batches_per_rank
        for b in batches:
            assert len(b) == bs
            for u in b:
                # the uid names the same (shard, sample, caption) as the brute-force enumeration
                c = u.caption if mode != "random" else -1
                assert ref[u.uid] == (u.shard, u.sample, c)
                if u.pad:
                    pads += 1
                else:
                    real[u.uid] += 1
    assert real == Counter(range(n))
    assert pads == plan.batches_per_rank * bs * world - n == plan.num_pad()


def test_same_seed_same_order_new_epoch_new_order():
    a = [[u.uid for u in b] for b in _plan().rank_batches(1)]
    b = [[u.uid for u in b] for b in _plan().rank_batches(1)]
    c = [[u.uid for u in b] for b in _plan(epoch=1).rank_batches(1)]
    d = [[u.uid for u in b] for b in _plan(seed=4).rank_batches(1)]
    assert a == b
    assert a != c and a != d


def test_random_captions_change_with_epoch_and_are_pure():
    seeds0 = [u.caption_seed for b in _plan().rank_batches(0) for u in b]
    seeds1 = [u.caption_seed for b in _plan(epoch=1).rank_batches(0) for u in b]
    assert seeds0 != seeds1
    u = _plan().rank_batches(0)[0][0]
    assert u.caption_seed == mix_seed(3, 0, u.uid, 0xCA97)


def test_mix_seed_is_process_independent():
    # splitmix64's published first output for state 0
    assert _splitmix64(0) == 0xE220A8397B1DCDAF
    code = "from shards.plan import mix_seed; print(mix_seed(1, 2, 3))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert int(out) == mix_seed(1, 2, 3)


def test_all_mode_hand_computed_layout():
    plan = make_plan(
        seed=0,
        epoch=0,
        world_size=1,
        workers=1,
        batch_size=3,
        shard_sizes=[2, 1],
        caption_counts=[[2, 1], [3]],
        caption_mode="all",
        shuffle=False,
    )
    units = plan.slot_units(0, 0)
    assert [(u.shard, u.sample, u.caption, u.uid, u.pad) for u in units] == [
        (0, 0, 0, 0, False),
        (0, 0, 1, 1, False),
        (0, 1, 0, 2, False),
        (1, 0, 0, 3, False),
        (1, 0, 1, 4, False),
        (1, 0, 2, 5, False),
    ]
    assert plan.batches_per_rank == 2


def test_padding_wraps_to_start_and_is_marked():
    # 5 units, batch 2, 2 ranks, 1 worker: 2 batches per rank = 8 rows, the last 3 repeat units 0, 1, 2.
    plan = make_plan(
        seed=0,
        epoch=0,
        world_size=2,
        workers=1,
        batch_size=2,
        shard_sizes=[3, 2],
        caption_mode="first",
        shuffle=False,
    )
    assert plan.slots[0][0] == (Segment(0, 0, 3, False), Segment(1, 0, 1, False))
    assert plan.slots[1][0] == (Segment(1, 1, 2, False), Segment(0, 0, 3, True))
    rows = [(u.uid, u.pad) for b in plan.rank_batches(1) for u in b]
    assert rows == [(4, False), (0, True), (1, True), (2, True)]


def test_drop_last_delivers_at_most_once_and_floor_batches():
    plan = _plan(world_size=3, workers=2, drop_last=True, caption_mode="all")
    n = plan.num_units
    assert plan.batches_per_rank == n // 12
    seen = [u.uid for r in range(3) for b in plan.rank_batches(r) for u in b]
    assert len(seen) == len(set(seen)) == plan.batches_per_rank * 12
    assert not any(u.pad for r in range(3) for b in plan.rank_batches(r) for u in b)


def test_rank_batches_alternate_workers_round_robin():
    plan = _plan(world_size=1, workers=3)
    per_worker = [plan.worker_batches(0, w) for w in range(3)]
    assert [len(p) for p in per_worker] == [plan.worker_num_batches(w) for w in range(3)]
    for j, b in enumerate(plan.rank_batches(0)):
        assert b == per_worker[j % 3][j // 3]


def test_slot_order_is_a_bounded_permutation():
    plan = _plan(world_size=1, workers=1, shuffle_buffer=4, caption_mode="all")
    order = plan.slot_order(0, 0)
    assert sorted(order) == list(range(len(order)))
    assert order != sorted(order)
    for k, i in enumerate(order[: len(order) - 4]):
        assert i < 4 + k + 1  # a buffer of 4 can only hold items read up to position k + 4
    assert _plan(shuffle=False).slot_order(0, 0) == list(range(len(_plan(shuffle=False).slot_units(0, 0))))


@pytest.mark.parametrize(
    "k,w,workers,expected", [(0, 0, 2, 0), (5, 0, 2, 3), (5, 1, 2, 2), (1, 1, 3, 0), (7, 2, 3, 2)]
)
def test_worker_batches_consumed(k, w, workers, expected):
    assert worker_batches_consumed(k, w, workers) == expected


def test_unit_is_plain_tuple():
    assert Unit(0, 1, 2, 3, 4, False)._asdict()["uid"] == 3


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"caption_mode": "best"}, "caption_mode"),
        ({"shard_sizes": [0, 0], "caption_counts": [[], []]}, "no samples"),
        ({"caption_mode": "all", "caption_counts": None}, "caption counts"),
        ({"caption_mode": "all", "caption_counts": CAPS[:2]}, "caption counts list 2 shards"),
        ({"batch_size": 0}, "batch_size"),
        ({"drop_last": True, "batch_size": 64, "caption_mode": "first"}, "cannot fill one batch"),
        ({"shard_sizes": [3, -1], "caption_mode": "first"}, ">= 0"),
    ],
)
def test_bad_arguments_are_named(kw, match):
    with pytest.raises(ValueError, match=match):
        _plan(**kw)
