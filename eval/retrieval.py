"""Tie-aware retrieval metrics (R@K, MdR, MnR) from per-query tie counts, plus the CLIP4Clip-compatible numbers.

For a query q with relevant set P(q) and best relevant score m = max_{j in P} s_qj (docs/evaluation.md §3.4):

    a = #{j not in P : s_qj > m}     (non-relevant strictly above)
    b = #{j not in P : s_qj = m}     (non-relevant tied with the best relevant)
    c = #{j in P     : s_qj = m}     (relevant items at the tie, c >= 1)

With tied items in uniformly random order the 1-based rank of the first relevant item is r = a + 1 + X, where
X counts the tied non-relevant items placed before the first tied relevant one:

    P(X >= x) = prod_{i=0}^{x-1} (b - i) / (b + c - i)   (0 <= x <= b; 0 beyond b),   E[X] = b / (c + 1)
    E[1(r <= K)] = 1 - P(X >= K - a)  for K > a, else 0
    E[r] = a + 1 + b / (c + 1);   optimistic r = a + 1;   pessimistic r = a + 1 + b

R@K values are percentages (0-100), like the papers; ranks are 1-based.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

logger = logging.getLogger(__name__)

RECALL_KS: tuple[int, ...] = (1, 5, 10, 50)


def tie_counts(
    scores: np.ndarray, gt: np.ndarray | None = None, relevance: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-row (a, b, c) counts of a score block.

    Args:
        scores: float [R, G]; rows are queries.
        gt: int [R], the relevant column of each row, or
        relevance: bool [R, G] (each row needs at least one True).
    Returns:
        (a, b, c), each int64 [R], as defined in the module docstring. O(R*G), no sort.
    """
    s = np.asarray(scores)
    if gt is not None:
        rows = np.arange(s.shape[0])
        m = s[rows, gt][:, None]
        a = (s > m).sum(axis=1)
        eq = (s == m).sum(axis=1)
        return a.astype(np.int64), (eq - 1).astype(np.int64), np.ones(s.shape[0], dtype=np.int64)
    if relevance is None:
        raise ValueError("tie_counts: give gt or relevance")
    rel = np.asarray(relevance, dtype=bool)
    if rel.shape != s.shape:
        raise ValueError(f"tie_counts: relevance shape {rel.shape} != scores shape {s.shape}")
    if not rel.any(axis=1).all():
        raise ValueError("tie_counts: some rows have no relevant item")
    m = np.where(rel, s, -np.inf).max(axis=1)[:, None]
    above, tied = s > m, s == m
    a = (above & ~rel).sum(axis=1)
    b = (tied & ~rel).sum(axis=1)
    c = (tied & rel).sum(axis=1)
    return a.astype(np.int64), b.astype(np.int64), c.astype(np.int64)


def expected_hits(a: np.ndarray, b: np.ndarray, c: np.ndarray, k: int) -> np.ndarray:
    """Probability [Q] that the first relevant item is within the top k under random tie-breaking.

    E = 0 if k <= a; 1 if k - a > b; else 1 - prod_{i<k-a} (b-i)/(b+c-i). For c = 1 this is (k-a)/(b+1).
    """
    a, b, c = (np.asarray(v, dtype=np.int64) for v in (a, b, c))
    x = k - a
    out = np.where(x > b, 1.0, 0.0)
    mid = (x >= 1) & (x <= b)
    if mid.any():
        xb, bb, cb = x[mid], b[mid].astype(np.float64), c[mid].astype(np.float64)
        p = np.ones(len(xb))
        for i in range(int(xb.max())):
            use = i < xb
            p[use] *= (bb[use] - i) / (bb[use] + cb[use] - i)
        out[mid] = 1.0 - p
    return out


