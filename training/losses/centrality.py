"""L_Wti: centrality-weighted InfoNCE at the local level (docs/method.md §3.1, EQ 3-4).

Intra-modal centrality of sample a (text shown; video is the same with frame tokens)::

    kappa^t_a = 1/(B L) sum_{b=1..B} sum_{l=1..L} <g^_a, T^_{b,l}>        (g = global token, ^ = L2 norm)
    omega^t_a = exp(lambda * kappa^t_a)                                    (lambda = centrality_scale = 0.3)

Official: every token position of every text in the batch is pooled, padded positions included
(``mask_padding=False``).  Option ``mask_padding=True`` averages over valid tokens only.  omega is not
normalised and not detached (official); ``detach`` cuts its gradient.

Loss (alpha = exp(logit_scale), S = S^loc with rows = texts)::

    L^{t2v} = 1/B sum_a -omega^t_a log softmax_b(alpha S_ab)|_{b=a}
    L^{v2t} = 1/B sum_b -omega^v_b log softmax_a(alpha S_ab)|_{a=b}
    L_Wti   = (L^{t2v} + L^{v2t}) / 2
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["centrality", "centrality_weights", "weighted_infonce", "wti_loss"]


def centrality(
    global_tokens: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """kappa [B]: mean cosine between each sample's global token and every token of the batch.

    Args:
        global_tokens: [B, D] global (merged) tokens, unnormalised.
        tokens: [N, L, D] local tokens pooled over (normally the same batch, N = B), unnormalised.
        mask: [N, L] or None.  None = official: every position, padded ones included.
    Returns:
        kappa [B] = <g^_a, mean_{n,l} T^_{n,l}> (mean over valid positions only when ``mask`` is given).
    """
    if global_tokens.dim() != 2 or tokens.dim() != 3 or global_tokens.shape[-1] != tokens.shape[-1]:
        raise ValueError(
            f"centrality: expected global [B, D] and tokens [N, L, D], got {tuple(global_tokens.shape)} "
            f"and {tuple(tokens.shape)}"
        )
    tn = F.normalize(tokens, dim=-1)
    if mask is None:
        mean_token = tn.reshape(-1, tn.shape[-1]).mean(0)
    else:
        if mask.shape != tokens.shape[:2]:
            raise ValueError(
                f"centrality: mask shape {tuple(mask.shape)} != tokens {tuple(tokens.shape[:2])}"
            )
        m = mask.to(tn.dtype)
        count = m.sum()
        if count <= 0:
            raise ValueError("centrality: mask has no valid position")
        mean_token = (tn * m.unsqueeze(-1)).sum((0, 1)) / count
    return F.normalize(global_tokens, dim=-1) @ mean_token


def centrality_weights(
    global_tokens: torch.Tensor,
    tokens: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    scale: float = 0.3,
    detach: bool = False,
) -> torch.Tensor:
    """omega [B] = exp(scale * kappa), kappa from ``centrality``; detached when ``detach``."""
    omega = torch.exp(scale * centrality(global_tokens, tokens, mask))
    return omega.detach() if detach else omega


def weighted_infonce(logits: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """1/B sum_i -weights_i log softmax_j(logits_ij)|_{j=i} for square logits [B, B] and weights [B]."""
    if logits.dim() != 2 or logits.shape[0] != logits.shape[1]:
        raise ValueError(f"weighted_infonce: logits must be square [B, B], got {tuple(logits.shape)}")
    if weights.shape != logits.shape[:1]:
        raise ValueError(f"weighted_infonce: weights shape {tuple(weights.shape)} != [{logits.shape[0]}]")
    logp = F.log_softmax(logits, dim=1).diagonal()
    return -(weights * logp).mean()


def wti_loss(
    sim: torch.Tensor, alpha: torch.Tensor | float, omega_t: torch.Tensor, omega_v: torch.Tensor
) -> torch.Tensor:
    """L_Wti = ½ (weighted_infonce(alpha S, omega^t) + weighted_infonce(alpha S^T, omega^v)); S [B, B]."""
    logits = alpha * sim
    return 0.5 * (weighted_infonce(logits, omega_t) + weighted_infonce(logits.T, omega_v))
