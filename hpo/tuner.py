"""Run a search: Ray init, a new or restored Tuner, and a summary of the results."""

from __future__ import annotations

import contextlib
import json
import logging
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
from hpo.experiment import (SEARCH_FILE, STUDY_FILE, SearchOptions, check_address, check_options, experiment_dir,
                            new_search, prepare, read_search, sidecar_dir, storage_root, study_url)
from hpo.folder_guard import MARKER, FolderLock
from hpo.progress import ProgressLines
from hpo.ranking import is_finished, rank_key
from hpo.reconcile import reconcile_snapshot
from hpo.searcher import METRIC, MODE, PruningOptunaSearch, make_scheduler, make_search_alg, objective_metrics
from hpo.trainable import trainable
from hpo.trial_status import ray_trial_status
from hpo.trusted_state import SignedSnapshot, load_key, restore_signed_state, sign_tuner

SIDECAR_FILES = (SEARCH_FILE, STUDY_FILE, MARKER)  # driver-side files copied to a remote experiment dir

NO_CAP_MAX_T = 10_000  # ASHA's max_t when --max-epochs is not given: runs end at their own epochs_total


@dataclass
class SearchSummary:
    """What a finished (or interrupted) fit produced."""

    experiment_dir: str
    trials: int
    completed: int
    stopped_early: int
    errored: int
    diverged: int
    interrupted: int  # trials still pending, running or paused when the search was interrupted (Ctrl-C)
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


