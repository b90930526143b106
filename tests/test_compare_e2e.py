"""`make compare` end to end, tiny: scripts/demo.sh --compare on a small hard synthetic set (2 seeds, 1 epoch,
1 training process) must produce the seed table, the overlaid figures and the comparison report, and the seed
table's R@1 means must equal a brute-force R@1 of the per-seed test scores files."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from train_fixtures import trainer_env

REPO = Path(__file__).resolve().parents[1]
SYSTEMS = ("infonce", "neighborretr", "infonce+qbnorm", "neighborretr+qbnorm", "infonce+dbnorm",
           "neighborretr+dbnorm")
N_TEST = 40


def _r1_brute(path: Path) -> tuple[float, float]:
    """(t2v, v2t) R@1 in % of a scores file, expected under random tie-breaking: a query scores
    (# relevant items tied at its maximum) / (# items tied at its maximum)."""
    with np.load(path, allow_pickle=False) as z:
        s = z["scores"].astype(np.float64)
        if "relevance" in z.files:
            rel = z["relevance"].astype(bool)
        else:
            rel = np.zeros(s.shape, bool)
            rel[np.arange(s.shape[0]), z["gt"]] = True

    def r1(m: np.ndarray, r: np.ndarray) -> float:
        top = m == m.max(axis=1, keepdims=True)
        return float(100.0 * np.mean((top & r).sum(1) / top.sum(1)))

    return r1(s, rel), r1(s.T, rel.T)


@pytest.mark.slow
def test_make_compare_tiny_end_to_end(tmp_path):
    env = {**trainer_env(), "DEMO_OUT": str(tmp_path), "DEMO_EPOCHS": "1", "DEMO_PROCS": "1", "COMPARE_SEEDS": "2",
           "COMPARE_TRAIN": "80", "COMPARE_VAL": "24", "COMPARE_TEST": str(N_TEST)}
    proc = subprocess.run(["bash", "scripts/demo.sh", "--compare"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "RESULT demo_t2v_r1=" in proc.stdout
    out = tmp_path / "compare_hard"
    seeds = json.loads((out / "compare" / "seeds" / "seeds.json").read_text())
    assert sorted(seeds) == sorted(SYSTEMS)
    rows = [json.loads(line) for line in (out / "synth" / "annotations.jsonl").read_text().splitlines()]
    n_captions = sum(r["split"] == "test" for r in rows)
    assert n_captions > N_TEST  # hard mode: generic and specific captions
    for name in SYSTEMS:
        assert seeds[name]["t2v"]["n_seeds"] == 2 and seeds[name]["t2v"]["n_queries"] == n_captions
    assert seeds["neighborretr"]["v2t"]["n_queries"] == N_TEST
    # the table's means come from the right per-seed files: brute-force R@1 of each seed's test scores
    for sys_name in ("infonce", "neighborretr"):
        per_seed = [_r1_brute(out / "scores" / f"{sys_name}{sfx}_test.npz") for sfx in ("", "_s1")]
        for d, i in (("t2v", 0), ("v2t", 1)):
            assert seeds[sys_name][d]["mean"] == pytest.approx(np.mean([r[i] for r in per_seed]), abs=1e-9)
    nr, nce = seeds["neighborretr"]["t2v"], seeds["infonce"]["t2v"]
    assert nr["delta"] == pytest.approx(nr["mean"] - nce["mean"], abs=1e-9)  # paired: same queries, R@1 is a mean
    assert nr["ci_lo"] <= nr["delta"] <= nr["ci_hi"] and nr["mde80"] > 0
    # overlaid k-occurrence figures (both directions) and the report with the seed table
    for d in ("t2v", "v2t"):
        kocc = json.loads((out / "compare" / "neighborretr" / f"kocc_{d}_k10.json").read_text())
        assert {"neighborretr", "infonce"} <= set(kocc["systems"])
        png = out / "compare" / "neighborretr" / f"kocc_{d}_k10.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "compare" / "neighborretr" / "lorenz_t2v_k10.png").stat().st_size > 0
    report = (out / "compare" / "report.md").read_text()
    assert "## Seeds (mean +- sd, paired tests vs InfoNCE)" in report
    assert all(f"| {name} | t2v |" in report for name in SYSTEMS)
    assert os.path.isfile(out / "index" / "manifest.json")