def expected_ranks(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(expected, optimistic, pessimistic) 1-based ranks [Q]: a+1+b/(c+1), a+1, a+1+b."""
    a, b, c = (np.asarray(v, dtype=np.float64) for v in (a, b, c))
    return a + 1 + b / (c + 1), a + 1, a + 1 + b


def retrieval_metrics(
    a: np.ndarray, b: np.ndarray, c: np.ndarray, ks: Sequence[int] = RECALL_KS
) -> dict[str, float]:
    """Tie-aware metrics from counts [Q].

    Keys: ``R@K`` (expected, %), ``R@K_opt``/``R@K_pess`` (bounds), ``MdR`` (median of E[r]), ``MdR_opt``,
    ``MdR_pess``, ``MnR`` (exact expectation), ``MnR_opt``, ``MnR_pess``, ``Rsum`` (R@1+R@5+R@10 when present),
    ``n_queries`` and ``tied_queries`` (rows with b > 0).
    """
    a, b, c = (np.asarray(v, dtype=np.int64) for v in (a, b, c))
    if a.size == 0:
        raise ValueError("retrieval_metrics: no queries")
    out: dict[str, float] = {}
    for k in ks:
        out[f"R@{k}"] = 100.0 * float(expected_hits(a, b, c, k).mean())
        out[f"R@{k}_opt"] = 100.0 * float((a + 1 <= k).mean())
        out[f"R@{k}_pess"] = 100.0 * float((a + 1 + b <= k).mean())
    exp_r, opt_r, pess_r = expected_ranks(a, b, c)
    out["MdR"], out["MdR_opt"], out["MdR_pess"] = (float(np.median(r)) for r in (exp_r, opt_r, pess_r))
    out["MnR"], out["MnR_opt"], out["MnR_pess"] = (float(r.mean()) for r in (exp_r, opt_r, pess_r))
    if all(f"R@{k}" in out for k in (1, 5, 10)):
        out["Rsum"] = out["R@1"] + out["R@5"] + out["R@10"]
    out["n_queries"] = float(a.size)
    out["tied_queries"] = float((b > 0).sum())
    return out


def clip4clip_from_counts(
    a: np.ndarray, n_tied: np.ndarray, ks: Sequence[int] = RECALL_KS
) -> dict[str, float]:
    """CLIP4Clip ``compute_metrics`` behaviour from counts (docs/evaluation.md §3.3), for comparison with papers.

    Each row contributes every 0-based sorted position whose score equals the ground-truth score, i.e. the
    positions a, a+1, ..., a+n_tied-1 (n_tied = items tied with the GT, the GT included). Recall divides by the
    total number of positions, not by the number of queries; MdR = median(position)+1 with ``np.median``.
    """
    a, n = np.asarray(a, dtype=np.int64), np.asarray(n_tied, dtype=np.int64)
    total = int(n.sum())
    out: dict[str, float] = {}
    for k in ks:
        out[f"R@{k}"] = 100.0 * float(np.clip(k - a, 0, n).sum()) / total
    # the positions are the integer runs a_i .. a_i + n_i - 1; their median and mean follow without listing them
    # (a fully tied Q x G matrix has Q * G positions): k-th smallest by bisection on count(pos <= x)
    mid = [_run_order_stat(a, n, (total - 1) // 2), _run_order_stat(a, n, total // 2)]
    out["MdR"] = 0.5 * (mid[0] + mid[1]) + 1.0
    out["MnR"] = float((a * n + n * (n - 1) / 2).sum()) / total + 1.0
    out["n_positions"] = float(total)
    return out


def clip4clip_from_positions(pos: np.ndarray, ks: Sequence[int] = RECALL_KS) -> dict[str, float]:
    """CLIP4Clip's multi-sentence t2v metrics (``tensor_text_to_video_metrics``) from 0-based argsort positions.

    That branch sorts each caption's row with argsort (descending) and takes the position of the ground-truth video;
    ties therefore fall in index order (a stable sort), not into a tie denominator. pos int [Q] is the number of
    columns sorted before the GT: a + #{j not GT : s_qj = s_q,gt and j < gt}. R@K = 100 * mean(pos < K),
    MdR = median(pos) + 1, MnR = mean(pos) + 1.
    """
    p = np.asarray(pos, dtype=np.int64)
    out = {f"R@{k}": 100.0 * float((p < k).mean()) for k in ks}
    out["MdR"] = float(np.median(p)) + 1.0
    out["MnR"] = float(p.mean()) + 1.0
    out["n_positions"] = float(p.size)
    return out


def _run_order_stat(a: np.ndarray, n: np.ndarray, idx: int) -> float:
    """The idx-th smallest (0-based) of the multiset union of runs {a_i, ..., a_i + n_i - 1}: the least integer x
    with sum_i clip(x - a_i + 1, 0, n_i) > idx. O(Q log(max run end))."""
    lo, hi = int(a.min()), int((a + n).max())
    while lo < hi:
        x = (lo + hi) // 2
        if int(np.clip(x - a + 1, 0, n).sum()) > idx:
            hi = x
        else:
            lo = x + 1
    return float(lo)


def clip4clip_metrics(
    scores: np.ndarray, gt: np.ndarray | None = None, ks: Sequence[int] = RECALL_KS
) -> dict[str, float]:
    """CLIP4Clip-compatible metrics of a [Q, G] matrix whose relevant column per row is ``gt`` (default: the
    diagonal of a square matrix), reproducing its tie-denominator behaviour. Use for v2t by passing ``S.T``
    (square 1:1 data) or the group-max matrix (multi-caption data)."""
    s = np.asarray(scores, dtype=np.float32)
    if gt is None:
        if s.shape[0] != s.shape[1]:
            raise ValueError(f"clip4clip_metrics: gt needed for a non-square matrix {s.shape}")
        gt = np.arange(s.shape[0])
    a, b, _ = tie_counts(s, gt=np.asarray(gt))
    return clip4clip_from_counts(a, b + 1, ks)


def group_max(scores: np.ndarray, groups: np.ndarray, n_groups: int) -> np.ndarray:
    """Max-pool rows by group: out[g, j] = max_{i: groups[i] = g} scores[i, j]; -inf for empty groups.

    scores [R, G], groups int [R] -> [n_groups, G]. Used for the CLIP4Clip multi-caption v2t convention.
    """
    out = np.full((n_groups, scores.shape[1]), -np.inf, dtype=np.float32)
    order = np.argsort(groups, kind="stable")
    g_sorted = groups[order]
    starts = np.flatnonzero(np.r_[True, g_sorted[1:] != g_sorted[:-1]])
    if len(order):
        red = np.maximum.reduceat(scores[order], starts, axis=0)
        out[g_sorted[starts]] = red
    return out
