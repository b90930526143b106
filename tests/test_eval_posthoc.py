"""Post-hoc methods vs direct formula loops; no input mutation; log-domain stability; tuning; bootstrap/paired test."""

from __future__ import annotations

import math

import numpy as np
import pytest

from eval.posthoc import (
    METHODS,
    activation_set,
    apply,
    csls,
    dual_softmax,
    inverted_softmax,
    mean_r1,
    nnn,
    qb_norm,
    tune,
)
from eval.scores_io import ScoreSet
from eval.stats import bootstrap_ci, paired_test


@pytest.fixture
def small():
    rng = np.random.default_rng(0)
    s = rng.standard_normal((5, 4))
    bank = rng.standard_normal((6, 4))
    return s, bank


def loop_topk_mean(values: list[float], k: int) -> float:
    top = sorted(values, reverse=True)[: min(k, len(values))]
    return sum(top) / len(top)


def test_inverted_softmax_direct(small):
    s, bank = small
    beta = 3.0
    out = inverted_softmax(s, bank, beta)
    for q in range(5):
        for g in range(4):
            prob = math.exp(beta * s[q, g]) / sum(math.exp(beta * bank[b, g]) for b in range(6))
            assert out[q, g] == pytest.approx(math.log(prob))


def test_inverted_softmax_is_stable_on_logits():
    rng = np.random.default_rng(1)
    s = 100 * rng.standard_normal((4, 3))  # CLIP logits scale with beta = 20: exp would overflow
    bank = 100 * rng.standard_normal((5, 3))
    out = inverted_softmax(s, bank, beta=20.0)
    assert np.isfinite(out).all()


def test_qb_norm_direct(small):
    s, bank = small
    beta, k = 2.0, 1
    out = qb_norm(s, bank, beta=beta, k=k)
    active = set()
    for b in range(6):
        active.add(int(np.argmax(bank[b])))
    assert set(np.flatnonzero(activation_set(bank, 1))) == active
    for q in range(5):
        top1 = int(np.argmax(s[q]))
        for g in range(4):
            if top1 in active:
                ref = beta * s[q, g] - math.log(sum(math.exp(beta * bank[b, g]) for b in range(6)))
            else:
                ref = s[q, g]
            assert out[q, g] == pytest.approx(ref)


def test_qb_norm_keeps_rows_outside_activation_set():
    s = np.array([[0.9, 0.1, 0.0], [0.0, 0.2, 0.8]])
    bank = np.array([[1.0, 0.0, 0.0], [0.9, 0.1, 0.0]])  # activation set = {0}
    out = qb_norm(s, bank, beta=5.0)
    np.testing.assert_array_equal(out[1], s[1])  # top-1 is item 2, not active -> raw row
    assert not np.allclose(out[0], s[0])


def test_csls_direct(small):
    s, bank = small
    k = 2
    out = csls(s, bank, k=k)
    for q in range(5):
        r_g = loop_topk_mean(list(s[q]), k)
        for g in range(4):
            r_b = loop_topk_mean(list(bank[:, g]), k)
            assert out[q, g] == pytest.approx(2 * s[q, g] - r_b - r_g)


def test_nnn_direct(small):
    s, bank = small
    out = nnn(s, bank, alpha=0.5, k=3)
    for q in range(5):
        for g in range(4):
            assert out[q, g] == pytest.approx(s[q, g] - 0.5 * loop_topk_mean(list(bank[:, g]), 3))
    # k beyond the bank size uses the whole bank
    np.testing.assert_allclose(nnn(s, bank, alpha=1.0, k=100), s - bank.mean(axis=0)[None, :])


def test_dual_softmax_direct(small):
    s, _ = small
    t = 0.5
    out = dual_softmax(s, temperature=t)
    for q in range(5):
        for g in range(4):
            sm = math.exp(s[q, g] / t) / sum(math.exp(s[i, g] / t) for i in range(5))
            assert out[q, g] == pytest.approx(s[q, g] * sm * 5)
    assert METHODS["dsl"].transductive and not METHODS["qbnorm"].transductive


@pytest.mark.parametrize("method", sorted(METHODS))
def test_inputs_not_mutated(method, small):
    s, bank = small
    s0, b0 = s.copy(), bank.copy()
    out = apply(method, s, bank)
    np.testing.assert_array_equal(s, s0)
    np.testing.assert_array_equal(bank, b0)
    assert out.shape == s.shape and out is not s


def test_apply_errors(small):
    s, bank = small
    with pytest.raises(ValueError, match="unknown post-hoc method"):
        apply("foo", s, bank)
    with pytest.raises(ValueError, match="needs a query bank"):
        apply("is", s, None)
    with pytest.raises(ValueError, match="unknown parameters"):
        apply("csls", s, bank, beta=3)
    with pytest.raises(ValueError, match="bank must be"):
        apply("nnn", s, bank[:, :3])
    with pytest.raises(ValueError, match="NaN or inf"):
        apply("nnn", np.full((2, 4), np.nan), bank)


