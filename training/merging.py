"""Clustering-based token merging (CTM + TCBlock, from TCFormer/HBI) that squeezes tokens to one global token.

Notation: x [B, N, D] tokens with mask m [B, N] (1 = real), C clusters.

CTM, one merge step (docs/method.md §2.6):
    x   <- LN(x + Conv1d_k3(x))                 conv along the token axis, padding 1, no bias
    s_n  = Linear(D -> 1)(x_n)                  importance score; s_n = -inf on padded tokens
    rho_n = exp(s_n)                            merge weight (0 on padded tokens)
    clusters = DPC-kNN(x, C, k)                 no gradient, see :func:`dpc_knn`
    y_c  = sum_{n in c} rho_n x_n / sum_{n in c} rho_n

TCBlock, one cross-attention layer, no MLP (as in HBI):
    q = norm1(y) W_q,  k, v = norm1(x) W_kv,  A = softmax(q k^T / sqrt(d_head) + s_key),  out = y + A v W_o

Two-level stack (:class:`MergeStack`): CTM(C1) -> TCBlock -> CTM(1) -> TCBlock, with
C1 = max(ceil(N * ratio), 1) and the second stage always merging to ONE token, so any N ends at one global
token. With the default ratios this reproduces the official 24 -> 4 -> 1 (text, 1/6) and 12 -> 3 -> 1
(video, 1/4); the official second-stage ratios (1/4, 1/3) only reach one token for those lengths (docs/method.md §8-Q3).

Deviations from the reference code, all deterministic and batch-independent:
- the official density adds 1e-6 uniform noise to break ties; here ties are broken by token index (a token
  counts as denser than every later token of equal density), so results are reproducible without an RNG;
- "max + 1" for distances to padded tokens and "row max" for the densest token's separation are taken per
  sample (the official max runs over the whole batch, which makes one sample's clusters depend on the others);
- width and heads come from the model (the official blocks hard-code 512 and 8 heads, docs/method.md §8-Q11).
Like the official code, the conv mixes padded tokens into their neighbours; padded tokens themselves get
zero merge weight and zero attention.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CTM", "CTMOutput", "MergeStack", "TCBlock", "dpc_knn", "merge_tokens", "n_clusters"]


def n_clusters(n_tokens: int, ratio: float) -> int:
    """Clusters of one merge stage: C = max(ceil(N * ratio), 1) (a 1e-9 slack absorbs float error in N * r)."""
    if not 0 < ratio <= 1:
        raise ValueError(f"merge ratio must be in (0, 1], got {ratio}")
    return max(math.ceil(n_tokens * ratio - 1e-9), 1)


@torch.no_grad()
def dpc_knn(
    x: torch.Tensor, n_clusters: int, k: int, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Density-peak clustering with k-nearest-neighbour density (DPC-kNN), no gradient.

    With d_ij = ||x_i - x_j|| / sqrt(D) (distances to padded tokens replaced by max_ij d + 1, per sample):
        density     delta_i = exp(-mean of d_ij^2 over the k nearest j, i itself included), 0 on padded tokens
        separation  eta_i   = min d_ij over tokens j denser than i (row max of d if none)
        centres             = the C tokens with the largest delta_i * eta_i (ties: lower index first)
    Every token joins its nearest centre; a centre joins itself. "j denser than i" means delta_j > delta_i, or
    equal density and j < i (a deterministic tie-break in place of the official random noise).

    Args:
        x: [B, N, D] tokens.
        n_clusters: C, 1 <= C <= N.
        k: neighbours for the density (clamped to N).
        mask: [B, N] 1 on real tokens, or None.

    Returns:
        idx_cluster [B, N] long in [0, C), centres [B, C] long (token index of each cluster's centre).
    """
    batch, n_tok, width = x.shape
    if not 1 <= n_clusters <= n_tok:
        raise ValueError(f"n_clusters must be in [1, {n_tok}], got {n_clusters}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if n_clusters == 1:
        zeros = torch.zeros(batch, n_tok, dtype=torch.long, device=x.device)
        return zeros, zeros[:, :1]
    if x.dtype in (torch.float16, torch.bfloat16):  # distances in at least fp32
        x = x.float()
    dist = torch.cdist(x, x) / math.sqrt(width)  # [B, N, N]
    valid = torch.ones(batch, n_tok, dtype=torch.bool, device=x.device) if mask is None else mask.bool()
    far = dist.flatten(1).amax(dim=1)[:, None, None] + 1.0
    dist = torch.where(valid[:, None, :], dist, far)

    nearest = dist.topk(min(k, n_tok), dim=-1, largest=False).values  # [B, N, k]
    density = torch.exp(-(nearest**2).mean(dim=-1)) * valid  # [B, N]

    index = torch.arange(n_tok, device=x.device)
    d_i, d_j = density[:, :, None], density[:, None, :]
    denser = (d_j > d_i) | ((d_j == d_i) & (index[None, None, :] < index[None, :, None]))  # [B, i, j]
    row_max = dist.amax(dim=-1, keepdim=True)
    separation = torch.where(denser, dist, row_max).amin(dim=-1)  # [B, N]

    score = density * separation
    centres = torch.sort(score, dim=-1, descending=True, stable=True).indices[:, :n_clusters]  # [B, C]
    to_centres = torch.gather(dist, 1, centres[:, :, None].expand(-1, -1, n_tok))  # [B, C, N]
    idx_cluster = to_centres.argmin(dim=1)  # [B, N]
    idx_cluster.scatter_(1, centres, torch.arange(n_clusters, device=x.device).expand(batch, -1))
    return idx_cluster, centres


def merge_tokens(
    x: torch.Tensor,
    idx_cluster: torch.Tensor,
    n_clusters: int,
    score: torch.Tensor,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """rho-weighted mean of each cluster: y_c = sum_{n in c} exp(s_n) x_n / sum_{n in c} exp(s_n).

    Args:
        x: [B, N, D] tokens.
        idx_cluster: [B, N] cluster of each token, in [0, C).
        n_clusters: C.
        score: [B, N] importance scores s (log-weights); -inf means weight 0.
        mask: [B, N] 1 on real tokens; padded tokens get weight 0 whatever their score.

    Returns:
        [B, C, D]. A cluster without any weighted token gives a zero vector. The weights are computed as
        exp(s_n - max_{m in c} s_m), which leaves the normalised weights unchanged and cannot overflow.
    """
    batch, _, width = x.shape
    s = score.float()
    if mask is not None:
        s = s.masked_fill(~mask.bool(), float("-inf"))
    cmax = torch.full((batch, n_clusters), float("-inf"), device=x.device)
    cmax = cmax.scatter_reduce(1, idx_cluster, s.detach(), reduce="amax", include_self=True)
    cmax = torch.where(torch.isfinite(cmax), cmax, torch.zeros_like(cmax))
    weight = torch.exp(s - cmax.gather(1, idx_cluster))  # [B, N], 0 on padded tokens
    total = torch.zeros(batch, n_clusters, device=x.device).scatter_add(1, idx_cluster, weight)
    weight = weight / total.gather(1, idx_cluster).clamp_min(torch.finfo(torch.float32).tiny)
    merged = torch.zeros(batch, n_clusters, width, device=x.device, dtype=x.dtype)
    index = idx_cluster[:, :, None].expand(-1, -1, width)
    return merged.scatter_add(1, index, x * weight[:, :, None].to(x.dtype))


@dataclass
class CTMOutput:
    """One CTM step.

    merged:      [B, C, D] merged tokens
    tokens:      [B, N, D] the pre-merge tokens after conv + LayerNorm (TCBlock keys/values)
    score:       [B, N]    importance scores, -inf on padded tokens (TCBlock key bias)
    idx_cluster: [B, N]    cluster of each token
    """

    merged: torch.Tensor
    tokens: torch.Tensor
    score: torch.Tensor
    idx_cluster: torch.Tensor


class CTM(nn.Module):
    """Clustering token merge: conv + LN, importance score, DPC-kNN clustering, rho-weighted merge."""

    def __init__(self, width: int, k: int = 3) -> None:
        super().__init__()
        self.k = k
        self.conv = nn.Conv1d(width, width, kernel_size=3, padding=1, bias=False)
        self.norm = nn.LayerNorm(width)
        self.score = nn.Linear(width, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, n_out: int) -> CTMOutput:
        """x [B, N, D], mask [B, N] or None, n_out = C clusters -> :class:`CTMOutput`."""
        x = self.norm(x + self.conv(x.transpose(1, 2)).transpose(1, 2))
        score = self.score(x).squeeze(-1)
        if mask is not None:
            score = score.masked_fill(~mask.bool(), float("-inf"))
        idx_cluster, _ = dpc_knn(x, n_out, self.k, mask)
        merged = merge_tokens(x, idx_cluster, n_out, score)
        return CTMOutput(merged=merged, tokens=x, score=score, idx_cluster=idx_cluster)


class TCBlock(nn.Module):
    """Cross-attention from merged tokens (queries) to pre-merge tokens (keys/values), key score as bias."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"TCBlock: heads={heads} does not divide width={width}")
        self.heads = heads
        self.norm1 = nn.LayerNorm(width)
        self.q = nn.Linear(width, width, bias=False)
        self.kv = nn.Linear(width, 2 * width, bias=False)
        self.proj = nn.Linear(width, width)

    def forward(self, merged: torch.Tensor, tokens: torch.Tensor, key_score: torch.Tensor) -> torch.Tensor:
        """merged [B, C, D], tokens [B, N, D], key_score [B, N] (-inf = hidden) -> [B, C, D].

        out = merged + W_o softmax(q k^T / sqrt(D / heads) + key_score) v
        """
        batch, n_q, width = merged.shape
        n_kv = tokens.shape[1]
        head_dim = width // self.heads
        q = self.q(self.norm1(merged)).view(batch, n_q, self.heads, head_dim).transpose(1, 2)
        kv = self.kv(self.norm1(tokens)).view(batch, n_kv, 2, self.heads, head_dim).permute(2, 0, 3, 1, 4)
        bias = key_score[:, None, None, :].to(q.dtype)
        out = F.scaled_dot_product_attention(q, kv[0], kv[1], attn_mask=bias)  # [B, H, C, head_dim]
        return merged + self.proj(out.transpose(1, 2).reshape(batch, n_q, width))


class MergeStack(nn.Module):
    """CTM(C1) -> TCBlock -> CTM(1) -> TCBlock: [B, N, D] tokens -> [B, D] one global token (unnormalised).

    Args:
        width: D.
        heads: attention heads of the TCBlocks.
        ratio: first-stage ratio r1, C1 = max(ceil(N * r1), 1).
        k: neighbours of the DPC-kNN density.

    Init: trunc-normal(0.02) Linear weights, zero biases, LayerNorm (1, 0); the convs keep PyTorch's default.
    """

    def __init__(self, width: int, heads: int, ratio: float, k: int = 3) -> None:
        super().__init__()
        n_clusters(1, ratio)  # validates the ratio
        self.ratio = ratio
        self.ctm1 = CTM(width, k)
        self.block1 = TCBlock(width, heads)
        self.ctm2 = CTM(width, k)
        self.block2 = TCBlock(width, heads)
        self.apply(_init_weights)

    def stage_sizes(self, n_tokens: int) -> tuple[int, int]:
        """Tokens after each stage for N input tokens: (C1, 1)."""
        return n_clusters(n_tokens, self.ratio), 1

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """tokens [B, N, D], mask [B, N] (1 = real) -> global token [B, D]."""
        if tokens.ndim != 3:
            raise ValueError(f"tokens must be [B, N, D], got {tuple(tokens.shape)}")
        if mask is not None and mask.shape != tokens.shape[:2]:
            raise ValueError(f"mask {tuple(mask.shape)} does not match tokens {tuple(tokens.shape)}")
        if mask is not None:  # a row without any real token is merged as if unpadded (no NaN); masked later
            mask = mask.bool()
            mask = mask | ~mask.any(dim=1, keepdim=True)
        first, second = self.stage_sizes(tokens.shape[1])
        out = self.ctm1(tokens, mask, first)
        x = self.block1(out.merged, out.tokens, out.score)
        out = self.ctm2(x, None, second)
        x = self.block2(out.merged, out.tokens, out.score)
        return x[:, 0]


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
