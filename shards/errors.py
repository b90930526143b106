"""Corrupt-data policy of the reader: error kinds, the exception raised under ``on_error="raise"``, and a
rate-limited logger for ``on_error="skip"`` (counts every event, logs a few, never sleeps)."""

from __future__ import annotations

import logging
from collections import Counter

__all__ = ["ERROR_KINDS", "ShardDataError", "ErrorCounter"]

ERROR_KINDS = (
    "missing_shard",  # the shard URL does not exist (404 / no such file) or kept failing until its deadline
    "truncated_tar",  # the tar ends early or a header is damaged
    "read_error",  # the shard could not be read after all retries
    "missing_members",  # a sample without txt or without any fNNN.jpg frame
    "corrupt_jpeg",  # a frame that does not decode as JPEG
    "corrupt_json",  # a json member that does not parse to an object
)


class ShardDataError(RuntimeError):
    """Bad shard data under ``on_error="raise"``; the message names the kind, the shard URL and the sample key."""

    def __init__(self, message: str, kind: str = "read_error", url: str = "", key: str | None = None) -> None:
        super().__init__(message)
        self.kind, self.url, self.key = kind, url, key

    def __reduce__(self):  # picklable across DataLoader worker boundaries
        return (type(self), (str(self), self.kind, self.url, self.key))


class ErrorCounter:
    """Counts skipped data by kind and logs the 1st..5th, then every power-of-two-th event of each kind."""

    def __init__(self, logger: logging.Logger, on_error: str = "skip") -> None:
        if on_error not in ("skip", "raise"):
            raise ValueError(f"on_error must be 'skip' or 'raise', got {on_error!r}")
        self.logger, self.on_error = logger, on_error
        self.counts: Counter[str] = Counter()

    def report(self, kind: str, url: str, key: str | None, detail: str) -> None:
        """Record one event; raise :class:`ShardDataError` under ``raise``."""
        if kind not in ERROR_KINDS:
            raise ValueError(f"unknown error kind {kind!r}")
        where = f"shard {url}" + (f" sample {key!r}" if key is not None else "")
        message = f"{kind}: {where}: {detail}"
        if self.on_error == "raise":
            raise ShardDataError(message, kind, url, key)
        self.counts[kind] += 1
        n = self.counts[kind]
        if n <= 5 or (n & (n - 1)) == 0:
            self.logger.warning("skipped (%s #%d) %s", kind, n, message)

    def take(self) -> dict[str, int]:
        """Counts since the last call (and reset), for shipping from a worker to the main process."""
        out = dict(self.counts)
        self.counts.clear()
        return out
