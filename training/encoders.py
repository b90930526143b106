"""Build and load the open_clip CLIP backbone; per-token text features and per-frame image features.

Three entry points are used by the model (``training.model``):

- :func:`build_clip` builds any open_clip architecture (or the project preset ``"nr-tiny"``) and loads its weights
  from an open_clip pretrained tag, a local state-dict checkpoint (``torch.load(weights_only=True)`` or
  safetensors) or an OpenAI TorchScript archive (``ViT-B-32.pt``; always built with QuickGELU, see below).
- :func:`encode_text_tokens` returns every text position after ``ln_final`` and ``@ text_projection``
  (docs/method.md §2.2), with a causal AND key-padding attention mask.
- :func:`encode_frames` returns the per-frame CLIP image embedding ([CLS] after ``ln_post`` ``@ proj``,
  docs/method.md §2.3) for a batch of clips.

QuickGELU: OpenAI's CLIP weights were trained with QuickGELU, x * sigmoid(1.702 x). Loading them into a plain
``"ViT-B-32"`` (nn.GELU) runs without error and gives wrong features. A TorchScript archive is therefore always
built with ``force_quick_gelu=True``, and so is an open_clip pretrained tag whose config says ``quick_gelu``
(e.g. ``ViT-B-32`` + ``openai``). A plain state dict carries no activation information: name the ``-quickgelu``
architecture yourself when the state dict came from OpenAI weights.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import open_clip
import torch
from open_clip.factory import _MODEL_CONFIGS
from open_clip.model import resize_pos_embed, resize_text_pos_embed
from torch import nn

logger = logging.getLogger(__name__)

__all__ = [
    "PRESETS",
    "ClipDims",
    "TextTower",
    "build_clip",
    "clip_dims",
    "encode_frames",
    "encode_text_tokens",
    "is_torchscript_archive",
    "key_padding_bias",
    "load_clip_weights",
    "register_presets",
    "text_tower",
]

# Project presets, registered with open_clip's model-config registry by `register_presets`.
# "nr-tiny": a tiny random-init CLIP for tests and the demo (about 3.3 M parameters, 3.2 M of them the
# token embedding of the real 49,408-token BPE vocabulary, so the stock tokenizer works).
_TINY: dict[str, Any] = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 2},
}
PRESETS: dict[str, dict[str, Any]] = {
    "nr-tiny": _TINY,
    "nr-tiny-quickgelu": {**_TINY, "quick_gelu": True},
}

_STATE_DICT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors")
# Entries of OpenAI's TorchScript archives that are attributes, not weights.
_OPENAI_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")


def register_presets() -> None:
    """Register :data:`PRESETS` with open_clip so ``open_clip.create_model("nr-tiny")`` works.

    open_clip only offers a file-based public registration (``add_model_config(path)``); the presets live in
    code, so they are put into the same registry dict that function fills. Idempotent.
    """
    for name, cfg in PRESETS.items():
        if name not in _MODEL_CONFIGS:
            _MODEL_CONFIGS[name] = cfg


register_presets()


@dataclass(frozen=True)
class ClipDims:
    """Architecture dimensions read from a built CLIP model (never literals).

    embed_dim:      D, width of the joint embedding space (text_projection / visual.proj output)
    text_width:     width of the text transformer
    text_heads:     attention heads of the text transformer
    text_layers:    number of text-transformer blocks
    context_length: length of the text positional embedding
    image_size:     (H, W) the vision tower expects
    """

    embed_dim: int
    text_width: int
    text_heads: int
    text_layers: int
    context_length: int
    image_size: tuple[int, int]


@dataclass
class TextTower:
    """The parts of an open_clip text tower that per-token encoding needs (references, not copies)."""

    token_embedding: nn.Embedding
    positional_embedding: torch.Tensor  # [context_length, text_width]
    transformer: nn.Module  # open_clip Transformer, batch-first blocks in `.resblocks`
    ln_final: nn.Module
    text_projection: nn.Module | torch.Tensor | None
    causal: bool


def text_tower(clip: nn.Module) -> TextTower:
    """Return the text-tower parts of an open_clip ``CLIP`` or ``CustomTextCLIP`` (non-HF text) model."""
    tower = getattr(clip, "text", clip)
    needed = ("token_embedding", "positional_embedding", "transformer", "ln_final", "text_projection")
    missing = [n for n in needed if not hasattr(tower, n)]
    if missing:
        raise TypeError(
            f"CLIP model {type(clip).__name__} has no open_clip text transformer (missing {missing}); "
            "Hugging Face text towers are not supported"
        )
    if getattr(tower, "cls_emb", None) is not None:
        raise TypeError("text towers with a class token (CoCa-style) are not supported")
    return TextTower(
        token_embedding=tower.token_embedding,
        positional_embedding=tower.positional_embedding,
        transformer=tower.transformer,
        ln_final=tower.ln_final,
        text_projection=tower.text_projection,
        causal=getattr(tower, "attn_mask", None) is not None,
    )


def clip_dims(clip: nn.Module) -> ClipDims:
    """Read :class:`ClipDims` from a built open_clip model."""
    text = text_tower(clip)
    blocks = text.transformer.resblocks
    attn = blocks[0].attn
    heads = getattr(attn, "num_heads", None)
    if heads is None:
        raise TypeError(f"cannot read the number of heads from text block {type(blocks[0]).__name__}")
    embed_dim = int(getattr(clip.visual, "output_dim", 0) or 0)
    if not embed_dim:
        raise TypeError(f"cannot read the embedding width from vision tower {type(clip.visual).__name__}")
    image_size = getattr(clip.visual, "image_size", None)
    if isinstance(image_size, int):
        image_size = (image_size, image_size)
    return ClipDims(
        embed_dim=embed_dim,
        text_width=int(text.positional_embedding.shape[1]),
        text_heads=int(heads),
        text_layers=len(blocks),
        context_length=int(text.positional_embedding.shape[0]),
        image_size=tuple(int(s) for s in image_size) if image_size is not None else (0, 0),
    )


def is_torchscript_archive(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is a TorchScript archive (``torch.jit.save``), such as OpenAI's ``ViT-B-32.pt``.

    A TorchScript zip holds a ``code/`` folder and ``constants.pkl``; a ``torch.save`` zip holds neither.
    """
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
    return any("/code/" in n or n.endswith("constants.pkl") for n in names)


