"""How RevCD's accuracy and sampling time change with the number of reverse steps.

Trains one RevCD model, then evaluates the same weights with strided ancestral DDPM and DDIM
sampling at several step counts, printing a table (S/U/H GZSL, ZSL, percent; seconds per evaluation).

    PYTHONPATH=. python bench/revcd_steps.py --dataset sim-AWA2 --preset small --steps 10,25,50,100,250,1000

Numbers on sim-* datasets are SIMULATED and say nothing about the real benchmarks.
"""

from __future__ import annotations

import argparse
import sys
import time

from zsl.errors import EXIT_USER_ERROR, UserError
from zsl.run import Run, RunSpec, resolve_config
from zsl.train import parse_sets


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="sim-AWA2")
    p.add_argument("--data-root", default=None)
    p.add_argument("--protocol", default="validation")
    p.add_argument("--preset", default="small")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (YAML value)")
    p.add_argument("--steps", default="10,25,50,100,250,1000", help="comma-separated step counts")
    p.add_argument("--samplers", default="ddpm,ddim", help="comma-separated: ddpm (ancestral), ddim (eta 0)")
    p.add_argument("--guidance", default=None, help="comma-separated guidance strengths (default: the config's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    return p.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    cfg = resolve_config("revcd", args.preset, args.dataset, parse_sets(args.set))
    spec = RunSpec("revcd", args.dataset, args.preset, args.protocol, args.seed, args.seed, "small", args.data_root, cfg)
    run = Run(spec, args.device, args.threads)  # the run engine that zsl.train and the search use
    data, model = run.data, run.trainer
    start = time.perf_counter()
    while run.epoch < run.epochs_total:
        last = run.train_epoch()
    train_s = time.perf_counter() - start
    print(f"# {data.label}: {len(data.seen_classes)} seen / {len(data.unseen_classes)} unseen classes, "
          f"{data.train_x.shape[0]} train, {data.eval_seen_x.shape[0]}+{data.eval_unseen_x.shape[0]} eval images, "
          f"feature dim {data.feature_dim}")
    print(f"# preset {args.preset}, T={cfg['timesteps']}, {model.epochs_total} epochs x {model.iters_per_epoch} it "
          f"in {train_s:.1f} s on {args.device} ({args.threads} thread(s)); final loss {last['loss']:.4f}")
    guidances = [float(g) for g in args.guidance.split(",")] if args.guidance else [cfg["guidance"]]
    print(f"{'sampler':8} {'g':>4} {'steps':>6} {'S':>6} {'U':>6} {'H':>6} {'ZSL':>6} {'eval_s':>7}")
    for sampler in args.samplers.split(","):
        for g in guidances:
            for steps in (int(s) for s in args.steps.split(",")):
                m = model.evaluate(sampler=sampler, sample_steps=steps, guidance=g)
                print(f"{sampler:8} {g:4.1f} {steps:6d} {m['S']:6.1f} {m['U']:6.1f} {m['H']:6.1f} {m['ZSL']:6.1f} {m['eval_s']:7.2f}",
                      flush=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
