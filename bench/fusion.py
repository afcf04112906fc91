"""Benchmark: fused seeds vs separate runs of the D2SC trainer (member-iterations per second).

For each width and K: one fused D2SC of K seeds (zsl.models.d2sc, seeds=[0..K-1]) against K plain
D2SC runs stepped one after another (what K trials of one setting cost on one device in turn).
Times ``--iters`` DRG and DFG iterations of each after one warm-up, with the one host sync an epoch
ends with, and prints member-iterations per second (a trial-epoch is ``iters_per_epoch`` of them;
the cpu profile's is 30) and the fused speed-up.  Evaluation is not timed: a fused run scores its
members one by one, as separate runs do.  Random features at AWA2's shapes (R = C = 2048, A = 85).

    python bench/fusion.py --device cpu --threads 2 --widths cpu --ks 1,2,4,8,16
    python bench/fusion.py --device cuda --widths cpu,paper --ks 1,2,4,8,16 --iters 10

Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from d2sc import _sync, awa2_like_data  # noqa: E402  (bench/d2sc.py; it puts the repo on sys.path)

from zsl.models.d2sc import D2SC  # noqa: E402

WIDTHS = {   # the cpu profile's and the paper's net widths on AWA2 (noise 312)
    "cpu": dict(gen_hidden=512, ngh=512, ndh=512),
    "paper": dict(gen_hidden=4096, ngh=4096, ndh=4096),
}


def seconds_per_iteration(models: list[D2SC], stage: str, iters: int) -> float:
    """Wall seconds of one iteration of ``stage`` for every model in turn (after one warm-up), with
    one host sync of the accumulated losses at the end, as an epoch has."""
    def run(n: int) -> None:
        logs = [{} for _ in models]
        for _ in range(n):
            for m, log in zip(models, logs):
                (m._drg_iteration if stage == "DRG" else m._dfg_iteration)(log)
        for log in logs:
            torch.stack([v.float().mean() for v in log.values()]).tolist()

    run(1)
    _sync(models[0].device)
    start = time.perf_counter()
    run(iters)
    _sync(models[0].device)
    return (time.perf_counter() - start) / iters


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--widths", default="cpu")
    ap.add_argument("--ks", default="1,2,4,8,16")
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--n-train", type=int, default=2000, help="training rows of the random data (batch 64)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {args.threads} threads"
    data = awa2_like_data(args.n_train, 256, 256)
    print(f"D2SC fused seeds vs separate runs on {where}, torch {torch.__version__}; AWA2 shapes, random "
          f"features, batch 64, critic_iter 5; member-iterations/s (mean of {args.iters} iterations after one warm-up)")
    for w in args.widths.split(","):
        config = dict(noise_dim=312, batch_size=64, critic_iter=5, drg_epochs=1, dfg_epochs=1, **WIDTHS[w])
        for k in map(int, args.ks.split(",")):
            seeds = list(range(k))
            row = []
            for stage in ("DRG", "DFG"):
                fused = seconds_per_iteration([D2SC(config, data, device, seeds)], stage, args.iters)
                separate = seconds_per_iteration([D2SC(config, data, device, s) for s in seeds], stage, args.iters)
                row.append(f"{stage} fused {k / fused:7.2f}/s separate {k / separate:7.2f}/s "
                           f"({separate / fused:4.2f}x)")
            print(f"{w:5s} K={k:2d}  " + "  |  ".join(row), flush=True)


if __name__ == "__main__":
    main()
