"""Encode a split and score it (text x video local similarity), shared by validation and ``training.score``.

Distributed protocol (every rank calls the same functions):

1. each rank encodes its share of the split (the loader splits units over ranks; padding repeats, ``is_pad``,
   are dropped): text tokens + token weights for every (sample, caption) query, video tokens + frame weights
   once per sample key;
2. the video side is all-gathered (deduplicated by key, sorted by key), so every rank holds the whole gallery;
3. each rank scores its own texts against the gallery with ``training.similarity.score_local`` in
   ``block`` x ``block`` tiles (test-time S = S^loc only, docs/method.md §2.8);
4. the score rows are gathered on rank 0, sorted by query id, and returned with ids and ``gt`` (one caption
   per video: caption mode ``first``) or ``relevance`` (caption mode ``all``: a text is relevant to every
   gallery video with its ``video_id``).

Query ids are sample keys in ``first`` mode and ``{key}#{caption:03d}`` in ``all`` mode; gallery ids are keys.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from training.similarity import apply_token_weighting, score_local

__all__ = [
    "Encoded",
    "ScoreResult",
    "resolve_caption_mode",
    "encode_split",
    "score_split",
    "metrics_of",
    "add_mean_r1",
]

logger = logging.getLogger(__name__)


@dataclass
class Encoded:
    """One rank's (or, after gathering, the whole split's) encoded texts and videos, on CPU in float32.

    text_tokens [Q, L, D], text_mask [Q, L], text_w [Q, L]; video_tokens [G, F, D], video_mask [G, F],
    video_w [G, F]; ids as lists aligned with the rows.
    """

    query_ids: list[str] = field(default_factory=list)
    query_video_ids: list[str] = field(default_factory=list)
    text_tokens: list[torch.Tensor] = field(default_factory=list)
    text_mask: list[torch.Tensor] = field(default_factory=list)
    text_w: list[torch.Tensor] = field(default_factory=list)
    gallery_ids: list[str] = field(default_factory=list)
    gallery_video_ids: list[str] = field(default_factory=list)
    video_tokens: list[torch.Tensor] = field(default_factory=list)
    video_mask: list[torch.Tensor] = field(default_factory=list)
    video_w: list[torch.Tensor] = field(default_factory=list)


@dataclass
class ScoreResult:
    """The score matrix [Q, G] (rows = texts) with ids and ``gt`` [Q] or ``relevance`` [Q, G]."""

    scores: np.ndarray
    query_ids: list[str]
    gallery_ids: list[str]
    gt: np.ndarray | None = None
    relevance: np.ndarray | None = None
    seconds: float = 0.0


def resolve_caption_mode(split_url: str, mode: str, storage: Any = None) -> str:
    """``auto`` -> ``all`` when the split's ``captions.json`` lists a sample with several captions, else
    ``first``."""
    if mode != "auto":
        return mode
    from shards import fs as sfs

    url = sfs.join(split_url, "captions.json")
    try:
        counts = json.loads(sfs.read_bytes(url, storage))
    except FileNotFoundError:
        logger.warning(
            "%s not found: scoring the primary caption of every sample (caption mode 'first')", url
        )
        return "first"
    multi = any(int(c) > 1 for per_shard in counts.values() for c in per_shard)
    return "all" if multi else "first"


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _all_gather_objects(obj: Any) -> list[Any]:
    rank, world = _world()
    if world == 1:
        return [obj]
    out: list[Any] = [None] * world
    dist.all_gather_object(out, obj)
    return out


def _gather_objects_to_main(obj: Any) -> list[Any] | None:
    rank, world = _world()
    if world == 1:
        return [obj]
    out: list[Any] | None = [None] * world if rank == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out


@torch.no_grad()
def encode_split(
    model: torch.nn.Module,
    loader: Any,
    *,
    device: torch.device | str,
    caption_mode: str,
    autocast: Any = None,
    progress: bool = False,
) -> Encoded:
    """Encode this rank's share of ``loader`` (batches as ``shards.reader`` yields them) with ``model``.

    ``model`` must be the unwrapped ``NeighborRetrModel`` (``encode_text``, ``encode_video``, ``text_weight``,
    ``video_weight``); it is put in eval mode for the pass and restored afterwards. ``autocast`` is a context
    manager factory for mixed precision (e.g. ``accelerator.autocast``).
    """
    was_training = model.training
    model.eval()
    enc = Encoded()
    seen_q: set[str] = set()
    seen_v: set[str] = set()
    ctx = autocast if autocast is not None else contextlib.nullcontext
    it = loader
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(loader, desc="encode", leave=False)
    try:
        for batch in it:
            keep = ~batch["is_pad"].bool()
            keys = list(batch["keys"])
            vids = list(batch["video_ids"])
            caps = batch["caption_index"].tolist()
            q_rows, v_rows = [], []
            for i in range(len(keys)):
                if not bool(keep[i]):
                    continue
                qid = keys[i] if caption_mode != "all" else f"{keys[i]}#{int(caps[i]):03d}"
                if qid not in seen_q:
                    seen_q.add(qid)
                    q_rows.append(i)
                    enc.query_ids.append(qid)
                    enc.query_video_ids.append(vids[i])
                if keys[i] not in seen_v:
                    seen_v.add(keys[i])
                    v_rows.append(i)
                    enc.gallery_ids.append(keys[i])
                    enc.gallery_video_ids.append(vids[i])
            if q_rows:
                idx = torch.tensor(q_rows)
                ids = batch["text_ids"][idx].to(device)
                mask = batch["text_mask"][idx].to(device)
                with ctx():
                    tokens = model.encode_text(ids, mask)
                    w = apply_token_weighting(model.text_weight, tokens, mask)
                enc.text_tokens.append(tokens.float().cpu())
                enc.text_mask.append(mask.cpu())
                enc.text_w.append(w.float().cpu())
            if v_rows:
                idx = torch.tensor(v_rows)
                frames = batch["frames"][idx].to(device)
                fmask = batch["frame_mask"][idx].to(device)
                with ctx():
                    tokens = model.encode_video(frames, fmask)
                    w = apply_token_weighting(model.video_weight, tokens, fmask)
                enc.video_tokens.append(tokens.float().cpu())
                enc.video_mask.append(fmask.cpu())
                enc.video_w.append(w.float().cpu())
    finally:
        model.train(was_training)
    return enc


def _cat(parts: list[torch.Tensor]) -> torch.Tensor | None:
    return torch.cat(parts, dim=0) if parts else None


def score_split(
    model: torch.nn.Module,
    loader: Any,
    *,
    device: torch.device | str,
    caption_mode: str,
    block: int = 256,
    autocast: Any = None,
    progress: bool = False,
    similarity: str = "local",
    query_loader: Any = None,
) -> ScoreResult | None:
    """Encode + score a split across all ranks (collective); rank 0 gets the :class:`ScoreResult`, others
    None.

    ``similarity`` ``local``: S^loc, the test-time score of NeighborRetr (docs/method.md §2.8); ``pooled``: the cosine
    of the EOT text token and the mean of the real frames' tokens (the features the InfoNCE baseline trains).
    ``query_loader``: take the texts from another split (e.g. training captions as the query bank of QB-Norm,
    docs/evaluation.md §2.1) and the videos from ``loader``; the result then has neither ``gt`` nor ``relevance``.
    """
    if similarity not in ("local", "pooled"):
        raise ValueError(f"score_split: similarity must be 'local' or 'pooled', got {similarity!r}")
    t0 = time.perf_counter()
    enc = encode_split(
        model, loader, device=device, caption_mode=caption_mode, autocast=autocast, progress=progress
    )
    if query_loader is not None:  # texts of another split against this split's videos
        texts = encode_split(
            model, query_loader, device=device, caption_mode=caption_mode, autocast=autocast, progress=progress
        )
        enc.query_ids, enc.query_video_ids = texts.query_ids, texts.query_video_ids
        enc.text_tokens, enc.text_mask, enc.text_w = texts.text_tokens, texts.text_mask, texts.text_w
    # 2. gallery on every rank, deduplicated and sorted by key
    video_parts = _all_gather_objects(
        (
            enc.gallery_ids,
            enc.gallery_video_ids,
            _cat(enc.video_tokens),
            _cat(enc.video_mask),
            _cat(enc.video_w),
        )
    )
    gallery: dict[str, tuple[str, torch.Tensor, torch.Tensor, torch.Tensor]] = {}
    for ids, vids, tok, msk, w in video_parts:
        for i, key in enumerate(ids):
            if key not in gallery:
                gallery[key] = (vids[i], tok[i], msk[i], w[i])
    if not gallery:
        raise ValueError("score_split: the split has no samples (every batch was padding or empty)")
    gallery_ids = sorted(gallery)
    g_tok = torch.stack([gallery[k][1] for k in gallery_ids]).to(device)
    g_msk = torch.stack([gallery[k][2] for k in gallery_ids]).to(device)
    g_w = torch.stack([gallery[k][3] for k in gallery_ids]).to(device)
    gallery_vids = [gallery[k][0] for k in gallery_ids]
    # 3. this rank's texts against the whole gallery
    if enc.query_ids and similarity == "pooled":
        rows = (_pooled_scores(_cat(enc.text_tokens), _cat(enc.text_mask), g_tok.cpu(), g_msk.cpu())).numpy()
    elif enc.query_ids:
        rows = (
            score_local(
                _cat(enc.text_tokens).to(device),
                _cat(enc.text_mask).to(device),
                _cat(enc.text_w).to(device),
                g_tok,
                g_msk,
                g_w,
                block=block,
            )
            .cpu()
            .numpy()
        )
    else:
        rows = np.zeros((0, len(gallery_ids)), dtype=np.float32)
    # 4. rows to rank 0
    parts = _gather_objects_to_main((enc.query_ids, enc.query_video_ids, rows))
    if parts is None:
        return None
    qrows: dict[str, tuple[str, np.ndarray]] = {}
    for qids, qvids, r in parts:
        for i, q in enumerate(qids):
            qrows.setdefault(q, (qvids[i], r[i]))
    query_ids = sorted(qrows)
    scores = np.stack([qrows[q][1] for q in query_ids]).astype(np.float32)
    result = ScoreResult(scores=scores, query_ids=query_ids, gallery_ids=gallery_ids)
    if query_loader is not None:
        pass  # a query bank: its texts have no relevant video in this gallery
    elif caption_mode == "all":
        qv = np.array([qrows[q][0] for q in query_ids])
        result.relevance = qv[:, None] == np.array(gallery_vids)[None, :]
    else:
        col = {k: j for j, k in enumerate(gallery_ids)}
        missing = [q for q in query_ids if q not in col]
        if missing:
            raise ValueError(f"score_split: texts without a gallery video: {missing[:5]}")
        result.gt = np.array([col[q] for q in query_ids], dtype=np.int64)
    result.seconds = time.perf_counter() - t0
    return result


def _pooled_scores(
    text_tokens: torch.Tensor, text_mask: torch.Tensor, video_tokens: torch.Tensor, video_mask: torch.Tensor
) -> torch.Tensor:
    """S_ab = <t^_a, v^_b>: t = EOT text token [A, D], v = mean of real frame tokens [B, D], ^ = L2 norm."""
    import torch.nn.functional as F

    from training.losses.infonce import pool_text_eot, pool_video_mean

    t = F.normalize(pool_text_eot(text_tokens, text_mask).float(), dim=-1)
    v = F.normalize(pool_video_mean(video_tokens, video_mask).float(), dim=-1)
    return t @ v.T


def add_mean_r1(metrics: dict[str, float], prefix: str) -> dict[str, float]:
    """Add ``{prefix}/mean_R@1`` = mean of ``{prefix}/t2v/R@1`` and ``{prefix}/v2t/R@1`` (the default
    selector)."""
    t2v, v2t = metrics.get(f"{prefix}/t2v/R@1"), metrics.get(f"{prefix}/v2t/R@1")
    if t2v is not None and v2t is not None:
        metrics[f"{prefix}/mean_R@1"] = 0.5 * (float(t2v) + float(v2t))
    return metrics


def _evaluate_fn():
    try:
        from eval.report import evaluate
    except ImportError:
        from eval.evaluate import evaluate
    return evaluate


def metrics_of(
    result: ScoreResult, *, prefix: str, ks: list[int] | tuple[int, ...] = (1, 5, 10)
) -> dict[str, float]:
    """Flat metrics of a score result via ``eval`` (tie-aware R@K, MdR, MnR, hubness) plus ``mean_R@1``."""
    from eval.scores_io import ScoreSet

    ss = ScoreSet.from_arrays(
        result.scores,
        result.query_ids,
        result.gallery_ids,
        gt=result.gt,
        relevance=result.relevance,
        source=f"<{prefix} scores>",
    )
    metrics = dict(_evaluate_fn()(ss, ks=tuple(ks), prefix=prefix))
    return add_mean_r1(metrics, prefix)
