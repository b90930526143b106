"""Sample decoding and batch assembly: JPEG frames -> [T,3,H,W], caption -> token ids, collate.

Safe decoders only: JPEG (simplejpeg, PIL as fallback), UTF-8 text, JSON. Nothing is ever unpickled.

Frames. ``num_frames`` = T. A sample with more frames than T is sub-sampled uniformly
(``idx_i = round(i (n-1)/(T-1))``); one with fewer is zero-padded and ``frame_mask`` is 0 on the padding.
Geometry (same for every frame of a clip):

* no augmentation: resize the short side to the target (bicubic, antialiased) and centre-crop, skipped when the
  frames already have the target size;
* augmentation: a random crop with area fraction in [0.6, 1] and aspect ratio in [3/4, 4/3] (log-uniform),
  resized to the target, a horizontal flip with p = 0.5, and brightness / contrast / saturation factors in
  [0.8, 1.2]; all parameters are drawn once per clip from a seeded generator, so every frame gets the same ops.

Output ``uint8`` keeps 0..255; ``float`` gives ``x / 255`` and, with ``normalize``, ``(x / 255 - mean) / std``
with CLIP's mean (0.48145466, 0.4578275, 0.40821073) and std (0.26862954, 0.26130258, 0.27577711) per channel.
Padded frames are 0 in the output space.

Batch layout on the way (see :mod:`shards.reader`). Workers decode JPEG frames straight into a uint8 "wire" batch
``[B,T,H,W,3]`` (HWC, the decoder's own layout: no transposing copy in the worker) and the loader's main process
turns it into the output ``[B,T,3,H,W]`` with :func:`frames_from_hwc`, one clip at a time so that the float
affine pass runs on data still in cache. Float output therefore always equals the normalised uint8 output, also
for frames that were resized or augmented (their float geometry is rounded to 0..255 first, as a PIL/uint8
pipeline does); the quantisation is below 0.5/255 per pixel.

Text. ``ids = [SOT] + bpe(caption)[: L - 2] + [EOT]`` then zeros to length L; ``mask`` is 1 on SOT..EOT.
"""

from __future__ import annotations

import io
import json
import math
import random
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from shards.schema import frame_index, is_frame_member

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "normalize_frames",
    "Tokenizer",
    "default_tokenizer",
    "tokenize",
    "decode_jpeg",
    "jpeg_size",
    "select_frames",
    "AugmentParams",
    "sample_augment",
    "frames_to_tensor",
    "frames_to_hwc",
    "frames_from_hwc",
    "parse_meta",
    "collate",
    "BATCH_KEYS",
]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
BATCH_KEYS = (
    "frames",
    "frame_mask",
    "text_ids",
    "text_mask",
    "keys",
    "video_ids",
    "caption_index",
    "is_pad",
    "sample_index",
)


class Tokenizer(Protocol):
    """What the loader needs from a tokenizer (open_clip's ``SimpleTokenizer`` has exactly this)."""

    sot_token_id: int
    eot_token_id: int

    def encode(self, text: str) -> list[int]: ...


def default_tokenizer() -> Tokenizer:
    """open_clip's CLIP BPE tokenizer (vocabulary ships in the wheel; works offline)."""
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer()


def tokenize(text: str, tokenizer: Tokenizer, max_words: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids, mask)``, both long [L]: ids = [SOT] + tokens[:L-2] + [EOT] + zeros; mask 1 on SOT..EOT."""
    if max_words < 2:
        raise ValueError(f"max_words must be >= 2 (SOT + EOT), got {max_words}")
    tokens = [tokenizer.sot_token_id, *tokenizer.encode(text)[: max_words - 2], tokenizer.eot_token_id]
    ids = torch.zeros(max_words, dtype=torch.long)
    ids[: len(tokens)] = torch.tensor(tokens, dtype=torch.long)
    mask = torch.zeros(max_words, dtype=torch.long)
    mask[: len(tokens)] = 1
    return ids, mask


def jpeg_size(data: bytes) -> tuple[int, int]:
    """``(height, width)`` from a JPEG's header (nothing is decoded); ``ValueError`` if it is not a JPEG."""
    try:
        import simplejpeg

        h, w, _, _ = simplejpeg.decode_jpeg_header(data)
        return int(h), int(w)
    except ImportError:  # pragma: no cover - simplejpeg is a dependency
        pass
    except Exception as e:
        raise ValueError(f"corrupt JPEG ({len(data)} bytes): {e}") from e
    from PIL import Image  # pragma: no cover

    try:  # pragma: no cover
        with Image.open(io.BytesIO(data)) as im:
            return im.height, im.width
    except Exception as e:  # pragma: no cover
        raise ValueError(f"corrupt JPEG ({len(data)} bytes): {e}") from e


