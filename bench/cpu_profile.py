"""Benchmark: does the CPU preset learn?  D2SC ``--preset cpu`` against ESZSL on the same split.

For each dataset: ESZSL (its default preset, closed form) and D2SC (preset ``cpu``: 512-wide nets,
30 iterations per epoch, 15 DRG + 30 DFG epochs), both under the validation protocol with the same
data seed, evaluated once at the end of training.  Prints S/U/H/ZSL and wall seconds of each.

    python bench/cpu_profile.py                                           # sim-AWA2/CUB/SUN full (simulated)
    python bench/cpu_profile.py --datasets CUB --data-root ~/xlsa17/data  # real features you bring
    python bench/cpu_profile.py --threads 1 --seed 1
    python bench/cpu_profile.py --device cuda       # the same configurations on a GPU (other random streams)

Simulated datasets are labelled simulated; a real data root's numbers are real-feature numbers of
that data.  Prints figures; never asserts.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from zsl.run import Run, RunSpec, resolve_config  # noqa: E402


def one(model: str, preset: str, dataset: str, args) -> tuple[dict, float, str]:
    """(final scores, wall seconds, data label) of one run to the end."""
    spec = RunSpec(model, dataset, preset, "validation", args.seed, args.data_seed, "full", args.data_root,
                   resolve_config(model, preset, dataset))
    start = time.perf_counter()
    run = Run(spec, args.device, threads=args.threads)
    scores = run.run_to_end()
    return scores, time.perf_counter() - start, run.data.label


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", default="sim-AWA2,sim-CUB,sim-SUN")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="cpu (the profile's machine) | cuda: the same runs on a GPU")
    args = ap.parse_args()
    print(f"device {args.device}, threads {args.threads}, seed {args.seed}, data seed {args.data_seed}; validation protocol")
    print(f"{'data':48s} {'model':14s}      S      U      H    ZSL   wall s")
    for dataset in args.datasets.split(","):
        for model, preset in (("eszsl", None), ("d2sc", "cpu")):
            scores, seconds, label = one(model, preset, dataset, args)
            print(f"{label[:48]:48s} {model + (' ' + preset if preset else ''):14s} "
                  + " ".join(f"{scores[k]:6.2f}" for k in ("S", "U", "H", "ZSL")) + f" {seconds:8.0f}", flush=True)


if __name__ == "__main__":
    main()
