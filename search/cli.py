"""``nr-index`` (checkpoint + split -> index folder) and ``nr-search`` (query an index; ``serve`` for HTTP).

nr-index --run runs/msrvtt --split test --out runs/msrvtt/index [--bank train]
accelerate launch --num_processes 2 -m search.cli index --run runs/msrvtt --split test --out idx
nr-search --index runs/msrvtt/index --query "a dog catches a frisbee" [--k 5 --hubness qb --json]
nr-search serve --index runs/msrvtt/index --port 8000
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
from typing import Any

from search.options import IndexOptions, OptionError, SearchOptions, ServeOptions, parse_options

__all__ = ["index_main", "search_main", "main", "load_checkpoint_model"]

logger = logging.getLogger(__name__)


def _err(prog: str, msg: str) -> int:
    print(f"{prog}: {msg}", file=sys.stderr)  # noqa: T201 - CLI output
    return 2


def load_checkpoint_model(ckpt: str, config: str | None = None) -> tuple[Any, Any]:
    """(TrainConfig, NeighborRetrModel in eval mode) of a checkpoint, weights loaded ``weights_only``."""
    from training.config import load_config
    from training.score import load_model

    if config is None:
        folder = ckpt if os.path.isdir(ckpt) else os.path.dirname(ckpt)
        config = os.path.join(folder, "config.yaml")
        if not os.path.isfile(config):
            raise FileNotFoundError(f"no config.yaml next to {ckpt!r}; pass --config")
    cfg = load_config(config, [])
    return cfg, load_model(cfg, ckpt).eval()


def index_main(argv: list[str] | None = None) -> int:
    """nr-index: encode a split's videos into an index folder (resumable; ranks write disjoint parts)."""
    import torch

    from search import index as sindex
    from shards.reader import LoaderConfig, build_loader, resolve_shards
    from training.config import ConfigError, loader_config, resolve_similarity, split_url
    from training.score import _location, resolve_checkpoint

    prog = "nr-index"
    try:
        o = parse_options(IndexOptions, list(sys.argv[1:] if argv is None else argv), prog)
        if not o.out:
            raise OptionError("--out is required")
        if (o.run is None) == (o.checkpoint is None):
            raise OptionError("give exactly one of --run or --checkpoint")
        if o.dtype not in ("float16", "float32"):
            raise OptionError(f"--dtype {o.dtype!r}: expected float16 or float32")
        if o.ann not in ("auto", "usearch", "none"):
            raise OptionError(f"--ann {o.ann!r}: expected auto, usearch or none")
        ckpt = resolve_checkpoint(o.run, o.checkpoint)
        cfg, model = load_checkpoint_model(ckpt, o.config)
        if o.batch_size is not None:
            cfg.data.eval_batch_size = o.batch_size
        url = split_url(cfg.data, _location(cfg, o.split))
        shards, sizes, _ = resolve_shards(
            LoaderConfig(
                urls=None,
                root=os.path.dirname(url.rstrip("/")) or ".",
                split=os.path.basename(url.rstrip("/")),
                storage=cfg.data.storage,
                caption_mode="first",
            )
        )
        bank_url = split_url(cfg.data, _location(cfg, o.bank)) if o.bank else None
    except (OptionError, ConfigError, FileNotFoundError, ValueError) as e:
        return _err(prog, str(e))
    from training.logging_utils import setup_logging

    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    setup_logging("INFO", rank=rank)
    torch.manual_seed(0)
    similarity = resolve_similarity(cfg)
    storage = cfg.data.storage
    base = loader_config(cfg, url, purpose="eval", world_size=1, caption_mode="first")

    def make_loader(shard: str) -> Any:
        lc = dataclasses.replace(base, urls=[shard], root=None, split=None, num_workers=0)
        return build_loader(lc, rank=0, world_size=1)

    ckpt_sha = sindex.checkpoint_hash(ckpt)
    try:
        sources = sindex.part_sources(
            shards, checkpoint_sha256=ckpt_sha, dtype=o.dtype, similarity=similarity, storage=storage
        )
        report = sindex.build_index(
            out=o.out, shard_urls=shards, make_loader=make_loader, model=model, similarity=similarity,
            dtype=o.dtype, rank=rank, world=world, storage=storage, sources=sources, overwrite=o.overwrite,
            progress=lambda m: print(f"nr-index: {m}", flush=True) if rank == 0 else None,  # noqa: T201
        )  # fmt: skip
    except sindex.IndexError_ as e:
        return _err(prog, str(e))
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("gloo")
        dist.barrier()
    if rank != 0:
        return 0
    info = {
        "checkpoint": os.path.abspath(ckpt),
        "checkpoint_sha256": ckpt_sha,
        "config": json.loads(json.dumps(dataclasses.asdict(cfg), default=str)),
        "source": {"split": url, "shards": [s.rsplit("/", 1)[-1] for s in shards], "sizes": sizes},
        "dtype": o.dtype,
        "similarity": similarity,
        "max_words": cfg.model.max_words,
        "bank": None,
    }
    if bank_url is not None:
        info["bank"] = _build_bank(cfg, model, bank_url, o.out, storage, similarity, len(shards))
    info["ann"] = _build_ann(o.ann, o.out, len(shards), storage)
    m = sindex.write_manifest(o.out, n_parts=len(shards), info=info, storage=storage, sources=sources)
    print(f"nr-index: {m['videos']} videos in {len(m['parts'])} parts -> {o.out} "  # noqa: T201
          f"({report.parts_written} written, {report.parts_skipped} kept, {report.seconds:.1f} s)")  # fmt: skip
    return 0


