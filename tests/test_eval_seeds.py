"""eval.seeds: mean +- sd over seeds, paired tests against a baseline and the minimum detectable difference."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats as sstats

from eval.posthoc import mean_r1
from eval.scores_io import save_scores
from eval.seeds import main


def _write(tmp_path, name, seed, boost, n=200):
    rng = np.random.default_rng(seed)
    s = rng.normal(size=(n, n)) * 0.3 + np.eye(n) * (0.6 + boost)
    path = tmp_path / f"{name}{seed}.npz"
    ids_t, ids_v = [f"t{i}" for i in range(n)], [f"v{i}" for i in range(n)]
    order = rng.permutation(n) if name == "b" else np.arange(n)  # rows in another order: aligned by id
    save_scores(path, s[order], [ids_t[i] for i in order], ids_v, gt=order)
    return path, s


def test_seed_table_against_hand_computation(tmp_path, capsys):
    files = {"a": [], "b": []}
    r1 = {"a": [], "b": []}
    diffs = []
    for seed in range(3):
        for name, boost in (("a", 0.0), ("b", 0.15 + 0.05 * seed)):
            path, s = _write(tmp_path, name, seed, boost)
            files[name].append(str(path))
            r1[name].append(100 * mean_r1(s, gt=np.arange(200)))
        sa = np.random.default_rng(seed).normal(size=(200, 200)) * 0.3
        ha = (np.argmax(sa + np.eye(200) * 0.6, 1) == np.arange(200)) * 100.0
        hb = (np.argmax(sa + np.eye(200) * (0.75 + 0.05 * seed), 1) == np.arange(200)) * 100.0
        diffs.append(hb - ha)
    rc = main(
        [
            "--system",
            "a",
            ",".join(files["a"]),
            "--system",
            "b",
            ",".join(files["b"]),
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert rc == 0
    out = json.loads((tmp_path / "o" / "seeds.json").read_text())
    assert out["a"]["t2v"]["mean"] == pytest.approx(np.mean(r1["a"]))
    assert out["a"]["t2v"]["sd"] == pytest.approx(np.std(r1["a"], ddof=1))
    b = out["b"]["t2v"]
    seed_means = np.array([d.mean() for d in diffs])
    assert b["delta"] == pytest.approx(seed_means.mean()) and b["delta"] > 3
    se_q = math.sqrt(sum(d.var(ddof=1) / d.size for d in diffs)) / 3
    se = math.sqrt(se_q**2 + seed_means.std(ddof=1) ** 2 / 3)
    assert b["se"] == pytest.approx(se)
    assert b["mde80"] == pytest.approx((sstats.norm.ppf(0.975) + sstats.norm.ppf(0.8)) * se)
    t = seed_means.mean() / (seed_means.std(ddof=1) / math.sqrt(3))
    assert b["p_seeds"] == pytest.approx(2 * sstats.t.sf(abs(t), 2))
    assert b["p_queries"] < 0.01
    table = (tmp_path / "o" / "seeds.md").read_text()
    assert f"{b['delta']:+.2f}" in table and "(baseline)" in table
    assert f"{out['a']['t2v']['mean']:.2f} ± {out['a']['t2v']['sd']:.2f}" in capsys.readouterr().out


def test_seeds_bad_inputs(tmp_path, capsys):
    p0, _ = _write(tmp_path, "a", 0, 0.0)
    p1, _ = _write(tmp_path, "a", 1, 0.0)
    rc = main(["--system", "a", f"{p0},{p1}", "--system", "b", str(p0), "--out", str(tmp_path / "o")])
    assert rc == 2 and "same number (>= 1) of seed files" in capsys.readouterr().err
    rc = main(["--system", "a", str(p0), "--baseline", "zz", "--out", str(tmp_path / "o")])
    assert rc == 2 and "baseline 'zz' is not one of the systems" in capsys.readouterr().err


def test_posthoc_system_from_eval_ranks(tmp_path):
    from eval.__main__ import main as eval_main
    from eval.posthoc import apply
    from eval.seeds import per_query_hits

    path, s = _write(tmp_path, "a", 0, 0.0, n=60)
    rc = eval_main([str(path), "--posthoc", "dsl", "--out", str(tmp_path / "e"), "--no-plots"])
    assert rc == 0
    got = per_query_hits(f"{tmp_path / 'e' / 'ranks.npz'}#posthoc_dsl")
    assert set(got) == {"t2v"}
    assert got["t2v"][1].mean() == pytest.approx(
        100 * mean_r1(apply("dsl", s.astype(np.float32)), gt=np.arange(60))
    )
    with pytest.raises(ValueError, match="no arrays posthoc_zz_t2v_abc"):
        per_query_hits(f"{tmp_path / 'e' / 'ranks.npz'}#posthoc_zz")
