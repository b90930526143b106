"""Text-video similarities of NeighborRetr (docs/method.md §2.5, §2.7, §2.8).

Local (token-level, "WTI") similarity between texts ``a`` and videos ``b``::

    c_{ab,lf}   = <T^_{a,l}, V^_{b,f}> * m^t_{a,l} * m^v_{b,f}          (^ = L2 normalisation; masked -> 0)
    s^{t->v}_ab = sum_l w^t_{a,l} * max_f c_{ab,lf}
    s^{v->t}_ab = sum_f w^v_{b,f} * max_l c_{ab,lf}
    S_ab        = (s^{t->v}_ab + s^{v->t}_ab) / 2

``local_similarity`` computes S without ever materialising the full ``[A, B, L, F]`` cosine tensor: a
custom autograd function works on blocks of texts x videos, keeps the two max values and their arg-max indices
(uint8 when L, F <= 255) for backward, and rebuilds the sparse gradient of each block on the fly.  On CPU the
blocks group entries by their number of valid tokens, so padded positions cost no arithmetic at all (their
cosine is 0, which is added back as a candidate of every max).  The global similarity is a plain dot product
of the single global tokens (official default).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from typing import NamedTuple

import torch
import torch.nn.functional as F

__all__ = [
    "MASK_FILL",
    "apply_token_weighting",
    "global_similarity",
    "local_similarity",
    "score_local",
    "token_weights",
]

logger = logging.getLogger(__name__)

#: value given to invalid positions before the token-weight softmax (official code)
MASK_FILL = -9e15

#: default number of cosine elements (A * b * L * F) per block in ``local_similarity``
_BLOCK_ELEMENTS = 1 << 22

#: ``packed=None`` packs on CPU from this many multiply-adds (A L B F D) of the padded products up: below it the
#: per-block overhead of many small blocks outweighs the saved arithmetic (measured: a demo-size head, 50M, is
#: 1.4x faster padded; the paper-size head, 36G, 1.5x faster packed)
_PACK_MIN_MACS = 1 << 28


def token_weights(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax token weights over the last axis with invalid positions excluded.

    w_{n,l} = softmax_l(z_{n,l}), with z_{n,l} = -9e15 where mask_{n,l} == 0.

    Args:
        logits: [N, L] raw scores of the token-weighting MLP.
        mask:   [N, L] 1 (or True) on valid positions.
    Returns:
        [N, L] weights summing to 1 over each row's valid positions.
    """
    if logits.shape != mask.shape:
        raise ValueError(
            f"token_weights: logits shape {tuple(logits.shape)} != mask shape {tuple(mask.shape)}"
        )
    return logits.masked_fill(mask == 0, MASK_FILL).softmax(dim=-1)


