"""DiDeMo annotations (LocalizingMoments format, paragraph-to-video retrieval).

``anno_path`` is a folder with ``{split}_data.json`` (a list of ``{"video", "times", "description", ...}``
moments) and ``{split}_list.txt`` (one video id per line), for split ``train`` | ``val`` | ``test``.

One item per listed video (list order). Its single caption is the paragraph: every description of the video in
json order, each stripped, joined with one space. The window is ``[0, 30]`` s, i.e. the whole video (DiDeMo clips
are at most 30 s; the reference loader uses [0, 31] and discards the per-moment ``times``).

Lists: use the community-standard lists (collaborative-experts / CLIP4Clip: 1,065 val and 1,004 test videos) as
``{split}_list.txt``. Deriving a list from the json's ``video`` fields gives a different, non-standard set (1,094 val,
1,037 test). List entries are file names as downloaded: with an extension (``...cc3a272282.mp4``), with a trailing
dot (``...5762149bfc.``) or bare; the json's ``video`` field uses the same spelling.

Video ids and files: the id is the entry without its extension or trailing dot (``bare``) unless two entries share
that bare id (``a.mp4`` and ``a.avi``), in which case both keep their full entry: distinct files never share an id.
The file is, in this order, the file under ``video_root`` named exactly as the entry, the file named ``bare`` with
no extension (how DiDeMo's own download script names them), a video file whose stem is the entry (a re-encode
such as ``a.mov.mp4``) or whose stem is ``bare``; an entry with
no file gets ``{video_root}/{bare}{video_ext}`` (recorded as missing by the job).
"""

from __future__ import annotations

import os

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
    by_stem = index_videos(video_root)
    by_name = _index_names(video_root)
    bare = {vid: bare_id(vid) for _, vid in ids}
    uses: dict[str, set[str]] = {}
    for vid, b in bare.items():
        uses.setdefault(b, set()).add(vid)
    start, end = WINDOW
    items = []
    for _, vid in ids:
        b = bare[vid]
        found = by_name.get(vid) or by_name.get(b) or by_stem.get(vid) or by_stem.get(b)
        source = found or sfs.join(video_root, f"{b}{video_ext}")
        video_id = b if len(uses[b]) == 1 else vid
        items.append(VideoItem("didemo", split, video_id, source, (" ".join(moments[vid]),), start, end))
    return items


def bare_id(entry: str) -> str:
    """A list entry without its extension or trailing dot: ``"a@N00_1_ff.mp4"`` -> ``"a@N00_1_ff"``,
    ``"a@N00_1_ff."`` -> ``"a@N00_1_ff"``. DiDeMo ids (Flickr ``user_photo_secret``) contain no dot, and the
    standard lists use extensions beyond the common video ones (``.mts``, ``.m2ts``, ``.3g2``), so any extension
    is removed."""
    stem, _ = os.path.splitext(entry)
    return stem or entry


def _index_names(video_root: str) -> dict[str, str]:
    """``{file name: path}`` of every file under ``video_root`` (any extension or none; first in sorted order)."""
    fs, root = sfs.filesystem(video_root)
    if not fs.exists(root):
        return {}
    proto = "" if not sfs.is_remote(video_root) else video_root.split("://", 1)[0] + "://"
    out: dict[str, str] = {}
    for p in sorted(fs.find(root)):
        out.setdefault(p.rsplit("/", 1)[-1], proto + p)
    return out
