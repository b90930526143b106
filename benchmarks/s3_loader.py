"""Loader clips/s from S3 (a real moto_server over HTTP on 127.0.0.1) vs local disk with the same workers, and the
time the loader takes to give up on a dead shard (one that answers 503 to every request) with the default policy.

Setup (temporary folder): ``--shards`` x ``--per-shard`` synthetic clips of ``T=12`` JPEG q90 frames at
``--size`` pixels, written once locally with :class:`shards.writer.ShardWriter` and uploaded to a moto bucket.
Both sources are read by ``shards.reader`` with ``--workers`` DataLoader workers, uint8 output, shuffle on; each is
timed ``--rounds`` times interleaved and the median epoch rate is reported. The dead-shard time is one epoch of a
one-shard-dead split through a 127.0.0.1 proxy that answers 503 for that shard, ``num_workers=0``, default
``StorageOptions`` (``deadline``/``request_timeout``) and ``retries`` high enough that the deadline decides, minus
nothing: it includes reading the live shards (printed separately as the live-only epoch time).

    python benchmarks/s3_loader.py --shards 8 --per-shard 24 --workers 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

import numpy as np
import simplejpeg

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))  # the tests' 127.0.0.1 fault proxy

from fault_proxy import FaultProxy  # noqa: E402

from shards import fs as sfs  # noqa: E402
from shards.reader import LoaderConfig, build_loader  # noqa: E402
from shards.writer import ShardWriter, encode_json  # noqa: E402

T = 12


def write_split(root: str, shards: int, per_shard: int, size: int) -> None:
    rng = np.random.default_rng(0)
    sizes = {}
    for s in range(shards):
        with ShardWriter(root, "train", s) as w:
            for i in range(per_shard):
                key = f"c{s:03d}_{i:04d}"
                frames = [
                    simplejpeg.encode_jpeg(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), quality=90)
                    for _ in range(T)
                ]
                members = {f"f{f:03d}.jpg": b for f, b in enumerate(frames)}
                members["txt"] = f"clip {key}".encode()
                members["json"] = encode_json({"video_id": key, "captions": [f"clip {key}"], "num_frames": T})
                w.write(key, members)
        sizes[w.stats.shard] = w.stats.samples
    sfs.write_bytes_atomic(sfs.join(root, "train", "sizes.json"), encode_json(sizes))


def start_moto() -> tuple[subprocess.Popen, str]:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            urllib.request.urlopen(url + "/moto-api/", timeout=1).read()
            return proc, url
        except Exception:  # noqa: BLE001 - not up yet
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("moto_server did not start")


def cfg(root: str, workers: int, size: int, **kw) -> LoaderConfig:
    base = dict(root=root, split="train", batch_size=8, num_workers=workers, num_frames=T, max_words=16,
                frame_size=size, output="uint8", caption_mode="first", shuffle=True, shuffle_buffer=32)  # fmt: skip
    base.update(kw)
    return LoaderConfig(**base)


def epoch_rate(c: LoaderConfig) -> tuple[float, int]:
    loader = build_loader(c, rank=0, world_size=1)
    t0 = time.perf_counter()
    n = sum(int((~b["is_pad"]).sum()) for b in loader)
    return n / (time.perf_counter() - t0), n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--per-shard", type=int, default=24)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args(argv)
    print(f"load average at start: {os.getloadavg()}")
    proc, endpoint = start_moto()
    os.environ.update(
        {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench"}
    )
    try:
        with tempfile.TemporaryDirectory() as tmp:
            local = os.path.join(tmp, "data")
            write_split(local, a.shards, a.per_shard, a.size)
            fs, _ = sfs.filesystem("s3://bench")
            fs.mkdir("bench")
            remote = "s3://bench/data"
            for name in sorted(os.listdir(os.path.join(local, "train"))):
                sfs.put_file_atomic(os.path.join(local, "train", name), f"{remote}/train/{name}")
            s3_rates, local_rates = [], []
            for _ in range(a.rounds):
                r, n = epoch_rate(cfg(local, a.workers, a.size))
                local_rates.append(r)
                r, n2 = epoch_rate(cfg(remote, a.workers, a.size))
                s3_rates.append(r)
                assert n == n2 == a.shards * a.per_shard
            s3_rate, local_rate = statistics.median(s3_rates), statistics.median(local_rates)
            print(f"clips/s local {local_rates} s3 {s3_rates} (workers={a.workers}, {n} clips/epoch)")

            dead = "train-000001.tar"
            proxy = FaultProxy(endpoint, lambda m, p: "503" if p.endswith(dead) else None)
            try:
                storage = sfs.StorageOptions(endpoint_url=proxy.url)
                t0 = time.perf_counter()
                loader = build_loader(
                    cfg(remote, 0, a.size, storage=storage, retries=10_000), rank=0, world_size=1
                )
                got = sum(int((~b["is_pad"]).sum()) for b in loader)
                dead_epoch = time.perf_counter() - t0
                assert loader.stats()["missing_shard"] == 1 and got == n - a.per_shard, (loader.stats(), got)
                t0 = time.perf_counter()
                live = [u for u in loader.urls if not u.endswith(dead)]
                sum(
                    1
                    for _ in build_loader(
                        cfg(None, 0, a.size, urls=live, storage=storage), rank=0, world_size=1
                    )
                )
                live_epoch = time.perf_counter() - t0
                requests = proxy.hits(dead)
            finally:
                proxy.close()
            dead_s = dead_epoch - live_epoch
            print(
                f"dead shard: epoch {dead_epoch:.1f}s vs live shards only {live_epoch:.1f}s -> {dead_s:.1f}s to give "
                f"up ({requests} requests to it; default deadline {sfs.StorageOptions().deadline:g}s)"
            )
    finally:
        proc.terminate()
        proc.wait(10)
    print(f"load average at end: {os.getloadavg()}")
    print(f"s3/local ratio: {s3_rate / local_rate:.2f}")
    print(f"RESULT s3_clips_per_s={s3_rate:.1f} local_clips_per_s={local_rate:.1f} dead_shard_s={dead_s:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
