"""The deterministic epoch plan: which (shard, sample, caption) units each (rank, worker) delivers, in what order.

Everything here is a pure function of ``(seed, epoch, world_size, workers per rank, per-shard sample counts,
per-sample caption counts, batch size, caption_mode, shuffle, drop_last, shuffle_buffer)``: no I/O, no clocks, no
``hash()``. The reader executes the plan; tests use it as the reference.

Units. A *unit* is what one batch row carries. With ``caption_mode`` ``first`` or ``random`` a unit is one sample
(``random`` picks the caption from a seeded hash of ``(seed, epoch, unit id)`` at decode time, so it needs no
caption counts); with ``all`` a unit is one ``(sample, caption)`` pair and shard ``s`` holds
``sum(captions[s])`` units. The global unit id (``sample_index`` in batches) is the unit's position in the
*unshuffled* concatenation of all shards, so it is stable across epochs.

Epoch layout. With ``N`` units, batch size ``B``, world size ``R`` and ``W`` workers per rank, every rank gets
``nb = ceil(N / (B R))`` batches (``floor`` with ``drop_last``). Batch ``j`` of a rank is produced by worker
``j mod W``, so worker ``w`` owns ``nb // W + [w < nb mod W]`` batches; this is exactly the round-robin order in
which ``torch.utils.data.DataLoader`` collects batches from its workers. Shards are visited in a permutation drawn
from ``(seed, epoch)``; the permuted unit sequence is cut into contiguous chunks, one per slot ``(rank, worker)``
in rank-major order, each ``B x (batches of that worker)`` long. Positions past ``N`` wrap around to the start of
the sequence and are marked ``pad`` (the repeats that make every rank's batch count equal).

Within a slot, a shuffle buffer of ``shuffle_buffer`` units (over undecoded samples in the reader) reorders the
chunk; the buffer's choices come from a generator seeded by ``(seed, epoch, rank, worker)``, so the output
permutation is itself computed here (:meth:`EpochPlan.slot_order`) and a resumed reader can reproduce it exactly.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

__all__ = [
    "CAPTION_MODES",
    "Unit",
    "Segment",
    "EpochPlan",
    "make_plan",
    "mix_seed",
    "worker_batches_consumed",
    "elastic_plan",
]

CAPTION_MODES = ("random", "all", "first")
_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def mix_seed(*values: int) -> int:
    """A 64-bit hash of a tuple of integers (splitmix64 chain); stable across processes and Python versions."""
    h = 0x6A09E667F3BCC909
    for v in values:
        h = _splitmix64(h ^ (int(v) & _MASK64))
    return h


class Unit(NamedTuple):
    """One planned batch row.

    ``shard`` indexes the loader's shard list; ``sample`` is the sample's ordinal inside that shard (tar order);
    ``caption`` is the caption index (``-1`` for ``random``: resolved at decode time as
    ``caption_seed mod len(captions)``); ``uid`` is the global unit id; ``pad`` marks a padding repeat.
    """

    shard: int
    sample: int
    caption: int
    uid: int
    caption_seed: int
    pad: bool


@dataclass(frozen=True)
class Segment:
    """A contiguous run ``[start, stop)`` of units of one shard (in that shard's unit coordinates)."""

    shard: int
    start: int
    stop: int
    pad: bool


def worker_batches_consumed(batches_consumed: int, worker: int, workers: int) -> int:
    """Batches worker ``worker`` has delivered once its rank has delivered ``batches_consumed`` (round robin).

    ``#{j < k : j mod W = w}``, e.g. k=5, W=2 gives 3 for worker 0 and 2 for worker 1.
    """
    if batches_consumed <= worker:
        return 0
    return (batches_consumed - worker + workers - 1) // workers


@dataclass(frozen=True)
class EpochPlan:
    """The plan of one epoch (see the module docstring). Build with :func:`make_plan`."""

    seed: int
    epoch: int
    world_size: int
    workers: int
    batch_size: int
    caption_mode: str
    shuffle_buffer: int
    num_units: int  # N: real units in the epoch (before padding / dropping)
    batches_per_rank: int
    shard_order: tuple[int, ...]
    slots: tuple[tuple[tuple[Segment, ...], ...], ...]  # [rank][worker] -> segments in read order
    _unit_starts: tuple[tuple[int, ...], ...]  # per shard: unit offset of each sample ([n+1] cumulative)
    _shard_offsets: tuple[int, ...]  # per shard: global id of its first unit
    # [rank][worker] -> output order of slot_units, when not the shuffle buffer's (elastic plans, see elastic_plan)
    _orders: tuple[tuple[tuple[int, ...], ...], ...] | None = None
    # [rank][worker][output position] -> (rank, worker, position) of the unit in the plan it was first laid out
    # in (elastic plans: the base plan's coordinates, so augmentation draws do not depend on the layout)
    _aug_keys: tuple[tuple[tuple[tuple[int, int, int], ...], ...], ...] | None = None

    # -- sizes ---------------------------------------------------------------------------------------------
    def worker_num_batches(self, worker: int) -> int:
        """Batches owned by ``worker`` of any rank: ``nb // W + [w < nb mod W]``."""
        nb, w_count = self.batches_per_rank, self.workers
        return nb // w_count + (1 if worker < nb % w_count else 0)

    def num_pad(self) -> int:
        """Padding units in the whole epoch (over all ranks)."""
        return sum(seg.stop - seg.start for rank in self.slots for slot in rank for seg in slot if seg.pad)

    # -- units ---------------------------------------------------------------------------------------------
    def _unit(self, shard: int, u: int, pad: bool) -> Unit:
        uid = self._shard_offsets[shard] + u
        if self.caption_mode == "all":
            starts = self._unit_starts[shard]
            sample = int(np.searchsorted(starts, u, side="right")) - 1
            caption = u - starts[sample]
            return Unit(shard, sample, caption, uid, 0, pad)
        if self.caption_mode == "random":
            return Unit(shard, u, -1, uid, mix_seed(self.seed, self.epoch, uid, 0xCA97), pad)
        return Unit(shard, u, 0, uid, 0, pad)

    def slot_units(self, rank: int, worker: int) -> list[Unit]:
        """The units of slot ``(rank, worker)`` in read order (before the shuffle buffer)."""
        self._check_slot(rank, worker)
        return [
            self._unit(s.shard, u, s.pad) for s in self.slots[rank][worker] for u in range(s.start, s.stop)
        ]

    def slot_order(self, rank: int, worker: int) -> list[int]:
        """Output order of the slot's shuffle buffer: ``out[i]`` is an index into :meth:`slot_units`.

        Buffer of size ``b``: the first ``b`` inputs fill it; each later input replaces a uniformly chosen
        buffered item, which is emitted; at the end the remaining items are emitted in a shuffled order.
        ``b <= 1`` is the identity.
        """
        self._check_slot(rank, worker)
        if self._orders is not None:
            return list(self._orders[rank][worker])
        n = sum(s.stop - s.start for s in self.slots[rank][worker])
        b = self.shuffle_buffer
        if b <= 1:
            return list(range(n))
        rng = random.Random(mix_seed(self.seed, self.epoch, rank, worker, 0xB0FF))
        buf: list[int] = []
        out: list[int] = []
        for i in range(n):
            if len(buf) < b:
                buf.append(i)
                continue
            j = rng.randrange(b)
            out.append(buf[j])
            buf[j] = i
        rng.shuffle(buf)
        out.extend(buf)
        return out

    def augment_key(self, rank: int, worker: int, position: int) -> tuple[int, int, int]:
        """The ``(rank, worker, position)`` that seeds the augmentation of output ``position`` of slot
        ``(rank, worker)``: the slot's own coordinates in a plan from :func:`make_plan`, the base plan's
        coordinates of the same unit in a plan from :func:`elastic_plan` (so an elastic resume augments every
        remaining sample exactly as the uninterrupted run does)."""
        if self._aug_keys is None:
            return (rank, worker, position)
        return self._aug_keys[rank][worker][position]

    def worker_batches(self, rank: int, worker: int) -> list[list[Unit]]:
        """The batches worker ``worker`` of ``rank`` delivers, in order (each exactly ``batch_size`` units)."""
        units = self.slot_units(rank, worker)
        order = self.slot_order(rank, worker)
        bs = self.batch_size
        return [[units[i] for i in order[k : k + bs]] for k in range(0, len(order), bs)]

    def rank_batches(self, rank: int) -> list[list[Unit]]:
        """The batch sequence of ``rank``: batch ``j`` is batch ``j // W`` of worker ``j mod W``."""
        per_worker = [self.worker_batches(rank, w) for w in range(self.workers)]
        return [per_worker[j % self.workers][j // self.workers] for j in range(self.batches_per_rank)]

    def _check_slot(self, rank: int, worker: int) -> None:
        if not 0 <= rank < self.world_size:
            raise ValueError(f"rank {rank} out of range for world_size {self.world_size}")
        if not 0 <= worker < self.workers:
            raise ValueError(f"worker {worker} out of range for {self.workers} workers per rank")


def make_plan(
    *,
    seed: int,
    epoch: int,
    world_size: int,
    workers: int,
    batch_size: int,
    shard_sizes: Sequence[int],
    caption_counts: Sequence[Sequence[int]] | None = None,
    caption_mode: str = "random",
    shuffle: bool = True,
    drop_last: bool = False,
    shuffle_buffer: int = 0,
) -> EpochPlan:
    """Plan one epoch. See the module docstring for the layout; every argument is validated here.

    Args:
        shard_sizes: samples per shard, in shard-list order ([S]).
        caption_counts: captions per sample per shard ([S][n_s]); required for ``caption_mode="all"``.
        workers: DataLoader workers per rank (``num_workers=0`` counts as 1).
    """
    if caption_mode not in CAPTION_MODES:
        raise ValueError(f"caption_mode must be one of {CAPTION_MODES}, got {caption_mode!r}")
    if world_size < 1 or workers < 1 or batch_size < 1:
        raise ValueError(
            f"world_size ({world_size}), workers ({workers}) and batch_size ({batch_size}) must be >= 1"
        )
    if any(int(n) < 0 for n in shard_sizes):
        raise ValueError(f"shard sizes must be >= 0, got {list(shard_sizes)}")
    sizes = [int(n) for n in shard_sizes]
    if caption_mode == "all":
        if caption_counts is None:
            raise ValueError("caption_mode='all' needs caption counts per sample (captions.json)")
        if len(caption_counts) != len(sizes):
            raise ValueError(f"caption counts list {len(caption_counts)} shards, sizes list {len(sizes)}")
        unit_starts = []
        for s, (n, caps) in enumerate(zip(sizes, caption_counts, strict=True)):
            if len(caps) != n:
                raise ValueError(f"shard {s}: {n} samples but {len(caps)} caption counts")
            if any(int(c) < 1 for c in caps):
                raise ValueError(f"shard {s}: caption counts must be >= 1")
            unit_starts.append(tuple(int(x) for x in np.concatenate([[0], np.cumsum(caps)])))
        units_per_shard = [st[-1] for st in unit_starts]
    else:
        unit_starts = [()] * len(sizes)
        units_per_shard = sizes
    offsets = tuple(int(x) for x in np.concatenate([[0], np.cumsum(units_per_shard)])[:-1]) if sizes else ()
    n_units = int(sum(units_per_shard))
    if n_units == 0:
        raise ValueError("the shard list holds no samples")

    per_step = batch_size * world_size
    nb = n_units // per_step if drop_last else -(-n_units // per_step)
    if nb == 0:
        raise ValueError(
            f"drop_last with {n_units} units cannot fill one batch of {batch_size} on each of {world_size} ranks"
        )
    if shuffle:
        order = tuple(
            int(i) for i in np.random.default_rng([seed & _MASK64, epoch, 0x5A4D]).permutation(len(sizes))
        )
    else:
        order = tuple(range(len(sizes)))

    # Permuted sequence as runs (shard, units) with cumulative positions, for cutting.
    runs = [(s, units_per_shard[s]) for s in order if units_per_shard[s] > 0]
    run_starts = np.concatenate([[0], np.cumsum([r[1] for r in runs])])

    def segments(lo: int, hi: int) -> list[Segment]:
        """Segments covering permuted positions [lo, hi); positions >= N wrap around and are padding."""
        out: list[Segment] = []
        pos = lo
        while pos < hi:
            pad = pos >= n_units
            p = pos % n_units
            end = min(hi, (pos // n_units + 1) * n_units)  # do not cross a wrap boundary in one step
            r = int(np.searchsorted(run_starts, p, side="right")) - 1
            take = min(end - pos, int(run_starts[r + 1]) - p)
            shard = runs[r][0]
            u0 = p - int(run_starts[r])
            out.append(Segment(shard, u0, u0 + take, pad))
            pos += take
        return out

    slots: list[tuple[tuple[Segment, ...], ...]] = []
    pos = 0
    for _rank in range(world_size):
        rank_slots = []
        for w in range(workers):
            nbw = nb // workers + (1 if w < nb % workers else 0)
            cap = nbw * batch_size
            rank_slots.append(tuple(segments(pos, pos + cap)))
            pos += cap
        slots.append(tuple(rank_slots))

    return EpochPlan(
        seed=seed,
        epoch=epoch,
        world_size=world_size,
        workers=workers,
        batch_size=batch_size,
        caption_mode=caption_mode,
        shuffle_buffer=shuffle_buffer if shuffle else 0,
        num_units=n_units,
        batches_per_rank=nb,
        shard_order=order,
        slots=tuple(slots),
        _unit_starts=tuple(unit_starts),
        _shard_offsets=offsets,
    )


def elastic_plan(base: EpochPlan, consumed: int, *, world_size: int, workers: int) -> EpochPlan:
    """The rest of ``base``'s epoch after ``consumed`` global steps, laid out for ``world_size`` ranks with
    ``workers`` workers each, such that every global step keeps exactly the units it has in ``base``.

    Rule. The global batch ``G = base.batch_size * base.world_size`` is preserved: the new per-rank batch is
    ``B' = G / world_size`` (``ValueError`` when ``world_size`` does not divide ``G``: then no layout can keep the
    global steps). Global step ``j >= consumed`` of ``base`` is the concatenation over old ranks of their batch
    ``j``; in the new plan rank ``r`` gets rows ``[r B', (r+1) B')`` of it as its batch ``j``. So the remaining
    real units are delivered exactly once (the pad repeats of ``base`` stay where they were), every rank has
    ``base.batches_per_rank`` batches (the first ``consumed`` are placeholders never read: the loader resumes at
    ``consumed``), and a trainer that gathers the global batch sees the same sample ids per step as an
    uninterrupted run. Batch ``j`` of a rank is owned by worker ``j mod workers`` (the DataLoader's round robin).
    Within a batch, units are read in (shard, sample) order and emitted in the batch's order (``slot_order``).
    Each row keeps the augmentation coordinates it has in ``base`` (:meth:`EpochPlan.augment_key`).
    """
    g = base.batch_size * base.world_size
    if world_size < 1 or workers < 1:
        raise ValueError(f"world_size ({world_size}) and workers ({workers}) must be >= 1")
    if g % world_size:
        raise ValueError(
            f"cannot resume a global batch of {g} ({base.world_size} ranks x {base.batch_size}) on {world_size} "
            f"ranks: {world_size} does not divide {g} (the global batch must be preserved)"
        )
    nb = base.batches_per_rank
    if not 0 <= consumed <= nb:
        raise ValueError(f"consumed {consumed} global steps, the epoch has {nb}")
    bs = g // world_size
    old = [base.rank_batches(r) for r in range(base.world_size)]
    offsets = base._shard_offsets
    placeholder: Unit = old[0][0][0]
    slots: list[list[list[Segment]]] = [[[] for _ in range(workers)] for _ in range(world_size)]
    orders: list[list[list[int]]] = [[[] for _ in range(workers)] for _ in range(world_size)]
    aug: list[list[list[tuple[int, int, int]]]] = [[[] for _ in range(workers)] for _ in range(world_size)]
    k0, b0 = base.workers, base.batch_size
    for j in range(nb):
        step = [u for r in range(base.world_size) for u in old[r][j]] if j >= consumed else None
        # base coordinates of each row of global step j: old rank r's batch j is batch j // k0 of worker j % k0
        keys = [
            base.augment_key(r, j % k0, (j // k0) * b0 + i) for r in range(base.world_size) for i in range(b0)
        ]
        for r in range(world_size):
            rows = step[r * bs : (r + 1) * bs] if step is not None else [placeholder._replace(pad=True)] * bs
            read = sorted(range(bs), key=lambda i: (rows[i].shard, rows[i].sample, rows[i].caption))
            slot, order = slots[r][j % workers], orders[r][j % workers]
            base_idx = len(order)
            pos = {i: base_idx + k for k, i in enumerate(read)}
            for i in read:
                u = rows[i]
                c = u.uid - offsets[u.shard]
                slot.append(Segment(u.shard, c, c + 1, u.pad))
            order.extend(pos[i] for i in range(bs))
            aug[r][j % workers].extend(keys[r * bs : (r + 1) * bs])  # indexed by output position
    return EpochPlan(
        seed=base.seed,
        epoch=base.epoch,
        world_size=world_size,
        workers=workers,
        batch_size=bs,
        caption_mode=base.caption_mode,
        shuffle_buffer=base.shuffle_buffer,
        num_units=base.num_units,
        batches_per_rank=nb,
        shard_order=base.shard_order,
        slots=tuple(tuple(tuple(s) for s in rank) for rank in slots),
        _unit_starts=base._unit_starts,
        _shard_offsets=offsets,
        _orders=tuple(tuple(tuple(o) for o in rank) for rank in orders),
        _aug_keys=tuple(tuple(tuple(a) for a in rank) for rank in aug),
    )
