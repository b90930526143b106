"""CLIP building/loading and per-token/per-frame features, checked against open_clip itself (tiny random models)."""

from __future__ import annotations

import warnings

import open_clip
import pytest
import torch
from open_clip.transformer import QuickGELU
from safetensors.torch import save_file

from training.encoders import (
    build_clip,
    clip_dims,
    encode_frames,
    encode_text_tokens,
    is_torchscript_archive,
    key_padding_bias,
    load_clip_weights,
)


@pytest.fixture(scope="module")
def tiny() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_clip("nr-tiny").eval()


@pytest.fixture(scope="module")
def tiny_quickgelu() -> torch.nn.Module:
    torch.manual_seed(1)
    return open_clip.create_model("nr-tiny-quickgelu").eval()


def _captions(n_ctx: int = 77) -> torch.Tensor:
    tok = open_clip.get_tokenizer("nr-tiny")
    return tok(["a dog runs on the beach", "two cats sleep on a red sofa"], context_length=n_ctx)


def _openai_archive(model: torch.nn.Module, path) -> None:
    """A TorchScript archive laid out like OpenAI's ViT-B-32.pt: traced CLIP whose state dict has OpenAI key
    names plus the input_resolution / context_length / vocab_size entries."""
    scripted = open_clip.create_model("nr-tiny-quickgelu")
    scripted.load_state_dict(model.state_dict())
    for name, value in (("input_resolution", 64), ("context_length", 77), ("vocab_size", 49408)):
        if hasattr(scripted, name):
            delattr(scripted, name)
        scripted.register_buffer(name, torch.tensor(value))
    scripted.eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(scripted, (torch.zeros(1, 3, 64, 64), torch.zeros(1, 77, dtype=torch.long)))
        torch.jit.save(traced, str(path))


def _same_outputs(a: torch.nn.Module, b: torch.nn.Module) -> None:
    torch.manual_seed(5)
    images = torch.randn(3, 3, 64, 64)
    ids = _captions()
    with torch.no_grad():
        torch.testing.assert_close(a.encode_image(images), b.encode_image(images), rtol=0, atol=1e-6)
        torch.testing.assert_close(a.encode_text(ids), b.encode_text(ids), rtol=0, atol=1e-6)


def test_preset_registered_and_dims(tiny):
    assert "nr-tiny" in open_clip.list_models()
    dims = clip_dims(tiny)
    assert (dims.embed_dim, dims.text_width, dims.text_heads, dims.text_layers) == (64, 64, 4, 2)
    assert dims.context_length == 77 and dims.image_size == (64, 64)


def test_text_tokens_at_eot_equal_open_clip_encode_text(tiny):
    ids = _captions()
    mask = torch.ones_like(ids)  # causal-only: no key padding
    with torch.no_grad():
        tokens = encode_text_tokens(tiny, ids, mask)
        pooled = tiny.encode_text(ids)
    assert tokens.shape == (2, 77, 64)
    eot = ids.argmax(dim=-1)
    torch.testing.assert_close(tokens[torch.arange(2), eot], pooled, rtol=0, atol=1e-5)


def test_text_key_padding_hides_padded_keys(tiny):
    ids = _captions(24)
    eot = int(ids[0].argmax())
    mask = (torch.arange(24)[None, :] <= ids.argmax(dim=-1, keepdim=True)).long()
    changed = ids.clone()
    changed[0, eot + 1] = 1234  # a padded position
    with torch.no_grad():
        padded = encode_text_tokens(tiny, ids, mask)
        padded_changed = encode_text_tokens(tiny, changed, mask)
        causal = encode_text_tokens(tiny, ids, torch.ones_like(ids))
        causal_changed = encode_text_tokens(tiny, changed, torch.ones_like(ids))
    # real positions are identical with or without key padding (causal: they never see later positions)
    torch.testing.assert_close(padded[0, : eot + 1], causal[0, : eot + 1], rtol=0, atol=1e-6)
    # a later padded row sees only the valid prefix: the padded key at eot+1 does not reach it...
    torch.testing.assert_close(padded[0, eot + 2], padded_changed[0, eot + 2], rtol=0, atol=1e-6)
    # ...whereas with a causal-only mask it does
    assert (causal[0, eot + 2] - causal_changed[0, eot + 2]).abs().max() > 1e-4


def test_key_padding_bias_values():
    mask = torch.tensor([[1, 1, 0], [0, 0, 0]])
    bias = key_padding_bias(mask, n_queries=2, n_heads=2, dtype=torch.float32)
    assert bias.shape == (4, 2, 3)
    ninf = float("-inf")
    assert bias[0].tolist() == [[0.0, 0.0, ninf], [0.0, 0.0, ninf]]
    assert bias[1].tolist() == bias[0].tolist()
    assert bias[2].tolist() == [[0.0, 0.0, 0.0]] * 2  # an all-padding row is left unmasked, not NaN


