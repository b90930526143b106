"""training.distributed: single-process identities, and a 2-process gloo run (torchrun) whose losses,
DDP-averaged parameter gradients and memory bank equal a 1-process run on the full batch."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from training.distributed import all_reduce_mean, gather_nograd, gather_with_grad, rank, world_size

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "dist_worker.py"


def load_worker():
    spec = importlib.util.spec_from_file_location("dist_worker", WORKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_single_process_identities():
    assert rank() == 0 and world_size() == 1
    x = torch.randn(3, 2, requires_grad=True)
    assert gather_with_grad(x) is x
    y = gather_nograd(x)
    assert torch.equal(y, x) and not y.requires_grad
    m = all_reduce_mean(x)
    assert torch.equal(m, x) and m is not x and not m.requires_grad


@pytest.mark.slow
def test_two_process_run_equals_single_process(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(WORKER),
    ]
    proc = subprocess.run(cmd + [str(tmp_path)], env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    single = load_worker().run(None)

    for rec in ranks:
        assert rec["rank_mean"].item() == 0.5
        assert rec["gathered_ranks"].tolist() == [0, 1]
        for step in range(len(single["losses"])):
            for name, value in single["losses"][step].items():
                torch.testing.assert_close(rec["losses"][step][name], value, atol=1e-5, rtol=1e-5)
            grads = single["grads"][step]
            assert set(rec["grads"][step]) == set(grads)
            for name, g in grads.items():
                assert g.abs().sum() > 0, name
                torch.testing.assert_close(rec["grads"][step][name], g, atol=1e-5, rtol=1e-5, msg=name)
            for key, t in single["banks"][step].items():
                torch.testing.assert_close(rec["banks"][step][key], t, atol=1e-5, rtol=1e-5, msg=key)
    # the bank is bit-identical on both ranks (always updated from gathered features)
    for step in range(len(single["banks"])):
        for key in ranks[0]["banks"][step]:
            assert torch.equal(ranks[0]["banks"][step][key], ranks[1]["banks"][step][key]), key
    assert ranks[0]["banks"][-1]["ids"].tolist()[:8] == list(range(1000, 1008))  # newest first
