"""Uncertainty over queries: bootstrap confidence intervals and a paired test between two systems.

Inputs are per-query values x_i (e.g. the expected hit 1[r_i <= K] in percent), i = 1..n.

* ``bootstrap_ci``: percentile interval of mean(x[idx]) over B resamples idx ~ Uniform{1..n}^n.
* ``paired_test``: d_i = x_i^A - x_i^B on the same queries; delta = mean(d); a bootstrap CI of delta, and a
  two-sided sign-flip permutation p-value  p = (1 + #{|mean(e * d)| >= |delta|}) / (P + 1), e_i = +-1.
All seeded; resamples are drawn in batches so memory stays O(batch * n).
"""

from __future__ import annotations

import logging

import numpy as np

logger = logging.getLogger(__name__)

_BATCH = 128


def _boot_means(x: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    n = len(x)
    out = np.empty(n_boot)
    for start in range(0, n_boot, _BATCH):
        m = min(_BATCH, n_boot - start)
        idx = rng.integers(0, n, size=(m, n))
        out[start : start + m] = x[idx].mean(axis=1)
    return out


def bootstrap_ci(
    values: np.ndarray, n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval (lo, hi) of the mean of values [n]."""
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"bootstrap_ci: values must be a non-empty 1-D array, got shape {x.shape}")
    if not 0 < level < 1:
        raise ValueError(f"bootstrap_ci: level must be in (0, 1), got {level}")
    means = _boot_means(x, n_boot, np.random.default_rng(seed))
    alpha = (1 - level) / 2
    lo, hi = np.quantile(means, [alpha, 1 - alpha])
    return float(lo), float(hi)


def paired_test(
    values_a: np.ndarray,
    values_b: np.ndarray,
    n_boot: int = 1000,
    n_perm: int = 5000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, float]:
    """Paired comparison of two systems on the same queries.

    Returns ``delta`` (mean A - B), ``ci_lo``/``ci_hi`` (bootstrap), ``p_value`` (two-sided sign-flip
    permutation test) and ``n``.
    """
    a = np.asarray(values_a, dtype=np.float64)
    b = np.asarray(values_b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"paired_test: need two non-empty 1-D arrays of equal length, got {a.shape} and {b.shape}")
    d = a - b
    delta = float(d.mean())
    rng = np.random.default_rng(seed)
    lo, hi = np.quantile(_boot_means(d, n_boot, rng), [(1 - level) / 2, 1 - (1 - level) / 2])
    exceed = 0
    for start in range(0, n_perm, _BATCH):
        m = min(_BATCH, n_perm - start)
        signs = rng.integers(0, 2, size=(m, d.size)) * 2 - 1
        perm = (signs * d).mean(axis=1)
        exceed += int((np.abs(perm) >= abs(delta) - 1e-12).sum())
    p = (1 + exceed) / (n_perm + 1)
    return {"delta": delta, "ci_lo": float(lo), "ci_hi": float(hi), "p_value": float(p), "n": float(d.size)}
