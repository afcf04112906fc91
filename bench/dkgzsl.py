"""Benchmark of DKGZSL at AWA2 sizes: matmul GFLOP (counted by torch.utils.flop_counter) and seconds per
iteration of the DKG²N generator stage (pass 0 plain, pass 1 MFU-guided), and of one SOVR stage-1 step
(FDE + ARA on a class-balanced batch) and one SOVR extraction batch on region tokens.

Shapes: AWA2's 40 seen / 50 classes and 85 attributes; features C = 768 (ViT-B/16 tokens, R = 196 + the
CLS token) or 2048 (ResNet-101 14x14 maps); the paper's H = 4096, batch 64, critic_iter 5. The features
are random (only the timing matters). Prints figures; asserts nothing.

    python bench/dkgzsl.py --device cpu --iters 2 --dim 768
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from d2sc import Clock  # noqa: E402
from zsl.data.types import ZSLData  # noqa: E402
from zsl.models.dkgzsl import DKGZSL  # noqa: E402
from zsl.models.sovr import SOVR, SOVRConfig, attribute_vectors, class_prototypes  # noqa: E402

SEEN, CLASSES, ATTRIBUTES, GRID = 40, 50, 85, 14


def random_data(dim: int, n_train: int, seed: int = 0) -> ZSLData:
    """Random pooled features in [0, 1] with AWA2's class and attribute counts (timing only)."""
    g = np.random.default_rng(seed)
    emb = g.random((CLASSES, ATTRIBUTES), dtype=np.float32)
    feats = lambda n: g.random((n, dim), dtype=np.float32)  # noqa: E731
    return ZSLData(name="bench-AWA2-shapes", protocol="validation", simulated=True,
                   class_names=[str(k) for k in range(CLASSES)], class_emb=emb,
                   seen_classes=np.arange(SEEN), unseen_classes=np.arange(SEEN, CLASSES),
                   train_x=feats(n_train), train_y=g.integers(0, SEEN, n_train),
                   eval_seen_x=feats(64), eval_seen_y=g.integers(0, SEEN, 64),
                   eval_unseen_x=feats(64), eval_unseen_y=g.integers(SEEN, CLASSES, 64))


def measured(step, device: torch.device, iters: int) -> tuple[float, float]:
    """(GFLOP of one call, median wall seconds over ``iters`` calls after the counted warm-up call)."""
    with FlopCounterMode(display=False) as counter:
        step()
    seconds = []
    for _ in range(iters):
        clock = Clock(device)
        step()
        seconds.append(clock.stop()[0])
    return counter.get_total_flops() / 1e9, statistics.median(seconds)


def generator_stage(dim: int, hidden: int, device: torch.device, iters: int) -> dict:
    """{pass name: (GFLOP, s)} of one DKG²N iteration, plain and MFU-guided."""
    model = DKGZSL({"hidden": hidden, "batch_size": 64, "critic_iter": 5, "epochs": 1, "syn_num": 10},
                   random_data(dim, 2048), device, 0)
    return {name: measured(lambda g=guided: model._iteration(g, {}), device, iters)
            for name, guided in (("pass 0 (plain)", False), ("pass 1 (MFU-guided)", True))}


def sovr_stage(dim: int, device: torch.device, iters: int, batch: int = 40, extract: int = 256) -> dict:
    """{step: (GFLOP, s)} of one SOVR stage-1 step (joint FDE + ARA, RMSprop) and one extraction batch."""
    torch.manual_seed(0)
    cfg = SOVRConfig()
    sovr = SOVR(dim, GRID, attribute_vectors(ATTRIBUTES), cfg).to(device)
    opt = torch.optim.RMSprop(sovr.trained_parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                              momentum=cfg.momentum)
    phi = class_prototypes(np.random.default_rng(0).random((SEEN, ATTRIBUTES), dtype=np.float32)).to(device)
    tokens = torch.rand(batch, 1 + GRID * GRID, dim, device=device)
    labels = torch.randint(0, SEEN, (batch,), device=device)
    rows = torch.rand(extract, 1 + GRID * GRID, dim, device=device)

    def train_step():
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(sovr(tokens, phi), labels).backward()
        opt.step()

    return {f"stage-1 step (batch {batch})": measured(train_step, device, iters),
            f"extraction ({extract} images)": measured(lambda: sovr.refine(rows), device, iters)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--iters", type=int, default=2)
    p.add_argument("--dim", type=int, default=768, help="feature width C: 768 (ViT-B/16) or 2048 (ResNet-101)")
    p.add_argument("--hidden", type=int, default=4096)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"DKGZSL at AWA2 sizes, C {args.dim}, H {args.hidden}, batch 64, critic_iter 5, device {device}, "
          f"{args.threads} threads, median of {args.iters} (random features)")
    for name, (gflop, s) in {**generator_stage(args.dim, args.hidden, device, args.iters),
                             **sovr_stage(args.dim, device, args.iters)}.items():
        print(f"  {name:28s} {gflop:8.1f} GFLOP  {s:8.3f} s  {gflop / s:8.1f} GFLOP/s")
    iters_per_pass = -(-23527 // 64)  # AWA2 trainval rows / batch: the reference's walk over the data
    print(f"  one AWA2 epoch = 2 passes x {iters_per_pass} iterations")


if __name__ == "__main__":
    main()
