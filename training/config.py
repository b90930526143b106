"""The one typed configuration tree of a training run, loaded from YAML with dotted CLI overrides.

``TrainConfig(data, model, loss, bank, optim, eval, run)`` composes the component configs: ``model`` is
:class:`training.model.ModelConfig`, ``loss`` is :class:`training.losses.head.LossConfig`, ``data.storage`` is
:class:`shards.fs.StorageOptions`; the rest are defined here. Usage::

    cfg = load_config("configs/demo.yaml", ["optim.lr=3e-4", "run.out=runs/x"])
    validate_config(cfg, world_size=2)  # once, before any work; ConfigError lists every problem
    save_config(cfg, "runs/x/config.yaml")  # the resolved config

Building a dataclass from a mapping checks every key (unknown keys are named with their dotted path and the
closest known keys are suggested) and every value's type (``int`` for an ``int`` field, ``bool`` for ``bool``;
``float`` fields accept integers and YAML 1.1 strings such as ``1e-4``).
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, TypeVar

import yaml

from shards.fs import StorageOptions, write_bytes_atomic

__all__ = [
    "ConfigError",
    "DataConfig",
    "BankConfig",
    "OptimConfig",
    "EvalConfig",
    "RunConfig",
    "TrainConfig",
    "from_dict",
    "to_dict",
    "parse_overrides",
    "apply_overrides",
    "load_config",
    "save_config",
    "config_from_yaml_text",
    "validate_config",
    "split_url",
    "resolve_similarity",
    "frame_output",
    "loader_config",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

MIXED_PRECISION = ("no", "bf16", "fp16")
CAPTION_MODES = ("random", "all", "first")
FRAME_OUTPUTS = ("auto", "float", "uint8")
EVAL_CAPTION_MODES = ("auto", "first", "all")
SIMILARITIES = ("auto", "local", "pooled")


class ConfigError(ValueError):
    """A configuration problem found before training starts; the message names the dotted key."""


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
    a full path / ``s3://`` URL of a split folder (anything containing ``/``). Frame count and words per
    caption come from ``model.max_frames`` / ``model.max_words`` so that model and data cannot disagree.
    """

    root: str | None = None  # dataset root holding one folder per split (local path or s3://bucket/prefix)
    train: str = "train"  # training split: name under root, or a split folder path/URL
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
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1e-6
    warmup: float = 0.1  # fraction of total optimiser steps spent in linear warmup
    epochs: int = 5
    grad_clip: float = 1.0  # global grad-norm clip, once per optimiser step (0 disables)
    grad_accum: int = 1  # micro-batches per optimiser step (each micro-batch is one contrastive batch)
    max_steps: int | None = None  # stop after this many training batches (smoke tests); None = all epochs


@dataclass
class EvalConfig:
    """Validation during training and the ONE best checkpoint."""

    split: str = "val"  # "val" (held-out) or "test" (selection on test: reported as such)
    every_steps: int = 0  # validate every N training batches (0: only at epoch end)
    at_epoch_end: bool = True
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

    out: str = "runs/default"  # run folder: config.yaml, metrics.jsonl, tb/, checkpoints/, best/
    seed: int = 42
    mixed_precision: str = "no"  # no | bf16 | fp16 (autocast with fp32 master weights; fp16 needs CUDA)
    cpu: bool = False  # force CPU even when CUDA exists (CPU is used automatically without CUDA)
    save_every_steps: int = 0  # checkpoint every N training batches (0: only at epoch end)
    keep_last: int = 2  # periodic checkpoints kept (best/ is kept separately)
    log_every_steps: int = 1  # metrics.jsonl gets every step; this sets the console/TensorBoard cadence
    tensorboard: bool = True
    progress: bool = True  # rank-0 tqdm bar
    # DDP: keep False. Parameters used by the losses outside ``forward`` (logit_scale, token-weight MLPs)
    # make find_unused_parameters=True fail ("mark a variable ready only once"); modules a loss kind does not
    # use are frozen instead (the InfoNCE baseline freezes the token weights and merge blocks).
    find_unused_parameters: bool = False
    log_level: str = "INFO"


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


# Section types resolved lazily (the model/loss modules are imported only when a config is built).
def _section_types() -> dict[str, type]:
    return {
        "data": DataConfig,
        "model": _model_config_cls(),
        "loss": _loss_config_cls(),
        "bank": BankConfig,
        "optim": OptimConfig,
        "eval": EvalConfig,
        "run": RunConfig,
    }


