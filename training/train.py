"""NeighborRetr training loop on Accelerate (``nr-train``).

    accelerate launch --config_file accelerate_config.yaml -m training.train --config configs/msrvtt.yaml \
        run.out=runs/msrvtt [--resume latest]
    python -m training.train --config configs/demo.yaml            # one process (CPU or one GPU)

Reads top to bottom: parse + validate the config (before any work), build the Accelerator, model, optimiser,
schedule and loaders, optionally resume, then for every epoch: reshuffle, pre-fill the memory bank, and for
every batch: forward -> gather features with gradient (global batch) -> losses -> backward -> clip grad norm
once -> optimiser + schedule step -> clamp logit_scale <= ln 100 -> bank update (no grad) -> log -> validate /
checkpoint at their cadence. Validation and a checkpoint also run at each epoch end.

Distributed conventions: the loader is never passed through ``accelerator.prepare`` (the shard plan already
splits the data over ranks; Accelerate would split it again, docs/design-notes.md §0.4); only model, optimiser and
scheduler are prepared. The scheduler is stepped once per optimiser step
(``step_scheduler_with_optimizer=False``; Accelerate would otherwise step it ``num_processes`` times). Every
rank computes the full global loss on gathered features (``training.distributed``), so every logged loss is
the global-batch loss.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import logging
import math
import os
import sys
import time
from typing import Any

import torch

import nrconfig
from training.config import (
    ConfigError,
    TrainConfig,
    load_config,
    loader_config,
    resolve_similarity,
    save_config,
    split_folders,
    split_url,
    to_dict,
    validate_config,
)

__all__ = ["parse_args", "resolve_config", "build_accelerator", "train", "main"]

logger = logging.getLogger(__name__)

LOGIT_SCALE_MAX = math.log(100.0)
BANK_SEED_OFFSET = (
    7919  # the bank pre-fill loader draws its own shuffle (seed + offset), reshuffled every epoch
)


PROG = "nr-train"


def _options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--resume",
        help="'auto' or 'latest' (newest complete checkpoint of run.out; none: start fresh) or a checkpoint folder",
    )
    p.add_argument("--check", action="store_true", help="validate the config (and shards) and exit")


def parse_args(argv: list[str] | None = None) -> tuple[TrainConfig, argparse.Namespace]:
    """The resolved config and the options (``--resume``, ``--check``); raises ConfigError for a bad one."""
    return nrconfig.parse_args(
        TrainConfig,
        argv,
        prog=PROG,
        description=__doc__.split("\n\n")[0],
        add_arguments=_options,
        load=lambda path, overrides: resolve_config(load_config(path, overrides)),
        epilog="example: nr-train --config demo run.out=runs/demo optim.lr=3e-4",
    )


def resolve_config(cfg: TrainConfig) -> TrainConfig:
    """Fill derived values: the vision tower's input size follows the shards' frame size when unset."""
    if getattr(cfg.model, "image_size", "absent") is None:
        cfg.model = dataclasses.replace(cfg.model, image_size=cfg.data.frame_size)
    return cfg


def build_accelerator(cfg: TrainConfig) -> Any:
    """Accelerator: CPU when CUDA is absent (or run.cpu), mixed precision and gradient accumulation from
    cfg, the trackers of ``run.trackers`` (``log_with``; TensorBoard under ``project_dir`` = ``run.out``)."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    from training.trackers import build_trackers

    find_unused = cfg.run.find_unused_parameters
    return Accelerator(
        cpu=cfg.run.cpu or not torch.cuda.is_available(),
        mixed_precision=cfg.run.mixed_precision,
        gradient_accumulation_steps=cfg.optim.grad_accum,
        step_scheduler_with_optimizer=False,
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=find_unused)],
        log_with=build_trackers(cfg.run) or None,
        project_dir=cfg.run.out,
    )


# ------------------------------------------------------------------------------------------------------------
# pieces of the loop
# ------------------------------------------------------------------------------------------------------------
def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}


def _gather_features(feats: Any) -> Any:
    """Features of the local batch -> features of the global batch (tokens with gradient, masks without)."""
    from training.distributed import gather_nograd, gather_with_grad
    from training.features import Features

    return Features(
        text_tokens=gather_with_grad(feats.text_tokens.float()),
        text_mask=gather_nograd(feats.text_mask),
        video_tokens=gather_with_grad(feats.video_tokens.float()),
        video_mask=gather_nograd(feats.video_mask),
        text_global=gather_with_grad(feats.text_global.float()),
        video_global=gather_with_grad(feats.video_global.float()),
    )


