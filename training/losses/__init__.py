"""NeighborRetr losses: one module per term, combined by ``head.compute_losses`` (docs/method.md §3)."""

from training.losses.head import LOSS_KINDS, LossConfig, compute_losses

__all__ = ["LOSS_KINDS", "LossConfig", "compute_losses"]
