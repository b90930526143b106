"""Summary of a trainer run's ``metrics.jsonl`` for the GPU check: throughput, peak GPU memory, data-wait fraction.

    python benchmarks/gpu_check_summary.py RUN/metrics.jsonl [--skip 10] [--steps 50]

The measured window is training steps ``skip+1 .. skip+steps`` (the first ``skip`` steps, with CUDA/cuBLAS
start-up, are left out). Per step the trainer logs ``data_wait_s`` (blocked on the loader, including the
worker start-up on each epoch's first step) and ``compute_s`` (host-to-device copy, forward, losses, backward,
optimiser, bank update, ending with a CUDA synchronise), and ``time`` (wall clock at the step's end).

* ``samples_per_s`` = sum of batch sizes / sum of (data_wait_s + compute_s): the step loop itself. The memory
  bank pre-fill at each epoch start and the epoch-end checkpoint run between steps and are NOT in it;
* ``wall_samples_per_s`` = the same samples / wall time from the end of step ``skip`` to the end of the last
  measured step: everything included (logging, epoch-start bank pre-fill, epoch-end checkpoints);
* ``data_wait_frac`` = sum of data_wait_s / sum of (data_wait_s + compute_s); ``..._excl_epoch_start`` leaves out
  each epoch's first step (loader worker start-up, paid once per epoch);
* ``epoch_starts`` = steps of the window that start an epoch (each preceded by a bank pre-fill when the bank is on);
* ``peak_mem_gb`` / ``peak_reserved_gb`` = the largest ``gpu_mem_peak_gb`` / ``gpu_mem_reserved_peak_gb`` logged
  (``torch.cuda.max_memory_allocated`` / ``max_memory_reserved`` since the process started), None without CUDA.

Ends with ``RESULT gpu_samples_per_s=<f> gpu_peak_mem_gb=<f> gpu_data_wait_frac=<f> ...``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from typing import Any

__all__ = ["load_train_records", "summarise", "result_line", "main"]


def load_train_records(path: str) -> list[dict[str, Any]]:
    """The ``"event": "train"`` records of a metrics JSONL file, in file order."""
    from training.logging_utils import read_metrics

    return read_metrics(path, "train")


def _epoch_start_flags(records: list[dict[str, Any]]) -> list[bool]:
    """True for each record whose epoch differs from the previous record's (the first record: True)."""
    return [i == 0 or r["epoch"] != records[i - 1]["epoch"] for i, r in enumerate(records)]


def summarise(records: list[dict[str, Any]], *, skip: int = 10, steps: int = 50) -> dict[str, Any]:
    """Statistics of steps ``skip+1 .. skip+steps`` of ``records`` (see the module doc for each key).

    Raises ValueError when the run logged fewer than ``skip + 1`` steps; a shorter window than ``steps`` is
    reported through ``steps`` (the count actually measured).
    """
    if skip < 0 or steps < 1:
        raise ValueError(f"skip must be >= 0 and steps >= 1, got skip={skip}, steps={steps}")
    if len(records) <= skip:
        raise ValueError(f"only {len(records)} training steps logged; nothing left after skipping {skip}")
    starts = _epoch_start_flags(records)
    window = records[skip : skip + steps]
    flags = starts[skip : skip + steps]
    batch = [len(r["sample_index"]) for r in window]
    wait = [float(r["data_wait_s"]) for r in window]
    step = [float(r["data_wait_s"]) + float(r["compute_s"]) for r in window]
    keep = [i for i, f in enumerate(flags) if not f]
    out: dict[str, Any] = {
        "steps": len(window),
        "skipped": skip,
        "first_step": window[0]["step"],
        "last_step": window[-1]["step"],
        "samples": sum(batch),
        "samples_per_s": sum(batch) / sum(step),
        "data_wait_frac": sum(wait) / sum(step),
        "epoch_starts": sum(flags),
        "median_step_s": statistics.median(step),
        "median_compute_s": statistics.median(float(r["compute_s"]) for r in window),
        "median_data_wait_s": statistics.median(wait),
        "max_data_wait_s": max(wait),
    }
    if keep:
        out["samples_per_s_excl_epoch_start"] = sum(batch[i] for i in keep) / sum(step[i] for i in keep)
        out["data_wait_frac_excl_epoch_start"] = sum(wait[i] for i in keep) / sum(step[i] for i in keep)
    if skip >= 1 and all("time" in r for r in (records[skip - 1], window[-1])):
        wall = float(window[-1]["time"]) - float(records[skip - 1]["time"])
        out["wall_s"] = wall
        out["wall_samples_per_s"] = sum(batch) / wall if wall > 0 else float("nan")
    peaks = [r["gpu_mem_peak_gb"] for r in records if r.get("gpu_mem_peak_gb") is not None]
    reserved = [
        r["gpu_mem_reserved_peak_gb"] for r in records if r.get("gpu_mem_reserved_peak_gb") is not None
    ]
    out["peak_mem_gb"] = max(peaks) if peaks else None
    out["peak_reserved_gb"] = max(reserved) if reserved else None
    out["bank_size_max"] = max(int(r.get("bank_size", 0)) for r in window)
    out["skipped_samples"] = window[-1].get("skipped", {})
    return out


def _fmt(v: Any) -> str:
    if v is None:
        return "none"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def result_line(s: dict[str, Any]) -> str:
    """``RESULT gpu_samples_per_s=... gpu_peak_mem_gb=... gpu_data_wait_frac=... ...`` of a summary."""
    keys = [
        ("gpu_samples_per_s", "samples_per_s"),
        ("gpu_peak_mem_gb", "peak_mem_gb"),
        ("gpu_data_wait_frac", "data_wait_frac"),
        ("gpu_wall_samples_per_s", "wall_samples_per_s"),
        ("gpu_data_wait_frac_excl_epoch_start", "data_wait_frac_excl_epoch_start"),
        ("gpu_peak_reserved_gb", "peak_reserved_gb"),
        ("steps", "steps"),
        ("skipped_warmup", "skipped"),
        ("epoch_starts", "epoch_starts"),
        ("bank_size", "bank_size_max"),
    ]
    return "RESULT " + " ".join(f"{k}={_fmt(s.get(src))}" for k, src in keys)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("metrics", help="metrics.jsonl of the run")
    ap.add_argument("--skip", type=int, default=10, help="warm-up steps left out")
    ap.add_argument("--steps", type=int, default=50, help="steps measured")
    a = ap.parse_args(argv)
    try:
        s = summarise(load_train_records(a.metrics), skip=a.skip, steps=a.steps)
    except (OSError, ValueError, KeyError) as e:
        print(f"gpu_check_summary: {a.metrics}: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    if s["steps"] < a.steps:
        print(f"WARNING: only {s['steps']} steps after the {a.skip} skipped (asked for {a.steps})")
    for k, v in s.items():
        print(f"{k:<34}{_fmt(v)}")
    print(result_line(s))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