def _real_rows(batch: dict[str, Any]) -> torch.Tensor | None:
    """Boolean mask [W B] of the global batch's real rows (``~is_pad`` gathered), ``None`` when none is a pad.

    Pad rows (repeats of a sample, filling the last batch so every rank has the same count) are DROPPED from the
    global batch before the losses and the bank: a repeat in a contrastive batch is a false negative of its
    original and would count twice; masking would need every loss to take a mask, dropping needs none and keeps
    the loss equal to the loss of the batch of real samples."""
    from training.distributed import gather_nograd

    if "is_pad" not in batch:
        return None
    real = gather_nograd((~batch["is_pad"].bool()).to(torch.uint8)).bool()
    return None if bool(real.all()) else real


def _select_rows(feats: Any, rows: torch.Tensor) -> Any:
    from training.features import Features

    return Features(**{f.name: getattr(feats, f.name)[rows] for f in dataclasses.fields(feats)})


@torch.no_grad()
def prefill_bank(
    bank: Any,
    model: torch.nn.Module,
    cfg: TrainConfig,
    accelerator: Any,
    epoch: int,
    *,
    canonical: dict[str, int] | None = None,
) -> int:
    """Epoch start: encode ``bank.prefill_batches`` batches of the training split (eval mode, no grad), gather
    them across ranks and fill the bank (docs/method.md §4); returns the number of samples in the bank.

    ``canonical``: the run's canonical loader layout (the training loader's ``.canonical``): the pre-fill loader
    plans its epoch in it, so after an elastic resume the bank holds the samples of the uninterrupted run."""
    from shards.reader import build_loader
    from training.distributed import gather_nograd

    bank.clear()
    n = cfg.bank.prefill_batches
    if n <= 0:
        return 0
    lcfg = loader_config(
        cfg,
        cfg.data.train,
        purpose="bank",
        world_size=accelerator.num_processes,
        seed_offset=BANK_SEED_OFFSET,
    )
    loader = build_loader(
        lcfg,
        rank=accelerator.process_index,
        world_size=accelerator.num_processes,
        epoch=epoch,
        canonical=canonical,
    )
    was_training = model.training
    model.eval()
    try:
        it = iter(loader)
        for _ in range(min(n, len(loader))):
            batch = _to_device(next(it), accelerator.device)
            with accelerator.autocast():
                t = model.encode_text(batch["text_ids"], batch["text_mask"])
                v = model.encode_video(batch["frames"], batch["frame_mask"])
            rows = _real_rows(batch)
            parts = [
                gather_nograd(t.float()),
                gather_nograd(batch["text_mask"]),
                gather_nograd(v.float()),
                gather_nograd(batch["frame_mask"]),
                gather_nograd(batch["sample_index"].long()),
            ]
            bank.prefill(*(p if rows is None else p[rows] for p in parts))
        del it
    finally:
        model.train(was_training)
    logger.info(
        "memory bank pre-filled for epoch %d: %d samples (capacity %d)", epoch, len(bank), bank.capacity
    )
    return len(bank)


def _index_digest(indices: list[int]) -> str:
    return hashlib.blake2s(",".join(map(str, indices)).encode(), digest_size=8).hexdigest()