# ------------------------------------------------------------------------------------------------------------
# dict <-> dataclass with type checks
# ------------------------------------------------------------------------------------------------------------
def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` (returning a possibly converted value) or raise
    ConfigError."""
    if tp is Any or tp is object:
        return value
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(f"{key}: must not be null")
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(
            errors[0] if len(errors) == 1 else f"{key}: {value!r} matches none of {_type_name(tp)}"
        )
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{key}: {value!r} is not one of {list(typing.get_args(tp))}")
        return value
    if origin in (list, tuple, set, typing.Sequence) or tp in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__} {value!r}")
        args = typing.get_args(tp)
        inner = args[0] if args else Any
        items = [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple or tp is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__} {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if dataclasses.is_dataclass(value) and isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {_type_name(tp)} fields, got {value!r}")
        return from_dict(tp, value, prefix=key)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {type(value).__name__} {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {type(value).__name__} {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got bool {value!r}")
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {type(value).__name__} {value!r}")
    if tp is str:
        if isinstance(value, bool):
            raise ConfigError(
                f"{key}: expected a string, got bool {value!r} (YAML reads no/yes/on/off/true/false as "
                f'booleans: quote the value, e.g. {key}=\'"no"\' on the command line or "no" in YAML)'
            )
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {type(value).__name__} {value!r}")
        return value
    if isinstance(tp, type):
        if not isinstance(value, tp):
            raise ConfigError(f"{key}: expected {tp.__name__}, got {type(value).__name__} {value!r}")
        return value
    return value  # unknown annotation form: accept as is


def _field_types(cls: type) -> dict[str, Any]:
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # noqa: BLE001 - a foreign dataclass with unresolvable annotations: no type checks
        hints = {}
    out = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        out[f.name] = hints.get(f.name, Any)
    if cls is TrainConfig:
        out.update(_section_types())
    return out


def _unknown_key_error(key: str, name: str, known: list[str], prefix: str) -> ConfigError:
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    hint = f" (did you mean {', '.join(repr(_join(prefix, c)) for c in close)}?)" if close else ""
    return ConfigError(
        f"unknown config key {key!r}{hint}; known keys under {prefix or 'the top level'}: {', '.join(known)}"
    )


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def from_dict(cls: type[T], data: dict[str, Any] | None, *, prefix: str = "") -> T:
    """Build dataclass ``cls`` from a nested mapping, checking keys and value types (``prefix`` names the
    path)."""
    data = data or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {type(data).__name__}")
    types_ = _field_types(cls)
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        key = _join(prefix, str(name))
        if name not in types_:
            raise _unknown_key_error(key, str(name), list(types_), prefix)
        kwargs[name] = _coerce(value, types_[name], key)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"{prefix or 'config'}: {e}") from e


def to_dict(obj: Any) -> Any:
    """Plain nested dict/list form of a config dataclass (tuples become lists) for YAML."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, list | tuple):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


# ------------------------------------------------------------------------------------------------------------
# YAML + overrides
# ------------------------------------------------------------------------------------------------------------
def _parse_scalar(text: str) -> Any:
    """``"3e-4"`` -> 3e-4, ``"8"`` -> 8, ``"true"`` -> True, ``"null"`` -> None, ``"[1,2]"`` -> [1, 2], else
    str."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        f = float(text)
        if text.strip().lower() not in ("nan", "inf", "-inf", "infinity", "-infinity"):
            return f
    except ValueError:
        pass
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["optim.lr=3e-4", "run.out=runs/x"]`` -> ``{"optim.lr": 3e-4, "run.out": "runs/x"}``."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form section.key=value")
        key, _, text = item.partition("=")
        key = key.strip()
        if not key or any(not p for p in key.split(".")):
            raise ConfigError(f"override {item!r}: empty key")
        out[key] = _parse_scalar(text)
    return out


def apply_overrides(tree: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Set dotted keys in a nested dict (creating intermediate mappings); returns the same dict."""
    for key, value in overrides.items():
        node = tree
        parts = key.split(".")
        for p in parts[:-1]:
            child = node.get(p)
            if child is None:
                child = node[p] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {key!r}: {p!r} is a value, not a section")
            node = child
        node[parts[-1]] = value
    return tree


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
    apply_overrides(tree, parse_overrides(overrides or []))
    run = tree.get("run")
    if isinstance(run, dict) and run.get("mixed_precision") is False:
        run["mixed_precision"] = "no"  # YAML 1.1 reads an unquoted `no` as the boolean False
    return from_dict(TrainConfig, tree)


def load_config(path: str | None, overrides: list[str] | None = None) -> TrainConfig:
    """Load ``path`` (YAML; None = all defaults) and apply dotted ``overrides``."""
    if path is None:
        return config_from_yaml_text("{}", overrides)
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
    for secret in ("key", "secret"):  # never write credentials into run folders; readers fall back to AWS_* env
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


def _check_split(data: DataConfig, field_name: str, errors: list[str]) -> None:
    from shards import fs as sfs

    location = getattr(data, field_name)
    if location is None:
        return
    url = split_url(data, location)
    sizes = sfs.join(url, "sizes.json")
    try:
        ok = sfs.exists(sizes, data.storage)
    except Exception as e:  # noqa: BLE001 - unreachable storage is a config problem too
        errors.append(f"data.{field_name}: cannot reach {sizes}: {type(e).__name__}: {e}")
        return
    if not ok:
        errors.append(f"data.{field_name}: no shards at {url} (missing {sizes}; run `nr-shards-index {url}`)")


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
    root, _, split = url.rpartition("/")
    values["root"], values["split"] = root, split
    known = {f.name for f in dataclasses.fields(LoaderConfig)}
    if "root" not in known or "split" not in known:
        values["urls"] = url
    return LoaderConfig(**{k: v for k, v in values.items() if k in known and v is not None})
