"""What the NeighborRetr model hands to the losses, the memory bank and the scorer."""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["Features"]


@dataclass
class Features:
    """Per-batch features (B samples, L text positions, F frames, D embedding width).

    text_tokens:  [B, L, D] every text position after ``ln_final`` and ``text_projection`` (unnormalised)
    text_mask:    [B, L]    1 on SOT..EOT, 0 on padding
    video_tokens: [B, F, D] per-frame embeddings after the temporal transformer + residual (unnormalised)
    video_mask:   [B, F]    1 on real frames
    text_global:  [B, D]    the single global text token after two-level token merging (unnormalised)
    video_global: [B, D]    the single global video token
    """

    text_tokens: torch.Tensor
    text_mask: torch.Tensor
    video_tokens: torch.Tensor
    video_mask: torch.Tensor
    text_global: torch.Tensor
    video_global: torch.Tensor
