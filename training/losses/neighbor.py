"""L_Nbi: neighbour adjusting loss with memory-bank centrality (docs/method.md §3.2, EQ 5-8).

Direction t2v (query text i, candidate video j; S = S^loc, cosine scale, no logit scale)::

    zeta_j   = 1/M sum_m s^loc(t^MB_m, v_j)                 bank centrality of candidate j
    N_i      = top-k columns j != i of row i of S,  E_i = N_i U {i}
    R_i      = complement of E_i (official) or E_i (option "neighbors")   -- the min-max region
    S^_ij    = (S_ij - min_{l in R_i} S_il) / (max_{l in R_i} S_il - min_{l in R_i} S_il)
    C^_ij    = the same with zeta_j in place of S_ij
    D_ij     = S^_ij - C^_ij                                  (j in N_i)
    pi_ij    = softmax_{j in N_i}(tau D_ij),  pi_ii = 1,  pi_ij = 0 outside E_i
    log P_ij = S_ij - logsumexp_{l in E_i} S_il               (restricted softmax, raw logits)
    l_i      = -sum_{j in E_i} pi_ij log P_ij / sum_j pi_ij   (= -½ [log P_ii + sum_{N_i} pi_ij log P_ij])
    L^{t2v}  = mean_i l_i

v2t runs on S^T with zeta^t_j = 1/M sum_m s^loc(t_j, v^MB_m); L_Nbi = ½ (t2v + v2t).  pi is not detached by
default (official).  The official min-max over the complement puts neighbour values above 1 (toy row S = 0.9
self; 0.8, 0.7 neighbours; 0.1, 0.2, 0.3 others -> 4.0; 3.5, 3.0; 0, 0.5, 1.0).
Training needs k <= B - 3 (method Q13b); direct calls accept 1 <= k <= B - 1. At k = B - 1 the complement region
is empty: the official code's ``finfo.max`` sentinels give (x - max) / (-max - max) = (x - max) / -inf = 0, so
S^ = C^ = 0, D = 0 and pi is uniform over N_i (a finite loss); this module returns exactly that.

Empty bank: when no bank features exist (bank None or empty, e.g. a first step without pre-fill), the current
batch is used as the bank: zeta^v_j = mean_a S_aj and zeta^t_j = mean_b S_jb.
"""

from __future__ import annotations

import torch

__all__ = ["NORM_REGIONS", "minmax_normalize", "neighbor_loss", "neighbor_loss_direction", "neighbor_sets"]

NORM_REGIONS = ("complement", "neighbors")


def neighbor_sets(sim: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, E): bool [B, B] masks of the top-k columns j != i of each row, and N plus the diagonal."""
    b = sim.shape[0]
    if sim.dim() != 2 or sim.shape[1] != b:
        raise ValueError(f"neighbor_sets: sim must be square [B, B], got {tuple(sim.shape)}")
    if not 1 <= k <= b - 1:
        raise ValueError(f"neighbor_sets: num_neighbors={k} must be in [1, B-1] for B={b}")
    eye = torch.eye(b, dtype=torch.bool, device=sim.device)
    idx = sim.detach().masked_fill(eye, float("-inf")).topk(k, dim=1).indices
    nbr = torch.zeros_like(eye).scatter_(1, idx, True)
    return nbr, nbr | eye


def minmax_normalize(values: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """Row-wise (x - min_R x) / max(max_R x - min_R x, eps), min/max over the True entries of ``region`` [B, B].

    ``eps`` (1e-12) only matters for a degenerate row whose region holds equal values (e.g. identical clips), where
    the official code divides 0 by 0 and the loss becomes NaN; such a row normalises to 0 instead. A row whose
    region is empty (k = B - 1 with the complement region) normalises to 0, as the official sentinel arithmetic
    does ((x - max) / -inf = 0); clamping the overflowed -inf denominator to eps would give -inf - -inf = NaN.
    """
    big = torch.finfo(values.dtype).max
    lo = values.masked_fill(~region, big).amin(dim=1, keepdim=True)
    hi = values.masked_fill(~region, -big).amax(dim=1, keepdim=True)
    empty = ~region.any(dim=1, keepdim=True)
    lo = torch.where(empty, torch.zeros_like(lo), lo)
    hi = torch.where(empty, torch.ones_like(hi), hi)
    out = (values - lo) / (hi - lo).clamp_min(1e-12)
    return out.masked_fill(empty, 0.0)


def neighbor_loss_direction(
    sim: torch.Tensor,
    zeta: torch.Tensor,
    *,
    k: int = 20,
    tau: float = 3.0,
    norm_over: str = "complement",
    detach_weights: bool = False,
) -> torch.Tensor:
    """L_Nbi, one direction: rows of ``sim`` [B, B] are queries, ``zeta`` [B] the candidates' centrality."""
    if norm_over not in NORM_REGIONS:
        raise ValueError(f"neighbor_loss: norm_over must be one of {NORM_REGIONS}, got {norm_over!r}")
    if isinstance(k, bool) or not isinstance(k, int):
        raise ValueError(f"neighbor_loss: num_neighbors k must be an int in [1, B-1], got {k!r}")
    b = sim.shape[0]
    if sim.dim() == 2 and sim.shape[1] == b and not 1 <= k <= b - 1:
        raise ValueError(f"neighbor_loss: num_neighbors k={k} must be in [1, B-1] = [1, {b - 1}] for batch B={b}")
    if zeta.shape != (b,):
        raise ValueError(f"neighbor_loss: zeta shape {tuple(zeta.shape)} != [{b}]")
    nbr, ext = neighbor_sets(sim, k)
    region = ~ext if norm_over == "complement" else ext
    s_hat = minmax_normalize(sim, region)
    c_hat = minmax_normalize(zeta.unsqueeze(0).expand(b, b), region)
    d = s_hat - c_hat
    if detach_weights:
        d = d.detach()
    eye = torch.eye(b, dtype=torch.bool, device=sim.device)
    pi_n = torch.softmax((tau * d).masked_fill(~nbr, float("-inf")), dim=1)  # 0 outside N_i
    pi = pi_n.masked_fill(eye, 1.0)
    logp = sim - torch.logsumexp(sim.masked_fill(~ext, float("-inf")), dim=1, keepdim=True)
    logp = logp.masked_fill(~ext, 0.0)
    per_row = -(pi * logp).sum(1) / pi.sum(1)
    return per_row.mean()


def neighbor_loss(
    sim: torch.Tensor,
    zeta_v: torch.Tensor,
    zeta_t: torch.Tensor,
    *,
    k: int = 20,
    tau: float = 3.0,
    norm_over: str = "complement",
    detach_weights: bool = False,
) -> torch.Tensor:
    """L_Nbi = ½ (direction(S, zeta^v) + direction(S^T, zeta^t)); S [B, B] rows = texts."""
    kw = {"k": k, "tau": tau, "norm_over": norm_over, "detach_weights": detach_weights}
    return 0.5 * (neighbor_loss_direction(sim, zeta_v, **kw) + neighbor_loss_direction(sim.T, zeta_t, **kw))
