"""Score a split with a trained checkpoint: the text x video matrix for ``eval`` (``nr-score``).

    python -m training.score --run runs/msrvtt --split test --out runs/msrvtt/test_scores.npz
    python -m training.score --checkpoint runs/msrvtt/checkpoints/step-00001000 --split val --out val.npz
    accelerate launch --multi_gpu --num_processes 8 -m training.score --run runs/msrvtt --split test \
        --out s.npz

``--run`` uses ``RUN/best`` (else the newest periodic checkpoint). Only the model weights are loaded
(``torch.load(weights_only=True)``); the model is rebuilt from the checkpoint's ``config.yaml`` without its
``pretrained`` backbone (the weights replace it). The split's shards are streamed (each rank encodes its
share), scored with the test-time local similarity (``training.validate``), and written by
``eval.scores_io.save_scores``: ``gt`` for one caption per video (caption mode ``first``), ``relevance`` for
multi-caption splits (``all``).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys

import torch

import nrconfig
from training.config import (
    ConfigError,
    TrainConfig,
    load_config,
    loader_config,
    resolve_similarity,
    split_url,
)

__all__ = ["parse_args", "resolve_checkpoint", "load_model", "main"]

logger = logging.getLogger(__name__)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="nr-score", description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", help="run folder (uses RUN/best, else its newest checkpoint)")
    src.add_argument(
        "--checkpoint", help="checkpoint folder (best/ or checkpoints/step-N) or a pytorch_model.bin"
    )
    p.add_argument(
        "--split",
        default="test",
        help="train | val | test (the config's data.<split>), a split name under data.root, or a "
        "split folder path/URL (default: test)",
    )
    p.add_argument(
        "--queries",
        default=None,
        help="take the texts from this split instead (e.g. train): writes a QUERY BANK [n_bank, G] npz "
        "(scores, query_ids, gallery_ids) for eval's --bank-scores (QB-Norm, IS, CSLS, NNN)",
    )
    p.add_argument("--out", required=True, help="output scores file (.npz)")
    p.add_argument("--config", help="config YAML (default: the checkpoint's / run's config.yaml)")
    p.add_argument(
        "--caption-mode",
        default=None,
        choices=("auto", "first", "all"),
        help="default: the config's eval.caption_mode (auto: all when a sample has several captions)",
    )
    p.add_argument(
        "--batch-size", type=int, default=None, help="global eval batch (default data.eval_batch_size)"
    )
    p.add_argument("--workers", type=int, default=None, help="loader workers per rank")
    p.add_argument("--block", type=int, default=None, help="texts per similarity block (default eval.block)")
    p.add_argument("--metrics", action="store_true", help="also print retrieval metrics of the scores")
    p.add_argument("--cpu", action="store_true", help="run on CPU even when CUDA exists")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    nrconfig.add_version(p)
    p.add_argument("overrides", nargs="*", help="dotted config overrides (e.g. data.root=s3://bucket/ds)")
    return p.parse_intermixed_args(argv)  # options and key=value overrides in any order


def resolve_checkpoint(run: str | None, checkpoint: str | None) -> str:
    """The checkpoint folder (or weights file) to load."""
    from training.checkpoint import latest_checkpoint

    if checkpoint is not None:
        if not os.path.exists(checkpoint):
            raise FileNotFoundError(f"--checkpoint {checkpoint!r} does not exist")
        return checkpoint
    assert run is not None
    best = os.path.join(run, "best")
    if os.path.isdir(best):
        return best
    latest = latest_checkpoint(run)
    if latest is None:
        raise FileNotFoundError(f"--run {run!r}: neither best/ nor checkpoints/step-* found")
    return latest


def _config_path(args: argparse.Namespace, ckpt: str) -> str:
    if args.config:
        return args.config
    folder = ckpt if os.path.isdir(ckpt) else os.path.dirname(ckpt)
    for cand in (os.path.join(folder, "config.yaml"), os.path.join(args.run or "", "config.yaml")):
        if os.path.isfile(cand):
            return cand
    raise FileNotFoundError(f"no config.yaml next to {ckpt!r}; pass --config")


def load_model(cfg: TrainConfig, ckpt: str) -> torch.nn.Module:
    """``NeighborRetrModel`` from ``cfg.model`` (no pretrained download) with the checkpoint's weights."""
    from training.checkpoint import load_model_weights
    from training.model import NeighborRetrModel

    model = NeighborRetrModel(dataclasses.replace(cfg.model, pretrained=None))
    state = load_model_weights(ckpt)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{ckpt}: weights do not match the model of its config "
            f"(missing {missing[:5]}, unexpected {unexpected[:5]})"
        )
    return model


def _location(cfg: TrainConfig, split: str) -> str:
    if split in ("train", "val", "test"):
        loc = getattr(cfg.data, split)
        if loc is None:
            raise ConfigError(f"--split {split}: data.{split} is not set in the config")
        return loc
    return split


