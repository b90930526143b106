"""Audit findings of the eval package (issue 15), each against an independent reference or hand-computed case."""

from __future__ import annotations

import json

import numpy as np
import pytest

from eval import posthoc
from eval.__main__ import main
from eval.evaluate import compute
from eval.hubness import hubness_stats
from eval.posthoc import Method, dual_softmax, mean_r1
from eval.scores_io import ScoreSet, save_scores


def clip4clip_multisentence_reference(scores: np.ndarray, gt: np.ndarray, n_videos: int) -> dict[str, float]:
    """CLIP4Clip's multi-sentence t2v metric, written from its description (``tensor_text_to_video_metrics``):
    captions are grouped per video into a [n_videos, max_captions, n_videos] tensor padded with -inf rows; every
    caption row is argsorted descending, argsorted again (giving each column's position), the position of the
    row's own video is read off the diagonal, padded rows are dropped; R@K = 100 * mean(pos < K), MdR =
    median(pos) + 1, MnR = mean(pos) + 1. Ties fall in index order (a stable sort)."""
    per_video = [np.flatnonzero(gt == v) for v in range(n_videos)]
    max_cap = max(len(p) for p in per_video)
    sim = np.full((n_videos, max_cap, n_videos), -np.inf)
    for v, rows in enumerate(per_video):
        sim[v, : len(rows)] = scores[rows]
    stacked = sim.transpose(1, 0, 2)  # [max_cap, n_videos, n_videos]
    first = np.argsort(-stacked, axis=-1, kind="stable")
    second = np.argsort(first, axis=-1, kind="stable")
    ranks = np.diagonal(second, axis1=1, axis2=2).reshape(-1)
    orig = np.diagonal(stacked, axis1=1, axis2=2).reshape(-1)
    valid = ranks[np.isfinite(orig)]
    out = {f"R@{k}": 100.0 * float((valid < k).mean()) for k in (1, 5, 10)}
    out["MdR"] = float(np.median(valid)) + 1
    out["MnR"] = float(valid.mean()) + 1
    return out


def _tied_multicaption(seed=0, n_vid=40, n_cap=5, levels=6):
    rng = np.random.default_rng(seed)
    gt = np.repeat(np.arange(n_vid), n_cap)
    s = rng.normal(size=(n_vid * n_cap, n_vid))
    s[np.arange(len(gt)), gt] += 0.5
    return np.round(s * levels / 4) / levels, gt  # coarse: many ties, also at the ground truth


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_finding1_clip4clip_multisentence_t2v_is_argsort(seed):
    s, gt = _tied_multicaption(seed)
    assert compute(ScoreSet.from_arrays(s, gt=gt)).t2v.b.sum() > 50  # the case is heavily tied
    got = compute(ScoreSet.from_arrays(s, gt=gt)).clip4clip["t2v"]
    ref = clip4clip_multisentence_reference(s, gt, 40)
    for key, v in ref.items():
        assert got[key] == pytest.approx(v, abs=1e-9), key


def test_finding1_single_caption_keeps_compute_metrics_tie_denominator():
    s = np.array([[1.0, 1.0, 0.0], [0.0, 1.0, 0.5], [0.2, 0.1, 0.9]])
    got = compute(ScoreSet.from_arrays(s)).clip4clip["t2v"]
    assert got["R@1"] == pytest.approx(100 * 3 / 4)  # 4 positions (query 0 counts twice), 3 of them at 0


def _forms(s, gt, n_vid):
    rel = np.zeros(s.shape, bool)
    rel[np.arange(len(gt)), gt] = True
    return ScoreSet.from_arrays(s, gt=gt), ScoreSet.from_arrays(s, relevance=rel), rel