def _build_bank(
    cfg: Any, model: Any, bank_url: str, out: str, storage: Any, similarity: str, n_parts: int
) -> dict:
    """Score every caption of the bank split against the index (``bank.npy``); returns its manifest entry."""
    import numpy as np

    from search import index as sindex
    from search.engine import QueryEncoder, rerank_scores
    from shards.reader import build_loader
    from training.config import loader_config

    sindex.write_manifest(out, n_parts=n_parts, info={"similarity": similarity}, storage=storage)
    ix = sindex.open_index(out, storage)
    enc = QueryEncoder(model, cfg.model.max_words, similarity)
    lc = dataclasses.replace(
        loader_config(cfg, bank_url, purpose="eval", world_size=1, caption_mode="all"), num_workers=0
    )
    rows = []
    for batch in build_loader(lc, rank=0, world_size=1):
        keep = ~batch["is_pad"].bool()
        t = enc.encode_ids(batch["text_ids"][keep], batch["text_mask"][keep])
        full = np.empty((t[0].shape[0], ix.size), dtype=np.float32)
        for a in range(0, ix.size, 4096):
            r = np.arange(a, min(a + 4096, ix.size))
            full[:, r] = rerank_scores(similarity, t[0], t[1], t[2], *ix.tokens(r)).numpy()
        rows.append(full)
    bank = np.concatenate(rows)
    sindex.save_bank(out, bank, storage)
    return {"split": bank_url, "queries": int(bank.shape[0])}


def _build_ann(mode: str, out: str, n_parts: int, storage: Any) -> dict | None:
    """The first-stage graph (:mod:`search.ann`) for ``--ann`` auto | usearch | none; its manifest entry."""
    from search import ann as sann
    from search import index as sindex

    if mode == "none":
        return None
    # a remote index is read from the download cache (filled by _build_bank when there is a bank)
    blocks = sindex.part_globals(out, n_parts, storage)
    videos = sum(b.shape[0] for b in blocks)
    if mode == "auto" and videos < sann.AUTO_MIN_VIDEOS:
        return None
    print(f"nr-index: building the first-stage graph over {videos} videos", flush=True)  # noqa: T201
    return sann.build_ann(out, blocks, storage)


def _print_hits(queries: list[str], hits: list[list[Any]], as_json: bool, index_root: str) -> None:
    from search import index as sindex  # noqa: F401 - thumbnails are named by row

    if as_json:
        out = [
            {"query": q, "results": [dict(dataclasses.asdict(h), thumbnail=f"thumb/{h.row}") for h in hs]}
            for q, hs in zip(queries, hits, strict=True)
        ]
        print(json.dumps(out, indent=1, ensure_ascii=False))  # noqa: T201 - CLI output
        return
    for q, hs in zip(queries, hits, strict=True):
        print(f"query: {q}")  # noqa: T201 - CLI output
        for i, h in enumerate(hs, 1):
            cap = h.captions[0] if h.captions else ""
            print(f"  {i:3d}  {h.score:9.4f}  {h.key:24s}  {cap}  [thumb/{h.row}]")  # noqa: T201


