"""One logging setup for the trainer and scorer: console/file logging, a metrics JSONL file, the trackers.

Only rank 0 writes metrics and tracker values (``training.trackers``); every rank logs warnings and errors to the console.
``metrics.jsonl`` has one JSON object per line: ``{"event": "train", "step": ..., "epoch": ..., "loss/total":
..., "lr": ..., "data_wait_s": ..., "compute_s": ..., "samples_per_s": ..., "skipped": {...}, "sample_index":
[...], "time": ...}`` for every training batch (``time``: wall clock at the step's end; on CUDA also
``gpu_mem_peak_gb`` / ``gpu_mem_reserved_peak_gb``, the peaks so far), and ``{"event": "val", "step": ...,
"val/t2v/R@1": ...}`` for every validation.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
from collections.abc import Callable
from typing import Any

__all__ = ["setup_logging", "MetricsLogger", "read_metrics", "truncate_metrics", "cuda_memory_stats"]

_FORMAT = "%(asctime)s %(levelname)s [rank %(rank)s] %(name)s: %(message)s"


class _RankFilter(logging.Filter):
    def __init__(self, rank: int) -> None:
        super().__init__()
        self.rank = rank

    def filter(self, record: logging.LogRecord) -> bool:
        record.rank = self.rank
        return True


class _ConsoleHandler(logging.StreamHandler):
    """stderr handler that steps around a live tqdm bar: the bar is cleared, the line written, the bar redrawn
    (without it a log line would be glued to the end of the bar)."""

    def emit(self, record: logging.LogRecord) -> None:
        tqdm_module = sys.modules.get("tqdm")
        if tqdm_module is None:  # no bar can exist
            super().emit(record)
            return
        with tqdm_module.tqdm.external_write_mode(file=self.stream):
            super().emit(record)


def setup_logging(level: str = "INFO", *, rank: int = 0, log_file: str | None = None) -> None:
    """Configure the root logger once: INFO on rank 0 (WARNING on other ranks) to stderr, plus
    ``log_file``."""
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_nr_handler", False):
            root.removeHandler(h)
            h.close()
    lvl = getattr(logging, level.upper(), logging.INFO)
    console = _ConsoleHandler(sys.stderr)
    console.setLevel(lvl if rank == 0 else max(lvl, logging.WARNING))
    handlers: list[logging.Handler] = [console]
    if log_file is not None and rank == 0:
        os.makedirs(os.path.dirname(os.path.abspath(log_file)), exist_ok=True)
        fh = logging.FileHandler(log_file, encoding="utf-8")
        fh.setLevel(lvl)
        handlers.append(fh)
    for h in handlers:
        h.setFormatter(logging.Formatter(_FORMAT))
        h.addFilter(_RankFilter(rank))
        h._nr_handler = True  # type: ignore[attr-defined]
        root.addHandler(h)
    root.setLevel(lvl)
    for noisy in ("botocore", "s3fs", "fsspec", "aiobotocore", "urllib3", "PIL", "matplotlib", "accelerate"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _jsonable(v: Any) -> Any:
    if hasattr(v, "item") and getattr(v, "ndim", 1) == 0:
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    return v


class MetricsLogger:
    """Append-only ``metrics.jsonl`` plus the experiment trackers (``accelerator.log``); a no-op on ranks other
    than 0."""

    def __init__(
        self, run_dir: str, *, enabled: bool = True, tracker: Callable[..., Any] | None = None
    ) -> None:
        """``tracker``: ``accelerator.log`` (called as ``tracker(values, step=step)``) or None (no trackers)."""
        self.enabled = enabled
        self.path = os.path.join(run_dir, "metrics.jsonl")
        self._file = None
        self._tracker = tracker
        if not enabled:
            return
        os.makedirs(run_dir, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def log(self, record: dict[str, Any], *, track: bool = True) -> None:
        """Write one JSON line; with ``track`` its numeric entries also go to the trackers at ``record["step"]``
        (:func:`training.trackers.tracker_scalars`)."""
        if not self.enabled or self._file is None:
            return
        self._file.write(json.dumps(_jsonable(record), sort_keys=False) + "\n")
        self._file.flush()
        if track and self._tracker is not None and "step" in record:
            from training.trackers import tracker_scalars

            values = tracker_scalars(record)
            if values:
                self._tracker(values, step=int(record["step"]))

    def close(self) -> None:
        """Close ``metrics.jsonl`` (the trackers are closed by ``accelerator.end_training()``)."""
        if self._file is not None:
            self._file.close()
            self._file = None


def cuda_memory_stats(device: Any) -> dict[str, float]:
    """Peak GPU memory of this process on ``device`` since start (or the last
    ``torch.cuda.reset_peak_memory_stats``), in GiB: ``{"gpu_mem_peak_gb": max_memory_allocated,
    "gpu_mem_reserved_peak_gb": max_memory_reserved}``; ``{}`` for a non-CUDA device."""
    import torch

    device = torch.device(device)
    if device.type != "cuda":
        return {}
    gib = float(1 << 30)
    return {
        "gpu_mem_peak_gb": round(torch.cuda.max_memory_allocated(device) / gib, 4),
        "gpu_mem_reserved_peak_gb": round(torch.cuda.max_memory_reserved(device) / gib, 4),
    }


def _parse_lines(path: str) -> list[tuple[str, dict[str, Any]]]:
    """``(line, record)`` of every line; a cut-off LAST line (a run killed mid-write) is warned about and
    dropped, a bad line elsewhere is a ValueError naming ``path:line``."""
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = [(n, ln) for n, ln in enumerate(f, 1) if ln.strip()]
    out = []
    for i, (n, line) in enumerate(lines):
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            if i == len(lines) - 1:
                logging.getLogger(__name__).warning(
                    "%s:%d: cut-off last line dropped (%s)", path, n, line.strip()[:60]
                )
                break
            raise ValueError(f"{path}:{n}: not a JSON line ({e})") from e
        out.append((line if line.endswith("\n") else line + "\n", rec))
    return out


def read_metrics(path: str, event: str | None = "train") -> list[dict[str, Any]]:
    """All records of ``metrics.jsonl`` (optionally only one ``event`` kind), in file order; a cut-off last
    line is dropped with a warning."""
    return [rec for _, rec in _parse_lines(path) if event is None or rec.get("event") == event]


def truncate_metrics(path: str, last_step: int) -> int:
    """Drop records with ``step > last_step`` (a resumed run re-logs them) and a cut-off last line (warned);
    returns the number of complete records dropped."""
    if not os.path.exists(path):
        return 0
    records = _parse_lines(path)
    keep = [ln for ln, rec in records if rec.get("step", 0) <= last_step]
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(keep)
    os.replace(tmp, path)
    return len(records) - len(keep)
