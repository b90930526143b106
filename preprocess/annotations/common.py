"""Pieces shared by the annotation readers: the error type, file reading, caption/window checks, video lookup.

Readers parse and validate a whole annotation file before returning anything, so a malformed file fails before
any video is decoded. They never check that a video exists (the shard job records a missing video as a failure).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from typing import Any

from shards import fs as sfs

__all__ = [
    "AnnotationError",
    "VIDEO_EXTENSIONS",
    "read_text",
    "read_json",
    "read_id_list",
    "clean_caption",
    "parse_seconds",
    "check_window",
    "resolve_path",
    "index_videos",
]

logger = logging.getLogger(__name__)

# Extensions considered when a reader walks a video tree to find the file of an id.
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv", ".3gp")


class AnnotationError(ValueError):
    """A malformed annotation file. The message names the file, the place (1-based line or record) and the problem.

    ``path``, ``line`` and ``record`` are kept as attributes for callers that want them.
    """

    def __init__(
        self, path: str, problem: str, *, line: int | None = None, record: str | None = None
    ) -> None:
        self.path, self.problem, self.line, self.record = path, problem, line, record
        where = path
        if line is not None:
            where += f", line {line}"
        if record is not None:
            where += f", record {record}"
        super().__init__(f"{where}: {problem}")


def read_text(path: str) -> str:
    """The UTF-8 text of a local file or ``s3://`` object; a missing or undecodable file is an AnnotationError."""
    try:
        data = sfs.read_bytes(path)
    except FileNotFoundError:
        raise AnnotationError(path, "annotation file not found") from None
    except IsADirectoryError:
        raise AnnotationError(path, "is a directory, expected an annotation file") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise AnnotationError(path, f"not valid UTF-8 ({e.reason})", line=line) from None


def read_json(path: str) -> Any:
    """Parse a JSON file; a syntax error names its 1-based line."""
    text = read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise AnnotationError(path, f"invalid JSON: {e.msg} (column {e.colno})", line=e.lineno) from None


def read_id_list(path: str) -> list[tuple[int, str]]:
    """``(line_number, id)`` for each non-blank line of a one-id-per-line split file (ids stripped).

    A repeated id is an error naming the line of its second occurrence.
    """
    out: list[tuple[int, str]] = []
    seen: dict[str, int] = {}
    for n, raw in enumerate(read_text(path).splitlines(), start=1):
        vid = raw.strip()
        if not vid:
            continue
        if vid in seen:
            raise AnnotationError(path, f"video id {vid!r} repeated (first on line {seen[vid]})", line=n)
        seen[vid] = n
        out.append((n, vid))
    if not out:
        raise AnnotationError(path, "no video ids in split list")
    return out


def clean_caption(value: Any, path: str, *, line: int | None = None, record: str | None = None) -> str:
    """A caption stripped of surrounding whitespace; non-strings and empty captions are errors."""
    if not isinstance(value, str):
        raise AnnotationError(
            path, f"caption must be a string, got {type(value).__name__}", line=line, record=record
        )
    text = value.strip()
    if not text:
        raise AnnotationError(path, "empty caption", line=line, record=record)
    return text


def parse_seconds(
    value: Any, name: str, path: str, *, line: int | None = None, record: str | None = None
) -> float | None:
    """A time in seconds from a CSV cell or JSON value: ``None``/``""`` -> None; otherwise a finite number >= 0."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool):
        raise AnnotationError(
            path, f"{name} must be a number of seconds, got {value!r}", line=line, record=record
        )
    try:
        sec = float(value)
    except (TypeError, ValueError):
        raise AnnotationError(
            path, f"{name} must be a number of seconds, got {value!r}", line=line, record=record
        ) from None
    if sec != sec or sec in (float("inf"), float("-inf")):
        raise AnnotationError(path, f"{name} must be finite, got {value!r}", line=line, record=record)
    if sec < 0:
        raise AnnotationError(path, f"{name} must be >= 0, got {value!r}", line=line, record=record)
    return sec


def check_window(
    start: float | None, end: float | None, path: str, *, line: int | None = None, record: str | None = None
) -> None:
    """Raise unless ``end > start`` (when both are given)."""
    if start is not None and end is not None and end <= start:
        raise AnnotationError(path, f"end {end:g} <= start {start:g}", line=line, record=record)


def resolve_path(video_path: str, video_root: str) -> str:
    """``video_path`` itself when absolute or a URL, else ``{video_root}/{video_path}``."""
    if "://" in video_path or os.path.isabs(video_path) or not video_root:
        return video_path
    return sfs.join(video_root, video_path)


def index_videos(video_root: str, stem_to_id: Callable[[str], str] | None = None) -> dict[str, str]:
    """Walk ``video_root`` once: ``{id: path}`` for every video file (extension in :data:`VIDEO_EXTENSIONS`).

    The id of a file is ``stem_to_id(stem)`` (default: the stem itself, ``os.path.splitext`` of the base name).
    Paths are visited in sorted order and the first file of an id wins, so the result is deterministic; a
    duplicate is logged. A missing root gives an empty dict (the job then records every video as missing).
    Works for local folders and ``s3://`` prefixes.
    """
    fs, root = sfs.filesystem(video_root)
    if not fs.exists(root):
        logger.warning("video root %s does not exist; no video files indexed", video_root)
        return {}
    found: dict[str, str] = {}
    proto = "" if not sfs.is_remote(video_root) else video_root.split("://", 1)[0] + "://"
    for p in sorted(fs.find(root)):
        name = p.rsplit("/", 1)[-1]
        stem, ext = os.path.splitext(name)
        if ext.lower() not in VIDEO_EXTENSIONS:
            continue
        vid = stem_to_id(stem) if stem_to_id else stem
        if vid in found:
            logger.warning("video id %r has several files; using %s, ignoring %s", vid, found[vid], proto + p)
            continue
        found[vid] = proto + p
    return found
