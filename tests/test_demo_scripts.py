"""Tests of the demo helpers in scripts/: chance levels, tables, RESULT line, comparison report, pooled scores,
the untrained checkpoint, and demo.sh's argument handling."""

from __future__ import annotations

import importlib.util
import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"demo_{name}", REPO / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(mod)
    return mod


summary = _load("demo_summary")


# ---------------------------------------------------------------------------------------------------------------
# chance levels
# ---------------------------------------------------------------------------------------------------------------
def _brute_chance(n_rel: int, g: int, k: int) -> float:
    """Fraction of all orderings' top-k sets (combinations) that contain a relevant item (items 0..n_rel-1)."""
    hits = total = 0
    for top in itertools.combinations(range(g), k):
        total += 1
        hits += any(i < n_rel for i in top)
    return 100.0 * hits / total


@pytest.mark.parametrize("n_rel,g,k", [(1, 6, 1), (1, 6, 3), (2, 6, 2), (3, 7, 3), (0, 5, 2), (5, 5, 1)])
def test_chance_recall_matches_enumeration(n_rel, g, k):
    assert summary.chance_recall(np.array([n_rel]), g, k) == pytest.approx(_brute_chance(n_rel, g, k))


def test_chance_recall_one_relevant_is_k_over_g_and_averages_queries():
    assert summary.chance_recall(np.ones(100, int), 100, 1) == pytest.approx(1.0)
    assert summary.chance_recall(np.ones(100, int), 100, 10) == pytest.approx(10.0)
    # queries with 1 and 2 relevant among 4, k=1: mean(25%, 50%)
    assert summary.chance_recall(np.array([1, 2]), 4, 1) == pytest.approx(37.5)


def test_chance_recall_rejects_bad_input():
    with pytest.raises(ValueError, match="relevant counts"):
        summary.chance_recall(np.array([3]), 2, 1)
    with pytest.raises(ValueError, match="need a gallery"):
        summary.chance_recall(np.array([], int), 5, 1)


def test_chance_metrics_from_scores_file(tmp_path):
    from eval.scores_io import save_scores

    rel = np.zeros((3, 4), bool)
    rel[0, 0] = rel[1, 1] = rel[2, 1] = rel[2, 2] = True  # text 2 has two relevant videos; video 3 none
    path = save_scores(tmp_path / "s.npz", np.zeros((3, 4), np.float32), ["a", "b", "c"], ["v0", "v1", "v2", "v3"],
                       relevance=rel)
    m = summary.chance_metrics(path, ks=(1,))
    assert m["t2v/R@1"] == pytest.approx(100 * (0.25 + 0.25 + 0.5) / 3)
    # v2t: videos have 1, 2, 1, 0 relevant texts among 3
    assert m["v2t/R@1"] == pytest.approx(100 * (1 / 3 + 2 / 3 + 1 / 3 + 0) / 4)
    assert (m["n_texts"], m["n_videos"]) == (3, 4)  # the summary's title names the split's size from these
    gt_path = save_scores(tmp_path / "g.npz", np.zeros((4, 4), np.float32), list("abcd"), list("wxyz"),
                          gt=np.arange(4))
    assert summary.chance_metrics(gt_path)["t2v/R@10"] == pytest.approx(100.0)  # k clipped to G
    assert summary.chance_metrics(gt_path)["t2v/R@1"] == pytest.approx(25.0)


def test_chance_metrics_names_a_file_without_relevance(tmp_path):
    np.savez(tmp_path / "x.npz", scores=np.zeros((2, 2), np.float32))
    with pytest.raises(ValueError, match="x.npz: neither 'gt' nor 'relevance'"):
        summary.chance_metrics(tmp_path / "x.npz")


# ---------------------------------------------------------------------------------------------------------------
# tables, RESULT line, comparison report
# ---------------------------------------------------------------------------------------------------------------
def test_markdown_table_and_result_line():
    cols = (("t2v R@1", "t2v/R@1"), ("t2v MdR", "t2v/MdR"), ("skew", "hub/t2v/k10/skew"))
    text = summary.markdown_table([("a", {"t2v/R@1": 51.234, "t2v/MdR": 1.0, "hub/t2v/k10/skew": 0.51234}),
                                   ("b", {"t2v/R@1": float("nan")})], cols)
    assert text.splitlines() == [
        "| model | t2v R@1 | t2v MdR | skew |",
        "|---|---|---|---|",
        "| a | 51.23 | 1.0 | 0.512 |",
        "| b | - | - | - |",
    ]
    line = summary.result_line({"t2v/R@1": 48.0}, {"t2v/R@1": 2.5}, {"t2v/R@1": 1.0})
    assert line == "RESULT demo_t2v_r1=48.00 untrained_t2v_r1=2.50 chance_r1=1.00"


