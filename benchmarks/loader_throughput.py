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
exists (reported as "not run" otherwise): the raw nvJPEG rate, no pipeline around it.

``--jpeg-device cuda`` (a BENCHMARK option, not a reader feature: ``shards.reader`` always decodes on the CPU)
compares, on the same shards and with the same worker counts (``--workers 1,8``), clips/s delivered to the GPU as
normalised float ``[B,T,3,S,S]`` CUDA tensors by

* cpu-float: the reader (float output, normalised in the main process), then ``.to("cuda")``: what the trainer
  does;
* cpu-uint8: the reader (uint8 output), ``.to("cuda")``, then /255 and CLIP mean/std on the GPU;
* gpu-decode: worker processes that only read the tars and ship each batch's JPEG bytes (one packed uint8 tensor
  + lengths); the main process decodes them in ONE batched ``torchvision.io.decode_jpeg(list, device="cuda")``
  call (nvJPEG), resizes (short side S, bilinear, antialias) and centre-crops on the GPU when the stored frames
  are not S x S (the shards here hold S x S frames, so this is a no-op), then normalises. No shuffle buffer,
  shard-per-worker split (``--shards`` should be a multiple of the worker counts).

Steady state as for the loader rows (each epoch's first batch excluded), ``torch.cuda.synchronize()`` before
every clock read. It stops with a clear message when CUDA is absent. ``--no-video-baselines`` skips (a), (b) and
the serial/conversion breakdown (no decord needed: the 12 frames are then extracted with the ffmpeg binary).

Ends with ``RESULT clips_per_s=<n> vs_on_the_fly=<x> vs_reference=<x> of_raw_jpeg=<fraction> ...`` (the two
``vs_`` keys absent under ``--no-video-baselines``; with ``--jpeg-device cuda`` also ``gpu_decode_w<W>``,
``cpu_float_to_gpu_w<W>``, ``cpu_uint8_to_gpu_w<W>`` clips/s for every worker count W).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from shards.reader import LoaderConfig, build_loader
from shards.schema import is_frame_member
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


def ffmpeg_frames(path: str) -> np.ndarray:
    """The same 12 frames as :func:`decord_frames` (short side 224, bilinear, centre crop) through the ffmpeg
    binary, for machines without decord: uint8 ``[12,224,224,3]``."""
    n = int(round(_probe_seconds(path) * 30))
    picks = "+".join(f"eq(n\\,{i})" for i in _uniform(n, T))
    vf = f"select={picks},scale=-2:{SIZE}:flags=bilinear,crop={SIZE}:{SIZE}"
    proc = subprocess.run(
        [_ffmpeg(), "-loglevel", "error", "-nostdin", "-i", path, "-vf", vf, "-fps_mode", "passthrough",
         "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
        check=True, capture_output=True,
    )  # fmt: skip
    frames = np.frombuffer(proc.stdout, np.uint8)
    if frames.size != T * SIZE * SIZE * 3:
        raise RuntimeError(f"ffmpeg gave {frames.size} bytes for {T} frames of {path}")
    return frames.reshape(T, SIZE, SIZE, 3)


def _probe_seconds(path: str) -> float:
    """Duration of the clips made by :func:`make_clips` (10 s; read from ffmpeg's header dump)."""
    proc = subprocess.run(
        [_ffmpeg(), "-hide_banner", "-nostdin", "-i", path], capture_output=True, check=False
    )
    for line in proc.stderr.decode("utf-8", "replace").splitlines():
        if "Duration:" in line:
            hh, mm, ss = line.split("Duration:")[1].split(",")[0].strip().split(":")
            return int(hh) * 3600 + int(mm) * 60 + float(ss)
    raise RuntimeError(f"no duration in ffmpeg's header of {path}")


def write_shards(
    root: str, clips: list[str], repeat: int, *, num_shards: int = 4, use_decord: bool = True
) -> list[list[bytes]]:
    import simplejpeg

    extract = decord_frames if use_decord else ffmpeg_frames
    jpegs = [[simplejpeg.encode_jpeg(np.ascontiguousarray(f), quality=90) for f in extract(p)] for p in clips]
    per_shard = max(1, len(clips) * repeat // num_shards)
    samples = [
        (f"clip{c:03d}_{r:03d}", f"clip{c}", f"a test pattern video number {c} copy {r}", frames)
        for r in range(repeat)
        for c, frames in enumerate(jpegs)
    ]
    write_jpeg_split(root, samples, per_shard)
    return jpegs


def write_jpeg_split(root: str, samples: list[tuple[str, str, str, list[bytes]]], per_shard: int) -> None:
    """Shards ``{root}/bench/bench-NNNNNN.tar`` of ``per_shard`` samples each, plus ``sizes.json``, from
    ``(key, video_id, caption, jpeg frames)`` tuples in order."""
    sizes, shard = {}, None
    for n, (key, video_id, cap, frames) in enumerate(samples):
        if n % per_shard == 0:
            if shard is not None:
                shard.close()
                sizes[shard.stats.shard] = shard.stats.samples
            shard = ShardWriter(root, "bench", n // per_shard)
        members = {f"f{i:03d}.jpg": b for i, b in enumerate(frames)}
        members["txt"] = cap.encode()
        members["json"] = encode_json({"video_id": video_id, "captions": [cap], "num_frames": len(frames)})
        shard.write(key, members)
    shard.close()
    sizes[shard.stats.shard] = shard.stats.samples
    with open(os.path.join(root, "bench", "sizes.json"), "w") as f:
        json.dump(sizes, f)


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


class JpegByteBatches(IterableDataset):
    """Batches of undecoded JPEG bytes read from the tar shards ``paths`` (worker w of W takes shards w::W).

    Yields ``{"data": uint8 [sum of frame sizes], "lengths": int64 [n*T], "clips": n}``: the ``T`` frame
    members of each of ``n <= batch_size`` consecutive samples, packed in member-name order (f000, f001, ...),
    so that one shared tensor crosses the worker queue instead of ``n*T`` small ones.
    """

    def __init__(self, paths: list[str], batch_size: int, num_frames: int = T) -> None:
        self.paths, self.batch_size, self.num_frames = list(paths), batch_size, num_frames

    def _samples(self, path: str):
        key, frames = None, {}
        with tarfile.open(path, mode="r|") as tf:
            for m in tf:
                if not m.isfile():
                    continue
                base = os.path.basename(m.name)
                k, _, ext = base.partition(".")
                if k != key:
                    if frames:
                        yield key, frames
                    key, frames = k, {}
                if is_frame_member(ext.lower()):
                    f = tf.extractfile(m)
                    assert f is not None
                    frames[ext.lower()] = f.read()
        if frames:
            yield key, frames

    def _pack(self, clips: list[list[bytes]]) -> dict:
        flat = [b for clip in clips for b in clip]
        data = np.frombuffer(b"".join(flat), np.uint8).copy()
        return {
            "data": torch.from_numpy(data),
            "lengths": torch.tensor([len(b) for b in flat], dtype=torch.int64),
            "clips": len(clips),
        }

    def __iter__(self):
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        batch: list[list[bytes]] = []
        for path in self.paths[wid::nw]:
            for key, frames in self._samples(path):
                if len(frames) != self.num_frames:
                    raise ValueError(
                        f"{path}: sample {key} has {len(frames)} frames, expected {self.num_frames}"
                    )
                batch.append([frames[n] for n in sorted(frames)])
                if len(batch) == self.batch_size:
                    yield self._pack(batch)
                    batch = []
        if batch:
            yield self._pack(batch)


def shard_paths(root: str, split: str = "bench") -> list[str]:
    """Local tar paths of a split, in sizes.json order."""
    with open(os.path.join(root, split, "sizes.json")) as f:
        names = list(json.load(f))
    return [os.path.join(root, split, n) for n in names]


def byte_loader(root: str, batch_size: int, workers: int) -> DataLoader:
    ds = JpegByteBatches(shard_paths(root), batch_size)
    kw = {"prefetch_factor": 2} if workers > 0 else {}
    return DataLoader(ds, batch_size=None, num_workers=workers, **kw)


_VIEW_FALLBACK: list[bool] = []


def decode_batch_on(device: str | torch.device, data: torch.Tensor, lengths: torch.Tensor, clips: int,
                    size: int = SIZE) -> torch.Tensor:  # fmt: skip
    """One packed byte batch -> normalised float ``[clips, T, 3, size, size]`` on ``device``.

    One batched ``torchvision.io.decode_jpeg(list, device=device)`` call (nvJPEG on CUDA) over views of
    ``data``; frames that are not ``size x size`` are resized (short side ``size``, bilinear, antialias) and
    centre-cropped on ``device``; then ``(x / 255 - mean) / std`` with CLIP's mean/std.
    """
    from torchvision.io import ImageReadMode, decode_jpeg

    parts = list(torch.split(data, lengths.tolist()))
    try:
        images = decode_jpeg(parts, mode=ImageReadMode.RGB, device=device)
    except RuntimeError as e:  # a decoder that refuses views of one buffer: one copy per frame, said once
        if not _VIEW_FALLBACK:
            print(f"decode_jpeg refused views of the packed batch ({e}); copying each frame", file=sys.stderr)
        _VIEW_FALLBACK.append(True)
        images = decode_jpeg([p.clone() for p in parts], mode=ImageReadMode.RGB, device=device)
    t = len(parts) // clips
    if all(tuple(im.shape[-2:]) == (size, size) for im in images):
        x = torch.stack(images).float()
    else:
        x = torch.stack([_resize_crop(im.float(), size) for im in images])
    mean = torch.tensor(CLIP_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=x.device).view(1, 3, 1, 1)
    x = x.mul_(1.0 / 255).sub_(mean).div_(std)
    return x.view(clips, t, 3, size, size)


def _resize_crop(im: torch.Tensor, size: int) -> torch.Tensor:
    """``[3,h,w]`` float -> ``[3,size,size]``: short side to ``size`` (bilinear, antialias), centre crop."""
    h, w = im.shape[-2:]
    s = size / min(h, w)
    nh, nw = max(size, round(h * s)), max(size, round(w * s))
    im = torch.nn.functional.interpolate(im[None], size=(nh, nw), mode="bilinear", antialias=True)[0]
    top, left = (nh - size) // 2, (nw - size) // 2
    return im[:, top : top + size, left : left + size]


def time_gpu_pipeline(loader: DataLoader, device: str) -> tuple[float, int]:
    """``(steady clips/s, clips)`` of one pass of the byte loader decoded on ``device`` (first batch
    excluded)."""
    clips = steady = 0
    first = None
    for b in loader:
        x = decode_batch_on(device, b["data"], b["lengths"], int(b["clips"]))
        assert x.shape[1:] == (T, 3, SIZE, SIZE)
        clips += int(b["clips"])
        if first is None:
            torch.cuda.synchronize()
            first = time.perf_counter()
        else:
            steady += int(b["clips"])
    torch.cuda.synchronize()
    end = time.perf_counter()
    return steady / max(end - (first or end), 1e-9), clips


def time_loader_to_gpu(loader, epoch: int, output: str, device: str) -> tuple[float, int]:
    """``(steady clips/s, clips)`` of the reader's batches moved to ``device`` as normalised float (uint8
    output is normalised there); first batch excluded."""
    mean = torch.tensor(CLIP_MEAN, device=device).view(1, 1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=device).view(1, 1, 3, 1, 1)
    loader.set_epoch(epoch)
    clips = steady = 0
    first = None
    for b in loader:
        x = b["frames"].to(device)
        if output == "uint8":
            x = x.float().mul_(1.0 / 255).sub_(mean).div_(std)
        assert x.dtype == torch.float32 and x.shape[1:] == (T, 3, SIZE, SIZE)
        n = int(x.shape[0])
        clips += n
        if first is None:
            torch.cuda.synchronize()
            first = time.perf_counter()
        else:
            steady += n
    torch.cuda.synchronize()
    end = time.perf_counter()
    return steady / max(end - (first or end), 1e-9), clips


def _worker_counts(text: str) -> list[int]:
    try:
        counts = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        counts = []
    if not counts or any(c < 1 for c in counts):
        raise argparse.ArgumentTypeError(
            f"--workers: expected a comma list of positive integers, got {text!r}"
        )
    return counts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=4, help="distinct source clips")
    ap.add_argument("--repeat", type=int, default=48, help="shard copies per clip")
    ap.add_argument("--shards", type=int, default=4, help="shards written (a multiple of --workers' counts)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=5, help="interleaved repetitions of every variant (median)")
    ap.add_argument("--video-iters", type=int, default=6, help="clips timed for (a) and (b) per round")
    ap.add_argument("--raw-iters", type=int, default=100, help="clips timed for (c) per round")
    ap.add_argument("--gpu-decode", action="store_true", help="also time raw nvJPEG decoding (CUDA)")
    ap.add_argument(
        "--jpeg-device", choices=("cpu", "cuda"), default="cpu",
        help="cuda: also time JPEG decoding on the GPU (batched nvJPEG) vs the CPU loader (module doc)",
    )  # fmt: skip
    ap.add_argument(
        "--workers", type=_worker_counts, default=[1], help="worker counts for --jpeg-device cuda"
    )
    ap.add_argument(
        "--no-video-baselines", action="store_true",
        help="skip (a), (b) and the serial/conversion breakdown (no decord: frames extracted with ffmpeg)",
    )  # fmt: skip
    args = ap.parse_args(argv)
    if args.jpeg_device == "cuda" and not torch.cuda.is_available():
        print(
            "loader_throughput: --jpeg-device cuda needs a CUDA device, but torch.cuda.is_available() is "
            f"False (torch {torch.__version__}); run it on a GPU machine or leave the option out",
            file=sys.stderr,
        )
        return 2
    baselines = not args.no_video_baselines
    torch.set_num_threads(1)
    load_start = os.getloadavg()
    times: dict[str, list[float]] = {}

    def rec(key: str, value: float) -> None:
        times.setdefault(key, []).append(value)

    with tempfile.TemporaryDirectory(prefix="nr-bench-") as tmp:
        clips = make_clips(tmp, args.clips)
        root = os.path.join(tmp, "shards")
        jpegs = write_shards(root, clips, args.repeat, num_shards=args.shards, use_decord=baselines)
        ref = reencode_reference(tmp, clips) if baselines else []
        loaders = {
            (out, w): build_loader(loader_config(root, args.batch_size, out, w), rank=0, world_size=1)
            for out in ("float", "uint8")
            for w in ((0, 1) if baselines else (1,))
        }
        gpu_workers = args.workers if args.jpeg_device == "cuda" else []
        for w in gpu_workers:
            for out in ("float", "uint8"):
                if (out, w) not in loaders:
                    loaders[(out, w)] = build_loader(
                        loader_config(root, args.batch_size, out, w), rank=0, world_size=1
                    )
        byte_loaders = {w: byte_loader(root, args.batch_size, w) for w in gpu_workers}
        if gpu_workers:  # CUDA context + nvJPEG initialised before any timing
            b = next(iter(byte_loader(root, args.batch_size, 0)))
            decode_batch_on("cuda", b["data"], b["lengths"], int(b["clips"]))
            torch.cuda.synchronize()
        n = 0
        for r in range(args.rounds):
            for out in ("float", "uint8"):
                steady, with_start, clips_n, main_cpu, worker_cpu = time_loader(loaders[(out, 1)], r, out)
                rec(f"loader_{out}", steady)
                rec(f"loader_{out}_startup", with_start)
                rec(f"cpu_main_{out}", main_cpu)
                rec(f"cpu_worker_{out}", worker_cpu)
                n += clips_n
                if baselines:
                    rec(f"serial_{out}", time_loader(loaders[(out, 0)], r, out)[1])
                    rec(f"convert_{out}", time_conversion(args.batch_size, out))
            if baselines:
                rec("fly", time_on_the_fly(clips, args.video_iters))
                rec("ref", time_reference(ref, args.video_iters))
            for key, into in (("raw", False), ("raw_buf", True)):
                rate, cpu = time_raw_jpeg(jpegs, args.raw_iters, into_buffer=into)
                rec(key, rate)
                rec(f"cpu_{key}", cpu)
            for w in gpu_workers:
                for out in ("float", "uint8"):
                    rec(f"cpu_{out}_to_gpu_w{w}", time_loader_to_gpu(loaders[(out, w)], r, out, "cuda")[0])
                rec(f"gpu_decode_w{w}", time_gpu_pipeline(byte_loaders[w], "cuda")[0])
        gpu = time_gpu_decode(jpegs, 300) if (args.gpu_decode or gpu_workers) else None
    load_end = os.getloadavg()
    med = {k: statistics.median(v) for k, v in times.items()}
    loader, loader_u8 = med["loader_float"], med["loader_uint8"]
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
    if baselines:
        row("shards -> loader (no worker, serial, float)", "serial_float")
        row("shards -> loader (no worker, serial, uint8)", "serial_uint8")
        row("(a) decord on the fly from mp4", "fly")
        row("(b) reference: 3 fps re-encode + PIL", "ref")
    row("(c) raw JPEG decode (simplejpeg, 12 frames, fresh arrays)", "raw")
    row("(c') raw JPEG decode into one preallocated buffer", "raw_buf")
    if args.gpu_decode or gpu_workers:
        label = "GPU nvJPEG decode (torchvision, raw, in-process)"
        print(f"{label:<56}{(f'{gpu:.1f}' if gpu else 'not run (no CUDA)'):>10}")
    for w in gpu_workers:
        print(f"normalised float [B,{T},3,{SIZE},{SIZE}] on the GPU, {w} worker(s), batch {args.batch_size}:")
        row("  cpu-float: reader float -> .to(cuda)", f"cpu_float_to_gpu_w{w}")
        row("  cpu-uint8: reader uint8 -> .to(cuda) -> normalise", f"cpu_uint8_to_gpu_w{w}")
        row("  gpu-decode: bytes -> batched nvJPEG -> normalise", f"gpu_decode_w{w}")
    dec = 1e3 / med["raw_buf"]
    if baselines:
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
    vs = (
        f"vs_on_the_fly={loader / med['fly']:.1f} vs_reference={loader / med['ref']:.1f} "
        if baselines
        else ""
    )
    gpu_keys = "".join(
        f" cpu_float_to_gpu_w{w}={med[f'cpu_float_to_gpu_w{w}']:.1f}"
        f" cpu_uint8_to_gpu_w{w}={med[f'cpu_uint8_to_gpu_w{w}']:.1f} gpu_decode_w{w}={med[f'gpu_decode_w{w}']:.1f}"
        for w in gpu_workers
    )
    if gpu is not None:
        gpu_keys += f" raw_nvjpeg_clips_per_s={gpu:.1f}"
    print(
        f"RESULT clips_per_s={loader:.1f} {vs}"
        f"of_raw_jpeg={loader / raw:.2f} with_startup_clips_per_s={med['loader_float_startup']:.1f} "
        f"uint8_clips_per_s={loader_u8:.1f} uint8_of_raw_jpeg={loader_u8 / raw:.2f} "
        f"cpu_bound_of_raw_jpeg={bound['float']:.2f} load_start={load_start[0]:.1f} load_end={load_end[0]:.1f}"
        f"{gpu_keys}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
