"""search/: index build + resume, brute-force and eval consistency, QB-Norm, S3, HTTP API, headless page."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from train_fixtures import FRAME_SIZE, REPO, tiny_config_text, write_dataset

_EXTRA = {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO, "ACCELERATE_USE_CPU": "1"}


def _env() -> dict[str, str]:
    return {**os.environ, **_EXTRA}


def _cli(args: list[str], timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run([sys.executable, "-m", "search.cli", *args], cwd=REPO, env=_env(), capture_output=True,
                       text=True, timeout=timeout)  # fmt: skip
    if check and p.returncode != 0:
        raise AssertionError(f"{args} failed ({p.returncode}):\n{p.stdout[-2000:]}\n{p.stderr[-4000:]}")
    return p


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """An untrained tiny checkpoint (seeded) on the synthetic shards: folder with weights + config.yaml."""
    from training.config import load_config
    from training.model import NeighborRetrModel

    root = tmp_path_factory.mktemp("search")
    data = write_dataset(str(root / "data"), n_test=30, shard_size=8)
    cfg_path = root / "config.yaml"
    cfg_path.write_text(
        tiny_config_text(data, str(root / "run")).replace(
            "arch: nr-tiny", f"arch: nr-tiny\n  image_size: {FRAME_SIZE}"
        )
    )
    cfg = load_config(str(cfg_path), [])
    torch.manual_seed(0)
    model = NeighborRetrModel(dataclasses.replace(cfg.model, pretrained=None))
    folder = root / "best"
    folder.mkdir()
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    shutil.copy(cfg_path, folder / "config.yaml")
    return {"root": root, "ckpt": str(folder), "data": data}


@pytest.fixture(scope="module")
def built(ckpt):
    out = ckpt["root"] / "index32"
    _cli(["index", "--checkpoint", ckpt["ckpt"], "--split", "test", "--out", str(out), "--dtype", "float32",
          "--bank", "train"])  # fmt: skip
    return out


def _searcher(path, ckpt_dir):
    from search.cli import open_searcher

    return open_searcher(str(path), ckpt_dir, None)


def _files(folder) -> dict[str, bytes]:
    return {
        os.path.relpath(os.path.join(d, f), folder): open(os.path.join(d, f), "rb").read()
        for d, _, fs in os.walk(folder)
        for f in fs
    }


def test_index_has_manifest_parts_thumbnails(built, ckpt):
    m = json.loads((built / "manifest.json").read_text())
    assert m["format_version"] == 2 and m["videos"] == 30 and m["dtype"] == "float32"
    assert [p["videos"] for p in m["parts"]] == [8, 8, 8, 6]
    # every part names what it was built from (these fixture shards have no shardindex.json: md5 None, size read)
    shards = sorted((Path(ckpt["data"]) / "test").glob("*.tar"))
    assert [p["source"] for p in m["parts"]] == [
        {"checkpoint_sha256": m["checkpoint_sha256"], "dtype": "float32", "similarity": "local",
         "shard": t.name, "shard_md5": None, "shard_bytes": t.stat().st_size}
        for t in shards
    ]  # fmt: skip
    assert m["source"]["sizes"] == [8, 8, 8, 6] and m["bank"]["queries"] == 48
    assert len(m["checkpoint_sha256"]) == 64 and m["config"]["model"]["arch"] == "nr-tiny"
    assert m["ann"] is None and not (built / "ann.usearch").exists()  # ann=auto: 30 videos < AUTO_MIN_VIDEOS
    s = _searcher(built, ckpt["ckpt"])
    ix = s.index
    assert ix.size == 30 and len(set(ix.keys)) == 30 and all(len(c) == 2 for c in ix.captions)
    th = ix.thumbnail(3)
    assert th.dtype == np.uint8 and th.shape == (32, 32, 3) and th.std() > 0
    assert ix.bank.shape == (48, 30)


def test_read_rows_equals_indexing_the_mapping(built, tmp_path):
    """pread-based row reads (runs of consecutive rows, single rows, blocks) equal numpy's indexing of the same
    memmap; a truncated part is a named error, not garbage rows."""
    from search.index import IndexError_, _mmap_safetensors, read_block, read_rows

    mm = _mmap_safetensors(str(built / "parts" / "part-00001.safetensors"))
    rows = np.array([0, 1, 2, 5, 7])
    for name in ("tokens", "mask", "weights", "global", "thumbs"):
        np.testing.assert_array_equal(read_rows(mm[name], rows), np.asarray(mm[name])[rows])
        np.testing.assert_array_equal(read_block(mm[name], 3, 100), np.asarray(mm[name])[3:])
    path = tmp_path / "rows.bin"
    np.arange(40, dtype=np.float32).tofile(path)
    arr = np.memmap(str(path), dtype=np.float32, mode="r", offset=8, shape=(9, 4))
    os.truncate(path, 8 + 4 * 4 * 8 + 6)  # the file loses most of row 8 under the reader
    np.testing.assert_array_equal(read_rows(arr, np.array([1, 2])), np.arange(2, 38).reshape(9, 4)[[1, 2]])
    with pytest.raises(IndexError_, match=r"rows.bin: short read \(6 of 16 bytes\)"):
        read_rows(arr, np.array([8]))


def test_search_equals_brute_force_wti(built, ckpt):
    """Exhaustive and two-stage (K = G) results equal a brute-force score_local over the whole index."""
    from training.similarity import score_local

    s = _searcher(built, ckpt["ckpt"])
    ix = s.index
    queries = ["red circle moving left", "a blue square", "green"]
    t = s.encoder.encode(queries)
    tok, msk, w = ix.tokens(np.arange(ix.size))
    ref = score_local(t[0], t[1], t[2], tok, msk, w).numpy()
    for cand in (ix.size, ix.size - 1):
        hits = s.search(queries, k=5, candidates=cand)
        for q in range(3):
            order = np.argsort(-ref[q], kind="stable")[:5]
            if cand == ix.size:
                assert [h.row for h in hits[q]] == order.tolist()
            np.testing.assert_allclose(
                [h.score for h in hits[q]], ref[q][[h.row for h in hits[q]]], rtol=1e-6
            )


def test_exhaustive_search_reproduces_eval_ranks(built, ckpt, tmp_path):
    """Scores of the split's own captions against the float32 index = training.score's -> same R@1/R@5."""
    from eval.evaluate import evaluate
    from eval.scores_io import load_scores
    from shards.reader import build_loader
    from training.config import load_config, loader_config

    out = tmp_path / "s.npz"
    subprocess.run([sys.executable, "-m", "training.score", "--checkpoint", ckpt["ckpt"], "--split", "test",
                    "--out", str(out)], cwd=REPO, env=_env(), check=True, capture_output=True, timeout=300)  # fmt: skip
    ref = load_scores(str(out))
    s = _searcher(built, ckpt["ckpt"])
    cfg = load_config(os.path.join(ckpt["ckpt"], "config.yaml"), [])
    lc = dataclasses.replace(loader_config(cfg, ckpt["data"] + "/test", purpose="eval", world_size=1,
                                           caption_mode="all"), num_workers=0)  # fmt: skip
    qids, parts = [], []
    for batch in build_loader(lc, rank=0, world_size=1):
        keep = ~batch["is_pad"].bool()
        enc = s.encoder.encode_ids(batch["text_ids"][keep], batch["text_mask"][keep])
        parts.append(s.exhaustive_scores(enc[0], enc[1], enc[2]))
        qids += [f"{k}#{int(c):03d}" for k, c, kp in zip(batch["keys"], batch["caption_index"], keep) if kp]
    mine = np.concatenate(parts)
    order = np.argsort(qids)
    cols = [s.index.keys.index(g) for g in ref.gallery_ids]
    mine = mine[order][:, cols]
    assert sorted(qids) == list(ref.query_ids)
    np.testing.assert_array_equal(mine, ref.scores)
    from eval.scores_io import ScoreSet

    ss = ScoreSet.from_arrays(mine, list(ref.query_ids), list(ref.gallery_ids), relevance=ref.relevance)
    a, b = evaluate(ss, ks=(1, 5), prefix="t"), evaluate(ref, ks=(1, 5), prefix="t")
    for key in ("t/t2v/R@1", "t/t2v/R@5"):
        assert a[key] == b[key]


def test_qb_norm_and_inverted_softmax_equal_eval_posthoc(built, ckpt):
    from eval import posthoc
    from training.similarity import score_local

    s = _searcher(built, ckpt["ckpt"])
    ix = s.index
    queries = ["red circle", "blue square moving up"]
    t = s.encoder.encode(queries)
    full = score_local(t[0], t[1], t[2], *ix.tokens(np.arange(ix.size))).numpy()
    bank = np.asarray(ix.bank)
    for hub, fn in (("qb", posthoc.qb_norm), ("is", posthoc.inverted_softmax)):
        ref = fn(full, bank, beta=20.0)
        for cand in (ix.size, ix.size - 1):
            hits = s.search(queries, k=4, candidates=cand, hubness=hub)
            for q in range(2):
                np.testing.assert_allclose(
                    [h.score for h in hits[q]], ref[q][[h.row for h in hits[q]]], rtol=1e-9
                )
                if cand == ix.size:
                    assert [h.row for h in hits[q]] == np.argsort(-ref[q], kind="stable")[:4].tolist()


def test_stored_graph_first_stage(ckpt):
    """nr-index --ann usearch stores the graph; searching through it (auto) gives the exact stage's hits, and
    --ann exact ignores it; a graph of the wrong size is an error, not a partial search."""
    from search.ann import open_ann

    out = ckpt["root"] / "ann16"
    _cli(["index", "--checkpoint", ckpt["ckpt"], "--split", "test", "--out", str(out), "--ann", "usearch"])
    m = json.loads((out / "manifest.json").read_text())
    assert m["ann"] == {"kind": "usearch", "file": "ann.usearch", "videos": 30, "metric": "cos", "dtype": "f16",
                        "connectivity": 16, "expansion_add": 128}  # fmt: skip
    assert len(open_ann(str(out / "ann.usearch"), 30)) == 30
    from search.cli import open_searcher

    with_graph, exact = (
        open_searcher(str(out), ckpt["ckpt"], None),
        open_searcher(str(out), ckpt["ckpt"], None, "exact"),
    )
    assert with_graph._ann is not None and exact._ann is None
    queries = ["red circle moving left", "a blue square", "green"]
    g = with_graph.encoder.encode(queries)[3].numpy()
    # 30 vectors, ef 256: the graph search visits every node, so its candidates are the exact top-K
    np.testing.assert_array_equal(np.sort(with_graph.candidates(g, 10)), np.sort(exact.candidates(g, 10)))
    a, b = with_graph.search(queries, k=5, candidates=10), exact.search(queries, k=5, candidates=10)
    assert [[h.row for h in q] for q in a] == [[h.row for h in q] for q in b]
    with pytest.raises(ValueError, match="the graph holds 30 vectors, the index 31 videos"):
        open_ann(str(out / "ann.usearch"), 31)


def test_resume_after_kill9_gives_same_bytes(built, ckpt):
    """kill -9 once the first part is published; the resumed build equals an uninterrupted one byte for byte."""
    ref = ckpt["root"] / "ref16"
    _cli(["index", "--checkpoint", ckpt["ckpt"], "--split", "test", "--out", str(ref)])
    out = ckpt["root"] / "killed16"
    proc = subprocess.Popen([sys.executable, "-m", "search.cli", "index", "--checkpoint", ckpt["ckpt"], "--split",
                             "test", "--out", str(out)], cwd=REPO, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 200
    while not (out / "parts" / "part-00000.safetensors").exists() and proc.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "manifest.json").exists()
    r = _cli(["index", "--checkpoint", ckpt["ckpt"], "--split", "test", "--out", str(out)])
    assert "kept" in r.stdout
    a, b = _files(ref), {k: v for k, v in _files(out).items() if not os.path.basename(k).startswith(".tmp")}
    assert a.keys() == b.keys() and all(a[k] == b[k] for k in a)


def test_two_ranks_write_disjoint_parts(ckpt):
    from train_fixtures import _free_port

    out = ckpt["root"] / "dist"
    ref = ckpt["root"] / "single"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
           str(_free_port()), "-m", "search.cli", "index", "--checkpoint", ckpt["ckpt"], "--split", "test",
           "--out", str(out)]  # fmt: skip
    p = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=400)
    assert p.returncode == 0, p.stderr[-4000:]
    _cli(["index", "--checkpoint", ckpt["ckpt"], "--split", "test", "--out", str(ref)])
    assert _files(out) == _files(ref)


def test_index_on_s3(ckpt, s3_bucket, s3_server):
    import fsspec

    url = f"{s3_bucket}/idx"
    _cli(["index", "--checkpoint", ckpt["ckpt"], "--split", "test", "--out", url, "--ann", "usearch"])
    s = _searcher(url, ckpt["ckpt"])
    assert s._ann is not None and os.path.exists(os.path.join(s.index.local, "ann.usearch"))  # downloaded
    local = ckpt["root"] / "local16"
    if not local.exists():
        _cli(["index", "--checkpoint", ckpt["ckpt"], "--split", "test", "--out", str(local)])
    fs = fsspec.filesystem("s3")
    assert (
        fs.cat(f"{url}/parts/part-00001.safetensors") == (local / "parts/part-00001.safetensors").read_bytes()
    )
    assert s.index.size == 30 and s.search(["red"], k=3)[0][0].key in s.index.keys


def _second_checkpoint(ckpt) -> str:
    """The fixture's checkpoint with every weight moved a little (another 'training run'), in its own folder."""
    folder = ckpt["root"] / "best2"
    if not folder.exists():
        state = torch.load(os.path.join(ckpt["ckpt"], "pytorch_model.bin"), weights_only=True)
        g = torch.Generator().manual_seed(1)
        state = {k: v + 0.05 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v
                 for k, v in state.items()}  # fmt: skip
        folder.mkdir()
        torch.save(state, folder / "pytorch_model.bin")
        shutil.copy(os.path.join(ckpt["ckpt"], "config.yaml"), folder / "config.yaml")
    return str(folder)


