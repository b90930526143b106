"""Checkpoints: ``accelerator.save_state`` plus our own state, atomic folders, keep-last-N, ``best/``, resume.

A periodic checkpoint ``{run}/checkpoints/step-{NNNNNNNN}/`` holds (every file loads with
``torch.load(..., weights_only=True)``):

- ``pytorch_model.bin``, ``optimizer.bin``, ``scheduler.bin`` (+ ``scaler.pt`` with fp16) from Accelerate
  (``safe_serialization=False``: safetensors files cannot be read by ``torch.load``);
- ``random_states_{rank}.pkl``: Accelerate's RNG states, rewritten so the numpy state is a plain list
  (Accelerate's own file holds a numpy array, which ``weights_only=True`` refuses without extra allow-listed
  globals);
- ``custom_checkpoint_0.pkl`` (trainer progress: epoch, step, best metric) and ``custom_checkpoint_1.pkl``
  (the memory bank), the objects registered with ``accelerator.register_for_checkpointing`` in that order;
- ``data_state_{rank}.pt``: each rank's loader position (``ShardLoader.state_dict()``), so a resumed run
  continues with the exact next batch;
- ``config.yaml``: the run's resolved config.

Folders are written under a ``.tmp`` name and renamed when every rank has finished, so a run killed while
saving leaves no half checkpoint that ``latest`` could pick. ``best/`` holds only ``pytorch_model.bin``
(unwrapped keys), ``config.yaml`` and ``selection.json`` (metric, value, step, split; selection on test is
labelled as such).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
from dataclasses import asdict, dataclass
from typing import Any

import torch

from training.config import TrainConfig, save_config

__all__ = [
    "TrainerProgress",
    "checkpoint_dir",
    "list_checkpoints",
    "latest_checkpoint",
    "resolve_resume",
    "save_checkpoint",
    "load_checkpoint",
    "save_best",
    "load_model_weights",
    "make_rng_file_safe",
]

logger = logging.getLogger(__name__)

_STEP_DIR = re.compile(r"^step-(\d{8})$")
MODEL_FILE = "pytorch_model.bin"


@dataclass
class TrainerProgress:
    """Where training stands; registered for checkpointing (state is plain numbers)."""

    epoch: int = 0  # current epoch (0-based)
    step: int = 0  # training batches done in total (the logged ``step``)
    step_in_epoch: int = 0  # batches of the current epoch already consumed
    opt_step: int = 0  # optimiser steps done
    best_metric: float = float("nan")  # best value of eval.select_metric so far (nan: none yet)
    best_step: int = -1

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k, v in state.items():
            if hasattr(self, k):
                setattr(self, k, type(getattr(self, k))(v))

    def is_better(self, value: float, mode: str) -> bool:
        if not math.isfinite(value):
            return False
        if math.isnan(self.best_metric):
            return True
        return value > self.best_metric if mode == "max" else value < self.best_metric


def checkpoint_dir(run_dir: str) -> str:
    return os.path.join(run_dir, "checkpoints")


def list_checkpoints(run_dir: str) -> list[str]:
    """Complete periodic checkpoints of a run, oldest first."""
    root = checkpoint_dir(run_dir)
    if not os.path.isdir(root):
        return []
    names = sorted(n for n in os.listdir(root) if _STEP_DIR.match(n))
    return [os.path.join(root, n) for n in names]


def latest_checkpoint(run_dir: str) -> str | None:
    ckpts = list_checkpoints(run_dir)
    return ckpts[-1] if ckpts else None


def resolve_resume(resume: str, run_dir: str) -> str:
    """``latest`` -> the newest complete checkpoint of ``run_dir``; a path -> that folder (checked)."""
    if resume == "latest":
        path = latest_checkpoint(run_dir)
        if path is None:
            raise FileNotFoundError(f"--resume latest: no checkpoint under {checkpoint_dir(run_dir)}")
        return path
    if not os.path.isdir(resume):
        raise FileNotFoundError(f"--resume {resume!r}: not a checkpoint folder")
    if not os.path.exists(os.path.join(resume, MODEL_FILE)):
        raise FileNotFoundError(f"--resume {resume!r}: no {MODEL_FILE} inside (not a checkpoint folder)")
    return resume


def make_rng_file_safe(path: str) -> None:
    """Rewrite Accelerate's RNG file with the numpy state as plain lists so ``weights_only=True`` loads it."""
    from accelerate.utils import load as accel_load

    states = accel_load(path)
    np_state = states.get("numpy_random_seed")
    if np_state is not None:
        name, keys, pos, has_gauss, cached = np_state
        states["numpy_random_seed"] = (
            str(name),
            [int(k) for k in keys],
            int(pos),
            int(has_gauss),
            float(cached),
        )
    torch.save(states, path)


