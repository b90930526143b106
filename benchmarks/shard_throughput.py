"""Per-core throughput of the shard job's per-video work, decord path vs ffmpeg path, side by side.

Makes N clips (default 12) of 10 s 640x480 H.264 at 30 fps (ffmpeg ``testsrc2``), then runs ONE worker process
that does exactly what a job worker does per video (:func:`preprocess.job.make_sample`: probe, uniform 12-frame
selection, decode, resize short side to 224 + centre crop, JPEG q90, json) for every clip, once with
``decoder=decord`` and once with ``decoder=ffmpeg`` (which spawns one single-threaded ffmpeg per video).

Both paths decode only the packets the 12 frames need (:mod:`preprocess.avc_packets`, the product default);
the ``*-whole`` rows run the same worker with ``packet_skip=False`` (every picture up to the last requested
frame decoded, the previous behaviour) for comparison: same pixels, more CPU.

Reports videos/s per worker process by wall clock and by CPU time (user + sys of the worker process and its
ffmpeg children, ``getrusage`` SELF + CHILDREN, warm-up clip excluded; decord runs one decoder thread), and
ends with ``RESULT videos_per_s_per_core=<decord> ffmpeg_videos_per_s_per_core=<ffmpeg> ...`` (CPU time based:
robust on a shared machine). Two more rows, same worker, product default ``decoder=decord``: ``gop2s`` (the
same clips encoded with 2-second GOPs, ``-g 60``) and ``mixed`` (VFR mp4, rotated mp4, MPEG-TS with a start
offset, XVID AVI with B-frames, cycled; the last three are routed to the ffmpeg path and need a decoding probe
for TS / AVI). Anchor: video2dataset's ~0.8 videos/s/core with processing.

    python benchmarks/shard_throughput.py [--num-videos 12] [--seconds 10] [--frames 12] [--size 224]
"""

from __future__ import annotations

import argparse
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


def make_clips(folder: str, n: int, seconds: float, gop: int | None = None, tag: str = "clip") -> list[str]:
    """``n`` 640x480 30 fps libx264 veryfast clips; ``gop`` frames per GOP (``-g``; default: x264's 250)."""
    paths = []
    for i in range(n):
        p = os.path.join(folder, f"{tag}{i:03d}.mp4")
        gop_args = ["-g", str(gop), "-keyint_min", str(gop)] if gop else []
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
                *gop_args,
                "-pix_fmt",
                "yuv420p",
                p,
            ],
            check=True,
            timeout=300,
        )
        paths.append(p)
    return paths


def make_mixed(folder: str, n: int, seconds: float) -> list[str]:
    """``n`` real-world-style clips cycling through VFR mp4, rotated mp4, MPEG-TS with a start offset and an XVID
    AVI with B-frames (640x480, ``seconds`` long); the job routes the last three to the ffmpeg path."""
    src = ["-f", "lavfi", "-i", f"testsrc2=size=640x480:rate=30:duration={seconds}"]
    x264 = ["-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p"]
    kinds = [
        (
            "vfr.mp4",
            [
                *src,
                "-vf",
                "setpts='PTS+if(gt(N,100),9,0)+if(gt(N,200),15,0)'",
                "-fps_mode",
                "passthrough",
                *x264,
            ],
        ),
        ("rot.mp4", [*src, *x264, "-metadata:s:v:0", "rotate=90"]),
        ("ts.ts", [*src, *x264, "-output_ts_offset", "1.48", "-f", "mpegts"]),
        ("xvid.avi", [*src, "-c:v", "mpeg4", "-vtag", "XVID", "-bf", "2", "-q:v", "4"]),
    ]
    paths = []
    for i in range(n):
        name, args = kinds[i % len(kinds)]
        p = os.path.join(folder, f"mixed{i:03d}_{name}")
        cmd = [ffmpeg_binary(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y", *args, p]
        subprocess.run(cmd, check=True, timeout=300)
        paths.append(p)
    return paths


def _cpu() -> float:
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def _worker(paths: list[str], decoder: str, frames: int, size: int, whole: bool, out: mp.Queue) -> None:
    # whole: the job's own switch (``packet_skip=False``): every picture up to the last requested frame decoded
    cfg = PreprocessConfig(
        dataset="bench", anno_path="-", out="-", num_frames=frames, frame_size=size, decoder=decoder,
        packet_skip=not whole,
    )  # fmt: skip
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
        gop2s = make_clips(tmp, a.num_videos, a.seconds, gop=60, tag="gop2s")
        mixed = make_mixed(tmp, a.num_videos, a.seconds)
        rows = {}
        for decoder in ("decord", "ffmpeg"):
            rows[decoder] = measure(paths, decoder, a.frames, a.size)
            rows[f"{decoder}-whole"] = measure(paths, decoder, a.frames, a.size, whole=True)
        # the product default (decoder=decord, which routes TS / AVI / rotated files to ffmpeg) on the new sets
        rows["gop2s"] = measure(gop2s, "decord", a.frames, a.size)
        rows["mixed"] = measure(mixed, "decord", a.frames, a.size)
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
    g2, mx = (a.num_videos / rows[k][1] for k in ("gop2s", "mixed"))
    print(f"load avg at the end {load:.2f}")
    print(
        f"RESULT videos_per_s_per_core={d:.2f} gop2s_videos_per_s_per_core={g2:.2f} "
        f"mixed_videos_per_s_per_core={mx:.2f} ffmpeg_videos_per_s_per_core={f:.2f} "
        f"wall_videos_per_s={dw:.2f} ffmpeg_wall_videos_per_s={fw:.2f} "
        f"whole_file_videos_per_s_per_core={dx:.2f} ffmpeg_whole_file_videos_per_s_per_core={fx:.2f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
