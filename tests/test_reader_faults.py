"""The one bounded retry policy, through a fault-injecting proxy on 127.0.0.1 in front of a real moto_server:
503s, connections cut mid-body and stalled bodies; plus index files (``sizes.json``) failing, and any fsspec URL
(``http://`` from a local range-capable server, brace patterns on ``s3://``)."""

from __future__ import annotations

import logging
import threading
from collections import Counter

import pytest
from fault_proxy import FaultProxy, RangeHTTPServer
from shard_fixtures import write_split

from shards import fs as sfs
from shards.errors import ShardDataError
from shards.reader import LoaderConfig, build_loader
from shards.retry import RetryBudget, ShardUnavailableError, backoff_delay
from shards.s3 import RangeReader
from shards.transforms import default_tokenizer

SIZES = [5, 4, 6]


@pytest.fixture(scope="module")
def tokenizer():
    return default_tokenizer()


@pytest.fixture
def s3_split(s3_bucket):
    root = f"{s3_bucket}/data"
    return root, write_split(root, "train", SIZES)


def _cfg(root: str | None, **kw) -> LoaderConfig:
    base = dict(
        root=root,
        split="train",
        batch_size=3,
        num_workers=0,
        num_frames=4,
        max_words=8,
        frame_size=16,
        output="uint8",
        shuffle=False,
        caption_mode="first",
        seed=3,
    )
    base.update(kw)
    return LoaderConfig(**base)


def _real_keys(loader) -> Counter:
    out: Counter = Counter()
    for b in loader:
        out.update(k for k, p in zip(b["keys"], b["is_pad"].tolist()) if not p)
    return out