def _looks_like_path(value: str) -> bool:
    return os.sep in value or "/" in value or value.lower().endswith(_STATE_DICT_SUFFIXES)


class _DropOpenClipChatter(logging.Filter):
    """Drops open_clip's below-ERROR records: it logs them on the root logger, among them "No pretrained weights
    loaded ... initialized randomly" even when the weights are loaded right after (``build_clip`` says instead
    what it built)."""

    def filter(self, record: logging.LogRecord) -> bool:
        inside = f"{os.sep}open_clip{os.sep}" in record.pathname
        return not (inside and record.levelno < logging.ERROR)


@contextlib.contextmanager
def _open_clip_quiet() -> Iterator[None]:
    root, quiet = logging.getLogger(), _DropOpenClipChatter()
    root.addFilter(quiet)
    try:
        yield
    finally:
        root.removeFilter(quiet)


def build_clip(arch: str, pretrained: str | None = None, *, image_size: int | None = None) -> nn.Module:
    """Build an open_clip CLIP model and load its weights.

    Args:
        arch: any open_clip architecture name (``open_clip.list_models()``) or a project preset (``"nr-tiny"``).
        pretrained: ``None`` (random init), an open_clip pretrained tag for ``arch`` (``"openai"``,
            ``"laion2b_s34b_b79k"``...), a local state-dict file (.pt/.pth/.bin/.safetensors; loaded with
            ``weights_only=True``) or an OpenAI TorchScript archive (built with QuickGELU).
        image_size: input resolution of the vision tower; ``None`` keeps the architecture's. Pretrained
            positional embeddings are interpolated to the new grid.

    Returns:
        the model in fp32, train mode, on CPU.

    Raises:
        ValueError: unknown architecture, or ``pretrained`` is neither a file nor a tag of ``arch``.
        FileNotFoundError: ``pretrained`` looks like a path and does not exist.
    """
    register_presets()
    if arch not in open_clip.list_models():
        raise ValueError(f"model.arch: unknown open_clip architecture {arch!r}; see open_clip.list_models()")
    if image_size is not None and image_size <= 0:
        raise ValueError(f"model.image_size must be positive, got {image_size}")

    source: str | None = None  # "jit", "state_dict" or "tag"
    quick_gelu = False
    if pretrained:
        if os.path.isfile(pretrained):
            source = "jit" if is_torchscript_archive(pretrained) else "state_dict"
            quick_gelu = source == "jit"
        elif _looks_like_path(pretrained):
            raise FileNotFoundError(
                f"model.pretrained: checkpoint file {pretrained!r} does not exist or is not a file"
            )
        elif open_clip.get_pretrained_cfg(arch, pretrained):
            source = "tag"
            quick_gelu = bool(open_clip.get_pretrained_cfg(arch, pretrained).get("quick_gelu", False))
        else:
            tags = open_clip.list_pretrained_tags_by_model(arch)
            raise ValueError(
                f"model.pretrained: {pretrained!r} is neither an existing checkpoint file nor an open_clip "
                f"pretrained tag of {arch!r} (known tags: {tags or 'none'})"
            )
    if quick_gelu and not arch.endswith("-quickgelu"):
        logger.info("building %s with QuickGELU to match %s weights (%s)", arch, source, pretrained)

    kwargs: dict[str, Any] = {"force_quick_gelu": quick_gelu, "force_image_size": image_size}
    if source == "tag":
        try:
            with _open_clip_quiet():
                model = open_clip.create_model(arch, pretrained=pretrained, **kwargs)
        except RuntimeError as err:
            raise RuntimeError(
                f"model.pretrained: could not fetch open_clip weights {arch}/{pretrained} ({err}); offline, pass "
                "a local checkpoint file instead"
            ) from err
    else:
        with _open_clip_quiet():
            model = open_clip.create_model(arch, pretrained=None, **kwargs)
        if source is not None:
            load_clip_weights(model, pretrained, torchscript=source == "jit", arch=arch)
    logger.info(
        "CLIP %s: %s", arch, f"{source} weights from {pretrained}" if source else "random init (no weights)"
    )
    model = model.float()
    model.train()
    return model


