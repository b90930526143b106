"""Checkpoints with no pickle anywhere: safetensors + JSON + ``weights_only`` tensors, atomic, keep-last-N.

A periodic checkpoint ``{run}/checkpoints/step-{NNNNNNNN}/`` holds:

- ``pytorch_model.bin``: the unwrapped model state dict (``torch.save``; loads with ``weights_only=True``, the
  format ``training.score`` and ``best/`` use);
- ``optimizer.pt``: the optimiser state dict (tensors, numbers, lists; loaded with ``weights_only=True``);
- ``scheduler.json`` (and ``scaler.json`` with fp16): the schedule's / grad scaler's state (plain numbers);
- ``trainer.json``: progress (epoch, step, step in epoch, optimiser steps, best metric), Accelerate's
  gradient-accumulation step counter and the world size;
- ``bank.safetensors``: the memory bank (identical on every rank, written by rank 0);
- ``rng_{rank}.safetensors``: each rank's torch CPU/CUDA generator states as uint8 tensors, the numpy MT19937 key as
  an int64 tensor, the rest (python ``random`` state, numpy position / gauss cache) as JSON metadata;
- ``data_state_{rank}.json``: each rank's loader position (``ShardLoader.state_dict()``, a JSON-safe dict);
- ``config.yaml``: the resolved config (read with ``yaml.safe_load``);
- ``manifest.json``: written LAST (after every rank has finished), it lists every file with its size. A folder
  without it, or with a listed file missing or of another size, is *incomplete*.

Why our own writer instead of ``accelerator.save_state``/``load_state``: Accelerate's loader unpickles
``custom_checkpoint_N.pkl`` with ``weights_only=False`` and its RNG file holds numpy objects, so a crafted checkpoint
could run code at ``--resume``. Here nothing is read except the files the manifest lists, each with a reader
that cannot execute code (JSON, YAML safe_load, safetensors, ``torch.load(weights_only=True)``); a file that
does not parse is a :class:`CheckpointError` naming it. Legacy folders (Accelerate's ``*.pkl`` files, no manifest)
are refused, not read.

Folders are written under a ``.tmp`` name and renamed when every rank has finished. ``best/`` holds only
``pytorch_model.bin`` (unwrapped keys), ``config.yaml`` and ``selection.json``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import re
import shutil
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from training.config import TrainConfig, save_config

__all__ = [
    "CheckpointError",
    "TrainerProgress",
    "checkpoint_dir",
    "list_checkpoints",
    "latest_checkpoint",
    "checkpoint_problem",
    "resolve_resume",
    "save_checkpoint",
    "load_checkpoint",
    "save_best",
    "load_model_weights",
    "MODEL_FILE",
    "MANIFEST",
    "FORMAT_VERSION",
]

logger = logging.getLogger(__name__)

_STEP_DIR = re.compile(r"^step-(\d{8})$")
MODEL_FILE = "pytorch_model.bin"
MANIFEST = "manifest.json"
FORMAT_VERSION = 2


class CheckpointError(RuntimeError):
    """A checkpoint folder that cannot be resumed from (incomplete, legacy pickle format, unreadable file)."""


@dataclass
class TrainerProgress:
    """Where training stands (plain numbers, saved as JSON in ``trainer.json``)."""

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
    """Periodic checkpoint folders of a run (complete or not; ``.tmp`` excluded), oldest first."""
    root = checkpoint_dir(run_dir)
    if not os.path.isdir(root):
        return []
    names = sorted(n for n in os.listdir(root) if _STEP_DIR.match(n))
    return [os.path.join(root, n) for n in names]


def _read_json(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not a readable JSON file ({e})") from e


def checkpoint_problem(path: str) -> str | None:
    """Why ``path`` is not a complete checkpoint of this format (``None``: complete). Reads only
    ``manifest.json`` (JSON) and file sizes."""
    if not os.path.isdir(path):
        return "not a folder"
    man = os.path.join(path, MANIFEST)
    if not os.path.exists(man):
        legacy = [n for n in os.listdir(path) if n.endswith(".pkl")]
        if legacy:
            return f"written by an older trainer (pickle files {sorted(legacy)[:3]}; not read for safety)"
        return f"no {MANIFEST} (the save did not finish)"
    try:
        manifest = _read_json(man)
    except CheckpointError as e:
        return str(e)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_VERSION:
        return f"{MANIFEST}: not a format-{FORMAT_VERSION} checkpoint manifest"
    for name, size in manifest.get("files", {}).items():
        if "/" in name or name.startswith("."):
            return f"{MANIFEST}: bad file name {name!r}"
        fp = os.path.join(path, name)
        if not os.path.exists(fp):
            return f"{name} is missing"
        if os.path.getsize(fp) != size:
            return f"{name} has {os.path.getsize(fp)} bytes, the manifest says {size}"
    return None


def latest_checkpoint(run_dir: str) -> str | None:
    """The newest COMPLETE checkpoint; incomplete newer ones are skipped with a warning."""
    for path in reversed(list_checkpoints(run_dir)):
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        logger.warning("skipping incomplete checkpoint %s: %s; trying the previous one", path, problem)
    return None


def resolve_resume(resume: str | None, run_dir: str) -> str | None:
    """``--resume`` -> the checkpoint folder to load, or ``None`` to start fresh.

    ``auto`` / ``latest``: the newest complete checkpoint of ``run_dir`` (incomplete newer ones are skipped with a
    warning); none at all -> ``None`` (a fresh start, so one launch line serves the first start and every requeue).
    A path: that folder, which must be complete (CheckpointError otherwise).
    """
    if not resume:
        return None
    if resume in ("auto", "latest"):
        path = latest_checkpoint(run_dir)
        if path is None:
            logger.warning(
                "--resume %s: no complete checkpoint under %s; starting fresh",
                resume,
                checkpoint_dir(run_dir),
            )
        return path
    problem = checkpoint_problem(resume)
    if problem is not None:
        raise CheckpointError(f"--resume {resume}: not a complete checkpoint ({problem})")
    return resume


# -- RNG states as tensors --------------------------------------------------------------------------------------
def _rng_tensors() -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """This process's python / numpy / torch (CPU and every CUDA device) generator states: tensors + JSON
    metadata (safetensors metadata is ``str -> str``)."""
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_cached = np.random.get_state()
    tensors = {
        "torch_cpu": torch.get_rng_state().clone(),
        "numpy_keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64).copy()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda_{i}"] = s.clone()
    meta = {
        "python": json.dumps([py_version, list(py_state), py_gauss]),
        "numpy": json.dumps([str(np_name), int(np_pos), int(np_has_gauss), float(np_cached)]),
    }
    return tensors, meta


def _set_rng(tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> None:
    version, state, gauss = json.loads(meta["python"])
    random.setstate((int(version), tuple(int(x) for x in state), gauss))
    name, pos, has_gauss, cached = json.loads(meta["numpy"])
    keys = tensors["numpy_keys"].numpy().astype(np.uint32)
    np.random.set_state((name, keys, int(pos), int(has_gauss), float(cached)))
    torch.set_rng_state(tensors["torch_cpu"])
    cuda = sorted(k for k in tensors if k.startswith("torch_cuda_"))
    if cuda and torch.cuda.is_available():
        states = [tensors[f"torch_cuda_{i}"] for i in range(len(cuda))]
        torch.cuda.set_rng_state_all(states[: torch.cuda.device_count()])


# -- save ---------------------------------------------------------------------------------------------------
def _save_safetensors(
    tensors: dict[str, torch.Tensor], path: str, metadata: dict[str, str] | None = None
) -> None:
    """safetensors bytes written with a plain ``open`` (mode 0644 under the usual umask): ``save_file`` creates
    its files 0600, which colleagues on a shared file system cannot read."""
    from safetensors.torch import save

    with open(path, "wb") as f:
        f.write(save(tensors, metadata=metadata))


def _json_dump(obj: Any, path: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1, sort_keys=True, allow_nan=True)


def save_checkpoint(
    accelerator: Any,
    run_dir: str,
    *,
    step: int,
    cfg: TrainConfig,
    model: torch.nn.Module,
    optimizer: Any,
    scheduler: Any,
    progress: TrainerProgress,
    bank: Any,
    loader_state: dict[str, Any] | None,
    keep_last: int,
) -> str:
    """Save everything needed to resume at ``step`` into ``checkpoints/step-{step:08d}`` (collective call).

    Rank 0 writes the shared state (model, optimiser, schedule, progress, bank, config); every rank writes its
    RNG and loader position; rank 0 writes ``manifest.json`` after a barrier and renames the folder.
    """
    root = checkpoint_dir(run_dir)
    final = os.path.join(root, f"step-{step:08d}")
    tmp = final + ".tmp"
    rank = accelerator.process_index
    if accelerator.is_main_process:
        os.makedirs(root, exist_ok=True)
        if os.path.exists(tmp):
            shutil.rmtree(tmp)
        os.makedirs(tmp)
    accelerator.wait_for_everyone()
    model_state = accelerator.get_state_dict(model)  # collective under some backends; unwrapped keys
    if accelerator.is_main_process:
        torch.save({k: v.detach().cpu() for k, v in model_state.items()}, os.path.join(tmp, MODEL_FILE))
        torch.save(optimizer.state_dict(), os.path.join(tmp, "optimizer.pt"))
        _json_dump(scheduler.state_dict(), os.path.join(tmp, "scheduler.json"))
        if getattr(accelerator, "scaler", None) is not None:
            _json_dump(accelerator.scaler.state_dict(), os.path.join(tmp, "scaler.json"))
        trainer = {
            "progress": progress.state_dict(),
            "accelerate_step": int(getattr(accelerator, "step", 0)),
            "world_size": accelerator.num_processes,
        }
        _json_dump(trainer, os.path.join(tmp, "trainer.json"))
        bank_state = {k: v.detach().cpu().contiguous().clone() for k, v in bank.state_dict().items()}
        _save_safetensors(bank_state, os.path.join(tmp, "bank.safetensors"))
        save_config(cfg, os.path.join(tmp, "config.yaml"))
    tensors, meta = _rng_tensors()
    _save_safetensors(tensors, os.path.join(tmp, f"rng_{rank}.safetensors"), metadata=meta)
    try:
        _json_dump(loader_state or {}, os.path.join(tmp, f"data_state_{rank}.json"))
    except TypeError as e:
        raise TypeError(f"the loader's state_dict() is not JSON-serialisable: {e}") from e
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        files = {n: os.path.getsize(os.path.join(tmp, n)) for n in sorted(os.listdir(tmp))}
        _json_dump(
            {"format": FORMAT_VERSION, "step": step, "world_size": accelerator.num_processes, "files": files},
            os.path.join(tmp, MANIFEST),
        )
        if os.path.exists(final):
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in list_checkpoints(run_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
        logger.info("checkpoint saved: %s", final)
    accelerator.wait_for_everyone()
    return final


# -- load ---------------------------------------------------------------------------------------------------
def _torch_load(path: str) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError, RuntimeError (not a zip), EOFError ...
        raise CheckpointError(
            f"{path}: refused by torch.load(weights_only=True) ({type(e).__name__}: {e})"
        ) from e


def _safetensors_load(path: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except Exception as e:  # SafetensorError, OSError
        raise CheckpointError(f"{path}: not a readable safetensors file ({type(e).__name__}: {e})") from e


def load_checkpoint(
    accelerator: Any,
    path: str,
    *,
    model: torch.nn.Module,
    optimizer: Any,
    scheduler: Any,
    progress: TrainerProgress,
    bank: Any,
) -> dict[str, Any] | None:
    """Restore model, optimiser, schedule, scaler, progress, bank and this rank's RNG from ``path``; return this
    rank's loader state (at an epoch boundary the loader's ``layout_state()``, no position; ``None`` for an
    epoch-boundary checkpoint written before that, whose loader state is empty). Nothing is unpickled; a file that
    does not parse raises :class:`CheckpointError` naming it. Every rank reads the files itself (a shared file
    system)."""
    problem = checkpoint_problem(path)
    if problem is not None:
        raise CheckpointError(f"{path}: not a complete checkpoint ({problem})")
    files = _read_json(os.path.join(path, MANIFEST))["files"]
    rank = accelerator.process_index

    def need(name: str) -> str:
        if name not in files:
            raise CheckpointError(
                f"{path}: no {name} (written with {len(_ranks(files))} processes, resumed with "
                f"{accelerator.num_processes}?)"
                if name.startswith(("rng_", "data_state_"))
                else f"{path}: no {name}"
            )
        return os.path.join(path, name)

    trainer = _read_json(need("trainer.json"))
    state = _torch_load(need(MODEL_FILE))
    if not isinstance(state, dict):
        raise CheckpointError(f"{need(MODEL_FILE)}: expected a state dict, got {type(state).__name__}")
    accelerator.unwrap_model(model).load_state_dict({k.removeprefix("module."): v for k, v in state.items()})
    optimizer.load_state_dict(_torch_load(need("optimizer.pt")))
    scheduler.load_state_dict(_read_json(need("scheduler.json")))
    if getattr(accelerator, "scaler", None) is not None and "scaler.json" in files:
        accelerator.scaler.load_state_dict(_read_json(need("scaler.json")))
    try:
        progress.load_state_dict(trainer["progress"])
        accelerator.step = int(trainer.get("accelerate_step", 0))
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{need('trainer.json')}: bad trainer state ({e})") from e
    bank_tensors, _ = _safetensors_load(need("bank.safetensors"))
    try:
        bank.load_state_dict(bank_tensors)
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"{need('bank.safetensors')}: {e}") from e
    saved_world = int(trainer.get("world_size", accelerator.num_processes))
    state_rank = rank
    if saved_world != accelerator.num_processes:
        # Elastic resume: the loader state is the same on every rank (its `batches` counts global steps) and
        # ShardLoader.load_state_dict re-lays the rest of the epoch out for the new world size (docs/cluster.md,
        # "Elastic resume"); RNG streams cannot carry over one to one, so rank r takes saved rank r % W.
        logger.warning(
            "%s: written by %d processes, resumed by %d (elastic resume)",
            path,
            saved_world,
            accelerator.num_processes,
        )
        state_rank = rank % saved_world
    rng_tensors, rng_meta = _safetensors_load(need(f"rng_{state_rank}.safetensors"))
    try:
        _set_rng(rng_tensors, rng_meta)
    except (KeyError, TypeError, ValueError, RuntimeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{need(f'rng_{state_rank}.safetensors')}: bad RNG state ({e})") from e
    data_state = _read_json(
        need(f"data_state_{0 if saved_world != accelerator.num_processes else rank}.json")
    )
    logger.info("resumed from %s", path)
    return data_state or None


def _ranks(files: dict[str, int]) -> list[str]:
    return [n for n in files if n.startswith("rng_")]


def read_trainer_state(path: str) -> dict[str, Any]:
    """``trainer.json`` of a complete checkpoint (progress, world size)."""
    return _read_json(os.path.join(path, "trainer.json"))


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
