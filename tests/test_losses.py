"""NeighborRetr losses vs hand-computed values and independent brute-force loops (docs/method.md §3)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from open_clip.loss import ClipLoss

from training.features import Features
from training.losses import LossConfig, compute_losses
from training.losses.centrality import centrality, centrality_weights, wti_loss
from training.losses.head import bank_centrality
from training.losses.infonce import clip_infonce, pool_text_eot, pool_video_mean
from training.losses.kl import kl_consistency
from training.losses.neighbor import minmax_normalize, neighbor_loss, neighbor_loss_direction, neighbor_sets
from training.losses.uniform import opt_loss, sinkhorn_plan, uniform_loss
from training.memory_bank import MemoryBank
from training.similarity import local_similarity, token_weights

DT = torch.float64


def rand(*shape, seed=0, scale=1.0):
    return torch.randn(*shape, dtype=DT, generator=torch.Generator().manual_seed(seed)) * scale


def cos(a, b):
    return float(a @ b) / (float(a.norm()) * float(b.norm()))


# ---------------------------------------------------------------- L_Nbi pieces


def test_minmax_toy_row_from_method_md():
    # row 0: self 0.9; neighbours 0.8, 0.7; others 0.1, 0.2, 0.3 (k = 2, B = 6)
    s = rand(6, 6, seed=1) * 0.01
    s[0] = torch.tensor([0.9, 0.8, 0.7, 0.1, 0.2, 0.3], dtype=DT)
    nbr, ext = neighbor_sets(s, 2)
    assert nbr[0].tolist() == [False, True, True, False, False, False]
    assert ext[0].tolist() == [True, True, True, False, False, False]
    out = minmax_normalize(s, ~ext)[0]
    assert out.tolist() == pytest.approx([4.0, 3.5, 3.0, 0.0, 0.5, 1.0])
    inner = minmax_normalize(s, ext)[0]  # option "neighbors": over E_i = {0.9, 0.8, 0.7}
    assert inner.tolist() == pytest.approx([1.0, 0.5, 0.0, -3.0, -2.5, -2.0])


def test_neighbor_sets_exclude_self_even_when_self_is_not_max():
    s = torch.tensor([[0.0, 5.0, 4.0, 1.0], [3.0, 9.0, 2.0, 1.0], [1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 0.0, 0.0]])
    nbr, _ = neighbor_sets(s, 2)
    assert nbr.nonzero().tolist()[:6] == [[0, 1], [0, 2], [1, 0], [1, 2], [2, 1], [2, 3]]
    assert not nbr.diagonal().any()
    with pytest.raises(ValueError, match="num_neighbors=4"):
        neighbor_sets(s, 4)


def brute_nbi_direction(sim, zeta, k, tau, norm_over):
    b = sim.shape[0]
    total = 0.0
    for i in range(b):
        row = [float(x) for x in sim[i]]
        z = [float(x) for x in zeta]
        others = sorted((j for j in range(b) if j != i), key=lambda j: -row[j])
        nbrs = others[:k]
        ext = set(nbrs) | {i}
        region = [j for j in range(b) if (j not in ext) == (norm_over == "complement")]
        smin, smax = min(row[j] for j in region), max(row[j] for j in region)
        zmin, zmax = min(z[j] for j in region), max(z[j] for j in region)
        d = {j: (row[j] - smin) / (smax - smin) - (z[j] - zmin) / (zmax - zmin) for j in nbrs}
        den = sum(math.exp(tau * d[j]) for j in nbrs)
        pi = {j: math.exp(tau * d[j]) / den for j in nbrs}
        pi[i] = 1.0
        lse = math.log(sum(math.exp(row[j]) for j in ext))
        total += -sum(pi[j] * (row[j] - lse) for j in ext) / sum(pi.values())
    return total / b


@pytest.mark.parametrize("norm_over", ["complement", "neighbors"])
def test_neighbor_loss_vs_brute_force(norm_over):
    b, k = 7, 3
    sim = rand(b, b, seed=2) * 0.3
    zv, zt = rand(b, seed=3) * 0.2, rand(b, seed=4) * 0.2
    got = neighbor_loss(sim, zv, zt, k=k, tau=3.0, norm_over=norm_over)
    want = 0.5 * (
        brute_nbi_direction(sim, zv, k, 3.0, norm_over) + brute_nbi_direction(sim.T, zt, k, 3.0, norm_over)
    )
    assert got.item() == pytest.approx(want, rel=1e-10)


def test_neighbor_loss_hand_value_two_neighbours():
    # B = 5, k = 1, row 0: S = (1.0 self, 0.5 nbr, 0.0, 0.1, 0.2); zeta irrelevant with a single neighbour
    # (pi = 1 on it): l_0 = -½ [log P_00 + log P_01], P over {0, 1}
    s = torch.tensor([1.0, 0.5, 0.0, 0.1, 0.2], dtype=DT)
    sim = torch.stack([s.roll(i) for i in range(5)])  # row i is row 0 shifted: same value per row
    loss = neighbor_loss_direction(sim, rand(5, seed=5), k=1, tau=3.0)
    lse = math.log(math.exp(1.0) + math.exp(0.5))
    assert loss.item() == pytest.approx(-0.5 * ((1.0 - lse) + (0.5 - lse)))


def test_neighbor_loss_bad_options():
    with pytest.raises(ValueError, match="norm_over"):
        neighbor_loss_direction(torch.zeros(6, 6), torch.zeros(6), k=2, norm_over="all")
    with pytest.raises(ValueError, match="zeta shape"):
        neighbor_loss_direction(torch.zeros(6, 6), torch.zeros(5), k=2)


def test_pi_carries_grad_unless_detached():
    sim = rand(6, 6, seed=6) * 0.3
    zeta = rand(6, seed=7).requires_grad_()
    (g,) = torch.autograd.grad(neighbor_loss_direction(sim, zeta, k=2), [zeta])
    assert g.abs().sum() > 0  # zeta only enters through pi
    out = neighbor_loss_direction(sim, zeta, k=2, detach_weights=True)
    assert not out.requires_grad


# ---------------------------------------------------------------- L_Wti


@pytest.mark.parametrize("masked", [False, True])
def test_centrality_vs_brute_force(masked):
    g = rand(3, 4, seed=8)
    tok = rand(3, 5, 4, seed=9)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    got = centrality(g, tok, mask if masked else None)
    for a in range(3):
        vals = [cos(g[a], tok[b, p]) for b in range(3) for p in range(5) if not masked or mask[b, p]]
        assert got[a].item() == pytest.approx(sum(vals) / len(vals), rel=1e-10)
    w = centrality_weights(g, tok, scale=0.3)
    assert torch.allclose(w, torch.exp(0.3 * centrality(g, tok)))


def test_wti_vs_brute_force():
    b, alpha = 4, 7.0
    sim = rand(b, b, seed=10) * 0.5
    wt, wv = 1 + rand(b, seed=11).abs(), 1 + rand(b, seed=12).abs()
    want = 0.0
    for i in range(b):
        row = [alpha * float(sim[i, j]) for j in range(b)]
        col = [alpha * float(sim[j, i]) for j in range(b)]
        want += -float(wt[i]) * (row[i] - math.log(sum(map(math.exp, row)))) / (2 * b)
        want += -float(wv[i]) * (col[i] - math.log(sum(map(math.exp, col)))) / (2 * b)
    assert wti_loss(sim, alpha, wt, wv).item() == pytest.approx(want, rel=1e-10)


def test_wti_with_unit_weights_is_infonce_over_local_similarity():
    b, alpha = 5, 100.0
    sim = rand(b, b, seed=13) * 0.2
    labels = torch.arange(b)
    infonce = 0.5 * (F.cross_entropy(alpha * sim, labels) + F.cross_entropy(alpha * sim.T, labels))
    one = torch.ones(b, dtype=DT)
    assert wti_loss(sim, alpha, one, one).item() == pytest.approx(infonce.item(), rel=1e-12)
    # centrality_scale = 0 gives unit weights through the whole head
    feats, tw, vw = make_batch(b, seed=14)
    cfg = LossConfig(centrality_scale=0.0, num_neighbors=2)
    out = compute_losses(
        feats, text_weight=tw, video_weight=vw, logit_scale=torch.tensor(math.log(alpha), dtype=DT), cfg=cfg
    )
    s = local_similarity(
        feats.text_tokens,
        feats.text_mask,
        token_weights(tw(feats.text_tokens), feats.text_mask),
        feats.video_tokens,
        feats.video_mask,
        token_weights(vw(feats.video_tokens), feats.video_mask),
    )
    ref = 0.5 * (F.cross_entropy(alpha * s, labels) + F.cross_entropy(alpha * s.T, labels))
    assert out["wti"].item() == pytest.approx(ref.item(), rel=1e-10)


# ---------------------------------------------------------------- L_Opt


def test_sinkhorn_marginals_uniform():
    g = rand(6, 6, seed=15) * 0.1
    q = sinkhorn_plan(g, iters=50)
    torch.testing.assert_close(q.sum(0), torch.ones(6, dtype=DT), atol=1e-12, rtol=0)  # v-update is last
    torch.testing.assert_close(q.sum(1), torch.ones(6, dtype=DT), atol=1e-4, rtol=0)


def test_sinkhorn_equals_plain_matrix_scaling():
    g = rand(5, 5, seed=16) * 2.0
    k = torch.exp(g)
    mu = 1.0 / 10
    a, b = torch.ones(5, dtype=DT), torch.ones(5, dtype=DT)
    for _ in range(50):  # u-update (rows) then v-update (columns), 50 times
        a = mu / (k @ b)
        b = mu / (k.T @ a)
    want = a[:, None] * k * b[None, :] * 10
    torch.testing.assert_close(sinkhorn_plan(g, 50), want, atol=1e-12, rtol=1e-10)
    # a fixed iteration count: 3 iterations differ from 50 when not converged
    assert (sinkhorn_plan(g, 3) - want).abs().max() > 1e-6


def test_opt_loss_brute_force_and_target_has_no_grad():
    b, beta, gamma = 4, 0.7, 3.0
    g = (rand(b, b, seed=17) * 2).requires_grad_()
    q = sinkhorn_plan(g, 50)
    assert not q.requires_grad
    want = 0.0
    for i in range(b):
        row = [gamma * g[i, j].item() for j in range(b)]
        lse = math.log(sum(map(math.exp, row)))
        for j in range(b):
            y = beta * float(q[i, j]) + (1 - beta) * (i == j)
            want -= y * (row[j] - lse) / b
    loss = opt_loss(g, beta=beta, gamma=gamma, iters=50)
    assert loss.item() == pytest.approx(want, rel=1e-10)
    (grad,) = torch.autograd.grad(loss, [g])
    y = beta * q + (1 - beta) * torch.eye(b, dtype=DT)
    torch.testing.assert_close(grad, gamma * (torch.softmax(gamma * g, 1) - y).detach() / b)  # Y is constant
    both = uniform_loss(g, beta=beta, gamma=gamma, iters=50)
    assert both.item() == pytest.approx(
        0.5 * (want + opt_loss(g.T, beta=beta, gamma=gamma).item()), rel=1e-10
    )


# ---------------------------------------------------------------- L_KL


@pytest.mark.parametrize(("reduction", "div"), [("mean", 16), ("batchmean", 4)])
def test_kl_brute_force_and_both_sides_have_grad(reduction, div):
    s = (rand(4, 4, seed=18) * 0.3).requires_grad_()
    g = (rand(4, 4, seed=19) * 3).requires_grad_()

    def kl_sum(p_logits, q_logits):
        total = 0.0
        for i in range(4):
            ps = [math.exp(float(x)) for x in p_logits[i]]
            qs = [math.exp(float(x)) for x in q_logits[i]]
            for pj, qj in zip(ps, qs):
                p, q = pj / sum(ps), qj / sum(qs)
                total += p * (math.log(p) - math.log(q))
        return total

    sd, gd = s.detach(), g.detach()
    want = 0.5 * (kl_sum(sd, gd) + kl_sum(sd.T, gd.T)) / div
    out = kl_consistency(s, g, reduction)
    assert out.item() == pytest.approx(want, rel=1e-10)
    gs, gg = torch.autograd.grad(out, [s, g])
    assert gs.abs().sum() > 0 and gg.abs().sum() > 0
    with pytest.raises(ValueError, match="reduction"):
        kl_consistency(s, g, "sum")


# ---------------------------------------------------------------- InfoNCE baseline


def test_pooling_and_infonce_equal_open_clip():
    tok = rand(4, 5, 6, seed=20)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 1, 0]])
    eot = pool_text_eot(tok, mask)
    assert (
        torch.equal(eot[0], tok[0, 2]) and torch.equal(eot[1], tok[1, 4]) and torch.equal(eot[2], tok[2, 1])
    )
    vtok = rand(4, 3, 6, seed=21)
    vmask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0], [1, 1, 1]])
    vm = pool_video_mean(vtok, vmask)
    torch.testing.assert_close(vm[0], (vtok[0, 0] + vtok[0, 1]) / 2)
    torch.testing.assert_close(vm[2], vtok[2, 0])
    alpha = torch.tensor(20.0, dtype=DT)
    ours = clip_infonce(eot, vm, alpha)
    ref = ClipLoss()(F.normalize(vm, dim=-1), F.normalize(eot, dim=-1), alpha)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-12)
    feats = Features(tok, mask, vtok, vmask, rand(4, 6, seed=22), rand(4, 6, seed=23))
    out = compute_losses(
        feats, text_weight=None, video_weight=None, logit_scale=alpha.log(), cfg=LossConfig(kind="infonce")
    )
    assert set(out) == {"infonce", "total"}
    assert out["total"].item() == pytest.approx(ref.item(), rel=1e-12)


# ---------------------------------------------------------------- the head


class Mlp(nn.Module):
    def __init__(self, d, seed):
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(nn.Linear(d, 16), nn.ReLU(), nn.Linear(16, 1)).to(DT)

    def forward(self, x):
        return self.net(x).squeeze(-1)


def make_batch(b, seed, n_l=5, n_f=3, d=8, grad=False):
    tt, vt = rand(b, n_l, d, seed=seed), rand(b, n_f, d, seed=seed + 1)
    tg, vg = rand(b, d, seed=seed + 2), rand(b, d, seed=seed + 3)
    if grad:
        for x in (tt, vt, tg, vg):
            x.requires_grad_()
    tm = torch.ones(b, n_l)
    tm[0, 2:] = 0
    tm[1, 4:] = 0
    vm = torch.ones(b, n_f)
    vm[2, 1:] = 0
    return Features(tt, tm, vt, vm, tg, vg), Mlp(d, seed), Mlp(d, seed + 7)


def naive_local(t, mt, wt, v, mv, wv):
    c = torch.einsum("ald,bfd->ablf", F.normalize(t, dim=-1), F.normalize(v, dim=-1))
    c = c * mt[:, None, :, None] * mv[None, :, None, :]
    return 0.5 * ((c.max(3).values * wt[:, None]).sum(-1) + (c.max(2).values * wv[None]).sum(-1))


def test_compute_losses_terms_and_total():
    feats, tw, vw = make_batch(6, seed=30)
    cfg = LossConfig(num_neighbors=3, uniform_weight=0.5, neighbor_weight=2.0, kl_weight=3.0)
    out = compute_losses(
        feats, text_weight=tw, video_weight=vw, logit_scale=torch.tensor(math.log(100)), cfg=cfg
    )
    assert set(out) == {"wti", "nbi", "opt", "kl", "total"}
    total = out["wti"] + 0.5 * out["opt"] + 2.0 * out["nbi"] + 3.0 * out["kl"]
    assert out["total"].item() == pytest.approx(total.item(), rel=1e-12)
    g = feats.text_global @ feats.video_global.T
    assert out["opt"].item() == pytest.approx(
        uniform_loss(g, beta=0.7, gamma=3.0, iters=50).item(), rel=1e-12
    )
    wt = token_weights(tw(feats.text_tokens), feats.text_mask)
    wv = token_weights(vw(feats.video_tokens), feats.video_mask)
    s = naive_local(feats.text_tokens, feats.text_mask, wt, feats.video_tokens, feats.video_mask, wv)
    assert out["kl"].item() == pytest.approx(kl_consistency(s, g, "mean").item(), rel=1e-10)
    # empty bank -> the batch is the bank
    nbi = neighbor_loss(s, s.mean(0), s.mean(1), k=3, tau=3.0)
    assert out["nbi"].item() == pytest.approx(nbi.item(), rel=1e-10)
    out_empty = compute_losses(
        feats, text_weight=tw, video_weight=vw, logit_scale=torch.tensor(4.6), cfg=cfg, bank=MemoryBank(4)
    )
    assert out_empty["nbi"].item() == pytest.approx(nbi.item(), rel=1e-10)


def test_options_change_their_terms_only():
    feats, tw, vw = make_batch(6, seed=40)
    ls = torch.tensor(math.log(100))
    base = compute_losses(
        feats, text_weight=tw, video_weight=vw, logit_scale=ls, cfg=LossConfig(num_neighbors=3)
    )

    def run(**kw):
        return compute_losses(
            feats, text_weight=tw, video_weight=vw, logit_scale=ls, cfg=LossConfig(num_neighbors=3, **kw)
        )

    l2 = run(global_l2norm=True)
    g = F.normalize(feats.text_global, dim=-1) @ F.normalize(feats.video_global, dim=-1).T
    assert l2["opt"].item() == pytest.approx(uniform_loss(g).item(), rel=1e-12)
    assert l2["wti"].item() == base["wti"].item()
    bm = run(kl_reduction="batchmean")
    assert bm["kl"].item() == pytest.approx(6 * base["kl"].item(), rel=1e-12)
    nb = run(nbi_norm_over="neighbors")
    assert nb["nbi"].item() != pytest.approx(base["nbi"].item())
    assert nb["wti"].item() == base["wti"].item()
    cm = run(centrality_mask_padding=True)
    assert cm["wti"].item() != pytest.approx(base["wti"].item())
    assert cm["nbi"].item() == base["nbi"].item()
    dw = run(detach_weights=True)
    assert dw["total"].item() == pytest.approx(base["total"].item(), rel=1e-12)  # values unchanged


def test_bank_centrality_brute_force_and_gradient_flow():
    feats, tw, vw = make_batch(6, seed=50, grad=True)
    bank_feats, _, _ = make_batch(4, seed=60)
    bank = MemoryBank(10)
    bank.update(
        bank_feats.text_tokens.requires_grad_(),
        bank_feats.text_mask,
        bank_feats.video_tokens,
        bank_feats.video_mask,
        torch.arange(4),
    )
    assert not bank.text_tokens.requires_grad  # stored detached
    wt = token_weights(tw(feats.text_tokens), feats.text_mask)
    wv = token_weights(vw(feats.video_tokens), feats.video_mask)
    s = local_similarity(feats.text_tokens, feats.text_mask, wt, feats.video_tokens, feats.video_mask, wv)
    zv, zt = bank_centrality(feats, wt, wv, s, text_weight=tw, video_weight=vw, bank=bank)
    bwt = token_weights(tw(bank.text_tokens), bank.text_mask)
    bwv = token_weights(vw(bank.video_tokens), bank.video_mask)
    for j in range(6):
        want_v = (
            sum(
                naive_local(
                    bank.text_tokens[m : m + 1],
                    bank.text_mask[m : m + 1],
                    bwt[m : m + 1],
                    feats.video_tokens[j : j + 1],
                    feats.video_mask[j : j + 1],
                    wv[j : j + 1],
                ).item()
                for m in range(4)
            )
            / 4
        )
        want_t = (
            sum(
                naive_local(
                    feats.text_tokens[j : j + 1],
                    feats.text_mask[j : j + 1],
                    wt[j : j + 1],
                    bank.video_tokens[m : m + 1],
                    bank.video_mask[m : m + 1],
                    bwv[m : m + 1],
                ).item()
                for m in range(4)
            )
            / 4
        )
        assert zv[j].item() == pytest.approx(want_v, rel=1e-10)
        assert zt[j].item() == pytest.approx(want_t, rel=1e-10)
    # the text MLP reaches zeta^v only through the bank texts: its gradient proves MLP(bank) carries grad
    grads = torch.autograd.grad(zv.sum(), list(tw.parameters()) + [feats.video_tokens])
    assert all(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("detach", [False, True])
def test_head_gradient_flow(detach):
    feats, tw, vw = make_batch(6, seed=70, grad=True)
    bank_feats, _, _ = make_batch(5, seed=80)
    bank = MemoryBank(5)
    bank.prefill(
        bank_feats.text_tokens,
        bank_feats.text_mask,
        bank_feats.video_tokens,
        bank_feats.video_mask,
        torch.arange(5),
    )
    cfg = LossConfig(num_neighbors=3, detach_weights=detach)
    out = compute_losses(
        feats, text_weight=tw, video_weight=vw, logit_scale=torch.tensor(4.0), cfg=cfg, bank=bank
    )
    # omega: the global tokens reach L_Wti only through omega
    g_wti = torch.autograd.grad(
        out["wti"], [feats.text_global, feats.video_global], allow_unused=True, retain_graph=True
    )
    if detach:
        assert all(g is None for g in g_wti)
    else:
        assert all(g is not None and g.abs().sum() > 0 for g in g_wti)
    # the bank tokens never get gradient; the total reaches every MLP parameter
    assert not bank.text_tokens.requires_grad and not bank.video_tokens.requires_grad
    out["total"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in [*tw.parameters(), *vw.parameters()])


def test_config_validation():
    cfg = LossConfig()
    cfg.validate(global_batch=128)
    with pytest.raises(ValueError, match=r"num_neighbors=20.*global batch - 3 = 19"):
        cfg.validate(global_batch=22)
    LossConfig(kind="infonce").validate(global_batch=4)  # k irrelevant for the baseline
    for field, value, msg in [
        ("kind", "clip", "kind='clip'"),
        ("nbi_norm_over", "all", "nbi_norm_over"),
        ("kl_reduction", "sum", "kl_reduction"),
        ("temperature", 0.0, "temperature"),
        ("beta", 1.5, "beta"),
        ("num_neighbors", 0, "num_neighbors"),
        ("sinkhorn_iters", 2.5, "sinkhorn_iters"),
        ("kl_weight", -1.0, "kl_weight"),
        ("centrality_scale", float("nan"), "centrality_scale"),
        ("detach_weights", "yes", "detach_weights"),
    ]:
        with pytest.raises(ValueError, match=msg):
            LossConfig(**{field: value})
    feats, tw, vw = make_batch(6, seed=90)
    with pytest.raises(ValueError, match="num_neighbors"):
        compute_losses(
            feats, text_weight=tw, video_weight=vw, logit_scale=torch.tensor(1.0), cfg=LossConfig()
        )


def test_bank_weight_checkpoint_changes_nothing(monkeypatch):
    import training.losses.head as head

    monkeypatch.setattr(head, "BANK_CHUNK", 2)  # several checkpointed chunks
    results = []
    for ckpt in (False, True):
        feats, tw, vw = make_batch(6, seed=100, grad=True)
        bank_feats, _, _ = make_batch(5, seed=110)
        bank = MemoryBank(5)
        bank.update(
            bank_feats.text_tokens,
            bank_feats.text_mask,
            bank_feats.video_tokens,
            bank_feats.video_mask,
            torch.arange(5),
        )
        cfg = LossConfig(num_neighbors=3, bank_weight_checkpoint=ckpt)
        out = compute_losses(
            feats, text_weight=tw, video_weight=vw, logit_scale=torch.tensor(3.0), cfg=cfg, bank=bank
        )
        params = [*tw.parameters(), *vw.parameters(), feats.text_tokens, feats.video_tokens]
        results.append((out["total"].detach(), torch.autograd.grad(out["total"], params)))
    torch.testing.assert_close(results[0][0], results[1][0], atol=1e-12, rtol=0)
    for a, b in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)


def test_identical_clips_give_a_finite_neighbor_loss():
    # every candidate equally similar: the official min-max divides 0 by 0 (NaN); here such rows normalise to 0
    sim = torch.full((5, 5), 0.3, requires_grad=True)
    zeta = torch.full((5,), 0.1)
    region = ~torch.eye(5, dtype=torch.bool)
    assert torch.equal(minmax_normalize(sim.detach(), region), torch.zeros(5, 5))
    loss = neighbor_loss_direction(sim, zeta, k=2)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(sim.grad).all()
    # with equal logits the restricted softmax over self + 2 neighbours is uniform: -log(1/3) for every term
    assert loss.item() == pytest.approx(math.log(3), abs=1e-6)


def test_neighbor_loss_k_equal_b_minus_1_is_finite_like_the_official_code():
    # k = B - 1: the complement region is empty. The official finfo.max sentinels give S^ = C^ = 0, so pi is
    # uniform (1/k) over the B-1 neighbours and l_i = -1/2 [log P_ii + 1/k sum_{j != i} log P_ij], P over the row.
    b = 5
    sim, zv, zt = rand(b, b, seed=11), rand(b, seed=12), rand(b, seed=13)

    def direction(s):
        logp = s - torch.logsumexp(s, dim=1, keepdim=True)
        eye = torch.eye(b, dtype=torch.bool)
        return (-0.5 * (logp.diagonal() + logp.masked_fill(eye, 0.0).sum(1) / (b - 1))).mean()

    got = neighbor_loss(sim, zv, zt, k=b - 1, tau=3.0)
    assert torch.isfinite(got)
    assert got.item() == pytest.approx(0.5 * (direction(sim) + direction(sim.T)).item(), rel=1e-12)
    # float32 (where finfo.max overflow used to turn the row into NaN) gives the same finite value
    got32 = neighbor_loss(sim.float(), zv.float(), zt.float(), k=b - 1, tau=3.0)
    assert got32.item() == pytest.approx(got.item(), rel=1e-5)


@pytest.mark.parametrize("k, msg", [(0, r"k=0 must be in \[1, B-1\] = \[1, 5\]"), (6, r"k=6 must be in \[1, B-1\]"),
                                    (2.0, "must be an int"), (True, "must be an int")])
def test_neighbor_loss_rejects_invalid_k_in_direct_calls(k, msg):
    with pytest.raises(ValueError, match=msg):
        neighbor_loss(rand(6, 6), rand(6), rand(6), k=k)
