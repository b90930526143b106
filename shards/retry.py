"""The one retry policy of remote reads: per-request timeout, exponential backoff with full jitter, a total
deadline per shard (or index file), and nothing retried underneath.

Why our own loop and not botocore's/s3fs's: we need a *per-shard* deadline and a resume-at-byte-offset retry of
range reads, which neither offers; stacking them multiplied attempts (botocore 5 x s3fs 5 x ours 6). So the
filesystems used for reads are built with their own retries off (botocore ``max_attempts=1``, s3fs
``retries=1``, see :func:`shards.s3.read_filesystem`), and every request's connect and socket-read time is bounded
by ``request_timeout`` (a stalled body read raises a timeout that we retry, it never hangs).

Attempt ``k`` (1-based) waits ``U(0, min(max_delay, base_delay * 2^(k-1)))`` seconds ("full jitter") before it
runs, but never past the deadline: when the remaining time cannot hold the wait, or ``retries`` is exhausted, the
read gives up with :class:`ShardUnavailableError` naming the URL, the attempts and the last error.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import TypeVar

__all__ = ["RetryBudget", "ShardUnavailableError", "backoff_delay"]

log = logging.getLogger(__name__)
T = TypeVar("T")


class ShardUnavailableError(OSError):
    """A remote file that kept failing until its retries or its deadline ran out (the message names the URL)."""

    def __init__(self, message: str, url: str = "") -> None:
        super().__init__(message)
        self.url = url

    def __reduce__(self):  # picklable across DataLoader worker boundaries
        return (type(self), (str(self), self.url))


def backoff_delay(
    attempt: int, base_delay: float, max_delay: float, rng: random.Random | None = None
) -> float:
    """Seconds before retry ``attempt`` (1-based): ``U(0, min(max_delay, base_delay * 2^(attempt-1)))``."""
    cap = min(max_delay, base_delay * 2 ** (attempt - 1))
    return (rng or random).uniform(0.0, cap)


class RetryBudget:
    """Retries and deadline for the requests of one file (one shard open, one index read).

    ``run(fn, what)`` calls ``fn()``; on an error for which ``transient(exc)`` is true it waits (see the module
    docstring) and calls again, until success, a permanent error (re-raised as is), or :class:`ShardUnavailableError`
    once ``retries`` retries in a row have failed or the file has been failing for ``deadline`` seconds (measured
    from the start of the first failed request of the current streak; a success ends the streak). So a healthy
    but slow shard is never cut, a dead one is given up within ``deadline`` (+ at most one ``request_timeout`` of
    the request in flight), and a flaky one that keeps making progress is read to the end.
    """

    def __init__(
        self,
        url: str,
        *,
        retries: int,
        deadline: float,
        transient: Callable[[BaseException], bool],
        base_delay: float = 0.1,
        max_delay: float = 4.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if retries < 0 or deadline <= 0:
            raise ValueError(f"retries must be >= 0 and deadline > 0, got {retries}, {deadline}")
        self.url, self.retries, self.deadline, self.transient = url, retries, deadline, transient
        self.base_delay, self.max_delay = base_delay, max_delay
        self.clock, self.sleep = clock, sleep
        self.total_retries = 0  # retries performed over the file's lifetime
        self.attempts = 0  # requests made over the file's lifetime
        self._streak = 0  # failed requests in a row
        self._failing_since: float | None = None

    def run(self, fn: Callable[[], T], what: str) -> T:
        while True:
            t0 = self.clock()
            self.attempts += 1
            try:
                out = fn()
            except Exception as e:
                if not self.transient(e):
                    raise
                if self._failing_since is None:
                    self._failing_since = t0
                failing = self.clock() - self._failing_since
                why = ""
                if self._streak >= self.retries:
                    why = f"{self.retries} retries exhausted"
                wait = backoff_delay(self._streak + 1, self.base_delay, self.max_delay)
                if not why and failing + wait >= self.deadline:
                    why = f"failing for {failing:.1f}s, deadline {self.deadline:g}s"
                if why:
                    raise ShardUnavailableError(
                        f"gave up reading {self.url} ({what}) after {self._streak + 1} failed attempts in a row "
                        f"({why}): {e!r}",
                        self.url,
                    ) from e
                self._streak += 1
                self.total_retries += 1
                log.info("retry %d/%d of %s (%s) in %.2fs after %r", self._streak, self.retries, self.url, what,
                         wait, e)  # fmt: skip
                self.sleep(wait)
                continue
            self._streak, self._failing_since = 0, None
            return out
