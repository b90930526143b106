"""Elastic resume end to end: a 2-process CPU run killed (-9) after its mid-epoch-0 checkpoint and resumed with ONE
process logs, for every remaining step of both epochs, the sample ids and the losses of the uninterrupted
2-process run; so does a 1-process resume from the uninterrupted run's epoch-end checkpoint (the loader state
there holds only the run's canonical layout). See docs/cluster.md, "Elastic resume"."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file
from test_train_resume import _kill9_tree
from train_fixtures import REPO, _free_port, run_cli, tiny_config_text, trainer_env, write_dataset

from training.logging_utils import read_metrics

# 48 videos / global batch 8 = 6 steps per epoch; checkpoints at 4 (epoch 0), 6 (epoch end), 8, 12
ARGS = [
    "optim.epochs=2",
    "run.save_every_steps=4",
    "run.keep_last=4",
    "eval.every_steps=0",
    "eval.at_epoch_end=false",
]
LOSSES = ("loss/total", "loss/wti", "loss/nbi", "loss/opt", "loss/kl", "lr")
TIMEOUT = 420  # per trainer run (2 busy CPU cores)


def _env() -> dict[str, str]:
    return trainer_env()


def _train_until_checkpoint(cfg: str, out: str, step: int, log_path: str) -> None:
    """Launch a 2-process run and kill -9 it (launcher and ranks) as soon as checkpoint ``step`` is complete."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
           str(_free_port()), "-m", "training.train", "--config", cfg, f"run.out={out}", *ARGS]  # fmt: skip
    ckpt = os.path.join(out, "checkpoints", f"step-{step:08d}")
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip
        try:
            deadline = time.time() + TIMEOUT
            while not os.path.isdir(ckpt):
                assert proc.poll() is None, (
                    f"run ended before checkpoint {step}: {open(log_path).read()[-3000:]}"
                )
                assert time.time() < deadline, f"no checkpoint {step} within {TIMEOUT} s"
                time.sleep(0.02)
            _kill9_tree(proc.pid)
        finally:
            if proc.poll() is None:
                _kill9_tree(proc.pid)
            proc.wait(30)


def _assert_same_steps(ref: list[dict], got: list[dict], steps: range) -> None:
    by_step = {r["step"]: r for r in got}
    assert sorted(by_step) == list(steps)
    for ra in ref:
        if ra["step"] not in by_step:
            continue
        rb = by_step[ra["step"]]
        assert rb["epoch"] == ra["epoch"] and rb["sample_index"] == ra["sample_index"], ra["step"]
        for key in LOSSES:
            assert rb[key] == pytest.approx(ra[key], rel=1e-4, abs=1e-6), (ra["step"], key, ra[key], rb[key])
        assert rb["bank_size"] == ra["bank_size"], ra["step"]


def _assert_same_bank(ref_run: str, run: str, step: int) -> None:
    """The memory bank saved at ``step`` (mid-epoch 1: pre-filled at the epoch start by the bank loader, then
    updated by every step) holds the same samples, in the same order, with the same features."""
    name = os.path.join("checkpoints", f"step-{step:08d}", "bank.safetensors")
    a, b = load_file(os.path.join(ref_run, name)), load_file(os.path.join(run, name))
    assert set(a) == set(b) and len(a["ids"]) == 16
    for key in ("ids", "text_mask", "video_mask"):
        assert torch.equal(a[key], b[key]), key
    for key in ("text_tokens", "video_tokens"):
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_two_to_one_process_resume_matches_uninterrupted_losses(tmp_path):
    root = write_dataset(str(tmp_path / "data"))
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(tiny_config_text(root, str(tmp_path / "unused")))
    ref_dir, cut_dir = str(tmp_path / "ref"), str(tmp_path / "cut")

    run_cli(["training.train", "--config", str(cfg), f"run.out={ref_dir}", *ARGS], nproc=2, timeout=TIMEOUT)
    ref = read_metrics(os.path.join(ref_dir, "metrics.jsonl"), "train")
    assert [r["step"] for r in ref] == list(range(1, 13))

    # 2 processes, killed right after the checkpoint at step 4 (epoch 0, 4 of 6 batches); resumed by 1 process
    _train_until_checkpoint(str(cfg), cut_dir, 4, str(tmp_path / "cut.log"))
    done = [d for d in os.listdir(os.path.join(cut_dir, "checkpoints")) if not d.endswith(".tmp")]
    assert done == ["step-00000004"], done
    resumed = run_cli(
        ["training.train", "--config", str(cfg), f"run.out={cut_dir}", *ARGS, "--resume", "latest"],
        nproc=1,
        timeout=TIMEOUT,
    )
    assert "written by 2 processes, resumed by 1 (elastic resume)" in resumed.stderr
    assert "resuming at epoch 0, step 4 (4 batches into the epoch)" in resumed.stderr
    got = read_metrics(os.path.join(cut_dir, "metrics.jsonl"), "train")
    _assert_same_steps(ref, got, range(1, 13))  # 1-4 by the 2-process run, 5-12 (both epochs) by 1 process
    for epoch in (0, 1):  # every training video exactly once per epoch
        ids = sorted(i for r in got if r["epoch"] == epoch for i in r["sample_index"])
        assert ids == list(range(48)), epoch
    _assert_same_bank(ref_dir, cut_dir, 8)

    # the uninterrupted run's epoch-end checkpoint (2 processes), resumed by 1 process: epoch 1 as in the run
    edge_dir = str(tmp_path / "edge")
    os.makedirs(os.path.join(edge_dir, "checkpoints"))
    edge_ckpt = os.path.join(edge_dir, "checkpoints", "step-00000006")
    shutil.copytree(os.path.join(ref_dir, "checkpoints", "step-00000006"), edge_ckpt)
    resumed = run_cli(
        ["training.train", "--config", str(cfg), f"run.out={edge_dir}", *ARGS, "--resume", edge_ckpt],
        nproc=1,
        timeout=TIMEOUT,
    )
    assert "resuming at epoch 1, step 6 (0 batches into the epoch)" in resumed.stderr
    _assert_same_steps(ref, read_metrics(os.path.join(edge_dir, "metrics.jsonl"), "train"), range(7, 13))
    _assert_same_bank(ref_dir, edge_dir, 8)