def apply_token_weighting(
    weight_fn: Callable[[torch.Tensor], torch.Tensor], tokens: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Run a token-weighting MLP on ``tokens`` [N, L, D] and return softmaxed weights [N, L].

    ``weight_fn`` may return [N, L] or [N, L, 1] logits. The MLP only runs on valid positions: a padded position's
    logit is replaced by -9e15 before the softmax, so its weight is exactly 0 and neither its value nor its gradient
    depends on the MLP output there (MSR-VTT captions fill about half of the 24 positions, so this halves the
    text-MLP work on the memory bank). Weights are identical to running the MLP on every position.
    """
    valid = mask.bool()
    n, length = tokens.shape[:2]
    if tokens.dim() == 3 and not bool(valid.all()):
        out = weight_fn(tokens[valid].unsqueeze(0))  # [1, n_valid] or [1, n_valid, 1]
        if out.dim() == 3 and out.shape[-1] == 1:
            out = out.squeeze(-1)
        if out.shape != (1, int(valid.sum())):
            raise ValueError(
                f"token weighting returned shape {tuple(out.shape)} for {int(valid.sum())} valid tokens of "
                f"shape {tuple(tokens.shape)}; expected [1, n_valid] or [1, n_valid, 1]"
            )
        logits = out.new_zeros(n, length).masked_scatter(valid, out[0])
        return token_weights(logits, mask)
    logits = weight_fn(tokens)
    if logits.dim() == tokens.dim() and logits.shape[-1] == 1:
        logits = logits.squeeze(-1)
    if logits.shape != tokens.shape[:-1]:
        raise ValueError(
            f"token weighting returned shape {tuple(logits.shape)}; expected {tuple(tokens.shape[:-1])} "
            f"for tokens of shape {tuple(tokens.shape)}"
        )
    return token_weights(logits, mask)


def _index_dtype(n: int) -> torch.dtype:
    """Smallest dtype for arg-max indices 0..n (n itself marks "a masked position won")."""
    return torch.uint8 if n <= 255 else torch.int64


def _even_split(n: int, target: int) -> int:
    """Block length <= target that splits n into equal-ish blocks."""
    target = max(1, min(n, target))
    pieces = -(-n // target)
    return -(-n // pieces)


def _block_sizes(a: int, b: int, lf: int, chunk: int | None) -> tuple[int, int]:
    """(texts, videos) per block: ``chunk`` x ``chunk``, or ~_BLOCK_ELEMENTS cosines in a square-ish tile."""
    if chunk is not None:
        if chunk < 1:
            raise ValueError(f"local_similarity: chunk must be >= 1, got {chunk}")
        return chunk, chunk
    budget = max(1, _BLOCK_ELEMENTS // max(1, lf))  # text x video pairs per block
    if a * b <= budget:
        return a, b
    block_a = _even_split(a, max(1, math.isqrt(budget)))
    return block_a, _even_split(b, max(1, budget // block_a))


_EPS = 1e-12  # as F.normalize: x / max(||x||, eps)


def _token_scale(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[N, T] factor m / max(||x||, eps) that normalises and masks each token of x [N, T, D]."""
    return mask.to(x.dtype) / torch.linalg.vector_norm(x, dim=-1).clamp_min(_EPS)


def _normalised_grad(x: torch.Tensor, scale: torch.Tensor, grad_y: torch.Tensor) -> torch.Tensor:
    """Gradient wrt x of y = x * scale (scale = m / max(||x||, eps)) given dL/dy, all [N, T, D] / [N, T].

    dL/dx = scale * (g - x <x, g> / ||x||^2) where ||x|| > eps, and scale * g where the norm was clamped.
    """
    norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    radial = (x * grad_y).sum(-1, keepdim=True) / norm.clamp_min(_EPS).square()
    radial = radial.masked_fill(norm <= _EPS, 0.0)
    return scale.unsqueeze(-1) * (grad_y - x * radial)


class _Block(NamedTuple):
    """Entries ``rows`` [n] of one side, each taken at the positions ``pos`` [n, c] (same c for all).

    ``padded``: the entries have masked positions that ``pos`` leaves out; each such position has cosine 0 with
    everything, so 0 competes in every max over this side's tokens (the official semantics, method Q14).
    """

    rows: torch.Tensor
    pos: torch.Tensor
    padded: bool

    def take(self, x: torch.Tensor) -> torch.Tensor:
        """x[rows, pos]: [n, c, ...] from x [N, T, ...]."""
        return x[self.rows.unsqueeze(1), self.pos]

    def tokens(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """Normalised (masked -> 0) tokens [n * c, D] of x [N, T, D]."""
        return (self.take(x) * self.take(scale).unsqueeze(-1)).reshape(-1, x.shape[-1])

    def add_to(self, dst: torch.Tensor, values: torch.Tensor) -> None:
        """dst[rows, pos] += values ([n, c, ...] into [N, T, ...]; the (row, position) pairs are distinct)."""
        dst.index_put_((self.rows.unsqueeze(1), self.pos), values, accumulate=True)


def _side_blocks(mask: torch.Tensor, size: int, packed: bool) -> list[_Block]:
    """Blocks of <= ``size`` entries of one side with mask [N, T].

    packed: entries grouped by their number of valid positions c, only those positions taken (in order; masks
    need not be prefixes); entries without valid positions are left out (their similarities are 0).
    Otherwise: consecutive entries at all T positions (masked ones give zero tokens).
    """
    n, length = mask.shape
    if not packed:
        every = torch.arange(length, device=mask.device)
        rows = torch.arange(n, device=mask.device)
        return [
            _Block(rows[s : s + size], every.expand(min(size, n - s), length), False)
            for s in range(0, n, size)
        ]
    valid = mask.bool()
    counts = valid.sum(1)
    order = torch.argsort((~valid).to(torch.uint8), dim=1, stable=True)  # valid positions first, in order
    blocks = []
    for c in torch.unique(counts).tolist():
        if c == 0:
            continue
        rows = (counts == c).nonzero().squeeze(1)
        for s in range(0, rows.numel(), size):
            r = rows[s : s + size]
            blocks.append(_Block(r, order[r, :c], c < length))
    return blocks


def _block_pairs(
    t_blocks: list[_Block],
    v_blocks: list[_Block],
    x_t: tuple[torch.Tensor, torch.Tensor] | None,
    x_v: tuple[torch.Tensor, torch.Tensor] | None,
) -> Iterator[tuple[_Block, torch.Tensor | None, _Block, torch.Tensor | None]]:
    """Every (text block, its tokens, video block, its tokens), in a fixed order.

    The side with fewer tokens is gathered once and kept; the other is gathered one block at a time.
    ``x_t`` / ``x_v`` = (tokens, scale), or None where that side's normalised tokens are not needed.
    """
    text_outer = sum(b.pos.numel() for b in t_blocks) >= sum(b.pos.numel() for b in v_blocks)
    outer, inner = (t_blocks, v_blocks) if text_outer else (v_blocks, t_blocks)
    x_outer, x_inner = (x_t, x_v) if text_outer else (x_v, x_t)
    kept = [blk.tokens(*x_inner) if x_inner is not None else None for blk in inner]
    for ob in outer:
        o = ob.tokens(*x_outer) if x_outer is not None else None
        for ib, i in zip(inner, kept):
            yield (ob, o, ib, i) if text_outer else (ib, i, ob, o)


def _max_with_padding(c: torch.Tensor, dim: int, padded: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Max of c over ``dim`` and its arg-max; with ``padded`` the masked positions' 0 competes too and wins
    where every valid cosine is negative (arg-max = c.shape[dim] there)."""
    n = c.shape[dim]
    m, i = c.max(dim=dim)
    if padded:
        zero_wins = m < 0
        m = m.clamp_min(0.0)
        i = i.masked_fill(zero_wins, n)
    return m, i.to(_index_dtype(n))


def _weight_grid(
    buf: torch.Tensor, g: torch.Tensor, wt: torch.Tensor, wv: torch.Tensor, maxima: tuple[torch.Tensor, ...]
) -> torch.Tensor:
    """dS/dc for one block: [a, l, b, f] with g_ab w^t_al at f = argmax_f, plus g_ab w^v_bf at l = argmax_l.

    g [a, b], wt [a, l], wv [b, f]; an arg-max equal to the axis length (a masked position won) adds nothing.
    """
    _, i_tv, _, i_vt = maxima
    n_a, n_l = wt.shape
    n_b, n_f = wv.shape
    w = buf[: n_a * n_l * n_b * n_f].view(n_a, n_l, n_b, n_f).zero_()
    src, idx = g.unsqueeze(1) * wt.unsqueeze(2), i_tv.long()  # [a, l, b]
    masked = idx == n_f
    w.scatter_(3, idx.clamp_max(n_f - 1).unsqueeze(3), src.masked_fill(masked, 0.0).unsqueeze(3))
    src, idx = g.unsqueeze(2) * wv.unsqueeze(0), i_vt.long()  # [a, b, f]
    masked = idx == n_l
    w.scatter_add_(1, idx.clamp_max(n_l - 1).unsqueeze(1), src.masked_fill(masked, 0.0).unsqueeze(1))
    return w.view(n_a * n_l, n_b * n_f)


class _LocalWTI(torch.autograd.Function):
    """Blockwise WTI over text blocks x video blocks (see ``local_similarity``)."""

    @staticmethod
    def forward(ctx, x_t, mask_t, wt, x_v, mask_v, wv, block_a, block_b, packed, save):  # type: ignore[override]
        # x_t [A, L, D], wt [A, L], x_v [B, F, D], wv [B, F]; masks [A, L] / [B, F]
        scale_t, scale_v = _token_scale(x_t, mask_t), _token_scale(x_v, mask_v)
        t_blocks = _side_blocks(mask_t, block_a, packed)
        v_blocks = _side_blocks(mask_v, block_b, packed)
        out = x_t.new_zeros(x_t.shape[0], x_v.shape[0])
        maxima = []
        for tb, t2, vb, v2 in _block_pairs(t_blocks, v_blocks, (x_t, scale_t), (x_v, scale_v)):
            (n_a, n_l), (n_b, n_f) = tb.pos.shape, vb.pos.shape
            c = (t2 @ v2.T).view(n_a, n_l, n_b, n_f)  # cosines
            m_tv, i_tv = _max_with_padding(c, 3, vb.padded)  # [a, l, b] over frames
            m_vt, i_vt = _max_with_padding(c, 1, tb.padded)  # [a, b, f] over words
            del c
            s_tv = torch.einsum("alb,al->ab", m_tv, tb.take(wt))
            s_vt = torch.einsum("abf,bf->ab", m_vt, vb.take(wv))
            out[tb.rows.unsqueeze(1), vb.rows] = 0.5 * (s_tv + s_vt)
            if save:
                maxima.append((m_tv, i_tv, m_vt, i_vt))
        if save:  # saved tensors (not ctx attributes) are freed as soon as backward has run
            ctx.save_for_backward(x_t, scale_t, wt, x_v, scale_v, wv, *(t for m in maxima for t in m))
            ctx.blocks = (t_blocks, v_blocks)
        return out

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        x_t, scale_t, wt, x_v, scale_v, wv, *flat = ctx.saved_tensors
        maxima = [flat[k : k + 4] for k in range(0, len(flat), 4)]
        t_blocks, v_blocks = ctx.blocks
        g = 0.5 * grad_out  # [A, B]
        need_t, _, need_wt, need_v, _, need_wv = ctx.needs_input_grad[:6]
        grad_wt = torch.zeros_like(wt) if need_wt else None
        grad_wv = torch.zeros_like(wv) if need_wv else None
        gn_t = torch.zeros_like(x_t) if need_t else None  # wrt the normalised, masked tokens
        gn_v = torch.zeros_like(x_v) if need_v else None
        buf = None
        if (need_t or need_v) and t_blocks and v_blocks:  # one block of dS/dc, reused
            largest = max(tb.pos.numel() for tb in t_blocks) * max(vb.pos.numel() for vb in v_blocks)
            buf = x_t.new_empty(largest)
        pairs = _block_pairs(
            t_blocks, v_blocks, (x_t, scale_t) if need_v else None, (x_v, scale_v) if need_t else None
        )
        for (tb, t2, vb, v2), block_max in zip(pairs, maxima):
            gb = g[tb.rows.unsqueeze(1), vb.rows]  # [a, b]
            if need_wt:
                tb.add_to(grad_wt, torch.einsum("alb,ab->al", block_max[0], gb))
            if need_wv:
                vb.add_to(grad_wv, torch.einsum("abf,ab->bf", block_max[2], gb))
            if need_t or need_v:
                w2 = _weight_grid(buf, gb, tb.take(wt), vb.take(wv), block_max)
                if need_t:
                    tb.add_to(gn_t, (w2 @ v2).view(*tb.pos.shape, -1))
                if need_v:
                    vb.add_to(gn_v, (w2.T @ t2).view(*vb.pos.shape, -1))
        grad_t = _normalised_grad(x_t, scale_t, gn_t) if need_t else None
        grad_v = _normalised_grad(x_v, scale_v, gn_v) if need_v else None
        return grad_t, None, grad_wt, grad_v, None, grad_wv, None, None, None, None


def local_similarity(
    text_tokens: torch.Tensor,
    text_mask: torch.Tensor,
    text_w: torch.Tensor,
    video_tokens: torch.Tensor,
    video_mask: torch.Tensor,
    video_w: torch.Tensor,
    *,
    chunk: int | None = None,
    packed: bool | None = None,
) -> torch.Tensor:
    """Local WTI similarity S^loc (docs/method.md §2.5), memory-efficient and differentiable.

    Args:
        text_tokens:  [A, L, D] unnormalised text tokens.
        text_mask:    [A, L] 1 on valid positions.
        text_w:       [A, L] already-softmaxed text token weights (``token_weights``).
        video_tokens: [B, F, D] unnormalised frame tokens.
        video_mask:   [B, F] 1 on real frames.
        video_w:      [B, F] already-softmaxed frame weights.
        chunk:        at most this many texts and videos per block (None: about 4M cosines per block).
        packed:       True: blocks of entries with equal valid-token counts, cosines of valid tokens only (the
            products shrink by the padding fraction, ~2.3x for MSR-VTT captions x 12 frames; many small blocks);
            False: blocks of consecutive entries at every position (few large products, the better choice where
            each operation has a fixed launch cost, as on GPUs). None: True on CPU for products of at least
            ``_PACK_MIN_MACS`` multiply-adds, else False. Both give the same values and gradients (masked
            positions count as cosine 0, method Q14).
    Returns:
        S [A, B] with S_ab = ½ (Σ_l w^t_{a,l} max_f c_{ab,lf} + Σ_f w^v_{b,f} max_l c_{ab,lf}).

    Peak extra memory is one block of cosines plus the saved maxima (values and uint8 indices, [A, B, L + F]
    at most, only valid positions when packed); normalised tokens are formed per block, never for the whole
    input.
    """
    if text_tokens.dim() != 3 or video_tokens.dim() != 3:
        raise ValueError(
            f"local_similarity: text_tokens {tuple(text_tokens.shape)} and video_tokens "
            f"{tuple(video_tokens.shape)} must be 3-D [N, tokens, D]"
        )
    if text_tokens.shape[-1] != video_tokens.shape[-1]:
        raise ValueError(
            f"local_similarity: width mismatch, text D={text_tokens.shape[-1]} "
            f"vs video D={video_tokens.shape[-1]}"
        )
    for name, t, ref in (
        ("text_mask", text_mask, text_tokens),
        ("text_w", text_w, text_tokens),
        ("video_mask", video_mask, video_tokens),
        ("video_w", video_w, video_tokens),
    ):
        if t.shape != ref.shape[:2]:
            raise ValueError(
                f"local_similarity: {name} has shape {tuple(t.shape)}, expected {tuple(ref.shape[:2])}"
            )
    x_t, x_v = text_tokens.contiguous(), video_tokens.contiguous()
    if x_v.dtype != x_t.dtype:
        raise ValueError(f"local_similarity: text dtype {x_t.dtype} != video dtype {x_v.dtype}")
    block_a, block_b = _block_sizes(x_t.shape[0], x_v.shape[0], x_t.shape[1] * x_v.shape[1], chunk)
    if packed is None:
        macs = x_t.shape[0] * x_t.shape[1] * x_v.shape[0] * x_v.shape[1] * x_t.shape[2]
        packed = x_t.device.type == "cpu" and macs >= _PACK_MIN_MACS
    wt, wv = text_w.to(x_t.dtype), video_w.to(x_t.dtype)
    save = torch.is_grad_enabled() and any(x.requires_grad for x in (x_t, wt, x_v, wv))
    return _LocalWTI.apply(x_t, text_mask, wt, x_v, video_mask, wv, block_a, block_b, packed, save)


@torch.no_grad()
def score_local(
    text_tokens: torch.Tensor,
    text_mask: torch.Tensor,
    text_w: torch.Tensor,
    video_tokens: torch.Tensor,
    video_mask: torch.Tensor,
    video_w: torch.Tensor,
    *,
    block: int = 256,
) -> torch.Tensor:
    """Test-time S^loc [A, B] (docs/method.md §2.8) in ``block`` x ``block`` tiles, without gradient.

    Same arguments as ``local_similarity``; the result is on the tokens' device in float32.
    """
    if block < 1:
        raise ValueError(f"score_local: block must be >= 1, got {block}")
    a, b = text_tokens.shape[0], video_tokens.shape[0]
    out = torch.empty(a, b, dtype=torch.float32, device=text_tokens.device)
    for i in range(0, a, block):
        for j in range(0, b, block):
            out[i : i + block, j : j + block] = local_similarity(
                text_tokens[i : i + block],
                text_mask[i : i + block],
                text_w[i : i + block],
                video_tokens[j : j + block],
                video_mask[j : j + block],
                video_w[j : j + block],
            ).float()
    return out


def global_similarity(
    text_global: torch.Tensor, video_global: torch.Tensor, l2norm: bool = False
) -> torch.Tensor:
    """Global similarity G (docs/method.md §2.7): G_ab = <g^t_a, g^v_b>, or cosine when ``l2norm``.

    Args:
        text_global:  [A, D] global text tokens (unnormalised).
        video_global: [B, D] global video tokens.
        l2norm: False = official raw dot product (unbounded); True = L2-normalise both sides first (HBI).
    Returns:
        [A, B].
    """
    if text_global.dim() != 2 or video_global.dim() != 2 or text_global.shape[1] != video_global.shape[1]:
        raise ValueError(
            f"global_similarity: expected [A, D] and [B, D], got {tuple(text_global.shape)} and "
            f"{tuple(video_global.shape)}"
        )
    if l2norm:
        text_global = F.normalize(text_global, dim=-1)
        video_global = F.normalize(video_global, dim=-1)
    return text_global @ video_global.T
