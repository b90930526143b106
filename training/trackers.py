"""Experiment trackers through Accelerate: ``run.trackers`` -> ``Accelerator(log_with=..., project_dir=run.out)``.

``tensorboard`` (the default) writes ``{run.out}/tb``; ``wandb`` and ``mlflow`` get the project/experiment
``run.project`` and the run name ``run.name`` (default: the last folder of ``run.out``). The trainer calls
:func:`start_trackers` once (``accelerator.init_trackers``: the flattened config as hyperparameters),
:class:`training.logging_utils.MetricsLogger` sends the numeric entries of every ``metrics.jsonl`` record through
``accelerator.log`` (training steps at the ``run.log_every_steps`` cadence, every validation), and
``accelerator.end_training()`` closes them.

- ``wandb``: files under ``{run.out}/wandb``; ``WANDB_MODE=offline`` for machines without internet access
  (``wandb sync`` uploads later), ``WANDB_API_KEY`` otherwise.
- ``mlflow``: ``MLFLOW_TRACKING_URI`` when set (a server, ``sqlite:///...``); unset, a file store at
  ``{run.out}/mlruns`` (MLflow 3 refuses file stores unless ``MLFLOW_ALLOW_FILE_STORE=true``, which is then set
  for this process). MLflow metric names may not contain ``@``: ``val/t2v/R@1`` is logged as ``val/t2v/R_at_1``.

A tracker named in ``run.trackers`` whose package is missing is a ConfigError before any work
(:func:`tracker_errors`); Accelerate itself would drop it with a debug message only.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
import re
from typing import Any

__all__ = [
    "TRACKERS",
    "resolve_trackers",
    "tracker_errors",
    "build_trackers",
    "start_trackers",
    "tracker_scalars",
    "mlflow_metric_name",
]

logger = logging.getLogger(__name__)

TRACKERS = ("tensorboard", "wandb", "mlflow")
_MODULES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}
_PIP = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow-skinny"}
TB_FOLDER = "tb"  # {run.out}/tb: Accelerate's TensorBoard tracker writes to {project_dir}/{project_name}


def resolve_trackers(run: Any) -> list[str]:
    """``run.trackers`` with the older switch ``run.tensorboard`` applied (``false`` removes tensorboard,
    ``true`` adds it; ``null``, the default, leaves ``run.trackers`` as it is); order kept, duplicates dropped."""
    names = list(dict.fromkeys(str(n).lower() for n in run.trackers))
    legacy = getattr(run, "tensorboard", None)
    if legacy is False:
        names = [n for n in names if n != "tensorboard"]
    elif legacy is True and "tensorboard" not in names:
        names.insert(0, "tensorboard")
    return names


def tracker_errors(run: Any) -> list[str]:
    """Config errors of ``run.trackers``: unknown names and trackers whose package is not installed."""
    errors = []
    for name in resolve_trackers(run):
        if name not in TRACKERS:
            errors.append(f"run.trackers: {name!r} not in {list(TRACKERS)}")
        elif importlib.util.find_spec(_MODULES[name]) is None:
            errors.append(
                f"run.trackers: {name} needs the {_PIP[name]} package (pip install {_PIP[name]}), "
                "or remove it from run.trackers"
            )
    return errors


def _run_name(run: Any) -> str:
    return run.name or os.path.basename(os.path.abspath(run.out)) or "run"


def build_trackers(run: Any) -> list[Any]:
    """The ``log_with`` list of ``Accelerator`` for ``run``: ``"tensorboard"`` (a name: Accelerate builds it
    with ``project_dir``) and configured instances of Accelerate's W&B and MLflow trackers (their Accelerate
    constructors would take the TensorBoard folder name as project / experiment name)."""
    out: list[Any] = []
    for name in resolve_trackers(run):
        if name == "tensorboard":
            out.append("tensorboard")
        elif name == "wandb":
            from accelerate.tracking import WandBTracker

            out.append(WandBTracker(run.project, dir=os.path.abspath(run.out), name=_run_name(run)))
        elif name == "mlflow":
            out.append(_mlflow_tracker(run))
    return out


def _mlflow_tracker(run: Any) -> Any:
    from accelerate.tracking import MLflowTracker

    class _Tracker(MLflowTracker):
        """Accelerate's MLflow tracker with metric names MLflow accepts (``@`` -> ``_at_``)."""

        def log(self, values: dict, step: int | None = None, **kwargs: Any) -> None:
            super().log({mlflow_metric_name(k): v for k, v in values.items()}, step=step, **kwargs)

    if not os.environ.get("MLFLOW_TRACKING_URI"):
        store = os.path.join(os.path.abspath(run.out), "mlruns")
        os.environ["MLFLOW_TRACKING_URI"] = "file:" + store
        if not os.environ.get("MLFLOW_ALLOW_FILE_STORE"):
            os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
        logger.info("mlflow: MLFLOW_TRACKING_URI is unset; logging to the file store %s", store)
    return _Tracker(experiment_name=run.project, run_name=_run_name(run))


def mlflow_metric_name(key: str) -> str:
    """A metric name MLflow accepts (alphanumerics, ``_ - . : /`` and spaces): ``@`` -> ``_at_``, any other
    character -> ``_``."""
    return re.sub(r"[^\w\-.:/ ]", "_", key.replace("@", "_at_"))


def _hparam(v: Any) -> bool | int | float | str:
    return v if isinstance(v, bool | int | float | str) else str(v)


def start_trackers(accelerator: Any, config: dict[str, Any]) -> None:
    """``accelerator.init_trackers`` with the flattened config (``{"optim.lr": ..., ...}``; lists and None as
    strings) as hyperparameters; a no-op without trackers."""
    if accelerator.log_with:
        hparams = {k: _hparam(v) for k, v in config.items()}
        accelerator.init_trackers(TB_FOLDER, config=hparams)


def tracker_scalars(record: dict[str, Any]) -> dict[str, float]:
    """The tracker values of one ``metrics.jsonl`` record: its finite numbers (not ``step``/``epoch``/booleans),
    named as they are when they hold a ``/`` (``loss/total``, ``val/t2v/R@1``), else ``{event}/{key}``
    (``train/lr``)."""
    prefix = str(record.get("event", "train"))
    out: dict[str, float] = {}
    for k, v in record.items():
        if k in ("step", "epoch") or isinstance(v, bool) or not isinstance(v, int | float):
            continue
        if math.isfinite(v):
            out[k if "/" in k else f"{prefix}/{k}"] = v
    return out
