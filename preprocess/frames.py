"""Turning decoded frames into a sample: JPEG encoding (simplejpeg, RGB) and the sample's members."""

from __future__ import annotations

import numpy as np
import simplejpeg

from shards.schema import frame_member

__all__ = ["encode_frames", "decode_jpeg"]


def encode_frames(frames: np.ndarray, quality: int = 90) -> dict[str, bytes]:
    """``frames [T, S, S, 3]`` uint8 RGB -> ``{"f000.jpg": jpeg, ..., "f{T-1}.jpg": jpeg}``.

    Baseline JPEG, 4:2:0 chroma subsampling, ``quality`` 1..100; deterministic (same pixels -> same bytes).
    """
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 [T, H, W, 3], got {frames.dtype} {tuple(frames.shape)}")
    return {
        frame_member(i): simplejpeg.encode_jpeg(
            np.ascontiguousarray(frame), quality=int(quality), colorspace="RGB", colorsubsampling="420"
        )
        for i, frame in enumerate(frames)
    }


def decode_jpeg(data: bytes) -> np.ndarray:
    """One JPEG -> uint8 ``[H, W, 3]`` RGB (for tests and tools)."""
    return simplejpeg.decode_jpeg(data, colorspace="RGB")
