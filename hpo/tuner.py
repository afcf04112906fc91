"""Run a search: Ray init, a new or restored Tuner, and a summary of the results."""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import optuna
import ray
from ray import tune

import hpo
from hpo.storage import fetch_sidecar, is_remote, sync_callbacks
from hpo.experiment import (SEARCH_FILE, STUDY_FILE, SearchOptions, check_options, experiment_dir, optuna_url,
                            prepare, sidecar_dir)
from hpo.reconcile import reconcile_snapshot
from hpo.searcher import METRIC, MODE, make_scheduler, make_search_alg
from hpo.trainable import trainable

SIDECAR_FILES = (SEARCH_FILE, STUDY_FILE)  # driver-side files copied to a remote experiment dir

NO_CAP_MAX_T = 10_000  # ASHA's max_t when --max-epochs is not given: runs end at their own epochs_total


@dataclass
class SearchSummary:
    """What a finished (or interrupted) fit produced."""

    experiment_dir: str
    trials: int
    completed: int
    stopped_early: int
    errored: int
    best_objective: float | None
    best_config: dict | None
    wall_seconds: float


def project_root() -> str:
    return str(Path(hpo.__file__).resolve().parent.parent)


def init_ray(opts: SearchOptions) -> None:
    """Join a cluster (``--address``) or start a local Ray without the dashboard; workers import this project."""
    if ray.is_initialized():
        return
    path = os.pathsep.join(p for p in [project_root(), os.environ.get("PYTHONPATH", "")] if p)
    runtime_env = {"env_vars": {"PYTHONPATH": path}}
    if opts.address:
        ray.init(address=opts.address, runtime_env=runtime_env, log_to_driver=opts.verbose > 1)
    else:
        ray.init(address="local", include_dashboard=False, runtime_env=runtime_env, log_to_driver=opts.verbose > 1)