def test_frame_features_equal_open_clip_encode_image(tiny):
    torch.manual_seed(2)
    frames = torch.randn(2, 5, 3, 64, 64)
    with torch.no_grad():
        feats = encode_frames(tiny, frames)
        reference = torch.stack([tiny.encode_image(clip) for clip in frames])
    assert feats.shape == (2, 5, 64)
    torch.testing.assert_close(feats, reference, rtol=0, atol=1e-5)


def test_bad_inputs_are_named(tiny):
    with pytest.raises(ValueError, match="expects 64x64.*image_size"):
        encode_frames(tiny, torch.zeros(1, 2, 3, 32, 32))
    with pytest.raises(ValueError, match=r"\[B, F, 3, H, W\]"):
        encode_frames(tiny, torch.zeros(2, 3, 64, 64))
    with pytest.raises(ValueError, match="context length is 77"):
        encode_text_tokens(tiny, torch.zeros(1, 80, dtype=torch.long), torch.ones(1, 80))
    with pytest.raises(ValueError, match="same shape"):
        encode_text_tokens(tiny, torch.zeros(1, 8, dtype=torch.long), torch.ones(1, 7))


def test_image_size_follows_frames():
    model = build_clip("nr-tiny", image_size=32)
    assert clip_dims(model).image_size == (32, 32)
    assert encode_frames(model, torch.zeros(1, 2, 3, 32, 32)).shape == (1, 2, 64)


def test_openai_torchscript_archive_loads_with_quickgelu(tiny_quickgelu, tmp_path):
    path = tmp_path / "ViT-tiny.pt"
    _openai_archive(tiny_quickgelu, path)
    assert is_torchscript_archive(path)
    model = build_clip("nr-tiny", str(path)).eval()  # plain arch name: QuickGELU must be forced
    assert isinstance(model.transformer.resblocks[0].mlp.gelu, QuickGELU)
    assert isinstance(model.visual.transformer.resblocks[0].mlp.gelu, QuickGELU)
    _same_outputs(model, tiny_quickgelu)


def test_state_dict_checkpoints_load(tiny, tmp_path):
    pt = tmp_path / "clip.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in tiny.state_dict().items()}}, pt)
    assert not is_torchscript_archive(pt)
    _same_outputs(build_clip("nr-tiny", str(pt)).eval(), tiny)
    st = tmp_path / "clip.safetensors"
    save_file({k: v.contiguous() for k, v in tiny.state_dict().items()}, str(st))
    _same_outputs(build_clip("nr-tiny", str(st)).eval(), tiny)


class _NotATensor:
    pass


def test_pickled_objects_are_refused(tiny, tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": tiny.state_dict(), "payload": _NotATensor()}, path)
    with pytest.raises(ValueError, match="weights_only"):
        build_clip("nr-tiny", str(path))


def test_unknown_and_mismatching_pretrained(tiny, tmp_path):
    with pytest.raises(FileNotFoundError, match="does-not-exist.pt"):
        build_clip("nr-tiny", str(tmp_path / "does-not-exist.pt"))
    with pytest.raises(ValueError, match="neither an existing checkpoint file nor .*known tags: .*openai"):
        build_clip("ViT-B-32", "no-such-tag")
    with pytest.raises(ValueError, match="unknown open_clip architecture 'ViT-Q-99'"):
        build_clip("ViT-Q-99")
    state = dict(tiny.state_dict())
    del state["ln_final.weight"]
    path = tmp_path / "partial.pt"
    torch.save(state, path)
    with pytest.raises(
        ValueError, match=r"does not fit architecture 'nr-tiny'.*missing keys \['ln_final.weight'\]"
    ):
        build_clip("nr-tiny", str(path))
    state = dict(tiny.state_dict())
    state["text_projection"] = torch.zeros(64, 32)
    torch.save(state, path)
    with pytest.raises(ValueError, match="does not fit architecture 'nr-tiny'.*text_projection"):
        load_clip_weights(build_clip("nr-tiny"), str(path), arch="nr-tiny")


def test_build_clip_says_what_it_built_without_open_clips_random_init_warning(caplog, tiny, tmp_path):
    import logging

    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in tiny.state_dict().items()}, str(path))
    filters_before = list(logging.getLogger().filters)
    with caplog.at_level(logging.INFO):
        build_clip("nr-tiny", str(path))
    messages = [(r.name, r.getMessage()) for r in caplog.records]
    assert not any("initialized randomly" in m or "No pretrained weights" in m for _, m in messages), messages
    assert ("training.encoders", f"CLIP nr-tiny: state_dict weights from {path}") in messages
    assert logging.getLogger().filters == filters_before  # the filter only lives during create_model
    caplog.clear()
    with caplog.at_level(logging.INFO):
        logging.getLogger().info("root records still pass")  # what open_clip does, outside build_clip
    assert [r.getMessage() for r in caplog.records] == ["root records still pass"]
