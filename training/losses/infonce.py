"""InfoNCE baseline (CLIP4Clip-style "meanP"), the ``kind="infonce"`` loss.

    t_i = T_{i, e_i} / ||.||,  e_i = sum_l m^t_{i,l} - 1   (the EOT position = last valid text position)
    v_j = (sum_f m^v_{j,f} V_{j,f} / sum_f m^v_{j,f}) / ||.||
    L   = ½ [ CE(alpha t v^T, I) + CE(alpha v t^T, I) ]     (alpha = exp(logit_scale))

equal to open_clip's ``ClipLoss`` on the same pooled features.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["clip_infonce", "pool_text_eot", "pool_video_mean"]


def pool_text_eot(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B, L, D] -> [B, D]: the token at the last valid position (mask.sum - 1) of each text."""
    if tokens.dim() != 3 or mask.shape != tokens.shape[:2]:
        raise ValueError(f"pool_text_eot: tokens {tuple(tokens.shape)} / mask {tuple(mask.shape)} mismatch")
    last = mask.long().sum(1) - 1
    if (last < 0).any():
        raise ValueError("pool_text_eot: a text has an empty mask")
    return tokens[torch.arange(tokens.shape[0], device=tokens.device), last]


def pool_video_mean(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B, F, D] -> [B, D]: mean over the real frames."""
    if tokens.dim() != 3 or mask.shape != tokens.shape[:2]:
        raise ValueError(f"pool_video_mean: tokens {tuple(tokens.shape)} / mask {tuple(mask.shape)} mismatch")
    m = mask.to(tokens.dtype).unsqueeze(-1)
    count = m.sum(1)
    if (count <= 0).any():
        raise ValueError("pool_video_mean: a video has no real frame")
    return (tokens * m).sum(1) / count


def clip_infonce(text: torch.Tensor, video: torch.Tensor, alpha: torch.Tensor | float) -> torch.Tensor:
    """Symmetric InfoNCE on L2-normalised text [B, D] and video [B, D] features with scale alpha."""
    t = F.normalize(text, dim=-1)
    v = F.normalize(video, dim=-1)
    logits = alpha * t @ v.T
    labels = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))
