"""Command line of the search: ``python hpo/search.py --space d2sc [...]`` (logic in hpo.tuner / hpo.experiment)."""

from __future__ import annotations

import argparse
import errno
import os
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: hpo/ itself must not shadow modules; the project must import
    _here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _here]
    try:
        import hpo.tuner  # noqa: F401  (installed with pip install -e . or on PYTHONPATH)
    except ImportError:
        sys.path.insert(0, os.path.dirname(_here))

from hpo.experiment import SearchOptions  # noqa: E402
from zsl.errors import EXIT_USER_ERROR, UserError  # noqa: E402


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one sentence, exit 2, no usage dump
        print(f"error: {message}; see --help.", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)


def build_parser() -> argparse.ArgumentParser:
    d = SearchOptions()
    p = _Parser(prog="hpo/search.py", description="Cross-dataset hyperparameter search (Ray Tune + Optuna TPE + ASHA).")
    p.add_argument("--space", default=d.space, help="search space name under search_spaces/ or a .yaml path (default d2sc)")
    p.add_argument("--datasets", type=lambda s: [x for x in s.split(",") if x],
                   help="comma-separated datasets (default sim-AWA2,sim-CUB,sim-SUN; AWA2,CUB,SUN with --data-root)")
    p.add_argument("--data-root", help="folder holding the real xlsa17 datasets")
    p.add_argument("--scale", choices=["small", "full"], default=d.scale, help="size of simulated datasets")
    p.add_argument("--profile", default=d.profile,
                   help="run profile of the space (sizes for a machine, on real and simulated data alike): cpu, gpu, "
                        "demo, or auto (default: gpu when --gpus-per-trial > 0, demo for the embedded default data, "
                        "else cpu)")
    p.add_argument("--num-samples", type=int, default=d.num_samples, help="number of trials")
    p.add_argument("--max-concurrent", type=int, default=d.max_concurrent, help="trials running at once")
    p.add_argument("--cpus-per-trial", type=float, default=d.cpus_per_trial)
    p.add_argument("--gpus-per-trial", type=float, default=d.gpus_per_trial, help="GPU share per trial (fractions pack trials)")
    p.add_argument("--dataset-runs", choices=["auto", "parallel", "sequential"], default=d.dataset_runs,
                   help="a trial's datasets side by side (one Ray actor each, an equal share of the trial's "
                        "CPUs/GPUs) or one after another; auto: parallel with a GPU share or >= 1 CPU per dataset")
    p.add_argument("--name", help="experiment name (default <space>-search)")
    p.add_argument("--storage-path", default=d.storage_path, help="local folder or URI Ray accepts (s3://...)")
    p.add_argument("--address", help="join a running Ray cluster (e.g. auto)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted experiment")
    p.add_argument("--force", action="store_true", help="delete an existing experiment of this name and start over")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of the searcher and of every run's model")
    p.add_argument("--seeds", type=int, default=d.seeds, metavar="K",
                   help="train every run as K fused seeds (--seed .. --seed+K-1, one batched model; d2sc) and rank "
                        "trials on their mean H; each dataset's H_sd is reported too (default 1)")
    p.add_argument("--data-seed", type=int, default=d.data_seed,
                   help="seed of the simulated data and of the validation holdout (default 0, as zsl.train)")
    p.add_argument("--class-embedding", default=d.class_embedding,
                   help="att | original_att | sent, for every dataset or per dataset: 'att,CUB:sent'")
    p.add_argument("--split-percent", type=int, choices=[100, 30, 10], default=d.split_percent,
                   help="share of trainval images to train on")
    p.add_argument("--scaler-fit", choices=["train_rows", "full_trainval"], default=d.scaler_fit,
                   help="feature scaler fitted on the training rows used, or on all trainval rows (reference)")
    p.add_argument("--time-budget", type=float, help="stop starting/continuing trials after this many seconds")
    p.add_argument("--objective", choices=["mean", "min", "pareto"], default=d.objective,
                   help="aggregate of H over datasets (mean, min), or pareto: a multi-objective search over each "
                        "dataset's H (trials still ranked and shown by mean H)")
    p.add_argument("--max-epochs", type=int, help="cap on each run's epochs, all stages together (each stage shortened in proportion)")
    p.add_argument("--grace-period", type=int, default=d.grace_period, help="ASHA: scoring-stage epochs (D2SC: DFG epochs; DRG is an unjudged prefix) before a trial may be stopped")
    p.add_argument("--reduction-factor", type=float, default=d.reduction_factor, help="ASHA reduction factor")
    p.add_argument("--scheduler", choices=["asha", "fifo"], default=d.scheduler)
    p.add_argument("--searcher", choices=["tpe", "random"], default=d.searcher)
    p.add_argument("--optuna-storage", help="Optuna RDB URL (default: sqlite optuna.db inside the experiment dir)")
    p.add_argument("--max-failures", type=int, default=d.max_failures, help="retries of a failed trial from its checkpoint")
    p.add_argument("--verbose", type=int, default=d.verbose, choices=[0, 1, 2, 3],
                   help="0 quiet; 1 one line per ended trial (default); 2 and 3 add Ray's status tables")
    p.add_argument("--state-key", default=d.state_key,
                   help="the key file that signs Ray's saved state (default %(default)s; made on the first search; "
                        "--resume needs the same file: see cluster/README.md, 'Trust')")
    p.add_argument("--per-dataset", action="store_true",
                   help="one search per dataset (experiments <name>-<dataset>: the same space, profile and trials per "
                        "dataset as the shared search), so that hpo/final.py can price the shared setting")
    p.add_argument("--rehearse", action="store_true",
                   help="paper-scale rehearsal: the space's 'rehearse' profile (paper widths, real class counts, "
                        "simulated full-scale features, 1 iteration per epoch) through ASHA, the epoch cap, "
                        "checkpoints and the final evaluation; prints memory and seconds per stage (hpo/rehearsal.py)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = vars(build_parser().parse_args(argv))
    rehearse = args.pop("rehearse")
    try:
        from hpo.tuner import run_search

        opts = SearchOptions(**args)
        if rehearse:
            from hpo.rehearsal import rehearsal_options
            opts = rehearsal_options(opts)
        if opts.per_dataset:
            return run_per_dataset(opts)
        summary = run_search(opts)
        if summary.interrupted:
            print("interrupted: finished trials are kept; continue with the same command plus --resume", file=sys.stderr)
            return 130
        if rehearse:
            return rehearsal_verdict(opts)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except ConnectionError as err:  # --address auto with no cluster running, a cluster that went away
        print(f"error: --address {args.get('address')}: cannot reach a Ray cluster ({str(err).splitlines()[0]}): "
              "start it (ray up / ray start --head) or drop --address.", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("\ninterrupted: continue with the same command plus --resume", file=sys.stderr)
        return 130
    except Exception as err:  # a full disk surfaces inside Ray's errors: say so in one sentence
        full = disk_full(err)
        if full is None:
            raise
        print(f"error: the disk is full ({full}): nothing finished was lost; free space, then continue with the "
              "same command plus --resume.", file=sys.stderr)
        return EXIT_USER_ERROR
    return 0


def run_per_dataset(opts: SearchOptions) -> int:
    """``--per-dataset``: each dataset's own search in turn (hpo.experiment.per_dataset_options); 130 when one
    was interrupted (the next ones are not started)."""
    from hpo.experiment import check_options, per_dataset_options
    from hpo.tuner import run_search

    check_options(opts)
    for own in per_dataset_options(opts):
        if opts.verbose:
            print(f"\n== {own.datasets[0]}: its own search ({own.experiment_name()}) ==")
        if run_search(own).interrupted:
            print("interrupted: finished trials are kept; continue with the same command plus --resume", file=sys.stderr)
            return 130
    return 0


def rehearsal_verdict(opts: SearchOptions) -> int:
    """Check a finished rehearsal, evaluate its best setting on the final protocol, print both; 0 if it passed."""
    from hpo.experiment import experiment_dir
    from hpo.rehearsal import check, render, rung_epochs
    from hpo.final_job import FinalOptions, run_final
    from hpo.report import read_trials, write_report

    exp = experiment_dir(opts)
    trials = read_trials(Path(exp))
    last_epoch = max((t.last.get("epochs_total", 0) for t in trials), default=0)
    rungs = rung_epochs(opts.grace_period, opts.reduction_factor, last_epoch)
    finding = check(trials, opts.resolved_datasets(), rungs)
    run_final(FinalOptions(experiment=exp, seeds=1, settings=["best shared"], cpus_per_trial=opts.cpus_per_trial,
                           address=opts.address, state_key=opts.state_key, verbose=opts.verbose))  # as Ray trials
    report = write_report(exp)
    size = sum(f.stat().st_size for f in Path(exp).rglob("*") if f.is_file() and f.parent != report)
    print(render(finding))
    print(f"experiment folder: {size / 2**30:.1f} GiB (checkpoints of paper-width runs); final evaluation and report: {report}")
    return 0 if not finding.failures else 1


def disk_full(err: BaseException) -> str | None:
    """The message of the 'no space left on device' error in ``err``'s cause/context chain, if any."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno == errno.ENOSPC:
            return str(err)
        if "No space left on device" in str(err):
            return "No space left on device"
        err = err.__cause__ or err.__context__
    return None


if __name__ == "__main__":
    sys.exit(main())
