"""Several training seeds of several systems: mean +- sd of R@1, paired tests against a baseline, and power.

    python -m eval.seeds --system infonce A0.npz,A1.npz,A2.npz --system neighborretr B0.npz,B1.npz,B2.npz
                         [--baseline infonce] --out DIR

Each ``--system NAME FILES`` gives one scores file per seed (the same seeds, in the same order, for every system;
every file scores the same test queries). Writes ``DIR/seeds.json`` and ``DIR/seeds.md`` and prints the table.

For system X against baseline B, per direction (t2v, v2t), with d_sq = hit_X(q) - hit_B(q) on seed s (expected
R@1 hits under random tie-breaking, in %, queries aligned by id):

    delta       = mean_s mean_q d_sq                          (the mean R@1 difference)
    SE_query    = sqrt(sum_s var_q(d_sq) / n_q) / S            (query sampling, seeds held fixed)
    sd_seed     = sd over seeds of mean_q d_sq                 (training noise; ddof = 1)
    SE          = sqrt(SE_query^2 + sd_seed^2 / S)
    p_queries   = sign-flip permutation test on the pooled d_sq (``eval.stats.paired_test``): is the difference
                  more than query noise on these seeds?
    p_seeds     = paired t-test over the S seed means (S - 1 degrees of freedom): does it survive training noise?
    MDE80       = (z_0.975 + z_0.8) * SE = 2.80 * SE          (the difference this design detects with 80 % power)

The harness is powered for a 3-point R@1 difference when MDE80 <= 3.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from scipy import stats as sstats

from eval.evaluate import compute
from eval.retrieval import expected_hits
from eval.scores_io import load_scores
from eval.stats import paired_test

logger = logging.getLogger(__name__)

DIRECTIONS = ("t2v", "v2t")
MDE_FACTOR = 1.959963984540054 + 0.8416212335729143  # z_{0.975} + z_{0.80}


def per_query_hits(path: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{direction: (query ids [n] str, expected hit@1 [n] in %)} of one scores file, or of a post-hoc system
    written by ``python -m eval``: ``DIR/ranks.npz#posthoc_qbnorm`` reads the arrays ``posthoc_qbnorm_{t2v,v2t}_*``
    (directions that are absent are left out)."""
    spec = str(path)
    if "#" in spec:
        file, key = spec.split("#", 1)
        with np.load(file, allow_pickle=False) as z:
            out = {}
            for d in DIRECTIONS:
                if f"{key}_{d}_abc" in z.files:
                    a, b, c = z[f"{key}_{d}_abc"].T
                    out[d] = (z[f"{key}_{d}_query_ids"].astype(str), 100.0 * expected_hits(a, b, c, 1))
        if not out:
            raise ValueError(f"{file}: no arrays {key}_t2v_abc / {key}_v2t_abc")
        return out
    res = compute(load_scores(path), (1,))
    return {d.name: (np.asarray(d.query_ids).astype(str), 100.0 * d.hits(1)) for d in (res.t2v, res.v2t)}


def _aligned(
    base: tuple[np.ndarray, np.ndarray], other: tuple[np.ndarray, np.ndarray], what: str
) -> np.ndarray:
    pos = {q: i for i, q in enumerate(other[0])}
    missing = [q for q in base[0] if q not in pos]
    if missing or len(other[0]) != len(base[0]):
        raise ValueError(f"{what}: query ids differ from the baseline's (e.g. {missing[:3]})")
    return other[1][[pos[q] for q in base[0]]]