def _require_shards(cfg: TrainConfig, flag: str, value: str, url: str) -> None:
    """Fail before the model is loaded when the split to score has no shards (a mistyped ``--split``)."""
    from shards import fs as sfs

    sizes = sfs.join(url, "sizes.json")
    try:
        ok = sfs.exists(sizes, cfg.data.storage)
    except Exception as e:  # noqa: BLE001 - unreachable storage: same answer, with the reason
        raise ConfigError(f"{flag} {value}: cannot reach {sizes}: {type(e).__name__}: {e}") from None
    if not ok:
        d = cfg.data
        raise ConfigError(
            f"{flag} {value}: no shards at {url} (missing {sizes}); the config's splits are "
            f"train={d.train!r}, val={d.val!r}, test={d.test!r} under data.root={d.root!r}"
        )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from accelerate import Accelerator

    from eval.scores_io import save_bank, save_scores
    from training.logging_utils import setup_logging
    from training.validate import metrics_of, resolve_caption_mode, score_split

    setup_logging("INFO", rank=int(os.environ.get("RANK", "0")))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    try:
        ckpt = resolve_checkpoint(args.run, args.checkpoint)
        cfg = load_config(_config_path(args, ckpt), args.overrides)
        if args.batch_size is not None:
            cfg.data.eval_batch_size = args.batch_size
        if args.workers is not None:
            cfg.data.eval_num_workers = args.workers
        if cfg.data.eval_batch_size % world:
            raise ConfigError(
                f"eval batch {cfg.data.eval_batch_size} is not divisible by the world size {world}"
            )
        location = _location(cfg, args.split)
        url = split_url(cfg.data, location)
        _require_shards(cfg, "--split", args.split, url)
        q_location = _location(cfg, args.queries) if args.queries else None
        if q_location is not None:
            _require_shards(cfg, "--queries", args.queries, split_url(cfg.data, q_location))
    except (ConfigError, FileNotFoundError) as e:
        return nrconfig.cli_error("nr-score", e)
    if args.print_config:
        sys.stdout.write(nrconfig.to_yaml(cfg))
        return 0
    accelerator = Accelerator(
        cpu=args.cpu or not torch.cuda.is_available(),
        mixed_precision=cfg.run.mixed_precision if torch.cuda.is_available() else "no",
    )
    try:
        mode = resolve_caption_mode(url, args.caption_mode or cfg.eval.caption_mode, cfg.data.storage)
        model = load_model(cfg, ckpt).to(accelerator.device)
        from shards.reader import build_loader

        lcfg = loader_config(
            cfg, location, purpose="eval", world_size=accelerator.num_processes, caption_mode=mode
        )
        loader = build_loader(lcfg, rank=accelerator.process_index, world_size=accelerator.num_processes)
        query_loader = None
        if q_location is not None:
            qcfg = loader_config(
                cfg, q_location, purpose="eval", world_size=accelerator.num_processes, caption_mode=mode
            )
            query_loader = build_loader(
                qcfg, rank=accelerator.process_index, world_size=accelerator.num_processes
            )
        result = score_split(
            model,
            loader,
            device=accelerator.device,
            caption_mode=mode,
            block=args.block or cfg.eval.block,
            autocast=accelerator.autocast,
            progress=accelerator.is_main_process,
            similarity=resolve_similarity(cfg),
            query_loader=query_loader,
        )
        if result is not None and query_loader is not None:
            out = save_bank(args.out, result.scores, result.query_ids, result.gallery_ids)
            q, g = result.scores.shape
            print(  # noqa: T201 - CLI output
                f"nr-score: query bank {q} {args.queries} texts x {g} videos of {url} "
                f"({resolve_similarity(cfg)} similarity) with {ckpt} -> {out} ({result.seconds:.1f} s)"
            )
        elif result is not None:
            out = save_scores(
                args.out,
                result.scores,
                result.query_ids,
                result.gallery_ids,
                gt=result.gt,
                relevance=result.relevance,
            )
            q, g = result.scores.shape
            target = "relevance" if result.relevance is not None else "gt"
            msg = (
                f"nr-score: {q} texts x {g} videos ({target}, caption mode {mode}, {resolve_similarity(cfg)} "
                f"similarity) from {url} "
                f"with {ckpt} -> {out} ({result.seconds:.1f} s)"
            )
            print(msg)  # noqa: T201 - CLI output
            if args.metrics:
                metrics = metrics_of(
                    result, prefix=args.split if "/" not in args.split else "split", ks=cfg.eval.ks
                )
                for k in sorted(metrics):
                    if "/hub/" not in k and "clip4clip" not in k and "_opt" not in k and "_pess" not in k:
                        print(f"  {k} = {metrics[k]:.4f}")  # noqa: T201 - CLI output
    finally:
        accelerator.end_training()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
