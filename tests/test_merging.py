"""Token merging: cluster counts, DPC-kNN against a loop reference, weighted merge, TCBlock attention."""

from __future__ import annotations

import math

import pytest
import torch

from training.merging import CTM, MergeStack, TCBlock, dpc_knn, merge_tokens, n_clusters


def _reference_dpc_knn(x: torch.Tensor, c: int, k: int, mask: list[bool]) -> tuple[list[int], list[int]]:
    """Plain-Python DPC-kNN for ONE sample x [N, D], written from the definition."""
    n, d = x.shape
    dist = [[math.dist(x[i].tolist(), x[j].tolist()) / math.sqrt(d) for j in range(n)] for i in range(n)]
    far = max(max(row) for row in dist) + 1.0
    dist = [[dist[i][j] if mask[j] else far for j in range(n)] for i in range(n)]
    density = []
    for i in range(n):
        nearest = sorted(dist[i])[: min(k, n)]
        density.append(math.exp(-sum(v * v for v in nearest) / len(nearest)) if mask[i] else 0.0)

    def denser(j: int, i: int) -> bool:
        return density[j] > density[i] or (density[j] == density[i] and j < i)

    score = []
    for i in range(n):
        candidates = [dist[i][j] for j in range(n) if denser(j, i)]
        score.append(density[i] * (min(candidates) if candidates else max(dist[i])))
    centres = sorted(range(n), key=lambda i: (-score[i], i))[:c]
    assign = []
    for t in range(n):
        if t in centres:
            assign.append(centres.index(t))
        else:
            assign.append(min(range(c), key=lambda q: (dist[centres[q]][t], q)))
    return assign, centres


def test_cluster_counts():
    assert [n_clusters(n, 1 / 6) for n in (24, 32, 64, 5, 1)] == [4, 6, 11, 1, 1]
    assert [n_clusters(n, 1 / 4) for n in (12, 64, 3)] == [3, 16, 1]
    with pytest.raises(ValueError, match="merge ratio"):
        n_clusters(10, 0.0)


@pytest.mark.parametrize("words,frames", [(24, 12), (32, 12), (64, 64)])
def test_merge_stacks_end_at_one_token(words, frames):
    torch.manual_seed(0)
    width = 32
    text = MergeStack(width, heads=4, ratio=1 / 6)
    video = MergeStack(width, heads=4, ratio=1 / 4)
    tokens = torch.randn(2, words, width)
    mask = torch.ones(2, words)
    mask[1, words // 2 :] = 0
    first = text.ctm1(tokens, mask, text.stage_sizes(words)[0])
    assert first.merged.shape == (2, math.ceil(words / 6), width)
    assert text(tokens, mask).shape == (2, width)
    assert video(torch.randn(2, frames, width), torch.ones(2, frames)).shape == (2, width)
    assert text.stage_sizes(words)[1] == video.stage_sizes(frames)[1] == 1


def test_dpc_knn_two_separated_groups():
    torch.manual_seed(0)
    group_a = torch.randn(4, 8) * 0.1
    group_b = torch.randn(3, 8) * 0.1 + 5.0
    x = torch.cat([group_a, group_b])[torch.tensor([0, 4, 1, 5, 2, 6, 3])][None]  # interleaved
    idx, centres = dpc_knn(x, 2, k=3)
    labels = idx[0].tolist()
    in_a = [0, 2, 4, 6]
    assert len({labels[i] for i in in_a}) == 1 and len({labels[i] for i in (1, 3, 5)}) == 1
    assert labels[0] != labels[1]
    assert {int(c) % 2 for c in centres[0]} == {0, 1}  # one centre per group


def test_dpc_knn_identical_tokens_tie_break_by_index():
    x = torch.ones(1, 6, 4)
    idx, centres = dpc_knn(x, 2, k=3)
    assert centres.tolist() == [[0, 1]]
    assert idx.tolist() == [[0, 1, 0, 0, 0, 0]]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dpc_knn_matches_reference_with_padding(seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 9, 5, generator=gen, dtype=torch.float64)
    mask = torch.ones(3, 9, dtype=torch.bool)
    mask[1, 6:] = False
    mask[2, ::3] = False
    idx, centres = dpc_knn(x, 3, k=3, mask=mask)
    for b in range(3):
        ref_idx, ref_centres = _reference_dpc_knn(x[b], 3, 3, mask[b].tolist())
        assert centres[b].tolist() == ref_centres
        assert idx[b].tolist() == ref_idx


def test_dpc_knn_is_per_sample():
    torch.manual_seed(3)
    x = torch.randn(2, 10, 6)
    mask = torch.ones(2, 10)
    mask[0, 7:] = 0
    both = dpc_knn(x, 3, k=3, mask=mask)
    alone = dpc_knn(x[:1] * 1.0, 3, k=3, mask=mask[:1])
    x_other = x.clone()
    x_other[1] *= 100  # a different second sample must not move the first one's clusters
    other = dpc_knn(x_other, 3, k=3, mask=mask)
    assert both[0][0].tolist() == alone[0][0].tolist() == other[0][0].tolist()


def test_merge_tokens_hand_computed_and_padding_gets_no_weight():
    x = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [4.0, 4.0], [9.0, 9.0]]])
    idx = torch.tensor([[0, 0, 1, 0]])
    score = torch.tensor([[0.0, math.log(3.0), 0.0, 50.0]])
    mask = torch.tensor([[1, 1, 0, 0]])
    merged = merge_tokens(x, idx, 2, score, mask)
    # cluster 0: (1 * [1, 0] + 3 * [0, 1]) / 4; the padded [9, 9] (score 50) has no weight
    torch.testing.assert_close(merged, torch.tensor([[[0.25, 0.75], [0.0, 0.0]]]))
    # without the mask: cluster 1 = [4, 4]; huge scores do not overflow (weights are shift-invariant)
    merged = merge_tokens(x, idx, 2, score + 1000.0)
    w = torch.tensor([1.0, 3.0, math.exp(50.0)])
    expected0 = (w[:, None] * x[0, [0, 1, 3]]).sum(0) / w.sum()
    torch.testing.assert_close(merged[0, 0], expected0)
    torch.testing.assert_close(merged[0, 1], torch.tensor([4.0, 4.0]))


