"""Scores files: load, save, validate, and iterate row chunks.

Three on-disk forms are accepted by :func:`load_scores`:

* ``scores.npz`` with ``scores`` float32 [Q, G] (rows = text queries, columns = videos), ``query_ids`` [Q] and
  ``gallery_ids`` [G] (strings), and either ``gt`` int [Q] (the relevant column of each row) or ``relevance``
  bool [Q, G].
* a folder of row chunks ``chunk-00000.npz``, ``chunk-00001.npz``, ... with the same keys; each chunk holds its
  rows' ``scores``, ``query_ids`` and ``gt``/``relevance``, and the whole ``gallery_ids``.
* an embeddings folder: ``queries.npy`` [Q, D], ``gallery.npy`` [G, D] and ``ids.npz`` (``query_ids``,
  ``gallery_ids``, ``gt`` or ``relevance``); scores are the dot products ``queries @ gallery.T`` computed in row
  chunks on demand.

Every form becomes a :class:`ScoreSet`, whose :meth:`ScoreSet.chunks` yields row blocks so that metrics never need
the whole matrix at once.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

CHUNK_RE = re.compile(r"^chunk-(\d{5,})\.npz$")
DEFAULT_CHUNK_ELEMS = 1 << 24  # ~64 MB of float32 per in-memory row block

ChunkFactory = Callable[[], Iterable["np.ndarray | tuple[np.ndarray, np.ndarray | None]"]]


@dataclass
class ScoreChunk:
    """Rows ``start:stop`` of the score matrix: ``scores`` [R, G] float32, ``relevance`` [R, G] bool or None."""

    start: int
    stop: int
    scores: np.ndarray
    relevance: np.ndarray | None = None


@dataclass
class ScoreSet:
    """A validated score matrix (dense or produced in row chunks) with ids and relevance.

    Exactly one of ``gt`` (int [Q], the relevant column per row) and ``relevance`` (bool [Q, G], dense form only;
    chunked forms carry relevance per chunk) describes what is relevant; for chunked relevance ``gt`` is None and
    ``has_relevance`` is True.
    """

    query_ids: np.ndarray
    gallery_ids: np.ndarray
    gt: np.ndarray | None = None
    relevance: np.ndarray | None = None
    source: str = "<memory>"
    _dense: np.ndarray | None = field(default=None, repr=False)
    _factory: ChunkFactory | None = field(default=None, repr=False)
    _chunk_relevance: bool = field(default=False, repr=False)

    @property
    def n_queries(self) -> int:
        return int(len(self.query_ids))

    @property
    def n_gallery(self) -> int:
        return int(len(self.gallery_ids))

    @property
    def shape(self) -> tuple[int, int]:
        return self.n_queries, self.n_gallery

    @property
    def is_dense(self) -> bool:
        return self._dense is not None

    @property
    def has_relevance(self) -> bool:
        return self.relevance is not None or self._chunk_relevance

    @property
    def scores(self) -> np.ndarray:
        """The dense [Q, G] matrix (read-only view); materialises chunked sources, so avoid it for huge sets."""
        if self._dense is None:
            parts = list(self.chunks())
            if self._chunk_relevance:
                self.relevance = np.concatenate([c.relevance for c in parts], axis=0)
            self._dense = np.concatenate([c.scores for c in parts], axis=0)
            self._factory = None
        view = self._dense.view()
        view.flags.writeable = False
        return view

    def chunks(self, max_elems: int = DEFAULT_CHUNK_ELEMS) -> Iterator[ScoreChunk]:
        """Yield row blocks in order; each is validated (finite, right width) before it is handed out."""
        if self._dense is not None:
            n_rows = max(1, max_elems // max(1, self.n_gallery))
            for start in range(0, self.n_queries, n_rows):
                stop = min(self.n_queries, start + n_rows)
                rel = None if self.relevance is None else self.relevance[start:stop]
                yield ScoreChunk(start, stop, self._dense[start:stop], rel)
            return
        if self._factory is None:
            raise ValueError(f"{self.source}: score set has neither a matrix nor a chunk source")
        start = 0
        for i, item in enumerate(self._factory()):
            block, rel = (item if isinstance(item, tuple) else (item, None))
            name = f"{self.source} chunk {i}"
            block = _check_scores(np.asarray(block), name, n_cols=self.n_gallery)
            if self._chunk_relevance:
                if rel is None:
                    raise ValueError(f"{name}: relevance missing for this chunk")
                rel = _check_relevance(np.asarray(rel), block.shape, name)
            stop = start + block.shape[0]
            if stop > self.n_queries:
                raise ValueError(f"{name}: chunks hold more rows than the {self.n_queries} query ids")
            yield ScoreChunk(start, stop, block, rel)
            start = stop
        if start != self.n_queries:
            raise ValueError(f"{self.source}: chunks hold {start} rows but there are {self.n_queries} query ids")

    def relevance_of(self, chunk: ScoreChunk) -> np.ndarray:
        """Bool [R, G] relevance of a chunk's rows (built from ``gt`` when needed)."""
        if chunk.relevance is not None:
            return chunk.relevance
        assert self.gt is not None
        rel = np.zeros(chunk.scores.shape, dtype=bool)
        rel[np.arange(chunk.stop - chunk.start), self.gt[chunk.start : chunk.stop]] = True
        return rel

    @classmethod
    def from_arrays(
        cls,
        scores: np.ndarray,
        query_ids: Iterable[str] | None = None,
        gallery_ids: Iterable[str] | None = None,
        gt: np.ndarray | Iterable[int] | None = None,
        relevance: np.ndarray | None = None,
        source: str = "<memory>",
    ) -> ScoreSet:
        """Validate and wrap a dense matrix; ids default to ``q0..``/``g0..``; no ``gt``/``relevance`` and a
        square matrix means the diagonal is relevant. The input array is not modified (a float32 copy is made
        only when the dtype differs)."""
        s = _check_scores(np.asarray(scores), source)
        q, g = s.shape
        qids = np.array([f"q{i}" for i in range(q)]) if query_ids is None else np.asarray(list(query_ids))
        gids = np.array([f"g{i}" for i in range(g)]) if gallery_ids is None else np.asarray(list(gallery_ids))
        if gt is None and relevance is None:
            if q != g:
                raise ValueError(f"{source}: no gt/relevance given and the matrix is not square ({q}x{g})")
            gt = np.arange(q)
        _check_ids(qids, q, "query_ids", source)
        _check_ids(gids, g, "gallery_ids", source)
        gt_arr, rel_arr = _check_targets(gt, relevance, (q, g), source)
        return cls(qids, gids, gt_arr, rel_arr, source, _dense=s)

    @classmethod
    def from_chunks(
        cls,
        factory: ChunkFactory,
        query_ids: Iterable[str],
        gallery_ids: Iterable[str],
        gt: np.ndarray | Iterable[int] | None = None,
        chunk_relevance: bool = False,
        source: str = "<chunks>",
    ) -> ScoreSet:
        """Wrap a zero-argument callable that returns a fresh iterable of row blocks each time it is called.

        Blocks are float [R, G] arrays, or ``(scores, relevance)`` tuples when ``chunk_relevance`` is True.
        The callable is called once per pass (metrics use two passes), so it may regenerate the blocks.
        """
        qids = np.asarray(list(query_ids))
        gids = np.asarray(list(gallery_ids))
        _check_ids(qids, len(qids), "query_ids", source)
        _check_ids(gids, len(gids), "gallery_ids", source)
        if (gt is None) == (not chunk_relevance):
            raise ValueError(f"{source}: give exactly one of gt and chunk_relevance=True")
        gt_arr = None
        if gt is not None:
            gt_arr, _ = _check_targets(gt, None, (len(qids), len(gids)), source)
        return cls(qids, gids, gt_arr, None, source, _factory=factory, _chunk_relevance=chunk_relevance)