def save_checkpoint(
    accelerator: Any,
    run_dir: str,
    *,
    step: int,
    cfg: TrainConfig,
    loader_state: dict[str, Any] | None,
    keep_last: int,
) -> str:
    """Save everything needed to resume at ``step`` into ``checkpoints/step-{step:08d}`` (collective call)."""
    root = checkpoint_dir(run_dir)
    final = os.path.join(root, f"step-{step:08d}")
    tmp = final + ".tmp"
    if accelerator.is_main_process:
        os.makedirs(root, exist_ok=True)
        if os.path.exists(tmp):
            shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(tmp, safe_serialization=False)
    rank = accelerator.process_index
    make_rng_file_safe(os.path.join(tmp, f"random_states_{rank}.pkl"))
    torch.save(loader_state or {}, os.path.join(tmp, f"data_state_{rank}.pt"))
    if accelerator.is_main_process:
        save_config(cfg, os.path.join(tmp, "config.yaml"))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if os.path.exists(final):
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in list_checkpoints(run_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
        logger.info("checkpoint saved: %s", final)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator: Any, path: str) -> dict[str, Any] | None:
    """Restore model/optimizer/scheduler/scaler/RNG and registered objects; return this rank's loader
    state."""
    accelerator.load_state(path)
    data_file = os.path.join(path, f"data_state_{accelerator.process_index}.pt")
    if not os.path.exists(data_file):
        raise FileNotFoundError(
            f"{path}: no {os.path.basename(data_file)} "
            "(checkpoint written with a different number of processes?)"
        )
    state = torch.load(data_file, map_location="cpu", weights_only=True)
    logger.info("resumed from %s", path)
    return state or None


def save_best(
    accelerator: Any,
    model: torch.nn.Module,
    run_dir: str,
    *,
    cfg: TrainConfig,
    selection: dict[str, Any],
) -> str:
    """Write ``best/`` (model weights, config, selection.json) atomically; collective call, rank 0 writes."""
    final = os.path.join(run_dir, "best")
    state = accelerator.get_state_dict(model)  # unwrapped keys, gathered to CPU on the main process
    if accelerator.is_main_process:
        tmp = final + ".tmp"
        if os.path.exists(tmp):
            shutil.rmtree(tmp)
        os.makedirs(tmp)
        torch.save({k: v.detach().cpu() for k, v in state.items()}, os.path.join(tmp, MODEL_FILE))
        save_config(cfg, os.path.join(tmp, "config.yaml"))
        with open(os.path.join(tmp, "selection.json"), "w", encoding="utf-8") as f:
            json.dump(selection, f, indent=2, sort_keys=True)
        if os.path.exists(final):
            shutil.rmtree(final)
        os.replace(tmp, final)
        logger.info(
            "best checkpoint (%s = %.4f at step %s) saved: %s",
            selection.get("metric"),
            selection.get("value", float("nan")),
            selection.get("step"),
            final,
        )
    accelerator.wait_for_everyone()
    return final


def load_model_weights(path: str) -> dict[str, torch.Tensor]:
    """Model state dict from a checkpoint folder or a ``pytorch_model.bin`` file (``weights_only=True``).

    Keys saved through a DDP wrapper (``module.`` prefix) are unwrapped.
    """
    file = os.path.join(path, MODEL_FILE) if os.path.isdir(path) else path
    if not os.path.exists(file):
        raise FileNotFoundError(f"no model weights at {file}")
    state = torch.load(file, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{file}: expected a state dict, got {type(state).__name__}")
    return {k.removeprefix("module."): v for k, v in state.items()}
