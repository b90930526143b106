"""The one distributed helper of the project (docs/method.md §5.2, docs/method.md §8-Q10; docs/design-notes.md §0.5).

Gradient convention.  Every rank gathers the features of all ranks with ``gather_with_grad`` and computes the
*full* global loss L (the same value on every rank).  The backward of the autograd-aware all_gather
(``torch.distributed.nn.functional.all_gather``) sums, over ranks, the gradients that flow into each slice,
so a rank's local slice receives world_size x dL/dx_local.  DDP then averages parameter gradients over ranks:
(1/W) sum_r W dL/dtheta|_r = sum_r dL/dtheta|_r, which is the single-process full-batch gradient (parameters
used after the gather, e.g. the token-weighting MLPs and logit_scale, get the full gradient on every rank and
are averaged to the same value).  Measured equal to 2e-7 (docs/design-notes.md §7); see tests/test_distributed.py.
This differs from the official CLIP4Clip ``AllGather`` (slice without summing), whose DDP-averaged gradient is
1/W of the full-batch gradient for pre-gather parameters.

All functions are identities / no-ops when torch.distributed is not initialised.  All ranks must pass
tensors of the same shape.
"""

from __future__ import annotations

import warnings

import torch
import torch.distributed as dist

__all__ = ["all_reduce_mean", "gather_nograd", "gather_with_grad", "is_distributed", "rank", "world_size"]


def is_distributed() -> bool:
    """True when a default process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank (0 when not distributed)."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """Number of processes (1 when not distributed)."""
    return dist.get_world_size() if is_distributed() else 1


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """All-gather [n, ...] from every rank into [W n, ...] (rank order) keeping autograd (see module doc)."""
    if world_size() == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    with warnings.catch_warnings():
        # torch 2.14 marks it deprecated in favour of a private functional-collectives API; it is the public,
        # tested autograd all-gather (backward = sum over ranks), so keep it and keep the log readable
        warnings.simplefilter("ignore", FutureWarning)
        return torch.cat(all_gather(x.contiguous()), dim=0)


@torch.no_grad()
def gather_nograd(x: torch.Tensor) -> torch.Tensor:
    """All-gather [n, ...] into [W n, ...] without gradient (e.g. memory-bank updates)."""
    if world_size() == 1:
        return x.detach()
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.detach().contiguous())
    return torch.cat(parts, dim=0)


@torch.no_grad()
def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over ranks (a new tensor; ``x`` is unchanged)."""
    y = x.detach().clone()
    if world_size() > 1:
        dist.all_reduce(y, op=dist.ReduceOp.SUM)
        y /= world_size()
    return y
