"""Kill -9 a 2-process CPU run mid-epoch right after a checkpoint, ``--resume latest``, and compare with an
uninterrupted run of the same seed: the same per-step losses (1e-5), the same batches, one epoch's samples."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from train_fixtures import REPO, _free_port, run_cli, tiny_config_text, trainer_env, write_dataset

from training.logging_utils import read_metrics

ARGS = ["optim.epochs=2", "run.save_every_steps=4", "run.keep_last=3", "eval.every_steps=0"]


def _launch_cmd(cfg: str, out: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(_free_port()),
        "-m",
        "training.train",
        "--config",
        cfg,
        f"run.out={out}",
        *ARGS,
    ]


def _descendants(pid: int) -> list[int]:
    """All descendant process ids of ``pid`` (from /proc), children first."""
    parent: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                parent[int(entry)] = int(fields[1])
            except (OSError, IndexError, ValueError):
                continue
    out, frontier = [], [pid]
    while frontier:
        kids = [p for p, pp in parent.items() if pp in frontier]
        out.extend(kids)
        frontier = kids
    return out


def _kill9_tree(pid: int) -> None:
    for p in [*_descendants(pid), pid]:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.mark.slow
def test_kill_and_resume_matches_uninterrupted(tmp_path):
    root = write_dataset(str(tmp_path / "data"))
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(tiny_config_text(root, str(tmp_path / "unused")))
    ref, killed = str(tmp_path / "ref"), str(tmp_path / "killed")

    run_cli(["training.train", "--config", str(cfg), f"run.out={ref}", *ARGS], nproc=2)

    env = trainer_env()
    first_ckpt = os.path.join(killed, "checkpoints", "step-00000004")
    with open(tmp_path / "killed.log", "w") as log:
        proc = subprocess.Popen(
            _launch_cmd(str(cfg), killed),
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            deadline = time.time() + 240
            while not os.path.isdir(first_ckpt):
                assert proc.poll() is None, (
                    f"run ended before its first checkpoint: {(tmp_path / 'killed.log').read_text()[-3000:]}"
                )
                assert time.time() < deadline, "no checkpoint within 240 s"
                time.sleep(0.02)
            _kill9_tree(
                proc.pid
            )  # kill -9 both ranks and the launcher (torchrun gives ranks their own session)
        finally:
            if proc.poll() is None:
                _kill9_tree(proc.pid)
            proc.wait(30)
    done = sorted(d for d in os.listdir(os.path.join(killed, "checkpoints")) if d.startswith("step-"))
    assert "step-00000012" not in done  # it really stopped mid-run
    complete = [d for d in done if not d.endswith(".tmp")]
    assert complete == ["step-00000004"], (
        done
    )  # killed mid-epoch 0 (6 batches per epoch), after the checkpoint

    resumed = run_cli(
        ["training.train", "--config", str(cfg), f"run.out={killed}", *ARGS, "--resume", "latest"], nproc=2
    )
    assert "resuming at epoch 0, step 4 (4 batches into the epoch)" in resumed.stderr

    a = read_metrics(os.path.join(ref, "metrics.jsonl"), "train")
    b = read_metrics(os.path.join(killed, "metrics.jsonl"), "train")
    assert [r["step"] for r in a] == list(range(1, 13))
    assert [r["step"] for r in b] == list(
        range(1, 13)
    )  # steps logged after the checkpoint were dropped, redone
    for ra, rb in zip(a, b):
        assert ra["sample_index"] == rb["sample_index"], ra["step"]  # exactly the same next batches
        for key in ("loss/total", "loss/wti", "loss/nbi", "loss/opt", "loss/kl", "lr"):
            assert rb[key] == pytest.approx(ra[key], abs=1e-5), (ra["step"], key)
    epoch0 = [i for r in b if r["epoch"] == 0 for i in r["sample_index"]]
    assert sorted(set(epoch0)) == list(range(48)) and len(epoch0) == 48  # one epoch, each sample once
    va = read_metrics(os.path.join(ref, "metrics.jsonl"), "val")
    vb = read_metrics(os.path.join(killed, "metrics.jsonl"), "val")
    assert [r["step"] for r in vb] == [6, 12]
    np.testing.assert_allclose([r["val/mean_R@1"] for r in vb], [r["val/mean_R@1"] for r in va], atol=1e-6)
