"""training.memory_bank.MemoryBank: FIFO order, capacity, ids, validation, state_dict round trip.

Equality of the bank across 2 gloo processes is asserted in tests/test_distributed.py (one launch).
"""

from __future__ import annotations

import pytest
import torch

from training.memory_bank import MemoryBank


def batch(ids, n_l=3, n_f=2, d=4):
    """Samples whose every feature value equals their id (easy to read back)."""
    ids = torch.as_tensor(ids, dtype=torch.int64)
    n = ids.shape[0]
    val = ids.to(torch.float32)
    return (
        val[:, None, None].expand(n, n_l, d).clone(),
        torch.ones(n, n_l),
        (-val)[:, None, None].expand(n, n_f, d).clone(),
        torch.ones(n, n_f),
        ids,
    )


def test_update_prepends_newest_and_truncates_oldest():
    bank = MemoryBank(5)
    assert len(bank) == 0 and bank.text_tokens is None and not bank.is_full
    bank.update(*batch([1, 2]))
    bank.update(*batch([3, 4]))
    assert bank.ids.tolist() == [3, 4, 1, 2]
    bank.update(*batch([5, 6]))
    assert bank.ids.tolist() == [5, 6, 3, 4, 1]  # 2, the oldest, fell off
    assert len(bank) == 5 and bank.is_full
    # features stay aligned with their ids
    assert bank.text_tokens[:, 0, 0].tolist() == [5.0, 6.0, 3.0, 4.0, 1.0]
    assert bank.video_tokens[:, 0, 0].tolist() == [-5.0, -6.0, -3.0, -4.0, -1.0]
    bank.update(*batch(list(range(10, 17))))  # a batch larger than the capacity keeps its first 5
    assert bank.ids.tolist() == [10, 11, 12, 13, 14]
    bank.clear()
    assert len(bank) == 0 and bank.ids is None


def test_prefill_appends_in_loader_order_then_update_drops_the_tail():
    bank = MemoryBank(4)
    bank.prefill(*batch([0, 1]))
    bank.prefill(*batch([2, 3]))
    bank.prefill(*batch([4]))  # no room: dropped
    assert bank.ids.tolist() == [0, 1, 2, 3]
    bank.update(*batch([9]))
    assert bank.ids.tolist() == [9, 0, 1, 2]


def test_stored_tensors_are_detached_copies():
    tt, tm, vt, vm, ids = batch([1, 2])
    tt.requires_grad_()
    bank = MemoryBank(3)
    bank.update(tt, tm, vt, vm, ids)
    assert not bank.text_tokens.requires_grad
    vt.add_(100.0)  # later in-place edits of the caller's tensor do not leak in
    assert bank.video_tokens[0, 0, 0].item() == -1.0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda b: (b[0][:, :2], b[1][:, :2], *b[2:]), r"text_tokens per-sample shape \(2, 4\)"),
        (lambda b: (b[0], b[1], b[2][:, :, :3], *b[3:]), "video_tokens per-sample shape"),
        (lambda b: (b[0].double(), *b[1:]), "dtype"),
        (lambda b: (b[0], b[1][:, :2], *b[2:]), "text_mask shape"),
        (lambda b: (*b[:4], b[4][:1]), r"text_tokens must be \[N=1"),
        (lambda b: (*b[:4], b[4][:, None]), "ids must be 1-D"),
    ],
)
def test_inconsistent_inputs_raise(change, message):
    bank = MemoryBank(4)
    bank.update(*batch([1]))
    with pytest.raises(ValueError, match=message):
        bank.update(*change(batch([2, 3])))
    assert bank.ids.tolist() == [1]  # unchanged


def test_bad_capacity():
    with pytest.raises(ValueError, match="capacity"):
        MemoryBank(0)


def test_state_dict_round_trip_weights_only(tmp_path):
    bank = MemoryBank(6)
    bank.update(*batch([1, 2, 3]))
    bank.update(*batch([4]))
    path = tmp_path / "bank.pt"
    torch.save(bank.state_dict(), path)
    state = torch.load(path, weights_only=True)
    other = MemoryBank(2)
    other.load_state_dict(state)
    assert other.capacity == 6 and other.ids.tolist() == [4, 1, 2, 3]
    for name in ("text_tokens", "text_mask", "video_tokens", "video_mask"):
        assert torch.equal(getattr(other, name), getattr(bank, name))
    other.update(*batch([7, 8, 9]))
    assert other.ids.tolist() == [7, 8, 9, 4, 1, 2]
    # empty bank
    torch.save(MemoryBank(3).state_dict(), path)
    empty = MemoryBank(9)
    empty.load_state_dict(torch.load(path, weights_only=True))
    assert len(empty) == 0 and empty.capacity == 3


def test_load_state_dict_errors():
    bank = MemoryBank(2)
    with pytest.raises(ValueError, match="capacity"):
        bank.load_state_dict({})
    state = MemoryBank(3)
    state.update(*batch([1]))
    sd = state.state_dict()
    del sd["video_mask"]
    with pytest.raises(ValueError, match=r"missing keys \['video_mask'\]"):
        bank.load_state_dict(sd)
    sd = state.state_dict()
    sd["capacity"] = torch.tensor(0)
    with pytest.raises(ValueError, match="capacity"):
        bank.load_state_dict(sd)
