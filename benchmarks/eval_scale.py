"""Time and peak memory of all eval metrics (t2v + v2t retrieval, CLIP4Clip numbers, hubness k=1,5,10,15) at
1k x 1k, 10k x 10k (dense matrices) and 50k x 50k (chunked: scores generated chunk by chunk from random
embeddings, two passes), each size in a fresh subprocess; peak memory is the child's ru_maxrss.

    .venv/bin/python benchmarks/eval_scale.py [--sizes 1000,10000,50000] [--dim 256] [--rows 512]

With ``--tied 10000`` (default) it also evaluates a fully tied 10k x 10k matrix (every score equal: the worst case
for tie handling) next to the untied one. Ends with ``RESULT eval_1k_s=... eval_10k_s=... eval_50k_s=...
eval_50k_peak_gb=... eval_10k_peak_gb=... eval_10k_tied_peak_gb=... eval_10k_tied_s=...``.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time

import numpy as np

CHUNKED_FROM = 20000  # sizes at or above this are evaluated from generated row chunks


def _embeddings(n: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    video = rng.standard_normal((n, dim), dtype=np.float32)
    text = video + 4.0 * rng.standard_normal((n, dim), dtype=np.float32)
    video /= np.linalg.norm(video, axis=1, keepdims=True)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    return text, video


def child(n: int, dim: int, rows: int, tied: bool = False) -> dict:
    from eval.evaluate import compute
    from eval.scores_io import ScoreSet

    text, video = _embeddings(n, dim)
    qids = np.array([f"t{i}" for i in range(n)])
    gids = np.array([f"v{i}" for i in range(n)])
    gt = np.arange(n)
    gen_s = 0.0
    if tied:
        ss = ScoreSet.from_arrays(np.zeros((n, n), np.float32), qids, gids, gt=gt)
        mode = "tied"
    elif n >= CHUNKED_FROM:
        def factory():
            for start in range(0, n, rows):
                yield text[start : start + rows] @ video.T

        t0 = time.perf_counter()
        for _ in factory():  # one generation-only pass, for context
            pass
        gen_s = time.perf_counter() - t0
        ss = ScoreSet.from_chunks(factory, qids, gids, gt=gt, source=f"generated {n}x{n}")
        mode = "chunked"
    else:
        ss = ScoreSet.from_arrays(text @ video.T, qids, gids, gt=gt)
        mode = "dense"
    t0 = time.perf_counter()
    flat = compute(ss, (1, 5, 10, 15)).flat("test")
    secs = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # KiB -> GiB
    return {"n": n, "mode": mode, "seconds": secs, "gen_pass_s": gen_s, "peak_gb": peak, "keys": len(flat),
            "t2v_R@1": flat["test/t2v/R@1"], "skew_t2v_k10": flat["test/hub/t2v/k10/skew"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="1000,10000,50000")
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--rows", type=int, default=512, help="rows per generated chunk (chunked sizes)")
    p.add_argument("--tied", default="10000", help="sizes also run fully tied (dense zeros); '' for none")
    p.add_argument("--child", type=int, help=argparse.SUPPRESS)
    p.add_argument("--child-tied", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.dim, args.rows, args.child_tied)))
        return 0
    sizes = [int(s) for s in args.sizes.split(",")]
    tied = [int(s) for s in args.tied.split(",") if s.strip()]
    results, tied_results = [], []
    for n, is_tied in [(n, False) for n in sizes] + [(n, True) for n in tied]:
        cmd = [sys.executable, __file__, "--child", str(n), "--dim", str(args.dim), "--rows", str(args.rows)]
        out = subprocess.run(cmd + (["--child-tied"] if is_tied else []), capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        (tied_results if is_tied else results).append(r)
    print(f"{'size':>8} {'mode':>8} {'eval_s':>9} {'gen_pass_s':>10} {'peak_GB':>8} {'keys':>5} {'t2v R@1':>8} "
          f"{'skew@10':>8}")
    for r in results + tied_results:
        print(f"{r['n']:>8} {r['mode']:>8} {r['seconds']:>9.2f} {r['gen_pass_s']:>10.2f} {r['peak_gb']:>8.2f} "
              f"{r['keys']:>5} {r['t2v_R@1']:>8.2f} {r['skew_t2v_k10']:>8.3f}")
    for a, b in zip(results, results[1:]):
        growth = math.log(b["seconds"] / a["seconds"]) / math.log(b["n"] / a["n"])
        print(f"growth {a['n']} -> {b['n']}: time ~ n^{growth:.2f} ({b['mode']} vs {a['mode']})")
    by_n = {r["n"]: r for r in results}
    fields = []
    for n, tag in ((1000, "1k"), (10000, "10k"), (50000, "50k")):
        if n in by_n:
            fields.append(f"eval_{tag}_s={by_n[n]['seconds']:.3f}")
    if 50000 in by_n:
        fields.append(f"eval_50k_peak_gb={by_n[50000]['peak_gb']:.2f}")
    by_t = {r["n"]: r for r in tied_results}
    if 10000 in by_t:
        if 10000 in by_n:
            fields.append(f"eval_10k_peak_gb={by_n[10000]['peak_gb']:.2f}")
            print(f"tied / untied 10k peak memory: {by_t[10000]['peak_gb'] / by_n[10000]['peak_gb']:.2f}x")
        fields.append(f"eval_10k_tied_peak_gb={by_t[10000]['peak_gb']:.2f}")
        fields.append(f"eval_10k_tied_s={by_t[10000]['seconds']:.3f}")
    print("RESULT " + " ".join(fields))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
