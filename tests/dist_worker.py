"""Worker for tests/test_distributed.py: a toy model trained two steps through the NeighborRetr loss head.

Single process: ``run(out_dir)`` without a process group (global batch on one rank).
Two processes:  ``torchrun --standalone --nproc_per_node 2 tests/dist_worker.py OUT_DIR`` (gloo, CPU);
each rank takes its slice of the same global batch, wraps the model in DDP, gathers features with grad, and writes
``OUT_DIR/rank{r}.pt`` (loss values, parameter gradients, memory-bank state, helper checks).
"""

from __future__ import annotations

import gc
import math
import os
import sys

import torch
import torch.distributed as dist
import torch.nn as nn

from training.distributed import all_reduce_mean, gather_nograd, gather_with_grad, rank, world_size
from training.features import Features
from training.losses import LossConfig, compute_losses
from training.memory_bank import MemoryBank

GLOBAL_B = 8
N_L, N_F, D_IN, D = 5, 3, 6, 8
BANK_CAPACITY = 12
CFG = LossConfig(num_neighbors=3)
STEPS = 2
DT = torch.float64


def make_data(seed: int, n: int = GLOBAL_B) -> tuple[torch.Tensor, ...]:
    """Deterministic raw inputs for one global batch: text [n, L, D_IN], masks, video [n, F, D_IN], ids."""
    g = torch.Generator().manual_seed(seed)
    text = torch.randn(n, N_L, D_IN, generator=g, dtype=DT)
    video = torch.randn(n, N_F, D_IN, generator=g, dtype=DT)
    lengths = torch.randint(2, N_L + 1, (n,), generator=g)
    frames = torch.randint(1, N_F + 1, (n,), generator=g)
    tmask = (torch.arange(N_L)[None] < lengths[:, None]).long()
    vmask = (torch.arange(N_F)[None] < frames[:, None]).long()
    ids = torch.arange(n, dtype=torch.int64) + 1000 * seed
    return text, tmask, video, vmask, ids


class TokenWeight(nn.Module):
    """Linear -> ReLU -> Linear(1) over the last axis: tokens [..., N, D] -> logits [..., N]."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d, 16), nn.Linear(16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x))).squeeze(-1)


class ToyRetriever(nn.Module):
    """Local projections + global pooling + weighting MLPs; ``forward`` returns the local ``Features``.

    The weighting MLPs and logit_scale are used only by the loss head, outside ``forward`` (as in
    training.train), and still get DDP-averaged gradients.
    """

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.text_proj, self.video_proj = nn.Linear(D_IN, D), nn.Linear(D_IN, D)
        self.text_glob, self.video_glob = nn.Linear(D, D), nn.Linear(D, D)
        self.text_weight, self.video_weight = TokenWeight(D), TokenWeight(D)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(20.0)))
        self.to(DT)

    def encode(self, text, tmask, video, vmask) -> Features:
        t, v = self.text_proj(text), self.video_proj(video)
        tm, vm = tmask.to(t.dtype).unsqueeze(-1), vmask.to(v.dtype).unsqueeze(-1)
        tg = self.text_glob((t * tm).sum(1) / tm.sum(1))
        vg = self.video_glob((v * vm).sum(1) / vm.sum(1))
        return Features(t, tmask, v, vmask, tg, vg)

    def forward(self, text, tmask, video, vmask) -> Features:
        return self.encode(text, tmask, video, vmask)


def global_losses(local: Features, core: ToyRetriever, bank: MemoryBank) -> tuple[dict, Features]:
    """As training.train does it: gather (tokens with grad, masks without), then the head outside forward."""
    glob = Features(
        gather_with_grad(local.text_tokens),
        gather_nograd(local.text_mask),
        gather_with_grad(local.video_tokens),
        gather_nograd(local.video_mask),
        gather_with_grad(local.text_global),
        gather_with_grad(local.video_global),
    )
    losses = compute_losses(
        glob,
        text_weight=core.text_weight,
        video_weight=core.video_weight,
        logit_scale=core.logit_scale,
        cfg=CFG,
        bank=bank,
    )
    return losses, glob


def _slice(x: torch.Tensor) -> torch.Tensor:
    n = x.shape[0] // world_size()
    return x[rank() * n : (rank() + 1) * n]


def run(out_dir: str | None = None) -> dict:
    """Pre-fill a bank, then STEPS steps (loss, backward, record, bank update, SGD); returns the record."""
    model = ToyRetriever()
    core = model
    if world_size() > 1:
        model = nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    bank = MemoryBank(BANK_CAPACITY)
    text, tmask, video, vmask, ids = (_slice(x) for x in make_data(seed=99))
    with torch.no_grad():
        f = core.encode(text, tmask, video, vmask)
        bank.prefill(
            gather_nograd(f.text_tokens),
            gather_nograd(f.text_mask),
            gather_nograd(f.video_tokens),
            gather_nograd(f.video_mask),
            gather_nograd(ids),
        )
    record: dict = {"losses": [], "grads": [], "banks": []}
    for step in range(STEPS):
        text, tmask, video, vmask, ids = (_slice(x) for x in make_data(seed=step))
        losses, glob = global_losses(model(text, tmask, video, vmask), core, bank)
        opt.zero_grad()
        losses["total"].backward()
        record["losses"].append({k: v.detach().clone() for k, v in losses.items()})
        record["grads"].append({n: p.grad.detach().clone() for n, p in core.named_parameters()})
        bank.update(glob.text_tokens, glob.text_mask, glob.video_tokens, glob.video_mask, gather_nograd(ids))
        record["banks"].append(bank.state_dict())
        opt.step()
    record["rank_mean"] = all_reduce_mean(torch.tensor(float(rank())))
    record["gathered_ranks"] = gather_nograd(torch.tensor([rank()]))
    if out_dir is not None:
        torch.save(record, os.path.join(out_dir, f"rank{rank()}.pt"))
    return record


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    try:
        run(argv[0])
        # Free the DDP wrapper (its reducer sits in reference cycles) while the gloo group still exists, and let
        # both ranks finish before either tears it down. Without this, a rank aborted at interpreter exit after
        # writing its record ("terminate called without an active exception", SIGABRT, no Python frame) in 5 of
        # 85 runs on two loaded cores and once in a full suite run; with only the barrier 1 of 40; with both 0 of 80.
        gc.collect()
        dist.barrier()
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
