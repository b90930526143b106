"""Annotation readers: every supported dataset's annotation files -> ``list[VideoItem]``.

Entry point for the shard job::

    items = load_items("msrvtt", "test", "/data/msrvtt/anno", "/data/msrvtt/videos")

One module per format: :mod:`~preprocess.annotations.msrvtt`, :mod:`~preprocess.annotations.msvd`,
:mod:`~preprocess.annotations.didemo`, :mod:`~preprocess.annotations.activitynet` and
:mod:`~preprocess.annotations.tabular` (generic CSV / JSONL). Each module's docstring states the exact layout,
split names, caption handling and how video files are found.

Every reader validates the whole file before returning: a malformed file raises :class:`AnnotationError` naming
the file, the 1-based line or the record and the problem. Readers do not check that videos exist.
"""

from __future__ import annotations

from preprocess.annotations.activitynet import load_activitynet
from preprocess.annotations.common import AnnotationError
from preprocess.annotations.didemo import load_didemo
from preprocess.annotations.msrvtt import load_msrvtt
from preprocess.annotations.msvd import load_msvd
from preprocess.annotations.tabular import load_csv, load_jsonl
from preprocess.items import VideoItem

__all__ = ["DATASETS", "AnnotationError", "load_items"]

DATASETS: tuple[str, ...] = ("msrvtt", "msvd", "didemo", "activitynet", "csv", "jsonl")

_READERS = {
    "msrvtt": load_msrvtt,
    "msvd": load_msvd,
    "didemo": load_didemo,
    "activitynet": load_activitynet,
    "csv": load_csv,
    "jsonl": load_jsonl,
}


def load_items(
    dataset: str, split: str, anno_path: str, video_root: str, *, video_ext: str = ".mp4"
) -> list[VideoItem]:
    """All items of ``split`` of ``dataset`` (one of :data:`DATASETS`).

    ``anno_path`` is the annotation folder (msrvtt, msvd, didemo, activitynet) or file (csv, jsonl);
    ``video_root`` is the folder (or ``s3://`` prefix) holding the videos; ``video_ext`` is the extension of
    MSR-VTT files and the fallback for ids whose file is not found in the tree.
    """
    reader = _READERS.get(dataset)
    if reader is None:
        raise ValueError(f"unknown dataset {dataset!r}: expected one of {', '.join(DATASETS)}")
    return reader(split, anno_path, video_root, video_ext=video_ext)