def open_searcher(index: str, checkpoint: str | None, cache_dir: str | None, ann: str = "auto") -> Any:
    """A :class:`search.engine.Searcher` over ``index`` with the text encoder of ``checkpoint`` (default: the one
    the manifest names). The checkpoint's sha256 must be the manifest's: a text encoder from another checkpoint
    (e.g. ``RUN/best`` overwritten by later training) would rank the stored video embeddings meaninglessly."""
    from search.engine import QueryEncoder, Searcher
    from search.index import IndexError_, checkpoint_hash, open_index

    ix = open_index(index, None, cache_dir)
    ckpt = checkpoint or ix.manifest.get("checkpoint")
    if not ckpt or not os.path.exists(ckpt):
        raise FileNotFoundError(f"checkpoint {ckpt!r} of the index not found; pass --checkpoint")
    want, have = ix.manifest.get("checkpoint_sha256"), checkpoint_hash(ckpt)
    if have != want:
        raise IndexError_(
            f"checkpoint {ckpt}: sha256 {have[:16]}... is not the {str(want)[:16]}... the index was built with "
            "(pass that checkpoint with --checkpoint, or rebuild the index with nr-index --overwrite)"
        )
    cfg, model = load_checkpoint_model(ckpt)
    enc = QueryEncoder(model, int(ix.manifest["max_words"]), str(ix.manifest["similarity"]))
    return Searcher(ix, enc, ann=ann)


def search_main(argv: list[str] | None = None) -> int:
    """nr-search: top-k videos for text queries (``serve`` as first argument: the HTTP server)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["serve"]:
        return serve_main(args[1:])
    prog = "nr-search"
    from search.index import IndexError_

    try:
        o = parse_options(SearchOptions, args, prog)
        if not o.index:
            raise OptionError("--index is required")
        if (o.query is None) == (o.queries is None):
            raise OptionError("give exactly one of --query or --queries")
        if not 1 <= o.k <= 1000:
            raise OptionError(f"--k {o.k}: must be in 1..1000")
        if o.candidates < 1:
            raise OptionError(f"--candidates {o.candidates}: must be >= 1")
        if o.hubness not in ("none", "qb", "is"):
            raise OptionError(f"--hubness {o.hubness!r}: expected none, qb or is")
        if o.queries is not None:
            with open(o.queries, encoding="utf-8") as f:
                queries = [line.strip() for line in f if line.strip()]
            if not queries:
                raise OptionError(f"--queries {o.queries}: no non-empty line")
        else:
            queries = [o.query.strip()]
            if not queries[0]:
                raise OptionError("--query is empty")
        if o.ann not in ("auto", "exact", "usearch"):
            raise OptionError(f"--ann {o.ann!r}: expected auto, exact or usearch")
        s = open_searcher(o.index, o.checkpoint, o.cache_dir, o.ann)
        if o.hubness != "none" and s.index.bank is None:
            raise OptionError(f"--hubness {o.hubness}: the index has no query bank (nr-index --bank SPLIT)")
        hits = s.search(queries, k=o.k, candidates=o.candidates, hubness=o.hubness, beta=o.beta, qb_k=o.qb_k)
    except (OptionError, IndexError_, FileNotFoundError, UnicodeDecodeError, ValueError) as e:
        return _err(prog, str(e))
    _print_hits(queries, hits, o.json, o.index)
    return 0


def serve_main(argv: list[str]) -> int:
    """nr-search serve: the HTTP API and page (uvicorn)."""
    prog = "nr-search serve"
    from search.index import IndexError_

    try:
        o = parse_options(ServeOptions, argv, prog)
        if not o.index:
            raise OptionError("--index is required")
        if o.ann not in ("auto", "exact", "usearch"):
            raise OptionError(f"--ann {o.ann!r}: expected auto, exact or usearch")
        s = open_searcher(o.index, o.checkpoint, o.cache_dir, o.ann)
    except (OptionError, IndexError_, FileNotFoundError, ValueError) as e:
        return _err(prog, str(e))
    import uvicorn

    from search.server import create_app

    uvicorn.run(
        create_app(s, candidates=o.candidates, hubness=o.hubness),
        host=o.host,
        port=o.port,
        log_level="warning",
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m search.cli index ...`` | ``search ...`` | ``serve ...`` (for accelerate launch)."""
    args = list(sys.argv[1:] if argv is None else argv)
    cmd, rest = (args[0], args[1:]) if args else ("", [])
    if cmd == "index":
        return index_main(rest)
    if cmd == "search":
        return search_main(rest)
    if cmd == "serve":
        return serve_main(rest)
    return _err("search.cli", "first argument must be index, search or serve")


if __name__ == "__main__":
    raise SystemExit(main())
