"""CLI: evaluate a scores file (or embeddings folder), optional post-hoc baselines and comparisons.

    python -m eval SCORES [--val-scores V] [--bank-scores B] [--val-bank-scores VB]
                   [--posthoc qbnorm,is,csls,nnn,dsl] [--compare OTHER ...] [--names NAME ...] --out DIR

Writes ``DIR/metrics.json`` (flat keys of SCORES, plus ``test/posthoc/<method>/...`` and
``test/compare/<name>/...`` paired tests), ``DIR/comparison.json`` (flat metrics of every system), ``DIR/report.md``,
``DIR/hubs.json`` (top-20 hubs), ``DIR/ranks.npz`` (per-query tie counts and ranks) and PNG plots with JSON data, and prints the table. Post-hoc hyperparameters are tuned on ``--val-scores`` (with
``--val-bank-scores`` for bank methods), never on the test scores; without them the defaults are used and the
report says so. Post-hoc methods re-rank t2v (text bank: --bank-scores) and v2t (video bank against the texts: --v2t-bank-scores;
DSL needs none).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

from eval import plots
from eval.evaluate import Direction, EvalResult, compute
from eval.hubness import top_hubs
from eval.posthoc import METHODS, apply, tune, v2t_view
from eval.report import (
    comparison_table,
    hubness_table,
    posthoc_table,
    retrieval_table,
    undefined_notes,
    write_metrics_json,
    write_report,
)
from eval.scores_io import ScoreSet, load_bank, load_scores
from eval.stats import paired_test

logger = logging.getLogger(__name__)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="nr-eval", description=__doc__.split("\n\n")[0])
    p.add_argument("scores", help="scores.npz, a folder of chunk-*.npz, or an embeddings folder")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--val-scores", help="validation scores (tuning post-hoc hyperparameters)")
    p.add_argument("--bank-scores", help="npz: query-bank scores [n_bank, G] against the test gallery")
    p.add_argument("--val-bank-scores", help="npz: query-bank scores against the validation gallery")
    p.add_argument("--v2t-bank-scores", help="npz: video-bank scores [n_bank, Q] against the test texts (v2t)")
    p.add_argument("--val-v2t-bank-scores", help="npz: video-bank scores against the validation texts")
    p.add_argument("--posthoc", default="", help=f"comma list of {','.join(METHODS)}")
    p.add_argument("--compare", nargs="+", default=[], help="other scores files to compare on the same queries")
    p.add_argument("--names", nargs="+", help="names for SCORES and each --compare file")
    p.add_argument("--ks", default="1,5,10,15", help="hubness k values")
    p.add_argument("--prefix", default="test", help="metric-name prefix in metrics.json (e.g. test/R@1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap confidence intervals and paired tests")
    p.add_argument("--no-plots", action="store_true", help="skip the matplotlib figures")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    import nrconfig  # here, not at import time: shard readers never load the config machinery

    nrconfig.add_version(p)
    return p.parse_args(argv)


def _err(msg: str) -> None:
    sys.stderr.write(f"error: {msg}\n")


def _aligned_hits(base: Direction, other: Direction, k: int = 1) -> tuple[np.ndarray, np.ndarray] | None:
    """Per-query hits of two systems on the same query ids (other reordered to base's order), or None."""
    if base.query_ids is None or other.query_ids is None or len(base.query_ids) != len(other.query_ids):
        return None
    pos = {str(q): i for i, q in enumerate(other.query_ids)}
    try:
        order = np.array([pos[str(q)] for q in base.query_ids])
    except KeyError:
        return None
    return 100.0 * base.hits(k), 100.0 * other.hits(k)[order]


def _t2v_only(flat: dict[str, float], prefix: str) -> dict[str, float]:
    keep = (f"{prefix}/t2v/", f"{prefix}/hub/t2v/", f"{prefix}/clip4clip/t2v/")
    return {k: v for k, v in flat.items() if k.startswith(keep)}


def _write_details(out: Path, res: EvalResult, n_top: int = 20, extra: dict[str, Direction] | None = None) -> None:
    """``hubs.json``: top hubs (id, N_k, GN_k) per direction and k; ``ranks.npz``: per-query (a, b, c) and
    expected ranks per direction, keyed by query id, for later plots and paired analyses; ``extra`` adds post-hoc
    re-ranked directions (``posthoc_<m>_t2v_*``) for ``eval.seeds``."""
    hubs: dict[str, dict[str, list]] = {}
    arrays: dict[str, np.ndarray] = {}
    for d in (res.t2v, res.v2t):
        ids = d.gallery_ids
        hubs[d.name] = {}
        for k, nk in d.nk.items():
            top = top_hubs(nk, ids, n_top)
            pos = {str(g): i for i, g in enumerate(ids)}
            hubs[d.name][f"k{k}"] = [[g, n, float(d.good[k][pos[g]])] for g, n in top]
    named = [(d.name, d) for d in res.directions()] + list((extra or {}).items())
    for name, d in named:
        arrays[f"{name}_query_ids"] = np.asarray(d.query_ids).astype(str)
        arrays[f"{name}_abc"] = np.stack([d.a, d.b, d.c], axis=1)
        arrays[f"{name}_rank"] = d.a + 1 + d.b / (d.c + 1)
    (out / "hubs.json").write_text(json.dumps(hubs, indent=1))
    np.savez(out / "ranks.npz", **arrays)


def _posthoc_v2t(m: str, args: argparse.Namespace, main_ss: ScoreSet, val: ScoreSet | None, res: EvalResult,
                 metrics: dict[str, float], notes: list[str], ks: tuple[int, ...]) -> None:
    """Re-rank the v2t direction with method m (video queries, text gallery; bank methods need a video bank
    against the texts, ``--v2t-bank-scores``), tuned on the validation v2t problem; adds ``posthoc/m/v2t/*``."""
    spec, pre = METHODS[m], args.prefix
    vt = v2t_view(main_ss)
    bank = load_bank(args.v2t_bank_scores, vt.gallery_ids) if args.v2t_bank_scores else None
    if spec.needs_bank and bank is None:
        notes.append(f"{spec.label}: v2t not re-ranked (no --v2t-bank-scores video bank).")
        return
    val_bank = None
    if val is not None and args.val_v2t_bank_scores:
        val_bank = load_bank(args.val_v2t_bank_scores, val.query_ids)
    if val is not None and (val_bank is not None or not spec.needs_bank):
        params, _ = tune(m, v2t_view(val), val_bank)
        notes.append(f"{spec.label} v2t: {params} tuned on {args.val_scores} (val v2t R@1).")
    else:
        params = dict(spec.defaults)
        notes.append(f"{spec.label} v2t: untuned defaults {params}.")
    new = apply(m, vt.scores, bank, **params)
    r = compute(ScoreSet.from_arrays(new, vt.query_ids, vt.gallery_ids, relevance=vt.relevance), ks).t2v
    for key, v in r.retrieval().items():
        metrics[f"{pre}/posthoc/{m}/v2t/{key}"] = v
    for key, v in params.items():
        metrics[f"{pre}/posthoc/{m}/param_v2t/{key}"] = float(v)
    hits = _aligned_hits(r, res.v2t)
    if hits is not None:
        test = paired_test(*hits, seed=args.seed)
        for key, name in (("delta", "dR@1"), ("p_value", "dR@1_p"), ("ci_lo", "dR@1_ci_lo"), ("ci_hi", "dR@1_ci_hi")):
            metrics[f"{pre}/posthoc/{m}/v2t/{name}"] = test[key]


def _has(flat: dict[str, float], direction: str) -> bool:
    """Whether a system's flat metrics cover a direction (post-hoc rows re-rank one direction only)."""
    return any(key.endswith(f"/{direction}/R@1") for key in flat)


def _plots(out: Path, systems: list[tuple[str, dict[str, float], EvalResult]]) -> list[str]:
    """Overlaid k-occurrence distributions (t2v: videos, v2t: texts) of every system at k = 10 and 15 (linear and
    log y), the t2v rank CDF and Lorenz curves with Gini / Robin Hood per direction. Returns the PNG paths."""
    pngs: list[str] = []
    for dname, item in (("t2v", "videos"), ("v2t", "texts")):
        for k in (10, 15):
            sys_k = {n: (getattr(r, dname).nk[k], getattr(r, dname).good.get(k)) for n, f, r in systems
                     if k in getattr(r, dname).nk and _has(f, dname)}
            if sys_k:
                pngs.append(str(plots.k_occurrence_overlay(
                    sys_k, k, out / f"kocc_{dname}_k{k}.png",
                    f"{dname}: k-occurrence of the {item}, k = {k}", item=item)))
    ranks = {n: r.t2v.a + 1 + r.t2v.b / (r.t2v.c + 1) for n, _, r in systems}
    pngs.append(str(plots.rank_cdf(ranks, out / "rank_cdf_t2v.png", "t2v: rank of the relevant video")))
    for dname in ("t2v", "v2t"):
        base = getattr(systems[0][2], dname)
        k_l = 10 if 10 in base.nk else max(base.nk, default=None)
        if k_l is not None:
            nks = {n: getattr(r, dname).nk[k_l] for n, f, r in systems
                   if k_l in getattr(r, dname).nk and _has(f, dname)}
            pngs.append(str(plots.lorenz(nks, out / f"lorenz_{dname}_k{k_l}.png",
                                         f"{dname}: Lorenz curve of N_{k_l}")))
    return pngs


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        ks = tuple(int(k) for k in args.ks.split(",") if k.strip())
        methods = [m.strip() for m in args.posthoc.split(",") if m.strip()]
        bad = [m for m in methods if m not in METHODS]
        if bad:
            raise ValueError(f"--posthoc: unknown methods {bad}; choose from {sorted(METHODS)}")
        names = args.names or [Path(args.scores).stem] + [Path(c).stem for c in args.compare]
        if len(names) != 1 + len(args.compare):
            raise ValueError(f"--names: {len(names)} names for {1 + len(args.compare)} score files")
        main_ss = load_scores(args.scores)
    except ValueError as exc:
        _err(str(exc))
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pre = args.prefix
    notes: list[str] = []

    res = compute(main_ss, ks)
    metrics = res.flat(pre, ci=True, seed=args.seed)
    systems: list[tuple[str, dict[str, float], EvalResult]] = [(names[0], metrics, res)]
    notes.extend(res.notes())
    extra_ranks: dict[str, Direction] = {}  # post-hoc re-ranked directions, saved to ranks.npz for eval.seeds

    # ---- post-hoc baselines (t2v)
    if methods:
        try:
            bank = load_bank(args.bank_scores, main_ss.gallery_ids) if args.bank_scores else None
            val = load_scores(args.val_scores) if args.val_scores else None
            val_bank = load_bank(args.val_bank_scores, val.gallery_ids) if (val and args.val_bank_scores) else None
        except ValueError as exc:
            _err(str(exc))
            return 2
        scores = main_ss.scores
        for m in methods:
            spec = METHODS[m]
            if spec.needs_bank and bank is None:
                _err(f"--posthoc {m} needs --bank-scores")
                return 2
            if val is not None and (val_bank is not None or not spec.needs_bank):
                params, _ = tune(m, val, val_bank)
                notes.append(f"{spec.label}: {params} tuned on {args.val_scores} (val t2v R@1).")
            else:
                params = dict(spec.defaults)
                notes.append(f"{spec.label}: untuned defaults {params} (no validation split given).")
            if spec.transductive:
                notes.append(f"{spec.label} is transductive: it uses all test queries at once.")
            new = apply(m, scores, bank, **params)  # float64: a float32 cast zeroes DSL entries (ties)
            ss = ScoreSet.from_arrays(new, main_ss.query_ids, main_ss.gallery_ids, gt=main_ss.gt,
                                      relevance=main_ss.relevance, source=f"{args.scores}+{m}")
            r = compute(ss, ks)
            flat = _t2v_only(r.flat(pre), pre)
            for key, v in flat.items():
                metrics[key.replace(f"{pre}/", f"{pre}/posthoc/{m}/", 1)] = v
            for key, v in params.items():
                metrics[f"{pre}/posthoc/{m}/param/{key}"] = float(v)
            hits = _aligned_hits(r.t2v, res.t2v)
            test = paired_test(*hits, seed=args.seed)
            metrics[f"{pre}/posthoc/{m}/t2v/dR@1"] = test["delta"]
            metrics[f"{pre}/posthoc/{m}/t2v/dR@1_p"] = test["p_value"]
            metrics[f"{pre}/posthoc/{m}/t2v/dR@1_ci_lo"] = test["ci_lo"]
            metrics[f"{pre}/posthoc/{m}/t2v/dR@1_ci_hi"] = test["ci_hi"]
            metrics[f"{pre}/posthoc/{m}/transductive"] = float(spec.transductive)
            systems.append((f"{names[0]}+{m}", flat, r))
            extra_ranks[f"posthoc_{m}_t2v"] = r.t2v
            try:
                _posthoc_v2t(m, args, main_ss, val, res, metrics, notes, ks)
            except ValueError as exc:
                _err(str(exc))
                return 2

    # ---- other systems
    for name, path in zip(names[1:], args.compare):
        try:
            other = load_scores(path)
        except ValueError as exc:
            _err(str(exc))
            return 2
        r = compute(other, ks)
        flat = r.flat(pre)
        systems.append((name, flat, r))
        for d in ("t2v", "v2t"):
            hits = _aligned_hits(getattr(res, d), getattr(r, d))
            if hits is None:
                notes.append(f"{name}: {d} queries differ from {names[0]}'s; no paired test.")
                continue
            test = paired_test(*hits, seed=args.seed)
            delta = 0.0 - test["delta"]
            metrics[f"{pre}/compare/{name}/{d}/dR@1"] = delta
            metrics[f"{pre}/compare/{name}/{d}/dR@1_p"] = test["p_value"]
            notes.append(f"{name} - {names[0]} {d} R@1: {delta:+.2f} "
                         f"(95% CI {0.0 - test['ci_hi']:+.2f}..{0.0 - test['ci_lo']:+.2f}, "
                         f"p = {test['p_value']:.4f}).")

    notes.extend(undefined_notes(metrics))
    write_metrics_json(metrics, out / "metrics.json")
    _write_details(out, res, extra=extra_ranks)
    (out / "comparison.json").write_text(json.dumps({n: f for n, f, _ in systems}, indent=1, sort_keys=True))
    table = comparison_table([f for _, f, _ in systems], [n for n, _, _ in systems], pre) if len(systems) > 1 \
        else None

    pngs = [] if args.no_plots else _plots(out, systems)
    write_report(out, metrics, pre, comparison=table, notes=notes, plots=pngs, posthoc=posthoc_table(metrics, pre))

    lines = [retrieval_table(metrics, pre), "", hubness_table(metrics, pre)]
    if table:
        lines += ["", table]
    lines += [f"- {n}" for n in notes] + [f"wrote {out / 'metrics.json'} and {out / 'report.md'}"]
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
