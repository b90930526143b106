"""The NeighborRetr model: CLIP towers, temporal transformer, token-weighting MLPs and token-merging stacks.

The model only computes features (``training.features.Features``); losses, the memory bank, gathers and logging
live outside it. Every dimension (D, widths, heads, context length, image size) is read from the built CLIP.

Parameter names (for optimiser groups): ``clip.*`` (the open_clip model; ``clip.logit_scale`` is CLIP's),
``temporal.position.weight``, ``temporal.transformer.*``, ``text_weight.*``, ``video_weight.*``,
``text_merge.*``, ``video_merge.*``.

The official code also creates global-level weighting MLPs (``*_weight_fc1``) and four unused ones
(``*_fc0``, ``*_intra``). With one global token the softmax over the global tokens is identically 1, so the
global MLPs are no-ops; none of them is created here (docs/method.md §2.4).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from shards.transforms import normalize_frames
from training.encoders import build_clip, clip_dims, encode_frames, encode_text_tokens, text_tower
from training.features import Features
from training.heads import TemporalTransformer, TokenWeighting, attention_heads
from training.merging import MergeStack, n_clusters

logger = logging.getLogger(__name__)

__all__ = ["ModelConfig", "NeighborRetrModel"]


@dataclass
class ModelConfig:
    """Model settings (the ``model`` section of the training config)."""

    arch: str = "ViT-B-32"
    """open_clip architecture name (``open_clip.list_models()``) or the project preset ``"nr-tiny"`` (a tiny
    random-init CLIP: width 64, 2 layers per tower, patch 16, 64 px, embed dim 64) / ``"nr-tiny-quickgelu"``."""
    pretrained: str | None = None
    """CLIP weights: None (random init), an open_clip pretrained tag of ``arch`` (e.g. ``"openai"``), a local
    state-dict file (.pt/.pth/.bin/.safetensors, loaded with weights_only=True) or the OpenAI TorchScript archive
    ``ViT-B-32.pt`` (detected and built with QuickGELU)."""
    image_size: int | None = None
    """Input resolution of the vision tower in pixels (set it to the shards' frame size); None keeps the
    architecture's (224 for ViT-B-32, 64 for nr-tiny). Pretrained position embeddings are interpolated."""
    temporal_layers: int = 4
    """Blocks of the temporal transformer (initialised from the first CLIP text blocks when widths match)."""
    max_frames: int = 12
    """Frames per clip; the frame position table has max(context length, max_frames) rows."""
    max_words: int = 24
    """Text positions incl. SOT and EOT; must not exceed the CLIP context length (77)."""
    freeze_conv1: bool = True
    """Freeze the ViT patch-embedding conv ``clip.visual.conv1`` (as the official code does)."""
    text_merge_ratio: float = 1 / 6
    """First-stage merge ratio for text tokens: C1 = max(ceil(L * r), 1); the second stage merges to one token."""
    video_merge_ratio: float = 1 / 4
    """First-stage merge ratio for frame tokens: C1 = max(ceil(F * r), 1); the second stage merges to one token."""
    merge_k: int = 3
    """Neighbours k of the DPC-kNN local density."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the field for impossible values (the CLIP-dependent limits are checked when
        the model is built)."""
        if not isinstance(self.arch, str) or not self.arch:
            raise ValueError(f"model.arch must be a non-empty string, got {self.arch!r}")
        if self.pretrained is not None and (not isinstance(self.pretrained, str) or not self.pretrained):
            raise ValueError(f"model.pretrained must be None or a non-empty string, got {self.pretrained!r}")
        if self.image_size is not None and self.image_size < 1:
            raise ValueError(f"model.image_size must be positive, got {self.image_size}")
        for name in ("temporal_layers", "max_frames", "merge_k"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"model.{name} must be >= 1, got {getattr(self, name)}")
        if self.max_words < 2:
            raise ValueError(f"model.max_words must be >= 2 (SOT + EOT), got {self.max_words}")
        for name in ("text_merge_ratio", "video_merge_ratio"):
            if not 0 < float(getattr(self, name)) <= 1:
                raise ValueError(f"model.{name} must be in (0, 1], got {getattr(self, name)}")


class NeighborRetrModel(nn.Module):
    """CLIP two-tower retriever with NeighborRetr's token-level heads (docs/method.md §2).

    Attributes:
        clip: the open_clip CLIP model.
        temporal: :class:`TemporalTransformer` over per-frame embeddings.
        text_weight, video_weight: :class:`TokenWeighting` MLPs (D -> 2D -> 1) called by the losses.
        text_merge, video_merge: :class:`MergeStack` two-level merges to one global token.
        dims: :class:`training.encoders.ClipDims` read from ``clip``.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.clip = build_clip(cfg.arch, cfg.pretrained, image_size=cfg.image_size)
        self.dims = dims = clip_dims(self.clip)
        if cfg.max_words > dims.context_length:
            raise ValueError(
                f"model.max_words={cfg.max_words} exceeds the CLIP context length {dims.context_length} of "
                f"{cfg.arch}"
            )
        width = dims.embed_dim
        heads = attention_heads(width, dims.text_heads)
        text_block = text_tower(self.clip).transformer.resblocks[0]
        act = type(text_block.mlp.gelu) if hasattr(text_block.mlp, "gelu") else nn.GELU
        mlp_ratio = text_block.mlp.c_fc.out_features / dims.text_width if dims.text_width == width else 4.0

        self.temporal = TemporalTransformer(
            width,
            cfg.temporal_layers,
            heads,
            max_positions=max(dims.context_length, cfg.max_frames),
            act_layer=act,
            mlp_ratio=mlp_ratio,
        )
        self.text_weight = TokenWeighting(width)
        self.video_weight = TokenWeighting(width)
        self.text_merge = MergeStack(width, heads, cfg.text_merge_ratio, cfg.merge_k)
        self.video_merge = MergeStack(width, heads, cfg.video_merge_ratio, cfg.merge_k)

        for module in (self.temporal, self.text_weight, self.video_weight):
            module.apply(_normal_init)
        self.temporal.init_from_clip(self.clip, dims)
        if cfg.freeze_conv1:
            conv1 = getattr(self.clip.visual, "conv1", None)
            if conv1 is None:
                logger.warning("model.freeze_conv1: %s has no visual.conv1; nothing frozen", cfg.arch)
            else:
                conv1.requires_grad_(False)
        logger.info(
            "NeighborRetr model: %s (pretrained=%s), D=%d, heads=%d, temporal layers=%d, merges "
            "%d->%d->1 words / %d->%d->1 frames",
            cfg.arch,
            cfg.pretrained,
            width,
            heads,
            cfg.temporal_layers,
            cfg.max_words,
            n_clusters(cfg.max_words, cfg.text_merge_ratio),
            cfg.max_frames,
            n_clusters(cfg.max_frames, cfg.video_merge_ratio),
        )

    def encode_text(self, text_ids: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        """text_ids [B, L] long, text_mask [B, L] -> text tokens [B, L, D] (after ln_final @ text_projection;
        causal AND key-padding attention mask)."""
        return encode_text_tokens(self.clip, text_ids, text_mask)

    def encode_video(self, frames: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
        """frames [B, F, 3, H, W] normalised (or uint8, normalised here), frame_mask [B, F] -> tokens [B, F, D].

        E = per-frame CLIP image embeddings; V = Transformer(E + P[:F]; key padding) + E.
        """
        if frames.dtype == torch.uint8:  # the loader's uint8 output (data.frames): normalise on this device
            frames = normalize_frames(frames, frame_mask)
        return self.temporal(encode_frames(self.clip, frames), frame_mask)

    def merge_text(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """text tokens [B, L, D], mask [B, L] -> global text token [B, D] (unnormalised)."""
        return self.text_merge(tokens, mask)

    def merge_video(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """video tokens [B, F, D], mask [B, F] -> global video token [B, D] (unnormalised)."""
        return self.video_merge(tokens, mask)

    def forward(
        self, frames: torch.Tensor, frame_mask: torch.Tensor, text_ids: torch.Tensor, text_mask: torch.Tensor
    ) -> Features:
        """frames [B, F, 3, H, W], frame_mask [B, F], text_ids [B, L], text_mask [B, L] -> Features."""
        text_tokens = self.encode_text(text_ids, text_mask)
        video_tokens = self.encode_video(frames, frame_mask)
        return Features(
            text_tokens=text_tokens,
            text_mask=text_mask,
            video_tokens=video_tokens,
            video_mask=frame_mask,
            text_global=self.merge_text(text_tokens, text_mask),
            video_global=self.merge_video(video_tokens, frame_mask),
        )


def _normal_init(module: nn.Module) -> None:
    """N(0, 0.02) for Linear/Embedding weights, zero biases, LayerNorm (1, 0) (official init outside CLIP)."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