class _Validator:
    """Validation on the held-out split (or test, labelled) + the ONE best checkpoint by one named metric."""

    def __init__(self, cfg: TrainConfig, accelerator: Any, metrics_log: Any) -> None:
        from training.validate import resolve_caption_mode

        self.cfg, self.accelerator, self.metrics_log = cfg, accelerator, metrics_log
        location = cfg.data.val if cfg.eval.split == "val" else cfg.data.test
        self.enabled = location is not None and (cfg.eval.every_steps > 0 or cfg.eval.at_epoch_end)
        self.location = location
        self.caption_mode = (
            resolve_caption_mode(
                split_folders(cfg.data, location)[0], cfg.eval.caption_mode, cfg.data.storage
            )
            if self.enabled
            else "first"
        )
        if self.enabled and cfg.eval.split == "test":
            logger.warning(
                "model selection on the TEST split (eval.split=test): report results as test-selected"
            )
        self.last_step = -1

    def __call__(self, model: torch.nn.Module, progress: Any) -> dict[str, float] | None:
        from shards.reader import build_loader
        from training.checkpoint import save_best
        from training.validate import metrics_of, score_split

        cfg, acc = self.cfg, self.accelerator
        if not self.enabled or self.last_step == progress.step:
            return None
        self.last_step = progress.step
        unwrapped = acc.unwrap_model(model)
        lcfg = loader_config(
            cfg, self.location, purpose="eval", world_size=acc.num_processes, caption_mode=self.caption_mode
        )
        loader = build_loader(lcfg, rank=acc.process_index, world_size=acc.num_processes, epoch=0)
        result = score_split(
            unwrapped,
            loader,
            device=acc.device,
            caption_mode=self.caption_mode,
            block=cfg.eval.block,
            autocast=acc.autocast,
            similarity=resolve_similarity(cfg),
        )
        metrics: dict[str, float] | None = None
        if result is not None:
            metrics = metrics_of(result, prefix=cfg.eval.split, ks=cfg.eval.ks)
        metrics = _broadcast(metrics)
        assert metrics is not None
        value = float(metrics.get(cfg.eval.select_metric, float("nan")))
        if not math.isfinite(value) and acc.is_main_process:
            logger.warning(
                "eval.select_metric %r not among the metrics (%s ...)",
                cfg.eval.select_metric,
                ", ".join(sorted(metrics)[:8]),
            )
        record = {
            "event": "val",
            "step": progress.step,
            "epoch": progress.epoch,
            **metrics,
            "val_seconds": result.seconds if result is not None else 0.0,
            "similarity": resolve_similarity(cfg),
        }
        self.metrics_log.log(record)
        logger.info(
            "validation at step %d: %s = %.4f (t2v R@1 %.2f, v2t R@1 %.2f)",
            progress.step,
            cfg.eval.select_metric,
            value,
            metrics.get(f"{cfg.eval.split}/t2v/R@1", float("nan")),
            metrics.get(f"{cfg.eval.split}/v2t/R@1", float("nan")),
        )
        if progress.is_better(value, cfg.eval.select_mode):
            progress.best_metric, progress.best_step = value, progress.step
            selection = {
                "metric": cfg.eval.select_metric,
                "value": value,
                "mode": cfg.eval.select_mode,
                "step": progress.step,
                "epoch": progress.epoch,
                "split": cfg.eval.split,
                "selected_on_test": cfg.eval.split == "test",
                "similarity": resolve_similarity(cfg),
            }
            save_best(acc, model, cfg.run.out, cfg=cfg, selection=selection)
        return metrics


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for k, v in tree.items():
        out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def _warn_config_changes(cfg: TrainConfig, saved_path: str) -> None:
    """Log the keys whose values differ from the checkpoint's config (a resumed run should keep them)."""
    import yaml

    if not os.path.exists(saved_path):
        return
    try:
        with open(saved_path, encoding="utf-8") as f:
            saved = _flatten(yaml.safe_load(f) or {})
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        logger.warning(
            "%s: unreadable (%s); config changes since the checkpoint are not listed", saved_path, e
        )
        return
    now = _flatten(to_dict(cfg))
    changed = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
    if changed:
        logger.warning(
            "resuming with a config that differs from the checkpoint's in: %s",
            ", ".join(f"{k} ({saved.get(k)!r} -> {now.get(k)!r})" for k in changed[:10]),
        )


def _broadcast(obj: Any) -> Any:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _build_model(cfg: TrainConfig) -> torch.nn.Module:
    from training.model import NeighborRetrModel

    model = NeighborRetrModel(cfg.model)
    if cfg.loss.kind == "infonce":
        # the baseline's loss never reaches these: frozen, so DDP sees no parameter without a gradient
        for name in ("text_weight", "video_weight", "text_merge", "video_merge"):
            getattr(model, name).requires_grad_(False)
        logger.info(
            "loss.kind=infonce: token weights and merge blocks frozen (unused by the loss), no memory bank"
        )
    return model


