"""Memory bank of recent local-level features for L_Nbi's centrality (docs/method.md §4).

Official semantics (``utils/memory_bank.py``, ``modeling.py::update_memory_bank``), reproduced here:

- Entries hold local-level features: text tokens [L, D], text mask [L], video tokens [F, D]
  (after the temporal transformer), frame mask [F], and an int64 id (unused by the losses).
- Pre-fill at every epoch start: the model (eval mode, no grad) encodes the first ``mb_batch`` batches of a
  separate training loader; the concatenation in loader order is the bank (``prefill``: appended at the tail).
- Online update after each step's loss, under no grad: the current *all-gathered* batch is prepended and
  the bank is truncated back to its capacity, so the oldest entries fall off the end (``update``).  The
  losses read the bank before the update, so it never contains the current batch.
- Cleared at epoch end (``clear``).

Deviation (docs/method.md §10): the capacity is an explicit number of samples, and the trainer pre-fills from
gathered features, so the bank is identical on every rank (official ranks start with different banks unless
``--distributed 1``).  Stored tensors never carry gradient.
"""

from __future__ import annotations

import logging

import torch

__all__ = ["MemoryBank"]

logger = logging.getLogger(__name__)

_FIELDS = ("text_tokens", "text_mask", "video_tokens", "video_mask", "ids")


class MemoryBank:
    """FIFO bank of at most ``capacity`` samples (newest first), on the device of the newest batch.

    Attributes (None while empty): text_tokens [M, L, D], text_mask [M, L], video_tokens [M, F, D],
    video_mask [M, F], ids [M] int64.
    """

    def __init__(self, capacity: int) -> None:
        if not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"MemoryBank: capacity must be a positive int, got {capacity!r}")
        self.capacity = capacity
        self.text_tokens: torch.Tensor | None = None
        self.text_mask: torch.Tensor | None = None
        self.video_tokens: torch.Tensor | None = None
        self.video_mask: torch.Tensor | None = None
        self.ids: torch.Tensor | None = None

    def __len__(self) -> int:
        return 0 if self.ids is None else int(self.ids.shape[0])

    def __repr__(self) -> str:
        return f"MemoryBank(capacity={self.capacity}, size={len(self)})"

    @property
    def is_full(self) -> bool:
        return len(self) >= self.capacity

    def clear(self) -> None:
        """Drop every entry (official: at epoch end)."""
        for name in _FIELDS:
            setattr(self, name, None)

    def _check(
        self,
        text_tokens: torch.Tensor,
        text_mask: torch.Tensor,
        video_tokens: torch.Tensor,
        video_mask: torch.Tensor,
        ids: torch.Tensor,
    ) -> None:
        n = ids.shape[0] if ids.dim() == 1 else -1
        if ids.dim() != 1:
            raise ValueError(f"MemoryBank: ids must be 1-D [N], got shape {tuple(ids.shape)}")
        if text_tokens.dim() != 3 or text_tokens.shape[0] != n:
            raise ValueError(f"MemoryBank: text_tokens must be [N={n}, L, D], got {tuple(text_tokens.shape)}")
        if video_tokens.dim() != 3 or video_tokens.shape[0] != n:
            raise ValueError(
                f"MemoryBank: video_tokens must be [N={n}, F, D], got {tuple(video_tokens.shape)}"
            )
        if text_mask.shape != text_tokens.shape[:2]:
            raise ValueError(
                f"MemoryBank: text_mask shape {tuple(text_mask.shape)} != {tuple(text_tokens.shape[:2])}"
            )
        if video_mask.shape != video_tokens.shape[:2]:
            raise ValueError(
                f"MemoryBank: video_mask shape {tuple(video_mask.shape)} != {tuple(video_tokens.shape[:2])}"
            )
        if self.text_tokens is not None:
            for name, new in (("text_tokens", text_tokens), ("video_tokens", video_tokens)):
                old = getattr(self, name)
                if new.shape[1:] != old.shape[1:]:
                    raise ValueError(
                        f"MemoryBank: {name} per-sample shape {tuple(new.shape[1:])} differs from the bank's "
                        f"{tuple(old.shape[1:])} (clear the bank before changing L, F or D)"
                    )
                if new.dtype != old.dtype:
                    raise ValueError(
                        f"MemoryBank: {name} dtype {new.dtype} differs from the bank's {old.dtype}"
                    )

    @torch.no_grad()
    def _add(self, batch: tuple[torch.Tensor, ...], front: bool) -> None:
        text_tokens, text_mask, video_tokens, video_mask, ids = batch
        ids = torch.as_tensor(ids)
        self._check(text_tokens, text_mask, video_tokens, video_mask, ids)
        new = {
            "text_tokens": text_tokens.detach(),
            "text_mask": text_mask.detach(),
            "video_tokens": video_tokens.detach(),
            "video_mask": video_mask.detach(),
            "ids": ids.detach().to(torch.int64),
        }
        for name in _FIELDS:
            old = getattr(self, name)
            x = new[name]
            if old is not None:
                old = old.to(x.device)  # the bank follows the device of the newest features
                x = torch.cat([x, old] if front else [old, x], dim=0)
            setattr(self, name, x[: self.capacity].clone())

    def update(
        self,
        text_tokens: torch.Tensor,
        text_mask: torch.Tensor,
        video_tokens: torch.Tensor,
        video_mask: torch.Tensor,
        ids: torch.Tensor,
    ) -> None:
        """Prepend a (gathered) batch [N, ...] as the newest entries, then keep the ``capacity`` newest."""
        self._add((text_tokens, text_mask, video_tokens, video_mask, ids), front=True)

    def prefill(
        self,
        text_tokens: torch.Tensor,
        text_mask: torch.Tensor,
        video_tokens: torch.Tensor,
        video_mask: torch.Tensor,
        ids: torch.Tensor,
    ) -> None:
        """Epoch-start fill: append at the tail (loader order, as official); entries past capacity drop."""
        before = len(self)
        self._add((text_tokens, text_mask, video_tokens, video_mask, ids), front=False)
        dropped = before + int(torch.as_tensor(ids).shape[0]) - len(self)
        if dropped:
            logger.debug("MemoryBank.prefill: bank full, %d samples not added", dropped)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors only (``torch.load(..., weights_only=True)`` loads it); empty bank -> capacity only."""
        state = {"capacity": torch.tensor(self.capacity, dtype=torch.int64)}
        if len(self):
            for name in _FIELDS:
                state[name] = getattr(self, name)
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore ``state_dict()`` output (capacity included); ValueError on missing/inconsistent keys."""
        if "capacity" not in state:
            raise ValueError("MemoryBank.load_state_dict: missing key 'capacity'")
        capacity = int(state["capacity"])
        present = [name for name in _FIELDS if name in state]
        if present and len(present) != len(_FIELDS):
            missing = sorted(set(_FIELDS) - set(present))
            raise ValueError(f"MemoryBank.load_state_dict: missing keys {missing}")
        self.__init__(capacity)
        if present:
            if int(state["ids"].shape[0]) > capacity:
                raise ValueError(
                    f"MemoryBank.load_state_dict: {int(state['ids'].shape[0])} entries "
                    f"exceed capacity {capacity}"
                )
            self._add(tuple(state[name] for name in _FIELDS), front=False)
