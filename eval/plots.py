"""PNG plots (each with its data as JSON next to it): k-occurrence histogram, rank CDF, Lorenz curve.

Matplotlib runs with the non-interactive Agg backend; nothing is shown on screen.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

logger = logging.getLogger(__name__)


def _save(fig, path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    path.with_suffix(".json").write_text(json.dumps(data))
    return path


def k_occurrence_hist(
    nk: np.ndarray, good: np.ndarray | None, k: int, path: str | os.PathLike, title: str = ""
) -> Path:
    """Paired bars 'all' vs 'good' occurrences (NeighborRetr Fig. 2 style): x = N_k (rounded), y = #items."""
    x = np.rint(np.asarray(nk)).astype(int)
    top = int(x.max()) if x.size else 0
    bins = np.arange(top + 1)
    all_counts = np.bincount(x, minlength=top + 1)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    width = 0.4 if good is not None else 0.8
    ax.bar(bins - (width / 2 if good is not None else 0), all_counts, width=width, label="all neighbours")
    data = {"k": k, "n_k": bins.tolist(), "all": all_counts.tolist()}
    if good is not None:
        gx = np.rint(np.asarray(good)).astype(int)
        good_counts = np.bincount(gx, minlength=top + 1)[: top + 1]
        ax.bar(bins + width / 2, good_counts, width=width, label="good neighbours")
        data["good"] = good_counts.tolist()
    ax.axvline(float(np.mean(nk)), color="k", lw=0.8, ls="--", label=f"mean = {np.mean(nk):.1f}")
    ax.set_xlabel(f"k-occurrence N_{k}")
    ax.set_ylabel("gallery items")
    ax.set_title(title or f"k-occurrence, k={k}")
    ax.legend()
    return _save(fig, Path(path), data)


def rank_cdf(ranks: Mapping[str, np.ndarray], path: str | os.PathLike, title: str = "") -> Path:
    """CDF of the (expected) rank of the first relevant item per query, log-x, one line per system."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    data = {}
    for name, r in ranks.items():
        xs = np.sort(np.asarray(r, dtype=float))
        ys = np.arange(1, len(xs) + 1) / len(xs)
        ax.step(xs, ys, where="post", label=name)
        uniq = np.unique(xs, return_index=False)
        data[name] = {"rank": uniq.tolist(), "cdf": (np.searchsorted(xs, uniq, side="right") / len(xs)).tolist()}
    ax.set_xscale("log")
    ax.set_xlabel("rank of first relevant item")
    ax.set_ylabel("fraction of queries")
    ax.set_title(title or "rank CDF")
    ax.legend()
    return _save(fig, Path(path), data)


def lorenz(nks: Mapping[str, np.ndarray], path: str | os.PathLike, title: str = "") -> Path:
    """Lorenz curves of k-occurrence (share of kNN slots held by the poorest x share of the gallery)."""
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":")
    data = {}
    for name, nk in nks.items():
        xs = np.sort(np.asarray(nk, dtype=float))
        cum = np.r_[0.0, np.cumsum(xs)] / max(xs.sum(), 1e-12)
        share = np.linspace(0, 1, len(cum))
        ax.plot(share, cum, label=name)
        step = max(1, len(cum) // 200)
        data[name] = {"share": share[::step].tolist(), "cum": cum[::step].tolist()}
    ax.set_xlabel("share of gallery (sorted by N_k)")
    ax.set_ylabel("share of kNN slots")
    ax.set_title(title or "Lorenz curve of k-occurrence")
    ax.legend()
    return _save(fig, Path(path), data)
