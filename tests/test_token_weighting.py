"""training.token_weighting: the constant-input path equals plain autograd (values and parameter gradients)."""

from __future__ import annotations

import pytest
import torch

import training.token_weighting as tw_mod
from training.features import Features
from training.losses import LossConfig, compute_losses
from training.memory_bank import MemoryBank
from training.token_weighting import TokenWeighting

DT = torch.float64


def _module(d: int, seed: int) -> TokenWeighting:
    torch.manual_seed(seed)
    return TokenWeighting(d).to(DT)


@pytest.mark.parametrize("chunk", [5, 8192])
def test_constant_input_logits_equal_forward_with_parameter_grads(monkeypatch, chunk):
    monkeypatch.setattr(tw_mod, "_CHUNK", chunk)  # 5: several chunks, the last one partial
    g = torch.Generator().manual_seed(0)
    m = _module(6, seed=1)
    tokens = torch.randn(3, 7, 6, generator=g, dtype=DT)  # constant: no requires_grad
    upstream = torch.randn(3, 7, generator=g, dtype=DT)
    params = list(m.parameters())
    ref = m(tokens)
    g_ref = torch.autograd.grad((ref * upstream).sum(), params)
    out = m.constant_input_logits(tokens)
    assert "ConstantInputMLP" in type(out.grad_fn.next_functions[0][0]).__name__  # the custom path ran
    g_out = torch.autograd.grad((out * upstream).sum(), params)
    hidden = torch.relu(tokens @ m.fc1.weight.T + m.fc1.bias)
    assert 0 < (hidden > 0).double().mean() < 1  # both ReLU branches occur
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=0)
    for a, b in zip(g_out, g_ref):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)


def test_constant_input_logits_falls_back_where_it_does_not_apply():
    m = _module(4, seed=2)
    tokens = torch.randn(2, 3, 4, dtype=DT, requires_grad=True)
    out = m.constant_input_logits(tokens)  # tokens need a gradient: plain forward
    (g,) = torch.autograd.grad(out.sum(), [tokens])
    assert g.abs().sum() > 0
    with torch.no_grad():
        torch.testing.assert_close(m.constant_input_logits(tokens), m(tokens))
    m, x = m.float(), tokens.detach().float()
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast: forward, with autocast's dtypes
        fallback, plain = m.constant_input_logits(x), m(x)
    assert fallback.dtype == torch.bfloat16
    torch.testing.assert_close(fallback, plain, atol=0, rtol=0)


def test_loss_head_bank_path_equals_generic_path():
    # compute_losses with TokenWeighting modules (constant-input bank path) vs the same modules as plain
    # callables (generic path, activation checkpointing): same total, same gradients everywhere
    g = torch.Generator().manual_seed(3)
    b, m, n_l, n_f, d = 6, 5, 5, 3, 8

    def masks(n, length):
        lengths = torch.randint(1, length + 1, (n,), generator=g)
        return (torch.arange(length)[None] < lengths[:, None]).to(DT)

    leaves = [torch.randn(*s, generator=g, dtype=DT) for s in ((b, n_l, d), (b, n_f, d), (b, d), (b, d))]
    tm, vm = masks(b, n_l), masks(b, n_f)
    bank = MemoryBank(m)
    bank.update(
        torch.randn(m, n_l, d, generator=g, dtype=DT),
        masks(m, n_l),
        torch.randn(m, n_f, d, generator=g, dtype=DT),
        masks(m, n_f),
        torch.arange(m),
    )
    text_mlp, video_mlp = _module(d, seed=4), _module(d, seed=5)
    results = []
    for fns in ((text_mlp, video_mlp), (lambda x: text_mlp(x), lambda x: video_mlp(x))):
        xs = [x.clone().requires_grad_() for x in leaves]
        feats = Features(xs[0], tm, xs[1], vm, xs[2], xs[3])
        out = compute_losses(
            feats,
            text_weight=fns[0],
            video_weight=fns[1],
            logit_scale=torch.tensor(2.0, dtype=DT),
            cfg=LossConfig(num_neighbors=2),
            bank=bank,
        )
        params = [*text_mlp.parameters(), *video_mlp.parameters(), *xs]
        results.append((out["total"].detach(), torch.autograd.grad(out["total"], params)))
    torch.testing.assert_close(results[0][0], results[1][0], atol=1e-12, rtol=0)
    for a, c in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(a, c, atol=1e-12, rtol=0)
    assert all(x.abs().sum() > 0 for x in results[0][1][:8])  # every MLP parameter got a gradient
