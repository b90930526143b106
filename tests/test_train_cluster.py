"""Cluster behaviour of the trainer with real processes: no pickle read at resume (crafted code-executing
files under every checkpoint file name), ``--resume auto`` fresh start / fallback over an incomplete newest
checkpoint / a cut-off metrics line, SIGTERM to one rank of a 2-process run, the run-folder lock, and ranks
that exit when ``accelerate launch`` is killed with -9."""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
from test_train_resume import _descendants, _kill9_tree, _launch_cmd
from train_fixtures import REPO, run_cli, tiny_config_text, trainer_env, write_dataset

from training.checkpoint import MANIFEST, CheckpointError, list_checkpoints, load_checkpoint, resolve_resume
from training.logging_utils import read_metrics
from training.run_lock import LOCK_FILE, RunLock, RunLockedError, _pid_alive, stale_reason


class _Exploit:
    """Unpickling this runs ``exec``, which writes the marker file (what a crafted checkpoint would do)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def _env() -> dict[str, str]:
    return trainer_env()


@pytest.fixture(scope="module")
def one_proc_run(tmp_path_factory):
    """A 1-process run of 4 steps with checkpoints at steps 2 and 4."""
    base = tmp_path_factory.mktemp("cluster")
    root = write_dataset(str(base / "data"))
    cfg = base / "cfg.yaml"
    cfg.write_text(tiny_config_text(root, str(base / "unused")))
    out = str(base / "run")
    args = ["optim.max_steps=4", "run.save_every_steps=2", "run.keep_last=5"]
    proc = run_cli(["training.train", "--config", str(cfg), f"run.out={out}", "--resume", "auto", *args])
    return {"base": base, "cfg": str(cfg), "out": out, "args": args, "proc": proc}


def test_resume_auto_without_checkpoint_starts_fresh(one_proc_run):
    assert "--resume auto: no complete checkpoint" in one_proc_run["proc"].stderr
    assert "starting fresh" in one_proc_run["proc"].stderr
    names = [os.path.basename(p) for p in list_checkpoints(one_proc_run["out"])]
    assert names == ["step-00000002", "step-00000004"]
    status = json.load(open(os.path.join(one_proc_run["out"], "status.json")))
    assert status["state"] == "finished" and status["step"] == 4
    assert not os.path.exists(os.path.join(one_proc_run["out"], LOCK_FILE))  # released at the end


def _model_state(cfg_path: str, out: str):
    """The trainer's objects for the tiny config, built in this process like ``train()`` builds them."""
    from accelerate import Accelerator

    from training.checkpoint import TrainerProgress
    from training.config import load_config
    from training.memory_bank import MemoryBank
    from training.optim import build_optimizer, build_scheduler
    from training.train import _build_model, resolve_config

    cfg = resolve_config(load_config(cfg_path, [f"run.out={out}"]))
    acc = Accelerator(cpu=True)
    model = _build_model(cfg)
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, 6, cfg.optim.warmup)
    model, optimizer, scheduler = acc.prepare(model, optimizer, scheduler)
    state = dict(
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        progress=TrainerProgress(),
        bank=MemoryBank(16),
    )
    return cfg, acc, state


