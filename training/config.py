"""The one typed configuration tree of a training run, loaded from YAML with dotted CLI overrides.

``TrainConfig(data, model, loss, bank, optim, eval, run)`` composes the component configs: ``model`` is
:class:`training.model.ModelConfig`, ``loss`` is :class:`training.losses.head.LossConfig`, ``data.storage`` is
:class:`shards.fs.StorageOptions`; the rest are defined here. Usage::

    cfg = load_config("configs/demo.yaml", ["optim.lr=3e-4", "run.out=runs/x"])
    validate_config(cfg, world_size=2)  # once, before any work; ConfigError lists every problem
    save_config(cfg, "runs/x/config.yaml")  # the resolved config

The schema is the dataclasses below; :mod:`nrconfig` (OmegaConf structured configs) merges defaults <- YAML <-
overrides and checks every key (an unknown key is named with its dotted path and the closest known keys) and
every value's type. :func:`validate_config` is ours: value ranges, world-size rules, shards present.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field
from typing import Any

import yaml

import nrconfig
from nrconfig import ConfigError
from shards.fs import StorageOptions, write_bytes_atomic

__all__ = [
    "ConfigError",
    "DataConfig",
    "BankConfig",
    "OptimConfig",
    "EvalConfig",
    "RunConfig",
    "TrainConfig",
    "to_dict",
    "load_config",
    "save_config",
    "config_from_yaml_text",
    "validate_config",
    "split_url",
    "is_shard_list",
    "shard_urls",
    "split_folders",
    "resolve_similarity",
    "frame_output",
    "loader_config",
]

logger = logging.getLogger(__name__)

MIXED_PRECISION = ("no", "bf16", "fp16")
CAPTION_MODES = ("random", "all", "first")
FRAME_OUTPUTS = ("auto", "float", "uint8")
EVAL_CAPTION_MODES = ("auto", "first", "all")
SIMILARITIES = ("auto", "local", "pooled")


def _model_config_cls() -> type:
    from training.model import ModelConfig

    return ModelConfig


def _loss_config_cls() -> type:
    from training.losses.head import LossConfig

    return LossConfig


@dataclass
class DataConfig:
    """Where the shards are and how they are streamed (fields map onto ``shards.reader.LoaderConfig``).

    A split location (``train``/``val``/``test``) is either a split name under ``root`` (``{root}/{name}``) or
    a full path / ``s3://`` URL of a split folder (anything containing ``/``) or a list of shard files (a brace
    pattern ``.../train-{000000..000099}.tar``, expanded by the reader; each folder's ``sizes.json`` must list
    them). Frame count and words per
    caption come from ``model.max_frames`` / ``model.max_words`` so that model and data cannot disagree.
    """

    root: str | None = None  # dataset root holding one folder per split (local path or s3://bucket/prefix)
    # training split: a name under root, a split folder path/URL, or shard files: a brace pattern such as
    # /data/msrvtt/train/train-{000000..000099}.tar (or several URLs separated by spaces)
    train: str = "train"
    val: str | None = "val"  # held-out split used for validation and model selection (None: no validation)
    test: str | None = "test"  # test split (scored after training by training.score)
    batch_size: int = 128  # GLOBAL training batch (the contrastive batch), split evenly over the ranks
    eval_batch_size: int = 128  # GLOBAL batch when encoding val/test
    num_workers: int = 4  # DataLoader worker processes per rank
    eval_num_workers: int = 2  # workers per rank for validation / scoring loaders
    frame_size: int = 224  # frames are resized/cropped to frame_size x frame_size
    augment: bool = False  # same random crop/flip/colour ops for all frames of a clip (training only)
    caption_mode: str = "random"  # training: one random caption per video per epoch | all | first
    shuffle_buffer: int = 1000  # samples (undecoded) in each worker's shuffle buffer
    on_error: str = "skip"  # corrupt samples: skip (counted) | raise
    # batch frames: "float" (normalised by the loader's main process) | "uint8" (normalised on the model's device,
    # 4x fewer bytes per batch, no float pass on the host) | "auto" (uint8 when CUDA is available, else float)
    frames: str = "auto"
    # where the loader turns decoded frames into the batch layout: "main" process | "worker" processes | "auto"
    # ("worker" for uint8 frames, whose main-process transposing copy would otherwise sit on the training step)
    convert_in: str = "auto"
    cache_dir: str | None = None  # optional local cache for remote shards
    retries: int = 5  # read retries on transient errors
    storage: StorageOptions = field(default_factory=StorageOptions)  # S3 endpoint / credentials


@dataclass
class BankConfig:
    """Memory bank (docs/method.md §4): pre-filled at every epoch start, then a FIFO of gathered training batches."""

    enabled: bool = True  # False: L_Nbi computes centrality without a bank (see training.losses)
    prefill_batches: int = 15  # official ``mb_batch``: global batches encoded at epoch start
    capacity: int | None = (
        None  # samples; None = prefill_batches x data.batch_size (official: 15 x 128 = 1,920)
    )

    def resolved_capacity(self, global_batch: int) -> int:
        return self.capacity if self.capacity is not None else self.prefill_batches * global_batch


@dataclass
class OptimConfig:
    """AdamW + warmup_cosine (docs/method.md §5.2)."""

    lr: float = 1e-4  # non-CLIP modules
    coef_lr: float = 1e-3  # CLIP parameters (names starting with ``clip.``) train at lr * coef_lr
    weight_decay: float = 0.2  # decoupled; none on biases, norms, position embeddings, logit_scale
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])  # AdamW (beta1, beta2)
    eps: float = 1e-6  # AdamW epsilon
    warmup: float = 0.1  # fraction of total optimiser steps spent in linear warmup
    epochs: int = 5  # passes over the training split
    grad_clip: float = 1.0  # global grad-norm clip, once per optimiser step (0 disables)
    grad_accum: int = 1  # micro-batches per optimiser step (each micro-batch is one contrastive batch)
    max_steps: int | None = None  # stop after this many training batches (smoke tests); None = all epochs


@dataclass
class EvalConfig:
    """Validation during training and the ONE best checkpoint."""

    split: str = "val"  # "val" (held-out) or "test" (selection on test: reported as such)
    every_steps: int = 0  # validate every N training batches (0: only at epoch end)
    at_epoch_end: bool = True  # validate after every epoch
    select_metric: str = "val/mean_R@1"  # mean of t2v and v2t R@1; any key produced by eval.report.evaluate
    select_mode: str = "max"  # max | min (e.g. for MnR)
    caption_mode: str = (
        "auto"  # auto: "all" (with relevance) when a split has multi-caption samples, else "first"
    )
    ks: list[int] = field(default_factory=lambda: [1, 5, 10])  # hubness k values
    block: int = 256  # texts per block when computing the similarity matrix
    # test-time similarity: "local" (NeighborRetr's WTI score, docs/method.md §2.8), "pooled" (cosine of the EOT text
    # token and the mean frame token: what the InfoNCE baseline trains), "auto" (pooled for loss.kind=infonce)
    similarity: str = "auto"


@dataclass
class RunConfig:
    """Run folder, seed, precision, cadence of logging and checkpoints."""

    out: str = "runs/default"  # run folder: config.yaml, train.log, metrics.jsonl, tb/, checkpoints/, best/
    seed: int = 42  # seeds model init, shuffling and augmentation (rank offsets added)
    mixed_precision: str = "no"  # no | bf16 | fp16 (autocast with fp32 master weights; fp16 needs CUDA)
    cpu: bool = False  # force CPU even when CUDA exists (CPU is used automatically without CUDA)
    save_every_steps: int = 0  # checkpoint every N training batches (0: only at epoch end)
    keep_last: int = 2  # periodic checkpoints kept (best/ is kept separately)
    # metrics.jsonl gets every step; this sets the cadence of the trackers and of the plain console line
    # (no tty: one line per N steps with loss, lr, samples/s, data wait, ETA)
    log_every_steps: int = 1
    # experiment trackers, through Accelerate's log_with: tensorboard ({run.out}/tb) | wandb | mlflow; [] for none
    trackers: list[str] = field(default_factory=lambda: ["tensorboard"])
    project: str = "neighborretr"  # wandb project / mlflow experiment name
    name: str | None = None  # run name in wandb / mlflow (None: the last folder of run.out)
    # older switch, kept for old configs: false removes tensorboard from run.trackers, true adds it (null: as listed)
    tensorboard: bool | None = None
    progress: bool = True  # rank-0 tqdm bar over the whole run when stderr is a tty (else plain lines)
    # DDP: keep False. Parameters used by the losses outside ``forward`` (logit_scale, token-weight MLPs)
    # make find_unused_parameters=True fail ("mark a variable ready only once"); modules a loss kind does not
    # use are frozen instead (the InfoNCE baseline freezes the token weights and merge blocks).
    find_unused_parameters: bool = False
    log_level: str = "INFO"  # DEBUG | INFO | WARNING | ERROR


def _default_model() -> Any:
    return _model_config_cls()()


def _default_loss() -> Any:
    return _loss_config_cls()()


@dataclass
class TrainConfig:
    """The whole run: ``data``, ``model``, ``loss``, ``bank``, ``optim``, ``eval``, ``run``."""

    data: DataConfig = field(default_factory=DataConfig)
    model: Any = field(default_factory=_default_model)  # training.model.ModelConfig
    loss: Any = field(default_factory=_default_loss)  # training.losses.head.LossConfig
    bank: BankConfig = field(default_factory=BankConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: RunConfig = field(default_factory=RunConfig)


# ------------------------------------------------------------------------------------------------------------
# YAML + overrides (OmegaConf, through nrconfig)
# ------------------------------------------------------------------------------------------------------------
# YAML 1.1 reads an unquoted `no` as the boolean False; for this field it can only mean the string "no"
_YAML_BOOLS = {"run.mixed_precision": {False: "no"}}


def to_dict(obj: Any) -> Any:
    """Plain nested dict/list form of a config dataclass for YAML."""
    return dataclasses.asdict(obj)


def config_from_yaml_text(
    text: str, overrides: list[str] | None = None, *, source: str = "<yaml>"
) -> TrainConfig:
    """Parse YAML text (+ dotted overrides) into a TrainConfig (types and keys checked; not yet validated)."""
    try:
        tree = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: not valid YAML: {e}") from e
    if not isinstance(tree, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections, got {type(tree).__name__}")
    return _build(tree, overrides, source)


def _build(tree: dict[str, Any] | None, overrides: list[str] | None, source: str) -> TrainConfig:
    over = nrconfig.overrides_tree(overrides or [])
    for where, part in ((source, tree or {}), ("command line", over)):
        for name, value in part.items():  # a section set to a scalar (model/loss are ``Any`` fields)
            if name in _SECTIONS and not isinstance(value, dict | None):
                raise ConfigError(f"{name}: expected a mapping of {name} keys, got {value!r} ({where})")
    sources = [tree] if tree else []
    return nrconfig.build(TrainConfig, *sources, overrides=over, yaml_bools=_YAML_BOOLS)


_SECTIONS = ("data", "model", "loss", "bank", "optim", "eval", "run")


def load_config(path: str | None, overrides: list[str] | None = None) -> TrainConfig:
    """Load ``path`` (YAML, or the name of a shipped config such as ``demo``; None = all defaults) and apply
    dotted ``overrides``."""
    if path is None:
        return _build(None, overrides, "<defaults>")
    path = nrconfig.resolve_config_path(path)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(f"cannot read config file {path!r}: {e.strerror or e}") from e
    return config_from_yaml_text(text, overrides, source=path)


def save_config(cfg: TrainConfig, path: str) -> None:
    """Write the resolved config as YAML (atomic: temp file + rename; mode 0644 so colleagues can read it)."""
    import os

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tree = to_dict(cfg)
    storage = tree.get("data", {}).get("storage") or {}
    # never write credentials into run folders; readers fall back to AWS_* env
    for secret in ("key", "secret"):
        if storage.get(secret):
            storage[secret] = None
    text = yaml.safe_dump(tree, sort_keys=False)
    write_bytes_atomic(os.path.abspath(path), text.encode("utf-8"))  # not mkstemp's 0600


# ------------------------------------------------------------------------------------------------------------
# validation (once, before any work)
# ------------------------------------------------------------------------------------------------------------
def resolve_similarity(cfg: TrainConfig) -> str:
    """``eval.similarity`` with ``auto`` resolved: ``pooled`` for the InfoNCE baseline, else ``local``."""
    if cfg.eval.similarity != "auto":
        return cfg.eval.similarity
    return "pooled" if getattr(cfg.loss, "kind", "neighborretr") == "infonce" else "local"


def split_url(data: DataConfig, location: str) -> str:
    """Resolve a split location: a name under ``data.root`` or a full path / URL (contains ``/``)."""
    if "/" in location or data.root is None:
        return location.rstrip("/")
    return data.root.rstrip("/") + "/" + location


def is_shard_list(location: str) -> bool:
    """True when a split location names shard files rather than a split folder: a brace pattern
    (``.../train-{000000..000099}.tar``), a ``.tar`` URL, or several URLs separated by whitespace."""
    return "{" in location or location.rstrip().endswith(".tar") or len(location.split()) > 1


def shard_urls(data: DataConfig, location: str) -> list[str]:
    """The shard URLs of a shard-list location, brace patterns expanded (``shards.fs.expand_urls``)."""
    from shards import fs as sfs

    return sfs.expand_urls(split_url(data, location))


def split_folders(data: DataConfig, location: str) -> list[str]:
    """The folders whose ``sizes.json`` / ``captions.json`` describe a location: the split folder, or the
    folders of a shard list's files (first appearance order)."""
    if not is_shard_list(location):
        return [split_url(data, location)]
    return list(dict.fromkeys(u.rsplit("/", 1)[0] if "/" in u else "." for u in shard_urls(data, location)))


