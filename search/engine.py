"""Answer text queries against an :class:`search.index.Index`.

Two stages per query q (text tokens T_q, mask, weights from the checkpoint's text encoder):

1. candidates: the K videos with the largest cosine <g^t_q, g^v_b> of the global embeddings: an exhaustive SIMD
   scan of the memory-mapped parts' [n_i, D] blocks (:func:`exact_candidates`), or the HNSW graph
   that ``nr-index`` stored with the index (:mod:`search.ann`, memory-mapped; ``ann="auto"``, the default, uses
   it when the index has one; benchmarks/search.py measures where each wins); ``candidates=G`` makes the search
   exhaustive;
2. re-rank: S(q, b) = the model's test-time similarity (``training.similarity.score_local``, WTI, for
   NeighborRetr; pooled cosine for the InfoNCE baseline) on the K candidates, whose token features are the only
   ones read from the memory-mapped parts.

Hubness correction (optional): with the index's query bank B [n_b, G], ``qb`` applies QB-Norm (dynamic inverted
softmax) and ``is`` inverted softmax with ``eval.posthoc``'s functions on the candidate columns. Inverted softmax
is per column, so restricting to candidates is exact; QB-Norm's activation set is taken over the whole gallery
(``eval.posthoc.activation_set`` on the full bank, once), so results equal ``eval.posthoc.qb_norm`` on the full
matrix whenever the query's top-1 video is among the candidates.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from search.index import Index

__all__ = ["Hit", "QueryEncoder", "Searcher", "HUBNESS", "ANN_MODES"]

logger = logging.getLogger(__name__)

HUBNESS = ("none", "qb", "is")
ANN_MODES = ("auto", "exact", "usearch")


@dataclass
class Hit:
    """One result: index row, key, score, captions (and the query's rank position)."""

    row: int
    key: str
    video_id: str
    score: float
    captions: list[str]


class QueryEncoder:
    """Text -> (tokens [Q, L, D], mask [Q, L], weights [Q, L], global [Q, D] L2-normalised), all float32.

    Texts are tokenized exactly as the shard reader does (``[SOT] + bpe[: L - 2] + [EOT]``)."""

    def __init__(self, model: Any, max_words: int, similarity: str, device: Any = "cpu") -> None:
        from shards.transforms import default_tokenizer

        self.model, self.max_words, self.similarity, self.device = model.eval(), max_words, similarity, device
        self.tok = default_tokenizer()

    def ids(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.zeros(len(texts), self.max_words, dtype=torch.long)
        mask = torch.zeros(len(texts), self.max_words, dtype=torch.long)
        for i, t in enumerate(texts):
            toks = [self.tok.sot_token_id, *self.tok.encode(t)[: self.max_words - 2], self.tok.eot_token_id]
            ids[i, : len(toks)] = torch.tensor(toks)
            mask[i, : len(toks)] = 1
        return ids, mask

    @torch.no_grad()
    def encode_ids(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        from training.losses.infonce import pool_text_eot
        from training.similarity import apply_token_weighting

        ids, mask = ids.to(self.device), mask.to(self.device)
        tokens = self.model.encode_text(ids, mask)
        w = apply_token_weighting(self.model.text_weight, tokens, mask)
        g = (
            pool_text_eot(tokens, mask)
            if self.similarity == "pooled"
            else self.model.merge_text(tokens, mask)
        )
        g = torch.nn.functional.normalize(g.float(), dim=-1)
        return tokens.float().cpu(), mask.cpu(), w.float().cpu(), g.cpu()

    def encode(self, texts: list[str]) -> tuple[torch.Tensor, ...]:
        return self.encode_ids(*self.ids(texts))


def exact_candidates(parts: list[np.ndarray], offsets: Any, g: np.ndarray, k: int) -> np.ndarray:
    """[Q, k] rows of the k largest inner products <g_q, e_b> over the parts' [n_i, D] blocks, best first (ties by
    row number): an exhaustive scan with usearch's SIMD kernels (``exact=True``) on each memory-mapped part in its
    stored dtype, then a merge of the parts' top k.

    Why usearch and not a torch product: a [1, D] x [D, 1M] fp16 product needs the block converted to float32 first
    and took 1839 ms a query at 1M on two cores; usearch reads the fp16 rows in place (dot products accumulated in
    float32 by its kernels) and took about 60 ms (benchmarks/search.py). The query is rounded to the parts' dtype,
    so scores near the K-th differ from a float32 product at the 1e-3 level; they only choose candidates, which
    the second stage re-scores.
    """
    from usearch.index import MetricKind
    from usearch.index import search as scan

    q = np.ascontiguousarray(g, dtype=np.float32)
    rows, sims = [], []
    for p, emb in enumerate(parts):
        n = min(k, emb.shape[0])
        if n == 0:
            continue
        m = scan(emb, q, n, MetricKind.IP, exact=True, threads=0)  # distance = 1 - <g, e>
        keys = np.asarray(m.keys, dtype=np.int64).reshape(q.shape[0], -1)[:, :n]
        rows.append(keys + int(offsets[p]))
        sims.append(1.0 - np.asarray(m.distances, dtype=np.float64).reshape(q.shape[0], -1)[:, :n])
    rows_all, sims_all = np.concatenate(rows, axis=1), np.concatenate(sims, axis=1)
    k = min(k, rows_all.shape[1])
    out = np.empty((q.shape[0], k), dtype=np.int64)
    for i in range(q.shape[0]):
        order = np.lexsort((rows_all[i], -sims_all[i]))[:k]
        out[i] = rows_all[i][order]
    return out


def rerank_scores(
    similarity: str,
    t_tok: torch.Tensor,
    t_mask: torch.Tensor,
    t_w: torch.Tensor,
    v_tok: torch.Tensor,
    v_mask: torch.Tensor,
    v_w: torch.Tensor,
    block: int = 256,
) -> torch.Tensor:
    """[A, B] test-time similarity: ``training.similarity.score_local`` (WTI) or the pooled cosine of
    ``training.validate`` (InfoNCE baseline)."""
    if similarity == "pooled":
        from training.validate import _pooled_scores

        return _pooled_scores(t_tok, t_mask, v_tok, v_mask)
    from training.similarity import score_local

    return score_local(t_tok, t_mask, t_w, v_tok, v_mask, v_w, block=block)


class Searcher:
    """Query an index with a checkpoint's text encoder; see the module docstring for the two stages."""

    def __init__(
        self, index: Index, encoder: QueryEncoder | None, *, block: int = 256, ann: str = "auto", ef: int = 256,
    ) -> None:  # fmt: skip
        """``ann``: ``auto`` (the index's stored graph if it has one, else the exact product), ``exact``, or
        ``usearch`` (the stored graph; built in memory, with a warning, when the index has none)."""
        import os

        from search import ann as sann

        self.index, self.encoder, self.block = index, encoder, block
        self.similarity = str(index.manifest.get("similarity", "local"))
        self._active: dict[int, np.ndarray] = {}
        self._ann = None
        self.ef = ef
        if ann not in ANN_MODES:
            raise ValueError(f"ann must be one of {ANN_MODES}, got {ann!r}")
        stored = index.manifest.get("ann")
        if ann != "exact" and stored:
            self._ann = sann.open_ann(os.path.join(index.local, stored["file"]), index.size, ef)
        elif ann == "usearch":
            logger.warning("index %s has no stored graph; building one in memory (nr-index ann=usearch stores it)",
                           index.root)  # fmt: skip
            self._ann = sann.build_usearch(sann.StackedRows(index.global_parts), expansion_search=ef)

    # -- stages --------------------------------------------------------------------------------------------
    def candidates(self, g: np.ndarray, k: int) -> np.ndarray:
        """[Q, k] rows of the k largest global cosines per query (exact, or approximate with the ANN), best first."""
        if self._ann is not None and k < self.index.size:
            m = self._ann.search(g.astype(np.float32), k, exact=False)
            keys = np.asarray(m.keys).reshape(g.shape[0], -1)[:, :k].astype(np.int64)
            if (keys < 0).any() or keys.shape[1] < k or (keys >= self.index.size).any():
                raise RuntimeError(f"usearch returned fewer than {k} candidates; raise ef")
            return keys
        return exact_candidates(self.index.global_parts, self.index.offsets, g, k)

    def exhaustive_scores(
        self, t_tok: torch.Tensor, t_mask: torch.Tensor, t_w: torch.Tensor, chunk: int = 4096
    ) -> np.ndarray:
        """[Q, G] test-time similarity of the queries to every indexed video (tokens read chunk by chunk)."""
        out = np.empty((t_tok.shape[0], self.index.size), dtype=np.float32)
        for a in range(0, self.index.size, chunk):
            rows = np.arange(a, min(a + chunk, self.index.size))
            v = self.index.tokens(rows)
            out[:, rows] = rerank_scores(self.similarity, t_tok, t_mask, t_w, *v, block=self.block).numpy()
        return out

    def _correct(
        self, scores: np.ndarray, cols: np.ndarray | None, hubness: str, beta: float, k: int
    ) -> np.ndarray:
        """Apply ``eval.posthoc`` hubness correction to [Q, C] scores of gallery columns ``cols`` (None: all)."""
        from eval import posthoc

        bank = self.index.bank
        if bank is None:
            raise ValueError("this index has no query bank (build it with bank=SPLIT) for hubness correction")
        if cols is None:
            if hubness == "qb":
                return posthoc.qb_norm(scores, np.asarray(bank), beta=beta, k=k)
            return posthoc.inverted_softmax(scores, np.asarray(bank), beta=beta)
        sub = np.asarray(bank[:, np.sort(cols)])[:, np.argsort(np.argsort(cols))]
        corrected = posthoc.inverted_softmax(scores[None, :], sub, beta=beta)[0]
        if hubness == "is":
            return corrected
        if k not in self._active:
            self._active[k] = posthoc.activation_set(np.asarray(bank), k)
        top = cols[int(np.argmax(scores))]
        return corrected if self._active[k][top] else scores.astype(np.float64)

    # -- public --------------------------------------------------------------------------------------------
    def search_encoded(
        self,
        enc: tuple[torch.Tensor, ...],
        *,
        k: int = 10,
        candidates: int = 200,
        hubness: str = "none",
        beta: float = 20.0,
        qb_k: int = 1,
    ) -> list[list[Hit]]:
        """Top-k hits per encoded query (``QueryEncoder.encode`` output)."""
        if hubness not in HUBNESS:
            raise ValueError(f"hubness must be one of {HUBNESS}, got {hubness!r}")
        t_tok, t_mask, t_w, g = enc
        n = self.index.size
        k = min(k, n)
        results: list[list[Hit]] = []
        if candidates >= n:  # exhaustive: every video scored with the model's similarity
            full = self.exhaustive_scores(t_tok, t_mask, t_w)
            if hubness != "none":
                full = self._correct(full, None, hubness, beta, qb_k)
            for q in range(full.shape[0]):
                order = np.argsort(-full[q], kind="stable")[:k]
                results.append(self._hits(order, full[q][order]))
            return results
        cand = self.candidates(g.numpy(), max(k, candidates))
        for q in range(cand.shape[0]):
            rows = cand[q]
            v = self.index.tokens(rows)
            s = rerank_scores(
                self.similarity, t_tok[q : q + 1], t_mask[q : q + 1], t_w[q : q + 1], *v, block=self.block
            )[0].numpy()
            if hubness != "none":
                s = self._correct(s, rows, hubness, beta, qb_k)
            order = np.lexsort((rows, -s))[:k]  # score desc, ties by index row (as a stable full sort)
            results.append(self._hits(rows[order], s[order]))
        return results

    def search(self, texts: list[str], **kw: Any) -> list[list[Hit]]:
        if self.encoder is None:
            raise ValueError("Searcher has no query encoder")
        return self.search_encoded(self.encoder.encode(texts), **kw)

    def _hits(self, rows: np.ndarray, scores: np.ndarray) -> list[Hit]:
        ix = self.index
        return [
            Hit(int(r), ix.keys[int(r)], ix.video_ids[int(r)], float(s), list(ix.captions[int(r)]))
            for r, s in zip(rows, scores, strict=True)
        ]