def decode_jpeg(data: bytes, out: np.ndarray | None = None) -> np.ndarray:
    """RGB uint8 [H,W,3] from JPEG bytes; ``ValueError`` if the bytes are not a decodable JPEG.

    ``out``: a C-contiguous writable uint8 [H,W,3] array of exactly the image's size (see :func:`jpeg_size`) to
    decode into without allocating (e.g. one frame of a shared batch buffer); it is returned filled.
    ``ValueError`` when its shape is not the image's (its content is then undefined).
    """
    if out is not None and (
        out.dtype != np.uint8 or out.ndim != 3 or out.shape[2] != 3 or not out.flags.c_contiguous
    ):
        raise ValueError(f"out must be a C-contiguous uint8 [H,W,3] array, got {out.dtype} {list(out.shape)}")
    try:
        import simplejpeg

        if out is None:
            return simplejpeg.decode_jpeg(data, colorspace="RGB")
        got = simplejpeg.decode_jpeg(data, colorspace="RGB", buffer=out)  # no header pass: checked below
    except ImportError:  # pragma: no cover - simplejpeg is a dependency
        got = None
    except Exception as e:  # simplejpeg raises ValueError/RuntimeError on corrupt data or a too small buffer
        if out is not None:
            _check_size(data, out)
        raise ValueError(f"corrupt JPEG ({len(data)} bytes): {e}") from e
    if got is not None:
        if got.shape != out.shape:
            _check_size(data, out)
        return out
    from PIL import Image  # pragma: no cover

    try:  # pragma: no cover
        with Image.open(io.BytesIO(data)) as im:
            if im.format != "JPEG":
                raise ValueError(f"not a JPEG but {im.format}")
            arr = np.asarray(im.convert("RGB"))
    except Exception as e:  # pragma: no cover
        raise ValueError(f"corrupt JPEG ({len(data)} bytes): {e}") from e
    if out is None:  # pragma: no cover
        return arr
    _check_size(data, out)  # pragma: no cover
    out[...] = arr  # pragma: no cover
    return out  # pragma: no cover


def _check_size(data: bytes, out: np.ndarray) -> None:
    """``ValueError`` naming both sizes when the JPEG is not ``out``'s size (or not a JPEG)."""
    h, w = jpeg_size(data)
    if out.shape != (h, w, 3):
        raise ValueError(f"JPEG is {h}x{w}x3, out buffer is {out.dtype} {list(out.shape)}")


def select_frames(members: dict[str, Any], num_frames: int) -> list[str]:
    """Frame member names to decode, in temporal order: all when <= T, else T spread uniformly."""
    names = sorted((m for m in members if is_frame_member(m)), key=frame_index)
    n = len(names)
    if n <= num_frames:
        return names
    if num_frames == 1:
        return [names[0]]
    return [names[round(i * (n - 1) / (num_frames - 1))] for i in range(num_frames)]


@dataclass(frozen=True)
class AugmentParams:
    """One clip's augmentation: crop box as fractions (top, left, height, width), flip, colour factors."""

    top: float
    left: float
    height: float
    width: float
    flip: bool
    brightness: float
    contrast: float
    saturation: float


