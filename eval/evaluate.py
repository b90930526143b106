"""All metrics of a score set in two streaming passes over row chunks: ``evaluate`` (flat keys) and ``compute``.

Memory beyond one row chunk is O((Q + G) * k_max), tied inputs included (heavy ties switch from candidate lists
to dense per-chunk weights, and the v2t occurrences then take two more passes):

* pass 1 (per row block [R, G]): t2v (a, b, c) counts and top-k candidates (rows are complete in a block, so t2v
  k-occurrences are final per block); the best relevant score m_j of every video column; a running column top-k_max
  (for the v2t thresholds); column sums (t2v centrality) and row means (v2t centrality); for multi-caption ``gt``
  data the caption-group max matrix [G, G] (CLIP4Clip v2t convention).
* pass 2: v2t (a, b, c) counts against m_j, and the v2t candidates (entries >= the column's k_max-th value), from
  which the fractional v2t k-occurrences of the texts follow.

v2t is retrieval on S^T with the relevance transposed: a video query j succeeds with its best relevant caption,
ranked among *all* captions (CE convention, key ``v2t``); for multi-caption data the CLIP4Clip group-max
convention (videos ranked by the max over each video's captions) is reported as ``v2t_groupmax``. Their optimistic
and pessimistic R@1 must agree (checked).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from eval.hubness import HUB_KS, boundary_weights, check_total, hubness_stats, top_values
from eval.retrieval import (
    RECALL_KS,
    clip4clip_from_counts,
    clip4clip_from_positions,
    expected_hits,
    retrieval_metrics,
    tie_counts,
)
from eval.scores_io import ScoreSet

logger = logging.getLogger(__name__)

GROUP_MAX_LIMIT = 1 << 26  # largest [G, G] group-max matrix we build (elements)
_CAND_FACTOR = 4  # more top-k candidates than this many per query/column means heavy ties: use dense weights


@dataclass
class Direction:
    """Per-query tie counts and per-gallery-item occurrences of one retrieval direction."""

    name: str
    a: np.ndarray
    b: np.ndarray
    c: np.ndarray
    n_hub_queries: int
    nk: dict[int, np.ndarray] = field(default_factory=dict)
    good: dict[int, np.ndarray] = field(default_factory=dict)
    centrality: np.ndarray | None = None
    gallery_ids: np.ndarray | None = None
    query_ids: np.ndarray | None = None

    def retrieval(self, ks: Sequence[int] = RECALL_KS) -> dict[str, float]:
        return retrieval_metrics(self.a, self.b, self.c, ks)

    def hits(self, k: int) -> np.ndarray:
        """Per-query expected hit [Q] at k (0..1)."""
        return expected_hits(self.a, self.b, self.c, k)

    def hubness(self, k: int) -> dict[str, float]:
        return hubness_stats(self.nk[k], k, self.n_hub_queries, good=self.good.get(k), centrality=self.centrality)


@dataclass
class EvalResult:
    """Everything ``compute`` found; ``flat`` turns it into metric keys."""

    t2v: Direction
    v2t: Direction
    v2t_groupmax: Direction | None
    clip4clip: dict[str, dict[str, float]]
    n_queries: int
    n_gallery: int

    def notes(self) -> list[str]:
        """Warnings a reader must see: tied ground truths in either direction, videos without a caption."""
        out = []
        dup_t = int((self.t2v.b > 0).sum())
        if dup_t:
            out.append(f"{dup_t} t2v queries tie with their ground truth (duplicate captions/items?).")
        dup_v = int((self.v2t.b > 0).sum())
        if dup_v:
            out.append(f"{dup_v} v2t queries tie with their ground truth (duplicate captions or videos?).")
        n_empty = self.n_gallery - len(self.v2t.a)
        if n_empty:
            out.append(f"{n_empty} of {self.n_gallery} videos have no relevant caption: they are no v2t queries "
                       f"(v2t uses {len(self.v2t.a)} queries).")
        return out

    def directions(self) -> list[Direction]:
        return [d for d in (self.t2v, self.v2t, self.v2t_groupmax) if d is not None]

    def flat(self, prefix: str = "test", recall_ks: Sequence[int] = RECALL_KS, ci: bool = False,
             seed: int = 0) -> dict[str, float]:
        out: dict[str, float] = {f"{prefix}/n_queries": float(self.n_queries),
                                 f"{prefix}/n_gallery": float(self.n_gallery)}
        for d in self.directions():
            for key, v in d.retrieval(recall_ks).items():
                out[f"{prefix}/{d.name}/{key}"] = v
            if ci:
                from eval.stats import bootstrap_ci

                for k in (1, 5, 10):
                    lo, hi = bootstrap_ci(100.0 * d.hits(k), seed=seed)
                    out[f"{prefix}/{d.name}/R@{k}_ci_lo"], out[f"{prefix}/{d.name}/R@{k}_ci_hi"] = lo, hi
        t, v = out.get(f"{prefix}/t2v/R@1"), out.get(f"{prefix}/v2t/R@1")
        if t is not None and v is not None:
            out[f"{prefix}/mean_R@1"] = 0.5 * (t + v)
        for name, metrics in self.clip4clip.items():
            for key, v in metrics.items():
                out[f"{prefix}/clip4clip/{name}/{key}"] = v
        for d in (self.t2v, self.v2t):
            for k in sorted(d.nk):
                for key, v in d.hubness(k).items():
                    out[f"{prefix}/hub/{d.name}/k{k}/{key}"] = v
        return out


def evaluate(
    scores: ScoreSet,
    ks: Sequence[int] = HUB_KS,
    prefix: str = "test",
    recall_ks: Sequence[int] = RECALL_KS,
    ci: bool = False,
) -> dict[str, float]:
    """Tie-aware retrieval metrics (t2v, v2t), CLIP4Clip-compatible numbers and hubness at each k, as flat keys.

    Keys look like ``test/t2v/R@1``, ``test/t2v/R@1_opt``, ``test/v2t/MdR``, ``test/clip4clip/t2v/R@1``,
    ``test/hub/t2v/k10/skew``; with ``ci`` also ``test/t2v/R@1_ci_lo``/``_ci_hi`` (95 % bootstrap over queries).
    """
    return compute(scores, ks).flat(prefix, recall_ks, ci=ci)


def _valid_ks(ks: Sequence[int], n: int, what: str) -> list[int]:
    good = sorted({int(k) for k in ks if 1 <= int(k) <= n})
    dropped = sorted(set(int(k) for k in ks) - set(good))
    if dropped:
        logger.warning("hubness k=%s skipped for %s: larger than the %d gallery items", dropped, what, n)
    return good


def compute(ss: ScoreSet, ks: Sequence[int] = HUB_KS) -> EvalResult:
    """Run both passes over ``ss.chunks()`` and return per-query counts and per-item occurrences."""
    n_q, n_g = ss.shape
    gt = ss.gt if ss.gt is not None else _one_hot_gt(ss)
    dt = np.float64 if ss.is_dense and ss.scores.dtype == np.float64 else np.float32
    ks_t = _valid_ks(ks, n_g, "t2v")
    ks_v = _valid_ks(ks, n_q, "v2t")
    kmax_t, kmax_v = (max(ks_t) if ks_t else 0), (max(ks_v) if ks_v else 0)

    a_t = np.zeros(n_q, np.int64)
    b_t = np.zeros(n_q, np.int64)
    c_t = np.zeros(n_q, np.int64)
    nk_t = {k: np.zeros(n_g) for k in ks_t}
    good_t = {k: np.zeros(n_g) for k in ks_t}
    col_sum = np.zeros(n_g)
    row_mean = np.zeros(n_q)
    m_col = np.full(n_g, -np.inf, dt)
    s_gt = np.zeros(n_q, dt) if gt is not None else None
    pos_t = np.zeros(n_q, np.int64)  # CLIP4Clip argsort position of the GT (multi-sentence branch)
    col_top = np.full((kmax_v, n_g), -np.inf, dt) if kmax_v else None
    multi_caption = gt is not None and np.bincount(gt, minlength=n_g).max() > 1
    gmax = None
    if multi_caption:
        if n_g * n_g <= GROUP_MAX_LIMIT:
            gmax = np.full((n_g, n_g), -np.inf, dt)
        else:
            logger.warning("group-max v2t skipped: %d x %d group matrix too large", n_g, n_g)

    # ---------------------------------------------------------------- pass 1
    for ch in ss.chunks():
        s, r0, r1 = ch.scores, ch.start, ch.stop
        rows = np.arange(r1 - r0)
        if gt is not None:
            g_c = gt[r0:r1]
            a, b, c = tie_counts(s, gt=g_c)
            s_gt[r0:r1] = s[rows, g_c]
            if multi_caption:
                before = (s == s_gt[r0:r1, None]) & (np.arange(n_g)[None, :] < g_c[:, None])
                pos_t[r0:r1] = a + before.sum(axis=1)
            np.maximum.at(m_col, g_c, s_gt[r0:r1])
            if gmax is not None:
                _group_max_into(gmax, s, g_c)
        else:
            rel = ch.relevance
            a, b, c = tie_counts(s, relevance=rel)
            np.maximum(m_col, np.where(rel, s, -np.inf).max(axis=0), out=m_col)
        a_t[r0:r1], b_t[r0:r1], c_t[r0:r1] = a, b, c
        if kmax_t:
            tv = top_values(s, kmax_t)
            at_least = s >= tv[:, kmax_t - 1][:, None]
            if int(at_least.sum()) <= _CAND_FACTOR * (r1 - r0) * kmax_t:  # few ties: sparse candidates
                cq, cg = np.nonzero(at_least)
                cv = s[cq, cg]
                is_rel = (g_c[cq] == cg) if gt is not None else ch.relevance[cq, cg]
                for k in ks_t:
                    w = boundary_weights(cq, cv, tv[:, k - 1], k)
                    nk_t[k] += np.bincount(cg, weights=w, minlength=n_g)
                    good_t[k] += np.bincount(cg[is_rel], weights=w[is_rel], minlength=n_g)
            else:  # heavy ties at the k-th value: dense per-row weights, memory O(chunk)
                del at_least
                rel = None if gt is not None else ch.relevance
                for k in ks_t:
                    nk, good = _dense_row_occurrences(s, tv[:, k - 1], k, g_c if gt is not None else None, rel)
                    nk_t[k] += nk
                    good_t[k] += good
        col_sum += s.sum(axis=0, dtype=np.float64)
        row_mean[r0:r1] = s.mean(axis=1, dtype=np.float64)
        if kmax_v:
            col_top = _merge_col_top(col_top, s, kmax_v)

    t2v = Direction("t2v", a_t, b_t, c_t, n_q, nk_t, good_t, col_sum / n_q, ss.gallery_ids, ss.query_ids)
    for k in ks_t:
        check_total(nk_t[k], k, n_q)

    # ---------------------------------------------------------------- pass 2 (v2t)
    has_rel = np.isfinite(m_col)
    m2 = np.where(has_rel, m_col, np.inf).astype(dt)
    a_v = np.zeros(n_g, np.int64)
    eq_v = np.zeros(n_g, np.int64)
    b_v = np.zeros(n_g, np.int64)
    c_v = np.zeros(n_g, np.int64)
    th = -np.sort(-col_top, axis=0) if kmax_v else None  # [kmax_v, G], descending
    cand_rows, cand_cols, cand_vals, cand_rel = [], [], [], []
    n_cand, dense_v = 0, False
    for ch in ss.chunks():
        s, r0, r1 = ch.scores, ch.start, ch.stop
        above, tied = s > m2, s == m2
        if gt is not None:
            a_v += above.sum(axis=0)
            eq_v += tied.sum(axis=0)
        else:
            rel = ch.relevance
            a_v += (above & ~rel).sum(axis=0)
            b_v += (tied & ~rel).sum(axis=0)
            c_v += (tied & rel).sum(axis=0)
        if kmax_v and not dense_v:
            rr, cc = np.nonzero(s >= th[kmax_v - 1])
            n_cand += len(rr)
            if n_cand > _CAND_FACTOR * n_g * kmax_v + s.size:  # heavy ties: switch to the dense passes below
                dense_v = True
                cand_rows, cand_cols, cand_vals, cand_rel = [], [], [], []
                continue
            cand_rows.append(rr + r0)
            cand_cols.append(cc)
            cand_vals.append(s[rr, cc])
            cand_rel.append((gt[rr + r0] == cc) if gt is not None else ch.relevance[rr, cc])
    if gt is not None:
        c_v = np.bincount(gt, weights=(s_gt == m_col[gt]), minlength=n_g).astype(np.int64)
        b_v = eq_v - c_v
    nk_v: dict[int, np.ndarray] = {}
    good_v: dict[int, np.ndarray] = {}
    if kmax_v and dense_v:
        nk_v, good_v = _dense_col_occurrences(ss, th, ks_v, gt)
        for k in ks_v:
            check_total(nk_v[k], k, n_g)
    elif kmax_v:
        rows_c = np.concatenate(cand_rows)
        cols_c = np.concatenate(cand_cols)
        vals_c = np.concatenate(cand_vals)
        rel_c = np.concatenate(cand_rel)
        for k in ks_v:
            w = boundary_weights(cols_c, vals_c, th[k - 1], k)
            nk_v[k] = np.bincount(rows_c, weights=w, minlength=n_q)
            good_v[k] = np.bincount(rows_c[rel_c], weights=w[rel_c], minlength=n_q)
            check_total(nk_v[k], k, n_g)
    if not has_rel.all():
        logger.info("v2t: %d of %d videos have no relevant text and are not v2t queries", (~has_rel).sum(), n_g)
    v2t = Direction("v2t", a_v[has_rel], b_v[has_rel], c_v[has_rel], n_g, nk_v, good_v, row_mean, ss.query_ids,
                    ss.gallery_ids[has_rel])

    # ---------------------------------------------------------------- CLIP4Clip conventions
    c4c: dict[str, dict[str, float]] = {}
    v2t_gm = None
    if gt is not None:
        # single caption per video: compute_metrics (tie-denominator); several: the argsort multi-sentence branch
        c4c["t2v"] = clip4clip_from_positions(pos_t) if multi_caption else clip4clip_from_counts(a_t, b_t + 1)
        if gmax is not None:
            nonempty = np.flatnonzero(np.bincount(gt, minlength=n_g) > 0)
            m = gmax[np.ix_(nonempty, nonempty)].T  # rows: video queries, cols: caption groups
            ga, gb, gc = tie_counts(m, gt=np.arange(len(nonempty)))
            v2t_gm = Direction("v2t_groupmax", ga, gb, gc, len(nonempty), query_ids=ss.gallery_ids[nonempty])
            _check_r1_agree(v2t, v2t_gm)
            c4c["v2t"] = clip4clip_from_counts(ga, gb + 1)
        else:
            c4c["v2t"] = clip4clip_from_counts(v2t.a, v2t.b + v2t.c)
    return EvalResult(t2v, v2t, v2t_gm, c4c, n_q, n_g)


def _dense_row_occurrences(
    s: np.ndarray, kth: np.ndarray, k: int, gt_rows: np.ndarray | None, rel: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """(N_k, GN_k) contributions [G] of the rows of s [R, G] with k-th values kth [R], without listing candidates.

    Row r gives 1 to each column above kth[r] and frac_r = (k - #above) / #tied to each tied column, so
    N_k = sum_r above[r] + frac @ tied. Memory O(R * G) (one chunk), whatever the number of ties.
    """
    above = s > kth[:, None]
    tied = s == kth[:, None]
    frac = (k - above.sum(axis=1)) / np.maximum(tied.sum(axis=1), 1)
    nk = above.sum(axis=0).astype(np.float64) + frac @ tied
    if gt_rows is not None:
        sg = s[np.arange(len(gt_rows)), gt_rows]
        w = np.where(sg > kth, 1.0, np.where(sg == kth, frac, 0.0))
        good = np.bincount(gt_rows, weights=w, minlength=s.shape[1])
    else:
        good = (above & rel).sum(axis=0).astype(np.float64) + frac @ (tied & rel)
    return nk, good


def _dense_col_occurrences(
    ss: ScoreSet, th: np.ndarray, ks: Sequence[int], gt: np.ndarray | None
) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray]]:
    """v2t (N_k, GN_k) of the text rows when the column thresholds th [kmax, G] are heavily tied.

    Two extra streaming passes: count per column the entries above and at th[k-1] (giving each column's
    fractional tie weight f = (k - #above) / #tied), then N_k(row) = #{cols above} + tied_row @ f. Memory
    O(G * k) plus one chunk, instead of one candidate per tied entry.
    """
    n_q, n_g = ss.shape
    n_above = {k: np.zeros(n_g, np.int64) for k in ks}
    n_tied = {k: np.zeros(n_g, np.int64) for k in ks}
    for ch in ss.chunks():
        for k in ks:
            n_above[k] += (ch.scores > th[k - 1]).sum(axis=0)
            n_tied[k] += (ch.scores == th[k - 1]).sum(axis=0)
    f = {k: (k - n_above[k]) / np.maximum(n_tied[k], 1) for k in ks}
    nk = {k: np.zeros(n_q) for k in ks}
    good = {k: np.zeros(n_q) for k in ks}
    for ch in ss.chunks():
        s, r0, r1 = ch.scores, ch.start, ch.stop
        for k in ks:
            above, tied = s > th[k - 1], s == th[k - 1]
            nk[k][r0:r1] = above.sum(axis=1) + tied @ f[k]
            if gt is not None:
                g = gt[r0:r1]
                sg, tg = s[np.arange(r1 - r0), g], th[k - 1][g]
                good[k][r0:r1] = np.where(sg > tg, 1.0, np.where(sg == tg, f[k][g], 0.0))
            else:
                rel = ch.relevance
                good[k][r0:r1] = (above & rel).sum(axis=1) + (tied & rel) @ f[k]
    return nk, good


def _one_hot_gt(ss: ScoreSet) -> np.ndarray | None:
    """The ``gt`` form of relevance that has exactly one relevant column per row (what ``training.score`` writes
    for multi-caption splits), so both forms give the same keys (group-max v2t, CLIP4Clip); else None."""
    if not ss.has_relevance:
        return None
    parts = []
    if ss.relevance is not None:
        rels = [ss.relevance]
    else:
        rels = (ch.relevance for ch in ss.chunks())
    for rel in rels:
        if not (rel.sum(axis=1) == 1).all():
            return None
        parts.append(np.argmax(rel, axis=1))
    return np.concatenate(parts).astype(np.int64)


def _group_max_into(gmax: np.ndarray, s: np.ndarray, groups: np.ndarray) -> None:
    """gmax[g, :] = max(gmax[g, :], max of the rows of s in group g), in place."""
    order = np.argsort(groups, kind="stable")
    gs = groups[order]
    starts = np.flatnonzero(np.r_[True, gs[1:] != gs[:-1]])
    red = np.maximum.reduceat(s[order], starts, axis=0)
    idx = gs[starts]
    gmax[idx] = np.maximum(gmax[idx], red)


def _merge_col_top(col_top: np.ndarray, s: np.ndarray, kmax: int) -> np.ndarray:
    """Running per-column top-kmax values [kmax, G] (unsorted) after seeing the rows of s [R, G]."""
    thr = col_top.min(axis=0)
    hit = (s > thr).any(axis=0)
    n_hit = int(hit.sum())
    if n_hit == 0:
        return col_top
    if n_hit * 4 >= col_top.shape[1]:
        stack = np.concatenate([col_top, s], axis=0)
        n = stack.shape[0]
        return np.partition(stack, n - kmax, axis=0)[n - kmax :]
    cols = np.flatnonzero(hit)
    sub = np.concatenate([col_top[:, cols], s[:, cols]], axis=0)
    n = sub.shape[0]
    out = col_top.copy()
    out[:, cols] = np.partition(sub, n - kmax, axis=0)[n - kmax :]
    return out


def _check_r1_agree(ce: Direction, gm: Direction) -> None:
    if len(ce.a) != len(gm.a):
        return
    for key in ("R@1_opt", "R@1_pess"):
        x, y = ce.retrieval((1,))[key], gm.retrieval((1,))[key]
        if not np.isclose(x, y):
            raise AssertionError(f"v2t {key} differs between caption-level ({x}) and group-max ({y}) conventions")