def test_part_source_takes_the_shard_md5_from_shardindex(ckpt, tmp_path):
    import hashlib

    from search.index import part_sources
    from shards.index import build_index as index_split

    split = tmp_path / "test"
    shutil.copytree(Path(ckpt["data"]) / "test", split)
    index_split(str(split))  # nr-shards-index: writes shardindex.json with md5 + size per shard
    tars = sorted(split.glob("*.tar"))
    got = part_sources([str(t) for t in tars], checkpoint_sha256="c" * 64, dtype="float16", similarity="pooled")
    assert got == [
        {"checkpoint_sha256": "c" * 64, "dtype": "float16", "similarity": "pooled", "shard": t.name,
         "shard_md5": hashlib.md5(t.read_bytes()).hexdigest(), "shard_bytes": t.stat().st_size}
        for t in tars
    ]  # fmt: skip


def test_rebuild_in_place_is_never_a_silent_mix(built, ckpt, tmp_path):
    """An existing part built from another checkpoint or dtype is refused on resume (named error, exit 2), not kept
    next to a manifest naming the new checkpoint; a part swapped in after the manifest is refused when opened."""
    from search import index as sindex

    ckpt2 = _second_checkpoint(ckpt)
    out = tmp_path / "idx"
    shutil.copytree(built, out)  # float32 parts of the first checkpoint
    p = _cli(["index", "--checkpoint", ckpt2, "--split", "test", "--out", str(out), "--dtype", "float32"],
             check=False)  # fmt: skip
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "part-00000.safetensors: an existing part built from something else (checkpoint_sha256" in p.stderr
    assert "--overwrite" in p.stderr
    # the same checkpoint at another dtype: the dtype is named
    m = json.loads((out / "manifest.json").read_text())
    want = [dict(q["source"], dtype="float16") for q in m["parts"]]
    with pytest.raises(sindex.IndexError_, match="dtype 'float32' != 'float16'"):
        sindex.build_index(out=str(out), shard_urls=["s"] * 4, make_loader=None, model=None, similarity="local",
                           sources=want)  # fmt: skip
    # a part replaced after the manifest was written (e.g. a half-done rebuild): opening names it
    other = tmp_path / "other"
    _cli(["index", "--checkpoint", ckpt2, "--split", "test", "--out", str(other), "--dtype", "float32"])
    shutil.copy(other / "parts" / "part-00002.safetensors", out / "parts" / "part-00002.safetensors")
    with pytest.raises(sindex.IndexError_, match=r"part-00002.safetensors: not the part the manifest lists"):
        sindex.open_index(str(out))
    # --overwrite re-encodes exactly the parts of the other build and gives a fresh build's bytes
    _cli(["index", "--checkpoint", ckpt2, "--split", "test", "--out", str(out), "--dtype", "float32", "--bank",
          "train", "--overwrite"])  # fmt: skip
    _cli(["index", "--checkpoint", ckpt2, "--split", "test", "--out", str(other), "--dtype", "float32", "--bank",
          "train"])  # fmt: skip
    a, b = _files(out), _files(other)
    assert a.keys() == b.keys() and all(a[k] == b[k] for k in a)


