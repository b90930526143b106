"""One rank of an elastic-resume run under ``torch.distributed.run`` (gloo, CPU): reads an epoch of the split with
``shards.reader``, all-gathers each step's ``sample_index`` into the global step, and writes JSON results.

Usage: ``python -m torch.distributed.run --standalone --nproc_per_node W tests/elastic_worker.py ROOT OUT STOP
[STATE]``: stop after STOP batches (0 = whole epoch); resume from the JSON loader state STATE when given. Rank r
writes ``OUT/rank{r}.json`` with its keys, pad flags, final loader state and (all ranks alike) the global steps.
"""

from __future__ import annotations

import json
import os
import sys

import torch
import torch.distributed as dist

from shards.reader import LoaderConfig, build_loader

GLOBAL_BATCH = 4


def main(root: str, out: str, stop: int, state_path: str | None) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    cfg = LoaderConfig(root=root, split="train", batch_size=GLOBAL_BATCH // world, num_workers=2, num_frames=4,
                       max_words=8, frame_size=16, output="uint8", shuffle_buffer=5, seed=9)  # fmt: skip
    state = json.load(open(state_path)) if state_path else None
    loader = build_loader(cfg, rank=rank, world_size=world, epoch=1, state=state)
    steps, keys, pads = [], [], []
    for b in loader:
        parts = [torch.zeros_like(b["sample_index"]) for _ in range(world)]
        dist.all_gather(parts, b["sample_index"])
        steps.append(torch.cat(parts).tolist())
        keys.extend(b["keys"])
        pads.extend(b["is_pad"].tolist())
        if stop and loader.state_dict()["batches"] == stop:
            break
    rec = {"steps": steps, "keys": keys, "pads": pads, "state": loader.state_dict(), "len": len(loader)}
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump(rec, f)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] if len(sys.argv) > 4 else None)
