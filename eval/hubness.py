"""Hubness of a gallery w.r.t. a query set (docs/evaluation.md §1).

k-occurrence  N_k(g) = sum_q 1[g in NN_k(q)], with *fractional* ties at the k-th boundary: if r slots are left
when t items tie at the k-th score, each tied item gets r / t. Hence sum_g N_k(g) = k * n_q exactly, and
mu_k = k * n_q / n_g (checked on every call).

Good occurrences GN_k(g) count the same slots only where g is relevant to q; BN_k = N_k - GN_k.

Summary measures of the vector x = N_k over the gallery (n = n_g, S = sum x):
    skew        = m3 / m2^{3/2} (population, scipy ``bias=True``); ``skew_adj`` is the bias-corrected one
    robin_hood  = 1/2 sum |x_i - mu_k| / S
    gini        = 2 sum_i i x_(i) / (n S) - (n + 1) / n   (x sorted ascending, i = 1..n)
    atkinson    = 1 - ((1/n) sum x_i^{1-e})^{1/(1-e)} / mu_k   (e = 0.5)
    hubs        = {g : N_k(g) >= h * mu_k}  (h = 2; equals the 2k rule when n_q = n_g)
    ho          = sum_{g in hubs} N_k(g) / (k n_q)        (hub occurrence, share of all kNN slots)
    hubs_rad    = {g : N_k(g) > mu_k + 2 sigma_k}         (Radovanovic)
    antihub     = |{g : N_k(g) = 0}| / n_g
    max_hub     = max N_k / (k n_q);   groupie = max N_k / n_q
    bad_rate_hubs = sum_{hubs} BN_k / sum_{hubs} N_k
    spearman_centrality = Spearman rho(N_k, centrality), centrality = mean score of g to all queries.

Undefined values are NaN (``null`` in metrics.json, ``n/a`` in tables), never 0: skewness when every N_k is
equal (0 / 0), Spearman when N_k or the centrality is constant, ``bad_rate_hubs`` when there are no hubs.
``UNDEFINED_REASONS`` gives the reason the report prints.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
from scipy import stats as sstats

logger = logging.getLogger(__name__)

HUB_KS: tuple[int, ...] = (1, 5, 10, 15)

UNDEFINED_REASONS: dict[str, str] = {
    "skew": "every item has the same N_k (zero variance: skewness is 0/0)",
    "skew_adj": "every item has the same N_k (zero variance: skewness is 0/0)",
    "bad_rate_hubs": "there are no hubs (N_k >= 2 mu_k), so no share of bad hub occurrences",
    "spearman_centrality": "N_k or the centrality is constant (rank correlation undefined)",
}


def top_values(scores: np.ndarray, kmax: int) -> np.ndarray:
    """The kmax largest values of each row, sorted descending: [R, G] -> [R, kmax] (O(R*G) partition)."""
    s = np.asarray(scores)
    n = s.shape[1]
    if not 1 <= kmax <= n:
        raise ValueError(f"top_values: k={kmax} must be in [1, {n}] (gallery size)")
    part = np.partition(s, n - kmax, axis=1)[:, n - kmax :]
    return -np.sort(-part, axis=1)


def candidates(scores: np.ndarray, threshold: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Entries with value >= the row's threshold: (row index, column index, value), each [M]."""
    rows, cols = np.nonzero(scores >= threshold[:, None])
    return rows, cols, scores[rows, cols]


def boundary_weights(
    cand_q: np.ndarray, cand_v: np.ndarray, kth: np.ndarray, k: int
) -> np.ndarray:
    """Fractional occurrence weight of each candidate entry in its query's top-k.

    Args:
        cand_q: int [M] query index of each candidate; every entry >= kth[q] of query q must be present.
        cand_v: float [M] candidate values.
        kth: float [n_q] the k-th largest value of each query.
    Returns:
        float [M]: 1 above kth, (k - #above) / #tied at kth, 0 below.
    """
    n_q = len(kth)
    above = cand_v > kth[cand_q]
    tied = cand_v == kth[cand_q]
    n_above = np.bincount(cand_q[above], minlength=n_q)
    n_tied = np.bincount(cand_q[tied], minlength=n_q)
    frac = (k - n_above) / np.maximum(n_tied, 1)
    return above.astype(np.float64) + tied * frac[cand_q]


