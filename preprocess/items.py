"""The record every annotation reader yields and the shard job consumes."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["VideoItem"]


@dataclass(frozen=True)
class VideoItem:
    """One video (or clip window of a video) with all of its captions.

    ``captions[0]`` is the primary caption (the sample's ``txt``); paragraph datasets (DiDeMo, ActivityNet) carry a
    single caption, the paragraph. ``start``/``end`` are seconds or ``None`` for the whole video.
    """

    dataset: str
    split: str
    video_id: str
    source: str
    captions: tuple[str, ...]
    start: float | None = None
    end: float | None = None

    def __post_init__(self) -> None:
        if not self.captions:
            raise ValueError(f"video {self.video_id!r} ({self.source}) has no caption")
        if self.start is not None and self.end is not None and self.end <= self.start:
            raise ValueError(f"video {self.video_id!r}: clip end {self.end} <= start {self.start}")
