"""Post-hoc hubness reduction applied to a text->video score matrix (docs/evaluation.md §2.1).

Notation: S [Q, G] test scores (rows = queries), B [n_b, G] query-bank scores against the *same* test gallery
(bank captions from a separate split), beta an inverse temperature. Inputs are never modified; exponentials are
taken in the log domain (logsumexp), so logits with a large beta cannot overflow.

    IS     (inverted softmax)  S'_qg = beta s_qg - logsumexp_b(beta B_bg)         (log of the IS probability)
    QB     (QB-Norm, DIS)      A = {g : g in top-k of some bank row}; rows whose raw top-1 is in A get IS scores,
                               the other rows keep their raw scores (ranking is per row, so scales may mix)
    CSLS                      S'_qg = 2 s_qg - r_B(g) - r_G(q),  r_B(g) = mean of g's top-K bank scores,
                               r_G(q) = mean of q's top-K test-gallery scores (K = 10)
    NNN                       S'_qg = s_qg - alpha * mean of g's top-k bank scores
    DSL    (dual softmax)      S'_qg = s_qg * n_q * softmax_q(s_qg / T)  -- TRANSDUCTIVE: uses all test queries
    DBNorm (dual bank Sinkhorn) K = exp(M / tau) on M = [B | B_gb] (query-bank rows; columns = the test gallery
                               followed by an optional gallery bank, B_gb = query bank x gallery bank scores);
                               Sinkhorn scaling u, v makes diag(u) K diag(v) have uniform row marginals 1/n_b and
                               uniform column marginals 1/(G + n_gb); S'_qg = s_qg / tau + log v_g (the test-gallery
                               part of v): rank-equivalent to S - phi(g) with phi = -tau log v. Inductive (banks only).

Every method re-ranks one direction only (t2v with a text bank). Hyperparameters must be chosen on a validation
split with :func:`tune`, never on the test matrix.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.special import logsumexp

from eval.retrieval import expected_hits, tie_counts
from eval.scores_io import ScoreSet

logger = logging.getLogger(__name__)


def _check(scores: np.ndarray, bank: np.ndarray | None, name: str) -> tuple[np.ndarray, np.ndarray | None]:
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2 or s.size == 0:
        raise ValueError(f"{name}: scores must be a non-empty [Q, G] matrix, got shape {s.shape}")
    if not np.isfinite(s).all():
        raise ValueError(f"{name}: scores contain NaN or inf")
    if bank is None:
        return s, None
    b = np.asarray(bank, dtype=np.float64)
    if b.ndim != 2 or b.shape[0] == 0 or b.shape[1] != s.shape[1]:
        raise ValueError(f"{name}: bank must be [n_bank, {s.shape[1]}] (same gallery as scores), got {b.shape}")
    if not np.isfinite(b).all():
        raise ValueError(f"{name}: bank scores contain NaN or inf")
    return s, b


def _col_topk_mean(b: np.ndarray, k: int) -> np.ndarray:
    """Mean of each column's k largest values: [n, G] -> [G] (k clipped to n)."""
    k = min(k, b.shape[0])
    n = b.shape[0]
    return np.partition(b, n - k, axis=0)[n - k :].mean(axis=0)


def inverted_softmax(scores: np.ndarray, bank: np.ndarray, beta: float = 20.0) -> np.ndarray:
    """IS in log space: beta * S - logsumexp over bank rows of beta * B, per gallery column. [Q, G] float64."""
    s, b = _check(scores, bank, "inverted_softmax")
    return beta * s - logsumexp(beta * b, axis=0)[None, :]


def activation_set(bank: np.ndarray, k: int = 1) -> np.ndarray:
    """Bool [G]: gallery items in the top-k of at least one bank row (items tied at the k-th value included)."""
    b = np.asarray(bank)
    k = min(k, b.shape[1])
    n = b.shape[1]
    kth = np.partition(b, n - k, axis=1)[:, n - k]
    return (b >= kth[:, None]).any(axis=0)


