"""The GPU check's pieces that run without a GPU: the metrics summary (benchmarks/gpu_check_summary.py) and the
loader benchmark's byte reader + batched decode path (benchmarks/loader_throughput.py, run here on the CPU)."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MEAN = np.array([0.48145466, 0.4578275, 0.40821073])
STD = np.array([0.26862954, 0.26130258, 0.27577711])


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "benchmarks", f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(mod)
    return mod


summary_mod = _load("gpu_check_summary")
lt = _load("loader_throughput")


# ------------------------------------------------------------------------------------------------------------
# summary
# ------------------------------------------------------------------------------------------------------------
def _rec(step, epoch, wait, compute, t, batch=4, peak=None):
    r = {"event": "train", "step": step, "epoch": epoch, "data_wait_s": wait, "compute_s": compute,
         "time": t, "sample_index": list(range(batch)), "bank_size": 8}  # fmt: skip
    if peak is not None:
        r["gpu_mem_peak_gb"], r["gpu_mem_reserved_peak_gb"] = peak, peak + 1
    return r


def test_summary_hand_computed():
    recs = [
        _rec(1, 0, 5.0, 9.0, 100.0, peak=1.0),  # warm-up, skipped
        _rec(2, 0, 0.5, 1.5, 102.0, peak=2.0),
        _rec(3, 1, 2.0, 2.0, 110.0, peak=2.5),  # epoch start (bank pre-fill + checkpoint before it in wall)
        _rec(4, 1, 0.0, 2.0, 112.5, peak=2.25),
    ]
    s = summary_mod.summarise(recs, skip=1, steps=3)
    assert s["steps"] == 3 and s["first_step"] == 2 and s["last_step"] == 4 and s["samples"] == 12
    assert s["samples_per_s"] == pytest.approx(12 / 8.0)  # steps: 2 + 4 + 2 seconds
    assert s["data_wait_frac"] == pytest.approx(2.5 / 8.0)
    assert s["epoch_starts"] == 1
    assert s["data_wait_frac_excl_epoch_start"] == pytest.approx(0.5 / 4.0)
    assert s["samples_per_s_excl_epoch_start"] == pytest.approx(8 / 4.0)
    assert s["wall_s"] == pytest.approx(12.5) and s["wall_samples_per_s"] == pytest.approx(12 / 12.5)
    assert s["peak_mem_gb"] == 2.5 and s["peak_reserved_gb"] == 3.5
    line = summary_mod.result_line(s)
    assert line.startswith("RESULT gpu_samples_per_s=1.5 gpu_peak_mem_gb=2.5 gpu_data_wait_frac=0.3125 ")
    assert "epoch_starts=1" in line and "steps=3" in line


def test_summary_without_cuda_and_short_run(tmp_path):
    recs = [_rec(i, 0, 0.1, 0.9, float(i)) for i in range(1, 4)]
    s = summary_mod.summarise(recs, skip=1, steps=50)
    assert (
        s["steps"] == 2 and s["peak_mem_gb"] is None and "gpu_peak_mem_gb=none" in summary_mod.result_line(s)
    )
    with pytest.raises(ValueError, match="only 3 training steps logged"):
        summary_mod.summarise(recs, skip=3)
    path = tmp_path / "metrics.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in recs) + '\n{"event": "val", "step": 3}\n')
    assert summary_mod.load_train_records(str(path)) == recs
    assert summary_mod.main([str(tmp_path / "absent.jsonl")]) == 2


# ------------------------------------------------------------------------------------------------------------
# loader benchmark: byte batches + batched decode (CPU here; the benchmark runs it with device="cuda")
# ------------------------------------------------------------------------------------------------------------
def _jpeg(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def test_byte_batches_cover_every_sample_once_per_worker_split(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    clips = [[_jpeg(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)) for _ in range(2)] for _ in range(7)]
    samples = [(f"clip{i:03d}", f"v{i}", f"clip {i}", frames) for i, frames in enumerate(clips)]
    lt.write_jpeg_split(str(tmp_path), samples, per_shard=2)  # 4 shards: 2, 2, 2, 1 samples
    paths = lt.shard_paths(str(tmp_path))
    assert [os.path.basename(p) for p in paths] == [f"bench-{i:06d}.tar" for i in range(4)]
    seen: list[bytes] = []
    for wid in (0, 1):  # worker w of 2 reads shards w::2
        info = type("Info", (), {"id": wid, "num_workers": 2})()
        monkeypatch.setattr(lt, "get_worker_info", lambda info=info: info)
        batches = list(lt.JpegByteBatches(paths, batch_size=3, num_frames=2))
        assert [b["clips"] for b in batches] == ([3, 1] if wid == 0 else [3])
        for b in batches:
            assert b["data"].dtype == torch.uint8 and b["lengths"].tolist() and b["data"].dim() == 1
            parts = torch.split(b["data"], b["lengths"].tolist())
            seen += [bytes(p.numpy()) for p in parts]
    expected = [b for clip in clips for b in clip]
    assert sorted(seen) == sorted(expected) and len(seen) == len(expected)
    # frames stay in member order within a clip: clip 0 of shard 0 comes first for worker 0
    monkeypatch.setattr(lt, "get_worker_info", lambda: None)
    first = next(iter(lt.JpegByteBatches(paths, batch_size=1, num_frames=2)))
    assert bytes(first["data"].numpy()) == clips[0][0] + clips[0][1]
    with pytest.raises(ValueError, match="has 2 frames, expected 3"):
        next(iter(lt.JpegByteBatches(paths, batch_size=1, num_frames=3)))


def test_decode_batch_matches_independent_decode_and_normalise():
    rng = np.random.default_rng(1)
    frames = [rng.integers(0, 256, (16, 16, 3), dtype=np.uint8) for _ in range(6)]  # 2 clips x 3 frames
    blobs = [_jpeg(f) for f in frames]
    data = torch.from_numpy(np.frombuffer(b"".join(blobs), np.uint8).copy())
    lengths = torch.tensor([len(b) for b in blobs])
    out = lt.decode_batch_on("cpu", data, lengths, clips=2, size=16)
    assert out.shape == (2, 3, 3, 16, 16) and out.dtype == torch.float32
    ref = np.stack([np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in blobs]).astype(np.float64)
    ref = ((ref / 255.0 - MEAN) / STD).transpose(0, 3, 1, 2).reshape(2, 3, 3, 16, 16)
    # libjpeg-turbo (torchvision) vs PIL's libjpeg may differ by one grey level per pixel
    assert np.abs(out.numpy() - ref).max() <= 1.5 / 255 / STD.min()
    assert np.abs(out.numpy() - ref).mean() < 0.2 / 255 / STD.min()


def test_decode_batch_centre_crops_frames_of_another_size():
    rng = np.random.default_rng(2)
    frame = rng.integers(
        0, 256, (16, 32, 3), dtype=np.uint8
    )  # h=16, w=32 -> short side already 16: crop only
    blob = _jpeg(frame)
    data = torch.from_numpy(np.frombuffer(blob, np.uint8).copy())
    out = lt.decode_batch_on("cpu", data, torch.tensor([len(blob)]), clips=1, size=16)
    assert out.shape == (1, 1, 3, 16, 16)
    dec = np.asarray(Image.open(io.BytesIO(blob)).convert("RGB")).astype(np.float64)[:, 8:24]
    ref = ((dec / 255.0 - MEAN) / STD).transpose(2, 0, 1)
    assert np.abs(out[0, 0].numpy() - ref).max() <= 1.5 / 255 / STD.min()


def test_jpeg_device_cuda_refuses_without_cuda(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert lt.main(["--jpeg-device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert "--jpeg-device cuda needs a CUDA device" in err and "torch.cuda.is_available() is False" in err


def test_workers_option_rejects_bad_lists():
    assert lt._worker_counts("1,8") == [1, 8]
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "benchmarks", "loader_throughput.py"), "--workers", "0,x"],
        capture_output=True, text=True, timeout=60, cwd=REPO, env={**os.environ, "PYTHONPATH": REPO},
    )  # fmt: skip
    assert proc.returncode == 2 and "--workers: expected a comma list of positive integers" in proc.stderr
