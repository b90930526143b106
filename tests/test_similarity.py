"""training.similarity: token weights, blockwise local WTI (vs a naive einsum), global similarity."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from training.similarity import (
    global_similarity,
    local_similarity,
    score_local,
    token_weights,
)


def naive_local(t, mt, wt, v, mv, wv):
    """Reference: materialise c [A, B, L, F] (docs/method.md §2.5)."""
    c = torch.einsum("ald,bfd->ablf", F.normalize(t, dim=-1), F.normalize(v, dim=-1))
    c = c * mt[:, None, :, None] * mv[None, :, None, :]
    t2v = (c.max(dim=3).values * wt[:, None, :]).sum(-1)
    v2t = (c.max(dim=2).values * wv[None, :, :]).sum(-1)
    return 0.5 * (t2v + v2t)


def make_inputs(a=5, b=7, n_l=6, n_f=4, d=8, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(a, n_l, d, generator=g, dtype=dtype).requires_grad_()
    v = torch.randn(b, n_f, d, generator=g, dtype=dtype).requires_grad_()
    mt = torch.ones(a, n_l)
    mt[0, 3:] = 0
    mt[2, 1:] = 0
    mv = torch.ones(b, n_f)
    mv[1, 2:] = 0
    mv[-1, 1:] = 0
    zt = torch.randn(a, n_l, generator=g, dtype=dtype).requires_grad_()
    zv = torch.randn(b, n_f, generator=g, dtype=dtype).requires_grad_()
    return t, mt, zt, v, mv, zv


def test_token_weights_hand_values():
    w = token_weights(torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[1, 1, 0]]))
    e1, e2 = math.exp(1.0), math.exp(2.0)
    assert w.tolist()[0] == pytest.approx([e1 / (e1 + e2), e2 / (e1 + e2), 0.0], abs=1e-7)


def test_token_weights_shape_error():
    with pytest.raises(ValueError, match="mask shape"):
        token_weights(torch.zeros(2, 3), torch.ones(2, 4))


def test_local_similarity_hand_case():
    # text tokens e1, e2 with weights ½, ½; video tokens e1, (1,1)/√2 with weights ¼, ¾
    t = torch.tensor([[[1.0, 0.0], [0.0, 3.0]]])
    v = torch.tensor([[[2.0, 0.0], [1.0, 1.0]]])
    wt = torch.tensor([[0.5, 0.5]])
    wv = torch.tensor([[0.25, 0.75]])
    s = local_similarity(t, torch.ones(1, 2), wt, v, torch.ones(1, 2), wv)
    r = math.sqrt(0.5)
    t2v = 0.5 * 1.0 + 0.5 * r  # row maxima: 1, r
    v2t = 0.25 * 1.0 + 0.75 * r  # column maxima: 1, r
    assert s.item() == pytest.approx(0.5 * (t2v + v2t), abs=1e-7)


def test_masked_cosines_are_zero_not_minus_inf():
    # all real cosines negative: the padded (masked) frame gives max 0, as in the official code (method Q14)
    t = torch.tensor([[[1.0, 0.0]]])
    v = torch.tensor([[[-1.0, 0.0], [5.0, 0.0]]])
    s = local_similarity(
        t, torch.ones(1, 1), torch.ones(1, 1), v, torch.tensor([[1, 0]]), torch.tensor([[1.0, 0.0]])
    )
    # t2v: max(-1, 0) = 0; v2t: frame 0 -> -1 (weight 1)
    assert s.item() == pytest.approx(0.5 * (0.0 + -1.0))


@pytest.mark.parametrize("packed", [True, False])
@pytest.mark.parametrize("chunk", [None, 1, 3, 100])
def test_local_matches_naive_values_and_grads(chunk, packed):
    t, mt, zt, v, mv, zv = make_inputs()
    upstream = torch.randn(5, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    params = [t, v, zt, zv]
    ref = naive_local(t, mt, token_weights(zt, mt), v, mv, token_weights(zv, mv))
    gref = torch.autograd.grad((ref * upstream).sum(), params)
    out = local_similarity(
        t, mt, token_weights(zt, mt), v, mv, token_weights(zv, mv), chunk=chunk, packed=packed
    )
    gout = torch.autograd.grad((out * upstream).sum(), params)
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=0)
    for a, b in zip(gout, gref):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)


@pytest.mark.parametrize("packed", [True, False])
def test_mask_holes_empty_entries_and_negative_cosines(packed):
    # masks that are not prefixes, a text and a video without any valid token, and rows whose valid cosines are
    # all negative (the masked positions' 0 must win the max, and take no gradient)
    t, mt, zt, v, mv, zv = make_inputs(a=6, b=5, n_l=5, n_f=4, d=3, seed=11)
    mt = torch.tensor(
        [[1, 0, 1, 0, 1], [0, 0, 0, 0, 0], [0, 1, 1, 1, 1], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0], [0, 0, 1, 0, 0]]
    )
    mv = torch.tensor([[0, 1, 0, 1], [1, 1, 1, 1], [0, 0, 0, 0], [1, 0, 0, 1], [0, 0, 1, 0]])
    with torch.no_grad():  # text 4's only token points away from everything video 4 has
        v[4, 2] = torch.tensor([1.0, 1.0, 1.0], dtype=v.dtype)
        t[4, 0] = torch.tensor([-1.0, -2.0, -1.0], dtype=t.dtype)

    def weights():  # softmax over all positions: masked positions get non-zero weights too
        return torch.softmax(zt, dim=1), torch.softmax(zv, dim=1)

    upstream = torch.randn(6, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    ref = naive_local(t, mt, *weights()[:1], v, mv, weights()[1])
    gref = torch.autograd.grad((ref * upstream).sum(), [t, v, zt, zv])
    out = local_similarity(t, mt, weights()[0], v, mv, weights()[1], chunk=2, packed=packed)
    gout = torch.autograd.grad((out * upstream).sum(), [t, v, zt, zv])
    assert out[1].abs().max() == 0 and out[:, 2].abs().max() == 0  # empty text / empty video
    assert ref[4, 4] == 0  # all valid cosines negative: the masked zeros won both maxima
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=0)
    for a, b in zip(gout, gref):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)


def test_local_float32_within_1e5_and_gradcheck():
    t, mt, zt, v, mv, zv = make_inputs(a=4, b=6, n_l=5, n_f=3, d=6, dtype=torch.float32, seed=3)
    ref = naive_local(t, mt, token_weights(zt, mt), v, mv, token_weights(zv, mv))
    gref = torch.autograd.grad(ref.sum(), [t, v, zt, zv])
    out = local_similarity(t, mt, token_weights(zt, mt), v, mv, token_weights(zv, mv), chunk=2)
    gout = torch.autograd.grad(out.sum(), [t, v, zt, zv])
    assert (out - ref).abs().max() < 1e-5
    for a, b in zip(gout, gref):
        assert (a - b).abs().max() < 1e-5
    t, mt, zt, v, mv, zv = make_inputs(a=3, b=2, n_l=4, n_f=2, d=3, seed=4)
    assert torch.autograd.gradcheck(
        lambda t, v, zt, zv: local_similarity(
            t, mt, token_weights(zt, mt), v, mv, token_weights(zv, mv), chunk=3
        ),
        (t, v, zt, zv),
    )


def test_wide_index_path_more_than_256_frames():
    t, mt, zt, v, mv, zv = make_inputs(a=3, b=3, n_l=3, n_f=300, d=4, seed=5)
    ref = naive_local(t, mt, token_weights(zt, mt), v, mv, token_weights(zv, mv))
    out = local_similarity(t, mt, token_weights(zt, mt), v, mv, token_weights(zv, mv))
    g1 = torch.autograd.grad(ref.sum(), [v])[0]
    g2 = torch.autograd.grad(out.sum(), [v])[0]
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(g2, g1)


def test_only_weights_require_grad_and_no_grad_mode():
    t, mt, zt, v, mv, zv = make_inputs()
    td, vd = t.detach(), v.detach()
    wt = token_weights(zt, mt)
    out = local_similarity(td, mt, wt, vd, mv, token_weights(zv, mv).detach())
    (g,) = torch.autograd.grad(out.sum(), [zt])
    ref = naive_local(td, mt, token_weights(zt, mt), vd, mv, token_weights(zv, mv).detach())
    (gr,) = torch.autograd.grad(ref.sum(), [zt])
    torch.testing.assert_close(g, gr)
    with torch.no_grad():
        s = local_similarity(t, mt, token_weights(zt, mt), v, mv, token_weights(zv, mv))
    assert not s.requires_grad
    torch.testing.assert_close(s, ref.detach())


def test_score_local_blocks_equal_full():
    t, mt, zt, v, mv, zv = make_inputs(dtype=torch.float32)
    wt, wv = token_weights(zt, mt), token_weights(zv, mv)
    full = naive_local(t, mt, wt, v, mv, wv).detach()
    blocked = score_local(t, mt, wt, v, mv, wv, block=2)
    assert blocked.dtype == torch.float32 and not blocked.requires_grad
    torch.testing.assert_close(blocked, full, atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"text_mask": torch.ones(5, 5)}, "text_mask has shape"),
        ({"video_w": torch.ones(7, 3)}, "video_w has shape"),
        ({"video_tokens": torch.zeros(7, 4, 9)}, "width mismatch"),
        ({"text_tokens": torch.zeros(5, 8)}, "must be 3-D"),
    ],
)
def test_local_similarity_bad_shapes(kwargs, message):
    args = {
        "text_tokens": torch.zeros(5, 6, 8),
        "text_mask": torch.ones(5, 6),
        "text_w": torch.ones(5, 6),
        "video_tokens": torch.zeros(7, 4, 8),
        "video_mask": torch.ones(7, 4),
        "video_w": torch.ones(7, 4),
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        local_similarity(**args)


def test_global_similarity_raw_and_l2():
    tg = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    vg = torch.tensor([[0.0, 2.0]])
    assert global_similarity(tg, vg).tolist() == [[8.0], [0.0]]
    assert global_similarity(tg, vg, l2norm=True).squeeze(1).tolist() == pytest.approx([0.8, 0.0])
    with pytest.raises(ValueError, match="global_similarity"):
        global_similarity(tg, torch.zeros(1, 3))


def test_zero_tokens_match_f_normalize_semantics():
    t, mt, zt, v, mv, zv = make_inputs(seed=7)
    with torch.no_grad():
        t[0, 4] = 0.0  # padded position, all zeros
        t[1, 2] = 0.0  # valid position, all zeros: F.normalize gives 0 and gradient g / eps
        v[1, 3] = 0.0
    ref = naive_local(t, mt, token_weights(zt, mt), v, mv, token_weights(zv, mv))
    gref = torch.autograd.grad(ref.sum(), [t, v])
    out = local_similarity(t, mt, token_weights(zt, mt), v, mv, token_weights(zv, mv), chunk=2)
    gout = torch.autograd.grad(out.sum(), [t, v])
    torch.testing.assert_close(out, ref)
    for a, b in zip(gout, gref):
        torch.testing.assert_close(a, b)


def test_token_weighting_skips_padded_positions_exactly():
    # the MLP runs on valid tokens only; weights and gradients equal running it everywhere
    from training.similarity import apply_token_weighting, token_weights

    g = torch.Generator().manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    tokens = torch.randn(5, 7, 8, generator=g, requires_grad=True)
    mask = torch.tensor([[1] * 7, [1, 1, 1, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0, 0], [0] * 7, [1] * 4 + [0] * 3])
    calls = []
    mlp.register_forward_hook(lambda m, i, o: calls.append(i[0].shape))
    got = apply_token_weighting(mlp, tokens, mask)
    assert calls == [torch.Size([1, int(mask.sum()), 8])]  # one call on the 22 valid tokens only
    ref = token_weights(mlp(tokens).squeeze(-1), mask)
    assert torch.allclose(got, ref, atol=1e-7)
    probe = torch.randn(5, 7, generator=g)
    ga = torch.autograd.grad((got * probe).sum(), [tokens, *mlp.parameters()])
    gb = torch.autograd.grad((ref * probe).sum(), [tokens, *mlp.parameters()])
    for a, b in zip(ga, gb):
        assert torch.allclose(a, b, atol=1e-6)
    assert torch.equal(ga[0][mask == 0], torch.zeros_like(ga[0][mask == 0]))
