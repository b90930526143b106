"""Training and scoring straight from ``s3://`` shards on a real S3 HTTP server (moto_server,
``s3_bucket``)."""

from __future__ import annotations

import os

import numpy as np
import pytest
from train_fixtures import run_cli, tiny_config_text, write_dataset

from training.config import ConfigError, config_from_yaml_text, validate_config
from training.logging_utils import read_metrics


def test_missing_s3_shards_are_named(s3_bucket):
    cfg = config_from_yaml_text(tiny_config_text(f"{s3_bucket}/nothing-here", "/tmp/unused"))
    with pytest.raises(ConfigError) as err:
        validate_config(cfg)
    split = f"{s3_bucket}/nothing-here/train"
    assert f"data.train: no shards at {split} (missing {split}/sizes.json" in str(err.value)


@pytest.mark.slow
def test_train_and_score_from_s3(s3_bucket, tmp_path):
    """2 processes reading S3 in loader workers; the InfoNCE baseline (frozen unused modules, pooled)."""
    root = write_dataset(f"{s3_bucket}/tiny", n_train=24, n_val=8, n_test=8, shard_size=8)
    out = str(tmp_path / "run")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(tiny_config_text(root, out))
    # workers read S3 in their own processes (s3fs is not fork-safe: the reader builds it inside each worker)
    args = ["data.num_workers=1", "data.eval_num_workers=1", "run.save_every_steps=2", "loss.kind=infonce"]
    run_cli(["training.train", "--config", str(cfg), *args, "bank.enabled=false"], nproc=2)
    train = read_metrics(os.path.join(out, "metrics.jsonl"), "train")
    assert [r["step"] for r in train] == [1, 2, 3]  # 24 videos / global batch 8
    assert all(set(r) >= {"loss/infonce", "loss/total"} and r["bank_size"] == 0 for r in train)
    assert {i for r in train for i in r["sample_index"]} == set(range(24))
    assert all(v == 0 for r in train for k, v in r["skipped"].items() if k != "s3_retries")  # nothing skipped
    val = read_metrics(os.path.join(out, "metrics.jsonl"), "val")
    assert [r["step"] for r in val] == [3] and "val/t2v/R@1" in val[0]
    assert val[0]["similarity"] == "pooled"  # eval.similarity=auto scores the baseline with its own features
    assert os.path.isdir(os.path.join(out, "best"))
    scores = tmp_path / "s.npz"
    proc = run_cli(["training.score", "--run", out, "--split", "test", "--out", str(scores)], nproc=1)
    assert "16 texts x 8 videos (relevance, caption mode all, pooled similarity)" in proc.stdout
    z = np.load(scores)
    assert z["scores"].shape == (16, 8) and z["relevance"].shape == (16, 8)
    assert np.all(np.abs(z["scores"]) <= 1 + 1e-5)  # cosines