def sample_augment(seed: int) -> AugmentParams:
    """Draw one clip's augmentation parameters from ``random.Random(seed)`` (see the module docstring)."""
    rng = random.Random(seed)
    area = rng.uniform(0.6, 1.0)
    ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
    w = min(1.0, math.sqrt(area * ratio))
    h = min(1.0, math.sqrt(area / ratio))
    top, left = rng.uniform(0.0, 1.0 - h), rng.uniform(0.0, 1.0 - w)
    return AugmentParams(
        top=top,
        left=left,
        height=h,
        width=w,
        flip=rng.random() < 0.5,
        brightness=rng.uniform(0.8, 1.2),
        contrast=rng.uniform(0.8, 1.2),
        saturation=rng.uniform(0.8, 1.2),
    )


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Float [T,3,h,w] -> [T,3,H,W], bicubic with antialiasing."""
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True)


def _affine(output: str, normalize: bool) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Per-channel ``(scale, bias)`` [3,1,1] so that ``x * scale + bias`` maps uint8 to the float output."""
    if output == "uint8":
        return None
    mean, std = torch.tensor(CLIP_MEAN), torch.tensor(CLIP_STD)
    if not normalize:
        mean, std = torch.zeros(3), torch.ones(3)
    return (1.0 / (255.0 * std)).view(3, 1, 1), (-mean / std).view(3, 1, 1)


_AFFINE_CACHE: dict[tuple[str, bool], tuple[torch.Tensor, torch.Tensor] | None] = {}


def _affine_cached(output: str, normalize: bool) -> tuple[torch.Tensor, torch.Tensor] | None:
    key = (output, normalize)
    if key not in _AFFINE_CACHE:
        _AFFINE_CACHE[key] = _affine(output, normalize)
    return _AFFINE_CACHE[key]


def _check_frames(frames: list[np.ndarray], num_frames: int) -> None:
    t = len(frames)
    if t == 0 or t > num_frames:
        raise ValueError(f"need 1..{num_frames} frames, got {t}")
    shapes = {f.shape for f in frames}
    if len(shapes) != 1:
        raise ValueError(f"frames of one clip differ in size: {sorted(shapes)}")


def _geometry(
    frames: list[np.ndarray], frame_size: tuple[int, int], augment: AugmentParams | None
) -> torch.Tensor | None:
    """Float 0..255 [t,3,H,W] after resize + centre crop or augmentation; ``None`` when the frames already have
    the target size and there is no augmentation (they are then used as they are)."""
    h_out, w_out = frame_size
    h, w = frames[0].shape[:2]
    if augment is None and (h, w) == (h_out, w_out):
        return None
    x = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2)  # [t,3,h,w] uint8, a strided view
    if augment is not None:
        ch, cw = max(1, round(augment.height * h)), max(1, round(augment.width * w))
        top, left = min(h - ch, round(augment.top * h)), min(w - cw, round(augment.left * w))
        xf = _resize(x[..., top : top + ch, left : left + cw].float(), (h_out, w_out))
        if augment.flip:
            xf = xf.flip(-1)
        xf = xf * augment.brightness
        mean = xf.mean(dim=(1, 2, 3), keepdim=True)
        xf = (xf - mean) * augment.contrast + mean
        gray = (0.299 * xf[:, 0:1] + 0.587 * xf[:, 1:2] + 0.114 * xf[:, 2:3]).expand_as(xf)
        return ((xf - gray) * augment.saturation + gray).clamp(0, 255)
    scale = max(h_out / h, w_out / w)
    rh, rw = max(h_out, round(h * scale)), max(w_out, round(w * scale))
    top, left = (rh - h_out) // 2, (rw - w_out) // 2
    return _resize(x.float(), (rh, rw))[..., top : top + h_out, left : left + w_out].clamp(0, 255)


