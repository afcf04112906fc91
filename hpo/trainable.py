"""The Ray Tune trainable: one trial = one setting trained on every dataset of the search.

Each epoch every dataset's :class:`zsl.trainer.Trainer` trains one epoch and is evaluated under
the ``validation`` protocol (never test images); the trial reports the cross-dataset objective
(mean or min of H), its best value so far, each dataset's S/U/H/ZSL and losses, and a checkpoint
holding every trainer's ``state_dict`` so that ASHA pauses, failures and resumes continue where
they stopped.  hpo/ sees models only through the run engine (zsl.run: RunSpec, Run) and the Trainer protocol.

The datasets of a trial run one after another in the trial's process (``dataset_runs="sequential"``)
or side by side, each in a Ray actor on its own bundle of the trial's placement group (``"parallel"``:
e.g. a GPU fraction each); both give the same numbers for the same seed.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field

import ray
import torch
from ray import tune
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from zsl.errors import DivergedError
from zsl.run import DataOptions, Run, RunSpec, resolve_config

STATE_FILE = "trainers.pt"
TRIAL_FILE = "trial.json"
OBJECTIVES = ("mean", "min", "pareto")


@dataclass
class SearchContext:
    """Everything a trial needs besides its sampled params (same for every trial of a search).

    datasets: names for zsl.data.load_dataset; preset/base_overrides: the space's base config;
    max_epochs: cap on each run's epochs in all (None = no cap; the model shortens its stages in
    proportion, see zsl.run.resolve_config); objective: "mean" | "min" of H, or "pareto" (reported as the mean). seed: the models' seed;
    data_seed: the simulated world's and validation holdout's seed. class_embedding: per dataset
    (missing: att); split_percent, scaler_fit: for every dataset (zsl.run.DataOptions).
    """

    model: str
    preset: str | None
    datasets: list[str]
    data_root: str | None = None
    scale: str = "small"
    base_overrides: dict = field(default_factory=dict)
    objective: str = "mean"
    max_epochs: int | None = None
    seed: int = 0
    device: str = "cpu"
    torch_threads: int = 1
    protocol: str = "validation"
    dataset_runs: str = "sequential"  # or "parallel": one Ray actor per dataset (see module docstring)
    cpus_per_run: float = 1.0  # each parallel run's share of the trial's resources
    gpus_per_run: float = 0.0
    data_seed: int = 0
    class_embedding: dict = field(default_factory=dict)
    split_percent: int = 100
    scaler_fit: str = "train_rows"
    base_configs: dict = field(default_factory=dict)  # {dataset: resolved base config}, fixed at search start
    profile: str = ""  # the space's run profile the search used (hpo.experiment.run_profile)
    seeds: int = 1     # K > 1: every run trains the seeds seed..seed+K-1 fused and scores their mean

    def to_dict(self) -> dict:
        return asdict(self)

    def run_spec(self, params: dict, dataset: str, protocol: str | None = None) -> RunSpec:
        """The RunSpec of setting ``params`` on ``dataset`` (under ``protocol``, default the search's), over the
        dataset's recorded base config (``base_configs``; without one, the preset file as it is today)."""
        if dataset in self.base_configs:
            config = resolve_config(self.model, None, dataset, {**self.base_configs[dataset], **params},
                                    max_epochs=self.max_epochs)
        else:
            config = resolve_config(self.model, self.preset, dataset, {**self.base_overrides, **params},
                                    max_epochs=self.max_epochs)
        data = DataOptions(self.class_embedding.get(dataset, "att"), self.split_percent, self.scaler_fit)
        return RunSpec(self.model, dataset, self.preset, protocol or self.protocol, self.seed, self.data_seed,
                       self.scale, self.data_root, config, data, seeds=self.seeds)


def aggregate(values: list[float], how: str) -> float:
    """The cross-dataset objective: min of per-dataset H (percent) for ``min``, else their mean (``mean``, and
    ``pareto``, whose searcher and scheduler use the per-dataset H themselves: the mean ranks and is shown)."""
    return float(min(values)) if how == "min" else float(sum(values) / len(values))


class DatasetRun:
    """One dataset's trainer inside a trial: built from the setting, stepped and checkpointed by the trial.

    Lives in the trial's process, or is a Ray actor (``ray.remote(DatasetRun)``) of a parallel trial.
    """

    def __init__(self, context: dict, params: dict, name: str):
        ctx = SearchContext(**context)
        self.name, self.run = name, Run(ctx.run_spec(params, name), ctx.device, ctx.torch_threads)

    def progress(self) -> tuple[int, int, int]:
        """(epochs done, epochs this run will do, epochs of its prefix: the stages before its scoring stage)."""
        return self.run.epoch, self.run.epochs_total, self.run.prefix_epochs

    def step(self) -> dict:
        return step_dataset(self.name, self.run)

    def state_dict(self) -> dict:
        """The trainer's state with every tensor on the CPU (it may travel to a process without a GPU)."""
        return _to_cpu(self.run.state_dict())

    def load_state_dict(self, state: dict) -> None:
        self.run.load_state_dict(state)


def _to_cpu(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def build_runs(ctx: SearchContext, params: dict) -> dict:
    """{dataset: DatasetRun or its Ray actor handle} for the setting ``params`` (see ``ctx.dataset_runs``)."""
    if ctx.dataset_runs != "parallel":
        return {name: DatasetRun(ctx.to_dict(), params, name) for name in ctx.datasets}
    group = ray.util.get_current_placement_group()
    first = 0 if tune.get_context().get_trial_resources().head_bundle_is_empty else 1
    actor = ray.remote(DatasetRun)
    runs = {}
    for i, name in enumerate(ctx.datasets):
        strategy = PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=first + i) if group else None
        runs[name] = actor.options(num_cpus=ctx.cpus_per_run, num_gpus=ctx.gpus_per_run,
                                   scheduling_strategy=strategy).remote(ctx.to_dict(), params, name)
    return runs


def call_runs(runs: dict, method: str, args: dict | None = None) -> dict:
    """{name: runs[name].<method>(*args)} for each name of ``args`` (name -> tuple of arguments; default: every
    run, no arguments); actors run side by side and are awaited together."""
    calls = args if args is not None else {name: () for name in runs}
    if not any(isinstance(runs[name], ray.actor.ActorHandle) for name in calls):
        return {name: getattr(runs[name], method)(*argv) for name, argv in calls.items()}
    refs = {name: getattr(runs[name], method).remote(*argv) for name, argv in calls.items()}
    return dict(zip(refs, ray.get(list(refs.values()))))


def step_dataset(name: str, run: Run) -> dict:
    """Train one epoch and evaluate; returns {f"{name}/S": ..., f"{name}/loss/<k>": ...}; an epoch of a prefix
    stage (before the scoring stage) is reported under that stage's name: {f"{stage}/{name}/H": ...}."""
    prefix = run.in_prefix
    losses = run.train_epoch()
    scores = run.evaluate()
    out = {f"{name}/{k}": float(scores[k]) for k in ("S", "U", "H", "ZSL")}
    out.update({f"{name}/{k}": float(v) for k, v in scores.items() if _number(v)})  # e.g. other views' H_VC
    out.update({f"{name}/loss/{k}": float(v) for k, v in losses.items() if _number(v)})
    if isinstance(scores.get("variant"), str):  # a model that runs a variant of its method says which
        out[f"{name}/variant"] = scores["variant"]
    return {f"{losses.get('stage', 'prefix')}/{k}": v for k, v in out.items()} if prefix else out


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def save_checkpoint(runs: dict, state: dict, folder: str) -> tune.Checkpoint:
    """A tune.Checkpoint in ``folder`` of every trainer's state_dict (torch.save) and the trial's state (JSON)."""
    torch.save(call_runs(runs, "state_dict"), os.path.join(folder, STATE_FILE))
    with open(os.path.join(folder, TRIAL_FILE), "w") as fh:
        json.dump(state, fh)
    return tune.Checkpoint.from_directory(folder)


def load_checkpoint(checkpoint: tune.Checkpoint, runs: dict) -> dict:
    """Restore every trainer from ``checkpoint``; returns the trial state saved with it."""
    with checkpoint.as_directory() as folder:
        path = os.path.join(folder, STATE_FILE)
        # weights_only: a checkpoint from shared storage is never unpickled as arbitrary objects
        states = torch.load(path, map_location="cpu", weights_only=True)
        call_runs(runs, "load_state_dict", {name: (states[name],) for name in runs})
        with open(os.path.join(folder, TRIAL_FILE)) as fh:
            return json.load(fh)


def report_divergence(state: dict, epoch: int, epochs_total: int, reason: str) -> None:
    """The trial's last report after a divergence: objective NaN (Optuna: FAIL; ASHA ignores it), ``diverged`` 1.

    The trial then ends without raising, so Ray does not retry it: the same setting and seed from the same
    checkpoint would diverge again.
    """
    metrics = {k: v for per in state["last"].values() for k, v in per.items()}
    tune.report({**metrics, "objective": math.nan, "best_objective": _finite_or_nan(state["best_objective"]),
                 "epoch": epoch, "epochs_total": epochs_total, "diverged": 1, "diverged_reason": reason})


def _finite_or_nan(value: float) -> float:
    return value if math.isfinite(value) else math.nan


def trainable(config: dict, context: dict) -> None:
    """Ray Tune function trainable (bind ``context`` with tune.with_parameters).

    config: the sampled params (plus the space's fixed constants); context: SearchContext.to_dict().

    Fidelity counts scoring-stage epochs only. While any dataset run is in its prefix (the stages before
    its scoring stage, e.g. D2SC's DRG), only the runs in their prefix are stepped, and each report has
    ``epoch`` 0 (nothing for the scheduler to judge), ``objective`` NaN (nothing for Optuna) and the
    prefix scores under their stage's name (``DRG/<dataset>/H``); then every run is in its scoring stage
    and each step advances all of them by one scoring epoch (``epoch`` 1, 2, ...; a run with fewer
    scoring epochs keeps its last scores). Each report also carries ``trial_epochs`` (all epochs the
    trial has run, prefix included: its cost), ``stage`` ("prefix" or "scoring"), objective,
    best_objective, epochs_total (scoring epochs), <dataset>/{S,U,H,ZSL}, <dataset>/loss/<name>,
    epoch_seconds. A run that diverges ends the trial (see report_divergence).
    """
    ctx = SearchContext(**context)
    runs = build_runs(ctx, dict(config))  # each Run sets the torch thread count of its process
    state = {"best_objective": -math.inf, "last": {}, "prefix": {}, "trial_epochs": 0}
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        state = {"prefix": {}, "trial_epochs": 0, **load_checkpoint(checkpoint, runs)}
    progress = call_runs(runs, "progress")
    epochs_total = max(total - prefix for _, total, prefix in progress.values())
    while True:
        prefix_due = {name: () for name, (done, _, prefix) in progress.items() if done < prefix}
        due = prefix_due or {name: () for name, (done, total, _) in progress.items() if done < total}
        if not due:
            return
        epoch = max(max(done - prefix, 0) for done, _, prefix in progress.values()) + (not prefix_due)
        start = time.perf_counter()
        try:
            stepped = call_runs(runs, "step", due)
        except DivergedError as err:  # also a parallel run's RayTaskError, which subclasses it
            report_divergence(state, epoch, epochs_total, str(err).splitlines()[-1])
            return
        progress = {name: (done + (name in due), total, prefix) for name, (done, total, prefix) in progress.items()}
        state["trial_epochs"] += 1
        state["prefix" if prefix_due else "last"].update(stepped)
        metrics = {k: v for part in ("prefix", "last") for per in state[part].values() for k, v in per.items()}
        if prefix_due:
            objective = math.nan
        else:
            objective = aggregate([state["last"][name][f"{name}/H"] for name in runs], ctx.objective)
            state["best_objective"] = max(state["best_objective"], objective)
        metrics.update(objective=objective, best_objective=_finite_or_nan(state["best_objective"]),
                       epoch=epoch if not prefix_due else 0, epochs_total=epochs_total,
                       trial_epochs=state["trial_epochs"], stage="prefix" if prefix_due else "scoring",
                       epoch_seconds=time.perf_counter() - start)
        with tempfile.TemporaryDirectory(prefix="zsl-hpo-ckpt-") as folder:  # tune.report persists it before returning
            tune.report(metrics, checkpoint=save_checkpoint(runs, state, folder))
