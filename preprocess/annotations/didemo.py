"""DiDeMo annotations (LocalizingMoments format, paragraph-to-video retrieval).

``anno_path`` is a folder with ``{split}_data.json`` (a list of ``{"video", "times", "description", ...}``
moments) and ``{split}_list.txt`` (one video id per line), for split ``train`` | ``val`` | ``test``.

One item per listed video (list order). Its single caption is the paragraph: every description of the video in
json order, each stripped, joined with one space. The window is ``[0, 30]`` s, i.e. the whole video (DiDeMo clips
are at most 30 s; the reference loader uses [0, 31] and discards the per-moment ``times``).

Video files: the file under ``video_root`` whose stem (``os.path.splitext`` of the name) equals the id; an id
without a file gets ``{video_root}/{id}{video_ext}``.
"""

from __future__ import annotations

from preprocess.annotations.common import (
    AnnotationError,
    clean_caption,
    index_videos,
    read_id_list,
    read_json,
)
from preprocess.items import VideoItem
from shards import fs as sfs

__all__ = ["SPLITS", "WINDOW", "read_moments", "load_didemo"]

SPLITS = ("train", "val", "test")
WINDOW = (0.0, 30.0)


def read_moments(path: str) -> dict[str, list[str]]:
    """``{video: [description, ...]}`` in json order from a LocalizingMoments json."""
    data = read_json(path)
    if not isinstance(data, list):
        raise AnnotationError(path, f"expected a list of moments, got {type(data).__name__}")
    out: dict[str, list[str]] = {}
    for i, m in enumerate(data):
        rec = f"[{i}]"
        if not isinstance(m, dict):
            raise AnnotationError(path, "moment must be an object", record=rec)
        for field in ("video", "description"):
            if field not in m:
                raise AnnotationError(path, f"missing field {field!r}", record=rec)
        vid = m["video"]
        if not isinstance(vid, str) or not vid.strip():
            raise AnnotationError(path, f"video must be a non-empty string, got {vid!r}", record=rec)
        if "times" in m and not isinstance(m["times"], list):
            raise AnnotationError(path, f"times must be a list, got {type(m['times']).__name__}", record=rec)
        out.setdefault(vid.strip(), []).append(clean_caption(m["description"], path, record=rec))
    return out


def load_didemo(split: str, anno_path: str, video_root: str, *, video_ext: str = ".mp4") -> list[VideoItem]:
    """DiDeMo items of ``split``; see the module docstring."""
    if split not in SPLITS:
        raise ValueError(f"DiDeMo split must be one of {SPLITS}, got {split!r}")
    list_path = sfs.join(anno_path, f"{split}_list.txt")
    ids = read_id_list(list_path)
    json_path = sfs.join(anno_path, f"{split}_data.json")
    moments = read_moments(json_path)
    for line, vid in ids:
        if vid not in moments:
            raise AnnotationError(list_path, f"video id {vid!r} has no description in {json_path}", line=line)
    files = index_videos(video_root)
    start, end = WINDOW
    return [
        VideoItem(
            "didemo",
            split,
            vid,
            files.get(vid) or sfs.join(video_root, f"{vid}{video_ext}"),
            (" ".join(moments[vid]),),
            start,
            end,
        )
        for _, vid in ids
    ]
