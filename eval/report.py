"""Report files: ``metrics.json`` (flat keys), ``report.md`` (markdown tables), side-by-side comparison table.

``evaluate`` (flat metrics of a ``ScoreSet``) is re-exported here from ``eval.evaluate``.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from eval.evaluate import evaluate

__all__ = ["comparison_table", "evaluate", "hubness_table", "posthoc_table", "retrieval_table", "undefined_notes",
           "write_metrics_json", "write_report"]

logger = logging.getLogger(__name__)

RETRIEVAL_ROWS: tuple[str, ...] = ("R@1", "R@5", "R@10", "R@50", "MdR", "MnR", "Rsum")
HUB_ROWS: tuple[str, ...] = ("skew", "robin_hood", "gini", "ho", "antihub", "max_hub", "bad_rate_hubs",
                             "spearman_centrality")
COMPARE_ROWS: tuple[str, ...] = (
    "t2v/R@1", "t2v/R@5", "t2v/R@10", "t2v/MdR", "t2v/MnR", "v2t/R@1", "v2t/R@5", "v2t/R@10", "v2t/MdR",
    "v2t/MnR", "hub/t2v/k10/skew", "hub/t2v/k10/robin_hood", "hub/t2v/k10/ho", "hub/t2v/k10/antihub",
    "hub/v2t/k10/skew", "hub/t2v/k15/skew",
)


def _clean(v: float) -> float | None:
    return None if isinstance(v, float) and not math.isfinite(v) else v


def undefined_notes(metrics: Mapping[str, float]) -> list[str]:
    """One note per undefined (NaN) metric name, naming the keys and the reason (``n/a`` in the tables)."""
    from eval.hubness import UNDEFINED_REASONS

    by_name: dict[str, list[str]] = {}
    for key, v in sorted(metrics.items()):
        if isinstance(v, float) and math.isnan(v):
            by_name.setdefault(key.rsplit("/", 1)[-1], []).append(key)
    out = []
    for name, keys in by_name.items():
        reason = UNDEFINED_REASONS.get(name, "undefined for this input")
        shown = ", ".join(keys[:4]) + (f" and {len(keys) - 4} more" if len(keys) > 4 else "")
        out.append(f"n/a = undefined: {shown}: {reason}.")
    return out


def write_metrics_json(metrics: Mapping[str, float], path: str | os.PathLike) -> Path:
    """Write flat metrics as sorted JSON (non-finite values become null); atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({k: _clean(float(v)) for k, v in sorted(metrics.items())}, indent=1) + "\n")
    os.replace(tmp, path)
    return path


def _fmt(v: float | None, key: str = "") -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and not math.isfinite(v):
        return "n/a"
    if key.split("/")[-1].startswith(("R@", "Rsum")) or "/R@" in key:
        return f"{v:.2f}"
    if abs(v) >= 100 or float(v).is_integer():
        return f"{v:.1f}"
    return f"{v:.3f}"


def retrieval_table(metrics: Mapping[str, float], prefix: str = "test") -> str:
    """Markdown: one row per direction (t2v, v2t, v2t_groupmax, clip4clip rows), expected values with the
    optimistic-pessimistic range of R@1."""
    dirs = [d for d in ("t2v", "v2t", "v2t_groupmax", "clip4clip/t2v", "clip4clip/v2t")
            if f"{prefix}/{d}/R@1" in metrics]
    head = "| direction | " + " | ".join(RETRIEVAL_ROWS) + " | R@1 range | tied queries |"
    lines = [head, "|" + "---|" * (len(RETRIEVAL_ROWS) + 3)]
    for d in dirs:
        cells = [_fmt(metrics.get(f"{prefix}/{d}/{r}"), r) for r in RETRIEVAL_ROWS]
        lo, hi = metrics.get(f"{prefix}/{d}/R@1_pess"), metrics.get(f"{prefix}/{d}/R@1_opt")
        rng = f"{lo:.2f}-{hi:.2f}" if lo is not None and hi is not None else "-"
        tied = metrics.get(f"{prefix}/{d}/tied_queries")
        lines.append(f"| {d} | " + " | ".join(cells) + f" | {rng} | {_fmt(tied)} |")
    return "\n".join(lines)


