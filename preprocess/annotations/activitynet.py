"""ActivityNet Captions annotations (paragraph-to-video retrieval).

``anno_path`` is a folder with ``train.json`` / ``val_1.json`` (a dict ``id -> {"duration", "timestamps",
"sentences"}``) and ``train_ids.json`` / ``val_ids.json`` (a json list of ids ``v_XXXXXXXXXXX``). Splits are
``train`` and ``val`` (= ``val_1``, the set usually reported as "test").

One item per listed id (list order). Its single caption is the paragraph: the sentences, each stripped, joined
with one space (blank sentences are dropped; a video whose sentences are all blank is an error). The window is
``[0, duration]`` seconds.

Video files: the file under ``video_root`` whose stem minus its first two characters equals the id minus its
``v_`` prefix (``v_abc.mp4`` or ``x_abc.mkv`` for id ``v_abc``); an id without a file gets
``{video_root}/{id}{video_ext}``.
"""

from __future__ import annotations

from preprocess.annotations.common import (
    AnnotationError,
    clean_caption,
    index_videos,
    parse_seconds,
    read_json,
)
from preprocess.items import VideoItem
from shards import fs as sfs

__all__ = ["SPLITS", "FILES", "bare_id", "read_ids", "read_captions", "load_activitynet"]

SPLITS = ("train", "val")
# split -> (captions json, ids json)
FILES = {"train": ("train.json", "train_ids.json"), "val": ("val_1.json", "val_ids.json")}


def bare_id(video_id: str) -> str:
    """The id without its ``v_`` prefix (``v_abc`` -> ``abc``), the part file stems are matched on."""
    return video_id[2:] if video_id.startswith("v_") else video_id


def read_ids(path: str) -> list[str]:
    """The ids of a ``*_ids.json`` list; repeats and non-strings are errors naming the list position."""
    data = read_json(path)
    if not isinstance(data, list) or not data:
        raise AnnotationError(path, "expected a non-empty json list of video ids")
    seen: dict[str, int] = {}
    for i, vid in enumerate(data):
        if not isinstance(vid, str) or not vid.strip():
            raise AnnotationError(path, f"video id must be a non-empty string, got {vid!r}", record=f"[{i}]")
        if vid in seen:
            raise AnnotationError(
                path, f"video id {vid!r} repeated (first at [{seen[vid]}])", record=f"[{i}]"
            )
        seen[vid] = i
    return list(data)


def read_captions(path: str) -> dict[str, tuple[str, float]]:
    """``{id: (paragraph, duration)}`` from ``train.json`` / ``val_1.json``."""
    data = read_json(path)
    if not isinstance(data, dict):
        raise AnnotationError(path, f"expected an object id -> annotation, got {type(data).__name__}")
    out: dict[str, tuple[str, float]] = {}
    for vid, ann in data.items():
        rec = repr(vid)
        if not isinstance(ann, dict):
            raise AnnotationError(path, "annotation must be an object", record=rec)
        for field in ("duration", "sentences"):
            if field not in ann:
                raise AnnotationError(path, f"missing field {field!r}", record=rec)
        duration = parse_seconds(ann["duration"], "duration", path, record=rec)
        if duration is None or duration <= 0:
            raise AnnotationError(path, f"duration must be > 0, got {ann['duration']!r}", record=rec)
        sents = ann["sentences"]
        if not isinstance(sents, list) or not all(isinstance(s, str) for s in sents):
            raise AnnotationError(path, "sentences must be a list of strings", record=rec)
        paragraph = clean_caption(" ".join(s.strip() for s in sents if s.strip()), path, record=rec)
        out[vid] = (paragraph, duration)
    return out


def load_activitynet(
    split: str, anno_path: str, video_root: str, *, video_ext: str = ".mp4"
) -> list[VideoItem]:
    """ActivityNet Captions items of ``split`` (``train`` | ``val``); see the module docstring."""
    if split not in SPLITS:
        raise ValueError(f"ActivityNet split must be one of {SPLITS} (val = val_1), got {split!r}")
    caps_name, ids_name = FILES[split]
    ids_path = sfs.join(anno_path, ids_name)
    ids = read_ids(ids_path)
    caps_path = sfs.join(anno_path, caps_name)
    captions = read_captions(caps_path)
    for i, vid in enumerate(ids):
        if vid not in captions:
            raise AnnotationError(ids_path, f"video id {vid!r} has no entry in {caps_path}", record=f"[{i}]")
    files = index_videos(video_root, stem_to_id=lambda stem: stem[2:])
    items = []
    for vid in ids:
        paragraph, duration = captions[vid]
        src = files.get(bare_id(vid)) or sfs.join(video_root, f"{vid}{video_ext}")
        items.append(VideoItem("activitynet", split, vid, src, (paragraph,), 0.0, duration))
    return items
