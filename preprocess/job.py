"""The parallel, resumable shard job: annotation items -> WebDataset shards of format v1.

Partitioning (deterministic, so independent jobs never collide)::

    items = load_items(...)                          # reader order
    shard i  holds inputs [i * shard_size, (i + 1) * shard_size)
    job j of n writes the shards with i % n == j     # slurm array / k8s indexed job: --job_index j --num_jobs n

A single-machine job (``num_jobs == 1``) indexes the split at the end (``shards.index.build_index``). With
``num_jobs > 1`` run ``python -m shards.index ROOT/SPLIT`` once every job has finished.

Resume: a shard whose ``stats.json`` exists is complete and skipped. Any other shard of this job is rewritten
from scratch: its stale temp files, tar and failures sidecar are removed first. Decoding and the tar writer are
deterministic, so a resumed run ends with byte-identical tars and the same sample set as an uninterrupted run.

Workers: ``num_workers`` processes (forkserver), each fed one video at a time through a pipe; a worker is
replaced after ``recycle_after`` videos (decord leaks memory) and killed when one video takes longer than
``timeout`` seconds (decord can spin forever holding the GIL, decord#373). A killed or crashed worker costs one
failure row, never the job. The parent writes shards in input order.

Sample key: ``make_key(dataset, video_id)``, or ``make_key(dataset, video_id, clip)`` when several items share a
video id (clip windows), ``clip`` = 0, 1, ... in reader order.
"""

from __future__ import annotations

import logging
import math
import multiprocessing as mp
import os
import tempfile
import time
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any

from preprocess.config import PreprocessConfig
from preprocess.decode import DecodeError, VideoInfo, decode_frames, probe
from preprocess.frames import encode_frames
from preprocess.items import VideoItem
from preprocess.sampling import SamplingError, select_frames
from shards import fs as sfs
from shards.schema import SCHEMA_VERSION, failures_name, make_key, shard_name, stats_name
from shards.writer import ShardWriter, encode_json

__all__ = ["JobSummary", "make_sample", "job_shards", "num_shards", "run_job", "sample_keys"]

logger = logging.getLogger(__name__)


@dataclass
class JobSummary:
    """What one job did: shards it owns, written now, skipped as complete; samples ok / failed written now."""

    inputs: int
    shards_total: int
    shards_owned: int
    shards_written: int
    shards_skipped: int
    ok: int
    failed: int
    seconds: float
    manifest: dict | None = None

    @property
    def videos_per_s(self) -> float:
        return (self.ok + self.failed) / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        return (
            f"preprocess: {self.inputs} inputs, {self.shards_total} shards ({self.shards_owned} owned, "
            f"{self.shards_written} written, {self.shards_skipped} already complete); "
            f"{self.ok} ok, {self.failed} failed in {self.seconds:.1f} s ({self.videos_per_s:.2f} videos/s)"
        )


def num_shards(num_items: int, shard_size: int) -> int:
    """``ceil(num_items / shard_size)``."""
    return math.ceil(num_items / shard_size)


def job_shards(num_items: int, shard_size: int, job_index: int = 0, num_jobs: int = 1) -> list[int]:
    """Shard numbers job ``job_index`` of ``num_jobs`` writes: ``[i for i in range(num_shards) if i % n == j]``."""
    return [i for i in range(num_shards(num_items, shard_size)) if i % num_jobs == job_index]


def sample_keys(items: list[VideoItem]) -> list[str]:
    """One key per item; a video id used by several items gets a clip index (0, 1, ... in reader order)."""
    counts: dict[str, int] = {}
    for it in items:
        counts[it.video_id] = counts.get(it.video_id, 0) + 1
    seen: dict[str, int] = {}
    keys = []
    for it in items:
        if counts[it.video_id] > 1:
            clip = seen.get(it.video_id, 0)
            seen[it.video_id] = clip + 1
            keys.append(make_key(it.dataset, it.video_id, clip))
        else:
            keys.append(make_key(it.dataset, it.video_id))
    if len(set(keys)) != len(keys):
        dup = next(k for k in keys if keys.count(k) > 1)
        raise ValueError(f"two inputs map to the same sample key {dup!r}")
    return keys


