"""Per-core throughput of the shard job's per-video work, decord path vs ffmpeg path, side by side.

Makes N clips (default 12) of 10 s 640x480 H.264 at 30 fps (ffmpeg ``testsrc2``), then runs ONE worker process
that does exactly what a job worker does per video (:func:`preprocess.job.make_sample`: probe, uniform 12-frame
selection, decode, resize short side to 224 + centre crop, JPEG q90, json) for every clip, once with
``decoder=decord`` and once with ``decoder=ffmpeg`` (which spawns one single-threaded ffmpeg per video).

Both paths decode only the packets the 12 frames need (:mod:`preprocess.avc_packets`, the product default);
the ``*-whole`` rows run the same worker with ``reference_only=False`` (every picture up to the last requested
frame decoded, the previous behaviour) for comparison: same pixels, more CPU.

Reports videos/s per worker process by wall clock and by CPU time (user + sys of the worker process and its
ffmpeg children, ``getrusage`` SELF + CHILDREN, warm-up clip excluded; decord runs one decoder thread), and
ends with ``RESULT videos_per_s_per_core=<decord> ffmpeg_videos_per_s_per_core=<ffmpeg> ...`` (CPU time based:
robust on a shared machine). Anchor: video2dataset's ~0.8 videos/s/core with processing.

    python benchmarks/shard_throughput.py [--num-videos 12] [--seconds 10] [--frames 12] [--size 224]
"""

from __future__ import annotations

import argparse
import functools
import multiprocessing as mp
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from preprocess.config import PreprocessConfig  # noqa: E402
from preprocess.decode import ffmpeg_binary, ffmpeg_decoder_binary  # noqa: E402
from preprocess.items import VideoItem  # noqa: E402
from preprocess.job import make_sample  # noqa: E402


def make_clips(folder: str, n: int, seconds: float) -> list[str]:
    paths = []
    for i in range(n):
        p = os.path.join(folder, f"clip{i:03d}.mp4")
        subprocess.run(
            [
                ffmpeg_binary(),
                "-hide_banner",
                "-nostdin",
                "-loglevel",
                "error",
                "-y",
                "-f",
                "lavfi",
                "-i",
                f"testsrc2=size=640x480:rate=30:duration={seconds}",
                "-vf",
                f"hue=h={i * 37 % 360}",
                "-c:v",
                "libx264",
                "-preset",
                "veryfast",
                "-pix_fmt",
                "yuv420p",
                p,
            ],
            check=True,
            timeout=300,
        )
        paths.append(p)
    return paths


def _cpu() -> float:
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def _worker(paths: list[str], decoder: str, frames: int, size: int, whole: bool, out: mp.Queue) -> None:
    if whole:  # this process only: the job's decode call without the packet plan
        import preprocess.job

        preprocess.job.decode_frames = functools.partial(preprocess.job.decode_frames, reference_only=False)
    cfg = PreprocessConfig(
        dataset="bench", anno_path="-", out="-", num_frames=frames, frame_size=size, decoder=decoder
    )
    items = [VideoItem("bench", "train", os.path.basename(p), p, ("a clip",)) for p in paths]
    make_sample(items[0], cfg)  # warm-up: imports, decord/ffmpeg libraries loaded
    t0, c0 = time.perf_counter(), _cpu()
    nbytes = 0
    for it in items:
        nbytes += sum(len(v) for v in make_sample(it, cfg).values())
    out.put((time.perf_counter() - t0, _cpu() - c0, nbytes))


def measure(
    paths: list[str], decoder: str, frames: int, size: int, whole: bool = False
) -> tuple[float, float, float]:
    """(wall s, cpu s, bytes per sample) of one worker process over ``paths``."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_worker, args=(paths, decoder, frames, size, whole, q))
    p.start()
    wall, cpu, nbytes = q.get(timeout=1800)
    p.join()
    return wall, cpu, nbytes / len(paths)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--num-videos", type=int, default=12)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--frames", type=int, default=12)
    ap.add_argument("--size", type=int, default=224)
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="nr-bench-") as tmp:
        t0 = time.perf_counter()
        paths = make_clips(tmp, a.num_videos, a.seconds)
        print(
            f"made {len(paths)} clips of {a.seconds:g} s 640x480 30 fps H.264 in {time.perf_counter() - t0:.1f} s"
        )
        print(
            f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, "
            f"load avg {os.getloadavg()[0]:.2f}; clips encoded with {ffmpeg_binary()}; "
            f"ffmpeg path decodes with {ffmpeg_decoder_binary()}"
        )
        rows = {}
        for decoder in ("decord", "ffmpeg"):
            rows[decoder] = measure(paths, decoder, a.frames, a.size)
            rows[f"{decoder}-whole"] = measure(paths, decoder, a.frames, a.size, whole=True)
        load = os.getloadavg()[0]
    print(
        f"{'path':13} {'wall s':>8} {'cpu s':>8} {'videos/s (wall)':>16} {'videos/s/core (cpu)':>20} "
        f"{'ms cpu/video':>13} {'KB/sample':>10}"
    )
    for decoder, (wall, cpu, per) in rows.items():
        print(
            f"{decoder:13} {wall:8.2f} {cpu:8.2f} {a.num_videos / wall:16.2f} {a.num_videos / cpu:20.2f} "
            f"{1000 * cpu / a.num_videos:13.1f} {per / 1024:10.1f}"
        )
    d, f, dx, fx = (a.num_videos / rows[k][1] for k in ("decord", "ffmpeg", "decord-whole", "ffmpeg-whole"))
    dw, fw = (a.num_videos / rows[k][0] for k in ("decord", "ffmpeg"))
    print(f"load avg at the end {load:.2f}")
    print(
        f"RESULT videos_per_s_per_core={d:.2f} ffmpeg_videos_per_s_per_core={f:.2f} "
        f"wall_videos_per_s={dw:.2f} ffmpeg_wall_videos_per_s={fw:.2f} "
        f"whole_file_videos_per_s_per_core={dx:.2f} ffmpeg_whole_file_videos_per_s_per_core={fx:.2f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
