"""Search benchmark: two-stage (global candidates + exact WTI re-rank) vs exhaustive WTI on synthetic indexes.

    python benchmarks/search.py --sizes 10000 100000 1000000 --work /tmp/nr-search-bench

Synthetic data with the real token shapes (F = 12 frames, L = 32 words, D = 512), written in the real index
format (``search.index`` parts, fp16) streaming, part by part, then the stored first-stage graph
(``search.ann.build_ann``, as ``nr-index ann=usearch``; its build time is reported apart from the parts'). Correlated like a trained model's features:
videos belong to clusters (one cluster per 50 videos), a video's topic is 0.8 * its cluster centre + 0.6 *
its own direction, each real frame token is the topic plus Gaussian noise of norm 0.5 (0..4 padded frames), the global video
embedding is the L2-normalised mean of the L2-normalised real frame tokens; a query is a target video's topic
plus noise of norm 0.8 per word (8..32 real words), its global embedding the normalised mean of its normalised words (the target's topic is estimated as the mean of its
stored frame tokens);
token weights are softmaxes of random logits. Each measurement runs in its own process, so the reported RSS is
that of the search process alone (the exhaustive reference touches every token page, the two-stage search only
the candidates'). Text encoding is not included (the queries are synthetic encodings).

Ends with ``RESULT search_1m_p50_ms=... search_1m_recall10=... search_1m_rss_gb=...``: the keys name the largest
size run (``search_10k_*`` when 1M is not in --sizes), so a 1M key always holds a 1M measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

F, L, D = 12, 32, 512
PART = 16384
VIDEOS_PER_CLUSTER = 50


def _topics(start: int, n: int, seed: int) -> torch.Tensor:
    """[n, D] topics of videos start..start+n (deterministic per video: cluster centre + own direction)."""
    g = torch.Generator().manual_seed(seed)
    n_clusters = (start + n) // VIDEOS_PER_CLUSTER + 1
    centres = torch.randn(n_clusters, D, generator=g)
    own = torch.Generator().manual_seed(seed * 7919 + start)
    ids = torch.arange(start, start + n) // VIDEOS_PER_CLUSTER
    t = 0.8 * torch.nn.functional.normalize(centres[ids], dim=-1) + 0.6 * torch.nn.functional.normalize(
        torch.randn(n, D, generator=own), dim=-1
    )
    return t


def generate(work: str, n: int, seed: int = 0) -> tuple[float, float]:
    """Write an n-video index under ``work`` with its stored first-stage graph (as ``nr-index ann=usearch``);
    returns (seconds for the parts, seconds for the graph)."""
    from search import ann as sann
    from search import index as sindex

    t0 = time.perf_counter()
    parts = (n + PART - 1) // PART
    for p in range(parts):
        a, b = p * PART, min(n, (p + 1) * PART)
        m = b - a
        g = torch.Generator().manual_seed(seed * 1_000_003 + p)
        topic = _topics(a, m, seed)
        tok = topic[:, None, :] + 0.5 * torch.randn(m, F, D, generator=g) / D**0.5
        nreal = F - torch.randint(0, 5, (m,), generator=g)
        mask = (torch.arange(F)[None] < nreal[:, None]).to(torch.uint8)
        nt = torch.nn.functional.normalize(tok, dim=-1) * mask[..., None]
        glob = torch.nn.functional.normalize(nt.sum(1), dim=-1)
        w = torch.randn(m, F, generator=g).masked_fill(mask == 0, -9e15).softmax(-1)
        enc = {
            "global": glob.half(),
            "tokens": tok.half(),
            "mask": mask,
            "weights": w.half(),
            "thumbs": torch.zeros(m, 8, 8, 3, dtype=torch.uint8),
            "keys": [f"v{i:07d}" for i in range(a, b)],
            "video_ids": [f"v{i:07d}" for i in range(a, b)],
        }
        data = sindex._part_bytes(enc, {})
        sindex.sfs.write_bytes_atomic(os.path.join(work, sindex.part_name(p)), data)
        del enc, tok, nt, data
    t_parts = time.perf_counter() - t0
    ann = sann.build_ann(work, sindex.part_globals(work, parts))
    info = {"similarity": "local", "dtype": "float16", "max_words": L, "bank": None, "source": "synthetic"}
    sindex.write_manifest(work, n_parts=parts, info={**info, "ann": ann})
    return t_parts, time.perf_counter() - t0 - t_parts


def queries(ix, q: int, seed: int = 1) -> tuple[torch.Tensor, ...]:
    """q synthetic text encodings: word tokens = a target video's mean frame token + noise (8..32 words)."""
    gens = [torch.Generator().manual_seed(seed * 100_003 + i) for i in range(q)]  # query i never depends on q
    target = np.array([int(torch.randint(0, ix.size, (1,), generator=g)) for g in gens])
    vt, vm, _ = ix.tokens(target)
    topics = (vt * vm[..., None]).sum(1) / vm.sum(1, keepdim=True)
    noise = torch.stack([torch.randn(L, D, generator=g) for g in gens])
    tok = topics[:, None, :] + 0.8 * noise / D**0.5
    nreal = torch.cat([torch.randint(8, L + 1, (1,), generator=g) for g in gens])
    mask = (torch.arange(L)[None] < nreal[:, None]).long()
    nt = torch.nn.functional.normalize(tok, dim=-1) * mask[..., None]
    glob = torch.nn.functional.normalize(nt.sum(1), dim=-1)
    w = torch.stack([torch.randn(L, generator=g) for g in gens]).masked_fill(mask == 0, -9e15).softmax(-1)
    return tok, mask, w, glob


