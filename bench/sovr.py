"""Benchmark: SOVR-refined region features vs plain pooling of the same tokens, scored by ESZSL.

SIMULATED data (zsl.data.simulated_regions, tag sim-g4): these are figures of the simulation, never benchmark
results.  For each dataset, protocol (default: validation, carved from trainval), data seed and SOVR seed it
prints S, U, H, ZSL (ESZSL preset "default": gamma 100, lam 1, closed form) and the wall time of making the
features (SOVR stage 1 + extraction, or the pooling), for the variants:

  res101          the simulated pooled res101.mat view (the existing benchmark, for scale)
  global          token 0 of the region file
  mean            plain average pooling of the R region tokens  <- the baseline SOVR has to beat
  sovr            SOVR, FDE trained jointly with ARA (the default, spec §10)
  sovr-identity   SOVR without FDE (ARA on raw regions)
  sovr-reference  the released code: ARA trained on raw regions, untrained FDE applied at extraction
  sovr-inf        the default with ARA's top-k filled by -inf instead of 0

    PYTHONPATH=. python bench/sovr.py                                   # sim-AWA2, seed 0, data seed 0
    PYTHONPATH=. python bench/sovr.py --datasets sim-AWA2,sim-CUB --seeds 0,1,2 --variants mean,sovr
SOVR runs in a fresh temporary cache unless --cache-dir is given (then a second run reads the cache and its
times are read times).  Never asserts; tests/test_sovr_benefit.py holds the assertion.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from zsl.data import load_dataset  # noqa: E402
from zsl.models.eszsl import ESZSL  # noqa: E402
from zsl.refined import load_region_dataset, region_request  # noqa: E402

VARIANTS = {
    "res101": None,
    "global": {"region_features": "global"},
    "mean": {"region_features": "mean"},
    "sovr": {"region_features": "sovr", "sovr_fde": "joint"},
    "sovr-identity": {"region_features": "sovr", "sovr_fde": "identity"},
    "sovr-reference": {"region_features": "sovr", "sovr_fde": "reference"},
    "sovr-inf": {"region_features": "sovr", "sovr_fde": "joint", "sovr_ara_fill": "-inf"},
}
SEEDLESS = ("res101", "global", "mean")


def score(data) -> dict:
    model = ESZSL({}, data)
    model.train_epoch()
    return model.evaluate()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="sim-AWA2")
    parser.add_argument("--variants", default="res101,global,mean,sovr,sovr-identity,sovr-reference")
    parser.add_argument("--seeds", default="0", help="SOVR seeds, comma-separated")
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--protocol", default="validation")
    parser.add_argument("--tag", default="sim-g4")
    parser.add_argument("--pre-iters", type=int, default=None, help="SOVR stage-1 steps (default: SOVRConfig's 1101)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cache-dir", default=None)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant {unknown[0]}: choose from {', '.join(VARIANTS)}")
    cache = args.cache_dir or tempfile.mkdtemp(prefix="zsl-hpo-bench-sovr-")
    seeds = [int(s) for s in args.seeds.split(",")]
    print(f"SIMULATED data; ESZSL (gamma 100, lam 1); protocol {args.protocol}; data seed {args.data_seed}; "
          f"tag {args.tag}; {args.threads} thread(s); cache {cache}")
    print(f"{'dataset':9s} {'variant':15s} {'seed':>4s} {'S':>6s} {'U':>6s} {'H':>6s} {'ZSL':>6s} {'feat s':>7s}  note")
    for name in args.datasets.split(","):
        load_dataset(name, protocol=args.protocol, seed=args.data_seed, cache_dir=cache)   # generate outside the timing
        for variant in variants:
            for seed in (seeds[:1] if variant in SEEDLESS else seeds):
                start = time.perf_counter()
                note = ""
                if VARIANTS[variant] is None:
                    data = load_dataset(name, protocol=args.protocol, seed=args.data_seed, cache_dir=cache)
                else:
                    config = {"region_tag": args.tag, **VARIANTS[variant]}
                    if args.pre_iters is not None:
                        config["sovr_pre_iters"] = args.pre_iters
                    data = load_region_dataset(name, protocol=args.protocol, seed=args.data_seed, cache_dir=cache,
                                               request=region_request(config), model_seed=seed, device=args.device)
                    log = data.info.get("sovr")
                    if log:
                        note = (f"stage 1: {log['stage1']['pre_iters']} steps of {log['stage1']['batch_images']} "
                                f"images, loss {log['stage1']['loss_last']:.3f}, {log['cache']}")
                seconds = time.perf_counter() - start
                r = score(data)
                shown = "-" if variant in SEEDLESS else str(seed)
                print(f"{name:9s} {variant:15s} {shown:>4s} {r['S']:6.1f} {r['U']:6.1f} {r['H']:6.1f} {r['ZSL']:6.1f} "
                      f"{seconds:7.1f}  {note}", flush=True)


if __name__ == "__main__":
    main()
