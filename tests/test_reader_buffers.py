"""The reader's fast float path: uint8 wire batches converted in the main process, buffer reuse that never
overwrites what the caller holds, decoding straight into the batch, and the frame conversion functions."""

from __future__ import annotations

import numpy as np
import pytest
import simplejpeg
import torch
from shard_fixtures import make_jpeg, write_split

import shards.reader as reader_mod
from shards.reader import LoaderConfig, build_loader
from shards.transforms import (
    CLIP_MEAN,
    CLIP_STD,
    decode_jpeg,
    default_tokenizer,
    frames_from_hwc,
    frames_to_hwc,
    frames_to_tensor,
    jpeg_size,
    normalize_frames,
    sample_augment,
)

SIZES = [6, 5]


@pytest.fixture(scope="module")
def tokenizer():
    return default_tokenizer()


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    """Two shards of 16x16 frames; sample (0, 2) has 2 frames (padded to T=4), the rest 4."""
    root = str(tmp_path_factory.mktemp("bufs"))
    specs = write_split(root, "train", SIZES, frames_per_sample=lambda s, i: 2 if (s, i) == (0, 2) else 4)
    return root, {s.key: s for s in specs}


def _cfg(root: str, **kw) -> LoaderConfig:
    base = dict(
        root=root, split="train", batch_size=2, num_workers=0, num_frames=4, max_words=8, frame_size=16,
        output="float", caption_mode="first", shuffle_buffer=4, seed=3,
    )  # fmt: skip
    base.update(kw)
    return LoaderConfig(**base)


def _normalise(u8: np.ndarray) -> np.ndarray:
    """Brute force: uint8 [...,3,H,W] -> (x/255 - mean)/std per channel, element by element via broadcasting."""
    mean = np.array(CLIP_MEAN, dtype=np.float64).reshape(3, 1, 1)
    std = np.array(CLIP_STD, dtype=np.float64).reshape(3, 1, 1)
    return (u8.astype(np.float64) / 255.0 - mean) / std


def _expected_frames(spec, num_frames: int) -> np.ndarray:
    """uint8 [T,3,16,16] the loader must deliver for a sample of the fixture (no resize, zero padding)."""
    out = np.zeros((num_frames, 3, 16, 16), dtype=np.uint8)
    for f, data in enumerate(spec.frames[:num_frames]):
        out[f] = simplejpeg.decode_jpeg(data, colorspace="RGB").transpose(2, 0, 1)
    return out


def _check_content(batches, specs, output: str) -> int:
    rows = 0
    for b in batches:
        for row, key in enumerate(b["keys"]):
            if b["is_pad"][row]:
                continue
            spec = specs[key]
            exp = _expected_frames(spec, 4)
            got = b["frames"][row].numpy()
            if output == "uint8":
                assert np.array_equal(got, exp), key
            else:
                nf = len(spec.frames)
                np.testing.assert_allclose(got[:nf], _normalise(exp[:nf]), atol=1e-5, err_msg=key)
                assert not got[nf:].any(), key  # padded frames are 0 in the output space
            rows += 1
    return rows


# -- conversion functions ---------------------------------------------------------------------------------------


def test_frames_from_hwc_matches_brute_force():
    rng = np.random.default_rng(0)
    wire = rng.integers(0, 256, size=(2, 3, 4, 5, 3), dtype=np.uint8)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    fl = frames_from_hwc(torch.from_numpy(wire), mask, output="float")
    u8 = frames_from_hwc(torch.from_numpy(wire), mask, output="uint8")
    raw = frames_from_hwc(torch.from_numpy(wire), mask, output="float", normalize=False)
    assert fl.shape == (2, 3, 3, 4, 5) and fl.dtype == torch.float32 and u8.dtype == torch.uint8
    for b in range(2):
        for t in range(3):
            chw = wire[b, t].transpose(2, 0, 1)
            if mask[b, t]:
                assert np.array_equal(u8[b, t].numpy(), chw)
                np.testing.assert_allclose(fl[b, t].numpy(), _normalise(chw), atol=1e-5)
                np.testing.assert_allclose(raw[b, t].numpy(), chw / 255.0, atol=1e-6)
            else:
                assert not u8[b, t].any() and not fl[b, t].any() and not raw[b, t].any()


