"""Loader throughput: clips/s of normalised float batches from shards vs decoding video at load time.

Setup (all in a temporary folder): ``--clips`` source clips, 10 s 640x480 H.264 at 30 fps, made with the ffmpeg
binary; each clip's 12 uniformly spaced frames are decoded once with decord (short side 224, centre crop 224) and
stored as JPEG q90 (simplejpeg) in shards, ``--repeat`` copies per clip so an epoch is long enough to time.

Measured, one process / one worker each, same machine, one run. The variants are timed in ``--rounds``
interleaved rounds (one repetition of each per round) and the median per variant is reported, so that load from
other processes hits all variants alike; the load average is printed at the start and the end.

* loader: ``shards.reader`` with ONE DataLoader worker (steady state: each epoch's first batch, which pays for
  the worker fork and the first fill, is excluded; the rate including it is printed too), T=12, 224x224, float
  output normalised with CLIP mean/std, shuffle buffer on, delivered batches counted in the main process; also
  with uint8 output (what a GPU trainer should request, normalising on the device);
* (a) on the fly: decord opens the mp4, decodes the same 12 frames (resized in decord), centre crop, normalise;
* (b) reference way: clips re-encoded offline to 3 fps, short side 224 (ffmpeg, not timed), then decoded
  sequentially at load time, one frame per second taken (CLIP4Clip/NeighborRetr), PIL bicubic resize 224 + centre
  crop + normalise;
* (c) raw JPEG decode of the same 12 frames with simplejpeg, nothing else, in this process: both into fresh
  arrays and into one preallocated buffer (what the loader's worker does); the faster of the two is the
  denominator of ``of_raw_jpeg``.

Breakdown (ms per clip, medians): the loader run serially in this process (``num_workers=0``), the main-process
conversion of a uint8 wire batch into the output (:func:`shards.transforms.frames_from_hwc`), and the rest of the
worker's work (tar reading, JSON, tokenising, collating) as serial - conversion - JPEG decode. CPU time per clip
of the main process and of the worker (``cpu_bound_of_raw_jpeg``: raw decode CPU / the busier process's CPU, the
fraction of the raw rate the loader reaches when both processes have a core of their own) is printed too, since
on a shared machine the wall-clock rates mostly measure the other tenants.

``--gpu-decode`` additionally times ``torchvision.io.decode_jpeg(device="cuda")`` on the same frames when CUDA
exists (reported as "not run" otherwise).

Ends with ``RESULT clips_per_s=<n> vs_on_the_fly=<x> vs_reference=<x> of_raw_jpeg=<fraction> ...``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import tempfile
import time

import numpy as np
import torch

from shards.reader import LoaderConfig, build_loader
from shards.transforms import CLIP_MEAN, CLIP_STD, frames_from_hwc
from shards.writer import ShardWriter, encode_json

T, SIZE = 12, 224


def _ffmpeg() -> str:
    exe = shutil.which("ffmpeg")
    if exe:
        return exe
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def make_clips(folder: str, n: int) -> list[str]:
    """``n`` distinct 10 s 640x480 30 fps H.264 clips (moving test pattern + noise)."""
    paths = []
    for i in range(n):
        path = os.path.join(folder, f"clip{i:03d}.mp4")
        src = f"testsrc2=size=640x480:rate=30:duration=10,hue=h={i * 37 % 360},noise=alls=12:allf=t+u"
        subprocess.run(
            [_ffmpeg(), "-loglevel", "error", "-y", "-f", "lavfi", "-i", src, "-c:v", "libx264", "-preset",
             "veryfast", "-pix_fmt", "yuv420p", path],
            check=True,
        )  # fmt: skip
        paths.append(path)
    return paths


def _uniform(n: int, t: int) -> list[int]:
    return [round(i * (n - 1) / (t - 1)) for i in range(t)]


def _center_crop(a: np.ndarray, size: int) -> np.ndarray:
    h, w = a.shape[-3:-1]
    top, left = (h - size) // 2, (w - size) // 2
    return a[..., top : top + size, left : left + size, :]


def _normalise(frames_hwc: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(frames_hwc)).permute(0, 3, 1, 2).float() / 255.0
    return (x - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)


def decord_frames(path: str) -> np.ndarray:
    """12 uniform frames, short side 224 (decord resizes), centre-cropped: uint8 [12,224,224,3]."""
    import decord

    vr = decord.VideoReader(path, width=SIZE * 4 // 3 // 2 * 2, height=SIZE, num_threads=1)
    return _center_crop(vr.get_batch(_uniform(len(vr), T)).asnumpy(), SIZE)


def write_shards(root: str, clips: list[str], repeat: int) -> list[list[bytes]]:
    import simplejpeg

    jpegs = [
        [simplejpeg.encode_jpeg(np.ascontiguousarray(f), quality=90) for f in decord_frames(p)] for p in clips
    ]
    per_shard = max(1, len(clips) * repeat // 4)
    sizes, n, shard = {}, 0, None
    for r in range(repeat):
        for c, frames in enumerate(jpegs):
            if n % per_shard == 0:
                if shard is not None:
                    shard.close()
                    sizes[shard.stats.shard] = shard.stats.samples
                shard = ShardWriter(root, "bench", n // per_shard)
            cap = f"a test pattern video number {c} copy {r}"
            members = {f"f{i:03d}.jpg": b for i, b in enumerate(frames)}
            members["txt"] = cap.encode()
            members["json"] = encode_json({"video_id": f"clip{c}", "captions": [cap], "num_frames": T})
            shard.write(f"clip{c:03d}_{r:03d}", members)
            n += 1
    shard.close()
    sizes[shard.stats.shard] = shard.stats.samples
    with open(os.path.join(root, "bench", "sizes.json"), "w") as f:
        json.dump(sizes, f)
    return jpegs


def loader_config(root: str, batch_size: int, output: str = "float", workers: int = 1) -> LoaderConfig:
    return LoaderConfig(
        root=root, split="bench", batch_size=batch_size, num_workers=workers, num_frames=T, max_words=32,
        frame_size=SIZE, output=output, normalize=True, caption_mode="first", shuffle=True, shuffle_buffer=64,
    )  # fmt: skip


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def time_loader(loader, epoch: int, output: str = "float") -> tuple[float, float, int, float, float]:
    """``(steady clips/s, clips/s incl. start-up, clips, main CPU ms/clip, worker CPU ms/clip)`` of one epoch.

    Steady state excludes the epoch's first batch (worker fork + first fill); start-up is paid once per epoch.
    CPU times cover the whole epoch; the workers' is counted once they have exited (end of the epoch).
    """
    dtype = torch.float32 if output == "float" else torch.uint8
    clips = steady_clips = 0
    loader.set_epoch(epoch)
    cpu0, child0 = time.process_time(), _children_cpu()
    start = time.perf_counter()
    first = None
    for b in loader:
        assert b["frames"].dtype == dtype and b["frames"].shape[1:] == (T, 3, SIZE, SIZE)
        n = int(b["frames"].shape[0])
        clips += n
        if first is None:
            first = time.perf_counter()
        else:
            steady_clips += n
    end = time.perf_counter()
    main_cpu, worker_cpu = time.process_time() - cpu0, _children_cpu() - child0
    steady = steady_clips / (end - (first or end))
    return steady, clips / (end - start), clips, main_cpu / clips * 1e3, worker_cpu / clips * 1e3


def time_conversion(batch_size: int, output: str, reps: int = 3) -> float:
    """ms per clip of the main process turning a uint8 wire batch [B,T,H,W,3] into the output (reused buffer)."""
    wire = torch.randint(0, 256, (batch_size, T, SIZE, SIZE, 3), dtype=torch.uint8)
    mask = torch.ones(batch_size, T, dtype=torch.long)
    out = torch.empty(batch_size, T, 3, SIZE, SIZE, dtype=torch.float32 if output == "float" else torch.uint8)
    frames_from_hwc(wire, mask, output=output, out=out)
    start = time.perf_counter()
    for _ in range(reps):
        frames_from_hwc(wire, mask, output=output, out=out)
    return (time.perf_counter() - start) / reps / batch_size * 1e3


def time_on_the_fly(clips: list[str], n: int) -> float:
    start = time.perf_counter()
    for i in range(n):
        _normalise(decord_frames(clips[i % len(clips)]))
    return n / (time.perf_counter() - start)


def reencode_reference(folder: str, clips: list[str]) -> list[str]:
    out = []
    for p in clips:
        dst = p.replace(".mp4", "_3fps.mp4")
        subprocess.run(
            [_ffmpeg(), "-loglevel", "error", "-y", "-i", p, "-vf", "fps=3,scale=-2:224", "-c:v", "libx264",
             "-preset", "veryfast", dst],
            check=True,
        )  # fmt: skip
        out.append(dst)
    return out


def time_reference(clips_3fps: list[str], n: int) -> float:
    """Sequential decode of the 3 fps file, frame floor(sec*fps) per second (max 12), PIL bicubic + crop."""
    import decord
    from PIL import Image

    start = time.perf_counter()
    for i in range(n):
        vr = decord.VideoReader(clips_3fps[i % len(clips_3fps)], num_threads=1)
        fps = int(round(vr.get_avg_fps()))
        frames = [vr.next().asnumpy() for _ in range(len(vr))]  # sequential, like cv2.VideoCapture.read
        picked = [frames[s * fps] for s in range(min(T, len(frames) // fps))]
        out = []
        for f in picked:
            im = Image.fromarray(f)
            w, h = im.size
            s = SIZE / min(w, h)
            im = im.resize((round(w * s), round(h * s)), Image.BICUBIC)
            out.append(_center_crop(np.asarray(im), SIZE))
        _normalise(np.stack(out))
    return n / (time.perf_counter() - start)


def time_raw_jpeg(jpegs: list[list[bytes]], n: int, into_buffer: bool = False) -> tuple[float, float]:
    """``(clips/s, CPU ms per clip)`` of decoding the clips' 12 JPEGs with simplejpeg, nothing else."""
    import simplejpeg

    buf = np.empty((T, SIZE, SIZE, 3), np.uint8)
    cpu = time.process_time()
    start = time.perf_counter()
    for i in range(n):
        if into_buffer:
            for k, b in enumerate(jpegs[i % len(jpegs)]):
                simplejpeg.decode_jpeg(b, colorspace="RGB", buffer=buf[k])
        else:
            for b in jpegs[i % len(jpegs)]:
                simplejpeg.decode_jpeg(b, colorspace="RGB")
    return n / (time.perf_counter() - start), (time.process_time() - cpu) / n * 1e3


