"""Loader throughput: clips/s of normalised float batches from shards vs decoding video at load time.

Setup (all in a temporary folder): ``--clips`` source clips, 10 s 640x480 H.264 at 30 fps, made with the ffmpeg
binary; each clip's 12 uniformly spaced frames are decoded once with decord (short side 224, centre crop 224) and
stored as JPEG q90 (simplejpeg) in shards, ``--repeat`` copies per clip so an epoch is long enough to time.

Measured, one process / one worker each, same machine, one run:

* loader: ``shards.reader`` with ONE DataLoader worker (steady state: each epoch's first batch, which pays for
  the worker fork and the first fill, is excluded; the rate including it is printed too), T=12, 224x224, float output normalised with CLIP
  mean/std, shuffle buffer on, delivered batches counted in the main process; also with uint8 output (what a GPU
  trainer should request, normalising on the device: 4x fewer bytes to write into fresh shared memory);
* (a) on the fly: decord opens the mp4, decodes the same 12 frames (resized in decord), centre crop, normalise;
* (b) reference way: clips re-encoded offline to 3 fps, short side 224 (ffmpeg, not timed), then decoded
  sequentially at load time, one frame per second taken (CLIP4Clip/NeighborRetr), PIL bicubic resize 224 + centre
  crop + normalise;
* (c) raw JPEG decode of the same 12 frames with simplejpeg, nothing else.

``--gpu-decode`` additionally times ``torchvision.io.decode_jpeg(device="cuda")`` on the same frames when CUDA
exists (reported as "not run" otherwise).

Ends with ``RESULT clips_per_s=<n> vs_on_the_fly=<x> vs_reference=<x> of_raw_jpeg=<fraction>``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time

import numpy as np
import torch

from shards.reader import LoaderConfig, build_loader
from shards.transforms import CLIP_MEAN, CLIP_STD
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


def time_loader(root: str, batch_size: int, epochs: int, output: str = "float") -> tuple[float, float, int]:
    """``(steady clips/s, clips/s incl. start-up, clips)`` over ``epochs`` epochs with one DataLoader worker.

    Steady state excludes each epoch's first batch (worker fork + first fill); start-up is paid once per epoch.
    """
    cfg = LoaderConfig(
        root=root, split="bench", batch_size=batch_size, num_workers=1, num_frames=T, max_words=32,
        frame_size=SIZE, output=output, normalize=True, caption_mode="first", shuffle=True, shuffle_buffer=64,
    )  # fmt: skip
    dtype = torch.float32 if output == "float" else torch.uint8
    loader = build_loader(cfg, rank=0, world_size=1)
    clips = steady_clips = 0
    total = steady = 0.0
    for e in range(epochs):
        loader.set_epoch(e)
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
        total += end - start
        steady += end - (first or end)
    return steady_clips / steady, clips / total, clips


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


def time_raw_jpeg(jpegs: list[list[bytes]], n: int) -> float:
    import simplejpeg

    start = time.perf_counter()
    for i in range(n):
        for b in jpegs[i % len(jpegs)]:
            simplejpeg.decode_jpeg(b, colorspace="RGB")
    return n / (time.perf_counter() - start)


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
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--video-iters", type=int, default=12, help="clips timed for (a) and (b)")
    ap.add_argument("--gpu-decode", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="nr-bench-") as tmp:
        clips = make_clips(tmp, args.clips)
        jpegs = write_shards(os.path.join(tmp, "shards"), clips, args.repeat)
        ref = reencode_reference(tmp, clips)
        raw = time_raw_jpeg(jpegs, 300)
        loader, loader_all, n = time_loader(os.path.join(tmp, "shards"), args.batch_size, args.epochs)
        loader_u8, _, _ = time_loader(os.path.join(tmp, "shards"), args.batch_size, args.epochs, "uint8")
        fly = time_on_the_fly(clips, args.video_iters)
        refr = time_reference(ref, args.video_iters)
        raw2 = time_raw_jpeg(jpegs, 300)
        gpu = time_gpu_decode(jpegs, 300) if args.gpu_decode else None
    raw = max(raw, raw2)
    kb = sum(len(b) for b in jpegs[0]) / len(jpegs[0]) / 1024
    print(f"frames per clip: {T} at {SIZE}x{SIZE}, JPEG q90 ~{kb:.1f} KiB/frame; loader clips timed: {n}")
    print(f"{'path':<52}{'clips/s':>10}")
    print(f"{'shards -> loader (1 worker, float normalised)':<52}{loader:>10.1f}")
    print(f"{'  same, incl. worker start-up each epoch':<52}{loader_all:>10.1f}")
    print(f"{'shards -> loader (1 worker, uint8; normalise on GPU)':<52}{loader_u8:>10.1f}")
    print(f"{'(a) decord on the fly from mp4':<52}{fly:>10.1f}")
    print(f"{'(b) reference: 3 fps re-encode + PIL':<52}{refr:>10.1f}")
    print(f"{'(c) raw JPEG decode (simplejpeg, 12 frames)':<52}{raw:>10.1f}")
    if args.gpu_decode:
        print(f"{'GPU nvJPEG decode (torchvision)':<52}{(f'{gpu:.1f}' if gpu else 'not run (no CUDA)'):>10}")
    print(
        f"RESULT clips_per_s={loader:.1f} vs_on_the_fly={loader / fly:.1f} vs_reference={loader / refr:.1f} "
        f"of_raw_jpeg={loader / raw:.2f} with_startup_clips_per_s={loader_all:.1f} uint8_clips_per_s={loader_u8:.1f} uint8_of_raw_jpeg={loader_u8 / raw:.2f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