def test_normalize_frames_equals_the_loaders_float_output():
    # uint8 batch normalised on its device == the float batch the loader's main process makes, padding 0
    rng = np.random.default_rng(1)
    wire = torch.from_numpy(rng.integers(0, 256, size=(2, 3, 4, 5, 3), dtype=np.uint8))
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    u8 = frames_from_hwc(wire, mask, output="uint8")
    for normalize in (True, False):
        want = frames_from_hwc(wire, mask, output="float", normalize=normalize)
        got = normalize_frames(u8, mask, normalize=normalize)
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, want, atol=0, rtol=0)
    with pytest.raises(ValueError, match=r"frames must be uint8 \[B,T,3,H,W\]"):
        normalize_frames(u8.float(), mask)
    with pytest.raises(ValueError, match=r"frame_mask must be \[2, 3\]"):
        normalize_frames(u8, mask[:, :2])


def test_frames_from_hwc_fills_the_given_buffer_and_names_bad_inputs():
    wire = torch.zeros(1, 2, 4, 4, 3, dtype=torch.uint8)
    mask = torch.ones(1, 2, dtype=torch.long)
    out = torch.full((1, 2, 3, 4, 4), 7.0)
    assert frames_from_hwc(wire, mask, out=out) is out
    torch.testing.assert_close(out[0, 0, 0], torch.full((4, 4), -CLIP_MEAN[0] / CLIP_STD[0]))
    with pytest.raises(ValueError, match=r"wire must be uint8 \[B,T,H,W,3\]"):
        frames_from_hwc(wire.float(), mask)
    with pytest.raises(ValueError, match=r"frame_mask must be \[1,2\]"):
        frames_from_hwc(wire, mask[:, :1])
    with pytest.raises(ValueError, match="out must be contiguous torch.float32"):
        frames_from_hwc(wire, mask, out=torch.empty(1, 2, 3, 4, 4, dtype=torch.uint8))
    with pytest.raises(ValueError, match="output must be"):
        frames_from_hwc(wire, mask, output="half")


def test_decode_jpeg_into_a_buffer():
    data = make_jpeg(5, size=24)
    assert jpeg_size(data) == (24, 24)
    ref = decode_jpeg(data)
    buf = np.full((2, 24, 24, 3), 9, dtype=np.uint8)
    got = decode_jpeg(data, buf[1])
    assert np.array_equal(buf[1], ref) and np.shares_memory(got, buf)
    assert (buf[0] == 9).all()  # nothing written outside the target frame
    with pytest.raises(ValueError, match=r"JPEG is 24x24x3, out buffer is uint8 \[16, 16, 3\]"):
        decode_jpeg(data, np.empty((16, 16, 3), np.uint8))
    with pytest.raises(ValueError, match=r"JPEG is 24x24x3, out buffer is uint8 \[32, 32, 3\]"):
        decode_jpeg(data, np.empty((32, 32, 3), np.uint8))  # larger buffer: no silent partial fill
    with pytest.raises(ValueError, match=r"out must be a C-contiguous uint8 \[H,W,3\]"):
        decode_jpeg(data, np.empty((24, 24, 3), np.float32))
    with pytest.raises(ValueError, match="corrupt JPEG"):
        decode_jpeg(b"\xff\xd8 not a jpeg", np.empty((16, 16, 3), np.uint8))
    with pytest.raises(ValueError, match="corrupt JPEG"):
        jpeg_size(b"nope")


@pytest.mark.parametrize("augment", [None, 11])
def test_frames_to_hwc_is_frames_to_tensor_uint8_in_hwc(augment):
    frames = [decode_jpeg(make_jpeg(s, size=24)) for s in (1, 2, 3)]
    aug = sample_augment(augment) if augment is not None else None
    out = np.full((4, 16, 16, 3), 5, dtype=np.uint8)
    assert frames_to_hwc(frames, out, augment=aug) == 3
    ref, mask = frames_to_tensor(frames, num_frames=4, frame_size=(16, 16), output="uint8", augment=aug)
    assert np.array_equal(out.transpose(0, 3, 1, 2), ref.numpy())
    assert not out[3].any() and mask.tolist() == [1, 1, 1, 0]
    with pytest.raises(ValueError, match="differ in size"):
        frames_to_hwc([frames[0], frames[0][:8]], out)


