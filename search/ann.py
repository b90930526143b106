"""The approximate first stage: an HNSW graph (usearch) over the index's global embeddings, built once, stored.

The graph is built by ``nr-index`` after every part exists (:func:`build_ann`, rank 0) and written next to the
parts as ``ann.usearch`` (atomic: temp name + rename, or one PUT); the manifest names it with its parameters.
:func:`open_ann` memory-maps it (``view=True``): opening costs milliseconds and the RSS grows only with the graph
pages a query visits, so a 1M-video index opens without re-inserting a million vectors (about 9 minutes on two
cores). The graph is derived data: it is rebuilt from the parts when missing, and with more than one insert
thread its bytes differ between builds (the parts' bytes never do).

usearch (cosine metric, vectors stored as fp16) rather than FAISS: it saves and memory-maps its index from one
file with no pickling, and its exhaustive SIMD scan is the exact first stage too (benchmarks/search.py measures
both).
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import numpy as np

from search.index import read_block
from shards import fs as sfs

__all__ = ["ANN_FILE", "AUTO_MIN_VIDEOS", "StackedRows", "build_usearch", "build_ann", "open_ann"]

ANN_FILE = "ann.usearch"
# ann=auto builds a graph from this many videos. Below it the exact first stage (a SIMD scan of the fp16 global
# embeddings, search.engine.exact_candidates) keeps recall@10 at 1.000 within the 100 ms latency goal: at 1M
# videos it answered in 95.9 ms p50 (recall 1.000), the graph in 18.5 ms with a recall that depends on the build
# (0.993 in that run, 0.983 in an earlier build; benchmarks/search.py, BENCHMARKS.md). The scan grows linearly
# (9.1 / 19.5 / 95.9 ms at 10k / 100k / 1M), so past about 1.5M videos only the graph stays under 100 ms.
AUTO_MIN_VIDEOS = 1_500_000
_PARAMS = {"connectivity": 16, "expansion_add": 128}


class StackedRows:
    """The parts' [n_i, D] blocks as one [G, D] array-like for slicing ``[a:b]`` (nothing concatenated)."""

    def __init__(self, blocks: list[np.ndarray]) -> None:
        self.blocks = blocks
        self.starts = np.cumsum([0] + [b.shape[0] for b in blocks])
        self.shape = (int(self.starts[-1]), int(blocks[0].shape[1]) if blocks else 0)

    def __getitem__(self, sl: slice) -> np.ndarray:
        a, b = sl.start or 0, min(sl.stop if sl.stop is not None else self.shape[0], self.shape[0])
        got = [
            read_block(blk, max(a, lo) - lo, min(b, hi) - lo)
            for blk, lo, hi in zip(self.blocks, self.starts[:-1], self.starts[1:], strict=True)
            if max(a, lo) < min(b, hi)
        ]
        return np.concatenate(got) if got else np.zeros((0, self.shape[1]), np.float32)


def build_usearch(
    emb: Any, connectivity: int = 16, expansion_add: int = 128, expansion_search: int = 256, threads: int = 0
):
    """A usearch HNSW index (cosine, fp16 vectors) over the rows of ``emb`` [G, D] (any array-like: a memmap
    is read block by block); keys are the row numbers. ``threads=0``: all cores."""
    from usearch.index import Index as UIndex

    ix = UIndex(
        ndim=emb.shape[1], metric="cos", dtype="f16", connectivity=connectivity, expansion_add=expansion_add,
        expansion_search=expansion_search,
    )  # fmt: skip
    step = 1 << 16
    for a in range(0, emb.shape[0], step):
        block = np.ascontiguousarray(emb[a : a + step], dtype=np.float32)
        ix.add(np.arange(a, a + block.shape[0], dtype=np.uint64), block, threads=threads)
    return ix


def build_ann(out: str, global_blocks: list[Any], storage: Any = None) -> dict[str, Any]:
    """Build the graph over the concatenated ``global_blocks`` ([n_i, D] each, part order) and write
    ``ann.usearch`` under ``out``; returns the manifest entry ``{"kind", "file", "videos", ...}``."""

    rows = StackedRows(global_blocks)
    graph = build_usearch(rows, **_PARAMS)
    local = not sfs.is_remote(out)
    fd, tmp = tempfile.mkstemp(prefix=".nr-ann-", suffix=".tmp", dir=out if local else None)
    os.close(fd)
    try:
        graph.save(tmp)
        os.chmod(tmp, 0o644)
        sfs.put_file_atomic(tmp, sfs.join(out, ANN_FILE), storage)  # rename locally, one upload remotely
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return {"kind": "usearch", "file": ANN_FILE, "videos": rows.shape[0], "metric": "cos", "dtype": "f16",
            **_PARAMS}  # fmt: skip


def open_ann(path: str, size: int, ef: int = 256):
    """Memory-map a stored graph; ``size`` is the index's video count (a mismatch is an error, not a silent
    partial search)."""
    from usearch.index import Index as UIndex

    graph = UIndex.restore(path, view=True)
    if graph is None:
        raise ValueError(f"{path}: not a usearch index file")
    if len(graph) != size:
        raise ValueError(f"{path}: the graph holds {len(graph)} vectors, the index {size} videos; rebuild it")
    graph.expansion_search = ef
    return graph
