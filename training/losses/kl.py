"""L_KL: consistency between the local and the global similarity (docs/method.md §3.4, EQ 15).

    L_KL = ½ [ KL(softmax(S) || softmax(G)) + KL(softmax(S^T) || softmax(G^T)) ]      (softmax over rows)

equal to ``F.kl_div(log_softmax(G), softmax(S), reduction)``.  Official ``reduction="mean"`` divides the
summed KL by B^2 (1/B of the usual per-row KL); ``"batchmean"`` divides by B.  Neither side is detached.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["KL_REDUCTIONS", "kl_consistency"]

KL_REDUCTIONS = ("mean", "batchmean")


def _kl(target_logits: torch.Tensor, input_logits: torch.Tensor, reduction: str) -> torch.Tensor:
    total = F.kl_div(F.log_softmax(input_logits, dim=1), F.softmax(target_logits, dim=1), reduction="sum")
    # "mean" = torch's element mean (sum / B^2), spelled out to avoid its deprecation warning
    return total / (target_logits.numel() if reduction == "mean" else target_logits.shape[0])


def kl_consistency(
    sim_local: torch.Tensor, sim_global: torch.Tensor, reduction: str = "mean"
) -> torch.Tensor:
    """½ [KL_red(softmax(S) || softmax(G)) + KL_red(softmax(S^T) || softmax(G^T))] for S, G [B, B]."""
    if reduction not in KL_REDUCTIONS:
        raise ValueError(f"kl_consistency: reduction must be one of {KL_REDUCTIONS}, got {reduction!r}")
    if sim_local.shape != sim_global.shape:
        raise ValueError(
            f"kl_consistency: local {tuple(sim_local.shape)} and global {tuple(sim_global.shape)} "
            "shapes differ"
        )
    return 0.5 * (_kl(sim_local, sim_global, reduction) + _kl(sim_local.T, sim_global.T, reduction))
