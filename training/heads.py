"""Modules on top of CLIP: the temporal transformer with frame position embeddings, and token weighting.

Temporal module ("seqTransf", docs/method.md §2.3), for frame embeddings E [B, F, D] and frame mask m [B, F]:

    X = E + P[0..F-1]                  P: nn.Embedding(max(77, max_frames), D)
    V = Transformer(X; key padding m) + E

The transformer is a stack of open_clip residual attention blocks (pre-LN, batch first), width D, the CLIP text
tower's heads and activation, no causal mask. When the CLIP text width equals D, the blocks start as copies of the
first text-transformer blocks and P as the first rows of CLIP's text positional embedding (:meth:`init_from_clip`).

Token weighting (docs/method.md §2.4) lives in ``training.token_weighting`` and is re-exported here.
"""

from __future__ import annotations

import logging

import torch
from open_clip.transformer import LayerNorm, Transformer
from torch import nn

from training.encoders import ClipDims, key_padding_bias, text_tower
from training.token_weighting import TokenWeighting

logger = logging.getLogger(__name__)

__all__ = ["TemporalTransformer", "TokenWeighting", "attention_heads"]


def attention_heads(width: int, preferred: int) -> int:
    """Heads for a width-``width`` attention: ``preferred`` (the text tower's) when it divides the width,
    else the largest divisor of ``width`` below it."""
    if preferred < 1 or width < 1:
        raise ValueError(f"width and heads must be positive, got width={width}, heads={preferred}")
    return max(h for h in range(1, min(preferred, width) + 1) if width % h == 0)


class TemporalTransformer(nn.Module):
    """Frame position embedding + transformer over frames + residual to the raw frame embeddings.

    Args:
        width: D, the frame-embedding width.
        layers: number of transformer blocks.
        heads: attention heads (must divide ``width``).
        max_positions: rows of the frame position embedding (>= the largest number of frames).
        act_layer: MLP activation (QuickGELU or nn.GELU: take the CLIP text tower's).
        mlp_ratio: MLP hidden width / D.
    """

    def __init__(
        self,
        width: int,
        layers: int,
        heads: int,
        max_positions: int,
        act_layer: type[nn.Module] = nn.GELU,
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"temporal transformer: heads={heads} does not divide width={width}")
        self.heads = heads
        self.position = nn.Embedding(max_positions, width)
        self.transformer = Transformer(
            width=width,
            layers=layers,
            heads=heads,
            mlp_ratio=mlp_ratio,
            act_layer=act_layer,
            norm_layer=LayerNorm,
        )

    def forward(self, frames: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
        """frames [B, F, D], frame_mask [B, F] (1 = real frame) -> V [B, F, D] = Transformer(X) + frames.

        Padded frames are hidden as keys (-inf bias), so they do not change the real frames' outputs.
        """
        n_frames = frames.shape[1]
        if n_frames > self.position.num_embeddings:
            raise ValueError(
                f"{n_frames} frames exceed the {self.position.num_embeddings} frame positions (model.max_frames)"
            )
        if frame_mask.shape != frames.shape[:2]:
            raise ValueError(
                f"frame_mask {tuple(frame_mask.shape)} does not match frames {tuple(frames.shape)}"
            )
        pos = self.position(torch.arange(n_frames, device=frames.device))
        x = frames + pos.to(frames.dtype)
        bias = key_padding_bias(frame_mask, n_frames, self.heads, x.dtype)
        return self.transformer(x, attn_mask=bias) + frames

    @torch.no_grad()
    def init_from_clip(self, clip: nn.Module, dims: ClipDims) -> bool:
        """Copy CLIP's first text blocks and text positional embedding in, when the widths match.

        Blocks beyond the text tower's depth, and everything when the widths differ, keep their random init.
        Returns whether anything was copied.
        """
        width = self.position.embedding_dim
        if dims.text_width != width:
            logger.info("temporal transformer: text width %d != %d, random init", dims.text_width, width)
            return False
        text = text_tower(clip)
        rows = min(self.position.num_embeddings, text.positional_embedding.shape[0])
        self.position.weight[:rows].copy_(text.positional_embedding[:rows])
        blocks = self.transformer.resblocks
        copied = 0
        for block, source in zip(blocks, text.transformer.resblocks):
            if source.attn.num_heads != self.heads:
                break
            try:
                block.load_state_dict(source.state_dict())
            except RuntimeError:  # a different block layout (custom blocks): leave random
                break
            copied += 1
        if copied < len(blocks):
            logger.info("temporal transformer: %d of %d blocks initialised from CLIP", copied, len(blocks))
        return True