def _rss_gb() -> tuple[float, float, float, float]:
    """(current RSS, peak RSS, anonymous part, file-backed part) of this process in GB. The file-backed part is
    the index's memory-mapped pages a query touched (page cache, reclaimable: the kernel maps cached neighbours
    of each faulted page too, so it grows with what is cached, not only with what is read)."""
    with open("/proc/self/status") as f:
        st = {k: v for k, v in (line.split(":", 1) for line in f)}
    # peak: VmHWM (this process image's high-water mark); getrusage's ru_maxrss survives fork + exec, so a child
    # would report the parent's peak (the index generation's)
    kb = {k: int(st[k].split()[0]) for k in ("VmRSS", "VmHWM", "RssAnon", "RssFile")}
    return kb["VmRSS"] / 2**20, kb["VmHWM"] / 2**20, kb["RssAnon"] / 2**20, kb["RssFile"] / 2**20


def run_mode(work: str, mode: str, n_q: int, k: int, cand: int, n_ref: int = 0, ef: int = 256) -> dict:
    """One measurement in this process: ``exhaustive`` | ``exact`` (SIMD-scan candidates) | ``usearch`` (the stored
    graph). ``exhaustive`` times ``n_q`` single queries and returns the top-k rows of ``n_ref`` queries from one
    batched pass (the recall reference: every token read once for all of them)."""
    from search.engine import Searcher
    from search.index import open_index

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    t0 = time.perf_counter()
    ix = open_index(work)
    s = Searcher(ix, None, ann="exact" if mode != "usearch" else "usearch", ef=ef)
    setup = time.perf_counter() - t0
    t = queries(ix, max(n_q, n_ref))
    lat, rows = [], []
    for i in range(n_q):
        one = tuple(x[i : i + 1] for x in t)
        t1 = time.perf_counter()
        hits = s.search_encoded(one, k=k, candidates=ix.size if mode == "exhaustive" else cand)[0]
        lat.append(time.perf_counter() - t1)
        rows.append([h.row for h in hits])
    if mode == "exhaustive" and n_ref > n_q:
        batch = tuple(x[n_q:n_ref] for x in t)
        rows += [[h.row for h in hs] for hs in s.search_encoded(batch, k=k, candidates=ix.size)]
    cur, peak, anon, filed = _rss_gb()
    lat_ms = np.array(lat) * 1e3
    return {
        "mode": mode, "setup_s": setup, "p50_ms": float(np.percentile(lat_ms, 50)),
        "p99_ms": float(np.percentile(lat_ms, 99)), "qps": float(n_q / sum(lat)), "rss_gb": cur,
        "peak_rss_gb": peak, "rss_anon_gb": anon, "rss_file_gb": filed, "rows": rows,
    }  # fmt: skip


