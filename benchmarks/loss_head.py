"""Benchmark: forward + backward of the whole NeighborRetr loss head, ours vs a direct einsum formulation.

Setting (docs/method.md §9): global batch B=128, memory bank M=1,920, 24 words, 12 frames, width 512, float32 CPU.
Both variants run the full head (L_Wti + L_Opt + L_Nbi + L_KL, weighting MLPs applied to the batch and to the
bank tokens) and differ in how the local WTI similarity is computed:

- ours: ``training.losses.compute_losses`` (default ``LossConfig``) ->
  ``training.similarity.local_similarity`` (custom autograd function over blocks of texts x videos with equal
  valid-token counts, so padded positions cost nothing, keeping only the max values and uint8 arg-max indices)
  and the bank's weighting MLPs through ``TokenWeighting.constant_input_logits`` (backward from the saved ReLU
  pattern, no recomputation);
- ours_generic: the same, but the MLPs passed as plain callables, so the bank path is the generic one
  (chunked activation checkpointing, ``bank_weight_checkpoint=True``);
- ref:  the similarity written as one einsum that materialises the cosine tensor [B, M, L, F] (and
  [B, B, L, F]), with plain autograd through the same ``TokenWeighting`` modules; the loss terms come from
  the same loss functions.

Each variant runs in a fresh subprocess: peak memory = ru_maxrss after the measured steps minus the
resident set size before the first step (inputs, MLPs and the bank are already allocated), with
MALLOC_MMAP_THRESHOLD_=65536 by default so that freed tensors leave the RSS (``--mmap-threshold 0`` keeps
glibc's adaptive threshold, whose heap retention adds ~100-200 MB to "ours" after a few steps); time = median of
the steps after one warm-up, as wall time and as process CPU time (the CPU time is the robust number on a
shared machine; with --threads 1 it is the single-core compute time).  The total loss and every
input/parameter gradient are compared across the variants.

    python benchmarks/loss_head.py [--steps 2] [--bank 1920] [--batch 128] [--threads 1]

Ends with ``RESULT time_ratio=<ours/ref> mem_ratio=<ours/ref> max_abs_diff=<d>`` (time = CPU time, ours =
the default configuration).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("ours", "ours_generic", "ref")


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _child(args: argparse.Namespace) -> int:
    import torch
    import torch.nn.functional as F

    from training.features import Features
    from training.losses import LossConfig, compute_losses
    from training.losses.centrality import centrality_weights, wti_loss
    from training.losses.kl import kl_consistency
    from training.losses.neighbor import neighbor_loss
    from training.losses.uniform import uniform_loss
    from training.memory_bank import MemoryBank
    from training.similarity import token_weights
    from training.token_weighting import TokenWeighting

    torch.set_num_threads(args.threads)
    b, m, n_l, n_f, d = args.batch, args.bank, 24, 12, 512
    g = torch.Generator().manual_seed(0)

    torch.manual_seed(0)
    text_mlp, video_mlp = TokenWeighting(d), TokenWeighting(d)  # the model's D -> 2D -> 1 MLPs
    if (
        args.variant == "ours_generic"
    ):  # the same MLPs as plain callables: the generic (checkpointed) bank path
        tw, vw = (lambda x: text_mlp(x)), (lambda x: video_mlp(x))
    else:
        tw, vw = text_mlp, video_mlp

    def masks(n: int, length: int, low: int) -> torch.Tensor:
        lengths = torch.randint(low, length + 1, (n,), generator=g)
        return (torch.arange(length)[None] < lengths[:, None]).float()

    leaves = {
        "text_tokens": torch.randn(b, n_l, d, generator=g),
        "video_tokens": torch.randn(b, n_f, d, generator=g),
        "text_global": torch.randn(b, d, generator=g) * 4,
        "video_global": torch.randn(b, d, generator=g) * 4,
    }
    for x in leaves.values():
        x.requires_grad_()
    tmask, vmask = masks(b, n_l, 4), masks(b, n_f, 6)
    bank = MemoryBank(m)
    bank.update(
        torch.randn(m, n_l, d, generator=g),
        masks(m, n_l, 4),
        torch.randn(m, n_f, d, generator=g),
        masks(m, n_f, 6),
        torch.arange(m),
    )
    logit_scale = torch.tensor(4.6052, requires_grad=True)
    cfg = LossConfig()
    feats = Features(
        leaves["text_tokens"],
        tmask,
        leaves["video_tokens"],
        vmask,
        leaves["text_global"],
        leaves["video_global"],
    )

    def einsum_local(t, mt, wt, v, mv, wv):
        c = torch.einsum("ald,bfd->ablf", F.normalize(t, dim=-1), F.normalize(v, dim=-1))
        c = c * mt[:, None, :, None] * mv[None, :, None, :]
        return 0.5 * ((c.max(3).values * wt[:, None]).sum(-1) + (c.max(2).values * wv[None]).sum(-1))

    def reference_head() -> torch.Tensor:
        wt, wv = token_weights(tw(feats.text_tokens), tmask), token_weights(vw(feats.video_tokens), vmask)
        s = einsum_local(feats.text_tokens, tmask, wt, feats.video_tokens, vmask, wv)
        glob = feats.text_global @ feats.video_global.T
        omega_t = centrality_weights(feats.text_global, feats.text_tokens, scale=cfg.centrality_scale)
        omega_v = centrality_weights(feats.video_global, feats.video_tokens, scale=cfg.centrality_scale)
        wti = wti_loss(s, logit_scale.exp(), omega_t, omega_v)
        bwt, bwv = (
            token_weights(tw(bank.text_tokens), bank.text_mask),
            token_weights(vw(bank.video_tokens), bank.video_mask),
        )
        zeta_v = einsum_local(bank.text_tokens, bank.text_mask, bwt, feats.video_tokens, vmask, wv).mean(0)
        zeta_t = einsum_local(feats.text_tokens, tmask, wt, bank.video_tokens, bank.video_mask, bwv).mean(1)
        nbi = neighbor_loss(s, zeta_v, zeta_t, k=cfg.num_neighbors, tau=cfg.temperature)
        opt = uniform_loss(glob, beta=cfg.beta, gamma=cfg.temperature, iters=cfg.sinkhorn_iters)
        return wti + opt + nbi + kl_consistency(s, glob, "mean")

    def ours_head() -> torch.Tensor:
        return compute_losses(
            feats, text_weight=tw, video_weight=vw, logit_scale=logit_scale, cfg=cfg, bank=bank
        )["total"]

    head = reference_head if args.variant == "ref" else ours_head
    grads_of = [*leaves.values(), logit_scale, *text_mlp.parameters(), *video_mlp.parameters()]
    rss0 = _rss_bytes()
    times, cpu_times = [], []
    for _ in range(args.steps + 1):
        for p in grads_of:
            p.grad = None
        t0, c0 = time.perf_counter(), time.process_time()
        loss = head()
        loss.backward()
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss0
    torch.save({"loss": loss.detach(), "grads": [p.grad for p in grads_of]}, args.out)
    summary = {
        "time_s": statistics.median(times[1:] or times),
        "cpu_s": statistics.median(cpu_times[1:] or cpu_times),
        "peak_mb": peak / 2**20,
        "loss": loss.item(),
    }
    print(json.dumps(summary))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=2, help="measured steps after one warm-up (>= 0)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--bank", type=int, default=1920)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--mmap-threshold",
        type=int,
        default=65536,
        help="MALLOC_MMAP_THRESHOLD_ for the children (bytes; 0 = glibc default). A fixed threshold makes large "
        "tensors mmap-backed, so ru_maxrss follows live tensors instead of glibc heap retention.",
    )
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.variant:
        return _child(args)

    import torch

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for variant in VARIANTS:
            out = os.path.join(tmp, f"{variant}.pt")
            cmd = [
                sys.executable,
                __file__,
                "--variant",
                variant,
                "--out",
                out,
                "--steps",
                str(args.steps),
                "--batch",
                str(args.batch),
                "--bank",
                str(args.bank),
                "--threads",
                str(args.threads),
            ]
            env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS=str(args.threads))
            if args.mmap_threshold > 0:
                env["MALLOC_MMAP_THRESHOLD_"] = str(args.mmap_threshold)
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                print(proc.stderr, file=sys.stderr)
                return 1
            results[variant] = json.loads(proc.stdout.strip().splitlines()[-1])
            results[variant]["tensors"] = torch.load(out, weights_only=True)
    ref = results["ref"]
    diffs = []
    for name in VARIANTS[:-1]:
        t = results[name]["tensors"]
        diffs.append((t["loss"] - ref["tensors"]["loss"]).abs().item())
        diffs += [(a - b).abs().max().item() for a, b in zip(t["grads"], ref["tensors"]["grads"])]
    max_diff = max(diffs)
    print(
        f"B={args.batch} bank={args.bank} words=24 frames=12 width=512 float32 threads={args.threads} "
        f"MALLOC_MMAP_THRESHOLD_={args.mmap_threshold or 'glibc default'}"
    )
    print(f"{'variant':<12} {'wall s':>8} {'cpu s':>8} {'peak MB':>9} {'total loss':>12}")
    for name in VARIANTS:
        r = results[name]
        print(f"{name:<12} {r['time_s']:>8.2f} {r['cpu_s']:>8.2f} {r['peak_mb']:>9.1f} {r['loss']:>12.6f}")
    n_grads = len(ref["tensors"]["grads"])
    print(f"max |diff| vs ref over the loss and {n_grads} gradients, both ours variants: {max_diff:.3g}")
    ours = results["ours"]
    for name in VARIANTS[:-1]:
        r = results[name]
        print(
            f"{name}/ref: cpu {r['cpu_s'] / ref['cpu_s']:.3f}  wall {r['time_s'] / ref['time_s']:.3f}  "
            f"peak {r['peak_mb'] / ref['peak_mb']:.3f}"
        )
    time_ratio = ours["cpu_s"] / ref["cpu_s"]
    mem_ratio = ours["peak_mb"] / ref["peak_mb"]
    print(f"RESULT time_ratio={time_ratio:.3f} mem_ratio={mem_ratio:.3f} max_abs_diff={max_diff:.3g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
