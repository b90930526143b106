"""Hubness: k-occurrence with fractional ties vs direct loops (both directions, |Q| != |G|), summary measures vs
direct formulas, hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sstats

from eval.evaluate import compute
from eval.hubness import check_total, gini, hubness_stats, k_occurrence, top_hubs
from eval.scores_io import ScoreSet

# ------------------------------------------------------------------ direct references (independent of eval/)


def loop_k_occurrence(s: np.ndarray, k: int, rel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Direct loops: per query, items strictly above the k-th value count 1; the r remaining slots are shared
    equally by the t items equal to the k-th value."""
    n_q, n_g = s.shape
    nk, good = np.zeros(n_g), np.zeros(n_g)
    for q in range(n_q):
        kth = sorted(s[q].tolist(), reverse=True)[k - 1]
        above = [j for j in range(n_g) if s[q, j] > kth]
        tied = [j for j in range(n_g) if s[q, j] == kth]
        share = (k - len(above)) / len(tied)
        for j in above:
            nk[j] += 1
            good[j] += rel[q, j]
        for j in tied:
            nk[j] += share
            good[j] += share * rel[q, j]
    return nk, good


@st.composite
def score_case(draw):
    q = draw(st.integers(3, 9))
    g = draw(st.integers(3, 9))
    vals = draw(st.lists(st.integers(0, 3), min_size=q * g, max_size=q * g))
    s = np.array(vals, dtype=np.float32).reshape(q, g)
    gt = np.array(draw(st.lists(st.integers(0, g - 1), min_size=q, max_size=q)))
    return s, gt


@settings(max_examples=40, deadline=None)
@given(score_case(), st.sampled_from([1, 2, 3]))
def test_k_occurrence_matches_loops_both_directions(case, k):
    s, gt = case
    q, g = s.shape
    rel = np.zeros((q, g), dtype=bool)
    rel[np.arange(q), gt] = True
    nk, good = k_occurrence(s, k, gt=gt)
    ref_nk, ref_good = loop_k_occurrence(s, k, rel)
    np.testing.assert_allclose(nk, ref_nk, atol=1e-9)
    np.testing.assert_allclose(good, ref_good, atol=1e-9)
    assert nk.sum() == pytest.approx(k * q)
    # the streaming engine, both directions (v2t: queries are the columns, relevance transposed)
    r = compute(ScoreSet.from_arrays(s, gt=gt), ks=(k,))
    np.testing.assert_allclose(r.t2v.nk[k], ref_nk, atol=1e-9)
    np.testing.assert_allclose(r.t2v.good[k], ref_good, atol=1e-9)
    ref_v, ref_vgood = loop_k_occurrence(s.T, k, rel.T)
    np.testing.assert_allclose(r.v2t.nk[k], ref_v, atol=1e-9)
    np.testing.assert_allclose(r.v2t.good[k], ref_vgood, atol=1e-9)


def test_k_occurrence_chunked_random_rectangular():
    rng = np.random.default_rng(0)
    s = rng.standard_normal((300, 47)).astype(np.float32)  # n_q != n_g, no ties
    s[:, 5] += 6.0  # a hub
    gt = rng.integers(0, 47, size=300)
    rel = np.zeros(s.shape, dtype=bool)
    rel[np.arange(300), gt] = True

    def factory():
        for a in range(0, 300, 64):
            yield s[a : a + 64]

    r = compute(ScoreSet.from_chunks(factory, [f"q{i}" for i in range(300)], [f"g{i}" for i in range(47)], gt=gt),
                ks=(1, 5, 10, 15))
    for k in (1, 5, 10, 15):
        ref_nk, ref_good = loop_k_occurrence(s, k, rel)
        np.testing.assert_allclose(r.t2v.nk[k], ref_nk)
        np.testing.assert_allclose(r.t2v.good[k], ref_good)
        ref_v, _ = loop_k_occurrence(s.T, k, rel.T)
        np.testing.assert_allclose(r.v2t.nk[k], ref_v)
        assert r.t2v.nk[k].sum() == pytest.approx(k * 300)
        assert r.v2t.nk[k].sum() == pytest.approx(k * 47)
    st10 = r.t2v.hubness(10)
    assert st10["mu"] == pytest.approx(10 * 300 / 47)
    assert r.t2v.nk[10][5] == 300  # the hub is in everybody's top-10


def test_all_tied_row_shares_slots():
    s = np.zeros((2, 4), dtype=np.float32)
    s[1] = [3, 2, 2, 2]
    nk, _ = k_occurrence(s, 2)
    # row 0: 4 tied items share 2 slots -> 0.5 each; row 1: item 0 + 1 slot shared by 3 -> 1/3 each
    np.testing.assert_allclose(nk, [1.5, 0.5 + 1 / 3, 0.5 + 1 / 3, 0.5 + 1 / 3])


