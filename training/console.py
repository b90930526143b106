"""What the operator reads while and after training: the progress of every step and the end-of-run summary.

- stderr is a tty (rank 0, ``run.progress``): one tqdm bar over the whole run (run-level ETA, loss, samples/s).
- otherwise (a cluster log file): no bar and no carriage return; every ``run.log_every_steps`` steps one line
  ``step S/TOTAL epoch E loss L lr LR X samples/s (Y per process) data wait W% ETA H:MM:SS``.
- at the end :func:`final_report`: state, steps, wall time, last loss, best metric and its step, the checkpoint,
  the files of the run and the next commands (score, then evaluate).

Every step's record also goes to ``metrics.jsonl`` and, at the ``run.log_every_steps`` cadence, to the trackers
(:class:`training.logging_utils.MetricsLogger`).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any

__all__ = ["hms", "progress_bar", "StepLog", "final_report"]

logger = logging.getLogger("training.train")


def hms(seconds: float) -> str:
    """``H:MM:SS`` of a duration in seconds (rounded)."""
    s = int(round(max(seconds, 0.0)))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def progress_bar(enabled: bool, total: int, initial: int) -> Any:
    """One tqdm bar over the whole run (``total`` batches, from ``initial``: a run-level ETA) when ``enabled``
    (rank 0 and ``run.progress``) and stderr is a tty; ``None`` otherwise (plain log lines)."""
    if not (enabled and sys.stderr.isatty()):
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="train", dynamic_ncols=True)


class StepLog:
    """Per-step console output and the data-wait / throughput bookkeeping of one run (rank 0 shows it)."""

    def __init__(self, *, total: int, step0: int, every: int, num_processes: int, bar: Any = None) -> None:
        """``total``: batches of the whole run; ``step0``: the step this process started at (resume);
        ``every``: ``run.log_every_steps``; ``bar``: :func:`progress_bar`'s bar or None."""
        self.t0 = time.perf_counter()
        self.total, self.step0, self.every, self.world, self.bar = total, step0, every, num_processes, bar
        self.wait = self.busy = 0.0

    def elapsed(self) -> float:
        """Seconds since the run (this process) started."""
        return time.perf_counter() - self.t0

    def step(self, record: dict[str, Any]) -> None:
        """Account one training step's ``metrics.jsonl`` record; update the bar or, every ``every`` steps, log
        one plain line."""
        step = int(record["step"])
        self.wait += record["data_wait_s"]
        self.busy += record["data_wait_s"] + record["compute_s"]
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{record['loss/total']:.4f}", sps=f"{record['samples_per_s']:.1f}")
        elif step % self.every == 0:
            done = max(step - self.step0, 1)
            eta = self.elapsed() / done * max(self.total - step, 0)
            logger.info(
                "step %d/%d epoch %d loss %.5f lr %.3g %.1f samples/s (%.1f per process) data wait %.0f%% ETA %s",
                step,
                self.total,
                record["epoch"],
                record["loss/total"],
                record["lr"],
                record["samples_per_s"],
                record["samples_per_s"] / max(self.world, 1),
                100.0 * self.wait / max(self.busy, 1e-9),
                hms(eta),
            )

    def close(self) -> None:
        """Close the bar (if any)."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def final_report(cfg: Any, summary: dict[str, Any], wall_s: float, trackers: list[str] | None = None) -> str:
    """The end-of-run summary an operator reads (logged at INFO and returned): state, steps and wall time, the
    last loss, the best metric and its step, the latest checkpoint, the files of the run and the next commands
    (score the test split with the best weights, then evaluate the scores)."""
    from training.checkpoint import latest_checkpoint

    run = cfg.run.out
    best = (
        f"{cfg.eval.select_metric} = {summary['best_metric']:.4f} at step {summary['best_step']} "
        f"({os.path.join(run, 'best')})"
        if summary["best_step"] >= 0
        else "none (no validation)"
    )
    state = "PREEMPTED (requeue with --resume auto)" if summary["preempted"] else "finished"
    where = {"tensorboard": os.path.join(run, "tb"), "wandb": os.path.join(run, "wandb")}
    where["mlflow"] = os.environ.get("MLFLOW_TRACKING_URI") or "MLFLOW_TRACKING_URI"
    tracked = ", ".join(f"{t} {where.get(t, '')}".strip() for t in trackers or []) or "none"
    scores, report = os.path.join(run, "test_scores.npz"), os.path.join(run, "eval")
    lines = [
        f"training {state}: {summary['steps']} steps, {summary['epochs_done']} epochs, wall time {hms(wall_s)}",
        f"  last loss      {summary.get('loss/total', float('nan')):.5f}",
        f"  best           {best}",
        f"  checkpoint     {latest_checkpoint(run)}",
        f"  metrics        {os.path.join(run, 'metrics.jsonl')}",
        f"  log            {os.path.join(run, 'train.log')} (state: {os.path.join(run, 'status.json')})",
        f"  trackers       {tracked}",
        f"  next           python -m training.score --run {run} --split test --out {scores} --metrics",
        f"  then           python -m eval {scores} --out {report}  (writes {os.path.join(report, 'report.md')})",
    ]
    text = "\n".join(lines)
    logger.info("%s", text)
    return text