def test_remote_cache_follows_a_rebuild_under_the_same_url(ckpt, s3_bucket, s3_server, tmp_path):
    """A remote index read through a kept download cache is downloaded again after it is rebuilt under the same
    URL (stale cached parts would silently pair old video embeddings with the new text encoder)."""
    import fsspec

    from search import index as sindex

    url, cache = f"{s3_bucket}/idx", tmp_path / "cache"
    _cli(["index", "--checkpoint", ckpt["ckpt"], "--split", "test", "--out", url])
    first = sindex.open_index(url, cache_dir=str(cache))
    part = cache / "parts" / "part-00001.safetensors"
    stamp = part.stat().st_mtime_ns
    again = sindex.open_index(url, cache_dir=str(cache))  # unchanged remote: nothing downloaded again
    assert part.stat().st_mtime_ns == stamp and again.keys == first.keys
    ckpt2 = _second_checkpoint(ckpt)
    _cli(["index", "--checkpoint", ckpt2, "--split", "test", "--out", url, "--overwrite"])
    fresh = sindex.open_index(url, cache_dir=str(cache))
    fs = fsspec.filesystem("s3")
    for name in ["manifest.json"] + [q["file"] for q in fresh.manifest["parts"]]:
        if name != "manifest.json":
            assert (cache / name).read_bytes() == fs.cat(f"{url}/{name}"), name
    assert fresh.manifest["checkpoint_sha256"] == sindex.checkpoint_hash(ckpt2)
    assert not np.array_equal(np.asarray(fresh.global_parts[1]), np.asarray(first.global_parts[1]))