def load_clip_weights(
    model: nn.Module, path: str, *, torchscript: bool | None = None, arch: str = ""
) -> None:
    """Load CLIP weights from ``path`` into ``model`` (strict: every key must match).

    State dicts are read with ``torch.load(weights_only=True)`` (or safetensors) through open_clip's
    ``load_checkpoint``, which also strips ``module.`` prefixes and unwraps ``{"state_dict": ...}``.
    A TorchScript archive is read with ``torch.jit.load`` and only its ``state_dict()`` is used; the
    OpenAI attribute entries (input_resolution, context_length, vocab_size) are dropped and fp16 weights are cast
    to the model's dtype. Positional embeddings are interpolated if the model's image grid or context differs.

    Raises:
        ValueError: naming the file, the architecture and the mismatching keys when the weights do not fit.
    """
    if torchscript is None:
        torchscript = is_torchscript_archive(path)
    what = f"checkpoint {path!r} does not fit architecture {arch or type(model).__name__!r}"
    try:
        if torchscript:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # "torch.jit.load is deprecated"
                state = dict(torch.jit.load(path, map_location="cpu").state_dict())
            # drop OpenAI's attribute entries and buffers the model rebuilds itself (e.g. attn_mask)
            persistent = model.state_dict().keys()
            buffers = {name for name, _ in model.named_buffers()}
            for key in [*_OPENAI_EXTRA_KEYS, *(k for k in buffers if k not in persistent)]:
                state.pop(key, None)
            # OpenAI archives are fp16; interpolation kernels on CPU have no Half version, so cast first
            state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
            resize_pos_embed(state, model)
            resize_text_pos_embed(state, model)
            result = model.load_state_dict(state, strict=False)
        else:
            result = open_clip.load_checkpoint(model, path, strict=False, weights_only=True)
    except RuntimeError as err:  # size mismatches
        raise ValueError(f"{what}: {str(err).splitlines()[-1].strip() or err}") from err
    except Exception as err:
        if type(err).__name__ == "UnpicklingError":
            raise ValueError(
                f"checkpoint {path!r} is not a plain tensor state dict (refused by torch.load(weights_only=True))"
            ) from err
        raise
    missing = [k for k in result.missing_keys if k != "logit_bias"]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"{what}: missing keys {missing[:5]}{'...' if len(missing) > 5 else ''}, unexpected keys "
            f"{result.unexpected_keys[:5]}{'...' if len(result.unexpected_keys) > 5 else ''}"
        )
    logger.info("loaded CLIP weights from %s (%s)", path, "TorchScript" if torchscript else "state dict")