def hubness_table(metrics: Mapping[str, float], prefix: str = "test") -> str:
    """Markdown: one row per (direction, k) with the main hubness measures."""
    lines = ["| direction | k | " + " | ".join(HUB_ROWS) + " |", "|" + "---|" * (len(HUB_ROWS) + 2)]
    for d in ("t2v", "v2t"):
        ks = sorted({int(key.split("/")[3][1:]) for key in metrics if key.startswith(f"{prefix}/hub/{d}/k")})
        for k in ks:
            cells = [_fmt(metrics.get(f"{prefix}/hub/{d}/k{k}/{r}"), r) for r in HUB_ROWS]
            lines.append(f"| {d} | {k} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def posthoc_table(metrics: Mapping[str, float], prefix: str = "test") -> str | None:
    """Markdown: one row per post-hoc method and direction with R@1, dR@1 vs the raw scores, its 95 % paired
    bootstrap CI and p-value, the chosen parameters and whether the method is transductive; None without rows."""
    methods = sorted({key.split("/")[2] for key in metrics if key.startswith(f"{prefix}/posthoc/")})
    lines = ["| method | direction | R@1 | dR@1 | 95% CI | p | transductive | params |", "|" + "---|" * 8]
    for m in methods:
        base = f"{prefix}/posthoc/{m}"
        params = ", ".join(f"{key.rsplit('/', 1)[-1]}={_fmt(v)}" for key, v in sorted(metrics.items())
                           if key.startswith(f"{base}/param/"))
        trans = "yes" if metrics.get(f"{base}/transductive") else "no"
        for d in ("t2v", "v2t"):
            if f"{base}/{d}/dR@1" not in metrics:
                continue
            lo, hi = metrics.get(f"{base}/{d}/dR@1_ci_lo"), metrics.get(f"{base}/{d}/dR@1_ci_hi")
            ci = f"{lo:+.2f} .. {hi:+.2f}" if lo is not None and hi is not None else "-"
            p = metrics.get(f"{base}/{d}/dR@1_p")
            lines.append(f"| {m} | {d} | {_fmt(metrics.get(f'{base}/{d}/R@1'), 'R@1')} | "
                         f"{metrics[f'{base}/{d}/dR@1']:+.2f} | {ci} | {'-' if p is None else f'{p:.4f}'} | "
                         f"{trans} | {params} |")
    return "\n".join(lines) if len(lines) > 2 else None


def comparison_table(
    results: Sequence[Mapping[str, float]],
    names: Sequence[str],
    prefix: str = "test",
    rows: Sequence[str] = COMPARE_ROWS,
) -> str:
    """Markdown table: one column per system (e.g. InfoNCE, NeighborRetr, +QB-Norm), one row per metric.

    ``results[i]`` holds flat keys ``{prefix}/{row}``; missing values print as ``-``.
    """
    if len(results) != len(names):
        raise ValueError(f"comparison_table: {len(results)} results but {len(names)} names")
    lines = ["| metric | " + " | ".join(names) + " |", "|" + "---|" * (len(names) + 1)]
    for r in rows:
        vals = [res.get(f"{prefix}/{r}") for res in results]
        if all(v is None for v in vals):
            continue
        lines.append(f"| {r} | " + " | ".join(_fmt(v, r) for v in vals) + " |")
    return "\n".join(lines)


def write_report(
    out_dir: str | os.PathLike,
    metrics: Mapping[str, float],
    prefix: str = "test",
    comparison: str | None = None,
    notes: Sequence[str] = (),
    plots: Sequence[str] = (),
    posthoc: str | None = None,
) -> Path:
    """Write ``report.md`` with the retrieval and hubness tables, an optional comparison table, notes, plots."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    parts = [
        "# Retrieval and hubness report",
        "",
        "R@K in %, expected under random tie-breaking (docs/evaluation.md §3.4); `R@1 range` = pessimistic-optimistic.",
        "`clip4clip/*` rows reproduce CLIP4Clip's tie-denominator behaviour, for comparison with papers only.",
        "",
        "## Retrieval",
        "",
        retrieval_table(metrics, prefix),
        "",
        "## Hubness (k-occurrence of the gallery side)",
        "",
        hubness_table(metrics, prefix),
        "",
    ]
    if posthoc:
        parts += ["## Post-hoc hubness reduction (vs the raw scores, paired over the same queries)", "", posthoc, ""]
    if comparison:
        parts += ["## Comparison", "", comparison, ""]
    if notes:
        parts += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    if plots:
        parts += ["## Plots", ""] + [f"![{Path(p).stem}]({Path(p).name})" for p in plots] + [""]
    path = out / "report.md"
    path.write_text("\n".join(parts))
    return path