def k_occurrence(
    scores: np.ndarray,
    k: int,
    gt: np.ndarray | None = None,
    relevance: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """N_k and GN_k of the columns of a dense [Q, G] matrix (rows are the queries).

    Returns:
        (N_k float64 [G], GN_k float64 [G] or None when no gt/relevance is given).
    """
    s = np.asarray(scores)
    kth = top_values(s, k)[:, k - 1]
    q, g, v = candidates(s, kth)
    w = boundary_weights(q, v, kth, k)
    nk = np.bincount(g, weights=w, minlength=s.shape[1])
    check_total(nk, k, s.shape[0])
    good = None
    if gt is not None:
        rel = np.asarray(gt)[q] == g
        good = np.bincount(g[rel], weights=w[rel], minlength=s.shape[1])
    elif relevance is not None:
        rel = np.asarray(relevance, dtype=bool)[q, g]
        good = np.bincount(g[rel], weights=w[rel], minlength=s.shape[1])
    return nk, good


def check_total(nk: np.ndarray, k: int, n_q: int) -> None:
    """Raise AssertionError unless sum N_k = k * n_q (the identity of docs/evaluation.md §1.2)."""
    total = float(np.sum(nk))
    if not np.isclose(total, k * n_q, rtol=1e-9, atol=1e-6):
        raise AssertionError(f"k-occurrence sum {total} != k * n_q = {k * n_q}: ties or truncation mishandled")


def gini(x: np.ndarray) -> float:
    """Gini index via the sorted O(n log n) form; 0 for an all-zero vector."""
    xs = np.sort(np.asarray(x, dtype=np.float64))
    n, total = len(xs), xs.sum()
    if total <= 0:
        return 0.0
    i = np.arange(1, n + 1)
    return float(2.0 * (i * xs).sum() / (n * total) - (n + 1) / n)


def hubness_stats(
    nk: np.ndarray,
    k: int,
    n_q: int,
    good: np.ndarray | None = None,
    centrality: np.ndarray | None = None,
    h: float = 2.0,
    atkinson_eps: float = 0.5,
) -> dict[str, float]:
    """Summary measures of a k-occurrence vector [n_g] (see the module docstring for the equations)."""
    x = np.asarray(nk, dtype=np.float64)
    n_g = len(x)
    check_total(x, k, n_q)
    mu = k * n_q / n_g
    total = float(k * n_q)
    var = float(((x - mu) ** 2).mean())
    sd = var**0.5
    out: dict[str, float] = {"mu": mu, "std": sd}
    if var > 1e-12 * max(1.0, mu * mu):
        out["skew"] = float(sstats.skew(x, bias=True))
        out["skew_adj"] = float(sstats.skew(x, bias=False)) if n_g > 2 else out["skew"]
    else:  # every item occurs equally often: the moments ratio is 0/0
        out["skew"] = out["skew_adj"] = float("nan")
    out["robin_hood"] = float(0.5 * np.abs(x - mu).sum() / total)
    out["gini"] = gini(x)
    e = atkinson_eps
    out["atkinson"] = float(1.0 - (np.mean(x ** (1 - e))) ** (1 / (1 - e)) / mu)
    hubs = x >= h * mu
    out["hubs"] = float(hubs.mean())
    out["ho"] = float(x[hubs].sum() / total)
    hubs_rad = x > mu + 2 * sd
    out["hubs_rad"] = float(hubs_rad.mean())
    out["ho_rad"] = float(x[hubs_rad].sum() / total)
    out["antihub"] = float((x == 0).mean())
    out["max_hub"] = float(x.max() / total)
    out["groupie"] = float(x.max() / n_q)
    if good is not None:
        gn = np.asarray(good, dtype=np.float64)
        out["good_share"] = float(gn.sum() / total)
        hub_occ = x[hubs].sum()
        out["bad_rate_hubs"] = float((x[hubs] - gn[hubs]).sum() / hub_occ) if hub_occ > 0 else float("nan")
    if centrality is not None:
        cen = np.asarray(centrality, dtype=np.float64)
        if np.ptp(x) > 0 and np.ptp(cen) > 0:
            out["spearman_centrality"] = float(sstats.spearmanr(x, cen).statistic)
        else:
            out["spearman_centrality"] = float("nan")
    return out


def top_hubs(nk: np.ndarray, ids: np.ndarray, n: int = 20) -> list[tuple[str, float]]:
    """The n gallery ids with the largest N_k, largest first (ties by id order)."""
    order = np.argsort(-np.asarray(nk), kind="stable")[:n]
    return [(str(ids[i]), float(nk[i])) for i in order]


def hubness_over_ks(
    scores: np.ndarray, ks: Sequence[int] = HUB_KS, gt: np.ndarray | None = None
) -> dict[int, dict[str, float]]:
    """Convenience for a dense [Q, G] matrix: ``hubness_stats`` for each k, with column-mean centrality."""
    s = np.asarray(scores)
    cen = s.mean(axis=0)
    out = {}
    for k in ks:
        nk, good = k_occurrence(s, k, gt=gt)
        out[k] = hubness_stats(nk, k, s.shape[0], good=good, centrality=cen)
    return out