# -- the loader ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("workers", [0, 1])
def test_float_equals_normalised_uint8_also_when_resized_or_augmented(tmp_path, tokenizer, workers):
    root = str(tmp_path)
    write_split(root, "train", [4], size=24, frames_per_sample=lambda s, i: 2 if i == 1 else 3)
    for augment in (False, True):
        kw = dict(frame_size=16, augment=augment, num_workers=workers, batch_size=4, shuffle=False)
        u8 = next(
            iter(build_loader(_cfg(root, output="uint8", **kw), rank=0, world_size=1, tokenizer=tokenizer))
        )
        fl = next(iter(build_loader(_cfg(root, **kw), rank=0, world_size=1, tokenizer=tokenizer)))
        assert torch.equal(u8["sample_index"], fl["sample_index"])
        exp = _normalise(u8["frames"].numpy()) * u8["frame_mask"].numpy()[:, :, None, None, None]
        np.testing.assert_allclose(fl["frames"].numpy(), exp, atol=1e-5)
        assert fl["sample_index"].tolist() == [0, 1, 2, 3]
        assert fl["frame_mask"][1].tolist() == [1, 1, 0, 0] and not fl["frames"][1, 2:].any()


@pytest.mark.parametrize("output", ["float", "uint8"])
def test_held_batches_are_never_overwritten_and_free_buffers_are_reused(split, tokenizer, output):
    root, specs = split
    loader = build_loader(_cfg(root, output=output), rank=0, world_size=1, tokenizer=tokenizer)
    it = iter(loader)
    whole = next(it)["frames"]  # the batch tensor itself
    view = next(it)["frames"][1]  # only a view of a row
    arr = next(it)["frames"].numpy()  # only a numpy array over the memory
    copies = [whole.clone(), view.clone(), arr.copy()]
    ptrs = {whole.data_ptr(), view.data_ptr(), arr.ctypes.data}
    rest = list(it)
    assert len(rest) == len(loader) - 3 >= 2
    assert torch.equal(whole, copies[0]) and torch.equal(view, copies[1]) and np.array_equal(arr, copies[2])
    assert all(b["frames"].data_ptr() not in ptrs for b in rest)  # held memory was never handed out again

    loader.set_epoch(1)  # the caller still holds three batches: the pool must not stay blocked by them
    reused = loader._pool.reused
    seen = []
    for b in loader:
        seen.append(b["frames"].data_ptr())
        del b
    assert len(set(seen)) == 1 and loader._pool.reused - reused == len(seen) - 1
    loader.set_epoch(2)  # held while the next batch is made (as a for loop does): two buffers take turns
    reused = loader._pool.reused
    ptrs = [b["frames"].data_ptr() for b in loader]
    assert len(set(ptrs)) == 2 and loader._pool.reused - reused == len(ptrs) - 1
    assert torch.equal(whole, copies[0]) and torch.equal(view, copies[1]) and np.array_equal(arr, copies[2])
    loader.release_buffers()
    assert loader._idle_wires is None and not loader._pool._arrays


def test_output_buffers_zero_allocates_every_batch(split, tokenizer):
    root, specs = split
    loader = build_loader(_cfg(root, output_buffers=0), rank=0, world_size=1, tokenizer=tokenizer)
    batches = list(loader)
    assert len({b["frames"].data_ptr() for b in batches}) == len(batches)
    assert _check_content(batches, specs, "float") == sum(SIZES)


@pytest.mark.parametrize("spare", [-1, 2])
@pytest.mark.parametrize("output", ["float", "uint8"])
def test_workers_deliver_exact_content_with_few_or_many_wire_buffers(
    split, tokenizer, monkeypatch, spare, output
):
    """spare=-1 leaves each worker a single ring slot, so it mostly finds its buffer still unreleased and must
    allocate; any write into a buffer the main process has not converted yet would corrupt the content."""
    root, specs = split
    monkeypatch.setattr(reader_mod, "_RING_SPARE", spare)
    cfg = _cfg(root, num_workers=2, output=output, prefetch_factor=2)
    batches = list(build_loader(cfg, rank=0, world_size=1, tokenizer=tokenizer))
    assert _check_content(batches, specs, output) == sum(SIZES)