# ----------------------------------------------------------------------------------------------- validation


def _check_scores(s: np.ndarray, name: str, n_cols: int | None = None) -> np.ndarray:
    if s.ndim != 2:
        raise ValueError(f"{name}: scores must be 2-D [queries, gallery], got shape {s.shape}")
    if s.shape[0] == 0 or s.shape[1] == 0:
        raise ValueError(f"{name}: scores are empty (shape {s.shape})")
    if n_cols is not None and s.shape[1] != n_cols:
        raise ValueError(f"{name}: scores have {s.shape[1]} columns but there are {n_cols} gallery ids")
    if not np.issubdtype(s.dtype, np.floating):
        raise ValueError(f"{name}: scores must be floating point, got dtype {s.dtype}")
    if s.dtype == np.float16:
        logger.warning("%s: float16 scores create many ties; converting to float32", name)
    if s.dtype not in (np.float32, np.float64):  # float64 stays float64: post-hoc outputs need its range
        s = s.astype(np.float32)
    finite = np.isfinite(s)
    if not finite.all():
        bad = np.argwhere(~finite)[0]
        n_nan = int(np.isnan(s).sum())
        n_inf = int((~finite).sum()) - n_nan
        raise ValueError(
            f"{name}: scores contain {n_nan} NaN and {n_inf} inf values (first at row {bad[0]}, column {bad[1]})"
        )
    return s