def _write_eval_dir(folder: Path, systems: dict[str, dict[str, float]], metrics: dict[str, float]) -> None:
    folder.mkdir(parents=True)
    (folder / "comparison.json").write_text(json.dumps(systems))
    (folder / "metrics.json").write_text(json.dumps(metrics))


def test_compare_rows_and_report(tmp_path):
    nr = {"test/t2v/R@1": 40.0, "test/v2t/R@1": 41.0, "test/hub/t2v/k10/skew": 0.3}
    nce = {"test/t2v/R@1": 30.0, "test/v2t/R@1": 29.0, "test/hub/t2v/k10/skew": 0.9}
    _write_eval_dir(tmp_path / "neighborretr",
                    {"neighborretr": nr, "neighborretr+qbnorm": {"test/t2v/R@1": 42.0}, "infonce": nce},
                    {"test/posthoc/qbnorm/param/beta": 20.0, "test/posthoc/qbnorm/t2v/dR@1": 2.0,
                     "test/posthoc/qbnorm/t2v/dR@1_p": 0.25, "test/compare/infonce/t2v/dR@1": -10.0,
                     "test/compare/infonce/t2v/dR@1_p": 0.01})
    _write_eval_dir(tmp_path / "infonce",
                    {"infonce": nce, "infonce+qbnorm": {"test/t2v/R@1": 33.0}, "neighborretr": nr},
                    {"test/posthoc/qbnorm/param/beta": 10.0, "test/posthoc/qbnorm/t2v/dR@1": 3.0,
                     "test/posthoc/qbnorm/t2v/dR@1_p": 0.04})
    rows, notes = summary.compare_rows(tmp_path)
    assert [label for label, _ in rows] == ["InfoNCE (meanP)", "InfoNCE (meanP) + QB-Norm", "NeighborRetr",
                                            "NeighborRetr + QB-Norm"]
    assert [m.get("t2v/R@1") for _, m in rows] == [30.0, 33.0, 40.0, 42.0]
    assert "v2t/R@1" not in rows[1][1]
    assert any("beta = 10.0" in n and "+3.00" in n for n in notes)
    assert any(n.startswith("InfoNCE - NeighborRetr t2v R@1 = -10.00") for n in notes)
    table = summary.markdown_table(rows, summary.COMPARE_COLUMNS)
    path = summary.write_compare_report(tmp_path, table, notes)
    text = path.read_text()
    assert "| NeighborRetr + QB-Norm | 42.00 |" in text and "neighborretr/report.md" in text


def test_compare_rows_names_missing_system(tmp_path):
    _write_eval_dir(tmp_path / "infonce", {"infonce": {}}, {})
    _write_eval_dir(tmp_path / "neighborretr", {"neighborretr": {}}, {})
    with pytest.raises(ValueError, match=r"infonce/comparison.json: expected systems 'infonce' and 'infonce\+qbnorm'"):
        summary.compare_rows(tmp_path)