def direct_stats(x: np.ndarray, k: int, n_q: int, good: np.ndarray, cen: np.ndarray) -> dict[str, float]:
    n = len(x)
    mu = x.mean()
    sd = x.std()
    total = x.sum()
    hubs = [i for i in range(n) if x[i] >= 2 * k * n_q / n]
    rad = [i for i in range(n) if x[i] > mu + 2 * sd]
    gini_pairs = sum(abs(x[i] - x[j]) for i in range(n) for j in range(n)) / (2 * n * total)
    return {
        "mu": k * n_q / n,
        "skew": sstats.skew(x),
        "robin_hood": sum(abs(v - mu) for v in x) / (2 * total),
        "gini": gini_pairs,
        "atkinson": 1 - np.mean(np.sqrt(x)) ** 2 / mu,
        "hubs": len(hubs) / n,
        "ho": sum(x[i] for i in hubs) / (k * n_q),
        "hubs_rad": len(rad) / n,
        "ho_rad": sum(x[i] for i in rad) / (k * n_q),
        "antihub": sum(v == 0 for v in x) / n,
        "max_hub": x.max() / (k * n_q),
        "groupie": x.max() / n_q,
        "bad_rate_hubs": sum(x[i] - good[i] for i in hubs) / sum(x[i] for i in hubs),
        "spearman_centrality": sstats.spearmanr(x, cen)[0],
    }


@pytest.mark.parametrize("n_q,n_g", [(60, 60), (200, 30), (25, 80)])
def test_hubness_stats_match_direct_formulas(n_q, n_g):
    rng = np.random.default_rng(n_q * 7 + n_g)
    s = rng.standard_normal((n_q, n_g)) + rng.standard_normal(n_g)[None, :] * 0.8  # item bias -> hubs
    gt = rng.integers(0, n_g, size=n_q)
    k = 5
    nk, good = k_occurrence(s, k, gt=gt)
    cen = s.mean(axis=0)
    got = hubness_stats(nk, k, n_q, good=good, centrality=cen)
    ref = direct_stats(nk, k, n_q, good, cen)
    for key, v in ref.items():
        assert got[key] == pytest.approx(v, rel=1e-9, abs=1e-12), key
    assert got["hubs"] > 0  # the case exercises the hub branches


def test_hand_computed_hubness_values():
    # n_q = 3 queries, k = 2, n_g = 4: N = [4, 1, 1, 0] (sum 6 = k n_q), mu = 1.5
    x = np.array([4.0, 1.0, 1.0, 0.0])
    st_ = hubness_stats(x, 2, 3, good=np.array([1.0, 1.0, 0.0, 0.0]))
    assert st_["mu"] == 1.5
    assert st_["robin_hood"] == pytest.approx((2.5 + 0.5 + 0.5 + 1.5) / 2 / 6)
    assert st_["gini"] == pytest.approx(2 * (1 * 0 + 2 * 1 + 3 * 1 + 4 * 4) / (4 * 6) - 5 / 4)
    assert st_["hubs"] == 0.25 and st_["ho"] == pytest.approx(4 / 6)  # 4 >= 2 * 1.5
    assert st_["antihub"] == 0.25
    assert st_["max_hub"] == pytest.approx(4 / 6) and st_["groupie"] == pytest.approx(4 / 3)
    assert st_["bad_rate_hubs"] == pytest.approx(3 / 4)
    assert st_["good_share"] == pytest.approx(2 / 6)
    # HO divides by k * n_q (slots), not by k * n_g (the scikit-hubness swap)
    assert st_["ho"] != pytest.approx(4 / (2 * 4))


def test_uniform_occurrences_have_no_hubness():
    st_ = hubness_stats(np.full(10, 3.0), 3, 10)
    assert st_["robin_hood"] == 0.0 and st_["gini"] == 0.0 and st_["hubs"] == 0.0
    assert np.isnan(st_["skew"]) and np.isnan(st_["skew_adj"])  # 0/0: undefined, not "no skew"


def test_sum_identity_is_checked():
    with pytest.raises(AssertionError, match="k-occurrence sum"):
        check_total(np.array([1.0, 1.0]), 2, 2)


def test_gini_sorted_form_matches_pairs():
    x = np.array([0.0, 2.5, 1.0, 7.0, 3.0])
    ref = np.abs(x[:, None] - x[None, :]).sum() / (2 * len(x) * x.sum())
    assert gini(x) == pytest.approx(ref)


def test_top_hubs_order():
    assert top_hubs(np.array([1.0, 5.0, 3.0]), np.array(["a", "b", "c"]), n=2) == [("b", 5.0), ("c", 3.0)]


def test_k_larger_than_gallery_is_rejected():
    with pytest.raises(ValueError, match="gallery size"):
        k_occurrence(np.zeros((2, 3), dtype=np.float32), 4)