# -- one video (runs in a worker) ------------------------------------------------------------------------------
def _select_and_decode(path: str, item: VideoItem, cfg: PreprocessConfig, backend: str):
    info: VideoInfo = probe(path, backend=backend, timeout=cfg.timeout)
    sel = select_frames(
        cfg.sampler,
        num_frames=cfg.num_frames,
        src_fps=info.fps,
        num_src_frames=info.num_frames,
        start=item.start,
        end=item.end,
        sample_fps=cfg.fps,
        frame_times=info.times or None,
        duration=info.duration if info.times else None,
    )
    frames = decode_frames(path, sel.indices, size=cfg.frame_size, backend=backend, info=info, timeout=cfg.timeout,
                           reference_only=cfg.packet_skip)
    return info, sel, frames


def make_sample(item: VideoItem, cfg: PreprocessConfig, local_path: str | None = None) -> dict[str, bytes]:
    """Decode, sample and encode one item: the sample's members ``{"f000.jpg".., "txt", "json"}``.

    Raises :class:`DecodeError` or :class:`SamplingError` with the reason when no sample can be made. With
    ``decoder: decord`` a decord failure falls back to ffmpeg; both messages are kept when both fail.
    """
    path = local_path or item.source
    if not os.path.exists(path):
        raise DecodeError(f"missing file: {item.source}")
    if os.path.getsize(path) == 0:
        raise DecodeError(f"empty file (0 bytes): {item.source}")
    backend = cfg.decoder
    if cfg.decoder == "decord":
        try:
            info, sel, frames = _select_and_decode(path, item, cfg, "decord")
        except SamplingError:
            raise
        except DecodeError as first:
            logger.info("decord failed on %s (%s); trying ffmpeg", item.source, first)
            try:
                info, sel, frames = _select_and_decode(path, item, cfg, "ffmpeg")
                backend = "ffmpeg"
            except (DecodeError, SamplingError) as second:
                raise DecodeError(f"{first}; ffmpeg fallback: {second}") from second
    else:
        info, sel, frames = _select_and_decode(path, item, cfg, "ffmpeg")
    members = encode_frames(frames, cfg.jpeg_quality)
    meta = {
        "schema": SCHEMA_VERSION,
        "dataset": item.dataset,
        "split": item.split,
        "video_id": item.video_id,
        "caption": item.captions[0],
        "captions": list(item.captions),
        "source": item.source,
        "start": item.start,
        "end": item.end,
        "frame_times": list(sel.times),
        "src_fps": round(info.fps, 6),
        "width": cfg.frame_size,
        "height": cfg.frame_size,
        "num_frames": cfg.num_frames,
        "sampler": cfg.sampler,
        "padded_frames": sel.padded_frames,
        # display geometry and timing provenance (optional fields, see docs/shard-format.md)
        "coded_width": info.width,
        "coded_height": info.height,
        "rotation": info.rotation,
        "sar": f"{info.sar.numerator}:{info.sar.denominator}",
        "time_origin": "first_shown_frame",
        "stream_start_time": round(info.start_time, 6),
        "decoder": backend,
    }
    members["txt"] = item.captions[0].encode("utf-8")
    members["json"] = encode_json(meta)
    return members


def _fetch(source: str, storage: sfs.StorageOptions, tmp_dir: str) -> str:
    """Local copy of a remote (``s3://``) video in ``tmp_dir``; local paths are returned unchanged."""
    if not sfs.is_remote(source):
        return source
    fs, path = sfs.filesystem(source, storage)
    if not fs.exists(path):
        raise DecodeError(f"missing file: {source}")
    local = os.path.join(tmp_dir, "video" + os.path.splitext(path)[1])
    fs.get_file(path, local)
    return local


def _worker_main(conn: Connection, cfg: PreprocessConfig, max_tasks: int, env: dict[str, str]) -> None:
    """Worker loop: receive ``(task_id, item)``, send ``(task_id, members | None, reason)``; exit after
    ``max_tasks`` tasks or on ``None`` / a closed pipe.

    ``env`` is the parent's environment when the worker was started: a forkserver child would otherwise inherit
    the environment of the moment the fork server started (stale ``AWS_*`` settings, for instance)."""
    os.environ.clear()
    os.environ.update(env)
    logging.basicConfig(level=logging.WARNING)
    done = 0
    with tempfile.TemporaryDirectory(prefix="nr-preprocess-") as tmp_dir:
        while done < max_tasks:
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                return
            if msg is None:
                return
            task_id, item = msg
            try:
                local = _fetch(item.source, cfg.storage, tmp_dir)
                result = (task_id, make_sample(item, cfg, local), "")
            except (DecodeError, SamplingError) as exc:
                result = (task_id, None, str(exc))
            except Exception as exc:  # noqa: BLE001 - one bad video must not stop the job
                result = (task_id, None, f"{type(exc).__name__}: {exc}"[:500])
            done += 1
            conn.send(result)


