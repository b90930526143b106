"""What an operator reads: a tqdm bar with the run's ETA on a terminal (a real pty), plain periodic lines without
carriage returns in a log file, and the end-of-run summary (``training.console``)."""

from __future__ import annotations

import fcntl
import os
import re
import select
import struct
import subprocess
import sys
import termios
import time

from train_fixtures import REPO, run_cli, tiny_config_text, trainer_env, write_dataset


def _run_in_pty(cmd: list[str], env: dict[str, str], timeout: float = 300) -> tuple[int, str]:
    """Run ``cmd`` with stdin/stdout/stderr on a new pseudo-terminal (120 columns); returns (rc, output)."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdin=slave, stdout=slave, stderr=slave, close_fds=True)
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.time() + timeout
    try:
        while time.time() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: every writer of the pty has closed it
                break
            if not data:
                break
            chunks.append(data)
        rc = proc.wait(timeout=max(1.0, deadline - time.time()))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    return rc, b"".join(chunks).decode("utf-8", errors="replace")


def test_tty_run_shows_a_tqdm_bar_and_the_summary(tmp_path):
    root = write_dataset(str(tmp_path / "data"), n_train=24, n_val=8, n_test=8)
    out = tmp_path / "run"
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(tiny_config_text(root, str(out)))
    env = trainer_env()
    cmd = [
        sys.executable,
        "-m",
        "training.train",
        "--config",
        str(cfg),
        "optim.max_steps=3",
        "run.progress=true",
    ]
    rc, text = _run_in_pty(cmd, env)
    assert rc == 0, text[-3000:]
    # the bar covers the whole run (3 batches: max_steps), redrawn in place with carriage returns
    assert re.search(r"train:\s+\d+%\|.*\| 3/3 \[", text), text[-3000:]
    assert "loss=" in text and "sps=" in text
    assert re.search(r"\r(?!\n)", text)  # a bare carriage return: tqdm redraws its line
    assert not re.search(r"step \d+/3 epoch", text)  # no plain per-step lines on a terminal
    assert not re.search(r"\]\d{4}-\d\d-\d\d ", text)  # a log line during the bar starts on a line of its own
    assert "validation at step 3" in text
    # the end-of-run summary, after validation at the stop
    assert "training finished: 3 steps, 0 epochs, wall time 0:0" in text
    assert re.search(r"best {11}val/mean_R@1 = [0-9.]+ at step 3 \(" + re.escape(str(out / "best")), text)
    assert f"checkpoint     {out / 'checkpoints' / 'step-00000003'}" in text
    assert f"metrics        {out / 'metrics.jsonl'}" in text
    assert f"log            {out / 'train.log'} (state: {out / 'status.json'})" in text
    assert "trackers       none" in text
    scores = out / "test_scores.npz"
    assert (
        f"next           python -m training.score --run {out} --split test --out {scores} --metrics" in text
    )
    assert f"then           python -m eval {scores} --out {out / 'eval'}" in text
    # the same summary lands in train.log, which never gets a carriage return
    log = (out / "train.log").read_text()
    assert "training finished: 3 steps" in log and "\r" not in log


def test_non_tty_run_writes_periodic_lines_without_carriage_returns(tmp_path):
    root = write_dataset(str(tmp_path / "data"), n_train=32, n_val=8, n_test=8)
    out = tmp_path / "run"
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(tiny_config_text(root, str(out)))
    proc = run_cli(
        [
            "training.train",
            "--config",
            str(cfg),
            "eval.at_epoch_end=false",
            "run.progress=true",  # asked for, but stderr is a file: plain lines instead of the bar
            "run.log_every_steps=2",
            "run.trackers=[tensorboard]",
        ]
    )
    assert "\r" not in proc.stderr and "\r" not in proc.stdout
    lines = [ln for ln in proc.stderr.splitlines() if re.search(r"\] training\.train: step \d+/4 ", ln)]
    pattern = (
        r"step (\d+)/4 epoch 0 loss [0-9.]+ lr [0-9.e-]+ [0-9.]+ samples/s \([0-9.]+ per process\) "
        r"data wait \d+% ETA \d+:\d\d:\d\d$"
    )
    assert [int(re.search(pattern, ln).group(1)) for ln in lines] == [2, 4], lines
    assert f"trackers       tensorboard {out / 'tb'}" in proc.stderr