def test_cli_bad_inputs(built, ckpt, tmp_path):
    cases = [
        (["index", "--split", "test", "--out", "x"], "give exactly one of --run or --checkpoint"),
        (["index", "--checkpoint", ckpt["ckpt"], "--out", "x", "--dtype", "int8"], "--dtype 'int8'"),
        (
            ["search", "--index", str(built), "--query", "x", "--k", "1000000000"],
            "--k 1000000000: must be in 1..1000",
        ),
        (["search", "--index", str(built), "--query", "   "], "--query is empty"),
        (["search", "--index", str(tmp_path), "--query", "x"], "no manifest.json"),
        (["search", "--index", str(built), "--query", "x", "--k", "ten"], "invalid int value: 'ten'"),
        (["index", "--checkpoint", ckpt["ckpt"], "--out", "x", "--ann", "faiss"], "--ann 'faiss'"),
        (["search", "--index", str(built), "--query", "x", "--ann", "hnsw"], "--ann 'hnsw'"),
        (
            ["search", "--index", str(built), "--query", "x", "--checkpoint", _second_checkpoint(ckpt)],
            "the index was built with (pass that checkpoint",
        ),
    ]
    for args, msg in cases:
        p = _cli(args, check=False)
        assert p.returncode == 2 and msg in p.stderr and "Traceback" not in p.stderr, (args, p.stderr)
    p = _cli(["search", "--index", str(built), "--query", "red circle", "--k", "3", "--json"])
    out = json.loads(p.stdout)
    assert len(out[0]["results"]) == 3 and out[0]["results"][0]["thumbnail"].startswith("thumb/")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(built, ckpt):
    import httpx

    port = _port()
    proc = subprocess.Popen([sys.executable, "-m", "search.cli", "serve", "--index", str(built), "--port",
                             str(port), "--candidates", "10"], cwd=REPO, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        assert time.monotonic() < deadline, "server did not start"
        try:
            if httpx.get(base + "/api/health", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.2)
    yield base
    proc.terminate()
    proc.wait(30)


def test_api_search_health_info_thumbs(server, built, ckpt):
    import httpx

    assert httpx.get(server + "/api/health").json() == {"status": "ok", "videos": 30}
    info = httpx.get(server + "/api/info").json()
    assert info["videos"] == 30 and "config" not in info
    r = httpx.get(server + "/api/search", params={"q": "red circle", "k": 4}).json()
    ref = _searcher(built, ckpt["ckpt"]).search(["red circle"], k=4, candidates=10)[0]
    assert [h["key"] for h in r["results"]] == [h.key for h in ref]
    t = httpx.get(server + r["results"][0]["thumbnail"])
    assert t.status_code == 200 and t.content[:8] == b"\x89PNG\r\n\x1a\n"
    p = httpx.post(server + "/api/search", json={"q": "red circle", "k": 4}).json()
    assert p["results"] == r["results"]


def test_api_malformed_requests_get_4xx_and_server_keeps_serving(server):
    import httpx

    bad = [
        (httpx.get(server + "/api/search", params={"q": ""}), 400, "q is empty"),
        (httpx.get(server + "/api/search", params={"q": "x", "k": 10**9}), 400, "k must be in 1..100"),
        (httpx.get(server + "/api/search", params={"q": "x", "k": "abc"}), 422, "k must be an integer"),
        (httpx.get(server + "/api/search?q=%FF%FE"), 400, "q is not valid UTF-8"),
        (httpx.post(server + "/api/search", content=b'{"q": "\xff\xfe"}'), 400, "not valid UTF-8"),
        (httpx.post(server + "/api/search", content=b"x" * 20000), 413, "larger than"),
        (httpx.get(server + "/api/search", params={"q": "x" * 501}), 400, "longer than 500"),
        (httpx.get(server + "/thumb/99999"), 404, "no video at row 99999"),
    ]
    for r, code, msg in bad:
        assert r.status_code == code and msg in r.json()["detail"], (r.status_code, r.text)
    for path in ("/thumb/..%2F..%2Fetc%2Fpasswd", "/thumb/%2Fetc%2Fpasswd", "/../../etc/passwd"):
        r = httpx.get(server + path)
        assert 400 <= r.status_code < 500 and b"root:" not in r.content
    # a path-like text is only a text: searched, never opened
    r = httpx.get(server + "/api/search", params={"q": "../../etc/passwd", "k": 2})
    assert r.status_code == 200 and len(r.json()["results"]) == 2
    assert httpx.get(server + "/api/health").status_code == 200


def test_page_in_headless_chromium_with_typed_query(server):
    """Type a query into the page's box through chromium's DevTools protocol; thumbnails appear."""
    websockets = pytest.importorskip("websockets.sync.client")
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("chromium not installed (scripts/setup.sh installs it)")
    import httpx

    port = _port()
    prof = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"chromium-{port}")
    proc = subprocess.Popen([chromium, "--headless=new", "--no-sandbox", "--disable-gpu", f"--user-data-dir={prof}",
                             f"--remote-debugging-port={port}", "about:blank"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            assert time.monotonic() < deadline, "chromium did not start"
            try:
                tabs = httpx.get(f"http://127.0.0.1:{port}/json", timeout=2).json()
                ws_url = next(t["webSocketDebuggerUrl"] for t in tabs if t["type"] == "page")
                break
            except (httpx.TransportError, StopIteration, ValueError):
                time.sleep(0.3)
        with websockets.connect(ws_url, max_size=None, open_timeout=20) as ws:
            n = [0]

            def call(method, **params):
                n[0] += 1
                ws.send(json.dumps({"id": n[0], "method": method, "params": params}))
                while True:
                    msg = json.loads(ws.recv(timeout=30))
                    if msg.get("id") == n[0]:
                        return msg.get("result", {})

            def js(expr):
                return call("Runtime.evaluate", expression=expr, returnByValue=True)["result"].get("value")

            call("Page.navigate", url=server + "/")
            for _ in range(100):
                if js("document.readyState") == "complete" and js("!!document.getElementById('q')"):
                    break
                time.sleep(0.1)
            js("document.getElementById('q').focus()")
            call("Input.insertText", text="red circle")
            call("Input.dispatchKeyEvent", type="keyDown", key="Enter", code="Enter", windowsVirtualKeyCode=13,
                 text="\r")  # fmt: skip
            call("Input.dispatchKeyEvent", type="keyUp", key="Enter", code="Enter", windowsVirtualKeyCode=13)
            loaded = 0
            for _ in range(200):
                loaded = js(
                    "[...document.querySelectorAll('#grid img')].filter(i => i.complete && i.naturalWidth > 0).length"
                )
                if loaded == 12:
                    break
                time.sleep(0.1)
            assert loaded == 12
            assert js("document.getElementById('status').textContent") == '12 results for "red circle"'
    finally:
        proc.terminate()
        proc.wait(30)
        shutil.rmtree(prof, ignore_errors=True)


def test_exact_candidates_equal_a_numpy_product_over_parts():
    """The exact first stage (usearch's SIMD scan per part + merge) returns the top-k rows of a float64 product
    over the concatenated parts, best first, with row offsets of parts of unequal size (one empty)."""
    from search.engine import exact_candidates

    rng = np.random.default_rng(3)
    sizes = [37, 0, 120, 5]
    parts = [rng.standard_normal((n, 64)).astype(np.float16) for n in sizes]
    offsets = np.cumsum([0] + sizes)[:-1]
    g = rng.standard_normal((4, 64)).astype(np.float16).astype(np.float32)  # fp16-exact: no rounding of the query
    ref = g.astype(np.float64) @ np.concatenate(parts).astype(np.float64).T
    for k in (1, 10, 162, 500):
        got = exact_candidates(parts, offsets, g, k)
        assert got.shape == (4, min(k, 162))
        np.testing.assert_array_equal(got, np.argsort(-ref, axis=1, kind="stable")[:, : min(k, 162)])