def key_padding_bias(mask: torch.Tensor, n_queries: int, n_heads: int, dtype: torch.dtype) -> torch.Tensor:
    """Additive attention bias that hides padded keys: [B, N] mask -> [B * n_heads, n_queries, N].

    bias[b*h, q, n] = 0 where mask[b, n] else -inf. A row whose mask is all zeros is left unmasked (bias 0)
    instead of producing NaN; its outputs are masked downstream anyway.
    """
    valid = mask.bool()
    valid = valid | ~valid.any(dim=1, keepdim=True)
    bias = torch.zeros(valid.shape, dtype=dtype, device=mask.device).masked_fill(~valid, float("-inf"))
    return bias[:, None, :].expand(-1, n_queries, -1).repeat_interleave(n_heads, dim=0)


def encode_text_tokens(clip: nn.Module, text_ids: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
    """Every text position of the CLIP text transformer, projected to the joint space.

    T = ln_final(Transformer(E_tok[ids] + E_pos[:L], mask)) @ W_text, with the attention bias
    causal[q, k] (-inf for k > q) + padding[k] (-inf where text_mask[k] = 0), so padded rows still see the
    valid prefix (docs/method.md §2.2).

    Args:
        clip: open_clip CLIP model.
        text_ids: [B, L] token ids (long), L <= context length.
        text_mask: [B, L] 1 on SOT..EOT, 0 on padding.

    Returns:
        [B, L, D] unnormalised tokens (D = embed_dim); padded positions are computed too.
    """
    if text_ids.ndim != 2 or text_mask.shape != text_ids.shape:
        raise ValueError(
            f"text_ids must be [B, L] and text_mask the same shape, got {tuple(text_ids.shape)} and "
            f"{tuple(text_mask.shape)}"
        )
    text = text_tower(clip)
    seq_len = text_ids.shape[1]
    ctx = text.positional_embedding.shape[0]
    if seq_len > ctx:
        raise ValueError(f"text_ids have {seq_len} positions but the CLIP context length is {ctx}")
    cast_dtype = text.transformer.get_cast_dtype()
    x = text.token_embedding(text_ids).to(cast_dtype) + text.positional_embedding[:seq_len].to(cast_dtype)
    heads = text.transformer.resblocks[0].attn.num_heads
    bias = key_padding_bias(text_mask, seq_len, heads, x.dtype)
    if text.causal:
        causal = torch.full((seq_len, seq_len), float("-inf"), dtype=x.dtype, device=x.device).triu_(1)
        bias = bias + causal
    x = text.transformer(x, attn_mask=bias)
    x = text.ln_final(x)
    proj = text.text_projection
    if proj is None:
        return x
    if isinstance(proj, nn.Module):
        return proj(x)
    return x @ proj


def encode_frames(clip: nn.Module, frames: torch.Tensor) -> torch.Tensor:
    """Per-frame CLIP image embeddings ([CLS] after ``ln_post`` ``@ proj`` for a ViT).

    Args:
        clip: open_clip CLIP model.
        frames: [B, F, 3, H, W] normalised frames, (H, W) = the vision tower's image size.

    Returns:
        [B, F, D] unnormalised frame embeddings (padded frames are encoded too).
    """
    if frames.ndim != 5 or frames.shape[2] != 3:
        raise ValueError(f"frames must be [B, F, 3, H, W], got {tuple(frames.shape)}")
    batch, n_frames, _, height, width = frames.shape
    expected = getattr(clip.visual, "image_size", None)
    if expected is not None:
        expected = (expected, expected) if isinstance(expected, int) else tuple(expected)
        if (height, width) != expected:
            raise ValueError(
                f"frames are {height}x{width} but the vision tower expects {expected[0]}x{expected[1]} "
                "(set model.image_size to the shards' frame size)"
            )
    feats = clip.encode_image(frames.reshape(batch * n_frames, 3, height, width))
    return feats.reshape(batch, n_frames, -1)