def make_tuner(opts: SearchOptions, space, ctx, sidecar: Path) -> tune.Tuner:
    """A new Tuner, or the restored one when ``opts.resume`` (finished trials are kept, errored ones resumed)."""
    fn = tune.with_resources(tune.with_parameters(trainable, context=ctx.to_dict()), trial_resources(opts, ctx))
    path = experiment_dir(opts)
    if opts.resume:
        if not tune.Tuner.can_restore(path):
            raise_user(f"--resume: Ray has no restorable state in {path} (the search never started): rerun with --force.")
        try:
            study = optuna.load_study(study_name=opts.experiment_name(), storage=optuna_url(opts, sidecar))
        except KeyError:  # no study recorded (killed before the searcher was built): nothing to reconcile there
            study = None
        change = reconcile_snapshot(path, study)
        if change and opts.verbose:
            print(f"resume: searcher state matched to the trials Ray restores: {change.describe()}")
        return tune.Tuner.restore(path, trainable=fn, resume_errored=True)
    search_alg = make_search_alg(space, searcher=opts.searcher, seed=opts.seed, num_samples=opts.num_samples,
                                 storage_url=optuna_url(opts, sidecar), study_name=opts.experiment_name(),
                                 max_concurrent=opts.max_concurrent)
    scheduler = make_scheduler(opts.scheduler, max_t=opts.max_epochs or NO_CAP_MAX_T,
                               grace_period=opts.grace_period, reduction_factor=opts.reduction_factor)
    storage = opts.storage_path if "://" in opts.storage_path else str(Path(opts.storage_path).expanduser().resolve())
    return tune.Tuner(
        fn,
        tune_config=tune.TuneConfig(metric=METRIC, mode=MODE, search_alg=search_alg, scheduler=scheduler,
                                    num_samples=opts.num_samples, time_budget_s=opts.time_budget, reuse_actors=True),
        run_config=tune.RunConfig(
            name=opts.experiment_name(), storage_path=storage, verbose=opts.verbose,
            failure_config=tune.FailureConfig(max_failures=opts.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            callbacks=sync_callbacks(path, sidecar, SIDECAR_FILES),
        ),
    )


def trial_resources(opts: SearchOptions, ctx) -> dict | tune.PlacementGroupFactory:
    """The trial's resources: one bundle; or, for parallel dataset runs, an empty head (the trial's own
    process only coordinates) and one bundle per dataset with its share of CPUs and GPUs."""
    if ctx.dataset_runs != "parallel":
        return {"cpu": opts.cpus_per_trial, "gpu": opts.gpus_per_trial}
    bundle = {"CPU": ctx.cpus_per_run, "GPU": ctx.gpus_per_run}
    return tune.PlacementGroupFactory([{}] + [bundle] * len(ctx.datasets))


def raise_user(message: str):
    from zsl.errors import UserError

    raise UserError(message)


def summarise(results, exp_dir: str, wall: float) -> SearchSummary:
    """Counts of trials by outcome and the best trial (by best-so-far objective) of a ResultGrid."""
    completed = stopped = errored = 0
    best, best_config = None, None
    for result in results:
        metrics = result.metrics or {}
        if result.error is not None:
            errored += 1
        elif metrics.get("epoch", 0) < metrics.get("epochs_total", 0):
            stopped += 1
        else:
            completed += 1
        value = metrics.get("best_objective")
        if value is not None and (best is None or value > best):
            best, best_config = value, result.config
    return SearchSummary(exp_dir, len(results), completed, stopped, errored, best, best_config, wall)


def print_start(opts: SearchOptions, ctx, sidecar: Path) -> None:
    exp = experiment_dir(opts)
    kind = "simulated" if all(d.startswith("sim-") for d in ctx.datasets) else "real"
    print(f"zsl-hpo search '{opts.experiment_name()}': model {ctx.model} (preset {ctx.preset}), datasets "
          f"{', '.join(ctx.datasets)} ({kind} data, protocol {ctx.protocol}), objective {ctx.objective} H")
    share = f"{ctx.cpus_per_run:g} CPU" + (f" + {ctx.gpus_per_run:g} GPU" if ctx.gpus_per_run else "")
    print(f"trials:      {ctx.dataset_runs} dataset runs"
          + (f" ({share} each)" if ctx.dataset_runs == "parallel" else "") + f", {opts.max_concurrent} trials at once")
    print(f"results:     {exp}")
    print(f"optuna:      {optuna_url(opts, sidecar)}")
    print(f"tensorboard: tensorboard --logdir {exp}")
    sys.stdout.flush()


def print_end(summary: SearchSummary, opts: SearchOptions) -> None:
    print(f"\nsearch finished in {summary.wall_seconds:.0f} s: {summary.trials} trials, {summary.completed} completed, "
          f"{summary.stopped_early} stopped early by the scheduler, {summary.errored} errored")
    if summary.best_config is not None:
        print(f"best objective ({opts.objective} H over datasets, validation protocol): {summary.best_objective:.2f}")
        print("best setting: " + json.dumps(summary.best_config, sort_keys=True))
    print(f"tensorboard: tensorboard --logdir {summary.experiment_dir}")
    print(f"report:      python hpo/report.py {summary.experiment_dir}")


def run_search(opts: SearchOptions) -> SearchSummary:
    """The whole search; returns its summary (prints progress when opts.verbose)."""
    start = time.perf_counter()
    if opts.resume:
        check_options(opts)
        if is_remote(experiment_dir(opts)):  # a new driver has only the bucket
            fetch_sidecar(experiment_dir(opts), sidecar_dir(opts), SIDECAR_FILES)
        opts = resumed_options(opts)
    space, ctx, sidecar = prepare(opts)
    for sync in sync_callbacks(experiment_dir(opts), sidecar, SIDECAR_FILES):
        sync.upload()  # search.json reaches the bucket before any trial runs
    if opts.verbose:
        print_start(opts, ctx, sidecar)
    init_ray(opts)
    tuner = make_tuner(opts, space, ctx, sidecar)
    results = tuner.fit()
    summary = summarise(results, experiment_dir(opts), time.perf_counter() - start)
    if opts.verbose:
        print_end(summary, opts)
    return summary


def resumed_options(opts: SearchOptions) -> SearchOptions:
    """On --resume the saved options rule (same space, datasets, budget); only verbosity and address are taken anew."""
    from hpo.experiment import SEARCH_FILE, sidecar_dir

    path = sidecar_dir(opts) / SEARCH_FILE
    if not path.is_file():
        raise_user(f"--resume: no experiment at {experiment_dir(opts)}: check --name/--storage-path or start without --resume.")
    saved = SearchOptions(**json.loads(path.read_text())["options"])
    saved.resume, saved.force, saved.verbose, saved.address = True, False, opts.verbose, opts.address
    return saved