def test_summary_main_prints_result_last(tmp_path, capsys):
    from eval.scores_io import save_scores

    scores = save_scores(tmp_path / "u.npz", np.zeros((50, 50), np.float32), [f"q{i}" for i in range(50)],
                         [f"g{i}" for i in range(50)], gt=np.arange(50))
    report = tmp_path / "report"
    report.mkdir()
    (report / "comparison.json").write_text(json.dumps({"neighborretr": {"test/t2v/R@1": 48.0},
                                                        "untrained": {"test/t2v/R@1": 2.0}}))
    assert summary.main(["--report", str(report), "--untrained-scores", str(scores)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1] == "RESULT demo_t2v_r1=48.00 untrained_t2v_r1=2.00 chance_r1=2.00"
    assert any(line.startswith("| chance | 2.00 | 10.00 | 20.00 | 25.5 |") for line in out)


def test_summary_main_reports_missing_report(tmp_path, capsys):
    assert summary.main(["--report", str(tmp_path / "nope"), "--untrained-scores", "x.npz"]) == 2
    assert "nope/comparison.json: not found" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------------
# the pooled similarity the baseline is scored with (training.validate)
# ---------------------------------------------------------------------------------------------------------------
def test_pooled_similarity_is_cosine_of_eot_and_mean_frame():
    from training.validate import _pooled_scores

    g = torch.Generator().manual_seed(0)
    t = torch.randn(3, 5, 4, generator=g)
    v = torch.randn(2, 6, 4, generator=g)
    mt = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0]])
    mv = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 0, 0, 0, 0]])
    got = _pooled_scores(t, mt, v, mv)
    eot = [2, 4, 1]
    vm = [v[0].mean(0), v[1, :2].mean(0)]
    for a in range(3):
        for b in range(2):
            ref = float(torch.nn.functional.cosine_similarity(t[a, eot[a]], vm[b], dim=0))
            assert float(got[a, b]) == pytest.approx(ref, abs=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# init_checkpoint: the trainer's initial weights, readable by training.score
# ---------------------------------------------------------------------------------------------------------------
def test_init_checkpoint_equals_trainer_init_and_loads(tmp_path):
    from accelerate.utils import set_seed

    from training.config import load_config
    from training.model import NeighborRetrModel
    from training.score import load_model
    from training.train import resolve_config

    init = _load("init_checkpoint")
    overrides = ["data.frame_size=32", "run.seed=3"]
    out = init.write_init_checkpoint(str(REPO / "configs" / "demo.yaml"), str(tmp_path / "untrained"), overrides)
    cfg = resolve_config(load_config(str(REPO / "configs" / "demo.yaml"), overrides))
    set_seed(3)
    ref = NeighborRetrModel(cfg.model).state_dict()
    loaded = load_model(load_config(str(Path(out) / "config.yaml")), out).state_dict()
    assert loaded.keys() == ref.keys()
    assert all(torch.equal(loaded[k], ref[k]) for k in ref)
    assert cfg.model.image_size == 32 and not (tmp_path / "untrained.tmp").exists()


# ---------------------------------------------------------------------------------------------------------------
# demo.sh
# ---------------------------------------------------------------------------------------------------------------
def test_demo_sh_rejects_unknown_argument_and_has_valid_syntax():
    subprocess.run(["bash", "-n", str(REPO / "scripts" / "demo.sh")], check=True)
    proc = subprocess.run(["bash", str(REPO / "scripts" / "demo.sh"), "--fast"], capture_output=True, text=True)
    assert proc.returncode == 2 and "unknown argument --fast" in proc.stderr
    help_ = subprocess.run(["bash", str(REPO / "scripts" / "demo.sh"), "--help"], capture_output=True, text=True)
    assert help_.returncode == 0 and "--compare" in help_.stdout



def test_compare_report_has_dbnorm_rows_and_the_seed_table(tmp_path):
    nr = {"test/t2v/R@1": 40.0, "test/v2t/R@1": 41.0}
    nce = {"test/t2v/R@1": 30.0, "test/v2t/R@1": 29.0}
    _write_eval_dir(tmp_path / "neighborretr", {"neighborretr": nr, "neighborretr+qbnorm": {"test/t2v/R@1": 42.0},
                                                "neighborretr+dbnorm": {"test/t2v/R@1": 43.0}, "infonce": nce}, {})
    _write_eval_dir(tmp_path / "infonce", {"infonce": nce, "infonce+qbnorm": {"test/t2v/R@1": 33.0},
                                           "neighborretr": nr}, {})
    rows, notes = summary.compare_rows(tmp_path)
    assert [label for label, _ in rows] == ["InfoNCE (meanP)", "InfoNCE (meanP) + QB-Norm", "NeighborRetr",
                                            "NeighborRetr + QB-Norm", "NeighborRetr + DBNorm"]
    (tmp_path / "seeds").mkdir()
    (tmp_path / "seeds" / "seeds.md").write_text("# Seeds\n\n| system | direction |\n|---|---|\n| infonce | t2v |\n")
    text = summary.write_compare_report(tmp_path, summary.markdown_table(rows, summary.COMPARE_COLUMNS), notes).read_text()
    assert "## Seeds (mean +- sd, paired tests vs InfoNCE)" in text and "| infonce | t2v |" in text
    assert "| NeighborRetr + DBNorm | 43.00 |" in text


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