def _check_ids(ids: np.ndarray, n: int, key: str, name: str) -> None:
    if ids.ndim != 1 or len(ids) != n:
        raise ValueError(f"{name}: {key} has shape {ids.shape}, expected ({n},)")
    if n == 0:
        raise ValueError(f"{name}: {key} is empty")
    uniq, counts = np.unique(ids, return_counts=True)
    if len(uniq) != n:
        dups = uniq[counts > 1][:5].tolist()
        raise ValueError(f"{name}: {key} has {n - len(uniq)} duplicate ids, e.g. {dups}")


def _check_relevance(rel: np.ndarray, shape: tuple[int, int], name: str) -> np.ndarray:
    if rel.shape != shape:
        raise ValueError(f"{name}: relevance has shape {rel.shape} but scores have shape {shape}")
    if rel.dtype != bool:
        if not np.isin(rel, (0, 1)).all():
            raise ValueError(f"{name}: relevance must be boolean (0/1)")
        rel = rel.astype(bool)
    empty = ~rel.any(axis=1)
    if empty.any():
        raise ValueError(
            f"{name}: relevance: {int(empty.sum())} queries have no relevant gallery item "
            f"(first row {int(np.argmax(empty))})"
        )
    return rel


def _check_targets(gt, relevance, shape: tuple[int, int], name: str):
    if (gt is None) == (relevance is None):
        raise ValueError(f"{name}: give exactly one of gt and relevance")
    if relevance is not None:
        return None, _check_relevance(np.asarray(relevance), shape, name)
    g = np.asarray(gt)
    if g.shape != (shape[0],):
        raise ValueError(f"{name}: gt has shape {g.shape} but there are {shape[0]} queries")
    if not np.issubdtype(g.dtype, np.integer):
        raise ValueError(f"{name}: gt must be integer column indices, got dtype {g.dtype}")
    if g.size and (g.min() < 0 or g.max() >= shape[1]):
        raise ValueError(f"{name}: gt values must lie in [0, {shape[1]}), got range [{g.min()}, {g.max()}]")
    return g.astype(np.int64), None


# ----------------------------------------------------------------------------------------------- save / load