def test_finding2_relevance_form_has_every_gt_key(tmp_path):
    s, gt = _tied_multicaption(3, n_vid=12, n_cap=3)
    g, r, rel = _forms(s, gt, 12)
    fg, fr = compute(g).flat(), compute(r).flat()
    assert any(k.startswith("test/v2t_groupmax/") for k in fg) and any("clip4clip/v2t" in k for k in fg)
    assert fr.keys() == fg.keys()
    for k in fg:
        assert fr[k] == pytest.approx(fg[k], nan_ok=True), k
    # the chunked relevance form (training.score) too
    chunks = ScoreSet.from_chunks(
        lambda: [(s[i : i + 7].astype(np.float32), rel[i : i + 7]) for i in range(0, 36, 7)],
        g.query_ids,
        g.gallery_ids,
        chunk_relevance=True,
    )
    fc = compute(chunks).flat()
    assert fc.keys() == fg.keys()


def test_finding3_uncaptioned_video_and_duplicate_captions_are_noted(tmp_path):
    # 5 videos, one caption each for videos 0-3 (video 4 has none); captions 0 and 1 are identical texts (their
    # rows are equal), as the duplicate captions of MSR-VTT 1k-A: v2t of videos 0 and 1 tie at the ground truth
    s = np.array(
        [
            [0.9, 0.5, 0.2, 0.3, 0.0],
            [0.9, 0.5, 0.2, 0.3, 0.0],
            [0.1, 0.2, 0.8, 0.0, 0.1],
            [0.0, 0.3, 0.1, 0.7, 0.2],
        ]
    )
    gt = np.array([0, 1, 2, 3])
    notes = compute(ScoreSet.from_arrays(s, gt=gt)).notes()
    assert "1 of 5 videos have no relevant caption: they are no v2t queries (v2t uses 4 queries)." in notes
    assert "2 v2t queries tie with their ground truth (duplicate captions or videos?)." in notes
    assert not any("t2v queries tie" in n for n in notes)
    save_scores(tmp_path / "s.npz", s, [f"t{i}" for i in range(4)], [f"v{i}" for i in range(5)], gt=gt)
    assert main([str(tmp_path / "s.npz"), "--out", str(tmp_path / "o"), "--no-plots"]) == 0
    report = (tmp_path / "o" / "report.md").read_text()
    assert "1 of 5 videos have no relevant caption" in report and "2 v2t queries tie" in report