def test_tune_selects_by_validation_r1():
    rng = np.random.default_rng(5)
    n = 60
    # a strong hub column steals top-1 from most queries; subtracting its bank bias (NNN alpha=1) fixes it
    val = rng.standard_normal((n, n)) + 3 * np.eye(n)
    bias = np.zeros(n)
    bias[7] = 4.0
    val = val + bias[None, :]
    bank = rng.standard_normal((200, n)) + bias[None, :]
    ss = ScoreSet.from_arrays(val.astype(np.float32))
    best, table = tune("nnn", ss, bank.astype(np.float32), {"alpha": [0.0, 1.0], "k": [16]})
    assert best == {"alpha": 1.0, "k": 16}
    assert [p for p, _ in table] == [{"alpha": 0.0, "k": 16}, {"alpha": 1.0, "k": 16}]
    assert table[0][1] == pytest.approx(mean_r1(val.astype(np.float32), gt=np.arange(n)))
    assert table[1][1] > table[0][1]


def test_bootstrap_ci_and_paired_test():
    rng = np.random.default_rng(0)
    x = (rng.random(400) < 0.4).astype(float)
    lo, hi = bootstrap_ci(x, n_boot=500, seed=1)
    assert lo < x.mean() < hi
    assert (lo, hi) == bootstrap_ci(x, n_boot=500, seed=1)  # seeded
    same = paired_test(x, x, n_boot=200, n_perm=200)
    assert same["delta"] == 0.0 and same["p_value"] == 1.0
    y = x.copy()
    y[:60] = 1.0  # B hits every one of the first 60 queries
    diff = paired_test(y, x, n_boot=300, n_perm=999, seed=2)
    assert diff["delta"] == pytest.approx((y - x).mean())
    assert diff["p_value"] < 0.01 and diff["ci_lo"] > 0
    with pytest.raises(ValueError, match="equal length"):
        paired_test(x, x[:-1])
    with pytest.raises(ValueError, match="non-empty"):
        bootstrap_ci(np.array([]))


def _dbnorm_reference(s, bank, tau, iters, gallery_bank=None):
    """DBNorm from its definition, in plain matrix scaling (no log domain): K = exp(M / tau), alternately scale
    rows to sum 1/n_rows and columns to 1/n_cols; the test score is s/tau + log(column scale)."""
    m = bank if gallery_bank is None else np.concatenate([bank, gallery_bank], axis=1)
    k = np.exp(m / tau)
    u, v = np.ones(m.shape[0]), np.ones(m.shape[1])
    for _ in range(iters):
        u = (1.0 / m.shape[0]) / (k @ v)
        v = (1.0 / m.shape[1]) / (k.T @ u)
    plan = u[:, None] * k * v[None, :]
    return s / tau + np.log(v[: s.shape[1]])[None, :], plan


@pytest.mark.parametrize("with_gallery_bank", [False, True])
def test_dbnorm_matches_plain_sinkhorn_reference(with_gallery_bank):
    from eval.posthoc import dbnorm

    rng = np.random.default_rng(4)
    s, bank = rng.normal(size=(7, 9)) * 0.3, rng.normal(size=(12, 9)) * 0.3
    gb = rng.normal(size=(12, 5)) * 0.3 if with_gallery_bank else None
    got = dbnorm(s, bank, tau=0.2, iters=200, gallery_bank=gb)
    ref, plan = _dbnorm_reference(s, bank, 0.2, 200, gb)
    # potentials are defined up to a constant: compare row-centred scores (rankings and differences)
    np.testing.assert_allclose(got - got.mean(1, keepdims=True), ref - ref.mean(1, keepdims=True), atol=1e-9)
    np.testing.assert_allclose(plan.sum(1), 1 / 12, rtol=1e-9)  # both marginals balanced
    np.testing.assert_allclose(plan.sum(0), 1 / plan.shape[1], rtol=1e-6)
    assert apply("dbnorm", s, bank, tau=0.2, iters=200).shape == (7, 9)
    with pytest.raises(ValueError, match="tau must be > 0"):
        dbnorm(s, bank, tau=0.0)


def test_dbnorm_demotes_a_bank_hub_and_is_tuned_on_validation():
    from eval.posthoc import tune

    rng = np.random.default_rng(6)
    n = 60
    s = rng.normal(size=(n, n)) * 0.1 + np.eye(n) * 0.3
    s[:, 0] += 0.4  # video 0 is a hub for the test queries ...
    bank = rng.normal(size=(200, n)) * 0.1
    bank[:, 0] += 0.4  # ... and for the bank queries
    new = apply("dbnorm", s, bank, tau=0.05)
    assert (np.argmax(new, 1) == 0).sum() < (np.argmax(s, 1) == 0).sum()
    params, table = tune("dbnorm", ScoreSet.from_arrays(s), bank)
    assert len(table) == 4 and params["tau"] in (0.01, 0.02, 0.05, 0.1)
