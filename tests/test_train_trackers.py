"""Trackers through Accelerate's ``log_with`` (``run.trackers``): TensorBoard, W&B (offline) and MLflow (a file
store in the run folder) receive the logged losses and validation metrics; the config rules of
``training.trackers``."""

from __future__ import annotations

import glob
import json
import os
import struct
from types import SimpleNamespace

import pytest
from train_fixtures import run_cli, tiny_config_text, write_dataset

from training.logging_utils import read_metrics
from training.trackers import mlflow_metric_name, resolve_trackers, tracker_errors, tracker_scalars


def _run(trackers, tensorboard=None):
    return SimpleNamespace(trackers=trackers, tensorboard=tensorboard)


def test_resolve_trackers_and_the_older_tensorboard_switch():
    assert resolve_trackers(_run(["tensorboard"])) == ["tensorboard"]
    assert resolve_trackers(_run(["tensorboard", "mlflow"], tensorboard=False)) == ["mlflow"]
    assert resolve_trackers(_run(["wandb"], tensorboard=True)) == ["tensorboard", "wandb"]
    assert resolve_trackers(_run(["MLflow", "mlflow"])) == ["mlflow"]
    assert resolve_trackers(_run([], tensorboard=None)) == []


def test_tracker_errors_name_unknown_and_missing_packages(monkeypatch):
    assert tracker_errors(_run(["tensorboard"])) == []
    assert tracker_errors(_run(["comet"])) == [
        "run.trackers: 'comet' not in ['tensorboard', 'wandb', 'mlflow']"
    ]
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "mlflow" else real(n, *a))
    assert tracker_errors(_run(["mlflow"])) == [
        "run.trackers: mlflow needs the mlflow-skinny package (pip install mlflow-skinny), or remove it from "
        "run.trackers"
    ]


def test_check_refuses_an_unknown_tracker(tmp_path):
    root = write_dataset(str(tmp_path / "data"), n_train=16, n_val=8, n_test=8)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(tiny_config_text(root, str(tmp_path / "run")))
    # a tracker name Accelerate knows but this trainer does not offer: refused, not silently dropped
    proc = run_cli(["training.train", "--config", str(cfg), "--check", "run.trackers=[aim]"], check=False)
    assert proc.returncode == 2
    assert "run.trackers: 'aim' not in ['tensorboard', 'wandb', 'mlflow']" in proc.stderr


def test_tracker_scalars_and_mlflow_names():
    rec = {
        "event": "val",
        "step": 3,
        "epoch": 0,
        "val/t2v/R@1": 12.5,
        "val_seconds": 0.5,
        "similarity": "local",
    }
    assert tracker_scalars(rec) == {"val/t2v/R@1": 12.5, "val/val_seconds": 0.5}
    train = {"event": "train", "step": 1, "loss/total": 1.5, "lr": 1e-4, "grad_norm": None, "skipped": {}}
    assert tracker_scalars({**train, "nan": float("nan"), "flag": True}) == {
        "loss/total": 1.5,
        "train/lr": 1e-4,
    }
    assert mlflow_metric_name("val/mean_R@1") == "val/mean_R_at_1"
    assert mlflow_metric_name("val/hub/t2v/k5/skew") == "val/hub/t2v/k5/skew"


# ------------------------------------------------------------------------------------------------------------
# one run with all three trackers
# ------------------------------------------------------------------------------------------------------------
def _wandb_history(path: str) -> list[dict]:
    """The ``history`` records of an offline W&B run file (``run-ID.wandb``: LevelDB-style log blocks of 32 KiB,
    a 7-byte ``:W&B`` header, each record ``crc32 u32, length u16, type u8`` + a ``wandb.proto`` Record)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = open(path, "rb").read()
    assert data[:4] == b":W&B"
    pos, buf, out = 7, b"", []
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        if left < 7:
            pos += left
            continue
        _crc, n, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if n == 0 and kind == 0:  # zero padding at a block's end
            pos += left
            continue
        buf += data[pos + 7 : pos + 7 + n]
        pos += 7 + n
        if kind in (1, 4):  # FULL or LAST
            rec = pb.Record()
            rec.ParseFromString(buf)
            buf = b""
            if rec.WhichOneof("record_type") == "history":
                out.append(
                    {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rec.history.item}
                )
    return out


def _mlflow_metric(run_dir: str, name: str) -> dict[int, float]:
    """``{step: value}`` of one metric in an MLflow file store (``metrics/<name>`` lines: ``time value step``)."""
    (path,) = glob.glob(os.path.join(run_dir, "mlruns", "*", "*", "metrics", *name.split("/")))
    rows = [ln.split() for ln in open(path).read().splitlines() if ln.strip()]
    return {int(r[2]): float(r[1]) for r in rows}


@pytest.mark.slow
def test_losses_arrive_in_tensorboard_wandb_and_mlflow(tmp_path):
    pytest.importorskip("wandb")
    pytest.importorskip("mlflow")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    root = write_dataset(str(tmp_path / "data"), n_train=24, n_val=8, n_test=8)
    out = tmp_path / "run"
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(tiny_config_text(root, str(out)))
    home = str(tmp_path / "home")
    env = {
        "WANDB_MODE": "offline",
        "WANDB_CONFIG_DIR": home,
        "WANDB_CACHE_DIR": home,
        "WANDB_DATA_DIR": home,
        "MLFLOW_TRACKING_URI": "",  # unset: the trainer's file store {run.out}/mlruns
        "MLFLOW_ALLOW_FILE_STORE": "",
    }
    proc = run_cli(
        [
            "training.train",
            "--config",
            str(cfg),
            "run.trackers=[tensorboard,wandb,mlflow]",
            "run.project=nr-test",
            "optim.max_steps=3",
            "run.log_every_steps=1",
        ],
        env=env,
    )
    assert f"logging to the file store {out / 'mlruns'}" in proc.stderr
    train = read_metrics(str(out / "metrics.jsonl"), "train")
    (val,) = read_metrics(str(out / "metrics.jsonl"), "val")
    losses = {r["step"]: r["loss/total"] for r in train}
    assert sorted(losses) == [1, 2, 3]
    # MLflow: file store in the run folder, names with '@' rewritten
    assert _mlflow_metric(str(out), "loss/total") == pytest.approx(losses)
    assert _mlflow_metric(str(out), "train/lr") == pytest.approx({r["step"]: r["lr"] for r in train})
    assert _mlflow_metric(str(out), "val/mean_R_at_1") == pytest.approx({3: val["val/mean_R@1"]})
    # W&B: the offline run under {run.out}/wandb
    (wandb_file,) = glob.glob(str(out / "wandb" / "offline-run-*" / "run-*.wandb"))
    history = _wandb_history(wandb_file)
    got = {h["_step"]: h["loss/total"] for h in history if "loss/total" in h}
    assert got == pytest.approx(losses)
    assert [h["val/mean_R@1"] for h in history if "val/mean_R@1" in h] == pytest.approx([val["val/mean_R@1"]])
    # TensorBoard: {run.out}/tb as before
    acc = EventAccumulator(str(out / "tb"))
    acc.Reload()
    assert {e.step: e.value for e in acc.Scalars("loss/total")} == pytest.approx(losses, rel=1e-6)