def _check_split(data: DataConfig, field_name: str, errors: list[str]) -> None:
    from shards import fs as sfs

    location = getattr(data, field_name)
    if location is None:
        return
    for url in split_folders(data, location):
        sizes = sfs.join(url, "sizes.json")
        try:
            ok = sfs.exists(sizes, data.storage)
        except Exception as e:  # noqa: BLE001 - unreachable storage is a config problem too
            errors.append(f"data.{field_name}: cannot reach {sizes}: {type(e).__name__}: {e}")
            return
        if not ok:
            errors.append(
                f"data.{field_name}: no shards at {url} (missing {sizes}; run `nr-shards-index {url}`)"
            )


def validate_config(
    cfg: TrainConfig, *, world_size: int = 1, check_shards: bool = True, cuda_available: bool | None = None
) -> None:
    """Check the whole tree once; raise :class:`ConfigError` listing every problem (each names its dotted
    key)."""
    errors: list[str] = []

    def need(cond: bool, msg: str) -> None:
        if not cond:
            errors.append(msg)

    d, o, e, r, b = cfg.data, cfg.optim, cfg.eval, cfg.run, cfg.bank
    # data
    need(d.batch_size > 0, f"data.batch_size: must be > 0, got {d.batch_size}")
    need(d.eval_batch_size > 0, f"data.eval_batch_size: must be > 0, got {d.eval_batch_size}")
    if world_size > 0 and d.batch_size > 0:
        need(
            d.batch_size % world_size == 0,
            f"data.batch_size: global batch {d.batch_size} is not divisible by the world size {world_size}",
        )
    if world_size > 0 and d.eval_batch_size > 0:
        need(
            d.eval_batch_size % world_size == 0,
            f"data.eval_batch_size: {d.eval_batch_size} is not divisible by the world size {world_size}",
        )
    need(d.num_workers >= 0, f"data.num_workers: must be >= 0, got {d.num_workers}")
    need(d.eval_num_workers >= 0, f"data.eval_num_workers: must be >= 0, got {d.eval_num_workers}")
    need(d.frame_size > 0, f"data.frame_size: must be > 0, got {d.frame_size}")
    need(
        d.caption_mode in CAPTION_MODES, f"data.caption_mode: {d.caption_mode!r} not in {list(CAPTION_MODES)}"
    )
    need(d.on_error in ("skip", "raise"), f"data.on_error: {d.on_error!r} not in ['skip', 'raise']")
    need(d.frames in FRAME_OUTPUTS, f"data.frames: {d.frames!r} not in {list(FRAME_OUTPUTS)}")
    need(
        d.convert_in in ("auto", "main", "worker"),
        f"data.convert_in: {d.convert_in!r} not in ['auto', 'main', 'worker']",
    )
    need(d.shuffle_buffer >= 0, f"data.shuffle_buffer: must be >= 0, got {d.shuffle_buffer}")
    need(d.retries >= 0, f"data.retries: must be >= 0, got {d.retries}")
    need(
        d.root is not None or "/" in d.train,
        "data.root: required when data.train is a split name (or give data.train as a path/URL)",
    )
    # optim
    for name in ("lr", "coef_lr", "eps"):
        v = getattr(o, name)
        need(math.isfinite(v) and v > 0, f"optim.{name}: must be a positive number, got {v}")
    need(
        math.isfinite(o.weight_decay) and o.weight_decay >= 0,
        f"optim.weight_decay: must be >= 0, got {o.weight_decay}",
    )
    need(
        len(o.betas) == 2 and all(0 <= x < 1 for x in o.betas),
        f"optim.betas: must be two numbers in [0, 1), got {o.betas}",
    )
    need(0 <= o.warmup < 1, f"optim.warmup: must be in [0, 1), got {o.warmup}")
    need(o.epochs >= 1, f"optim.epochs: must be >= 1, got {o.epochs}")
    need(o.grad_clip >= 0, f"optim.grad_clip: must be >= 0 (0 disables), got {o.grad_clip}")
    need(o.grad_accum >= 1, f"optim.grad_accum: must be >= 1, got {o.grad_accum}")
    need(o.max_steps is None or o.max_steps >= 1, f"optim.max_steps: must be >= 1 or null, got {o.max_steps}")
    # bank
    need(b.prefill_batches >= 0, f"bank.prefill_batches: must be >= 0, got {b.prefill_batches}")
    need(b.capacity is None or b.capacity >= 1, f"bank.capacity: must be >= 1 or null, got {b.capacity}")
    if b.enabled and b.capacity is None and b.prefill_batches == 0:
        errors.append(
            "bank.capacity: the bank is enabled but has no size (set bank.capacity or "
            "bank.prefill_batches > 0, or bank.enabled=false)"
        )
    # eval
    need(e.split in ("val", "test"), f"eval.split: {e.split!r} not in ['val', 'test']")
    need(e.every_steps >= 0, f"eval.every_steps: must be >= 0, got {e.every_steps}")
    need(e.select_mode in ("max", "min"), f"eval.select_mode: {e.select_mode!r} not in ['max', 'min']")
    need(
        e.caption_mode in EVAL_CAPTION_MODES,
        f"eval.caption_mode: {e.caption_mode!r} not in {list(EVAL_CAPTION_MODES)}",
    )
    need(
        e.select_metric.startswith(e.split + "/"),
        f"eval.select_metric: {e.select_metric!r} must be a key of the evaluated split (start with "
        f"'{e.split}/'; selecting on test needs eval.split=test)",
    )
    need(all(k >= 1 for k in e.ks) and len(e.ks) > 0, f"eval.ks: must be positive integers, got {e.ks}")
    need(e.block >= 1, f"eval.block: must be >= 1, got {e.block}")
    need(e.similarity in SIMILARITIES, f"eval.similarity: {e.similarity!r} not in {list(SIMILARITIES)}")
    eval_location = d.val if e.split == "val" else d.test
    if e.every_steps > 0 or e.at_epoch_end:
        need(
            eval_location is not None,
            f"data.{e.split}: validation is enabled (eval.every_steps/at_epoch_end) but no {e.split} "
            "split is set",
        )
    # run
    need(
        r.mixed_precision in MIXED_PRECISION,
        f"run.mixed_precision: {r.mixed_precision!r} not in {list(MIXED_PRECISION)}",
    )
    if r.mixed_precision == "fp16":
        if cuda_available is None:
            import torch

            cuda_available = torch.cuda.is_available() and not r.cpu
        need(cuda_available, "run.mixed_precision: fp16 needs a CUDA device (use bf16 or no on CPU)")
    need(r.save_every_steps >= 0, f"run.save_every_steps: must be >= 0, got {r.save_every_steps}")
    need(r.keep_last >= 1, f"run.keep_last: must be >= 1, got {r.keep_last}")
    need(r.log_every_steps >= 1, f"run.log_every_steps: must be >= 1, got {r.log_every_steps}")
    need(bool(r.out), "run.out: must name a run folder")
    from training.trackers import tracker_errors

    errors.extend(tracker_errors(r))
    need(
        r.log_level.upper() in ("DEBUG", "INFO", "WARNING", "ERROR"),
        f"run.log_level: {r.log_level!r} not a logging level",
    )
    # model <-> data consistency
    for name in ("max_frames", "max_words"):
        v = getattr(cfg.model, name, None)
        if v is not None:
            need(isinstance(v, int) and v >= 1, f"model.{name}: must be >= 1, got {v}")
    if getattr(cfg.model, "max_words", 3) < 3:
        errors.append("model.max_words: must be >= 3 (SOT, one word, EOT)")
    # loss (component's own validation on the global batch)
    if d.batch_size > 0:
        loss_validate = getattr(cfg.loss, "validate", None)
        if callable(loss_validate):
            try:
                loss_validate(d.batch_size)
            except ValueError as ex:
                errors.append(f"loss: {ex} (global batch data.batch_size={d.batch_size})")
        if getattr(cfg.loss, "kind", "neighborretr") == "neighborretr":
            k = getattr(cfg.loss, "num_neighbors", None)
            if isinstance(k, int) and k > d.batch_size - 3:
                msg = (
                    f"loss.num_neighbors: {k} neighbours need a global batch of at least {k + 3} "
                    f"(k <= batch - 3, docs/method.md §8-Q13b); data.batch_size is {d.batch_size}"
                )
                if not any(m.startswith("loss") and "num_neighbors" in m for m in errors):
                    errors.append(msg)
    if getattr(cfg.loss, "kind", None) not in ("neighborretr", "infonce"):
        errors.append(f"loss.kind: {getattr(cfg.loss, 'kind', None)!r} not in ['neighborretr', 'infonce']")
    # shards: only once the rest is sound (a network round trip per split)
    if check_shards and not errors:
        _check_split(d, "train", errors)
        if e.every_steps > 0 or e.at_epoch_end:
            _check_split(d, e.split, errors)
    if errors:
        raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(errors))


