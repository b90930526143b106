"""The reader against a real S3 HTTP server (moto_server): exactness, dropped connections, missing shards, cache,
and the ``s3`` scheme for stock webdataset."""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections import Counter

import pytest
from shard_fixtures import write_split

from shards import fs as sfs
from shards.errors import ShardDataError
from shards.reader import LoaderConfig, build_loader
from shards.s3 import S3RangeReader, open_shard, retry_count
from shards.transforms import default_tokenizer

SIZES = [6, 5, 7, 6]


class DroppingProxy:
    """TCP proxy on 127.0.0.1 in front of ``upstream``: the first ``drops`` connections that carry more than
    ``after_bytes`` bytes towards the client are cut abruptly at that point (mid-response); later ones pass."""

    def __init__(self, upstream: str, after_bytes: int, drops: int) -> None:
        host, port = upstream.rsplit("//", 1)[1].split(":")
        self.upstream = (host, int(port))
        self.after_bytes, self.drops_left, self.dropped = after_bytes, drops, 0
        self.lock = threading.Lock()
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            up = socket.create_connection(self.upstream)
            threading.Thread(target=self._pump, args=(client, up, None), daemon=True).start()
            threading.Thread(target=self._pump, args=(up, client, self.after_bytes), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, limit: int | None) -> None:
        sent = 0
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if limit is not None and sent + len(data) > limit:
                    with self.lock:
                        cut = self.drops_left > 0
                        if cut:
                            self.drops_left -= 1
                            self.dropped += 1
                    if cut:
                        dst.sendall(data[: limit - sent])
                        break
                    limit = None
                dst.sendall(data)
                sent += len(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    def close(self) -> None:
        self._stop = True
        self.sock.close()


@pytest.fixture(scope="module")
def tokenizer():
    return default_tokenizer()


@pytest.fixture
def s3_split(s3_bucket):
    root = f"{s3_bucket}/data"
    specs = write_split(root, "train", SIZES)
    return root, specs


def _cfg(root: str, **kw) -> LoaderConfig:
    base = dict(
        root=root,
        split="train",
        batch_size=4,
        num_workers=2,
        num_frames=4,
        max_words=8,
        frame_size=16,
        output="uint8",
        shuffle_buffer=4,
        seed=11,
        retries=4,
    )
    base.update(kw)
    return LoaderConfig(**base)


def _epoch(cfg, world, tokenizer):
    out = []
    for r in range(world):
        loader = build_loader(cfg, rank=r, world_size=world, tokenizer=tokenizer)
        batches = [(b["sample_index"].tolist(), b["is_pad"].tolist(), b["keys"]) for b in loader]
        assert len(batches) == len(loader)
        ref = [[u.uid for u in b] for b in loader.plan().rank_batches(r)]
        assert [b[0] for b in batches] == ref
        out.append((batches, loader.stats()))
    return out


def test_s3_epoch_exactly_once_two_workers(s3_split, tokenizer):
    root, specs = s3_split
    runs = _epoch(_cfg(root), 2, tokenizer)
    real = Counter(i for batches, _ in runs for ids, pads, _ in batches for i, p in zip(ids, pads) if not p)
    assert real == Counter(range(len(specs)))
    keys = {k for batches, _ in runs for _, _, ks in batches for k in ks}
    assert keys == {s.key for s in specs}


def test_dropped_connections_are_retried_and_nothing_lost(s3_split, s3_server, tokenizer):
    root, specs = s3_split
    proxy = DroppingProxy(s3_server, after_bytes=3000, drops=3)
    try:
        storage = sfs.StorageOptions(endpoint_url=proxy.url, retries=1)
        cfg = _cfg(root, storage=storage, read_block_size=4096, num_workers=1, caption_mode="first")
        runs = _epoch(cfg, 1, tokenizer)
    finally:
        proxy.close()
    assert proxy.dropped >= 1
    ((batches, stats),) = runs
    real = sorted(i for ids, pads, _ in batches for i, p in zip(ids, pads) if not p)
    assert real == list(range(len(specs)))
    assert stats["read_error"] == 0 and stats["truncated_tar"] == 0


def test_range_reader_resumes_at_offset(s3_split, s3_server):
    root, _ = s3_split
    url = f"{root}/train/train-000001.tar"
    whole = sfs.read_bytes(url)
    proxy = DroppingProxy(s3_server, after_bytes=2500, drops=4)
    try:
        storage = sfs.StorageOptions(endpoint_url=proxy.url, retries=0)
        with S3RangeReader(url, storage, retries=6, block_size=2048) as f:
            got = f.read()
            f.seek(1000)
            again = f.read(100)
    finally:
        proxy.close()
    assert proxy.dropped >= 1
    assert got == whole and again == whole[1000:1100]


def test_range_reader_retries_transient_errors_from_offset(monkeypatch):
    """Our own retry layer, with a fake filesystem: every failed range is asked again from the same offset."""
    import shards.s3 as s3mod

    data = bytes(range(256)) * 40
    calls: list[tuple[int, int]] = []

    class FlakyFS:
        fails = {2: ConnectionResetError("reset by peer"), 3: TimeoutError("read timed out")}

        def info(self, path):
            return {"size": len(data)}

        def cat_file(self, path, start, end):
            calls.append((start, end))
            err = self.fails.pop(len(calls), None)
            if err is not None:
                raise err
            return data[start:end]

    monkeypatch.setattr(s3mod, "read_filesystem", lambda url, storage=None: (FlakyFS(), url[5:]))
    monkeypatch.setattr("shards.retry.backoff_delay", lambda *a, **k: 0.0)
    before = retry_count()
    with S3RangeReader("s3://b/k.tar", retries=3, block_size=4000) as f:
        assert f.read() == data
    assert retry_count() - before == 2
    assert calls == [(0, 4000), (4000, 8000), (4000, 8000), (4000, 8000), (8000, 10240)]
    # a permanent error is not retried, and a missing object names the URL
    FlakyFS.fails = {len(calls) + 2: PermissionError("denied")}
    with pytest.raises(OSError, match=r"reading s3://b/k\.tar \(bytes 4000-8000\) failed: PermissionError"):
        S3RangeReader("s3://b/k.tar", retries=3, block_size=4000).read()

    class Missing(FlakyFS):
        def info(self, path):
            raise FileNotFoundError(path)

    monkeypatch.setattr(s3mod, "read_filesystem", lambda url, storage=None: (Missing(), url[5:]))
    with pytest.raises(FileNotFoundError, match="shard not found: s3://b/gone.tar"):
        S3RangeReader("s3://b/gone.tar")


def test_missing_shard_skipped_with_url_then_raise(s3_split, tokenizer, caplog):
    root, specs = s3_split
    gone = f"{root}/train/train-000002.tar"
    sfs.remove(gone)
    cfg = _cfg(root, num_workers=0, caption_mode="first", shuffle=False)
    with caplog.at_level(logging.WARNING, logger="shards.reader"):
        loader = build_loader(cfg, rank=0, world_size=1, tokenizer=tokenizer)
        batches = list(loader)
    assert len(batches) == len(loader)
    assert loader.stats()["missing_shard"] == 1
    assert any(gone in r.getMessage() for r in caplog.records)
    real = {k for b in batches for k, p in zip(b["keys"], b["is_pad"].tolist()) if not p}
    assert real == {s.key for s in specs if s.shard != 2}
    with pytest.raises(ShardDataError, match=f"missing_shard: shard {gone}"):
        list(
            build_loader(
                _cfg(root, on_error="raise", num_workers=0), rank=0, world_size=1, tokenizer=tokenizer
            )
        )


def test_cache_dir_downloads_whole_shards(s3_split, tokenizer, tmp_path):
    root, specs = s3_split
    cache = tmp_path / "cache"
    cfg = _cfg(root, cache_dir=str(cache), num_workers=1, caption_mode="first")
    loader = build_loader(cfg, rank=0, world_size=1, tokenizer=tokenizer)
    n = sum(int((~b["is_pad"]).sum()) for b in loader)
    assert n == len(specs)
    bucket_path = root[len("s3://") :]
    cached = sorted(os.listdir(cache / bucket_path / "train"))
    assert cached == [f"train-{i:06d}.tar" for i in range(len(SIZES))]
    for name in cached:
        assert (cache / bucket_path / "train" / name).read_bytes() == sfs.read_bytes(f"{root}/train/{name}")
    with open_shard(f"{root}/train/train-000000.tar", cache_dir=str(cache)) as f:
        assert f.read(1)  # served from the cache


def test_stock_webdataset_reads_s3_through_our_scheme(s3_split):
    import webdataset as wds

    from shards.s3 import register_gopen

    root, specs = s3_split
    register_gopen()
    ds = wds.WebDataset(f"{root}/train/train-000000.tar", shardshuffle=False, empty_check=False)
    keys = [s["__key__"] for s in ds]
    assert keys == [s.key for s in specs if s.shard == 0]