def test_ctm_scores_padded_tokens_minus_inf():
    torch.manual_seed(0)
    ctm = CTM(16)
    mask = torch.tensor([[1, 1, 1, 0, 0]])
    out = ctm(torch.randn(1, 5, 16), mask, 2)
    assert torch.isneginf(out.score[0, 3:]).all() and torch.isfinite(out.score[0, :3]).all()
    assert out.merged.shape == (1, 2, 16) and out.tokens.shape == (1, 5, 16)


def test_tcblock_matches_reference_and_ignores_hidden_keys():
    torch.manual_seed(0)
    width, heads = 8, 2
    block = TCBlock(width, heads)
    merged = torch.randn(2, 3, width)
    tokens = torch.randn(2, 5, width)
    score = torch.randn(2, 5)
    score[1, 4] = float("-inf")
    out = block(merged, tokens, score)
    # reference: per sample, per head, explicit softmax
    hd = width // heads
    q = block.q(block.norm1(merged))
    k, v = block.kv(block.norm1(tokens)).split(width, dim=-1)
    parts = []
    for h in range(heads):
        sl = slice(h * hd, (h + 1) * hd)
        logits = q[..., sl] @ k[..., sl].transpose(1, 2) / math.sqrt(hd) + score[:, None, :]
        parts.append(torch.softmax(logits, dim=-1) @ v[..., sl])
    reference = merged + block.proj(torch.cat(parts, dim=-1))
    torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-5)
    changed = tokens.clone()
    changed[:, 4] = 100.0  # hidden key in sample 1, visible key in sample 0
    torch.testing.assert_close(block(merged, changed, score)[1], out[1], rtol=0, atol=1e-6)
    assert not torch.allclose(block(merged, changed, score)[0], out[0])


def test_merge_stack_gradients_and_determinism():
    torch.manual_seed(0)
    stack = MergeStack(16, heads=2, ratio=1 / 4)
    tokens = torch.randn(3, 12, 16, requires_grad=True)
    mask = torch.ones(3, 12)
    mask[2, 9:] = 0
    out = stack(tokens, mask)
    torch.testing.assert_close(stack(tokens, mask), out, rtol=0, atol=0)
    out.pow(2).sum().backward()
    missing = [n for n, p in stack.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []
    assert tokens.grad is not None and torch.isfinite(tokens.grad).all()


@torch.no_grad()
def test_merge_stack_init():
    stack = MergeStack(64, heads=4, ratio=1 / 6)
    w = stack.block1.kv.weight
    assert 0.019 < float(w.std()) < 0.021 and abs(float(w.mean())) < 0.001  # (trunc-)normal(0, 0.02)
    assert float(stack.block1.proj.bias.abs().sum()) == 0.0
    assert float(stack.ctm1.norm.weight.mean()) == 1.0 and float(stack.ctm1.norm.bias.abs().sum()) == 0.0
    with pytest.raises(ValueError, match="does not divide"):
        TCBlock(10, 4)


def test_merge_stack_with_fewer_real_tokens_than_clusters_or_none():
    torch.manual_seed(0)
    stack = MergeStack(16, heads=2, ratio=1 / 6)
    tokens = torch.randn(3, 24, 16, requires_grad=True)
    mask = torch.zeros(3, 24)
    mask[0, :2] = 1  # 2 real tokens for C1 = 4 clusters: padded centres, empty clusters
    mask[1] = 1
    # sample 2 has no real token at all
    out = stack(tokens, mask)
    assert out.shape == (3, 16) and torch.isfinite(out).all()
    out.sum().backward()
    assert torch.isfinite(tokens.grad).all()
    # a row without real tokens is merged as if unpadded
    torch.testing.assert_close(out[2], stack(tokens[2:], torch.ones(1, 24))[0])
