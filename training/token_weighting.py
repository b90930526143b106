"""Token weighting (docs/method.md §2.4): one logit per token, w(t) = Linear(2D -> 1)(ReLU(Linear(D -> 2D)(t))).

The softmax over a sample's tokens is taken by ``training.similarity.token_weights``.  The losses also run this
MLP on the memory bank's stored tokens (M x (L + F) of them, constants) so that it gets gradient through L_Nbi;
for such constant inputs :meth:`TokenWeighting.constant_input_logits` computes the same logits and parameter
gradients while keeping only the ReLU's on/off pattern for backward (1 byte per hidden unit instead of the
4-byte activations, and no second forward as activation checkpointing would need).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["TokenWeighting"]

#: tokens per chunk of the constant-input path (bounds its [chunk, 2D] temporaries)
_CHUNK = 8192


class _ConstantInputMLP(torch.autograd.Function):
    """z = w2 . relu(W1 x + b1) + b2 for rows x of a constant X [N, D]; gradients reach W1, b1, w2, b2 only.

    With a_n = 1[W1 x_n + b1 > 0] (saved as bool) and g = dL/dz [N]:
        P = sum_n g_n (a_n ⊗ x_n)  [2D, D],   q = sum_n g_n a_n  [2D]
        dW1 = diag(w2) P,   db1 = w2 * q,   dw2_j = <W1_j, P_j> + b1_j q_j  (= sum_n g_n h_nj),   db2 = sum_n g_n
    """

    @staticmethod
    def forward(ctx, x, w1, b1, w2, b2):  # type: ignore[override]
        n = x.shape[0]
        out = x.new_empty(n)
        active = torch.empty(n, w1.shape[0], dtype=torch.bool, device=x.device)
        for s in range(0, n, _CHUNK):
            h = torch.addmm(b1, x[s : s + _CHUNK], w1.T).clamp_min_(0.0)
            torch.gt(h, 0.0, out=active[s : s + _CHUNK])
            out[s : s + _CHUNK] = torch.addmv(b2, h, w2[0])
        ctx.save_for_backward(x, w1, b1, w2, active)
        return out

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        x, w1, b1, w2, active = ctx.saved_tensors
        p = torch.zeros_like(w1)
        q = torch.zeros_like(b1)
        for s in range(0, x.shape[0], _CHUNK):
            ga = active[s : s + _CHUNK].to(x.dtype).mul_(grad[s : s + _CHUNK, None])  # [n, 2D]
            p.addmm_(ga.T, x[s : s + _CHUNK])
            q += ga.sum(0)
        grad_w1 = w2[0, :, None] * p
        grad_b1 = w2[0] * q
        grad_w2 = ((w1 * p).sum(1) + b1 * q).unsqueeze(0)
        grad_b2 = grad.sum().reshape(1)
        return None, grad_w1, grad_b1, grad_w2, grad_b2


class TokenWeighting(nn.Module):
    """Per-token weight logits: [..., N, D] -> [..., N] through Linear(D, 2D) -> ReLU -> Linear(2D, 1)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, 2 * width)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(2 * width, 1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [..., N, D] (unnormalised) -> logits [..., N]."""
        return self.fc2(self.act(self.fc1(tokens))).squeeze(-1)

    def constant_input_logits(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits [..., N] of constant tokens [..., N, D] (no gradient wrt them), equal to ``forward``'s.

        Parameter gradients are exact; backward keeps the ReLU pattern only (see ``_ConstantInputMLP``). Falls back
        to ``forward`` where that path does not apply: tokens requiring grad, autocast, or dtypes that differ
        from the parameters'.
        """
        dev = tokens.device.type
        fast = (
            torch.is_grad_enabled()
            and not tokens.requires_grad
            and not torch.is_autocast_enabled(dev)
            and tokens.dtype == self.fc1.weight.dtype
        )
        if not fast:
            return self.forward(tokens)
        flat = tokens.reshape(-1, tokens.shape[-1])
        out = _ConstantInputMLP.apply(flat, self.fc1.weight, self.fc1.bias, self.fc2.weight, self.fc2.bias)
        return out.view(tokens.shape[:-1])
