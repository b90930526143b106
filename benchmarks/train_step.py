"""Training-step benchmark on CPU: data-wait share of the step, and NeighborRetr vs InfoNCE step time.

    python benchmarks/train_step.py [--steps 20] [--rounds 2] [--batch 16] [--frames 12] [--size 64]

Writes a small synthetic split (coloured squares, ``--frames`` JPEG frames of ``--size`` px per clip), then
runs the real trainer (``python -m training.train``, one process, tiny model ``nr-tiny``, 2 loader workers,
one torch thread) on it, ``--rounds`` interleaved times for each of ``loss.kind=neighborretr`` (memory bank
on) and ``loss.kind=infonce`` (no bank). Per-step timings come from the run's ``metrics.jsonl``:
``data_wait_s`` (time blocked on the loader) and ``compute_s`` (forward, gather, losses, backward, optimiser,
bank update); the first ``--warmup`` steps of each run are left out. Ends with one line
``RESULT data_wait_frac=<f> nr_vs_infonce_step=<ratio>`` (data-wait fraction of the NeighborRetr runs; ratio
of median step times, NeighborRetr / InfoNCE).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import simplejpeg

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from shards import fs as sfs  # noqa: E402
from shards.writer import ShardWriter, encode_json  # noqa: E402

COLOURS = [(220, 30, 30), (30, 200, 40), (30, 60, 220), (230, 220, 40), (150, 40, 180), (240, 140, 20)]
NAMES = ["red", "green", "blue", "yellow", "purple", "orange"]


def write_split(root: str, split: str, n: int, *, frames: int, size: int, shard_size: int = 32) -> None:
    """``n`` clips of a coloured square moving over a coloured background; sizes/captions index from stats."""
    rng = np.random.default_rng(0)
    sizes, captions = {}, {}
    for s in range(0, n, shard_size):
        with ShardWriter(root, split, s // shard_size) as w:
            for i in range(s, min(n, s + shard_size)):
                fg, bg = rng.choice(len(COLOURS), size=2, replace=False)
                members = {}
                for t in range(frames):
                    img = np.empty((size, size, 3), np.uint8)
                    img[:] = COLOURS[bg]
                    x = (i + t) % (size // 2)
                    img[size // 4 : size // 4 + size // 2, x : x + size // 2] = COLOURS[fg]
                    img = np.clip(img.astype(np.int16) + rng.integers(-20, 20, img.shape), 0, 255).astype(
                        np.uint8
                    )
                    members[f"f{t:03d}.jpg"] = simplejpeg.encode_jpeg(img, quality=90, colorspace="RGB")
                cap = f"a {NAMES[fg]} square on {NAMES[bg]}"
                members["txt"] = cap.encode()
                members["json"] = encode_json(
                    {
                        "schema": 1,
                        "video_id": f"v{i}",
                        "caption": cap,
                        "captions": [cap],
                        "num_frames": frames,
                    }
                )
                w.write(f"{split}_{i:05d}", members)
        sizes[w.stats.shard] = w.stats.samples
        captions[w.stats.shard] = w.stats.captions
    url = sfs.join(root, split)
    sfs.write_bytes_atomic(sfs.join(url, "sizes.json"), json.dumps(sizes).encode())
    sfs.write_bytes_atomic(sfs.join(url, "captions.json"), json.dumps(captions).encode())


def run(kind: str, root: str, out: str, args: argparse.Namespace) -> list[dict]:
    overrides = [
        f"data.root={root}",
        "data.val=null",
        f"data.batch_size={args.batch}",
        f"data.num_workers={args.workers}",
        f"data.frame_size={args.size}",
        "model.arch=nr-tiny",
        "model.temporal_layers=2",
        f"model.max_frames={args.frames}",
        "model.max_words=16",
        f"loss.kind={kind}",
        f"loss.num_neighbors={min(20, args.batch - 3)}",
        f"bank.enabled={'true' if kind == 'neighborretr' else 'false'}",
        "bank.prefill_batches=4",
        "optim.coef_lr=1.0",
        "optim.lr=1e-3",
        "optim.epochs=100",
        f"optim.max_steps={args.steps}",
        "eval.at_epoch_end=false",
        "eval.split=val",
        "run.trackers=[]",
        "run.progress=false",
        "run.log_level=WARNING",
        f"run.out={out}",
    ]
    # one intra-op thread: the machine's cores are shared with the loader workers (and, here, other jobs);
    # oversubscribed threads make CPU step times meaningless
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=REPO, OMP_NUM_THREADS=str(args.threads))
    subprocess.run([sys.executable, "-m", "training.train", *overrides], cwd=REPO, env=env, check=True)
    with open(os.path.join(out, "metrics.jsonl")) as f:
        recs = [json.loads(line) for line in f]
    return [r for r in recs if r.get("event") == "train"][args.warmup :]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--frames", type=int, default=12)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--videos", type=int, default=320)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads of the trainer")
    p.add_argument("--rounds", type=int, default=2, help="interleaved runs per variant (medians pool them)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        write_split(os.path.join(tmp, "data"), "train", args.videos, frames=args.frames, size=args.size)
        print(
            f"wrote {args.videos} clips ({args.frames} x {args.size}px) in {time.perf_counter() - t0:.1f} s"
        )
        results: dict[str, list[dict]] = {"neighborretr": [], "infonce": []}
        for r in range(args.rounds):  # interleaved, so background load hits both variants alike
            for k in results:
                results[k] += run(k, os.path.join(tmp, "data"), os.path.join(tmp, f"{k}-{r}"), args)
    print(
        f"{'loss head':<14}{'steps':>6}{'median step s':>15}{'compute s':>11}{'data wait s':>13}"
        f"{'wait frac':>11}{'samples/s':>11}"
    )
    stats = {}
    for kind, recs in results.items():
        step = [r["compute_s"] + r["data_wait_s"] for r in recs]
        wait = sum(r["data_wait_s"] for r in recs) / sum(step)
        stats[kind] = (statistics.median(step), wait)
        print(
            f"{kind:<14}{len(recs):>6}{statistics.median(step):>15.4f}"
            f"{statistics.median(r['compute_s'] for r in recs):>11.4f}"
            f"{statistics.median(r['data_wait_s'] for r in recs):>13.4f}{wait:>11.3f}"
            f"{args.batch / statistics.median(step):>11.1f}"
        )
    ratio = stats["neighborretr"][0] / stats["infonce"][0]
    print(f"RESULT data_wait_frac={stats['neighborretr'][1]:.3f} nr_vs_infonce_step={ratio:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
