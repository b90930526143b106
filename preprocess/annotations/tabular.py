"""Generic CSV and JSONL annotations for any video-caption dataset.

Columns (CSV header) or keys (one JSON object per line): ``video_path``, ``caption`` and optionally ``start``,
``end`` (seconds; empty/null = video start/end), ``split`` and ``video_id`` (default: the file stem of
``video_path``). Other columns are ignored. Relative ``video_path`` values resolve against ``video_root``.

- When a ``split`` column/key is present, only rows whose split equals the requested split are kept (in JSONL a
  row without the key is kept for every split); otherwise every row belongs to every split.
- Rows with the same ``video_path`` and window (``start``, ``end``) form ONE item whose captions are those rows'
  captions in file order; items come in order of their first row. Different windows of one video are different
  items with the same ``video_id`` (the job tells them apart by clip index).
- All rows are validated (including rows of other splits) before anything is returned: missing column, empty
  caption or path, non-numeric or negative times, ``end <= start`` and conflicting ``video_id`` within an item
  are errors naming the file and 1-based line.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from preprocess.annotations.common import (
    AnnotationError,
    check_window,
    clean_caption,
    parse_seconds,
    read_text,
    resolve_path,
)
from preprocess.annotations.msrvtt import read_csv_rows
from preprocess.items import VideoItem

__all__ = ["REQUIRED", "load_csv", "load_jsonl"]

REQUIRED = ("video_path", "caption")


@dataclass
class _Group:
    video_id: str
    id_line: int
    source: str
    start: float | None
    end: float | None
    captions: list[str] = field(default_factory=list)


def _group(
    rows: list[tuple[int, dict]], dataset: str, split: str, path: str, video_root: str, has_split: bool
) -> list[VideoItem]:
    groups: dict[tuple[str, float | None, float | None], _Group] = {}
    for line, row in rows:
        vpath = row.get("video_path")
        if not isinstance(vpath, str) or not vpath.strip():
            raise AnnotationError(path, f"video_path must be a non-empty string, got {vpath!r}", line=line)
        vpath = vpath.strip()
        caption = clean_caption(row.get("caption"), path, line=line)
        start = parse_seconds(row.get("start"), "start", path, line=line)
        end = parse_seconds(row.get("end"), "end", path, line=line)
        check_window(start, end, path, line=line)
        row_split = row.get("split") if has_split else None
        if row_split is not None and not isinstance(row_split, str):
            raise AnnotationError(path, f"split must be a string, got {row_split!r}", line=line)
        given_id = row.get("video_id")
        if given_id is not None and not isinstance(given_id, str | int):
            raise AnnotationError(path, f"video_id must be a string, got {given_id!r}", line=line)
        given_id = str(given_id).strip() if given_id is not None else ""
        video_id = given_id or os.path.splitext(vpath.rstrip("/").rsplit("/", 1)[-1])[0]
        if not video_id:
            raise AnnotationError(path, f"cannot derive a video_id from video_path {vpath!r}", line=line)
        if row_split is not None and row_split.strip() != split:
            continue
        gkey = (vpath, start, end)
        g = groups.get(gkey)
        if g is None:
            g = groups[gkey] = _Group(video_id, line, resolve_path(vpath, video_root), start, end)
        elif g.video_id != video_id:
            raise AnnotationError(
                path,
                f"video_id {video_id!r} conflicts with {g.video_id!r} given for the same video and window "
                f"on line {g.id_line}",
                line=line,
            )
        g.captions.append(caption)
    # a derived id (file stem) shared by distinct files (clip.mp4, clip.mkv) becomes the file name: distinct files
    # never share a video id
    sources: dict[str, set[str]] = {}
    for (vpath, _, _), g in groups.items():
        sources.setdefault(g.video_id, set()).add(vpath)
    items = []
    for (vpath, _, _), g in groups.items():
        vid = g.video_id
        name = vpath.rstrip("/").rsplit("/", 1)[-1]
        if len(sources[vid]) > 1 and vid == os.path.splitext(name)[0]:
            vid = name
        items.append(VideoItem(dataset, split, vid, g.source, tuple(g.captions), g.start, g.end))
    return items


def load_csv(
    split: str, anno_path: str, video_root: str, *, dataset: str = "csv", video_ext: str = ".mp4"
) -> list[VideoItem]:
    """Items of ``split`` from a headed CSV file ``anno_path``; see the module docstring.

    ``video_ext`` is unused (paths are given in full); it is accepted for a uniform signature.
    """
    rows = read_csv_rows(anno_path, REQUIRED)
    has_split = bool(rows) and "split" in rows[0][1]
    return _group(rows, dataset, split, anno_path, video_root, has_split)


def load_jsonl(
    split: str, anno_path: str, video_root: str, *, dataset: str = "jsonl", video_ext: str = ".mp4"
) -> list[VideoItem]:
    """Items of ``split`` from a JSON-lines file ``anno_path`` (blank lines skipped); see the module docstring."""
    rows: list[tuple[int, dict]] = []
    for n, raw in enumerate(read_text(anno_path).splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as e:
            raise AnnotationError(anno_path, f"invalid JSON: {e.msg} (column {e.colno})", line=n) from None
        if not isinstance(obj, dict):
            raise AnnotationError(anno_path, f"expected a JSON object, got {type(obj).__name__}", line=n)
        missing = [k for k in REQUIRED if k not in obj]
        if missing:
            raise AnnotationError(anno_path, f"missing key(s) {', '.join(missing)}", line=n)
        rows.append((n, obj))
    has_split = any("split" in r for _, r in rows)
    return _group(rows, dataset, split, anno_path, video_root, has_split)