# ------------------------------------------------------------------------------------------------------------
# DataConfig -> shards.reader.LoaderConfig
# ------------------------------------------------------------------------------------------------------------
def frame_output(frames: str) -> str:
    """The loader's ``output`` for ``data.frames``: "auto" -> "uint8" when CUDA is available, else "float"."""
    if frames == "auto":
        import torch

        return "uint8" if torch.cuda.is_available() else "float"
    return frames


def loader_config(
    cfg: TrainConfig,
    location: str,
    *,
    purpose: str,
    world_size: int,
    caption_mode: str | None = None,
    seed_offset: int = 0,
) -> Any:
    """The ``shards.reader.LoaderConfig`` of one split for ``purpose`` ``train`` | ``bank`` | ``eval``.

    Per-rank batch = global batch / world size. Training and bank loaders shuffle (reshuffled every epoch by
    ``set_epoch``) and augment when ``data.augment``; eval loaders read in order without augmentation. Frame
    count and words per caption come from the model config.
    """
    from shards.reader import LoaderConfig

    d = cfg.data
    train = purpose in ("train", "bank")
    global_batch = d.batch_size if train else d.eval_batch_size
    output = frame_output(d.frames)
    values: dict[str, Any] = {
        "urls": None,
        "root": None,
        "split": None,
        "batch_size": global_batch // max(world_size, 1),
        "num_workers": d.num_workers if train else d.eval_num_workers,
        "num_frames": cfg.model.max_frames,
        "max_words": cfg.model.max_words,
        "frame_size": d.frame_size,
        "output": output,
        "convert_in": d.convert_in if d.convert_in != "auto" else ("worker" if output == "uint8" else "main"),
        "normalize": True,
        "augment": bool(d.augment and train),
        "caption_mode": caption_mode or (d.caption_mode if train else "first"),
        "shuffle": train,
        "shuffle_buffer": d.shuffle_buffer,
        "seed": cfg.run.seed + seed_offset,
        "drop_last": False,
        "on_error": d.on_error,
        "storage": d.storage,
        "cache_dir": d.cache_dir,
        "retries": d.retries,
    }
    url = split_url(d, location)
    known = {f.name for f in dataclasses.fields(LoaderConfig)}
    if is_shard_list(location):  # brace patterns are expanded by the reader (shards.fs.expand_urls)
        values["urls"] = url.split()
    else:
        root, _, split = url.rpartition("/")
        values["root"], values["split"] = root, split
        if "root" not in known or "split" not in known:
            values["urls"] = url
    return LoaderConfig(**{k: v for k, v in values.items() if k in known and v is not None})