def qb_norm(scores: np.ndarray, bank: np.ndarray, beta: float = 20.0, k: int = 1) -> np.ndarray:
    """QB-Norm with the dynamic inverted softmax. [Q, G] float64; the input is not modified.

    A row's raw top-1 is its first maximal column (``argmax``).
    """
    s, b = _check(scores, bank, "qb_norm")
    active = activation_set(b, k)
    rows = active[np.argmax(s, axis=1)]
    out = s.copy()
    if rows.any():
        out[rows] = beta * s[rows] - logsumexp(beta * b, axis=0)[None, :]
    return out


def csls(scores: np.ndarray, bank: np.ndarray, k: int = 10) -> np.ndarray:
    """CSLS: 2 S - r_B(g) - r_G(q) with K = k nearest neighbours on each side. [Q, G] float64."""
    s, b = _check(scores, bank, "csls")
    r_b = _col_topk_mean(b, k)
    r_g = _col_topk_mean(s.T, k)
    return 2.0 * s - r_b[None, :] - r_g[:, None]


def nnn(scores: np.ndarray, bank: np.ndarray, alpha: float = 0.75, k: int = 128) -> np.ndarray:
    """Nearest-neighbour normalisation: S - alpha * (mean of each gallery item's top-k bank scores)."""
    s, b = _check(scores, bank, "nnn")
    return s - alpha * _col_topk_mean(b, k)[None, :]