def _restore(
    cfg: TrainConfig, accelerator: Any, path: str, *, optimizer: Any, scheduler: Any, **state: Any
) -> dict[str, Any] | None:
    """Load checkpoint ``path`` into model/optimizer/scheduler/progress/bank; apply a changed ``optim.lr``.

    A changed ``optim.lr`` / ``optim.coef_lr`` is APPLIED: the schedule's base rates become the ones the new
    config gives (the fresh optimiser's group rates), the position in the schedule is kept. Returns this rank's
    loader state."""
    from training.checkpoint import load_checkpoint

    fresh = [g["initial_lr"] for g in optimizer.param_groups]  # the current config's base rates
    _warn_config_changes(cfg, os.path.join(path, "config.yaml"))
    loader_state = load_checkpoint(accelerator, path, optimizer=optimizer, scheduler=scheduler, **state)
    sched = getattr(scheduler, "scheduler", scheduler)  # AcceleratedScheduler -> LambdaLR
    if [float(b) for b in sched.base_lrs] != [float(f) for f in fresh]:
        logger.warning(
            "optim.lr changed on resume: schedule base rates %s -> %s applied from step %d",
            [f"{b:.3g}" for b in sched.base_lrs],
            [f"{f:.3g}" for f in fresh],
            state["progress"].step,
        )
        sched.base_lrs = list(fresh)
        for g, base, fn in zip(optimizer.param_groups, fresh, sched.lr_lambdas):
            g["initial_lr"] = base
            g["lr"] = base * fn(sched.last_epoch)
        sched._last_lr = [g["lr"] for g in optimizer.param_groups]
    return loader_state


def _train_step(model: Any, batch: dict[str, Any], ctx: dict[str, Any]) -> tuple[dict[str, Any], Any, Any]:
    """Forward -> gather (global batch) -> losses -> backward -> clip -> optimiser/schedule step -> clamp ->
    bank update. Pad rows are dropped from the global batch (:func:`_real_rows`). Returns ``(losses, grad_norm,
    sample indices of the global batch's real rows)``."""
    from training.distributed import gather_nograd
    from training.losses.head import compute_losses

    cfg, acc, unwrapped, bank = ctx["cfg"], ctx["accelerator"], ctx["unwrapped"], ctx["bank"]
    optimizer, scheduler, progress = ctx["optimizer"], ctx["scheduler"], ctx["progress"]
    with acc.accumulate(model):
        with acc.autocast():
            feats = model(batch["frames"], batch["frame_mask"], batch["text_ids"], batch["text_mask"])
        gfeats = _gather_features(feats)
        indices = gather_nograd(batch["sample_index"].long())
        rows = _real_rows(batch)
        if rows is not None:  # pad rows never enter the loss or the bank
            gfeats, indices = _select_rows(gfeats, rows), indices[rows]
            if int(rows.sum()) < cfg.loss.num_neighbors + 3:
                raise ValueError(
                    f"step {progress.step + 1}: the last batch of the epoch has {int(rows.sum())} real samples "
                    f"(the rest padding), fewer than loss.num_neighbors + 3 = {cfg.loss.num_neighbors + 3}; "
                    "set data.drop_last=true"
                )
        losses = compute_losses(
            gfeats,
            text_weight=unwrapped.text_weight,
            video_weight=unwrapped.video_weight,
            logit_scale=unwrapped.clip.logit_scale,
            cfg=cfg.loss,
            bank=bank if ctx["use_bank"] and len(bank) > 0 else None,
        )
        if not torch.isfinite(losses["total"]):
            # the losses are computed on the gathered batch, so every rank stops here together
            terms = {k: float(v.detach()) for k, v in losses.items()}
            raise FloatingPointError(
                f"non-finite loss at step {progress.step + 1} (epoch {progress.epoch}): {terms}; "
                f"batch keys {list(batch['keys'])[:8]}"
            )
        acc.backward(losses["total"])
        grad_norm = None
        if acc.sync_gradients and cfg.optim.grad_clip > 0:
            grad_norm = acc.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        optimizer.step()
        if acc.sync_gradients:
            scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    with torch.no_grad():
        unwrapped.clip.logit_scale.clamp_(max=LOGIT_SCALE_MAX)
        if ctx["use_bank"]:
            bank.update(
                gfeats.text_tokens.detach(),
                gfeats.text_mask,
                gfeats.video_tokens.detach(),
                gfeats.video_mask,
                indices,
            )
    return losses, grad_norm, indices


