"""Write the UNTRAINED model of a training config as a checkpoint folder (the demo's "untrained" reference).

    python scripts/init_checkpoint.py --config configs/demo.yaml --out demo_out/untrained [key=value ...]

The model is built exactly as ``training.train`` builds it before the first step: the config is loaded and
resolved (``training.train.resolve_config``: the vision tower follows ``data.frame_size``), the seed is set with
``accelerate.utils.set_seed(run.seed)`` and ``NeighborRetrModel(cfg.model)`` is constructed. So with the same config
and overrides the weights equal the trainer's initial weights. ``OUT`` then holds ``pytorch_model.bin`` (state
dict, loadable with ``torch.load(weights_only=True)``) and ``config.yaml``, which ``training.score --checkpoint OUT``
reads like a ``best/`` folder.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

import torch

__all__ = ["write_init_checkpoint", "main"]

logger = logging.getLogger(__name__)


def write_init_checkpoint(config: str | None, out: str, overrides: list[str] | None = None) -> str:
    """Build the initial model of ``config`` (+ dotted ``overrides``) and save it under ``out``; returns ``out``.

    Raises ``training.config.ConfigError`` for a bad config; writes atomically (``out.tmp`` then rename).
    """
    import shutil

    from accelerate.utils import set_seed

    from training.checkpoint import MODEL_FILE
    from training.config import load_config, save_config
    from training.model import NeighborRetrModel
    from training.train import resolve_config

    cfg = resolve_config(load_config(config, overrides or []))
    set_seed(cfg.run.seed)
    model = NeighborRetrModel(cfg.model)
    tmp = out.rstrip("/") + ".tmp"
    if os.path.exists(tmp):
        shutil.rmtree(tmp)
    os.makedirs(tmp)
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, os.path.join(tmp, MODEL_FILE))
    save_config(cfg, os.path.join(tmp, "config.yaml"))
    if os.path.exists(out):
        shutil.rmtree(out)
    os.replace(tmp, out)
    n = sum(p.numel() for p in model.parameters())
    logger.info("untrained %s (%d parameters, seed %d) written to %s", cfg.model.arch, n, cfg.run.seed, out)
    return out


def _say(text: str) -> None:
    """CLI output (stdout)."""
    sys.stdout.write(text + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="init_checkpoint", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", help="training config YAML (omitted: defaults)")
    p.add_argument("--out", required=True, help="checkpoint folder to write")
    p.add_argument("overrides", nargs="*", help="dotted config overrides, as for training.train")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from training.config import ConfigError

    try:
        out = write_init_checkpoint(args.config, args.out, args.overrides)
    except ConfigError as e:
        sys.stderr.write(f"init_checkpoint: {e}\n")
        return 2
    _say(f"init_checkpoint: untrained model written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
