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


def good_share(nk: np.ndarray, good: np.ndarray, edges: np.ndarray) -> list[float | None]:
    """Per N_k bin, the share of the bin's occurrences that are good: sum GN_k / sum N_k over the items whose N_k
    falls in the bin (None where the bin holds no occurrence). Near 1 for a bin of good hubs (retrieved mostly by
    queries they are relevant to), near 0 for bad hubs."""
    nk, good = np.asarray(nk, float), np.asarray(good, float)
    which = np.clip(np.searchsorted(edges, nk, side="right") - 1, 0, len(edges) - 2)
    n_sum = np.bincount(which, weights=nk, minlength=len(edges) - 1)
    g_sum = np.bincount(which, weights=good, minlength=len(edges) - 1)
    return [float(g / n) if n > 0 else None for g, n in zip(g_sum, n_sum, strict=True)]


def k_occurrence_overlay(
    systems: Mapping[str, tuple[np.ndarray, np.ndarray | None]],
    k: int,
    path: str | os.PathLike,
    title: str = "",
    item: str = "gallery items",
) -> Path:
    """The k-occurrence distribution of several systems in one figure (NeighborRetr Fig. 2 style).

    ``systems`` maps a name to (N_k [n], GN_k [n] or None). Top row: the N_k histograms of every system overlaid,
    linear y and log y (planted hubs far in the tail stay visible); the legend sits below the panels. When some
    GN_k exceeds 1 (several relevant items per query, e.g. multi-caption data), a second row tells good hubs from
    bad ones: per N_k bin, the share of occurrences that are good (:func:`good_share`); on one-relevant data GN_k
    is 0/1 and the row is left out. Bins adapt to the N_k range (:func:`occurrence_bins`). The JSON next to the
    PNG holds per system the bin counts ("all"), the histograms of GN_k ("good") and N_k - GN_k ("bad"), and
    "good_share".
    """
    show_good = any(g is not None and len(g) and float(np.max(g)) > 1.0 + 1e-9 for _, g in systems.values())
    vectors = [np.asarray(n, float) for n, _ in systems.values()]
    edges = occurrence_bins(vectors)
    centres = 0.5 * (edges[:-1] + edges[1:])
    if show_good:
        fig = plt.figure(figsize=(11, 6.6))
        grid = fig.add_gridspec(2, 2, height_ratios=(1.0, 0.8), hspace=0.45)
        axes = [fig.add_subplot(grid[0, 0]), fig.add_subplot(grid[0, 1])]
        share_ax = fig.add_subplot(grid[1, :])
    else:
        fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
        share_ax = None
    data: dict = {"k": k, "bin_edges": edges.tolist(), "systems": {}}
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (name, (nk, good)) in enumerate(systems.items()):
        c = colors[i % len(colors)]
        x = np.asarray(nk, float)
        cnt, _ = np.histogram(x, edges)
        entry = {"all": cnt.tolist(), "mu": float(x.mean()), "max": float(x.max())}
        for j, ax in enumerate(axes):
            ax.step(
                centres, cnt, where="mid", color=c, lw=1.8, label=f"{name} (max {x.max():.0f})" if j else None
            )
        if show_good and good is not None and share_ax is not None:
            g = np.asarray(good, float)
            entry["good"] = np.histogram(g, edges)[0].tolist()
            entry["bad"] = np.histogram(x - g, edges)[0].tolist()
            entry["good_share"] = good_share(x, g, edges)
            ys = np.array([np.nan if v is None else v for v in entry["good_share"]])
            share_ax.plot(centres, ys, color=c, lw=1.4, marker="o", ms=3)
        data["systems"][name] = entry
    mu = float(np.mean(vectors[0]))
    for ax, scale in zip(axes, ("linear", "log")):
        ax.axvline(mu, color="k", lw=0.8, ls="--")
        ax.set_yscale(scale)
        ax.set_xlabel(f"k-occurrence N_{k}  (dashed line: mean = {mu:.1f})")
        ax.set_ylabel(f"{item} ({scale} scale)")
        ax.grid(alpha=0.3)
    if share_ax is not None:
        share_ax.set_ylim(-0.03, 1.03)
        share_ax.set_xlim(edges[0], edges[-1])
        share_ax.set_xlabel(f"k-occurrence N_{k} (same bins as above)")
        share_ax.set_ylabel("good share")
        share_ax.set_title(
            "good vs bad hubs: share of the occurrences in each N_k bin that come from relevant queries "
            "(sum GN_k / sum N_k)",
            fontsize=9,
        )
        share_ax.grid(alpha=0.3)
    fig.legend(loc="lower center", ncol=min(4, len(systems)), fontsize=8, bbox_to_anchor=(0.5, -0.02))
    fig.suptitle(title or f"k-occurrence distribution, k = {k}")
    fig.subplots_adjust(bottom=0.16 if share_ax is not None else 0.24)
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
        data[name] = {
            "rank": uniq.tolist(),
            "cdf": (np.searchsorted(xs, uniq, side="right") / len(xs)).tolist(),
        }
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
        data[name] = {
            "share": share[::step].tolist(),
            "cum": cum[::step].tolist(),
            "gini": g,
            "robin_hood": rh,
        }
    ax.set_xlabel("share of gallery (sorted by N_k, poorest first)")
    ax.set_ylabel("share of kNN slots")
    ax.set_title(title or "Lorenz curve of k-occurrence")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    return _save(fig, Path(path), data)