def _step_record(ctx: dict[str, Any], losses: dict[str, Any], grad_norm: Any, indices: Any, t: tuple) -> dict:
    """The ``metrics.jsonl`` record of one training step; ``t`` = (t_last, t_data, t_done) perf counters."""
    from training.logging_utils import cuda_memory_stats

    acc, progress, scheduler, loader, batch = (
        ctx["accelerator"],
        ctx["progress"],
        ctx["scheduler"],
        ctx["loader"],
        ctx["batch"],
    )
    t_last, t_data, t_done = t
    idx = indices.cpu().tolist()
    return {
        "event": "train",
        "step": progress.step,
        "epoch": progress.epoch,
        **{f"loss/{k}": float(v.detach()) for k, v in losses.items()},
        "lr": scheduler.get_last_lr()[-1],
        "lr_clip": min(scheduler.get_last_lr()),
        "logit_scale": float(ctx["unwrapped"].clip.logit_scale.detach()),
        "grad_norm": float(grad_norm) if grad_norm is not None else None,
        "bank_size": len(ctx["bank"]),
        "data_wait_s": round(t_data - t_last, 6),
        "compute_s": round(t_done - t_data, 6),
        "samples_per_s": round(ctx["cfg"].data.batch_size / max(t_done - t_last, 1e-9), 3),
        "skipped": loader.stats() if hasattr(loader, "stats") else {},
        "pad": int(batch["is_pad"].sum()) if "is_pad" in batch else 0,
        "sample_index": idx,
        "sample_digest": _index_digest(idx),
        "time": round(time.time(), 3),  # wall clock at the step's end (throughput incl. logging)
        **cuda_memory_stats(acc.device),  # peak GPU memory so far (CUDA only)
    }


_STATE = ("model", "optimizer", "scheduler", "progress", "bank")


def _setup(cfg: TrainConfig, accelerator: Any) -> tuple[dict[str, Any], Any, Any, tuple[int, int, int]]:
    """Model, optimiser, schedule (prepared), progress, bank and the epoch-0 loader (it tells the schedule its
    length). Returns ``(state, loader, loader config, (batches per epoch, total batches, optimiser steps))``."""
    from shards.reader import build_loader
    from training.checkpoint import TrainerProgress
    from training.memory_bank import MemoryBank
    from training.optim import build_optimizer, build_scheduler

    world, rank = accelerator.num_processes, accelerator.process_index
    model = _build_model(cfg)
    optimizer = build_optimizer(model, cfg.optim)
    train_cfg = loader_config(cfg, cfg.data.train, purpose="train", world_size=world)
    loader = build_loader(train_cfg, rank=rank, world_size=world, epoch=0)
    steps_per_epoch = len(loader)
    if steps_per_epoch == 0:
        raise ValueError(f"data.train: the training split yields no batch of {train_cfg.batch_size} per rank")
    total_batches = steps_per_epoch * cfg.optim.epochs
    if cfg.optim.max_steps is not None:
        total_batches = min(total_batches, cfg.optim.max_steps)
    total_opt_steps = max(1, math.ceil(total_batches / cfg.optim.grad_accum))
    scheduler = build_scheduler(optimizer, total_opt_steps, cfg.optim.warmup)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    bank = MemoryBank(max(1, cfg.bank.resolved_capacity(cfg.data.batch_size)))
    parts = (model, optimizer, scheduler, TrainerProgress(), bank)
    return dict(zip(_STATE, parts)), loader, train_cfg, (steps_per_epoch, total_batches, total_opt_steps)


def _resume(cfg: TrainConfig, accelerator: Any, resume: str | None, state: dict[str, Any]) -> dict | None:
    """``--resume``: restore ``state`` from the chosen checkpoint (nothing unpickled; ``auto``/``latest`` with no
    checkpoint: a fresh start) and drop the metrics lines logged after it. Returns this rank's loader state."""
    from training.checkpoint import resolve_resume
    from training.logging_utils import truncate_metrics

    path = resolve_resume(resume, cfg.run.out)
    if path is None:
        return None
    loader_state = _restore(cfg, accelerator, path, **state)
    progress = state["progress"]
    if accelerator.is_main_process:
        dropped = truncate_metrics(os.path.join(cfg.run.out, "metrics.jsonl"), progress.step)
        logger.info(
            "resuming at epoch %d, step %d (%d batches into the epoch); %d logged steps redone",
            progress.epoch,
            progress.step,
            progress.step_in_epoch,
            dropped,
        )
    return loader_state


