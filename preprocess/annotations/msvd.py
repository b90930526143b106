"""MSVD annotations (the CLIP4Clip / NeighborRetr layout).

``anno_path`` is a folder with ``raw-captions.pkl`` (a dict ``video_id -> [caption, ...]`` where each caption is a
list of word tokens, joined here with single spaces) and the split lists ``train_list.txt``, ``val_list.txt``,
``test_list.txt`` (one id per line). One item per listed video (list order) with all its captions (pickle order).

The pickle is read with :class:`RestrictedUnpickler`, which refuses every global lookup: only the builtin
containers and scalars that pickle encodes without a lookup (dict, list, tuple, str, int, float, bool, None) can
appear, so a crafted file cannot run code.

Video files: the file under ``video_root`` (walked once) whose stem is the id, any extension in
:data:`~preprocess.annotations.common.VIDEO_EXTENSIONS`; an id without a file gets
``{video_root}/{id}{video_ext}`` (the job then records it as missing).
"""

from __future__ import annotations

import io
import pickle
from typing import Any

from preprocess.annotations.common import AnnotationError, clean_caption, index_videos, read_id_list
from preprocess.items import VideoItem
from shards import fs as sfs

__all__ = ["SPLITS", "CAPTIONS_PKL", "RestrictedUnpickler", "read_raw_captions", "load_msvd"]

SPLITS = ("train", "val", "test")
CAPTIONS_PKL = "raw-captions.pkl"


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves no globals at all (so no class, function or ``reduce`` target can be loaded)."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refused to load global {module}.{name}: only plain data is allowed")


def read_raw_captions(path: str) -> dict[str, list[str]]:
    """``{video_id: [caption, ...]}`` from ``raw-captions.pkl`` (token lists joined with spaces).

    A caption given as a plain string is taken as is. Errors name the file and the video id (record).
    """
    try:
        data = sfs.read_bytes(path)
    except FileNotFoundError:
        raise AnnotationError(path, "annotation file not found") from None
    try:
        obj = RestrictedUnpickler(io.BytesIO(data)).load()
    except pickle.UnpicklingError as e:
        raise AnnotationError(path, f"unsafe or invalid pickle: {e}") from None
    except (EOFError, ValueError, TypeError, KeyError, IndexError, AttributeError, UnicodeDecodeError) as e:
        raise AnnotationError(path, f"invalid pickle: {type(e).__name__}: {e}") from None
    if not isinstance(obj, dict):
        raise AnnotationError(path, f"expected a dict video_id -> captions, got {type(obj).__name__}")
    out: dict[str, list[str]] = {}
    for vid, caps in obj.items():
        rec = repr(vid)
        if not isinstance(vid, str) or not vid:
            raise AnnotationError(path, "video id must be a non-empty string", record=rec)
        if not isinstance(caps, list | tuple) or not caps:
            raise AnnotationError(path, "captions must be a non-empty list", record=rec)
        joined: list[str] = []
        for j, cap in enumerate(caps):
            if isinstance(cap, list | tuple):
                if not all(isinstance(t, str) for t in cap):
                    raise AnnotationError(path, f"caption {j}: tokens must be strings", record=rec)
                cap = " ".join(t.strip() for t in cap if t.strip())
            joined.append(clean_caption(cap, path, record=f"{rec} caption {j}"))
        out[vid] = joined
    return out


def load_msvd(split: str, anno_path: str, video_root: str, *, video_ext: str = ".mp4") -> list[VideoItem]:
    """MSVD items of ``split`` (``train`` | ``val`` | ``test``); see the module docstring."""
    if split not in SPLITS:
        raise ValueError(f"MSVD split must be one of {SPLITS}, got {split!r}")
    list_path = sfs.join(anno_path, f"{split}_list.txt")
    ids = read_id_list(list_path)
    pkl_path = sfs.join(anno_path, CAPTIONS_PKL)
    captions = read_raw_captions(pkl_path)
    for line, vid in ids:
        if vid not in captions:
            raise AnnotationError(list_path, f"video id {vid!r} has no captions in {pkl_path}", line=line)
    files = index_videos(video_root)
    return [
        VideoItem(
            "msvd",
            split,
            vid,
            files.get(vid) or sfs.join(video_root, f"{vid}{video_ext}"),
            tuple(captions[vid]),
        )
        for _, vid in ids
    ]
