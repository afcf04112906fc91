"""The Ray Tune trainable: one trial = one setting trained on every dataset of the search.

Each epoch every dataset's :class:`zsl.trainer.Trainer` trains one epoch and is evaluated under
the ``validation`` protocol (never test images); the trial reports the cross-dataset objective
(mean or min of H), its best value so far, each dataset's S/U/H/ZSL and losses, and a checkpoint
holding every trainer's ``state_dict`` so that ASHA pauses, failures and resumes continue where
they stopped.  hpo/ sees models only through zsl.data.load_dataset, zsl.models and the Trainer protocol.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field

import torch
from ray import tune

from zsl.data import load_dataset
from zsl.models import get_model, make_config

STATE_FILE = "trainers.pt"
TRIAL_FILE = "trial.json"
OBJECTIVES = ("mean", "min")


class DivergedError(RuntimeError):
    """A run produced a NaN/inf loss or metric; the trial ends as errored with this reason."""


@dataclass
class SearchContext:
    """Everything a trial needs besides its sampled params (same for every trial of a search).

    datasets: names for zsl.data.load_dataset; preset/base_overrides: the space's base config;
    max_epochs: cap on each run's epochs_total (None = no cap); objective: "mean" | "min" of H.
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

    def to_dict(self) -> dict:
        return asdict(self)


def aggregate(values: list[float], how: str) -> float:
    """The cross-dataset objective: mean or min of per-dataset H (percent)."""
    return float(sum(values) / len(values)) if how == "mean" else float(min(values))


def build_runs(ctx: SearchContext, params: dict) -> dict:
    """{dataset: Trainer} for the setting ``params`` (base preset <- base overrides <- params)."""
    model_cls = get_model(ctx.model)
    runs = {}
    for name in ctx.datasets:
        data = load_dataset(name, data_root=ctx.data_root, protocol=ctx.protocol, seed=ctx.seed, scale=ctx.scale)
        config = make_config(ctx.model, ctx.preset, name, {**ctx.base_overrides, **params})
        runs[name] = model_cls(config, data, ctx.device, ctx.seed)
    return runs


def capped_epochs(run, max_epochs: int | None) -> int:
    return run.epochs_total if max_epochs is None else min(run.epochs_total, max_epochs)


def check_finite(dataset: str, epoch: int, values: dict) -> None:
    """Raise DivergedError naming the first NaN/inf float in ``values``."""
    for key, value in values.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise DivergedError(f"{dataset} diverged at epoch {epoch}: '{key}' is {value}; the setting is unstable.")


def step_dataset(name: str, run) -> dict:
    """Train one epoch and evaluate; returns {f"{name}/S": ..., f"{name}/loss/<k>": ...}."""
    losses = run.train_epoch()
    check_finite(name, run.epoch, losses)
    scores = run.evaluate()
    check_finite(name, run.epoch, scores)
    out = {f"{name}/{k}": float(scores[k]) for k in ("S", "U", "H", "ZSL")}
    out.update({f"{name}/{k}": float(v) for k, v in scores.items() if _number(v)})  # e.g. other views' H_VC
    out.update({f"{name}/loss/{k}": float(v) for k, v in losses.items() if _number(v)})
    return out


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def save_checkpoint(runs: dict, state: dict, folder: str) -> tune.Checkpoint:
    """A tune.Checkpoint in ``folder`` of every trainer's state_dict (torch.save) and the trial's state (JSON)."""
    torch.save({name: run.state_dict() for name, run in runs.items()}, os.path.join(folder, STATE_FILE))
    with open(os.path.join(folder, TRIAL_FILE), "w") as fh:
        json.dump(state, fh)
    return tune.Checkpoint.from_directory(folder)


def load_checkpoint(checkpoint: tune.Checkpoint, runs: dict) -> dict:
    """Restore every trainer from ``checkpoint``; returns the trial state saved with it."""
    with checkpoint.as_directory() as folder:
        path = os.path.join(folder, STATE_FILE)
        # weights_only: a checkpoint from shared storage is never unpickled as arbitrary objects
        states = torch.load(path, map_location="cpu", weights_only=True)
        for name, run in runs.items():
            run.load_state_dict(states[name])
        with open(os.path.join(folder, TRIAL_FILE)) as fh:
            return json.load(fh)


def trainable(config: dict, context: dict) -> None:
    """Ray Tune function trainable (bind ``context`` with tune.with_parameters).

    config: the sampled params (plus the space's fixed constants); context: SearchContext.to_dict().
    Reports every epoch: objective, best_objective, epoch, epochs_total, <dataset>/{S,U,H,ZSL},
    <dataset>/loss/<name>, epoch_seconds.
    """
    ctx = SearchContext(**context)
    torch.set_num_threads(max(1, ctx.torch_threads))
    runs = build_runs(ctx, dict(config))
    caps = {name: capped_epochs(run, ctx.max_epochs) for name, run in runs.items()}
    epochs_total = max(caps.values())
    state = {"best_objective": -math.inf, "last": {}}
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        state = load_checkpoint(checkpoint, runs)
    epoch = max(run.epoch for run in runs.values())
    while epoch < epochs_total:
        start = time.perf_counter()
        for name, run in runs.items():
            if run.epoch < caps[name]:  # a shorter run keeps its last scores
                state["last"][name] = step_dataset(name, run)
        epoch += 1
        metrics = {k: v for per in state["last"].values() for k, v in per.items()}
        objective = aggregate([state["last"][name][f"{name}/H"] for name in runs], ctx.objective)
        state["best_objective"] = max(state["best_objective"], objective)
        metrics.update(objective=objective, best_objective=state["best_objective"], epoch=epoch,
                       epochs_total=epochs_total, epoch_seconds=time.perf_counter() - start)
        with tempfile.TemporaryDirectory(prefix="zsl-hpo-ckpt-") as folder:  # tune.report persists it before returning
            tune.report(metrics, checkpoint=save_checkpoint(runs, state, folder))
