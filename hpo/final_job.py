"""The final evaluation of a search, as a Ray job: ``python hpo/final.py EXPERIMENT``.

Each chosen setting is retrained on full trainval (protocol ``final``) for every dataset it is judged on
and every seed, and tested once on its last epoch -- one Ray trial per (setting, dataset, seed), with the
resources asked for (a GPU share each on a cluster, CPUs locally), a checkpoint every epoch, and a
resume (``--resume``) that keeps finished runs and continues the others from their checkpoints.
Nothing is trained in the driver. The settings:

* ``best shared``: the search's best trial (hpo.ranking), judged on every dataset;
* ``published``: the space's published point over its fixed constants, on every dataset;
* ``best on <dataset>``: the best trial of that dataset's own search (``hpo/search.py --per-dataset``,
  experiment ``<name>-<dataset>`` beside this one), judged on its dataset only.

A run shared by several settings (the same params, dataset and seed) is trained once. With
``inflation`` on (default), every scoring-stage epoch of a run is also scored as published practice
would (zsl.practice: best classifier epoch on test, best view), so the report can put the number
that practice reports beside the honest one.

Layout: ``EXPERIMENT/final/`` is a Ray experiment (trial folders with ``result.json``, TensorBoard
event files, checkpoints) holding ``final-plan.json`` (settings, runs, seeds, provenance), the
zsl-hpo marker and Ray's state signed as the search's is (hpo.trusted_state).
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path

from ray import tune

from zsl.errors import DivergedError, UserError
from zsl.run import MAX_SEED
from hpo.trainable import SearchContext
from hpo.trusted_state import default_key_file

FINAL_NAME = "final"
PLAN_FILE = "final-plan.json"
STATE_FILE = "run.pt"
PLAN_FORMAT = 1
SELECTION_RULE = "last epoch, last classifier epoch, main view (no choice made on test data)"


@dataclass
class FinalOptions:
    """The validated options of a final evaluation (the CLI's flags, as data)."""

    experiment: str = ""
    seeds: int = 3
    first_seed: int | None = None       # default: the search's --seed
    cpus_per_trial: float = 1.0
    gpus_per_trial: float | None = None  # default: the search's --gpus-per-trial
    max_concurrent: int = 2
    address: str | None = None
    resume: bool = False
    force: bool = False
    inflation: bool = True
    settings: list | None = None        # names of the settings to run (default: every chosen one)
    device: str = "auto"                # auto: cuda when runs get a GPU share, else cpu
    verbose: int = 1
    state_key: str = field(default_factory=default_key_file)  # signs Ray's state, as the search's (hpo.trusted_state)

    def final_dir(self) -> str:
        return f"{self.experiment.rstrip('/')}/{FINAL_NAME}"


def check_final_options(opts: FinalOptions) -> None:
    """One-sentence UserErrors for values argparse cannot check."""
    checks = [
        (1 <= opts.seeds <= 100, "--seeds must be an integer from 1 to 100"),
        (opts.first_seed is None or 0 <= opts.first_seed <= MAX_SEED - opts.seeds,
         f"--first-seed must be an integer from 0 to {MAX_SEED} minus --seeds"),
        (math.isfinite(opts.cpus_per_trial) and opts.cpus_per_trial > 0, "--cpus-per-trial must be a finite number > 0"),
        (opts.gpus_per_trial is None or (math.isfinite(opts.gpus_per_trial) and opts.gpus_per_trial >= 0),
         "--gpus-per-trial must be a finite number >= 0 (fractions allowed)"),
        (opts.max_concurrent >= 1, "--max-concurrent must be >= 1"),
        (opts.device in ("auto", "cpu", "cuda"), "--device must be auto, cpu or cuda"),
        (not (opts.resume and opts.force), "--resume and --force exclude each other: pass one"),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(message + ".")


# ----------------------------------------------------------------------------------------------- the plan

def per_dataset_experiment(experiment: str, dataset: str) -> str:
    """Where the own search of ``dataset`` lives beside the shared search ``experiment`` (hpo/search.py --per-dataset)."""
    return f"{experiment.rstrip('/')}-{dataset}"


def best_trial_params(exp_dir: str) -> tuple[dict, str] | None:
    """(params, trial name) of the best trial (hpo.ranking) of the search in ``exp_dir``; None when it has none."""
    from hpo.trials import leaderboard, local_experiment, read_trials
    from hpo.experiment import read_search

    with local_experiment(exp_dir, ("params.json", "result.json", "error.txt", "search.json")) as exp:
        datasets = SearchContext(**read_search(exp)["context"]).datasets
        top = leaderboard(read_trials(exp), datasets, 1)
    return (top[0].config, top[0].name.split("_")[1]) if top else None


def chosen_settings(exp_dir: str, record: dict) -> tuple[dict, list[str]]:
    """({name: {"params", "datasets", "source"}}, notes) for the search ``exp_dir`` with search.json ``record``.

    Each dataset's own best comes from its own search (``<experiment>-<dataset>``) when that exists, holds a
    finished best trial and searched the same space for the same model; otherwise a note says why it is missing.
    """
    from hpo.experiment import SearchOptions, read_search, specialised_space
    from hpo.spaces import published_params
    from hpo.trials import local_experiment

    ctx = SearchContext(**record["context"])
    space, _, _ = specialised_space(SearchOptions(**record["options"]), record)
    best = best_trial_params(exp_dir)
    if best is None:
        raise UserError(f"no trial of {exp_dir} reported a finite objective: there is no best setting to evaluate.")
    settings = {
        "best shared": {"params": best[0], "datasets": list(ctx.datasets), "source": f"trial {best[1]}"},
        "published": {"params": published_params(space), "datasets": list(ctx.datasets),
                      "source": f"the published point of space {space.name}"},
    }
    notes = []
    for dataset in ctx.datasets:
        own = per_dataset_experiment(exp_dir, dataset)
        try:
            with local_experiment(own, ("search.json",)) as folder:
                own_record = read_search(folder)
        except UserError:
            notes.append(f"{dataset}: no own search at {own} (run hpo/search.py with --per-dataset)")
            continue
        if own_record.get("space", {}).get("doc") != record.get("space", {}).get("doc") \
                or own_record["context"].get("model") != ctx.model:
            notes.append(f"{dataset}: {own} searched another space or model; not used")
            continue
        found = best_trial_params(own)
        if found is None:
            notes.append(f"{dataset}: {own} has no scored trial yet")
            continue
        settings[f"best on {dataset}"] = {"params": found[0], "datasets": [dataset],
                                          "source": f"trial {found[1]} of {own.rstrip('/').rsplit('/', 1)[-1]}"}
    return settings, notes


def plan_runs(settings: dict, seeds: list[int]) -> list[dict]:
    """One run per distinct (params, dataset, seed) over ``settings``; each names the settings it serves."""
    runs: dict[tuple, dict] = {}
    for name, setting in settings.items():
        for dataset in setting["datasets"]:
            for seed in seeds:
                run = {"params": setting["params"], "dataset": dataset, "seed": seed, "settings": []}
                run = runs.setdefault(run_key(run), run)
                run["settings"].append(name)
    return list(runs.values())


def run_key(run: dict) -> tuple:
    """What makes a run: its params, dataset and seed (a plan trains each distinct key once)."""
    return json.dumps(run.get("params"), sort_keys=True), run.get("dataset"), run.get("seed")


def labelled(run: dict) -> dict:
    """A planned run with the strings TensorBoard's HParams show beside its params: its settings, the protocol
    and whether its data is simulated."""
    kind = "simulated" if run["dataset"].startswith("sim-") else "real"
    return {**run, "setting": ", ".join(run["settings"]), "protocol": "final", "data": kind}


def run_label(run: dict) -> str:
    """A folder-safe label of a run: its first setting, dataset and seed."""
    slug = re.sub(r"[^A-Za-z0-9]+", "-", run["settings"][0]).strip("-")
    return f"{slug}_{run['dataset']}_seed{run['seed']}"


# ----------------------------------------------------------------------------------------------- the trial

def final_trainable(config: dict, context: dict) -> None:
    """Ray Tune function trainable: one run of the plan (``config["run"]``) under the final protocol.

    Reports every epoch (``epoch``, ``epochs_total``, ``stage``, and on scoring-stage epochs the practice
    scores ``practice/*`` when ``context["inflation"]``), with a checkpoint; the last epoch adds the honest
    test scores S/U/H/ZSL, ``gpu_ids`` and the provenance of the numbers.
    """
    import ray

    from zsl.practice import PracticeView
    from zsl.run import Run, load_run_data

    run_doc, ctx = config["run"], SearchContext(**context["search"])
    spec = replace(ctx.run_spec(run_doc["params"], run_doc["dataset"], protocol="final"),
                   seed=run_doc["seed"], seeds=1)
    threads = max(1, int(context["cpus_per_trial"]))
    data = load_run_data(spec, context["device"])
    practice = PracticeView(spec, context["device"], threads, data) if context["inflation"] else None
    run = Run(spec, context["device"], threads, data=data)  # built after the twin: trains as it would alone
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            import torch
            run.load_state_dict(torch.load(os.path.join(folder, STATE_FILE), map_location="cpu", weights_only=True))
    while run.epoch < run.epochs_total:
        start = time.perf_counter()
        try:
            losses = run.train_epoch()
            row = {"epoch": run.epoch, "epochs_total": run.epochs_total, "stage": losses.get("stage", ""),
                   "seed": spec.seed}
            if practice is not None and run.epoch > run.prefix_epochs:
                row.update(practice.scores(run))
            if run.epoch == run.epochs_total:
                scores = run.evaluate()
                row.update({k: float(scores[k]) for k in ("S", "U", "H", "ZSL")})
                row.update(gpu_ids=[str(g) for g in ray.get_gpu_ids()], device=context["device"],
                           provenance={**data.provenance(), "seed": spec.seed, "selection": SELECTION_RULE,
                                       "model": spec.model})
        except DivergedError as err:
            tune.report({"epoch": run.epoch, "epochs_total": run.epochs_total, "diverged": 1,
                         "diverged_reason": str(err).splitlines()[-1]})
            return
        row["epoch_seconds"] = time.perf_counter() - start
        with tempfile.TemporaryDirectory(prefix="zsl-hpo-final-") as folder:
            import torch
            from hpo.trainable import _to_cpu
            torch.save(_to_cpu(run.state_dict()), os.path.join(folder, STATE_FILE))
            tune.report(row, checkpoint=tune.Checkpoint.from_directory(folder))


# ----------------------------------------------------------------------------------------------- the job

@dataclass
class FinalSummary:
    """What a final evaluation produced: its folder, runs by outcome and wall time."""

    final_dir: str
    runs: int
    finished: int
    errored: int
    diverged: int
    interrupted: bool
    wall_seconds: float
    notes: list = field(default_factory=list)


def read_plan(final_dir: str) -> dict | None:
    """The plan of a final evaluation folder (local or URI); None when there is none."""
    from hpo.storage import filesystem
    from hpo.trusted_state import read_bytes

    fs, root = filesystem(final_dir)
    raw = read_bytes(fs, f"{root.rstrip('/')}/{PLAN_FILE}")
    if raw is None:
        return None
    try:
        plan = json.loads(raw)
    except ValueError:
        plan = None
    if not isinstance(plan, dict) or not isinstance(plan.get("runs"), list):
        raise UserError(f"{final_dir}/{PLAN_FILE} is truncated or damaged: run the final evaluation again with --force.")
    return plan


def new_plan(opts: FinalOptions, record: dict) -> dict:
    """The plan of a new final evaluation of the search with search.json ``record``."""
    from hpo.experiment import provenance

    ctx = SearchContext(**record["context"])
    settings, notes = chosen_settings(opts.experiment, record)
    if opts.settings:
        unknown = [s for s in opts.settings if s not in settings]
        if unknown:
            raise UserError(f"--settings {','.join(unknown)}: not among this search's settings "
                            f"({', '.join(settings)}).")
        settings = {k: v for k, v in settings.items() if k in opts.settings}
    first = ctx.seed if opts.first_seed is None else opts.first_seed
    seeds = [first + k for k in range(opts.seeds)]
    return {"format": PLAN_FORMAT, "final_id": uuid.uuid4().hex, "search_experiment_id": record.get("experiment_id"),
            "protocol": "final", "selection": SELECTION_RULE, "seeds": seeds, "settings": settings, "notes": notes,
            "runs": [labelled(run) for run in plan_runs(settings, seeds)], "inflation": opts.inflation,
            "resources": plan_resources(opts, record),
            "context": ctx.to_dict(), **provenance()}


def plan_resources(opts: FinalOptions, record: dict) -> dict:
    """Each run's CPUs, GPU share (default: the search's) and device (auto: cuda with a GPU share)."""
    gpus = record["options"].get("gpus_per_trial", 0.0) if opts.gpus_per_trial is None else opts.gpus_per_trial
    device = opts.device if opts.device != "auto" else ("cuda" if gpus > 0 else "cpu")
    return {"cpus_per_trial": opts.cpus_per_trial, "gpus_per_trial": gpus, "device": device}


def run_final(opts: FinalOptions) -> FinalSummary:
    """The whole final evaluation (new, or ``--resume``d); returns its summary. The driver only schedules."""
    from hpo.experiment import SearchOptions
    from hpo.folder_guard import FolderLock
    from hpo.storage import is_remote, local_path
    from hpo.tuner import init_ray

    check_final_options(opts)
    if not is_remote(opts.experiment):  # ~, relative paths and file:// URIs: one absolute folder from here on
        opts = replace(opts, experiment=str(local_path(opts.experiment)))
    start = time.perf_counter()
    record = _search_record(opts.experiment)
    final_dir = opts.final_dir()
    lock_folder = Path(f"{Path(final_dir).parent.name}.final.hpo").resolve() if is_remote(final_dir) else Path(final_dir)
    with FolderLock(lock_folder, f"final evaluation {final_dir}"):
        saved = read_plan(final_dir) if opts.resume else None
        init_ray(SearchOptions(address=opts.address, verbose=opts.verbose))
        check_local_resources(opts, saved["resources"] if saved else plan_resources(opts, record))  # before any delete
        plan = _prepare(opts, record, final_dir)
        tuner = _tuner(opts, plan, final_dir)
        if opts.verbose:
            print(f"zsl-hpo final evaluation of {opts.experiment}: {len(plan['settings'])} settings, seeds "
                  f"{plan['seeds']}, {len(plan['runs'])} runs (protocol final; {plan['resources']['cpus_per_trial']:g} "
                  f"CPU + {plan['resources']['gpus_per_trial']:g} GPU each, device {plan['resources']['device']})")
            for note in plan["notes"]:
                print(f"note: {note}")
        from hpo.tuner import _ray_output, _without_ray_resume_advice

        with _without_ray_resume_advice() as advice, _ray_output(opts.verbose):
            results = tuner.fit()
    rows = [r.metrics or {} for r in results]
    summary = FinalSummary(final_dir, len(results), sum(bool(m.get("provenance")) for m in rows),
                           sum(r.error is not None for r in results), sum(bool(m.get("diverged")) for m in rows),
                           advice.interrupted, time.perf_counter() - start, plan["notes"])
    if opts.verbose:
        print(f"final evaluation {'interrupted' if summary.interrupted else 'finished'} after {summary.wall_seconds:.0f} s: "
              f"{summary.finished}/{summary.runs} runs tested, {summary.errored} errored, {summary.diverged} diverged")
        print(f"report: python hpo/report.py {opts.experiment}")
    return summary


def _search_record(experiment: str) -> dict:
    from hpo.experiment import read_search
    from hpo.trials import local_experiment

    with local_experiment(experiment, ("search.json",)) as exp:
        return read_search(exp)


def _prepare(opts: FinalOptions, record: dict, final_dir: str) -> dict:
    """The plan: read back on --resume (signed Ray state put in place), else new (folder made, marker, plan)."""
    from hpo.experiment import atomic_write_text
    from hpo.folder_guard import remove_experiment_folder, write_marker
    from hpo.storage import filesystem, is_remote
    from hpo.trusted_state import load_key, restore_signed_state, write_whole

    plan = read_plan(final_dir)
    if opts.resume:
        if plan is None:
            raise UserError(f"--resume: {final_dir} holds no final evaluation to continue: run it without --resume.")
        restore_signed_state(final_dir, load_key(opts.state_key, create=False), plan["final_id"])
        return plan
    if plan is not None and not opts.force:
        raise UserError(f"the final evaluation {final_dir} already exists: pass --resume to continue it, or --force "
                        "to run it again from scratch.")
    plan = new_plan(opts, record)  # every choice checked before anything is deleted
    if not is_remote(final_dir):
        remove_experiment_folder(Path(final_dir), Path(opts.experiment), flag="--force")
    if is_remote(final_dir):
        fs, root = filesystem(final_dir)
        write_whole(fs, f"{root.rstrip('/')}/{PLAN_FILE}", json.dumps(plan, indent=2).encode())
    else:
        write_marker(Path(final_dir), plan["final_id"])
        atomic_write_text(Path(final_dir) / PLAN_FILE, json.dumps(plan, indent=2))
    return plan


def _tuner(opts: FinalOptions, plan: dict, final_dir: str):
    """A new Tuner over the plan's runs, or the restored one (--resume): finished runs are kept."""
    from hpo.tuner import ray_verbosity
    from hpo.trusted_state import SignedSnapshot, load_key, sign_tuner

    resources = plan["resources"]
    context = {"search": plan["context"], "inflation": plan["inflation"], "device": resources["device"],
               "cpus_per_trial": resources["cpus_per_trial"]}
    fn = tune.with_resources(tune.with_parameters(final_trainable, context=context),
                             {"cpu": resources["cpus_per_trial"], "gpu": resources["gpus_per_trial"]})
    callbacks = [SignedSnapshot(opts.state_key, plan["final_id"])]
    if opts.verbose:
        callbacks.append(FinalProgress(len(plan["runs"])))
    if opts.resume:
        tuner = tune.Tuner.restore(final_dir, trainable=fn, resume_errored=True)
        tuner._local_tuner.get_run_config().callbacks = callbacks  # Ray keeps the first run's (see hpo.tuner)
        return tuner
    key = load_key(opts.state_key, create=True)
    storage, name = final_dir.rstrip("/").rsplit("/", 1)
    tuner = tune.Tuner(
        fn, param_space={"run": tune.grid_search(plan["runs"])},
        tune_config=tune.TuneConfig(max_concurrent_trials=opts.max_concurrent, reuse_actors=False,
                                    trial_name_creator=lambda t: f"{run_label(t.config['run'])}_{t.trial_id}",
                                    trial_dirname_creator=lambda t: f"{run_label(t.config['run'])}_{t.trial_id}"),
        run_config=tune.RunConfig(name=name, storage_path=storage, verbose=ray_verbosity(opts.verbose),
                                  failure_config=tune.FailureConfig(max_failures=1),
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=1), callbacks=callbacks))
    sign_tuner(final_dir, key, plan["final_id"])
    return tuner


def check_local_resources(opts: FinalOptions, resources: dict) -> None:
    """Without --address the job runs on this machine's Ray: a run asking for more CPUs or GPUs than it has would
    wait forever, so refuse it (a cluster may still be scaling up, so it is not checked there)."""
    import ray

    if opts.address:
        return
    have = ray.cluster_resources()
    for key, flag in (("CPU", "--cpus-per-trial"), ("GPU", "--gpus-per-trial")):
        asked = resources[f"{key.lower()}s_per_trial"]
        if asked > have.get(key, 0.0):
            hint = " (the search's; pass --gpus-per-trial 0 to test on CPUs)" if key == "GPU" else ""
            raise UserError(f"{flag} {asked:g}{hint}: this machine's Ray has {have.get(key, 0.0):g} {key}(s) and no "
                            f"--address names a cluster, so no run could start: ask for less, or join a cluster "
                            f"with --address.")


class FinalProgress(tune.Callback):
    """Prints one line per ended run of a final evaluation: its settings, dataset, seed, honest test H and the
    best number published practice would have reported for it."""

    def __init__(self, total: int):
        self.total, self.ended = total, 0

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._print(trial, "tested")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._print(trial, "errored")

    def _print(self, trial, ended: str) -> None:
        self.ended += 1
        last, run = trial.last_result or {}, trial.config["run"]
        h = f"H {last['H']:.2f} (S {last['S']:.1f}, U {last['U']:.1f})" if "H" in last else "no test score"
        best = trial.metric_analysis.get("practice/H_view", {}).get("max")
        practice = f"; published practice would report H {best:.2f}" if isinstance(best, (int, float)) else ""
        print(f"[{self.ended}/{self.total}] {', '.join(run['settings'])} on {run['dataset']} seed {run['seed']}: "
              f"{ended}, {h}{practice}", flush=True)
