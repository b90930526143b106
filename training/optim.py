"""Parameter groups, AdamW and the official ``warmup_cosine`` schedule (docs/method.md §5.2).

Groups: {CLIP, rest} x {decay, no decay}. CLIP parameters (names starting with ``clip.``) train at ``lr *
coef_lr`` (official 1e-4 * 1e-3 = 1e-7), everything else at ``lr``. No weight decay on biases, normalisation
weights, position embeddings, ``logit_scale`` and other 1-D parameters (the official code decays LayerNorm
weights: docs/method.md §8-Q14; we do not). Frozen parameters (``requires_grad=False``) are left out.

Deviation from the official optimiser: AdamW (with bias correction) instead of BertAdam, and one global
grad-norm clip in the trainer instead of two clips (docs/method.md §10).
"""

from __future__ import annotations

import logging
import math

import torch
from torch import nn

from training.config import OptimConfig

__all__ = [
    "is_clip_param",
    "is_no_decay",
    "param_groups",
    "build_optimizer",
    "warmup_cosine",
    "build_scheduler",
]

logger = logging.getLogger(__name__)

_NO_DECAY_NAME_PARTS = ("bias", "norm", "ln_", "position", "logit_scale", "class_embedding")


def is_clip_param(name: str) -> bool:
    """True for the CLIP backbone's parameters (``clip.`` prefix, also under a DDP ``module.`` wrapper)."""
    return name.removeprefix("module.").startswith("clip.")


def is_no_decay(name: str, param: torch.Tensor) -> bool:
    """No weight decay on 1-D tensors (biases, norm weights, logit_scale) and position embeddings."""
    leaf = name.rsplit(".", 1)[-1]
    return param.ndim < 2 or any(p in name for p in _NO_DECAY_NAME_PARTS if p != "bias") or leaf == "bias"


def param_groups(model: nn.Module, cfg: OptimConfig) -> list[dict]:
    """The four AdamW groups; each has ``name``, ``params``, ``lr`` and ``weight_decay``. Empty groups are
    dropped."""
    buckets: dict[tuple[bool, bool], list[nn.Parameter]] = {
        (c, n): [] for c in (True, False) for n in (True, False)
    }
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        buckets[(is_clip_param(name), is_no_decay(name, p))].append(p)
    groups = []
    for (clip, no_decay), params in buckets.items():
        if not params:
            continue
        groups.append(
            {
                "name": f"{'clip' if clip else 'rest'}/{'no_decay' if no_decay else 'decay'}",
                "params": params,
                "lr": cfg.lr * cfg.coef_lr if clip else cfg.lr,
                "weight_decay": 0.0 if no_decay else cfg.weight_decay,
            }
        )
    for g in groups:
        logger.debug(
            "param group %s: %d tensors, lr %.3g, wd %.3g",
            g["name"],
            len(g["params"]),
            g["lr"],
            g["weight_decay"],
        )
    return groups


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups` (betas 0.9/0.98, eps 1e-6 by default)."""
    return torch.optim.AdamW(param_groups(model, cfg), lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)


def warmup_cosine(step: int, total: int, warmup: float) -> float:
    """Official ``warmup_cosine`` multiplier with x = step / total:

    f(x) = x / warmup              for x < warmup
    f(x) = 0.5 * (1 + cos(pi * x)) otherwise (not re-based after warmup: 1 -> 0.976 at x = 0.1, 0 at x = 1)
    """
    if total <= 0:
        raise ValueError(f"total steps must be > 0, got {total}")
    x = min(max(step, 0), total) / total
    if x < warmup:
        return x / warmup
    return 0.5 * (1.0 + math.cos(math.pi * x))


def build_scheduler(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """LambdaLR applying :func:`warmup_cosine` to every group's base lr; step it once per optimiser step.

    The lambda is a plain function so ``state_dict()`` holds only numbers (loadable with
    ``weights_only=True``).
    """

    def multiplier(step: int) -> float:
        return warmup_cosine(step, total_steps, warmup)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier)