def test_resume_never_unpickles_a_crafted_file(one_proc_run, tmp_path):
    good = os.path.join(one_proc_run["out"], "checkpoints", "step-00000004")
    from training.train import _restore

    cfg, acc, state = _model_state(one_proc_run["cfg"], one_proc_run["out"])
    assert load_checkpoint(acc, good, **state) is not None  # the untouched checkpoint loads
    assert state["progress"].step == 4
    marker = str(tmp_path / "marker")
    payload = pickle.dumps(_Exploit(marker))
    # positive control: the payload does run code when something unpickles it
    (tmp_path / "probe.pkl").write_bytes(payload)
    with pytest.raises(RuntimeError, match="magic number"):  # ... after it has run the payload
        torch.load(tmp_path / "probe.pkl", weights_only=False)
    assert os.path.exists(marker)
    os.remove(marker)

    legacy = ["custom_checkpoint_0.pkl", "custom_checkpoint_1.pkl", "random_states_0.pkl", "optimizer.bin"]
    names = sorted(os.listdir(good)) + legacy + ["model.safetensors", "scheduler.bin"]
    refused = {}
    for name in names:
        for fix_manifest in (False, True):
            ck = str(tmp_path / f"ck-{name}-{fix_manifest}")
            shutil.copytree(good, ck)
            with open(os.path.join(ck, name), "wb") as f:
                f.write(payload)
            if fix_manifest and name != MANIFEST:  # the attacker also rewrites the manifest's sizes
                man = json.load(open(os.path.join(ck, MANIFEST)))
                man["files"][name] = len(payload)
                with open(os.path.join(ck, MANIFEST), "w") as f:
                    json.dump(man, f)
            try:
                _restore(cfg, acc, resolve_resume(ck, one_proc_run["out"]), **state)  # as train() does
            except CheckpointError as e:
                refused[(name, fix_manifest)] = str(e)
            assert not os.path.exists(marker), f"{name} was unpickled"
    assert ("config.yaml", True) not in refused  # read with yaml.safe_load only to warn about changes
    for name in sorted(set(os.listdir(good)) - {"config.yaml"}):  # every other file is refused, named
        assert name in refused[(name, False)] or MANIFEST in refused[(name, False)], refused[(name, False)]
        assert name in refused[(name, True)], refused[(name, True)]
    for name in [*legacy, "model.safetensors", "scheduler.bin"]:  # not listed: never read, resume works
        assert (name, True) not in refused and (name, False) not in refused
    assert "weights_only=True" in refused[("optimizer.pt", True)]
    assert "bank.safetensors: not a readable safetensors file" in refused[("bank.safetensors", True)]


