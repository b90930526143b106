"""Run-folder files are 0644 (readable by colleagues on a shared filesystem), whatever writes them.

The 0600 came from ``tempfile.mkstemp`` inside the atomic writes; ``shards.fs.write_bytes_atomic`` now sets 0644 and
``training.config.save_config`` goes through it. ``save_checkpoint`` / ``save_best`` write ``config.yaml`` with
``save_config``; both are checked end to end with a real single-process CPU ``Accelerator``.
"""

from __future__ import annotations

import os
import stat

import pytest
import torch
from train_fixtures import tiny_config_text, write_split

from shards.fs import write_bytes_atomic
from training.checkpoint import TrainerProgress, save_best, save_checkpoint
from training.config import config_from_yaml_text, save_config
from training.memory_bank import MemoryBank


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _cfg(tmp_path):
    root = str(tmp_path / "data")
    items = [("red", "blue", i) for i in range(4)]
    write_split(root, "train", items, shard_size=4)
    write_split(root, "val", items, shard_size=4)
    return config_from_yaml_text(tiny_config_text(root, str(tmp_path / "run")))


def test_write_bytes_atomic_is_0644_and_leaves_no_temp(tmp_path, umask_022):
    target = tmp_path / "sub" / "x.json"
    write_bytes_atomic(str(target), b"{}")
    assert target.read_bytes() == b"{}"
    assert _mode(target) == 0o644
    assert sorted(os.listdir(target.parent)) == ["x.json"]


def test_save_config_is_0644(tmp_path, umask_022):
    path = tmp_path / "run" / "config.yaml"
    save_config(_cfg(tmp_path), str(path))
    assert _mode(path) == 0o644
    assert sorted(os.listdir(path.parent)) == ["config.yaml"]


def test_checkpoint_and_best_files_are_0644(tmp_path, umask_022):
    from accelerate import Accelerator

    cfg = _cfg(tmp_path)
    acc = Accelerator(cpu=True)
    model = acc.prepare(torch.nn.Linear(3, 2))
    run = tmp_path / "run"
    try:
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
        ckpt = save_checkpoint(
            acc,
            str(run),
            step=1,
            cfg=cfg,
            model=model,
            optimizer=optimizer,
            scheduler=scheduler,
            progress=TrainerProgress(),
            bank=MemoryBank(4),
            loader_state={"n": 1},
            keep_last=2,
        )
        best = save_best(acc, model, str(run), cfg=cfg, selection={"metric": "m", "value": 1.0, "step": 1})
    finally:
        acc.end_training()
    files = [os.path.join(d, f) for top in (ckpt, best) for d, _, fs in os.walk(top) for f in fs]
    assert os.path.join(ckpt, "config.yaml") in files and os.path.join(best, "config.yaml") in files
    assert {p: oct(_mode(p)) for p in files} == {p: oct(0o644) for p in files}
