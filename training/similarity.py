"""Text-video similarities of NeighborRetr (method.md §2.5, §2.7, §2.8).

Local (token-level, "WTI") similarity between texts ``a`` and videos ``b``::

    c_{ab,lf}   = <T^_{a,l}, V^_{b,f}> * m^t_{a,l} * m^v_{b,f}          (^ = L2 normalisation; masked -> 0)
    s^{t->v}_ab = sum_l w^t_{a,l} * max_f c_{ab,lf}
    s^{v->t}_ab = sum_f w^v_{b,f} * max_l c_{ab,lf}
    S_ab        = (s^{t->v}_ab + s^{v->t}_ab) / 2

``local_similarity`` computes S without ever materialising the full ``[A, B, L, F]`` cosine tensor: a
custom autograd function works on blocks of texts x videos, keeps the two max values (``[A, L, B]`` and
``[A, B, F]``) and their arg-max indices (uint8 when L, F <= 256) for backward, and rebuilds the sparse gradient of each block
on the fly.  The global similarity is a plain dot product of the single global tokens (official default).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

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
    return torch.uint8 if n <= 256 else torch.int64


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


def _blocks(n: int, size: int) -> list[tuple[int, int]]:
    return [(s, min(n, s + size)) for s in range(0, n, size)]


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


class _LocalWTI(torch.autograd.Function):
    """Blockwise WTI; normalisation and masking of the tokens happen per block (see ``local_similarity``)."""

    @staticmethod
    def forward(ctx, x_t, mask_t, wt, x_v, mask_v, wv, block_a, block_b, save):  # type: ignore[override]
        # x_t [A, L, D], wt [A, L], x_v [B, F, D], wv [B, F]; masks [A, L] / [B, F]
        a, n_l, d = x_t.shape
        b, n_f, _ = x_v.shape
        scale_t, scale_v = _token_scale(x_t, mask_t), _token_scale(x_v, mask_v)
        out = x_t.new_empty(a, b)
        if save:
            vals_tv = x_t.new_empty(a, n_l, b)  # max over frames
            vals_vt = x_t.new_empty(a, b, n_f)  # max over words
            idx_tv = torch.empty(a, n_l, b, dtype=_index_dtype(n_f), device=x_t.device)
            idx_vt = torch.empty(a, b, n_f, dtype=_index_dtype(n_l), device=x_t.device)
        buf = x_t.new_empty(min(a, block_a) * n_l * min(b, block_b) * n_f)  # one block, reused
        for i, j in _blocks(a, block_a):
            t2 = (x_t[i:j] * scale_t[i:j].unsqueeze(-1)).reshape(-1, d)
            for s, e in _blocks(b, block_b):
                v2 = (x_v[s:e] * scale_v[s:e].unsqueeze(-1)).reshape(-1, d)
                c = buf[: t2.shape[0] * v2.shape[0]].view(t2.shape[0], v2.shape[0])
                torch.mm(t2, v2.T, out=c)
                c = c.view(j - i, n_l, e - s, n_f)  # [a, L, b, F] cosines, masked -> 0
                m_tv, i_tv = c.max(dim=3)  # [a, L, b]
                m_vt, i_vt = c.max(dim=1)  # [a, b, F]
                s_tv = torch.einsum("alb,al->ab", m_tv, wt[i:j])
                s_vt = torch.einsum("abf,bf->ab", m_vt, wv[s:e])
                out[i:j, s:e] = 0.5 * (s_tv + s_vt)
                if save:
                    vals_tv[i:j, :, s:e] = m_tv
                    vals_vt[i:j, s:e] = m_vt
                    idx_tv[i:j, :, s:e] = i_tv
                    idx_vt[i:j, s:e] = i_vt
        if save:
            ctx.save_for_backward(x_t, scale_t, wt, x_v, scale_v, wv, vals_tv, vals_vt, idx_tv, idx_vt)
        ctx.blocks = (block_a, block_b)
        return out

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        x_t, scale_t, wt, x_v, scale_v, wv, vals_tv, vals_vt, idx_tv, idx_vt = ctx.saved_tensors
        a, n_l, d = x_t.shape
        b, n_f, _ = x_v.shape
        g = 0.5 * grad_out  # [A, B]
        need_t, _, need_wt, need_v, _, need_wv = ctx.needs_input_grad[:6]
        grad_wt = torch.einsum("ab,alb->al", g, vals_tv) if need_wt else None
        grad_wv = torch.einsum("ab,abf->bf", g, vals_vt) if need_wv else None
        grad_t = grad_v = None
        if need_t or need_v:
            # gradients wrt the normalised, masked tokens, accumulated block by block
            gn_t = torch.zeros(x_t.shape, dtype=x_t.dtype, device=x_t.device) if need_t else None
            gn_v = torch.zeros(x_v.shape, dtype=x_v.dtype, device=x_v.device) if need_v else None
            block_a, block_b = ctx.blocks
            buf = x_t.new_empty(min(a, block_a) * n_l * min(b, block_b) * n_f)  # one block, reused
            for i, j in _blocks(a, block_a):
                t2 = (x_t[i:j] * scale_t[i:j].unsqueeze(-1)).reshape(-1, d) if need_v else None
                for s, e in _blocks(b, block_b):
                    gb = g[i:j, s:e]
                    # dS/dc_{ab,lf}: w^t_{a,l} at f = argmax_f, plus w^v_{b,f} at l = argmax_l
                    w = buf[: (j - i) * n_l * (e - s) * n_f].view(j - i, n_l, e - s, n_f).zero_()
                    w.scatter_(
                        3,
                        idx_tv[i:j, :, s:e].long().unsqueeze(3),
                        (gb.unsqueeze(1) * wt[i:j].unsqueeze(2)).unsqueeze(3),
                    )
                    w.scatter_add_(
                        1,
                        idx_vt[i:j, s:e].long().unsqueeze(1),
                        (gb.unsqueeze(2) * wv[s:e].unsqueeze(0)).unsqueeze(1),
                    )
                    w2 = w.view((j - i) * n_l, (e - s) * n_f)
                    if need_t:
                        v2 = (x_v[s:e] * scale_v[s:e].unsqueeze(-1)).reshape(-1, d)
                        gn_t[i:j].view(-1, d).addmm_(w2, v2)
                    if need_v:
                        gn_v[s:e].view(-1, d).addmm_(w2.T, t2)
            grad_t = _normalised_grad(x_t, scale_t, gn_t) if need_t else None
            grad_v = _normalised_grad(x_v, scale_v, gn_v) if need_v else None
        return grad_t, None, grad_wt, grad_v, None, grad_wv, None, None, None


def local_similarity(
    text_tokens: torch.Tensor,
    text_mask: torch.Tensor,
    text_w: torch.Tensor,
    video_tokens: torch.Tensor,
    video_mask: torch.Tensor,
    video_w: torch.Tensor,
    *,
    chunk: int | None = None,
) -> torch.Tensor:
    """Local WTI similarity S^loc (method §2.5), memory-efficient and differentiable.

    Args:
        text_tokens:  [A, L, D] unnormalised text tokens.
        text_mask:    [A, L] 1 on valid positions.
        text_w:       [A, L] already-softmaxed text token weights (``token_weights``).
        video_tokens: [B, F, D] unnormalised frame tokens.
        video_mask:   [B, F] 1 on real frames.
        video_w:      [B, F] already-softmaxed frame weights.
        chunk:        texts and videos per block (None: square-ish blocks of about 4M cosines).
    Returns:
        S [A, B] with S_ab = ½ (Σ_l w^t_{a,l} max_f c_{ab,lf} + Σ_f w^v_{b,f} max_l c_{ab,lf}).

    Peak extra memory is one block [chunk, L, chunk, F] plus the saved maxima [A, B, L + F] (values and
    uint8 indices); the normalised tokens are formed per block, never for the whole input.
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
    wt, wv = text_w.to(x_t.dtype), video_w.to(x_t.dtype)
    save = torch.is_grad_enabled() and any(x.requires_grad for x in (x_t, wt, x_v, wv))
    return _LocalWTI.apply(x_t, text_mask, wt, x_v, video_mask, wv, block_a, block_b, save)


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
    """Test-time S^loc [A, B] (method §2.8) in ``block`` x ``block`` tiles, without gradient.

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
    """Global similarity G (method §2.7): G_ab = <g^t_a, g^v_b>, or cosine when ``l2norm``.

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
