"""One writer per run folder (``{run}/run.lock``) and ranks that die with their launcher.

The lock file is created with ``O_CREAT | O_EXCL`` by rank 0 and holds ``{"host", "pid", "started",
"heartbeat"}``; a daemon thread refreshes ``heartbeat`` every :data:`HEARTBEAT_S` seconds. A second trainer
on the same ``run.out`` refuses with :class:`RunLockedError` naming the holder, unless the lock is stale: on the
same host its pid is gone, or (another host, where the pid cannot be checked) its heartbeat is older than
:data:`STALE_S`. A stale lock is taken over with a warning. ``fcntl`` locks are not used because they are not
reliable on the network file systems run folders live on.

:func:`watch_parent`: ``torchrun`` starts every rank in a session of its own, so a kill -9 of the launcher leaves
the ranks running (orphans that keep writing the run folder). A daemon thread polls ``os.getppid()`` once a
second and ends the process with :data:`training.preemption.PARENT_DIED_EXIT_CODE` when the parent changed
(re-parented to init or a subreaper) -- portable, unlike ``prctl(PR_SET_PDEATHSIG)``, which fires when the
forking *thread* exits.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from typing import Any

__all__ = ["HEARTBEAT_S", "STALE_S", "LOCK_FILE", "RunLockedError", "RunLock", "watch_parent"]

logger = logging.getLogger(__name__)

HEARTBEAT_S = 5.0
STALE_S = 60.0
LOCK_FILE = "run.lock"


class RunLockedError(RuntimeError):
    """The run folder is held by a live trainer."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not yet reaped) holds nothing
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _read(path: str) -> dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # half-written or foreign: judged by its age


def stale_reason(holder: dict[str, Any], path: str, *, now: float | None = None) -> str | None:
    """Why the lock ``holder`` (the lock file's content) is stale, or ``None`` while it is live."""
    now = time.time() if now is None else now
    host, pid = holder.get("host"), holder.get("pid")
    if host == socket.gethostname() and isinstance(pid, int):
        return None if _pid_alive(pid) else f"pid {pid} on {host} is gone"
    beat = holder.get("heartbeat")
    if not isinstance(beat, int | float):
        try:
            beat = os.path.getmtime(path)
        except OSError:
            return "lock file vanished"
    age = now - float(beat)
    return f"no heartbeat for {age:.0f} s" if age > STALE_S else None


class RunLock:
    """Exclusive lock of one run folder; :meth:`acquire` or RunLockedError, :meth:`release` at the end."""

    def __init__(self, run_dir: str) -> None:
        self.path = os.path.join(run_dir, LOCK_FILE)
        self.info = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _content(self) -> bytes:
        return json.dumps({**self.info, "heartbeat": time.time()}).encode()

    def acquire(self) -> RunLock:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        for _ in range(2):  # second try after removing a stale lock
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = _read(self.path)
                if holder is None:
                    continue  # released between our open and read
                reason = stale_reason(holder, self.path)
                if reason is None:
                    beat = holder.get("heartbeat")
                    ago = (
                        f", heartbeat {time.time() - beat:.0f} s ago" if isinstance(beat, int | float) else ""
                    )
                    raise RunLockedError(
                        f"run folder {os.path.dirname(self.path)} is in use by another trainer: host "
                        f"{holder.get('host')} pid {holder.get('pid')}{ago} (lock {self.path}); use another "
                        "run.out or stop that trainer"
                    ) from None
                logger.warning("taking over the stale run lock %s (%s): %s", self.path, reason, holder)
                try:
                    os.remove(self.path)
                except FileNotFoundError:
                    pass
                continue
            with os.fdopen(fd, "wb") as f:
                f.write(self._content())
            self._thread = threading.Thread(target=self._beat, name="run-lock-heartbeat", daemon=True)
            self._thread.start()
            return self
        raise RunLockedError(f"{self.path}: could not take the lock (another trainer raced for it)")

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            holder = _read(self.path)
            if not holder or holder.get("pid") != self.info["pid"] or holder.get("host") != self.info["host"]:
                logger.error("run lock %s was taken by another trainer: %s", self.path, holder)
                return
            tmp = f"{self.path}.{os.getpid()}.tmp"
            with open(tmp, "wb") as f:
                f.write(self._content())
            os.replace(tmp, self.path)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=HEARTBEAT_S + 1)
            self._thread = None
        holder = _read(self.path)
        if holder and holder.get("pid") == self.info["pid"] and holder.get("host") == self.info["host"]:
            os.remove(self.path)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def watch_parent(*, interval_s: float = 1.0) -> threading.Thread:
    """Start a daemon thread that ends this process (``os._exit``) when its parent process dies."""
    from training.preemption import PARENT_DIED_EXIT_CODE

    parent = os.getppid()

    def run() -> None:
        while True:
            time.sleep(interval_s)
            if os.getppid() != parent:
                logger.error("launcher (pid %d) died: exiting (code %d)", parent, PARENT_DIED_EXIT_CODE)
                logging.shutdown()
                os._exit(PARENT_DIED_EXIT_CODE)

    t = threading.Thread(target=run, name="parent-death-watch", daemon=True)
    t.start()
    return t