def _bounded(fn, limit_s: float):
    """Run ``fn`` in a thread; fail the test (not a performance claim) if it has not returned in ``limit_s``."""
    box: dict = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the test
            box["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(limit_s)
    assert not t.is_alive(), f"still running after {limit_s}s: the read was not bounded"
    if "error" in box:
        raise box["error"]
    return box.get("value")


def test_backoff_is_full_jitter_and_capped():
    import random

    rng = random.Random(0)
    draws = [backoff_delay(k, 0.1, 1.0, rng) for k in (1, 2, 3, 4, 5, 6) for _ in range(200)]
    caps = [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    for i, cap in enumerate(caps):
        chunk = draws[200 * i : 200 * (i + 1)]
        assert 0 <= min(chunk) and max(chunk) <= cap
        assert max(chunk) > 0.8 * cap  # spread over the whole interval, not a constant


def test_budget_gives_up_on_deadline_and_a_success_ends_the_streak():
    now = [0.0]
    waits: list[float] = []

    def sleep(s):
        waits.append(s)
        now[0] += s

    def fail():
        now[0] += 1.0  # each failed request takes 1 s
        raise ConnectionResetError("reset")

    b = RetryBudget("s3://b/x.tar", retries=100, deadline=5.0, transient=lambda e: True, base_delay=0.5,
                    max_delay=0.5, clock=lambda: now[0], sleep=sleep)  # fmt: skip
    with pytest.raises(ShardUnavailableError, match=r"gave up reading s3://b/x\.tar \(bytes\).*deadline 5s"):
        b.run(fail, "bytes")
    assert now[0] <= 5.0 + 1.0  # the deadline plus the request in flight
    assert b.attempts == len(waits) + 1
    # retries in a row are bounded too, and a success resets the streak
    calls = iter(
        [ConnectionResetError("a"), "ok", ConnectionResetError("b"), ConnectionResetError("c"), "ok2"]
    )

    def flaky():
        v = next(calls)
        if isinstance(v, BaseException):
            raise v
        return v

    b = RetryBudget(
        "u", retries=2, deadline=100.0, transient=lambda e: True, clock=lambda: now[0], sleep=sleep
    )
    assert b.run(flaky, "x") == "ok" and b.run(flaky, "x") == "ok2"
    assert b.total_retries == 3
    b2 = RetryBudget(
        "u", retries=1, deadline=100.0, transient=lambda e: True, clock=lambda: now[0], sleep=sleep
    )
    with pytest.raises(ShardUnavailableError, match="1 retries exhausted"):
        b2.run(fail, "x")
    assert b2.attempts == 2
    # permanent errors pass through untouched, not retried
    b3 = RetryBudget("u", retries=5, deadline=100.0, transient=lambda e: not isinstance(e, PermissionError))
    with pytest.raises(PermissionError):
        b3.run(lambda: (_ for _ in ()).throw(PermissionError("no")), "x")
    assert b3.attempts == 1


@pytest.mark.timeout(120)
def test_503_is_retried_by_one_layer_only(s3_split, s3_server):
    """4 attempts with retries=3: botocore and s3fs do not retry underneath (before: 5 x 5 x ours)."""
    root, _ = s3_split
    url = f"{root}/train/train-000001.tar"
    proxy = FaultProxy(s3_server, lambda m, p: "503" if p.endswith("train-000001.tar") else None)
    try:
        storage = sfs.StorageOptions(endpoint_url=proxy.url, deadline=60.0, request_timeout=5.0)
        with pytest.raises(
            ShardUnavailableError, match=rf"{url} \(stat\).*4 failed attempts.*3 retries exhausted"
        ):
            _bounded(lambda: RangeReader(url, storage, retries=3), 60)
    finally:
        proxy.close()
    assert proxy.hits("train-000001.tar") == 4, proxy.requests


@pytest.mark.timeout(120)
def test_dead_shard_becomes_missing_shard_within_deadline_or_raises_naming_it(
    s3_split, s3_server, tokenizer, caplog
):
    root, specs = s3_split
    dead = f"{root}/train/train-000001.tar"
    proxy = FaultProxy(s3_server, lambda m, p: "503" if p.endswith("train-000001.tar") else None)
    try:
        storage = sfs.StorageOptions(endpoint_url=proxy.url, deadline=2.0, request_timeout=5.0)
        cfg = _cfg(root, storage=storage, retries=1000)
        with caplog.at_level(logging.WARNING, logger="shards.reader"):
            loader = build_loader(cfg, rank=0, world_size=1, tokenizer=tokenizer)
            keys = _bounded(lambda: _real_keys(loader), 60)
        assert loader.stats()["missing_shard"] == 1
        assert keys == Counter(s.key for s in specs if s.shard != 1)
        assert any(dead in r.getMessage() and "deadline 2s" in r.getMessage() for r in caplog.records)
        assert 2 <= proxy.hits("train-000001.tar") < 1000  # retried, then given up by the deadline
        raising = build_loader(
            _cfg(root, storage=storage, on_error="raise"), rank=0, world_size=1, tokenizer=tokenizer
        )
        with pytest.raises(ShardDataError, match=f"missing_shard: shard {dead}: gave up reading {dead}"):
            _bounded(lambda: list(raising), 60)
    finally:
        proxy.close()


@pytest.mark.timeout(120)
def test_connections_cut_mid_body_are_resumed_exactly(s3_split, s3_server, tokenizer):
    root, specs = s3_split
    cuts = {"left": 3}

    def fault(method, path):
        if method == "GET" and path.endswith(".tar") and cuts["left"] > 0:
            cuts["left"] -= 1
            return "cut"
        return None

    proxy = FaultProxy(s3_server, fault, cut_bytes=1500)
    try:
        storage = sfs.StorageOptions(endpoint_url=proxy.url, deadline=20.0, request_timeout=5.0)
        loader = build_loader(_cfg(root, storage=storage, read_block_size=4096), rank=0, world_size=1,
                              tokenizer=tokenizer)  # fmt: skip
        keys = _bounded(lambda: _real_keys(loader), 60)
    finally:
        proxy.close()
    assert proxy.faults["cut"] == 3
    assert keys == Counter(s.key for s in specs)
    assert loader.stats()["missing_shard"] == 0 and loader.stats()["read_error"] == 0


@pytest.mark.timeout(120)
def test_stalled_body_times_out_and_is_given_up(s3_split, s3_server):
    root, _ = s3_split
    url = f"{root}/train/train-000002.tar"
    proxy = FaultProxy(s3_server, lambda m, p: "stall" if m == "GET" and p.endswith("000002.tar") else None,
                       cut_bytes=600, stall_s=60)  # fmt: skip
    try:
        storage = sfs.StorageOptions(endpoint_url=proxy.url, deadline=3.0, request_timeout=1.0)

        def read():
            with RangeReader(url, storage, retries=50, block_size=1 << 20) as f:
                return f.read()

        with pytest.raises(ShardUnavailableError, match=rf"gave up reading {url} \(bytes 0-.*deadline 3s"):
            _bounded(read, 45)
    finally:
        proxy.close()
    assert proxy.faults["stall"] >= 2  # timed out and retried before giving up


@pytest.mark.timeout(120)
def test_sizes_json_errors_name_the_url(s3_split, s3_server, tokenizer):
    root, _ = s3_split
    sizes = f"{root}/train/sizes.json"
    proxy = FaultProxy(s3_server, lambda m, p: "503" if p.endswith("sizes.json") else None)
    try:
        storage = sfs.StorageOptions(endpoint_url=proxy.url, deadline=1.5, request_timeout=5.0)
        with pytest.raises(ShardUnavailableError, match=f"gave up reading {sizes}"):
            _bounded(
                lambda: build_loader(_cfg(root, storage=storage), rank=0, world_size=1, tokenizer=tokenizer),
                30,
            )
    finally:
        proxy.close()
    sfs.remove(sizes)
    with pytest.raises(FileNotFoundError, match=f"index file not found: {sizes}"):
        build_loader(_cfg(root), rank=0, world_size=1, tokenizer=tokenizer)


def test_brace_pattern_urls_on_s3(s3_split, tokenizer):
    root, specs = s3_split
    pattern = f"{root}/train/train-{{000000..000002}}.tar"
    assert sfs.expand_urls(pattern) == [f"{root}/train/train-{i:06d}.tar" for i in range(3)]
    loader = build_loader(_cfg(None, urls=[pattern]), rank=0, world_size=1, tokenizer=tokenizer)
    assert loader.urls == sfs.expand_urls(pattern)
    assert _real_keys(loader) == Counter(s.key for s in specs)
    only = build_loader(_cfg(None, urls=f"{root}/train/train-{{000000,000002}}.tar"), rank=0, world_size=1,
                        tokenizer=tokenizer)  # fmt: skip
    assert _real_keys(only) == Counter(s.key for s in specs if s.shard != 1)


@pytest.mark.timeout(120)
def test_http_shard_folder_epoch_exactly_once(tmp_path, tokenizer):
    specs = write_split(str(tmp_path), "train", SIZES)
    server = RangeHTTPServer(str(tmp_path))
    try:
        pattern = f"{server.url}/train/train-{{000000..000002}}.tar"
        for workers in (0, 2):
            cfg = _cfg(None, urls=[pattern], num_workers=workers, shuffle=True, shuffle_buffer=4,
                       caption_mode="random", read_block_size=2048)  # fmt: skip
            loader = build_loader(cfg, rank=0, world_size=1, tokenizer=tokenizer)
            batches = list(loader)
            assert [b["sample_index"].tolist() for b in batches] == [
                [u.uid for u in b] for b in loader.plan().rank_batches(0)
            ]
            real = Counter(k for b in batches for k, p in zip(b["keys"], b["is_pad"].tolist()) if not p)
            assert real == Counter(s.key for s in specs)
            assert loader.stats()["missing_shard"] == 0
        with pytest.raises(ValueError, match=r"train-000009\.tar is not listed in .*/train/sizes\.json"):
            build_loader(_cfg(None, urls=[f"{server.url}/train/train-000009.tar"]), rank=0, world_size=1,
                         tokenizer=tokenizer)  # fmt: skip
    finally:
        server.close()