def test_convert_in_worker_gives_the_same_batches(split, tokenizer):
    root, specs = split
    main = list(build_loader(_cfg(root, num_workers=1), rank=0, world_size=1, tokenizer=tokenizer))
    work = list(
        build_loader(
            _cfg(root, num_workers=1, convert_in="worker"), rank=0, world_size=1, tokenizer=tokenizer
        )
    )
    assert len(main) == len(work)
    for a, b in zip(main, work, strict=True):
        assert sorted(a) == sorted(b)
        for k in a:
            if isinstance(a[k], torch.Tensor):
                assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
            else:
                assert a[k] == b[k], k
    assert _check_content(work, specs, "float") == sum(SIZES)


def test_wire_ring_refills_only_released_slots():
    wires = reader_mod._WireSet(producers=2, slots=2, shape=(1, 2, 4, 4, 3), shared=False)
    release = wires.release[1]
    ring = reader_mod._WireRing(wires.buffers[1], release, producer=1)
    a, tag_a = ring.take()
    b, tag_b = ring.take()
    assert tag_a == (1, 0, 0) and tag_b == (1, 1, 1) and a.shape == (1, 2, 4, 4, 3) and a.dtype == torch.uint8
    assert a is wires.buffers[1][0] and b is wires.buffers[1][1]
    c, tag_c = ring.take()  # slot 0 again, batch 0 not released: a fresh buffer travels with the batch
    assert tag_c == (1, -1, 2) and c.data_ptr() not in (a.data_ptr(), b.data_ptr())
    release[1] = 2  # batch 1 released: slot 1 is refilled
    d, tag_d = ring.take()
    assert tag_d == (1, 1, 3) and d is b
    release[0] = 1  # batch 0 released: slot 0 is refilled (batch 2 never occupied it)
    e, tag_e = ring.take()
    assert tag_e == (1, 0, 4) and e is a
    f, tag_f = ring.take()  # slot 1 holds batch 3, not released yet
    assert tag_f == (1, -1, 5) and ring.fresh == 2
    assert not wires.release[0].any()  # the other producer's row is untouched


def test_wire_buffers_are_reused_across_epochs_only_after_a_completed_epoch(split, tokenizer):
    root, specs = split
    loader = build_loader(_cfg(root, num_workers=1), rank=0, world_size=1, tokenizer=tokenizer)
    first = list(loader)
    wires = loader._idle_wires
    assert wires is not None and wires.release.is_shared()
    assert wires.release.sum() > 0  # the main process released what it converted
    it = iter(loader)
    next(it)
    assert loader._idle_wires is None  # taken by the running iteration
    it.close()  # abandoned half-way: its set is not handed to the next iteration
    assert loader._idle_wires is None
    loader.set_epoch(0)
    again = list(loader)
    assert loader._idle_wires is not None and loader._idle_wires is not wires
    reused = loader._idle_wires
    for a, b in zip(first, again, strict=True):
        assert torch.equal(a["frames"], b["frames"]) and a["keys"] == b["keys"]
    loader.set_epoch(0)
    third = list(loader)
    assert loader._idle_wires is reused  # the completed epoch's buffers served this one
    assert _check_content(third, specs, "float") == sum(SIZES)


@pytest.mark.parametrize(
    "kw,match", [(dict(convert_in="gpu"), "convert_in"), (dict(output_buffers=-1), "output_buffers")]
)
def test_bad_buffer_config_is_named(split, tokenizer, kw, match):
    root, _ = split
    with pytest.raises(ValueError, match=match):
        build_loader(_cfg(root, **kw), rank=0, world_size=1, tokenizer=tokenizer)


def test_spawned_workers_write_into_the_main_process_buffers(split, tokenizer):
    """With spawn the wire buffers reach the workers by pickling: they must arrive shared, not copied."""
    root, specs = split
    cfg = _cfg(root, num_workers=1, mp_context="spawn", output="uint8")
    batches = list(build_loader(cfg, rank=0, world_size=1, tokenizer=tokenizer))
    assert _check_content(batches, specs, "uint8") == sum(SIZES)
