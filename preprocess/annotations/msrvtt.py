"""MSR-VTT annotations (the CLIP4Clip / NeighborRetr layout).

``anno_path`` is a folder with

- ``MSRVTT_data.json``: the standard MSR-VTT json; only ``sentences[*].video_id`` and ``sentences[*].caption`` are
  read;
- ``MSRVTT_train.9k.csv``: column ``video_id``, the Training-9k split;
- ``MSRVTT_JSFUSION_test.csv``: columns ``key, vid_key, video_id, sentence``, the 1k-A test set.

Splits: ``train`` = one item per video of the 9k csv (csv order) with ALL its captions from the json (json
order); ``test`` = one item per row of the 1k-A csv (caption = ``sentence``); ``val`` = the same 1k-A file (the
reference code validates on the test set; pass a held-out split through the generic CSV reader to avoid that).
Video files are ``{video_root}/{video_id}{video_ext}``. An ``anno_path`` naming one of the three files stands
for its folder.
"""

from __future__ import annotations

import csv
import io

from preprocess.annotations.common import AnnotationError, clean_caption, read_json, read_text
from preprocess.items import VideoItem
from shards import fs as sfs

__all__ = ["SPLITS", "TRAIN_CSV", "TEST_CSV", "DATA_JSON", "read_csv_rows", "read_sentences", "load_msrvtt"]

SPLITS = ("train", "val", "test")
TRAIN_CSV = "MSRVTT_train.9k.csv"
TEST_CSV = "MSRVTT_JSFUSION_test.csv"
DATA_JSON = "MSRVTT_data.json"


def read_csv_rows(path: str, required: tuple[str, ...]) -> list[tuple[int, dict[str, str]]]:
    """``(line_number, row)`` for each data row of a headed CSV; a missing column is an error on line 1."""
    reader = csv.DictReader(io.StringIO(read_text(path), newline=""))
    header = reader.fieldnames or []
    missing = [c for c in required if c not in header]
    if missing:
        raise AnnotationError(
            path, f"missing column(s) {', '.join(missing)} (header: {', '.join(header)})", line=1
        )
    rows: list[tuple[int, dict[str, str]]] = []
    try:
        for row in reader:
            if None in row:
                raise AnnotationError(
                    path,
                    f"row has {len(header) + len(row[None])} fields, header has {len(header)}",
                    line=reader.line_num,
                )
            if any(v is None for v in row.values()):
                raise AnnotationError(
                    path, f"row has fewer fields than the header ({len(header)})", line=reader.line_num
                )
            rows.append((reader.line_num, row))
    except csv.Error as e:
        raise AnnotationError(path, f"malformed CSV: {e}", line=reader.line_num) from None
    return rows


def _video_id(row: dict[str, str], path: str, line: int) -> str:
    vid = (row.get("video_id") or "").strip()
    if not vid:
        raise AnnotationError(path, "empty video_id", line=line)
    return vid


def read_sentences(path: str) -> dict[str, list[str]]:
    """``{video_id: [captions in json order]}`` from ``MSRVTT_data.json``'s ``sentences`` list."""
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("sentences"), list):
        raise AnnotationError(path, "expected an object with a 'sentences' list")
    out: dict[str, list[str]] = {}
    for i, s in enumerate(data["sentences"]):
        rec = f"sentences[{i}]"
        if not isinstance(s, dict):
            raise AnnotationError(path, "sentence must be an object", record=rec)
        for field in ("video_id", "caption"):
            if field not in s:
                raise AnnotationError(path, f"missing field {field!r}", record=rec)
        vid = s["video_id"]
        if not isinstance(vid, str) or not vid.strip():
            raise AnnotationError(path, f"video_id must be a non-empty string, got {vid!r}", record=rec)
        out.setdefault(vid.strip(), []).append(clean_caption(s["caption"], path, record=rec))
    return out


def load_msrvtt(split: str, anno_path: str, video_root: str, *, video_ext: str = ".mp4") -> list[VideoItem]:
    """MSR-VTT items of ``split`` (``train`` | ``val`` | ``test``); see the module docstring."""
    if split not in SPLITS:
        raise ValueError(f"MSR-VTT split must be one of {SPLITS}, got {split!r}")
    if anno_path.rstrip("/").rsplit("/", 1)[-1] in (TRAIN_CSV, TEST_CSV, DATA_JSON):
        anno_path = anno_path.rstrip("/").rsplit("/", 1)[0] or "/"  # one of the folder's files was named

    def source(vid: str) -> str:
        return sfs.join(video_root, f"{vid}{video_ext}")

    if split == "train":
        csv_path = sfs.join(anno_path, TRAIN_CSV)
        rows = read_csv_rows(csv_path, ("video_id",))
        json_path = sfs.join(anno_path, DATA_JSON)
        captions = read_sentences(json_path)
        items: list[VideoItem] = []
        seen: dict[str, int] = {}
        for line, row in rows:
            vid = _video_id(row, csv_path, line)
            if vid in seen:
                raise AnnotationError(
                    csv_path, f"video_id {vid!r} repeated (first on line {seen[vid]})", line=line
                )
            seen[vid] = line
            if vid not in captions:
                raise AnnotationError(csv_path, f"video_id {vid!r} has no caption in {json_path}", line=line)
            items.append(VideoItem("msrvtt", split, vid, source(vid), tuple(captions[vid])))
        return items

    csv_path = sfs.join(anno_path, TEST_CSV)
    rows = read_csv_rows(csv_path, ("key", "vid_key", "video_id", "sentence"))
    items = []
    for line, row in rows:
        vid = _video_id(row, csv_path, line)
        cap = clean_caption(row["sentence"], csv_path, line=line)
        items.append(VideoItem("msrvtt", split, vid, source(vid), (cap,)))
    return items