def test_legacy_pickle_checkpoint_is_refused_by_the_cli(one_proc_run, tmp_path):
    ck = tmp_path / "legacy"
    ck.mkdir()
    marker = str(tmp_path / "marker")
    (ck / "pytorch_model.bin").write_bytes(b"")
    (ck / "custom_checkpoint_0.pkl").write_bytes(pickle.dumps(_Exploit(marker)))
    (ck / "random_states_0.pkl").write_bytes(pickle.dumps(_Exploit(marker)))
    proc = run_cli(
        ["training.train", "--config", one_proc_run["cfg"], f"run.out={tmp_path / 'r'}", "--resume", str(ck)],
        check=False,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(
        f"nr-train: error: --resume {ck}: not a complete checkpoint (written by an older trainer"
    )
    assert "Traceback" not in proc.stderr and not os.path.exists(marker)


def test_resume_auto_falls_back_over_incomplete_checkpoint_and_cut_metrics(one_proc_run):
    out = one_proc_run["out"]
    run = str(one_proc_run["base"] / "fallback")
    shutil.copytree(out, run)
    os.remove(os.path.join(run, "checkpoints", "step-00000004", "bank.safetensors"))
    with open(os.path.join(run, "metrics.jsonl"), "a") as f:
        f.write('{"event": "train", "step": 5, "los')  # a run killed mid-write
    proc = run_cli(
        [
            "training.train",
            "--config",
            one_proc_run["cfg"],
            f"run.out={run}",
            "--resume",
            "auto",
            *one_proc_run["args"],
        ]
    )
    assert "skipping incomplete checkpoint" in proc.stderr and "bank.safetensors is missing" in proc.stderr
    assert "metrics.jsonl:6: cut-off last line dropped" in proc.stderr
    assert "resuming at epoch 0, step 2 (2 batches into the epoch); 3 logged steps redone" in proc.stderr
    a = read_metrics(os.path.join(out, "metrics.jsonl"))
    b = read_metrics(os.path.join(run, "metrics.jsonl"))
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    for ra, rb in zip(a, b):
        assert ra["sample_index"] == rb["sample_index"]
        assert rb["loss/total"] == pytest.approx(ra["loss/total"], abs=1e-5)


def test_lock_refuses_live_holder_and_takes_over_stale(tmp_path):
    run = str(tmp_path / "run")
    lock = RunLock(run).acquire()
    try:
        with pytest.raises(RunLockedError) as e:
            RunLock(run).acquire()
        assert f"host {socket.gethostname()} pid {os.getpid()}" in str(e.value)
    finally:
        lock.release()
    assert not os.path.exists(os.path.join(run, LOCK_FILE))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    path = os.path.join(run, LOCK_FILE)
    holder = {"host": socket.gethostname(), "pid": dead.pid, "heartbeat": time.time()}
    with open(path, "w") as f:
        json.dump(holder, f)
    assert stale_reason(holder, path) == f"pid {dead.pid} on {socket.gethostname()} is gone"
    RunLock(run).acquire().release()  # taken over
    far = {"host": "other-node", "pid": 1, "heartbeat": time.time()}
    assert stale_reason(far, path) is None
    assert stale_reason({**far, "heartbeat": time.time() - 120}, path).startswith("no heartbeat for 12")


def _wait_for(cond, what: str, proc: subprocess.Popen, log: str, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while not cond():
        assert proc.poll() is None, f"run ended before {what}: {open(log).read()[-3000:]}"
        assert time.time() < deadline, f"no {what} within {timeout} s"
        time.sleep(0.1)


def _train_steps(run: str) -> int:
    try:
        return len(read_metrics(os.path.join(run, "metrics.jsonl")))
    except (OSError, ValueError):
        return 0


@pytest.mark.slow
def test_sigterm_to_one_rank_checkpoints_all_and_exits_75(one_proc_run, tmp_path):
    run, log = str(tmp_path / "run"), str(tmp_path / "launch.log")
    cmd = _launch_cmd(one_proc_run["cfg"], run)[:-4] + ["optim.epochs=50", "run.save_every_steps=0"]
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=f, stderr=subprocess.STDOUT)
    try:
        _wait_for(lambda: _train_steps(run) >= 2, "two steps", proc, log)
        ranks = [p for p in _descendants(proc.pid) if "training.train" in open(f"/proc/{p}/cmdline").read()]
        assert len(ranks) == 2, ranks
        os.kill(max(ranks), signal.SIGTERM)  # one rank only: the other learns it through the all-reduce
        rc = proc.wait(120)
    finally:
        if proc.poll() is None:
            _kill9_tree(proc.pid)
            proc.wait(30)
    text = open(log).read()
    assert rc != 0 and "exitcode  : 75" in text, text[-3000:]
    assert "SIGTERM received: finishing this step, then checkpoint and exit" in text
    status = json.load(open(os.path.join(run, "status.json")))
    steps = _train_steps(run)
    assert status == {**status, "state": "preempted", "step": steps}
    assert [os.path.basename(p) for p in list_checkpoints(run)] == [f"step-{steps:08d}"]
    assert resolve_resume("auto", run) == list_checkpoints(run)[0]  # complete
    assert not os.path.exists(os.path.join(run, LOCK_FILE))


@pytest.mark.slow
def test_second_trainer_refused_and_ranks_die_with_their_launcher(one_proc_run, tmp_path):
    run, log = str(tmp_path / "run"), str(tmp_path / "launch.log")
    cmd = _launch_cmd(one_proc_run["cfg"], run)[:-4] + ["optim.epochs=50"]
    with open(log, "w") as f:
        proc = subprocess.Popen(
            cmd, cwd=REPO, env=_env(), stdout=f, stderr=subprocess.STDOUT, start_new_session=True
        )
    ranks: list[int] = []
    try:
        _wait_for(lambda: _train_steps(run) >= 1, "a step", proc, log)
        holder = json.load(open(os.path.join(run, LOCK_FILE)))
        second = run_cli(["training.train", "--config", one_proc_run["cfg"], f"run.out={run}"], check=False)
        assert second.returncode == 2
        assert (
            f"is in use by another trainer: host {holder['host']} pid {holder['pid']}"
            in second.stderr.strip().splitlines()[-1]
        )
        ranks = [p for p in _descendants(proc.pid) if "training.train" in open(f"/proc/{p}/cmdline").read()]
        assert holder["pid"] in ranks and len(ranks) == 2
        os.kill(proc.pid, signal.SIGKILL)  # the launcher only
        proc.wait(30)
        deadline = time.time() + 30
        while any(_pid_alive(p) for p in ranks) and time.time() < deadline:
            time.sleep(0.2)
        alive = [p for p in ranks if _pid_alive(p)]
        assert not alive, f"ranks {alive} outlived their launcher"
    finally:
        for p in ranks:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if proc.poll() is None:
            _kill9_tree(proc.pid)
            proc.wait(30)
    lock_path = os.path.join(run, LOCK_FILE)
    # left behind by a rank that died holding it: stale, so the next trainer takes it
    if os.path.exists(lock_path):
        reason = stale_reason(json.load(open(lock_path)), lock_path)
        assert reason is not None and reason.endswith("is gone")
    # else: the holder removed it on its way out; either way the next trainer can start


def test_pad_rows_never_enter_the_loss(tmp_path):
    """44 samples, global batch 8: the last batch carries 4 pad rows; they are dropped from the global batch
    (the epoch's loss rows are the 44 samples, each once) and counted in ``pad``."""
    root = write_dataset(str(tmp_path / "data"), n_train=44)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(tiny_config_text(root, str(tmp_path / "run")))
    proc = run_cli(
        [
            "training.train",
            "--config",
            str(cfg),
            "eval.at_epoch_end=false",
            "loss.num_neighbors=2",
            "run.progress=true",  # not a tty: plain lines instead of the bar
            "run.log_every_steps=3",
        ]
    )
    err = proc.stderr
    assert "\r" not in err + proc.stdout and "it/s" not in err
    assert re.search(
        r"step 3/6 epoch 0 loss [0-9.]+ lr \S+ [0-9.]+ samples/s \([0-9.]+ per process\) data wait \d+% ETA 0:0",
        err,
    )
    assert "step 6/6 epoch 0" in err
    assert "training finished: 6 steps, 1 epochs, wall time 0:0" in err
    assert "best           none (no validation)" in err
    assert f"checkpoint     {tmp_path / 'run' / 'checkpoints' / 'step-00000006'}" in err
    assert f"next           python -m training.score --run {tmp_path / 'run'} --split test" in err
    recs = read_metrics(str(tmp_path / "run" / "metrics.jsonl"))
    rows = [i for r in recs for i in r["sample_index"]]
    assert sorted(rows) == list(range(44))  # no repeat entered the loss
    assert sum(r["pad"] for r in recs) == 4 and len(recs) == 6
    assert [len(r["sample_index"]) for r in recs] == [8 - r["pad"] for r in recs]


@pytest.mark.slow
def test_launcher_mixed_precision_conflict_is_an_error(one_proc_run, tmp_path):
    cmd = _launch_cmd(one_proc_run["cfg"], str(tmp_path / "run"))
    cmd[cmd.index("--mixed_precision") + 1] = "bf16"
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode != 0
    assert (
        "nr-train: error: accelerate launch --mixed_precision bf16 (or its config file's mixed_precision) conflicts "
        "with run.mixed_precision=no of the run config" in proc.stderr
    ), proc.stderr[-3000:]
    assert not os.path.exists(tmp_path / "run")  # refused before any work


def test_check_refuses_batch_over_dataset_and_missing_shard_and_warns_frames(tmp_path):
    root = write_dataset(str(tmp_path / "data"))
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(tiny_config_text(root, str(tmp_path / "run")))
    base = ["training.train", "--config", str(cfg), "--check"]
    big = run_cli([*base, "data.batch_size=64", "loss.num_neighbors=4"], check=False)
    assert big.returncode == 2
    assert f"data.batch_size: global batch 64 exceeds the 48 samples of {root}/train" in big.stderr
    frames = run_cli([*base, "model.max_frames=8"], check=False)
    assert frames.returncode == 0, frames.stderr[-2000:]
    assert "model.max_frames=8 differs from the shards' num_frames=4" in frames.stderr
    assert "zero-padded" in frames.stderr
    os.remove(os.path.join(root, "train", "train-000002.tar"))
    gone = run_cli(base, check=False)
    assert gone.returncode == 2
    assert "data.train: 1 shard(s) listed in sizes.json are missing: ['train-000002.tar']" in gone.stderr
    assert "Traceback" not in gone.stderr + big.stderr


def test_changed_lr_on_resume_is_applied_and_recorded(one_proc_run):
    out = one_proc_run["out"]
    run = str(one_proc_run["base"] / "newlr")
    shutil.copytree(out, run)
    shutil.rmtree(os.path.join(run, "checkpoints", "step-00000004"))
    args = [*one_proc_run["args"], "optim.lr=1.0e-2"]
    proc = run_cli(
        ["training.train", "--config", one_proc_run["cfg"], f"run.out={run}", "--resume", "auto", *args]
    )
    msg = next(ln for ln in proc.stderr.splitlines() if "optim.lr changed on resume" in ln)
    assert (
        "schedule base rates ['0.002'" in msg and "-> ['0.01'" in msg and msg.endswith("applied from step 2")
    )
    a = {r["step"]: r["lr"] for r in read_metrics(os.path.join(out, "metrics.jsonl"))}
    b = {r["step"]: r["lr"] for r in read_metrics(os.path.join(run, "metrics.jsonl"))}
    assert b[1] == a[1] and b[2] == a[2]  # before the checkpoint: the old run's lines
    for step in (3, 4):  # the same schedule position, 5x the base rate
        assert b[step] == pytest.approx(5 * a[step], rel=1e-12)
    assert "lr: 0.01" in open(os.path.join(run, "config.yaml")).read()


def test_train_split_given_as_a_brace_pattern(tmp_path):
    """``data.train`` may name shard files with a brace pattern (expanded by ``shards.fs.expand_urls``): the run
    reads exactly those shards; ``--check`` names a pattern's shard that is gone or unlisted."""
    root = write_dataset(str(tmp_path / "data"))  # 4 train shards of 12
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(tiny_config_text(root, str(tmp_path / "run")))
    pattern = f"{root}/train/train-{{000001..000002}}.tar"  # shards 1 and 2: 24 samples, 3 steps of 8
    run_cli(["training.train", "--config", str(cfg), f"data.train={pattern}", "eval.at_epoch_end=false"])
    recs = read_metrics(str(tmp_path / "run" / "metrics.jsonl"))
    assert len(recs) == 3 and sum(r["pad"] for r in recs) == 0
    rows = sorted(i for r in recs for i in r["sample_index"])
    assert rows == list(range(24))  # every sample of the two shards once
    base = ["training.train", "--config", str(cfg), "--check"]
    unlisted = run_cli([*base, f"data.train={root}/train/train-{{000003..000004}}.tar"], check=False)
    assert unlisted.returncode == 2
    assert f"data.train: 1 shard(s) not listed in their sizes.json: ['{root}/train/train-000004.tar']" in (
        unlisted.stderr
    )
    os.remove(os.path.join(root, "train", "train-000002.tar"))
    gone = run_cli([*base, f"data.train={pattern}"], check=False)
    assert gone.returncode == 2
    assert "data.train: 1 shard(s) listed in sizes.json are missing: ['train-000002.tar']" in gone.stderr
    assert "Traceback" not in gone.stderr + unlisted.stderr
