"""L_Opt: uniform regularisation with a Sinkhorn plan at the global level (docs/method.md §3.3, EQ 10-12).

Sinkhorn (no gradient, log domain, entropic eps = 1, G enters raw), for G [m, n]::

    log mu_i = log nu_j = -log(m + n)             (= 1/(2B) as coded, m = n = B)
    u = v = 0; repeat ``iters`` times (exactly, no early stop):
        u <- log mu - logsumexp_j(G_ij + v_j)
        v <- log nu - logsumexp_i(G_ij + u_i)
    Q = exp(G + u 1^T + 1 v^T + log(m + n))       (columns sum to 1; rows too once converged)

Target and loss (beta = 0.7, gamma = temperature = 3.0)::

    Y = beta Q + (1 - beta) I                     (no gradient)
    L_Opt(G) = 1/B sum_i -sum_j Y_ij log softmax_j(gamma G_ij)
    L_Opt    = ½ (L_Opt(G) + L_Opt(G^T))          (each direction computes its own plan)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["opt_loss", "sinkhorn_plan", "uniform_loss"]


@torch.no_grad()
def sinkhorn_plan(scores: torch.Tensor, iters: int = 50) -> torch.Tensor:
    """Log-domain Sinkhorn plan Q [m, n] for scores [m, n] with marginals 1/(m+n), scaled by (m+n)."""
    if scores.dim() != 2:
        raise ValueError(f"sinkhorn_plan: scores must be 2-D, got {tuple(scores.shape)}")
    if iters < 1:
        raise ValueError(f"sinkhorn_plan: iters must be >= 1, got {iters}")
    g = scores.detach()
    m, n = g.shape
    log_marg = -math.log(m + n)
    u = g.new_zeros(m)
    v = g.new_zeros(n)
    for _ in range(iters):
        u = log_marg - torch.logsumexp(g + v.unsqueeze(0), dim=1)
        v = log_marg - torch.logsumexp(g + u.unsqueeze(1), dim=0)
    return torch.exp(g + u.unsqueeze(1) + v.unsqueeze(0) + math.log(m + n))


def opt_loss(scores: torch.Tensor, *, beta: float = 0.7, gamma: float = 3.0, iters: int = 50) -> torch.Tensor:
    """One direction: 1/B sum_i -sum_j Y_ij log softmax_j(gamma G_ij), Y = beta Q + (1-beta) I; G [B, B]."""
    if scores.dim() != 2 or scores.shape[0] != scores.shape[1]:
        raise ValueError(f"opt_loss: scores must be square [B, B], got {tuple(scores.shape)}")
    q = sinkhorn_plan(scores, iters)
    eye = torch.eye(scores.shape[0], dtype=scores.dtype, device=scores.device)
    target = beta * q + (1.0 - beta) * eye
    return -(target * F.log_softmax(gamma * scores, dim=1)).sum(1).mean()


def uniform_loss(
    scores: torch.Tensor, *, beta: float = 0.7, gamma: float = 3.0, iters: int = 50
) -> torch.Tensor:
    """L_Opt = ½ (opt_loss(G) + opt_loss(G^T)) for the global similarity G [B, B]."""
    return 0.5 * (
        opt_loss(scores, beta=beta, gamma=gamma, iters=iters)
        + opt_loss(scores.T, beta=beta, gamma=gamma, iters=iters)
    )