def dual_softmax(scores: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """DSL (transductive): S * n_q * softmax over the test queries (axis 0) of S / T. [Q, G] float64."""
    s, _ = _check(scores, None, "dual_softmax")
    if temperature <= 0:
        raise ValueError(f"dual_softmax: temperature must be > 0, got {temperature}")
    z = s / temperature
    prior = np.exp(z - logsumexp(z, axis=0, keepdims=True))
    return s * prior * s.shape[0]


def dbnorm(
    scores: np.ndarray,
    bank: np.ndarray,
    tau: float = 0.05,
    iters: int = 50,
    gallery_bank: np.ndarray | None = None,
) -> np.ndarray:
    """Dual Bank Sinkhorn Normalization. [Q, G] float64; inputs are not modified.

    Args:
        scores: S [Q, G] test scores. bank: B [n_b, G] query-bank scores against the test gallery.
        tau: entropic temperature. iters: Sinkhorn iterations (log domain: f <- -logsumexp_j(M/tau + g) + log r,
            g <- -logsumexp_i(M/tau + f) + log c, with r = 1/n_b, c = 1/n_cols).
        gallery_bank: optional [n_b, n_gb] scores of the same bank queries against a gallery bank (e.g. training
            videos): extra columns that share the mass, so the test gallery is not forced to absorb it all.
    Returns:
        S / tau + g[:G], g the column log-potentials.
    """
    s, b = _check(scores, bank, "dbnorm")
    if tau <= 0 or iters < 1:
        raise ValueError(f"dbnorm: tau must be > 0 and iters >= 1, got tau={tau}, iters={iters}")
    m = b
    if gallery_bank is not None:
        gb = np.asarray(gallery_bank, dtype=np.float64)
        if gb.ndim != 2 or gb.shape[0] != b.shape[0] or not np.isfinite(gb).all():
            raise ValueError(f"dbnorm: gallery_bank must be a finite [{b.shape[0]}, n_gb] matrix, got {gb.shape}")
        m = np.concatenate([b, gb], axis=1)
    z = m / tau
    log_r, log_c = -np.log(z.shape[0]), -np.log(z.shape[1])
    f = np.zeros(z.shape[0])
    g = np.zeros(z.shape[1])
    for _ in range(int(iters)):
        f = log_r - logsumexp(z + g[None, :], axis=1)
        g = log_c - logsumexp(z + f[:, None], axis=0)
    return s / tau + g[None, : s.shape[1]]


@dataclass(frozen=True)
class Method:
    """A post-hoc method: its function, whether it needs a bank, default parameters, transductive flag."""

    fn: Callable[..., np.ndarray]
    needs_bank: bool
    defaults: Mapping[str, Any]
    transductive: bool = False
    label: str = ""


METHODS: dict[str, Method] = {
    "is": Method(inverted_softmax, True, {"beta": 20.0}, label="Inverted softmax"),
    "qbnorm": Method(qb_norm, True, {"beta": 20.0, "k": 1}, label="QB-Norm (DIS)"),
    "csls": Method(csls, True, {"k": 10}, label="CSLS"),
    "nnn": Method(nnn, True, {"alpha": 0.75, "k": 128}, label="NNN"),
    "dsl": Method(dual_softmax, False, {"temperature": 1.0}, transductive=True, label="DSL (transductive)"),
    "dbnorm": Method(dbnorm, True, {"tau": 0.05, "iters": 50}, label="DBNorm (dual bank Sinkhorn)"),
}

DEFAULT_GRIDS: dict[str, dict[str, list]] = {
    "is": {"beta": [1.0, 5.0, 10.0, 20.0, 30.0, 50.0]},
    "qbnorm": {"beta": [1.0, 5.0, 10.0, 20.0, 30.0, 50.0], "k": [1]},
    "csls": {"k": [5, 10, 20]},
    "nnn": {"alpha": [0.25, 0.5, 0.75, 1.0], "k": [8, 16, 64, 128]},
    "dsl": {"temperature": [0.01, 0.1, 1.0]},
    "dbnorm": {"tau": [0.01, 0.02, 0.05, 0.1], "iters": [50]},
}


def apply(method: str, scores: np.ndarray, bank: np.ndarray | None = None, **params: Any) -> np.ndarray:
    """Apply a named method (``is``, ``qbnorm``, ``csls``, ``nnn``, ``dsl``) with defaults overridden by params."""
    if method not in METHODS:
        raise ValueError(f"unknown post-hoc method {method!r}; choose from {sorted(METHODS)}")
    m = METHODS[method]
    unknown = set(params) - set(m.defaults)
    if unknown:
        raise ValueError(f"{method}: unknown parameters {sorted(unknown)} (has {sorted(m.defaults)})")
    kw = {**m.defaults, **params}
    if m.needs_bank:
        if bank is None:
            raise ValueError(f"{method}: needs a query bank (--bank-scores)")
        return m.fn(scores, bank, **kw)
    return m.fn(scores, **kw)


def v2t_view(ss: ScoreSet) -> ScoreSet:
    """The v2t problem as a t2v-shaped score set: rows = videos with at least one caption, columns = texts,
    scores S^T, relevance transposed (several relevant captions per video allowed). Dense: materialises S."""
    s = ss.scores
    if ss.gt is not None:
        rel = np.zeros(s.shape, dtype=bool)
        rel[np.arange(s.shape[0]), ss.gt] = True
    else:
        rel = np.asarray(ss.relevance, dtype=bool)
    keep = rel.any(axis=0)
    return ScoreSet.from_arrays(s.T[keep], ss.gallery_ids[keep], ss.query_ids, relevance=rel.T[keep],
                                source=f"{ss.source} (v2t)")


def mean_r1(scores: np.ndarray, gt: np.ndarray | None = None, relevance: np.ndarray | None = None) -> float:
    """Tie-aware expected t2v R@1 (fraction 0..1) of a dense matrix."""
    a, b, c = tie_counts(scores, gt=gt, relevance=relevance)
    return float(expected_hits(a, b, c, 1).mean())


def tune(
    method: str,
    val_scores: ScoreSet,
    val_bank: np.ndarray | None,
    grid: Mapping[str, Sequence[Any]] | None = None,
) -> tuple[dict[str, Any], list[tuple[dict[str, Any], float]]]:
    """Grid search on a *validation* split: returns (best params, [(params, val R@1)] in grid order).

    Selection is by the validation t2v R@1 (mean over queries of the tie-aware expected hit); the first grid
    point wins ties.
    """
    grid = dict(DEFAULT_GRIDS[method] if grid is None else grid)
    s = val_scores.scores
    keys = list(grid)
    table: list[tuple[dict[str, Any], float]] = []
    for values in itertools.product(*(grid[k] for k in keys)):
        params = dict(zip(keys, values))
        out = apply(method, s, val_bank, **params)
        table.append((params, mean_r1(out, gt=val_scores.gt, relevance=val_scores.relevance)))
    if not table:
        raise ValueError(f"tune({method}): empty grid")
    best = max(range(len(table)), key=lambda i: (table[i][1], -i))
    logger.info("tune %s: best %s (val R@1 %.4f)", method, table[best][0], table[best][1])
    return table[best][0], table