def time_gpu_decode(jpegs: list[list[bytes]], n: int) -> float | None:
    if not torch.cuda.is_available():
        return None
    from torchvision.io import decode_jpeg

    datas = [[torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in clip] for clip in jpegs]
    decode_jpeg(datas[0], device="cuda")
    torch.cuda.synchronize()
    start = time.perf_counter()
    for i in range(n):
        decode_jpeg(datas[i % len(datas)], device="cuda")
    torch.cuda.synchronize()
    return n / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=4, help="distinct source clips")
    ap.add_argument("--repeat", type=int, default=48, help="shard copies per clip")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=5, help="interleaved repetitions of every variant (median)")
    ap.add_argument("--video-iters", type=int, default=6, help="clips timed for (a) and (b) per round")
    ap.add_argument("--raw-iters", type=int, default=100, help="clips timed for (c) per round")
    ap.add_argument("--gpu-decode", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    load_start = os.getloadavg()
    times: dict[str, list[float]] = {}

    def rec(key: str, value: float) -> None:
        times.setdefault(key, []).append(value)

    with tempfile.TemporaryDirectory(prefix="nr-bench-") as tmp:
        clips = make_clips(tmp, args.clips)
        root = os.path.join(tmp, "shards")
        jpegs = write_shards(root, clips, args.repeat)
        ref = reencode_reference(tmp, clips)
        loaders = {
            (out, w): build_loader(loader_config(root, args.batch_size, out, w), rank=0, world_size=1)
            for out in ("float", "uint8")
            for w in (0, 1)
        }
        n = 0
        for r in range(args.rounds):
            for out in ("float", "uint8"):
                steady, with_start, clips_n, main_cpu, worker_cpu = time_loader(loaders[(out, 1)], r, out)
                rec(f"loader_{out}", steady)
                rec(f"loader_{out}_startup", with_start)
                rec(f"cpu_main_{out}", main_cpu)
                rec(f"cpu_worker_{out}", worker_cpu)
                n += clips_n
                rec(f"serial_{out}", time_loader(loaders[(out, 0)], r, out)[1])
                rec(f"convert_{out}", time_conversion(args.batch_size, out))
            rec("fly", time_on_the_fly(clips, args.video_iters))
            rec("ref", time_reference(ref, args.video_iters))
            for key, into in (("raw", False), ("raw_buf", True)):
                rate, cpu = time_raw_jpeg(jpegs, args.raw_iters, into_buffer=into)
                rec(key, rate)
                rec(f"cpu_{key}", cpu)
        gpu = time_gpu_decode(jpegs, 300) if args.gpu_decode else None
    load_end = os.getloadavg()
    med = {k: statistics.median(v) for k, v in times.items()}
    loader, loader_u8 = med["loader_float"], med["loader_uint8"]
    fly, refr = med["fly"], med["ref"]
    raw = max(med["raw"], med["raw_buf"])
    kb = sum(len(b) for b in jpegs[0]) / len(jpegs[0]) / 1024
    print(f"frames per clip: {T} at {SIZE}x{SIZE}, JPEG q90 ~{kb:.1f} KiB/frame; loader clips timed: {n}")
    print(f"load average (1/5/15 min) at start {load_start[0]:.2f}/{load_start[1]:.2f}/{load_start[2]:.2f}, "
          f"at end {load_end[0]:.2f}/{load_end[1]:.2f}/{load_end[2]:.2f}; cpus {os.cpu_count()}")  # fmt: skip
    print(f"medians of {args.rounds} interleaved rounds (min..max in brackets)")
    print(f"{'path':<56}{'clips/s':>10}  {'range':>15}")

    def row(label: str, key: str) -> None:
        v = times[key]
        print(f"{label:<56}{med[key]:>10.1f}  [{min(v):6.1f}..{max(v):6.1f}]")

    row("shards -> loader (1 worker, float normalised)", "loader_float")
    row("  same, incl. worker start-up each epoch", "loader_float_startup")
    row("shards -> loader (1 worker, uint8; normalise on GPU)", "loader_uint8")
    row("shards -> loader (no worker, serial, float)", "serial_float")
    row("shards -> loader (no worker, serial, uint8)", "serial_uint8")
    row("(a) decord on the fly from mp4", "fly")
    row("(b) reference: 3 fps re-encode + PIL", "ref")
    row("(c) raw JPEG decode (simplejpeg, 12 frames, fresh arrays)", "raw")
    row("(c') raw JPEG decode into one preallocated buffer", "raw_buf")
    if args.gpu_decode:
        print(f"{'GPU nvJPEG decode (torchvision)':<56}{(f'{gpu:.1f}' if gpu else 'not run (no CUDA)'):>10}")
    dec = 1e3 / med["raw_buf"]
    print("breakdown, ms per clip (medians):")
    for out in ("float", "uint8"):
        serial, conv = 1e3 / med[f"serial_{out}"], med[f"convert_{out}"]
        worker = serial - conv
        print(f"  {out:<5}: worker {worker:5.2f} = JPEG decode {dec:5.2f} + tar/json/tokenise/collate "
              f"{worker - dec:5.2f}; main-process conversion {conv:5.2f}; delivered with 1 worker "
              f"{1e3 / med[f'loader_{out}']:5.2f} (serial {serial:5.2f})")  # fmt: skip
    raw_cpu = min(med["cpu_raw"], med["cpu_raw_buf"])
    print("CPU time, ms per clip (medians; independent of how busy the machine is, up to cache/SMT effects):")
    print(
        f"  raw JPEG decode {raw_cpu:5.2f} (fresh {med['cpu_raw']:5.2f}, into buffer {med['cpu_raw_buf']:5.2f})"
    )
    bound = {}
    for out in ("float", "uint8"):
        main_cpu, worker_cpu = med[f"cpu_main_{out}"], med[f"cpu_worker_{out}"]
        bound[out] = raw_cpu / max(main_cpu, worker_cpu)
        print(f"  {out:<5} loader: worker {worker_cpu:5.2f}, main process {main_cpu:5.2f} -> with a free core each "
              f"~{1e3 / max(main_cpu, worker_cpu):6.1f} clips/s = {bound[out]:.2f} of raw decode")  # fmt: skip
    print(
        f"RESULT clips_per_s={loader:.1f} vs_on_the_fly={loader / fly:.1f} vs_reference={loader / refr:.1f} "
        f"of_raw_jpeg={loader / raw:.2f} with_startup_clips_per_s={med['loader_float_startup']:.1f} "
        f"uint8_clips_per_s={loader_u8:.1f} uint8_of_raw_jpeg={loader_u8 / raw:.2f} "
        f"cpu_bound_of_raw_jpeg={bound['float']:.2f} load_start={load_start[0]:.1f} load_end={load_end[0]:.1f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