class _Worker:
    def __init__(self, ctx: Any, cfg: PreprocessConfig) -> None:
        self.conn, child = ctx.Pipe(duplex=True)
        self.proc = ctx.Process(target=_worker_main, args=(child, cfg, cfg.recycle_after, dict(os.environ)),
                                daemon=True)
        self.proc.start()
        child.close()
        self.tasks = 0
        self.current: tuple[int, float] | None = None  # (task id, start time)

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(5)
        self.conn.close()


class _Pool:
    """``num_workers`` single-task-at-a-time workers with recycling and a per-task deadline."""

    def __init__(self, cfg: PreprocessConfig) -> None:
        self.cfg = cfg
        method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
        self.ctx = mp.get_context(method)
        self.workers = [_Worker(self.ctx, cfg) for _ in range(cfg.num_workers)]

    def _replace(self, w: _Worker) -> _Worker:
        w.kill()
        new = _Worker(self.ctx, self.cfg)
        self.workers[self.workers.index(w)] = new
        return new

    def idle(self) -> list[_Worker]:
        return [w for w in self.workers if w.current is None]

    def submit(self, w: _Worker, task_id: int, item: VideoItem) -> None:
        if w.tasks >= self.cfg.recycle_after:
            w = self._replace(w)
        w.conn.send((task_id, item))
        w.tasks += 1
        w.current = (task_id, time.monotonic())

    def collect(self, poll: float = 0.5) -> list[tuple[int, dict[str, bytes] | None, str]]:
        """Wait up to ``poll`` s; return finished ``(task_id, members | None, reason)`` (timeouts included)."""
        busy = [w for w in self.workers if w.current is not None]
        out: list[tuple[int, dict[str, bytes] | None, str]] = []
        if not busy:
            return out
        now = time.monotonic()
        deadline = min(w.current[1] for w in busy) + self.cfg.timeout
        ready = wait([w.conn for w in busy], timeout=max(0.0, min(poll, deadline - now)))
        for w in busy:
            assert w.current is not None
            task_id, started = w.current
            if w.conn in ready:
                try:
                    tid, members, reason = w.conn.recv()
                    if tid != task_id:
                        raise RuntimeError(f"worker answered task {tid}, expected {task_id}")
                    out.append((tid, members, reason))
                    w.current = None
                    if w.tasks >= self.cfg.recycle_after:
                        self._replace(w)
                except (EOFError, OSError):
                    w.proc.join(5)
                    out.append((task_id, None, f"worker process died (exit code {w.proc.exitcode})"))
                    self._replace(w)
            elif time.monotonic() - started > self.cfg.timeout:
                out.append((task_id, None, f"timeout: no result after {self.cfg.timeout:g} s (worker killed)"))
                self._replace(w)
        return out

    def close(self) -> None:
        for w in self.workers:
            try:
                if w.current is None and w.proc.is_alive():
                    w.conn.send(None)
            except OSError:
                pass
        for w in self.workers:
            if w.current is None:  # idle workers exit on None; busy ones (error path) are killed at once
                w.proc.join(5)
            w.kill()


# -- the job ---------------------------------------------------------------------------------------------------
def _clean_incomplete(split_url: str, shards: list[int], split: str, cfg: PreprocessConfig) -> list[int]:
    """Return the shards still to write; remove their partial outputs and stale temp files."""
    names = set(sfs.listdir(split_url, cfg.storage))
    todo = []
    for i in shards:
        if stats_name(split, i) in names:
            continue
        todo.append(i)
        stem = shard_name(split, i)
        for n in names:
            if n.startswith(f".{stem}.") and n.endswith(".tmp"):
                logger.info("removing stale temp file %s", n)
                sfs.remove(sfs.join(split_url, n), cfg.storage)
        for n in (stem, failures_name(split, i)):
            if n in names:
                logger.info("rewriting incomplete shard: removing %s", n)
                sfs.remove(sfs.join(split_url, n), cfg.storage)
    if cfg.num_jobs == 1:  # atomic-write temp files of sidecars; only safe when no other job shares the folder
        for n in names:
            if n.startswith(".tmp-"):
                sfs.remove(sfs.join(split_url, n), cfg.storage)
    return todo


