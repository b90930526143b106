"""The NeighborRetr loss head: ``LossConfig`` and ``compute_losses`` (docs/method.md §3.5).

    L = L_Wti + uniform_weight L_Opt + neighbor_weight L_Nbi + kl_weight L_KL          (all weights 1)

with S = S^loc of the global (gathered) batch (``training.similarity.local_similarity``), G = S^glob, and
alpha = exp(logit_scale).  ``kind="infonce"`` replaces everything with the CLIP4Clip-style InfoNCE baseline.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from training.features import Features
from training.losses.centrality import centrality_weights, wti_loss
from training.losses.infonce import clip_infonce, pool_text_eot, pool_video_mean
from training.losses.kl import KL_REDUCTIONS, kl_consistency
from training.losses.neighbor import NORM_REGIONS, neighbor_loss
from training.losses.uniform import uniform_loss
from training.memory_bank import MemoryBank
from training.similarity import apply_token_weighting, global_similarity, local_similarity
from training.token_weighting import TokenWeighting

__all__ = [
    "BANK_CHUNK",
    "LOSS_KINDS",
    "LossConfig",
    "bank_centrality",
    "bank_token_weights",
    "compute_losses",
]

logger = logging.getLogger(__name__)

LOSS_KINDS = ("neighborretr", "infonce")

WeightFn = Callable[[torch.Tensor], torch.Tensor]

#: bank samples per checkpointed chunk of the weighting MLPs (``LossConfig.bank_weight_checkpoint``)
BANK_CHUNK = 256


@dataclass
class LossConfig:
    """Loss-head settings; defaults are the official ones (``args_parser.py``; docs/method.md §5.1, §8).

    kind: "neighborretr" (L_Wti + L_Opt + L_Nbi + L_KL) or "infonce" (CLIP4Clip-style baseline).
    centrality_scale: lambda in omega = exp(lambda kappa) (L_Wti).
    num_neighbors: k, neighbours per query in L_Nbi; must be <= global batch - 3 (method Q13b).
    temperature: tau in L_Nbi's pi = softmax(tau D) and gamma, the logit scale of L_Opt (one
        variable officially).
    beta: Sinkhorn/identity mix of L_Opt's target Y = beta Q + (1 - beta) I.
    sinkhorn_iters: exact number of Sinkhorn iterations (no early stop).
    uniform_weight, neighbor_weight, kl_weight: weights of L_Opt, L_Nbi, L_KL in the total.
    nbi_norm_over: "complement" (official: min-max over columns outside self+neighbours) or "neighbors"
        (min-max over self+neighbours E_i, the probable intent; method Q6).
    global_l2norm: False (official raw dot product of global tokens) or True (cosine, as HBI; method Q7).
    kl_reduction: "mean" (official, divides by B^2) or "batchmean" (divides by B; method Q8).
    detach_weights: False (official: omega and pi carry gradient) or True (both detached).
    centrality_mask_padding: False (official: kappa pools over padded tokens/frames too) or True (valid only).
    bank_weight_checkpoint: for weighting callables other than ``TokenWeighting`` (whose own constant-input
        path needs neither), recompute them on the bank tokens during backward, in chunks of ``BANK_CHUNK``
        samples (activation checkpointing), instead of keeping their activations; the values and gradients are
        identical, memory drops by ~2 x M x (L + F) x hidden floats for one extra MLP forward.
    """

    kind: str = "neighborretr"
    centrality_scale: float = 0.3
    num_neighbors: int = 20
    temperature: float = 3.0
    beta: float = 0.7
    sinkhorn_iters: int = 50
    uniform_weight: float = 1.0
    neighbor_weight: float = 1.0
    kl_weight: float = 1.0
    nbi_norm_over: str = "complement"
    global_l2norm: bool = False
    kl_reduction: str = "mean"
    detach_weights: bool = False
    centrality_mask_padding: bool = False
    bank_weight_checkpoint: bool = True

    def __post_init__(self) -> None:
        self.validate()

    def to_dict(self) -> dict:
        return asdict(self)

    def validate(self, global_batch: int | None = None) -> None:
        """Raise ValueError naming the offending field; with ``global_batch``, also check k <= B - 3."""

        def bad(name: str, why: str) -> ValueError:
            return ValueError(f"LossConfig.{name}={getattr(self, name)!r}: {why}")

        if self.kind not in LOSS_KINDS:
            raise bad("kind", f"must be one of {LOSS_KINDS}")
        if self.nbi_norm_over not in NORM_REGIONS:
            raise bad("nbi_norm_over", f"must be one of {NORM_REGIONS}")
        if self.kl_reduction not in KL_REDUCTIONS:
            raise bad("kl_reduction", f"must be one of {KL_REDUCTIONS}")
        for name in (
            "centrality_scale",
            "temperature",
            "beta",
            "uniform_weight",
            "neighbor_weight",
            "kl_weight",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise bad(name, "must be a finite number")
        for name in ("uniform_weight", "neighbor_weight", "kl_weight"):
            if getattr(self, name) < 0:
                raise bad(name, "must be >= 0")
        if self.temperature <= 0:
            raise bad("temperature", "must be > 0")
        if not 0.0 <= self.beta <= 1.0:
            raise bad("beta", "must be in [0, 1]")
        for name in ("num_neighbors", "sinkhorn_iters"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise bad(name, "must be an int >= 1")
        for name in ("global_l2norm", "detach_weights", "centrality_mask_padding", "bank_weight_checkpoint"):
            if not isinstance(getattr(self, name), bool):
                raise bad(name, "must be a bool")
        if global_batch is not None and self.kind == "neighborretr" and self.num_neighbors > global_batch - 3:
            raise bad(
                "num_neighbors",
                f"must be <= global batch - 3 = {global_batch - 3} (global batch {global_batch}; the min-max "
                "normalisation needs at least 2 columns outside self + neighbours)",
            )


def bank_token_weights(
    weight_fn: WeightFn, tokens: torch.Tensor, mask: torch.Tensor, *, checkpoint: bool
) -> torch.Tensor:
    """Softmaxed token weights [M, N] of detached bank tokens [M, N, D]; gradient reaches ``weight_fn``.

    A :class:`TokenWeighting` module runs its constant-input path (exact; backward keeps only the ReLU pattern,
    no activations, no recomputation). For any other callable, ``checkpoint`` runs it in chunks of
    ``BANK_CHUNK`` samples under non-reentrant activation checkpointing (recomputed in backward), so its hidden
    activations are never all alive at once.
    """
    if isinstance(weight_fn, TokenWeighting):
        return apply_token_weighting(weight_fn.constant_input_logits, tokens.detach(), mask)
    if not checkpoint or not torch.is_grad_enabled():
        return apply_token_weighting(weight_fn, tokens, mask)
    from torch.utils.checkpoint import checkpoint as ckpt

    parts = [
        ckpt(
            apply_token_weighting,
            weight_fn,
            tokens[s : s + BANK_CHUNK],
            mask[s : s + BANK_CHUNK],
            use_reentrant=False,
        )
        for s in range(0, tokens.shape[0], BANK_CHUNK)
    ]
    return torch.cat(parts, dim=0)


def bank_centrality(
    feats: Features,
    text_w: torch.Tensor,
    video_w: torch.Tensor,
    sim: torch.Tensor,
    *,
    text_weight: WeightFn,
    video_weight: WeightFn,
    bank: MemoryBank | None,
    checkpoint: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(zeta^v [B], zeta^t [B]) for L_Nbi.

    zeta^v_j = 1/M sum_m s^loc(t^MB_m, v_j) and zeta^t_j = 1/M sum_m s^loc(t_j, v^MB_m), with the bank
    tokens detached (as stored) and the current weighting MLPs applied to them (so the MLPs get gradient).
    Without bank entries the current batch stands in: zeta^v = column mean of S, zeta^t = row mean of S.
    """
    if bank is None or len(bank) == 0:
        return sim.mean(0), sim.mean(1)
    dev, dt = feats.text_tokens.device, feats.text_tokens.dtype
    bt = bank.text_tokens.to(dev, dt)
    bmt = bank.text_mask.to(dev)
    bv = bank.video_tokens.to(dev, dt)
    bmv = bank.video_mask.to(dev)
    bank_tw = bank_token_weights(text_weight, bt, bmt, checkpoint=checkpoint)
    bank_vw = bank_token_weights(video_weight, bv, bmv, checkpoint=checkpoint)
    zeta_v = local_similarity(bt, bmt, bank_tw, feats.video_tokens, feats.video_mask, video_w).mean(0)
    zeta_t = local_similarity(feats.text_tokens, feats.text_mask, text_w, bv, bmv, bank_vw).mean(1)
    return zeta_v, zeta_t