def _child(work: str, mode: str, n_q: int, k: int, cand: int, n_ref: int = 0, ef: int = 256) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", mode, "--work", work, "--queries", str(n_q), "--k", str(k),
         "--candidates", str(cand), "--exhaustive-queries", str(n_ref), "--ef", str(ef)],
        capture_output=True, text=True, timeout=3600, check=False,
    )  # fmt: skip
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def _du(path: str) -> float:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs) / 2**30


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    p.add_argument("--work", default="/tmp/nr-search-bench")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--candidates", type=int, default=200)
    p.add_argument("--ef", type=int, default=256, help="HNSW expansion_search of the graph stage")
    p.add_argument("--queries", type=int, default=0, help="queries per measurement (0: by size)")
    p.add_argument(
        "--exhaustive-queries",
        type=int,
        default=0,
        help="queries in the exhaustive recall reference (0: 100 up to 100k videos, 30 above)",
    )
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--keep", action="store_true", help="keep the generated indexes")
    a = p.parse_args()
    if a.child:
        print(json.dumps(run_mode(a.work, a.child, a.queries, a.k, a.candidates, a.exhaustive_queries, a.ef)))
        return 0
    print(f"load before: {os.getloadavg()}  cores: {os.cpu_count()}")
    res = {}
    for n in a.sizes:
        work = os.path.join(a.work, f"n{n}")
        shutil.rmtree(work, ignore_errors=True)
        parts_s, ann_s = generate(work, n)
        disk = _du(work)
        ann_gb = os.path.getsize(os.path.join(work, "ann.usearch")) / 2**30
        # timed single exhaustive queries, and the recall reference (one batched exhaustive pass)
        n_timed = 20 if n <= 10_000 else 5 if n <= 100_000 else 3
        n_ref = a.exhaustive_queries or (100 if n <= 100_000 else 30)
        n_q = a.queries or 100
        ex = _child(work, "exhaustive", n_timed, a.k, a.candidates, n_ref)
        line = {
            "n": n,
            "parts_build_s": parts_s,
            "ann_build_s": ann_s,
            "disk_gb": disk,
            "ann_gb": ann_gb,
            "recall_queries": n_ref,
            "exhaustive": {k: v for k, v in ex.items() if k != "rows"},
        }
        for mode in ("exact", "usearch"):
            r = _child(work, mode, max(n_ref, n_q), a.k, a.candidates, ef=a.ef)
            rec = np.mean(
                [len(set(x) & set(y)) / a.k for x, y in zip(r["rows"][:n_ref], ex["rows"], strict=True)]
            )
            line[mode] = {**{k: v for k, v in r.items() if k != "rows"}, "recall10": float(rec)}
        res[n] = line
        print(json.dumps(line), flush=True)
        ratio = ex["p50_ms"] / line["usearch"]["p50_ms"]
        print(f"n={n}: exhaustive WTI p50 {ex['p50_ms']:.1f} ms vs two-stage (usearch) "
              f"{line['usearch']['p50_ms']:.1f} ms ({ratio:.0f}x), exact-scan two-stage "
              f"{line['exact']['p50_ms']:.1f} ms; recall@10 usearch {line['usearch']['recall10']:.3f}, "
              f"exact {line['exact']['recall10']:.3f}", flush=True)  # fmt: skip
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(f"load after: {os.getloadavg()}")
    big = max(res)
    # the RESULT is the mode nr-search uses by default at this size (nr-index --ann auto stores a graph from
    # AUTO_MIN_VIDEOS videos, and search then uses it), not the better of the two
    from search.ann import AUTO_MIN_VIDEOS

    auto = "usearch" if big >= AUTO_MIN_VIDEOS else "exact"
    r = res[big][auto]
    print(f"default (--ann auto) at {big} videos: {auto}")
    # keys name the size measured: a search_1m_* value only ever comes from a 1M-video index
    size = "1m" if big == 1_000_000 else (f"{big // 1000}k" if big % 1000 == 0 else str(big))
    print(f"RESULT search_{size}_p50_ms={r['p50_ms']:.1f} search_{size}_recall10={r['recall10']:.3f} "
          f"search_{size}_rss_gb={r['rss_gb']:.2f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