def run_job(cfg: PreprocessConfig, items: list[VideoItem] | None = None) -> JobSummary:
    """Run the shard job described by ``cfg`` (items loaded from the annotations unless given)."""
    t0 = time.perf_counter()
    cfg.validate()
    if items is None:
        from preprocess.annotations import load_items

        items = load_items(cfg.dataset, cfg.split, cfg.anno_path, cfg.video_root, video_ext=cfg.video_ext)
    if not items:
        raise ValueError(f"no inputs: {cfg.dataset} split {cfg.split!r} of {cfg.anno_path} has no items")
    keys = sample_keys(items)
    split_url = sfs.join(cfg.out, cfg.split)
    total = num_shards(len(items), cfg.shard_size)
    owned = job_shards(len(items), cfg.shard_size, cfg.job_index, cfg.num_jobs)
    todo = _clean_incomplete(split_url, owned, cfg.split, cfg)
    logger.info(
        "%d inputs -> %d shards of %d; job %d/%d owns %d, %d to write",
        len(items), total, cfg.shard_size, cfg.job_index, cfg.num_jobs, len(owned), len(todo),
    )
    tasks = [(i, pos) for i in todo for pos in range(i * cfg.shard_size, min(len(items), (i + 1) * cfg.shard_size))]
    ok = failed = 0
    if tasks:
        ok, failed = _write_shards(cfg, items, keys, split_url, tasks)
    manifest = None
    if tasks and not ok and len(todo) == len(owned):  # every input failed: no empty shards, no index
        for i in todo:  # (the failures sidecars stay: they name each input's reason)
            for n in (shard_name(cfg.split, i), stats_name(cfg.split, i)):
                if sfs.exists(sfs.join(split_url, n), cfg.storage):
                    sfs.remove(sfs.join(split_url, n), cfg.storage)
    elif cfg.num_jobs == 1 and cfg.build_index:
        from shards.index import build_index

        manifest = build_index(split_url, storage=cfg.storage, config=cfg.to_dict())
    elif cfg.num_jobs > 1:
        logger.info("job %d/%d done; when all jobs are: python -m shards.index %s", cfg.job_index, cfg.num_jobs,
                    split_url)
    return JobSummary(
        inputs=len(items),
        shards_total=total,
        shards_owned=len(owned),
        shards_written=len(todo),
        shards_skipped=len(owned) - len(todo),
        ok=ok,
        failed=failed,
        seconds=time.perf_counter() - t0,
        manifest=manifest,
    )


def _write_shards(
    cfg: PreprocessConfig, items: list[VideoItem], keys: list[str], split_url: str, tasks: list[tuple[int, int]]
) -> tuple[int, int]:
    """Decode ``tasks`` (shard, input position) in parallel and write each shard in input order."""
    from tqdm import tqdm

    pool = _Pool(cfg)
    bar = tqdm(total=len(tasks), unit="video", disable=not cfg.progress, dynamic_ncols=True, mininterval=1.0)
    pending = deque(range(len(tasks)))
    results: dict[int, tuple[dict[str, bytes] | None, str]] = {}
    next_write = 0
    writer: ShardWriter | None = None
    ok = failed = 0
    max_ahead = cfg.num_workers * 4
    try:
        while next_write < len(tasks):
            for w in pool.idle():
                if not pending or pending[0] - next_write >= max_ahead:
                    break
                tid = pending.popleft()
                pool.submit(w, tid, items[tasks[tid][1]])
            for tid, members, reason in pool.collect():
                results[tid] = (members, reason)
                bar.update(1)
            while next_write in results:
                shard, pos = tasks[next_write]
                members, reason = results.pop(next_write)
                if writer is None:
                    writer = ShardWriter(cfg.out, cfg.split, shard, storage=cfg.storage)
                item = items[pos]
                if members is not None:
                    writer.write(keys[pos], members)
                    ok += 1
                else:
                    writer.add_failure(item.source, item.video_id, reason)
                    logger.warning("failed %s: %s", item.source, reason)
                    failed += 1
                next_write += 1
                if next_write == len(tasks) or tasks[next_write][0] != shard:
                    st = writer.close()
                    writer = None
                    logger.info("shard %s: %d samples, %d failed, %d bytes, %.1f s",
                                st.shard, st.samples, st.failed, st.bytes, st.seconds)
                    bar.set_postfix_str(f"shard {shard} done")
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    finally:
        bar.close()
        pool.close()
    return ok, failed