def compute_losses(
    feats: Features,
    *,
    text_weight: WeightFn,
    video_weight: WeightFn,
    logit_scale: torch.Tensor,
    cfg: LossConfig,
    bank: MemoryBank | None = None,
) -> dict[str, torch.Tensor]:
    """Loss terms for the global (already gathered) batch of B pairs.

    Args:
        feats: global-batch ``Features`` (text_tokens [B, L, D], ..., video_global [B, D]).
        text_weight / video_weight: token-weighting MLPs, tokens [..., N, D] -> logits [..., N].
        logit_scale: log of alpha (scalar tensor); alpha = exp(logit_scale).
        cfg: ``LossConfig``.
        bank: memory bank read by L_Nbi (before this step's update); None/empty -> the batch stands in.
    Returns:
        {"wti", "nbi", "opt", "kl", "total"} for kind "neighborretr"; {"infonce", "total"} for "infonce".
    """
    b = feats.text_tokens.shape[0]
    cfg.validate(global_batch=b)
    alpha = logit_scale.exp()
    if cfg.kind == "infonce":
        text = pool_text_eot(feats.text_tokens, feats.text_mask)
        video = pool_video_mean(feats.video_tokens, feats.video_mask)
        loss = clip_infonce(text, video, alpha)
        return {"infonce": loss, "total": loss}

    text_w = apply_token_weighting(text_weight, feats.text_tokens, feats.text_mask)
    video_w = apply_token_weighting(video_weight, feats.video_tokens, feats.video_mask)
    sim = local_similarity(
        feats.text_tokens, feats.text_mask, text_w, feats.video_tokens, feats.video_mask, video_w
    )
    glob = global_similarity(feats.text_global, feats.video_global, l2norm=cfg.global_l2norm)

    omega_t = centrality_weights(
        feats.text_global,
        feats.text_tokens,
        feats.text_mask if cfg.centrality_mask_padding else None,
        scale=cfg.centrality_scale,
        detach=cfg.detach_weights,
    )
    omega_v = centrality_weights(
        feats.video_global,
        feats.video_tokens,
        feats.video_mask if cfg.centrality_mask_padding else None,
        scale=cfg.centrality_scale,
        detach=cfg.detach_weights,
    )
    wti = wti_loss(sim, alpha, omega_t, omega_v)

    zeta_v, zeta_t = bank_centrality(
        feats,
        text_w,
        video_w,
        sim,
        text_weight=text_weight,
        video_weight=video_weight,
        bank=bank,
        checkpoint=cfg.bank_weight_checkpoint,
    )
    nbi = neighbor_loss(
        sim,
        zeta_v,
        zeta_t,
        k=cfg.num_neighbors,
        tau=cfg.temperature,
        norm_over=cfg.nbi_norm_over,
        detach_weights=cfg.detach_weights,
    )
    opt = uniform_loss(glob, beta=cfg.beta, gamma=cfg.temperature, iters=cfg.sinkhorn_iters)
    kl = kl_consistency(sim, glob, reduction=cfg.kl_reduction)
    total = wti + cfg.uniform_weight * opt + cfg.neighbor_weight * nbi + cfg.kl_weight * kl
    return {"wti": wti, "nbi": nbi, "opt": opt, "kl": kl, "total": total}
