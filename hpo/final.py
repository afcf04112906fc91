"""Command line of the final evaluation: ``python hpo/final.py EXPERIMENT [...]`` (logic in hpo.final_job)."""

from __future__ import annotations

import argparse
import os
import sys

if __package__ in (None, ""):  # run as a script (see hpo/search.py)
    _here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _here]
    try:
        import hpo.final_job  # noqa: F401
    except ImportError:
        sys.path.insert(0, os.path.dirname(_here))

from hpo.final_job import FinalOptions, run_final  # noqa: E402
from hpo.search import _Parser  # noqa: E402
from zsl.errors import EXIT_USER_ERROR, UserError  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    d = FinalOptions()
    p = _Parser(prog="hpo/final.py", description="Retrain a search's chosen settings on full trainval with several "
                "seeds and test them once (protocol final), as Ray trials; then run hpo/report.py.")
    p.add_argument("experiment", help="the search's experiment folder or URI (as printed by hpo/search.py)")
    p.add_argument("--seeds", type=int, default=d.seeds, help="seeds per setting and dataset (default %(default)s)")
    p.add_argument("--first-seed", type=int, help="first seed (default: the search's --seed)")
    p.add_argument("--cpus-per-trial", type=float, default=d.cpus_per_trial, help="CPUs of each run")
    p.add_argument("--gpus-per-trial", type=float, help="GPU share of each run (default: the search's)")
    p.add_argument("--max-concurrent", type=int, default=d.max_concurrent, help="runs at once")
    p.add_argument("--address", help="join a running Ray cluster (e.g. auto)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted final evaluation")
    p.add_argument("--force", action="store_true", help="delete this search's final evaluation and run it again")
    p.add_argument("--no-inflation", dest="inflation", action="store_false",
                   help="skip the per-epoch scores of published practice (the inflation table)")
    p.add_argument("--settings", type=lambda s: [x.strip() for x in s.split(",") if x.strip()],
                   help="only these settings, e.g. 'best shared,published'")
    p.add_argument("--device", default=d.device, help="auto (cuda with a GPU share), cpu or cuda")
    p.add_argument("--verbose", type=int, default=d.verbose, choices=[0, 1, 2, 3])
    p.add_argument("--state-key", default=d.state_key, help="the key file that signs Ray's saved state (as the search's)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = vars(build_parser().parse_args(argv))
    try:
        summary = run_final(FinalOptions(**args))
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("\ninterrupted: continue with the same command plus --resume", file=sys.stderr)
        return 130
    if summary.interrupted:
        print("interrupted: finished runs are kept; continue with the same command plus --resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