def frames_to_tensor(
    frames: list[np.ndarray],
    *,
    num_frames: int,
    frame_size: tuple[int, int],
    output: str = "float",
    normalize: bool = True,
    augment: AugmentParams | None = None,
    out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack decoded frames (each [h,w,3] uint8, same size) into ``(video [T,3,H,W], mask long [T])``.

    ``out`` (optional, [T,3,H,W] of the output dtype) is filled in place, e.g. a row of a shared batch tensor.
    Float output is computed in one strided copy plus one fused affine pass: ``x * 1/(255 std) - mean/std``
    (resized / augmented frames are not rounded here; the loader itself goes through :func:`frames_to_hwc`).
    """
    if output not in ("uint8", "float"):
        raise ValueError(f"output must be 'uint8' or 'float', got {output!r}")
    _check_frames(frames, num_frames)
    t = len(frames)
    h_out, w_out = frame_size
    dtype = torch.uint8 if output == "uint8" else torch.float32
    if out is None:
        out = torch.empty(num_frames, 3, h_out, w_out, dtype=dtype)
    elif out.shape != (num_frames, 3, h_out, w_out) or out.dtype != dtype:
        raise ValueError(
            f"out must be {dtype} [{num_frames},3,{h_out},{w_out}], got {out.dtype} {list(out.shape)}"
        )
    xf = _geometry(frames, frame_size, augment)
    real = out[:t]
    if xf is None:
        for i, f in enumerate(frames):
            real[i].copy_(torch.from_numpy(f).permute(2, 0, 1))
    else:
        real.copy_(xf.round() if output == "uint8" else xf)
    affine = _affine_cached(output, normalize)
    if affine is not None:
        real.mul_(affine[0]).add_(affine[1])
    out[t:].zero_()
    mask = torch.zeros(num_frames, dtype=torch.long)
    mask[:t] = 1
    return out, mask


def frames_to_hwc(frames: list[np.ndarray], out: np.ndarray, *, augment: AugmentParams | None = None) -> int:
    """Resize + centre-crop (or augment) decoded frames into ``out`` (uint8 [T,H,W,3], HWC, e.g. one row of a
    wire batch), rounded to 0..255; rows ``t..T-1`` are zeroed. Returns ``t = len(frames)``.

    Same geometry as :func:`frames_to_tensor`, so ``frames_from_hwc`` of the result equals ``frames_to_tensor``'s
    uint8 output. Frames already of size H x W without augmentation are copied as they are.
    """
    if out.ndim != 4 or out.shape[-1] != 3 or out.dtype != np.uint8:
        raise ValueError(f"out must be uint8 [T,H,W,3], got {out.dtype} {list(out.shape)}")
    _check_frames(frames, out.shape[0])
    t = len(frames)
    xf = _geometry(frames, (out.shape[1], out.shape[2]), augment)
    if xf is None:
        for i, f in enumerate(frames):
            out[i] = f
    else:
        torch.from_numpy(out[:t]).copy_(xf.round().permute(0, 2, 3, 1))
    out[t:] = 0
    return t


def frames_from_hwc(
    wire: torch.Tensor,
    frame_mask: torch.Tensor,
    *,
    output: str = "float",
    normalize: bool = True,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """The output batch ``[B,T,3,H,W]`` from a uint8 wire batch ``wire [B,T,H,W,3]`` (HWC).

    uint8: ``out = wire`` transposed (frame by frame); float: ``out = wire * 1/(255 std) - mean/std`` (or ``wire / 255`` without
    ``normalize``), computed one clip at a time (a transposing uint8->float copy, then the in-place affine pass
    while the clip is still in cache). Frames where ``frame_mask [B,T]`` is 0 are 0 in the output.
    ``out``: optional preallocated ``[B,T,3,H,W]`` tensor of the output dtype (contiguous) to fill.
    """
    if output not in ("uint8", "float"):
        raise ValueError(f"output must be 'uint8' or 'float', got {output!r}")
    if wire.dtype != torch.uint8 or wire.dim() != 5 or wire.shape[-1] != 3:
        raise ValueError(f"wire must be uint8 [B,T,H,W,3], got {wire.dtype} {list(wire.shape)}")
    b, t, h, w, _ = wire.shape
    if tuple(frame_mask.shape) != (b, t):
        raise ValueError(f"frame_mask must be [{b},{t}], got {list(frame_mask.shape)}")
    dtype = torch.uint8 if output == "uint8" else torch.float32
    if out is None:
        out = torch.empty(b, t, 3, h, w, dtype=dtype)
    elif tuple(out.shape) != (b, t, 3, h, w) or out.dtype != dtype or not out.is_contiguous():
        raise ValueError(
            f"out must be contiguous {dtype} [{b},{t},3,{h},{w}], got {out.dtype} {list(out.shape)}"
        )
    chw = wire.permute(0, 1, 4, 2, 3)
    affine = _affine_cached(output, normalize)
    if affine is None:  # numpy's transposing byte copy is about twice as fast as torch's here
        dst, src = out.numpy().reshape(b * t, 3, h, w), wire.numpy().reshape(b * t, h, w, 3)
        for i in range(b * t):
            np.copyto(dst[i], src[i].transpose(2, 0, 1))
    else:
        scale, bias = affine
        for i in range(b):
            clip = out[i]
            clip.copy_(chw[i])
            clip.mul_(scale).add_(bias)
    pad = frame_mask == 0
    if bool(pad.any()):
        out[pad] = 0
    return out


def normalize_frames(frames: torch.Tensor, frame_mask: torch.Tensor, *, normalize: bool = True) -> torch.Tensor:
    """uint8 frames ``[B,T,3,H,W]`` (the reader's ``output="uint8"``) -> the float batch the reader would give.

    ``x * 1/(255 std) - mean/std`` (or ``x / 255``) with the same per-channel constants as
    :func:`frames_from_hwc`, on the frames' own device (e.g. after copying the uint8 batch to the GPU: 4x fewer
    bytes than float); frames where ``frame_mask [B,T]`` is 0 are 0.
    """
    if frames.dtype != torch.uint8 or frames.dim() != 5 or frames.shape[2] != 3:
        raise ValueError(f"frames must be uint8 [B,T,3,H,W], got {frames.dtype} {list(frames.shape)}")
    if tuple(frame_mask.shape) != tuple(frames.shape[:2]):
        raise ValueError(f"frame_mask must be {list(frames.shape[:2])}, got {list(frame_mask.shape)}")
    scale, bias = (t.to(frames.device) for t in _affine_cached("float", normalize))
    out = frames.float().mul_(scale).add_(bias)
    return out.mul_((frame_mask != 0).to(out.dtype)[:, :, None, None, None])


def parse_meta(members: dict[str, bytes]) -> tuple[str, list[str], dict[str, Any]]:
    """``(primary caption, all captions, json dict)`` of a raw sample.

    The primary caption is ``txt``; ``captions`` comes from ``json["captions"]`` when present (else ``[txt]``).
    Raises ``ValueError`` for a json member that is not a JSON object or captions that are not strings.
    """
    txt = members["txt"].decode("utf-8").strip()
    meta: dict[str, Any] = {}
    if "json" in members:
        meta = json.loads(members["json"].decode("utf-8"))
        if not isinstance(meta, dict):
            raise ValueError(f"json member is a {type(meta).__name__}, not an object")
    caps = meta.get("captions")
    if caps is None or caps == []:
        captions = [txt]
    elif isinstance(caps, list) and all(isinstance(c, str) for c in caps):
        captions = list(caps)
    else:
        raise ValueError("json 'captions' must be a list of strings")
    return txt, captions, meta


def collate(samples: list[dict[str, Any]], frames: torch.Tensor | None = None) -> dict[str, Any]:
    """Stack per-sample dicts (frames [T,3,H,W], frame_mask [T], text_ids [L], text_mask [L], key, video_id,
    caption_index, is_pad, sample_index) into a batch with the keys of :data:`BATCH_KEYS`.

    ``frames``: an already filled [B,T,3,H,W] batch tensor (the samples' frames are its rows); saves a copy.
    """
    if not samples:
        raise ValueError("cannot collate an empty batch")
    if frames is None:
        frames = torch.stack([s["frames"] for s in samples])
    elif frames.shape[0] != len(samples):
        raise ValueError(f"frames batch has {frames.shape[0]} rows for {len(samples)} samples")
    return {
        "frames": frames,
        "frame_mask": torch.stack([s["frame_mask"] for s in samples]),
        "text_ids": torch.stack([s["text_ids"] for s in samples]),
        "text_mask": torch.stack([s["text_mask"] for s in samples]),
        "keys": [s["key"] for s in samples],
        "video_ids": [s["video_id"] for s in samples],
        "caption_index": torch.tensor([s["caption_index"] for s in samples], dtype=torch.long),
        "is_pad": torch.tensor([s["is_pad"] for s in samples], dtype=torch.bool),
        "sample_index": torch.tensor([s["sample_index"] for s in samples], dtype=torch.long),
    }