def test_finding4_posthoc_is_evaluated_in_float64(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    n = 200  # logit-scale scores (x100 cosine-like spread): DSL at T = 0.01 underflows float32
    s = (rng.normal(size=(n, n)) * 5.0 + 10.0 * np.eye(n) * rng.uniform(0, 1, n)).astype(np.float32)
    new = dual_softmax(s, temperature=0.01)
    assert (new.astype(np.float32) == 0).sum() > (
        new == 0
    ).sum() + 4000  # float32 flushes these to exact zeros
    expect = 100.0 * mean_r1(new, gt=np.arange(n))
    assert expect != pytest.approx(100.0 * mean_r1(new.astype(np.float32), gt=np.arange(n)), abs=1.0)
    monkeypatch.setitem(
        posthoc.METHODS, "dsl", Method(dual_softmax, False, {"temperature": 0.01}, True, "DSL")
    )
    save_scores(
        tmp_path / "s.npz", s, [f"t{i}" for i in range(n)], [f"v{i}" for i in range(n)], gt=np.arange(n)
    )
    assert (
        main([str(tmp_path / "s.npz"), "--out", str(tmp_path / "o"), "--posthoc", "dsl", "--no-plots"]) == 0
    )
    got = json.loads((tmp_path / "o" / "metrics.json").read_text())["test/posthoc/dsl/t2v/R@1"]
    assert got == pytest.approx(expect, abs=1e-9)


def test_finding6_undefined_is_nan_null_and_na_with_reason(tmp_path):
    st = hubness_stats(np.full(6, 2.0), 2, 6, good=np.full(6, 1.0), centrality=np.arange(6.0))
    assert np.isnan(st["skew"]) and np.isnan(st["bad_rate_hubs"]) and np.isnan(st["spearman_centrality"])
    # identity scores: every video is retrieved exactly once at every k -> no hubs, equal N_k
    n = 6
    s = np.eye(n) + np.arange(n)[None, :] * 1e-3
    save_scores(
        tmp_path / "s.npz", s, [f"t{i}" for i in range(n)], [f"v{i}" for i in range(n)], gt=np.arange(n)
    )
    assert main([str(tmp_path / "s.npz"), "--out", str(tmp_path / "o"), "--no-plots", "--ks", "1"]) == 0
    m = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert m["test/hub/t2v/k1/skew"] is None and m["test/hub/t2v/k1/bad_rate_hubs"] is None
    report = (tmp_path / "o" / "report.md").read_text()
    row = next(line for line in report.splitlines() if line.startswith("| t2v | 1 |"))
    assert "n/a" in row and " 0.0 |" not in row.split("|")[3]
    assert "there are no hubs (N_k >= 2 mu_k)" in report and "zero variance: skewness is 0/0" in report


@pytest.mark.parametrize("form", ["gt", "relevance"])
def test_finding5_dense_tie_path_equals_candidate_path(monkeypatch, form):
    import eval.evaluate as ev
    from eval.hubness import k_occurrence

    rng = np.random.default_rng(5)
    s = np.round(rng.uniform(size=(30, 24)) * 2) / 2  # 3 levels: ties everywhere
    s[:, 5] = 1.0  # a column tied at the top of every row
    gt = rng.integers(0, 24, 30)
    if form == "gt":
        ss = ScoreSet.from_arrays(s, gt=gt)
    else:
        rel = np.zeros(s.shape, bool)
        rel[np.arange(30), gt] = True
        rel[np.arange(0, 30, 3), 7] = True  # some rows with two relevant videos (no gt form exists)
        ss = ScoreSet.from_arrays(s, relevance=rel)
    dense = compute(ss, (1, 3, 5)).flat()
    monkeypatch.setattr(ev, "_CAND_FACTOR", 10**9)  # force the sparse candidate lists
    sparse = compute(ss, (1, 3, 5)).flat()
    assert dense.keys() == sparse.keys()
    for k in dense:
        assert dense[k] == pytest.approx(sparse[k], rel=1e-12, abs=1e-12, nan_ok=True), k
    nk, _ = k_occurrence(s.astype(np.float32), 3)  # brute-force reference of the t2v occurrences
    res = compute(ss, (3,))
    np.testing.assert_allclose(res.t2v.nk[3], nk, rtol=1e-12)
    nk_v, _ = k_occurrence(s.astype(np.float32).T, 3)
    np.testing.assert_allclose(res.v2t.nk[3], nk_v, rtol=1e-12)


_TIED_CHILD = """
import resource, sys, json
import numpy as np
from eval.evaluate import compute
from eval.scores_io import ScoreSet
n, rows = int(sys.argv[1]), int(sys.argv[2])
ids = [f"x{i}" for i in range(n)]
ss = ScoreSet.from_chunks(lambda: (np.zeros((min(rows, n - r), n), np.float32) for r in range(0, n, rows)),
                          ids, ids, gt=np.arange(n))
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
flat = compute(ss, (1, 5, 10, 15)).flat()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"extra_mb": (peak - base) / 1024, "r1": flat["test/t2v/R@1"], "nk": flat["test/hub/v2t/k10/mu"]}))
"""


def test_finding5_fully_tied_matrix_has_bounded_memory():
    import os
    import subprocess
    import sys

    n, rows = 6000, 500  # 36 M tied entries in 12 MB chunks; candidate lists would need > 700 MB
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    out = subprocess.run(
        [sys.executable, "-c", _TIED_CHILD, str(n), str(rows)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        check=True,
    )
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["r1"] == pytest.approx(100.0 / n)  # every row ties all n videos: E[hit@1] = 1/n
    # beyond one chunk (12 MB scores, ~60 MB of masks/temporaries), only O(n k) arrays may grow
    assert r["extra_mb"] < 250, r


def test_clip4clip_run_median_and_mean_equal_listing_the_positions():
    from eval.retrieval import clip4clip_from_counts

    rng = np.random.default_rng(9)
    for _ in range(30):
        a = rng.integers(0, 20, rng.integers(1, 12))
        n = rng.integers(1, 9, len(a))
        pos = np.concatenate([np.arange(x, x + m) for x, m in zip(a, n)])
        got = clip4clip_from_counts(a, n)
        assert got["MdR"] == float(np.median(pos)) + 1 and got["MnR"] == pytest.approx(
            pos.mean() + 1, rel=1e-12
        )


def test_finding7_pictures_and_posthoc_rows_in_report(tmp_path):
    from eval.plots import occurrence_bins

    # adaptive bins: integer bins for small N_k, at most 40 bins for N_k in the hundreds
    e = occurrence_bins([np.array([0.0, 3.0, 7.0])])
    assert e[0] == -0.5 and e[-1] == 7.5 and len(e) == 9
    e = occurrence_bins([np.array([0.0, 350.0]), np.array([5.0, 10.0])])
    assert len(e) == 41 and e[-1] >= 350.0
    rng = np.random.default_rng(0)
    n = 120
    s = rng.normal(size=(n, n)) * 0.2 + np.eye(n) * 0.5
    s[:, :3] += 0.6  # three planted hubs
    ids_t, ids_v = [f"t{i}" for i in range(n)], [f"v{i}" for i in range(n)]
    save_scores(tmp_path / "a.npz", s, ids_t, ids_v, gt=np.arange(n))
    save_scores(tmp_path / "b.npz", s - 0.6 * (np.arange(n) < 3)[None, :], ids_t, ids_v, gt=np.arange(n))
    bank = rng.normal(size=(60, n)) * 0.2
    bank[:, :3] += 0.6
    np.savez(tmp_path / "bank.npz", scores=bank.astype(np.float32), gallery_ids=np.array(ids_v))
    out = tmp_path / "o"
    assert (
        main(
            [
                str(tmp_path / "a.npz"),
                "--compare",
                str(tmp_path / "b.npz"),
                "--names",
                "InfoNCE",
                "NeighborRetr",
                "--bank-scores",
                str(tmp_path / "bank.npz"),
                "--posthoc",
                "qbnorm,dsl",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    data = json.loads((out / "kocc_t2v_k10.json").read_text())
    assert set(data["systems"]) == {"InfoNCE", "NeighborRetr", "InfoNCE+qbnorm", "InfoNCE+dsl"}
    assert data["systems"]["InfoNCE"]["max"] > 3 * data["systems"]["NeighborRetr"]["max"]  # the hubs show
    assert (out / "kocc_v2t_k10.png").stat().st_size > 1000
    v2t = json.loads((out / "kocc_v2t_k10.json").read_text())
    assert set(v2t["systems"]) == {"InfoNCE", "NeighborRetr"}  # post-hoc rows re-rank t2v only
    lor = json.loads((out / "lorenz_t2v_k10.json").read_text())
    assert lor["InfoNCE"]["gini"] > lor["NeighborRetr"]["gini"]
    report = (out / "report.md").read_text()
    m = json.loads((out / "metrics.json").read_text())
    row = next(line for line in report.splitlines() if line.startswith("| dsl | t2v |"))
    assert f"{m['test/posthoc/dsl/t2v/dR@1']:+.2f}" in row and "| yes |" in row
    assert (
        f"{m['test/posthoc/dsl/t2v/dR@1_ci_lo']:+.2f} .. {m['test/posthoc/dsl/t2v/dR@1_ci_hi']:+.2f}" in row
    )
    assert (
        next(line for line in report.splitlines() if line.startswith("| qbnorm | t2v |")).count("| no |") == 1
    )


def test_posthoc_v2t_direction_with_a_video_bank(tmp_path):
    from eval.posthoc import apply, qb_norm, v2t_view

    rng = np.random.default_rng(2)
    n_v, n_cap = 40, 3
    gt = np.repeat(np.arange(n_v), n_cap)
    s = rng.normal(size=(n_v * n_cap, n_v)) * 0.2
    s[np.arange(len(gt)), gt] += 0.4
    s[:7] += 0.5  # texts 0..6 are v2t hubs
    ids_t, ids_v = [f"t{i}" for i in range(len(gt))], [f"v{i}" for i in range(n_v)]
    save_scores(tmp_path / "a.npz", s, ids_t, ids_v, gt=gt)
    vbank = rng.normal(size=(80, len(gt))) * 0.2
    vbank[:, :7] += 0.5
    np.savez(tmp_path / "vb.npz", scores=vbank.astype(np.float32), gallery_ids=np.array(ids_t))
    out = tmp_path / "o"
    assert (
        main(
            [
                str(tmp_path / "a.npz"),
                "--posthoc",
                "qbnorm,dsl",
                "--v2t-bank-scores",
                str(tmp_path / "vb.npz"),
                "--out",
                str(out),
                "--no-plots",
                "--bank-scores",
                str(tmp_path / "vb.npz"),
            ]
        )
        == 2
    )  # wrong bank
    np.savez(
        tmp_path / "tb.npz", scores=rng.normal(size=(50, n_v)).astype(np.float32), gallery_ids=np.array(ids_v)
    )
    assert (
        main(
            [
                str(tmp_path / "a.npz"),
                "--posthoc",
                "qbnorm,dsl",
                "--v2t-bank-scores",
                str(tmp_path / "vb.npz"),
                "--bank-scores",
                str(tmp_path / "tb.npz"),
                "--out",
                str(out),
                "--no-plots",
            ]
        )
        == 0
    )
    m = json.loads((out / "metrics.json").read_text())
    vt = v2t_view(ScoreSet.from_arrays(s.astype(np.float32), ids_t, ids_v, gt=gt))
    rel = vt.relevance
    assert m["test/posthoc/dsl/v2t/R@1"] == pytest.approx(
        100 * mean_r1(apply("dsl", vt.scores), relevance=rel)
    )
    qb = qb_norm(vt.scores, vbank.astype(np.float32), beta=20.0, k=1)
    assert m["test/posthoc/qbnorm/v2t/R@1"] == pytest.approx(100 * mean_r1(qb, relevance=rel))
    assert m["test/posthoc/qbnorm/v2t/dR@1"] == pytest.approx(
        m["test/posthoc/qbnorm/v2t/R@1"] - m["test/v2t/R@1"]
    )
    report = (out / "report.md").read_text()
    assert "| qbnorm | v2t |" in report and "| dsl | v2t |" in report


def test_good_share_per_bin_hand_computed(tmp_path):
    """Good vs bad hubs: per N_k bin, sum GN_k / sum N_k (None for a bin without occurrences); the figure gets
    the good-share row only on data where GN_k can exceed 1."""
    from eval.plots import good_share, k_occurrence_overlay

    nk, good = np.array([0.0, 1, 2, 2, 10]), np.array([0.0, 1, 2, 0, 1])
    edges = np.arange(-0.5, 11.0, 1.0)  # integer bins 0..10
    share = good_share(nk, good, edges)
    assert share[0] is None and share[1] == 1.0 and share[2] == 0.5 and share[10] == 0.1
    assert all(v is None for v in share[3:10])
    k_occurrence_overlay({"A": (nk, good), "B": (nk, None)}, 10, tmp_path / "multi.png")
    data = json.loads((tmp_path / "multi.json").read_text())
    assert data["systems"]["A"]["good_share"] == share and "good_share" not in data["systems"]["B"]
    assert data["systems"]["A"]["good"] == [2, 2, 1] + [0] * 8 and data["systems"]["A"]["bad"][9] == 1
    k_occurrence_overlay({"A": (nk, np.minimum(good, 1))}, 10, tmp_path / "one.png")  # GN_k 0/1: no split
    assert "good_share" not in json.loads((tmp_path / "one.json").read_text())["systems"]["A"]