def save_scores(
    path: str | os.PathLike,
    scores: np.ndarray,
    query_ids: Iterable[str],
    gallery_ids: Iterable[str],
    gt: np.ndarray | None = None,
    relevance: np.ndarray | None = None,
) -> Path:
    """Validate and write ``scores.npz`` (float32 scores, str ids, ``gt`` or ``relevance``); returns the path.

    Written to a temporary file and renamed so a reader never sees a partial file.
    """
    path = Path(path)
    ss = ScoreSet.from_arrays(scores, query_ids, gallery_ids, gt=gt, relevance=relevance, source=str(path))
    arrays = {"scores": ss._dense.astype(np.float32, copy=False), "query_ids": ss.query_ids.astype(str), "gallery_ids": ss.gallery_ids.astype(str)}
    if ss.gt is not None:
        arrays["gt"] = ss.gt
    else:
        arrays["relevance"] = ss.relevance
    _atomic_savez(path, arrays)
    return path


def save_score_chunks(
    folder: str | os.PathLike,
    scores: np.ndarray,
    query_ids: Iterable[str],
    gallery_ids: Iterable[str],
    gt: np.ndarray | None = None,
    relevance: np.ndarray | None = None,
    rows_per_chunk: int = 1024,
) -> list[Path]:
    """Write a dense matrix as a folder of row chunks ``chunk-00000.npz``... (mostly for tests and tools)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ss = ScoreSet.from_arrays(scores, query_ids, gallery_ids, gt=gt, relevance=relevance, source=str(folder))
    out = []
    for i, start in enumerate(range(0, ss.n_queries, rows_per_chunk)):
        stop = min(ss.n_queries, start + rows_per_chunk)
        arrays = {
            "scores": ss._dense[start:stop],
            "query_ids": ss.query_ids[start:stop].astype(str),
            "gallery_ids": ss.gallery_ids.astype(str),
        }
        if ss.gt is not None:
            arrays["gt"] = ss.gt[start:stop]
        else:
            arrays["relevance"] = ss.relevance[start:stop]
        p = folder / f"chunk-{i:05d}.npz"
        _atomic_savez(p, arrays)
        out.append(p)
    return out


def save_embeddings(
    folder: str | os.PathLike,
    queries: np.ndarray,
    gallery: np.ndarray,
    query_ids: Iterable[str],
    gallery_ids: Iterable[str],
    gt: np.ndarray | None = None,
    relevance: np.ndarray | None = None,
) -> Path:
    """Write ``queries.npy`` [Q, D], ``gallery.npy`` [G, D] and ``ids.npz``; scores are ``queries @ gallery.T``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    q = np.asarray(queries, dtype=np.float32)
    g = np.asarray(gallery, dtype=np.float32)
    if q.ndim != 2 or g.ndim != 2 or q.shape[1] != g.shape[1]:
        raise ValueError(f"{folder}: embeddings must be [Q, D] and [G, D], got {q.shape} and {g.shape}")
    qids, gids = np.asarray(list(query_ids)).astype(str), np.asarray(list(gallery_ids)).astype(str)
    _check_ids(qids, q.shape[0], "query_ids", str(folder))
    _check_ids(gids, g.shape[0], "gallery_ids", str(folder))
    gt_arr, rel_arr = _check_targets(gt, relevance, (q.shape[0], g.shape[0]), str(folder))
    np.save(folder / "queries.npy", q)
    np.save(folder / "gallery.npy", g)
    arrays = {"query_ids": qids, "gallery_ids": gids}
    if gt_arr is not None:
        arrays["gt"] = gt_arr
    else:
        arrays["relevance"] = rel_arr
    _atomic_savez(folder / "ids.npz", arrays)
    return folder