# ------------------------------------------------------------------------------------------------------------
# the loop
# ------------------------------------------------------------------------------------------------------------
def train(cfg: TrainConfig, accelerator: Any, *, resume: str | None = None) -> dict[str, Any]:
    """Train according to ``cfg``; returns a summary (steps, last losses, best metric, ``preempted``).
    Collective call. ``resume``: ``auto``/``latest`` (newest complete checkpoint, or a fresh start) or a path."""
    from accelerate.utils import set_seed

    from shards.reader import build_loader
    from training.checkpoint import save_checkpoint
    from training.console import StepLog, final_report, progress_bar
    from training.logging_utils import MetricsLogger
    from training.preemption import PreemptionWatch
    from training.trackers import resolve_trackers, start_trackers

    run_dir, world, rank = cfg.run.out, accelerator.num_processes, accelerator.process_index
    set_seed(cfg.run.seed)

    state, loader, train_cfg, sizes = _setup(cfg, accelerator)
    model, optimizer, scheduler, progress, bank = (state[k] for k in _STATE)
    unwrapped, use_bank = (
        accelerator.unwrap_model(model),
        cfg.bank.enabled and cfg.loss.kind == "neighborretr",
    )
    steps_per_epoch, total_batches, total_opt_steps = sizes
    loader_state = _resume(cfg, accelerator, resume, state)
    if accelerator.is_main_process:
        save_config(cfg, os.path.join(run_dir, "config.yaml"))
    start_trackers(accelerator, _flatten(to_dict(cfg)))
    metrics_log = MetricsLogger(run_dir, enabled=accelerator.is_main_process, tracker=accelerator.log)
    validator = _Validator(cfg, accelerator, metrics_log)
    preempt = PreemptionWatch(accelerator)
    logger.info(
        "training: %d ranks, global batch %d, %d batches/epoch, %d epochs, %d optimiser steps",
        world,
        cfg.data.batch_size,
        steps_per_epoch,
        cfg.optim.epochs,
        total_opt_steps,
    )

    def checkpoint(loader_position: dict) -> None:
        """Save the run at ``progress.step`` with the loader's resume position (at an epoch end its
        ``layout_state()``: no position, the run's canonical layout for the next epochs)."""
        save_checkpoint(
            accelerator,
            run_dir,
            step=progress.step,
            cfg=cfg,
            loader_state=loader_position,
            keep_last=cfg.run.keep_last,
            **state,
        )

    ctx = {**state, "cfg": cfg, "accelerator": accelerator, "unwrapped": unwrapped, "use_bank": use_bank}
    bar = progress_bar(cfg.run.progress and accelerator.is_main_process, total_batches, progress.step)
    console = StepLog(
        total=total_batches, step0=progress.step, every=cfg.run.log_every_steps, num_processes=world, bar=bar
    )
    last: dict[str, float] = {}
    stop = preempted = False
    try:
        for epoch in range(progress.epoch, cfg.optim.epochs):
            progress.epoch = epoch
            if loader_state is not None:  # resumed: the next batch, planned in the run's canonical layout
                loader = build_loader(train_cfg, rank=rank, world_size=world, epoch=epoch, state=loader_state)
                loader_state = None
            else:
                loader.set_epoch(epoch)
            ctx["loader"] = loader
            if progress.step_in_epoch == 0 and use_bank:
                prefill_bank(bank, unwrapped, cfg, accelerator, epoch, canonical=loader.canonical)
            model.train()
            t_last = time.perf_counter()
            for batch in loader:
                t_data = time.perf_counter()
                ctx["batch"] = batch = _to_device(batch, accelerator.device)
                losses, grad_norm, indices = _train_step(model, batch, ctx)
                progress.step += 1
                progress.step_in_epoch += 1
                progress.opt_step += int(accelerator.sync_gradients)
                if accelerator.device.type == "cuda":  # compute_s includes the queued backward/step kernels
                    torch.cuda.synchronize(accelerator.device)
                record = _step_record(ctx, losses, grad_norm, indices, (t_last, t_data, time.perf_counter()))
                last = {k: v for k, v in record.items() if k.startswith("loss/")}
                metrics_log.log(record, track=progress.step % cfg.run.log_every_steps == 0)
                console.step(record)
                # -- periodic validation / checkpoint; preemption; max_steps ---------------------------------
                if cfg.eval.every_steps and progress.step % cfg.eval.every_steps == 0:
                    validator(model, progress)
                mid_epoch = accelerator.sync_gradients and progress.step_in_epoch < steps_per_epoch
                preempted = preempt.should_stop() and mid_epoch
                if mid_epoch and (
                    preempted or (cfg.run.save_every_steps and progress.step % cfg.run.save_every_steps == 0)
                ):
                    checkpoint(loader.state_dict())
                if preempted or (cfg.optim.max_steps is not None and progress.step >= cfg.optim.max_steps):
                    stop = True
                    break
                t_last = time.perf_counter()
            if stop:
                break
            # -- epoch end -----------------------------------------------------------------------------------
            bank.clear()
            progress.epoch, progress.step_in_epoch = epoch + 1, 0
            if cfg.eval.at_epoch_end:
                validator(model, progress)
            checkpoint(loader.layout_state())
            if preempt.should_stop():
                preempted = True
                break
        if stop and not preempted:  # max_steps reached mid-epoch: validate and checkpoint the final state
            if validator.enabled:
                validator(model, progress)
            checkpoint(loader.state_dict())
    finally:
        preempt.close()
        console.close()
        metrics_log.close()
    summary = {
        "steps": progress.step,
        "epochs_done": progress.epoch,
        **last,
        "best_metric": progress.best_metric,
        "best_step": progress.best_step,
        "preempted": preempted,
    }
    if preempted:
        logger.warning("preempted (%s): checkpoint at step %d saved", preempt.signal_name, progress.step)
    if accelerator.is_main_process:
        final_report(cfg, summary, console.elapsed(), resolve_trackers(cfg.run))
    return summary


