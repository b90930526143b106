"""NeighborRetrModel on the tiny preset: shapes, masks, initialisation, gradients, config validation."""

from __future__ import annotations

import pytest
import torch

from training.encoders import encode_frames
from training.features import Features
from training.model import ModelConfig, NeighborRetrModel


@pytest.fixture(scope="module")
def model() -> NeighborRetrModel:
    torch.manual_seed(0)
    return NeighborRetrModel(ModelConfig(arch="nr-tiny", max_frames=64, max_words=64))


def _batch(batch: int, words: int, frames: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    pixels = torch.randn(batch, frames, 3, 64, 64, generator=gen)
    frame_mask = torch.ones(batch, frames)
    frame_mask[-1, max(1, frames // 2) :] = 0
    ids = torch.randint(1, 49000, (batch, words), generator=gen)
    text_mask = torch.ones(batch, words)
    text_mask[0, max(2, words // 3) :] = 0
    ids[text_mask == 0] = 0
    return pixels, frame_mask, ids, text_mask


@pytest.mark.parametrize("words,frames", [(24, 12), (32, 12), (64, 64), (7, 3)])
def test_forward_shapes_end_at_one_global_token(model, words, frames):
    batch = 1 if frames == 64 else 2
    with torch.no_grad():
        feats = model(*_batch(batch, words, frames))
    assert isinstance(feats, Features)
    assert feats.text_tokens.shape == (batch, words, 64)
    assert feats.video_tokens.shape == (batch, frames, 64)
    assert feats.text_global.shape == feats.video_global.shape == (batch, 64)
    assert feats.text_mask.shape == (batch, words) and feats.video_mask.shape == (batch, frames)
    assert torch.isfinite(feats.text_global).all() and torch.isfinite(feats.video_global).all()


def test_video_tokens_are_temporal_transformer_plus_residual(model):
    pixels, frame_mask, _, _ = _batch(2, 8, 6)
    with torch.no_grad():
        raw = encode_frames(model.clip, pixels)
        video = model.encode_video(pixels, frame_mask)
        x = raw + model.temporal.position.weight[:6]
        expected = model.temporal.transformer(x, attn_mask=_bias(frame_mask, model.temporal.heads)) + raw
    torch.testing.assert_close(video, expected, rtol=0, atol=1e-5)


def _bias(mask: torch.Tensor, heads: int) -> torch.Tensor:
    """Independent construction of the key-padding bias [B * heads, F, F]."""
    b, f = mask.shape
    bias = torch.zeros(b, f, f)
    bias[(mask == 0)[:, None, :].expand(b, f, f)] = float("-inf")
    return bias.repeat_interleave(heads, dim=0)


def test_uint8_frames_are_normalised_like_the_loaders_float_frames(model):
    from shards.transforms import frames_from_hwc

    gen = torch.Generator().manual_seed(5)
    wire = torch.randint(0, 256, (2, 4, 64, 64, 3), generator=gen, dtype=torch.uint8)
    frame_mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    with torch.no_grad():
        from_float = model.encode_video(frames_from_hwc(wire, frame_mask, output="float"), frame_mask)
        from_uint8 = model.encode_video(frames_from_hwc(wire, frame_mask, output="uint8"), frame_mask)
    torch.testing.assert_close(from_uint8, from_float, atol=0, rtol=0)


def test_padded_frames_do_not_change_real_frames(model):
    pixels, frame_mask, _, _ = _batch(2, 8, 6)
    changed = pixels.clone()
    changed[1, 3:] = torch.rand_like(changed[1, 3:]) * 5  # padded frames of sample 1
    with torch.no_grad():
        before = model.encode_video(pixels, frame_mask)
        after = model.encode_video(changed, frame_mask)
        unmasked_before = model.encode_video(pixels, torch.ones_like(frame_mask))
        unmasked_after = model.encode_video(changed, torch.ones_like(frame_mask))
    torch.testing.assert_close(after[1, :3], before[1, :3], rtol=0, atol=1e-5)
    torch.testing.assert_close(after[0], before[0], rtol=0, atol=0)
    # without the key-padding mask the same change does reach the real frames
    assert (unmasked_after[1, :3] - unmasked_before[1, :3]).abs().max() > 1e-3


def test_initialisation_from_clip(model):
    text_blocks = model.clip.transformer.resblocks
    temporal_blocks = model.temporal.transformer.resblocks
    assert len(temporal_blocks) == 4 and len(text_blocks) == 2
    for block, source in zip(temporal_blocks[:2], text_blocks):
        for (name, p), (_, q) in zip(block.state_dict().items(), source.state_dict().items()):
            assert torch.equal(p, q), name
    # blocks beyond the text depth stay random: N(0, 0.02) Linear weights, zero biases
    fc = temporal_blocks[2].mlp.c_fc
    assert not torch.equal(fc.weight, text_blocks[0].mlp.c_fc.weight)
    assert 0.018 < float(fc.weight.detach().std()) < 0.022 and float(fc.bias.detach().abs().sum()) == 0.0
    pos = model.temporal.position.weight
    assert pos.shape == (77, 64)
    assert torch.equal(pos, model.clip.positional_embedding)
    w = model.text_weight.fc1.weight.detach()
    assert w.shape == (128, 64) and 0.018 < float(w.std()) < 0.022
    assert float(model.video_weight.fc2.bias.detach().abs().sum()) == 0.0


def test_token_weighting_shapes(model):
    tokens = torch.randn(3, 5, 7, 64)  # e.g. memory-bank tokens with an extra leading dim
    assert model.text_weight(tokens).shape == (3, 5, 7)
    assert model.video_weight(tokens[0]).shape == (5, 7)


@pytest.mark.parametrize("freeze", [True, False])
def test_gradients_reach_every_trainable_part(freeze):
    torch.manual_seed(0)
    net = NeighborRetrModel(ModelConfig(arch="nr-tiny", freeze_conv1=freeze, temporal_layers=2))
    feats = net(*_batch(2, 24, 12))  # 24 -> 4 -> 1 and 12 -> 3 -> 1: the second stages see several tokens
    loss = (
        feats.text_global.pow(2).mean()
        + feats.video_global.pow(2).mean()
        + net.text_weight(feats.text_tokens).mean()
        + net.video_weight(feats.video_tokens).mean()
    )
    loss.backward()
    conv1 = net.clip.visual.conv1.weight
    assert conv1.requires_grad is not freeze
    assert (conv1.grad is None) is freeze
    # the CTM score biases shift every score of a sample equally, which cancels in the within-cluster weight
    # normalisation and in the TCBlock softmax: their gradient is zero up to rounding, so they are not checked
    no_grad = {
        name
        for name, p in net.named_parameters()
        if p.requires_grad
        and not name.endswith("score.bias")
        and (p.grad is None or not p.grad.abs().sum() > 0)
    }
    assert no_grad == {"clip.logit_scale"}  # used by the losses only
    for prefix in (
        "temporal.",
        "text_weight.",
        "video_weight.",
        "text_merge.",
        "video_merge.",
        "clip.visual.",
    ):
        assert any(n.startswith(prefix) for n, p in net.named_parameters() if p.grad is not None), prefix
    assert net.clip.token_embedding.weight.grad is not None


def test_config_validation_and_limits():
    with pytest.raises(ValueError, match="model.text_merge_ratio"):
        ModelConfig(text_merge_ratio=0.0)
    with pytest.raises(ValueError, match="model.temporal_layers"):
        ModelConfig(temporal_layers=0)
    with pytest.raises(ValueError, match="model.max_words=80 exceeds the CLIP context length 77"):
        NeighborRetrModel(ModelConfig(arch="nr-tiny", max_words=80))
    cfg = ModelConfig(arch="nr-tiny", image_size=32, max_frames=100)
    net = NeighborRetrModel(cfg)
    assert net.temporal.position.num_embeddings == 100
    with torch.no_grad():
        feats = net(
            torch.randn(1, 2, 3, 32, 32),
            torch.ones(1, 2),
            torch.ones(1, 5, dtype=torch.long),
            torch.ones(1, 5),
        )
    assert feats.video_global.shape == (1, 64)
