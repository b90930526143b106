"""Score the texts of one split against the videos of another with a checkpoint (query banks, pooled baseline).

    python scripts/demo_scores.py --checkpoint RUN/best --queries train --gallery test --out bank_test.npz
    python scripts/demo_scores.py --checkpoint RUN/best --queries test --gallery test --similarity pooled \
        --out test_scores.npz

``training.score`` scores a split against itself with the test-time local similarity. The comparison mode also
needs (a) a QUERY BANK: the training split's captions scored against the test (and val) gallery, for QB-Norm
(hubness-eval.md §2.1), and (b) scores of the InfoNCE baseline with the similarity it was trained with.

Similarities (texts a, videos b; T_a [L, D] text tokens with mask, V_b [F, D] frame tokens with mask):

- ``local``: the test-time NeighborRetr similarity S^loc (``training.similarity.score_local``, method.md §2.8);
- ``pooled``: the InfoNCE baseline's cosine ``<t_a, v_b> / (|t_a| |v_b|)`` with t_a the EOT token (last valid
  text position) and v_b the mean of the valid frame tokens (``training.losses.infonce``).

Output: when ``--queries`` and ``--gallery`` are the same split, a scores file (``eval.scores_io.save_scores``:
``scores`` [Q, G], ``query_ids``, ``gallery_ids``, ``gt``); otherwise a bank file (npz: ``scores`` [n_bank, G],
``query_ids``, ``gallery_ids``) that ``python -m eval --bank-scores`` reads. One process; captions mode ``first``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from typing import Any

import numpy as np
import torch

__all__ = ["SIMILARITIES", "encode", "similarity", "main"]

logger = logging.getLogger(__name__)

SIMILARITIES = ("local", "pooled")


def _config_path(ckpt: str, config: str | None) -> str:
    if config:
        return config
    folder = ckpt if os.path.isdir(ckpt) else os.path.dirname(ckpt)
    path = os.path.join(folder, "config.yaml")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no config.yaml next to {ckpt!r}; pass --config")
    return path


def encode(model: torch.nn.Module, cfg: Any, location: str, *, workers: int | None = None) -> Any:
    """Encode every sample (primary caption) of split ``location``: ``training.validate.Encoded`` (one rank)."""
    from shards.reader import build_loader
    from training.config import loader_config
    from training.validate import encode_split

    lcfg = loader_config(cfg, location, purpose="eval", world_size=1, caption_mode="first")
    if workers is not None:
        lcfg.num_workers = workers
    loader = build_loader(lcfg, rank=0, world_size=1)
    return encode_split(model, loader, device="cpu", caption_mode="first")


def similarity(queries: Any, gallery: Any, kind: str, *, block: int = 256) -> np.ndarray:
    """[Q, G] float32 scores of ``queries``' texts against ``gallery``'s videos (both ``Encoded``)."""
    from training.similarity import score_local

    if kind not in SIMILARITIES:
        raise ValueError(f"similarity: unknown kind {kind!r}; choose from {SIMILARITIES}")
    if not queries.query_ids or not gallery.gallery_ids:
        raise ValueError("similarity: no texts or no videos were encoded")
    t_tok, t_mask = torch.cat(queries.text_tokens), torch.cat(queries.text_mask)
    v_tok, v_mask = torch.cat(gallery.video_tokens), torch.cat(gallery.video_mask)
    if kind == "local":
        s = score_local(t_tok, t_mask, torch.cat(queries.text_w), v_tok, v_mask, torch.cat(gallery.video_w),
                        block=block)
    else:
        from training.losses.infonce import pool_text_eot, pool_video_mean

        t = torch.nn.functional.normalize(pool_text_eot(t_tok, t_mask), dim=-1)
        v = torch.nn.functional.normalize(pool_video_mean(v_tok, v_mask), dim=-1)
        s = t @ v.T
    return s.float().numpy()


def _default_similarity(cfg: Any) -> str:
    """The run's test-time similarity: ``eval.similarity`` (``auto``: pooled for the InfoNCE baseline)."""
    choice = getattr(cfg.eval, "similarity", "auto")
    if choice == "auto":
        return "pooled" if cfg.loss.kind == "infonce" else "local"
    return choice


def _sorted(ids: list[str]) -> np.ndarray:
    return np.argsort(np.asarray(ids, dtype=str), kind="stable")


def _say(text: str) -> None:
    """CLI output (stdout)."""
    sys.stdout.write(text + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="demo_scores", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="checkpoint folder (RUN/best, an untrained init folder)")
    p.add_argument("--config", help="config YAML (default: the checkpoint's config.yaml)")
    p.add_argument("--queries", required=True, help="split whose captions are the queries (train | val | test)")
    p.add_argument("--gallery", required=True, help="split whose videos are the gallery")
    p.add_argument("--similarity", default=None, choices=SIMILARITIES,
                   help="default: the run's eval.similarity (auto: pooled for loss.kind=infonce, else local)")
    p.add_argument("--workers", type=int, default=None, help="loader workers (default data.eval_num_workers)")
    p.add_argument("--out", required=True, help="output .npz")
    p.add_argument("overrides", nargs="*", help="dotted config overrides (e.g. data.root=demo_out/shards)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from eval.scores_io import save_scores
    from training.config import ConfigError, load_config
    from training.score import load_model

    t0 = time.perf_counter()
    try:
        cfg = load_config(_config_path(args.checkpoint, args.config), args.overrides)
        locations = {}
        for role in ("queries", "gallery"):
            name = getattr(args, role)
            loc = getattr(cfg.data, name, None) if name in ("train", "val", "test") else name
            if not loc:
                raise ConfigError(f"--{role} {name}: data.{name} is not set in the config")
            locations[role] = loc
        model = load_model(cfg, args.checkpoint)
        sim = args.similarity or _default_similarity(cfg)
    except (ConfigError, FileNotFoundError, ValueError) as e:
        sys.stderr.write(f"demo_scores: {e}\n")
        return 2
    with torch.no_grad():
        q_enc = encode(model, cfg, locations["queries"], workers=args.workers)
        g_enc = q_enc if args.queries == args.gallery else encode(model, cfg, locations["gallery"],
                                                                  workers=args.workers)
        scores = similarity(q_enc, g_enc, sim, block=cfg.eval.block)
    qo, go = _sorted(q_enc.query_ids), _sorted(g_enc.gallery_ids)
    scores = scores[qo][:, go]
    qids = np.asarray(q_enc.query_ids, dtype=str)[qo]
    gids = np.asarray(g_enc.gallery_ids, dtype=str)[go]
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    if args.queries == args.gallery:
        col = {g: j for j, g in enumerate(gids)}
        save_scores(args.out, scores, qids, gids, gt=np.array([col[q] for q in qids], dtype=np.int64))
        kind = "scores"
    else:
        tmp = args.out + ".tmp.npz"
        np.savez(tmp, scores=scores, query_ids=qids, gallery_ids=gids)
        os.replace(tmp, args.out)
        kind = "bank"
    _say(f"demo_scores: {kind} {scores.shape[0]} {args.queries} texts x {scores.shape[1]} {args.gallery} videos "
          f"({sim}) -> {args.out} ({time.perf_counter() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