def main(argv: list[str] | None = None) -> int:
    from training.checkpoint import CheckpointError, resolve_resume
    from training.logging_utils import setup_logging

    rank = int(os.environ.get("RANK", "0"))
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    setup_logging("INFO", rank=rank)
    try:
        cfg, args = parse_args(argv)
        validate_config(cfg, world_size=world_size)
        check_launcher_precision(cfg)
        if args.resume:  # a bad path fails here, before the accelerator and the model are built
            resolve_resume(args.resume, cfg.run.out)
        for warning in check_train_data(cfg):
            logger.warning("%s", warning)
        if cfg.run.tensorboard is not None:
            from training.trackers import resolve_trackers

            logger.info(
                "run.tensorboard=%s is the older switch, kept for old configs: trackers %s (set run.trackers)",
                str(cfg.run.tensorboard).lower(),
                resolve_trackers(cfg.run),
            )
    except (ConfigError, CheckpointError, FileNotFoundError) as e:
        return nrconfig.cli_error(PROG, e)
    if args.check:
        msg = f"nr-train: configuration OK ({args.config or 'defaults'}, world size {world_size})"
        print(msg)  # noqa: T201 - CLI output
        return 0
    setup_logging(cfg.run.log_level, rank=rank, log_file=os.path.join(cfg.run.out, "train.log"))
    return run_guarded(cfg, args.resume, rank=rank)


def _train_shards(cfg: TrainConfig) -> tuple[str, dict[str, int], list[str]]:
    """``(what data.train names, {shard URL: samples per sizes.json}, URLs of those shards that are missing)``
    for a split folder (every shard its ``sizes.json`` lists) or a shard list / brace pattern (its files, each of
    which its folder's ``sizes.json`` must list)."""
    import json

    from shards import fs as sfs
    from shards.index import list_shards
    from training.config import is_shard_list, shard_urls, split_folders

    location = cfg.data.train
    wanted = shard_urls(cfg.data, location) if is_shard_list(location) else None
    sizes: dict[str, int] = {}
    present: set[str] = set()
    for folder in split_folders(cfg.data, location):
        index = sfs.join(folder, "sizes.json")
        try:
            listed = json.loads(sfs.read_bytes(index, cfg.data.storage))
            present |= {sfs.join(folder, n) for n in sfs.listdir(folder, cfg.data.storage)}
        except (OSError, ValueError) as e:
            raise ConfigError(f"data.train: cannot read {index}: {e}") from e
        sizes.update({sfs.join(folder, n): int(c) for n, c in listed.items()})
    if wanted is not None:
        unlisted = [u for u in wanted if u not in sizes]
        if unlisted:
            raise ConfigError(
                f"data.train: {len(unlisted)} shard(s) not listed in their sizes.json: {unlisted[:5]}"
            )
        sizes = {u: sizes[u] for u in wanted}
    else:
        shards = set(list_shards(split_url(cfg.data, location), cfg.data.storage)[0])
        present = {u for u in present if u.rsplit("/", 1)[-1] in shards}
    return split_url(cfg.data, location), sizes, [u for u in sizes if u not in present]


