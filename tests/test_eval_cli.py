"""CLI end to end (scores file, embeddings folder, post-hoc with validation tuning, comparison) and bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from eval.__main__ import main
from eval.scores_io import ScoreSet, load_bank, load_scores, save_embeddings, save_score_chunks, save_scores


def _pair(rng, n=80, d=16, noise=0.9):
    t = rng.standard_normal((n, d)).astype(np.float32)
    v = (t + noise * rng.standard_normal((n, d))).astype(np.float32)
    return t, v


def _ids(n, p):
    return [f"{p}{i}" for i in range(n)]


def test_cli_end_to_end(tmp_path, capsys):
    rng = np.random.default_rng(0)
    t, v = _pair(rng)
    n = len(t)
    save_scores(tmp_path / "a.npz", t @ v.T, _ids(n, "t"), _ids(n, "v"), gt=np.arange(n))
    save_scores(tmp_path / "b.npz", t @ (v + 0.5 * rng.standard_normal(v.shape)).T, _ids(n, "t"), _ids(n, "v"),
                gt=np.arange(n))
    bank_q = rng.standard_normal((120, 16)).astype(np.float32)
    np.savez(tmp_path / "bank.npz", scores=bank_q @ v.T, gallery_ids=np.array(_ids(n, "v")))
    tv, vv = _pair(rng, n=50)
    save_scores(tmp_path / "val.npz", tv @ vv.T, _ids(50, "x"), _ids(50, "w"), gt=np.arange(50))
    np.savez(tmp_path / "val_bank.npz", scores=bank_q @ vv.T)
    out = tmp_path / "out"
    rc = main([str(tmp_path / "a.npz"), "--compare", str(tmp_path / "b.npz"), "--names", "base", "other",
               "--posthoc", "nnn,dsl", "--bank-scores", str(tmp_path / "bank.npz"),
               "--val-scores", str(tmp_path / "val.npz"), "--val-bank-scores", str(tmp_path / "val_bank.npz"),
               "--ks", "1,10", "--out", str(out)])
    assert rc == 0
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("test/t2v/R@1", "test/t2v/R@1_opt", "test/t2v/MdR", "test/v2t/MnR", "test/hub/t2v/k10/skew",
                "test/hub/v2t/k1/robin_hood", "test/t2v/R@1_ci_lo", "test/mean_R@1", "test/clip4clip/t2v/R@1",
                "test/posthoc/nnn/t2v/R@1", "test/posthoc/nnn/param/alpha", "test/posthoc/dsl/t2v/dR@1_p",
                "test/compare/other/t2v/dR@1"):
        assert key in metrics, key
    assert metrics["test/t2v/R@1_ci_lo"] <= metrics["test/t2v/R@1"] <= metrics["test/t2v/R@1_ci_hi"]
    comp = json.loads((out / "comparison.json").read_text())
    assert set(comp) == {"base", "base+nnn", "base+dsl", "other"}
    assert comp["other"]["test/t2v/R@1"] == pytest.approx(
        metrics["test/t2v/R@1"] + metrics["test/compare/other/t2v/dR@1"])
    report = (out / "report.md").read_text()
    assert "| t2v |" in report and "base+nnn" in report and "tuned on" in report
    for png in ("kocc_t2v_k10.png", "rank_cdf_t2v.png", "lorenz_t2v_k10.png"):
        assert (out / png).stat().st_size > 1000
    hubs = json.loads((out / "hubs.json").read_text())
    assert len(hubs["t2v"]["k10"]) == 20 and hubs["t2v"]["k10"][0][1] >= hubs["t2v"]["k10"][-1][1]
    ranks = np.load(out / "ranks.npz")
    assert ranks["t2v_rank"].shape == (n,) and ranks["t2v_query_ids"][0] == "t0"
    assert (ranks["t2v_rank"] <= 1).mean() * 100 == pytest.approx(metrics["test/t2v/R@1"])
    printed = capsys.readouterr().out
    assert "| metric | base | base+nnn | base+dsl | other |" in printed


def test_cli_embeddings_folder_and_untuned_note(tmp_path, capsys):
    rng = np.random.default_rng(1)
    t, v = _pair(rng, n=40)
    save_embeddings(tmp_path / "emb", t, v, _ids(40, "t"), _ids(40, "v"), gt=np.arange(40))
    rc = main([str(tmp_path / "emb"), "--posthoc", "dsl", "--no-plots", "--ks", "5", "--out", str(tmp_path / "o")])
    assert rc == 0
    metrics = json.loads((tmp_path / "o" / "metrics.json").read_text())
    ref = ScoreSet.from_arrays(t @ v.T, gt=np.arange(40))
    from eval.evaluate import evaluate

    assert metrics["test/t2v/R@1"] == pytest.approx(evaluate(ref, ks=(5,))["test/t2v/R@1"])
    assert "untuned defaults" in capsys.readouterr().out


def test_cli_errors(tmp_path, capsys):
    s = np.zeros((3, 3), dtype=np.float32)
    s[0, 0] = np.nan
    np.savez(tmp_path / "nan.npz", scores=s, query_ids=np.array(["a", "b", "c"]),
             gallery_ids=np.array(["x", "y", "z"]), gt=np.arange(3))
    assert main([str(tmp_path / "nan.npz"), "--out", str(tmp_path / "o")]) == 2
    assert "NaN" in capsys.readouterr().err
    save_scores(tmp_path / "ok.npz", np.eye(3, dtype=np.float32), list("abc"), list("xyz"), gt=np.arange(3))
    assert main([str(tmp_path / "ok.npz"), "--posthoc", "qbnorm", "--out", str(tmp_path / "o")]) == 2
    assert "needs --bank-scores" in capsys.readouterr().err
    assert main([str(tmp_path / "ok.npz"), "--posthoc", "magic", "--out", str(tmp_path / "o")]) == 2
    assert "unknown methods" in capsys.readouterr().err


# ------------------------------------------------------------------ validation of bad input


def _write(path, **arrays):
    np.savez(path, **arrays)
    return path


BASE = {"scores": np.eye(3, dtype=np.float32), "query_ids": np.array(["a", "b", "c"]),
        "gallery_ids": np.array(["x", "y", "z"]), "gt": np.arange(3)}


@pytest.mark.parametrize(
    "change,match",
    [
        ({"scores": np.array([[1, np.inf, 0], [0, 1, 0], [0, 0, 1]], dtype=np.float32)}, "1 inf"),
        ({"scores": np.full((3, 3), np.nan, dtype=np.float32)}, "9 NaN"),
        ({"scores": np.eye(3, 4, dtype=np.float32)}, "4 columns|gallery_ids has shape"),
        ({"gt": np.arange(2)}, "gt has shape"),
        ({"gt": np.array([0, 1, 5])}, "gt values must lie"),
        ({"query_ids": np.array(["a", "a", "c"])}, "duplicate ids"),
        ({"gallery_ids": np.array(["x", "y", "y"])}, "duplicate ids"),
        ({"scores": np.zeros((0, 3), dtype=np.float32), "query_ids": np.array([], dtype=str),
          "gt": np.zeros(0, dtype=int)}, "empty"),
        ({"scores": np.eye(3, dtype=np.int32)}, "floating point"),
    ],
)
def test_bad_scores_files(tmp_path, change, match):
    path = _write(tmp_path / "bad.npz", **{**BASE, **change})
    with pytest.raises(ValueError, match=match) as exc:
        load_scores(path)
    assert "bad.npz" in str(exc.value)


def test_relevance_problems(tmp_path):
    base = {k: v for k, v in BASE.items() if k != "gt"}
    p = _write(tmp_path / "r1.npz", **base, relevance=np.eye(3, 4, dtype=bool))
    with pytest.raises(ValueError, match="relevance has shape"):
        load_scores(p)
    rel = np.eye(3, dtype=bool)
    rel[1, 1] = False
    p = _write(tmp_path / "r2.npz", **base, relevance=rel)
    with pytest.raises(ValueError, match="no relevant gallery item"):
        load_scores(p)
    p = _write(tmp_path / "r3.npz", **base)
    with pytest.raises(ValueError, match="'gt' or a 'relevance'"):
        load_scores(p)
    p = _write(tmp_path / "r4.npz", **BASE, relevance=np.eye(3, dtype=bool))
    with pytest.raises(ValueError, match="exactly one of gt and relevance"):
        load_scores(p)


def test_missing_and_object_arrays(tmp_path):
    with pytest.raises(ValueError, match="no such scores file"):
        load_scores(tmp_path / "nope.npz")
    p = _write(tmp_path / "obj.npz", **{**BASE, "query_ids": np.array(["a", 1, None], dtype=object)})
    with pytest.raises(ValueError, match="without pickle"):
        load_scores(p)
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(ValueError, match="neither chunk"):
        load_scores(tmp_path / "empty_dir")


def test_chunk_folder_problems(tmp_path):
    s = np.eye(4, dtype=np.float32)
    save_score_chunks(tmp_path / "c", s, list("abcd"), list("wxyz"), gt=np.arange(4), rows_per_chunk=2)
    bad = np.load(tmp_path / "c" / "chunk-00001.npz")
    arrays = {k: bad[k] for k in bad.files}
    arrays["scores"] = arrays["scores"].copy()
    arrays["scores"][0, 0] = np.nan
    np.savez(tmp_path / "c" / "chunk-00001.npz", **arrays)
    ss = load_scores(tmp_path / "c")
    with pytest.raises(ValueError, match="chunk-00001.npz.*NaN"):
        _ = ss.scores
    arrays["scores"][0, 0] = 0.0
    arrays["gallery_ids"] = np.array(list("wxyq"))
    np.savez(tmp_path / "c" / "chunk-00001.npz", **arrays)
    with pytest.raises(ValueError, match="gallery_ids differ"):
        load_scores(tmp_path / "c")
    (tmp_path / "c" / "chunk-00001.npz").rename(tmp_path / "c" / "chunk-00005.npz")
    with pytest.raises(ValueError, match="contiguously"):
        load_scores(tmp_path / "c")


def test_bank_alignment(tmp_path):
    np.savez(tmp_path / "bank.npz", scores=np.arange(6, dtype=np.float32).reshape(2, 3),
             gallery_ids=np.array(["z", "x", "y"]))
    b = load_bank(tmp_path / "bank.npz", np.array(["x", "y", "z"]))
    np.testing.assert_array_equal(b, [[1, 2, 0], [4, 5, 3]])
    with pytest.raises(ValueError, match="lacks 1 gallery ids"):
        load_bank(tmp_path / "bank.npz", np.array(["x", "y", "q"]))
