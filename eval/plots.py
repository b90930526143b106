"""PNG plots (each with its data as JSON next to it): overlaid k-occurrence distributions, rank CDF, Lorenz curves.

Matplotlib runs with the non-interactive Agg backend; nothing is shown on screen.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from eval.hubness import gini  # noqa: E402

logger = logging.getLogger(__name__)


def _save(fig, path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    path.with_suffix(".json").write_text(json.dumps(data))
    return path


def occurrence_bins(values: Sequence[np.ndarray], max_bins: int = 40) -> np.ndarray:
    """Bin edges shared by several N_k vectors: unit-wide bins centred on the integers while the range fits in
    ``max_bins``, else ``max_bins`` equal bins over [0, max] (so N_k in the hundreds stays visible)."""
    top = max((float(np.max(v)) for v in values if len(v)), default=1.0)
    if top + 1 <= max_bins:
        return np.arange(-0.5, np.ceil(top) + 1.0, 1.0)
    return np.linspace(0.0, top * 1.0001, max_bins + 1)


def k_occurrence_overlay(
    systems: Mapping[str, tuple[np.ndarray, np.ndarray | None]],
    k: int,
    path: str | os.PathLike,
    title: str = "",
    item: str = "gallery items",
) -> Path:
    """The k-occurrence distribution of several systems in one figure (NeighborRetr Fig. 2 style).

    ``systems`` maps a name to (N_k [n], GN_k [n] or None). Left panel linear y, right panel log y (planted hubs
    far in the tail stay visible). When some GN_k exceeds 1 (several relevant items per query, e.g. multi-caption
    data) the good (GN_k) and bad (N_k - GN_k) occurrence distributions are drawn too; on one-relevant data GN_k
    is 0/1 and they are left out. Bins adapt to the N_k range (:func:`occurrence_bins`).
    """
    show_good = any(g is not None and len(g) and float(np.max(g)) > 1.0 + 1e-9 for _, g in systems.values())
    vectors = [np.asarray(n, float) for n, _ in systems.values()]
    if show_good:
        vectors += [np.asarray(n, float) - np.asarray(g, float) for n, g in systems.values() if g is not None]
    edges = occurrence_bins(vectors)
    centres = 0.5 * (edges[:-1] + edges[1:])
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    data: dict = {"k": k, "bin_edges": edges.tolist(), "systems": {}}
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (name, (nk, good)) in enumerate(systems.items()):
        c = colors[i % len(colors)]
        x = np.asarray(nk, float)
        cnt, _ = np.histogram(x, edges)
        entry = {"all": cnt.tolist(), "mu": float(x.mean()), "max": float(x.max())}
        for ax in axes:
            ax.step(centres, cnt, where="mid", color=c, lw=1.8, label=f"{name} (max {x.max():.0f})")
        if show_good and good is not None:
            g = np.asarray(good, float)
            g_cnt, _ = np.histogram(g, edges)
            b_cnt, _ = np.histogram(x - g, edges)
            for ax in axes:
                ax.step(centres, g_cnt, where="mid", color=c, lw=1.0, ls="--", label=f"{name}: good GN_k")
                ax.step(centres, b_cnt, where="mid", color=c, lw=1.0, ls=":", label=f"{name}: bad N_k - GN_k")
            entry["good"], entry["bad"] = g_cnt.tolist(), b_cnt.tolist()
        data["systems"][name] = entry
    mu = float(np.mean(vectors[0]))
    for ax, scale in zip(axes, ("linear", "log")):
        ax.axvline(mu, color="k", lw=0.8, ls="--")
        ax.set_yscale(scale)
        ax.set_xlabel(f"k-occurrence N_{k}  (dashed line: mean = {mu:.1f})")
        ax.set_ylabel(f"{item} ({scale} scale)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title or f"k-occurrence distribution, k = {k}")
    return _save(fig, Path(path), data)


def k_occurrence_hist(
    nk: np.ndarray, good: np.ndarray | None, k: int, path: str | os.PathLike, title: str = ""
) -> Path:
    """One system's k-occurrence distribution (:func:`k_occurrence_overlay` with a single entry)."""
    return k_occurrence_overlay({"system": (nk, good)}, k, path, title)


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
    ax.set_xlabel("expected rank of the first relevant item (ties averaged)")
    ax.set_ylabel("fraction of queries")
    ax.set_title(title or "rank CDF")
    ax.legend()
    return _save(fig, Path(path), data)


def lorenz(nks: Mapping[str, np.ndarray], path: str | os.PathLike, title: str = "") -> Path:
    """Lorenz curves of k-occurrence (share of kNN slots held by the poorest x share of the gallery); each curve is
    labelled with its Gini index and Robin Hood index (eval.hubness definitions)."""
    fig, ax = plt.subplots(figsize=(5.5, 5.0))
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":", label="equality")
    data = {}
    for name, nk in nks.items():
        xs = np.sort(np.asarray(nk, dtype=float))
        total = max(xs.sum(), 1e-12)
        cum = np.r_[0.0, np.cumsum(xs)] / total
        share = np.linspace(0, 1, len(cum))
        g = gini(xs)
        rh = float(0.5 * np.abs(xs - xs.mean()).sum() / total)
        ax.plot(share, cum, lw=1.8, label=f"{name}: Gini {g:.3f}, Robin Hood {rh:.3f}")
        step = max(1, len(cum) // 200)
        data[name] = {"share": share[::step].tolist(), "cum": cum[::step].tolist(), "gini": g, "robin_hood": rh}
    ax.set_xlabel("share of gallery (sorted by N_k, poorest first)")
    ax.set_ylabel("share of kNN slots")
    ax.set_title(title or "Lorenz curve of k-occurrence")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    return _save(fig, Path(path), data)