def check_train_data(cfg: TrainConfig) -> list[str]:
    """Checks of the training split against the config, for ``--check`` and every start (reads ``sizes.json``,
    the folder listing and the first sample of the first shard). ConfigError when the global batch exceeds the
    split's samples or a shard listed in ``sizes.json`` (or named by a brace pattern) is missing; returns
    warnings (``model.max_frames`` differs from the shards' ``num_frames``)."""
    from shards.index import _first_sample_settings

    url, sizes, missing = _train_shards(cfg)
    total = sum(sizes.values())
    errors = []
    if missing:
        names = [m.rsplit("/", 1)[-1] for m in missing]
        errors.append(
            f"data.train: {len(missing)} shard(s) listed in sizes.json are missing: {names[:5]} ({url})"
        )
    if cfg.data.batch_size > total:
        errors.append(
            f"data.batch_size: global batch {cfg.data.batch_size} exceeds the {total} samples of {url}"
        )
    if errors:
        raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(errors))
    warnings = []
    if sizes:
        first = next(iter(sorted(sizes)))
        frames = _first_sample_settings(first, cfg.data.storage).get("num_frames")
        if frames is not None and frames != cfg.model.max_frames:
            warnings.append(
                f"model.max_frames={cfg.model.max_frames} differs from the shards' num_frames={frames} ({first}): "
                + (
                    "clips are zero-padded (frame_mask 0)"
                    if frames < cfg.model.max_frames
                    else "frames are subsampled"
                )
            )
    return warnings


def check_launcher_precision(cfg: TrainConfig) -> None:
    """``accelerate launch --mixed_precision X`` (or its config file) exports ``ACCELERATE_MIXED_PRECISION``; the
    trainer builds its Accelerator from ``run.mixed_precision``. A difference is a ConfigError naming both (the
    run config is recorded in ``config.yaml``, so it must be the one used)."""
    launcher = os.environ.get("ACCELERATE_MIXED_PRECISION")
    if launcher is not None and launcher != cfg.run.mixed_precision:
        raise ConfigError(
            f"accelerate launch --mixed_precision {launcher} (or its config file's mixed_precision) conflicts "
            f"with run.mixed_precision={cfg.run.mixed_precision} of the run config; make them equal "
            f"(e.g. add run.mixed_precision={launcher})"
        )


def run_guarded(cfg: TrainConfig, resume: str | None, *, rank: int) -> int:
    """:func:`train` inside the cluster guards: the run-folder lock (rank 0), the parent-death watch (ranks
    started by a launcher), ``status.json``; returns the exit code (0 done, 75 preempted -- requeue, 2 the run
    folder is locked or the checkpoint is refused)."""
    from training.checkpoint import CheckpointError
    from training.preemption import PREEMPTED_EXIT_CODE
    from training.run_lock import RunLock, RunLockedError, watch_parent

    if "TORCHELASTIC_RUN_ID" in os.environ or "LOCAL_RANK" in os.environ:
        watch_parent()
    lock = RunLock(cfg.run.out)
    try:
        if rank == 0:
            lock.acquire()
    except RunLockedError as e:
        print(f"nr-train: {e}", file=sys.stderr)  # noqa: T201 - CLI output
        return 2
    try:
        _write_status(cfg.run.out, rank, "running")
        accelerator = build_accelerator(cfg)
        try:
            summary = train(cfg, accelerator, resume=resume)
        except CheckpointError as e:
            print(f"nr-train: {e}", file=sys.stderr)  # noqa: T201 - CLI output
            _write_status(cfg.run.out, rank, "failed", error=str(e))
            return 2
        finally:
            accelerator.end_training()
        state = "preempted" if summary["preempted"] else "finished"
        _write_status(cfg.run.out, rank, state, step=summary["steps"])
        return PREEMPTED_EXIT_CODE if summary["preempted"] else 0
    finally:
        if rank == 0:
            lock.release()


def _write_status(run_dir: str, rank: int, state: str, **extra: Any) -> None:
    """``{run}/status.json`` (rank 0): ``running`` / ``preempted`` / ``finished`` / ``failed``, for requeue
    scripts (a launcher's own exit code does not carry the ranks' code)."""
    import json
    import socket

    if rank != 0:
        return
    os.makedirs(run_dir, exist_ok=True)
    tmp = os.path.join(run_dir, "status.json.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump({"state": state, "host": socket.gethostname(), "time": time.time(), **extra}, f)
    os.replace(tmp, os.path.join(run_dir, "status.json"))


if __name__ == "__main__":
    raise SystemExit(main())