def _atomic_savez(path: Path, arrays: dict[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def _read_npz(path: Path) -> np.lib.npyio.NpzFile:
    if not path.is_file():
        raise ValueError(f"{path}: no such scores file")
    try:
        return np.load(path, allow_pickle=False)
    except Exception as exc:  # corrupt / not an npz
        raise ValueError(f"{path}: not a readable npz file ({exc})") from exc


def _get(z: np.lib.npyio.NpzFile, key: str, path: Path) -> np.ndarray:
    if key not in z.files:
        raise ValueError(f"{path}: missing key {key!r} (has {sorted(z.files)})")
    try:
        return z[key]
    except ValueError as exc:  # object arrays would need pickle: refused
        raise ValueError(f"{path}: key {key!r} cannot be read without pickle ({exc})") from exc


def load_scores(path: str | os.PathLike) -> ScoreSet:
    """Load and validate a ``scores.npz``, a folder of ``chunk-*.npz`` files, or an embeddings folder.

    Raises ValueError naming the file and the problem (NaN/inf, shapes, relevance mismatch, empty, duplicate
    ids). Chunked forms are validated lazily per chunk for their scores; ids and targets are checked up front.
    """
    path = Path(path)
    if path.is_dir():
        if (path / "queries.npy").exists() or (path / "gallery.npy").exists():
            return _load_embeddings(path)
        chunk_files = sorted(p for p in path.iterdir() if CHUNK_RE.match(p.name))
        if not chunk_files:
            raise ValueError(f"{path}: folder has neither chunk-*.npz files nor queries.npy/gallery.npy")
        return _load_chunk_folder(path, chunk_files)
    z = _read_npz(path)
    scores = _get(z, "scores", path)
    gt = _get(z, "gt", path) if "gt" in z.files else None
    rel = _get(z, "relevance", path) if "relevance" in z.files else None
    if gt is None and rel is None:
        raise ValueError(f"{path}: needs a 'gt' or a 'relevance' array")
    return ScoreSet.from_arrays(
        scores, _get(z, "query_ids", path), _get(z, "gallery_ids", path), gt=gt, relevance=rel, source=str(path)
    )


def _load_chunk_folder(folder: Path, files: list[Path]) -> ScoreSet:
    idx = [int(CHUNK_RE.match(p.name).group(1)) for p in files]
    if idx != list(range(len(files))):
        raise ValueError(f"{folder}: chunk files must be numbered contiguously from 00000, got {idx[:10]}")
    qids, gts, gallery_ids, has_rel = [], [], None, None
    for p in files:
        z = _read_npz(p)
        g_ids = _get(z, "gallery_ids", p)
        if gallery_ids is None:
            gallery_ids = g_ids
        elif not np.array_equal(g_ids, gallery_ids):
            raise ValueError(f"{p}: gallery_ids differ from those of {files[0].name}")
        q_ids = _get(z, "query_ids", p)
        shape = z["scores"].shape if "scores" in z.files else None
        if shape is None:
            raise ValueError(f"{p}: missing key 'scores'")
        if len(shape) != 2 or shape[0] != len(q_ids):
            raise ValueError(f"{p}: scores shape {shape} does not match {len(q_ids)} query_ids")
        rel_here = "relevance" in z.files
        if has_rel is None:
            has_rel = rel_here
        elif has_rel != rel_here:
            raise ValueError(f"{p}: mixes gt and relevance with other chunks")
        if not rel_here:
            gts.append(_get(z, "gt", p))
        qids.append(q_ids)

    def factory():
        for p in files:
            z = _read_npz(p)
            s = _check_scores(_get(z, "scores", p), str(p), n_cols=len(gallery_ids))
            yield (s, _get(z, "relevance", p)) if has_rel else s

    gt = None if has_rel else np.concatenate(gts)
    return ScoreSet.from_chunks(
        factory, np.concatenate(qids), gallery_ids, gt=gt, chunk_relevance=bool(has_rel), source=str(folder)
    )


def _load_embeddings(folder: Path, rows_per_chunk: int | None = None) -> ScoreSet:
    for name in ("queries.npy", "gallery.npy", "ids.npz"):
        if not (folder / name).is_file():
            raise ValueError(f"{folder}: embeddings folder is missing {name}")
    q = np.load(folder / "queries.npy", mmap_mode="r", allow_pickle=False)
    g = np.load(folder / "gallery.npy", mmap_mode="r", allow_pickle=False)
    if q.ndim != 2 or g.ndim != 2 or q.shape[1] != g.shape[1]:
        raise ValueError(f"{folder}: embeddings must be [Q, D] and [G, D], got {q.shape} and {g.shape}")
    ids_path = folder / "ids.npz"
    z = _read_npz(ids_path)
    qids, gids = _get(z, "query_ids", ids_path), _get(z, "gallery_ids", ids_path)
    if len(qids) != q.shape[0] or len(gids) != g.shape[0]:
        raise ValueError(
            f"{ids_path}: {len(qids)} query ids / {len(gids)} gallery ids for embeddings {q.shape}, {g.shape}"
        )
    g32 = np.ascontiguousarray(g, dtype=np.float32)
    if not np.isfinite(g32).all():
        raise ValueError(f"{folder / 'gallery.npy'}: embeddings contain NaN or inf")
    rows = rows_per_chunk or max(1, DEFAULT_CHUNK_ELEMS // max(1, g.shape[0]))
    rel = _get(z, "relevance", ids_path) if "relevance" in z.files else None
    if rel is not None:
        rel = _check_relevance(np.asarray(rel), (q.shape[0], g.shape[0]), str(ids_path))

    def factory():
        for start in range(0, q.shape[0], rows):
            block = np.asarray(q[start : start + rows], dtype=np.float32) @ g32.T
            yield (block, rel[start : start + rows]) if rel is not None else block

    gt = _get(z, "gt", ids_path) if "gt" in z.files else None
    if gt is None and rel is None:
        raise ValueError(f"{ids_path}: needs a 'gt' or a 'relevance' array")
    return ScoreSet.from_chunks(
        factory, qids, gids, gt=gt, chunk_relevance=rel is not None, source=str(folder)
    )


def save_bank(
    path: str | os.PathLike, scores: np.ndarray, query_ids: Iterable[str], gallery_ids: Iterable[str]
) -> Path:
    """Validate and write a query-bank file: ``scores`` [n_bank, G] (bank texts x test gallery), ``query_ids``,
    ``gallery_ids`` (what :func:`load_bank` reads). Atomic like :func:`save_scores`."""
    path = Path(path)
    s = _check_scores(np.asarray(scores, dtype=np.float32), str(path))
    qids = np.asarray(list(query_ids)).astype(str)
    gids = np.asarray(list(gallery_ids)).astype(str)
    _check_ids(qids, s.shape[0], "query_ids", str(path))
    _check_ids(gids, s.shape[1], "gallery_ids", str(path))
    _atomic_savez(path, {"scores": s, "query_ids": qids, "gallery_ids": gids})
    return path


def load_bank(path: str | os.PathLike, gallery_ids: np.ndarray) -> np.ndarray:
    """Load a query-bank score matrix [n_bank, G] against a test gallery.

    The file is an npz with ``scores`` (bank queries x gallery) and, optionally, ``gallery_ids``; when present
    the columns are reordered to ``gallery_ids`` (every id must be there). Returns float32 [n_bank, G].
    """
    path = Path(path)
    z = _read_npz(path)
    s = _check_scores(_get(z, "scores", path), str(path))
    gids = np.asarray(gallery_ids)
    if "gallery_ids" in z.files:
        bank_ids = _get(z, "gallery_ids", path)
        _check_ids(bank_ids, s.shape[1], "gallery_ids", str(path))
        pos = {str(g): i for i, g in enumerate(bank_ids)}
        missing = [str(g) for g in gids if str(g) not in pos]
        if missing:
            raise ValueError(f"{path}: bank lacks {len(missing)} gallery ids of the test set, e.g. {missing[:3]}")
        s = s[:, [pos[str(g)] for g in gids]]
    elif s.shape[1] != len(gids):
        raise ValueError(f"{path}: bank has {s.shape[1]} columns but the test gallery has {len(gids)} items")
    return s