def seed_summary(
    hits: Mapping[str, Sequence[Mapping[str, tuple[np.ndarray, np.ndarray]]]], baseline: str, seed: int = 0
) -> dict[str, dict[str, dict[str, float]]]:
    """Statistics of the module docstring. ``hits[system][s]`` is :func:`per_query_hits` of seed s.

    Returns {system: {direction: {"mean", "sd", "n_seeds", "n_queries", and for non-baseline systems "delta",
    "ci_lo", "ci_hi", "se_query", "sd_seed", "se", "p_queries", "p_seeds", "mde80"}}}; sd/p_seeds are NaN with
    one seed (undefined).
    """
    if baseline not in hits:
        raise ValueError(f"baseline {baseline!r} is not one of the systems {sorted(hits)}")
    n_seeds = {name: len(v) for name, v in hits.items()}
    if len(set(n_seeds.values())) != 1 or not n_seeds[baseline]:
        raise ValueError(f"every system needs the same number (>= 1) of seed files, got {n_seeds}")
    s_count = n_seeds[baseline]
    out: dict[str, dict[str, dict[str, float]]] = {}
    for name, runs in hits.items():
        out[name] = {}
        for d in DIRECTIONS:
            if any(d not in run for run in runs) or any(d not in b for b in hits[baseline]):
                continue
            r1 = np.array([float(run[d][1].mean()) for run in runs])
            row = {
                "mean": float(r1.mean()),
                "sd": float(r1.std(ddof=1)) if s_count > 1 else math.nan,
                "n_seeds": float(s_count),
                "n_queries": float(len(runs[0][d][1])),
            }
            if name != baseline:
                diffs = [
                    _aligned(b[d], x[d], f"{name} seed {i} {d}") - b[d][1]
                    for i, (b, x) in enumerate(zip(hits[baseline], runs))
                ]
                seed_means = np.array([float(x.mean()) for x in diffs])
                se_q = math.sqrt(sum(float(x.var(ddof=1)) / x.size for x in diffs if x.size > 1)) / s_count
                sd_seed = float(seed_means.std(ddof=1)) if s_count > 1 else math.nan
                se = math.sqrt(se_q**2 + (sd_seed**2 / s_count if s_count > 1 else 0.0))
                pooled = np.concatenate(diffs)
                test = paired_test(pooled, np.zeros_like(pooled), seed=seed)
                if s_count > 1 and np.ptp(seed_means) > 0:
                    p_seeds = float(sstats.ttest_1samp(seed_means, 0.0).pvalue)
                else:
                    p_seeds = math.nan
                row.update(
                    {
                        "delta": float(seed_means.mean()),
                        "ci_lo": test["ci_lo"],
                        "ci_hi": test["ci_hi"],
                        "se_query": se_q,
                        "sd_seed": sd_seed,
                        "se": se,
                        "p_queries": test["p_value"],
                        "p_seeds": p_seeds,
                        "mde80": MDE_FACTOR * se,
                    }
                )
            out[name][d] = row
    return out


def _f(v: float, fmt: str = ".2f") -> str:
    return "n/a" if v is None or not math.isfinite(v) else format(v, fmt)


def seed_table(summary: Mapping[str, Mapping[str, Mapping[str, float]]], baseline: str) -> str:
    """Markdown: per system and direction, R@1 mean +- sd over seeds and, against the baseline, the difference with
    its pooled-query CI, both p-values and the 80 %-power minimum detectable difference."""
    lines = [
        "| system | direction | R@1 mean ± sd | dR@1 vs " + baseline + " | 95% CI (queries) | p (queries) | "
        "p (seeds, t) | sd over seeds of dR@1 | MDE80 |",
        "|" + "---|" * 9,
    ]
    for name, dirs in summary.items():
        for d, r in dirs.items():
            cells = [name, d, f"{_f(r['mean'])} ± {_f(r['sd'])}"]
            if "delta" in r:
                cells += [
                    f"{r['delta']:+.2f}",
                    f"{r['ci_lo']:+.2f} .. {r['ci_hi']:+.2f}",
                    _f(r["p_queries"], ".4f"),
                    _f(r["p_seeds"], ".4f"),
                    _f(r["sd_seed"]),
                    _f(r["mde80"]),
                ]
            else:
                cells += ["(baseline)", "-", "-", "-", "-", "-"]
            lines.append("| " + " | ".join(cells) + " |")
    n = int(next(iter(next(iter(summary.values())).values()))["n_seeds"])
    lines += [
        "",
        f"{n} seeds; R@1 in %, expected under random tie-breaking. MDE80 = 2.80 x SE, SE combining query "
        "sampling and seed-to-seed variation (module docstring of eval.seeds).",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m eval.seeds", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--system",
        nargs=2,
        action="append",
        metavar=("NAME", "FILES"),
        required=True,
        help="a system name and its comma-separated per-seed scores files",
    )
    p.add_argument("--baseline", help="system the others are compared with (default: the first)")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    baseline = args.baseline or args.system[0][0]
    try:
        hits = {name: [per_query_hits(f) for f in files.split(",") if f] for name, files in args.system}
        summary = seed_summary(hits, baseline, seed=args.seed)
    except ValueError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    clean = {
        n: {d: {k: (v if math.isfinite(v) else None) for k, v in r.items()} for d, r in ds.items()}
        for n, ds in summary.items()
    }
    (out / "seeds.json").write_text(json.dumps(clean, indent=1, sort_keys=True) + "\n")
    table = seed_table(summary, baseline)
    (out / "seeds.md").write_text("# Seeds\n\n" + table + "\n")
    sys.stdout.write(table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