def make_tuner(opts: SearchOptions, space, ctx, sidecar: Path, record: dict) -> tune.Tuner:
    """A new Tuner, or the restored one when ``opts.resume`` (finished trials are kept, errored ones resumed).

    On resume, :func:`prepare_resume` must have run: Ray then reads only state this project signed. The
    restored Tuner gets this driver's callbacks and the study at the experiment's current place.
    """
    fn = tune.with_resources(tune.with_parameters(trainable, context=ctx.to_dict()), trial_resources(opts, ctx))
    path, url = experiment_dir(opts), study_url(record, sidecar)
    callbacks = [*sync_callbacks(path, sidecar, SIDECAR_FILES), SignedSnapshot(opts.state_key, record["experiment_id"])]
    if opts.verbose >= 1:
        callbacks.append(ProgressLines(ctx.datasets, opts.num_samples))
    if opts.resume:
        tuner = tune.Tuner.restore(path, trainable=fn, resume_errored=True)
        internal = tuner._local_tuner  # Ray keeps the first run's callbacks and searcher (tuner.pkl): refresh them
        internal.get_run_config().callbacks = callbacks
        internal.get_run_config().verbose = ray_verbosity(opts.verbose)
        optuna_searcher(internal._tune_config.search_alg).study_url = url
        return tuner
    key = load_key(opts.state_key, create=True)
    objectives = objective_metrics(ctx.datasets) if opts.objective == "pareto" else None  # one per dataset
    search_alg = make_search_alg(space, searcher=opts.searcher, seed=opts.seed, num_samples=opts.num_samples,
                                 storage_url=url, study_name=record["study_name"],
                                 max_concurrent=opts.max_concurrent, objectives=objectives)
    scheduler = make_scheduler(opts.scheduler, max_t=opts.max_epochs or NO_CAP_MAX_T, objectives=objectives,
                               grace_period=opts.grace_period, reduction_factor=opts.reduction_factor)
    tuner = tune.Tuner(
        fn,
        tune_config=tune.TuneConfig(metric=METRIC, mode=MODE, search_alg=search_alg, scheduler=scheduler,
                                    num_samples=opts.num_samples, time_budget_s=opts.time_budget, reuse_actors=True),
        run_config=tune.RunConfig(
            name=opts.experiment_name(), storage_path=storage_root(opts), verbose=ray_verbosity(opts.verbose),
            failure_config=tune.FailureConfig(max_failures=opts.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            callbacks=callbacks,
        ),
    )
    sign_tuner(path, key, record["experiment_id"])
    return tuner


def prepare_resume(opts: SearchOptions, sidecar: Path, record: dict) -> None:
    """Before Ray starts: put the signed snapshot of Ray's state in place (nothing unsigned is ever
    unpickled), check the study is there, and reconcile the snapshot with it. UserError when any fails."""
    path, url = experiment_dir(opts), study_url(record, sidecar)
    if "experiment_id" not in record:
        raise_user(f"--resume: {path} was started by an older zsl-hpo that did not sign Ray's state, which is "
                   "therefore not loaded: report it as it is, or start again with --force.")
    key = load_key(opts.state_key, create=False)
    restore_signed_state(path, key, record["experiment_id"])
    try:
        if not record.get("optuna_storage") and not (sidecar / STUDY_FILE).is_file():
            raise KeyError(STUDY_FILE)  # load_study would make an empty database
        study = optuna.load_study(study_name=record["study_name"], storage=url)
    except KeyError:
        raise_user(f"--resume: the Optuna study of {path} is missing ({url}): the searcher's history is lost; "
                   "put optuna.db back, or start again with --force (trial folders stay readable).")
    change = reconcile_snapshot(path, study)
    if change and opts.verbose:
        print(f"resume: searcher state matched to the trials Ray restores: {change.describe()}")


def ray_verbosity(verbose: int) -> int:
    """Ray's own output for our --verbose: 0 and 1 none (1 prints hpo.progress lines), 2 Ray's status table, 3 more."""
    return max(0, verbose - 1)


def optuna_searcher(search_alg) -> PruningOptunaSearch:
    """The PruningOptunaSearch inside Ray's wrappers (SearchGenerator, ConcurrencyLimiter)."""
    while not isinstance(search_alg, PruningOptunaSearch):
        search_alg = search_alg.searcher
    return search_alg


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


def summarise(results, exp_dir: str, wall: float, was_interrupted: bool = False) -> SearchSummary:
    """Counts of trials by outcome and the best trial (hpo.ranking) of a ResultGrid.

    Outcomes follow Ray's final record: a trial recovered from a crash counts by how it ended, and, after an
    interruption, one that had not ended (RUNNING/PAUSED/PENDING in the state Ray saved) counts as interrupted.
    """
    completed = stopped = errored = diverged = interrupted = 0
    best_key, best, best_config = None, None, None
    saved = ray_trial_status(exp_dir) if was_interrupted else {}
    statuses = [saved.get(trial.trial_id, trial.status) for trial in results._experiment_analysis.trials]
    for result, status in zip(results, statuses):
        metrics = result.metrics or {}
        if result.error is not None:
            errored += 1
        elif metrics.get("diverged"):
            diverged += 1
        elif status in ("PENDING", "RUNNING", "PAUSED"):
            interrupted += 1
        elif metrics.get("epoch", 0) < metrics.get("epochs_total", 0):
            stopped += 1
        else:
            completed += 1
        key = rank_key(metrics, result.error is None and status == "TERMINATED" and is_finished(metrics))
        if key[1] and (best_key is None or key > best_key):
            best_key, best, best_config = key, metrics["objective"], result.config
    return SearchSummary(exp_dir, len(results), completed, stopped, errored, diverged, interrupted, best, best_config,
                         wall)


def print_start(opts: SearchOptions, ctx, sidecar: Path, record: dict) -> None:
    exp = experiment_dir(opts)
    kind = "simulated" if all(d.startswith("sim-") for d in ctx.datasets) else "real"
    print(f"zsl-hpo search '{opts.experiment_name()}': model {ctx.model} (preset {ctx.preset}, run profile {ctx.profile or 'as written'}), datasets "
          f"{', '.join(ctx.datasets)} ({kind} data, protocol {ctx.protocol}), objective {objective_words(ctx.objective)}"
          + (f" of {ctx.seeds} fused seeds per run" if ctx.seeds > 1 else ""))
    share = f"{ctx.cpus_per_run:g} CPU" + (f" + {ctx.gpus_per_run:g} GPU" if ctx.gpus_per_run else "")
    print(f"trials:      {ctx.dataset_runs} dataset runs"
          + (f" ({share} each)" if ctx.dataset_runs == "parallel" else "") + f", {opts.max_concurrent} trials at once")
    print(f"results:     {exp}")
    print(f"optuna:      {study_url(record, sidecar)}")
    print(f"tensorboard: tensorboard --logdir {exp}")
    sys.stdout.flush()


def objective_words(objective: str) -> str:
    """How the start line names the objective: "mean H", "min H", or the Pareto search's."""
    if objective == "pareto":
        return "pareto (each dataset's H, multi-objective; trials ranked by mean H)"
    return f"{objective} H"


def print_end(summary: SearchSummary, opts: SearchOptions) -> None:
    ended = "interrupted" if summary.interrupted else "finished"
    print(f"\nsearch {ended} after {summary.wall_seconds:.0f} s: {summary.trials} trials, {summary.completed} completed, "
          f"{summary.stopped_early} stopped early by the scheduler, {summary.diverged} diverged (not retried), "
          f"{summary.errored} errored" + (f", {summary.interrupted} interrupted" if summary.interrupted else ""))
    if summary.best_config is not None and summary.best_objective <= 0.0:
        print("no trial learned: every finite objective is 0 (H = 0 on some dataset: no unseen class recognised); "
              "the ranking means nothing -- check the space's ranges and the run profile before searching longer")
    elif summary.best_config is not None:
        print(f"best trial ({'mean' if opts.objective == 'pareto' else opts.objective} H over datasets at its last "
              "epoch, validation protocol; "
              f"full runs rank first): {summary.best_objective:.2f}")
        print("best setting: " + json.dumps(summary.best_config, sort_keys=True))
    print(f"tensorboard: tensorboard --logdir {summary.experiment_dir}")
    print(f"report:      python hpo/report.py {summary.experiment_dir}")


def run_search(opts: SearchOptions) -> SearchSummary:
    """The whole search; returns its summary (prints progress when opts.verbose).

    Holds the experiment's lock from before anything is read or deleted until the search ends.
    """
    start = time.perf_counter()
    check_options(opts)
    check_address(opts)
    checked = None if opts.resume else new_search(opts)  # a bad space or dataset: nothing locked or written
    with FolderLock(sidecar_dir(opts), f"experiment {experiment_dir(opts)}"):
        if opts.resume:
            if is_remote(experiment_dir(opts)):  # a new driver has only the bucket
                fetch_sidecar(experiment_dir(opts), sidecar_dir(opts), SIDECAR_FILES)
            opts = resumed_options(opts)
        space, ctx, sidecar = prepare(opts, checked)
        record = read_search(sidecar)
        syncs = sync_callbacks(experiment_dir(opts), sidecar, SIDECAR_FILES)
        for sync in syncs:
            sync.upload()  # search.json and the marker reach the bucket before Ray starts
        if opts.resume:
            prepare_resume(opts, sidecar, record)
        if opts.verbose:
            print_start(opts, ctx, sidecar, record)
        init_ray(opts)
        tuner = make_tuner(opts, space, ctx, sidecar, record)
        for sync in syncs:
            sync.upload()  # the study too, before any trial runs
        with _without_ray_resume_advice() as advice, _ray_output(opts.verbose):  # ours is printed instead
            results = tuner.fit()
    summary = summarise(results, experiment_dir(opts), time.perf_counter() - start, advice.interrupted)
    if opts.verbose:
        print_end(summary, opts)
    return summary


class _DropResumeAdvice(logging.Filter):
    """Drops Ray's "resume with Tuner.restore(...)" advice (this project's CLI resumes with --resume); Ray logs
    it exactly when a run was interrupted (Ctrl-C), which ``interrupted`` records."""

    def __init__(self):
        super().__init__()
        self.interrupted = False

    def filter(self, record: logging.LogRecord) -> bool:
        if "Tuner.restore(" in record.getMessage():
            self.interrupted = True
            return False
        return True


@contextlib.contextmanager
def _without_ray_resume_advice():
    """Drops Ray's resume advice and records whether the run was interrupted: from the advice, or from the event
    Ray's SIGINT handler sets (ray.tune.tune._setup_signal_catching, wrapped for the block; Ray 2.60)."""
    import ray.tune.tune as ray_tune_run

    ray_logger, drop = logging.getLogger("ray.tune.tune"), _DropResumeAdvice()
    setup, events = ray_tune_run._setup_signal_catching, []

    def catching():
        events.append(setup())
        return events[-1]

    ray_logger.addFilter(drop)
    ray_tune_run._setup_signal_catching = catching
    try:
        yield drop
    finally:
        ray_tune_run._setup_signal_catching = setup
        ray_logger.removeFilter(drop)
        drop.interrupted = drop.interrupted or any(event.is_set() for event in events)


@contextlib.contextmanager
def environment(values: dict):
    """Set the environment variables ``values`` for the duration of the block, then restore the previous ones."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _ray_output(verbose: int):
    """Below --verbose 2, Ray's output engine stays off: its start banner names a second TensorBoard folder (the
    driver's staging copy), its tables show one dataset, and it warns at every checkpoint of a fast trial;
    hpo.progress prints the lines instead."""
    quiet = {"RAY_AIR_NEW_OUTPUT": "0",  # Ray's legacy engine, at verbosity 0: silent
             "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0"}  # a warning per epoch checkpoint
    return environment(quiet if verbose < 2 else {})


def resumed_options(opts: SearchOptions) -> SearchOptions:
    """On --resume the saved options rule (same space, datasets, budget); where the experiment is now (storage
    path and name, it may have been moved), the signing key, verbosity and address are taken anew."""
    saved = read_search(sidecar_dir(opts), flag="--resume")
    try:
        options = SearchOptions(**saved["options"])
    except TypeError:
        raise_user(f"--resume: {sidecar_dir(opts) / SEARCH_FILE} holds options this zsl-hpo does not know: "
                   "resume it with the version that started it.")
    options.storage_path, options.name = opts.storage_path, opts.experiment_name()
    options.resume, options.force, options.verbose, options.address = True, False, opts.verbose, opts.address
    options.state_key = opts.state_key
    return options
