"""One rank of an elastic-resume run under ``torch.distributed.run`` (gloo, CPU): reads epochs of the split with
``shards.reader``, all-gathers each step's ``sample_index`` into the global step, and writes JSON results.

Usage: ``python -m torch.distributed.run --standalone --nproc_per_node W tests/elastic_worker.py ROOT OUT STOP
[STATE] [--workers K] [--last-epoch E] [--stop-epoch S]``: read from epoch 1 (or the epoch of the JSON loader
state STATE when given, resuming from it) through epoch E (default 1), moving on with ``set_epoch`` like the
trainer; stop after STOP batches of epoch S (default: the first epoch read; STOP 0 = never). Rank r writes
``OUT/rank{r}.json``: per epoch read its keys, pad flags, batch count and (all ranks alike) global steps, and the
final loader state.
"""

from __future__ import annotations

import argparse
import json
import os

import torch
import torch.distributed as dist

from shards.reader import LoaderConfig, build_loader

GLOBAL_BATCH = 4


def main(args: argparse.Namespace) -> None:
    """Read the epochs on this rank (see the module docstring) and write ``OUT/rank{r}.json``."""
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    cfg = LoaderConfig(root=args.root, split="train", batch_size=GLOBAL_BATCH // world, num_workers=args.workers,
                       num_frames=4, max_words=8, frame_size=16, output="uint8", shuffle_buffer=5,
                       seed=9)  # fmt: skip
    state = json.load(open(args.state)) if args.state else None
    first = int(state["epoch"]) if state and "epoch" in state else 1
    loader = build_loader(cfg, rank=rank, world_size=world, epoch=first, state=state)
    stop_epoch = first if args.stop_epoch is None else args.stop_epoch
    epochs: dict[str, dict] = {}
    for epoch in range(first, args.last_epoch + 1):
        if epoch != first:
            loader.set_epoch(epoch)
        rec: dict = {"steps": [], "keys": [], "pads": [], "len": len(loader), "batches": 0}
        stopped = False
        for b in loader:
            parts = [torch.zeros_like(b["sample_index"]) for _ in range(world)]
            dist.all_gather(parts, b["sample_index"])
            rec["steps"].append(torch.cat(parts).tolist())
            rec["keys"].extend(b["keys"])
            rec["pads"].extend(b["is_pad"].tolist())
            rec["batches"] += 1
            if args.stop and epoch == stop_epoch and loader.state_dict()["batches"] == args.stop:
                stopped = True
                break
        epochs[str(epoch)] = rec
        if stopped:
            break
    out = {"epochs": epochs, "state": loader.state_dict()}
    with open(os.path.join(args.out, f"rank{rank}.json"), "w") as f:
        json.dump(out, f)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("root")
    p.add_argument("out")
    p.add_argument("stop", type=int)
    p.add_argument("state", nargs="?")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--last-epoch", type=int, default=1)
    p.add_argument("--stop-epoch", type=int, default=None)
    main(p.parse_args())
