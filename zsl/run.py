"""The run engine: a RunSpec -> its data -> its trainer -> epochs -> scores.

Every place that trains a model goes through here: ``python -m zsl.train``, each dataset run of a
search trial (hpo.trainable), the report's final evaluation and the benches. A run is data
(:class:`RunSpec`): the same spec gives the same numbers wherever it runs.

Seeds: ``data_seed`` draws the simulated world and the validation holdout; ``seed`` drives the
model (initial weights, noise, batches). A search varies neither between trials.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
import importlib
import inspect
from typing import Any

from zsl.errors import UserError, check_finite
from zsl.memory import TransientPeak
from zsl.models import get_model, make_config, validate_config

CLASS_EMBEDDINGS = ("att", "original_att", "sent")
SPLIT_PERCENTS = (100, 30, 10)
SCALER_FITS = ("train_rows", "full_trainval")
MAX_SEED = 2**32 - 1  # numpy's generators take seeds below 2**32
MAX_FUSED_SEEDS = 64  # members of one fused run
MAX_EPOCHS = 100_000  # a sanity bound: a larger count is a typo (e.g. --set epochs=1e30), not a plan


@dataclass(frozen=True)
class DataOptions:
    """How a dataset is read: class embedding, xlsa17 split percent, where the feature scaler is fitted."""

    class_embedding: str = "att"     # att (L2-normalised original_att) | original_att | sent (CUB's 1024-d)
    split_percent: int = 100         # 100 | 30 | 10: the share of trainval images used for training
    scaler_fit: str = "train_rows"   # train_rows | full_trainval (the reference's fit, before split_percent)

    def __post_init__(self) -> None:
        checks = [(self.class_embedding in CLASS_EMBEDDINGS, "--class-embedding", CLASS_EMBEDDINGS),
                  (self.split_percent in SPLIT_PERCENTS, "--split-percent", SPLIT_PERCENTS),
                  (self.scaler_fit in SCALER_FITS, "--scaler-fit", SCALER_FITS)]
        for ok, flag, allowed in checks:
            if not ok:
                raise UserError(f"{flag} must be one of {', '.join(map(str, allowed))}.")


@dataclass(frozen=True)
class RunSpec:
    """Everything that defines a run's result (what ``zsl.train --resume`` must find unchanged)."""

    model: str
    dataset: str
    preset: str | None
    protocol: str
    seed: int                  # the model's seed
    data_seed: int             # the simulated world's and the validation holdout's seed
    scale: str                 # simulated datasets: small | full
    data_root: str | None
    config: dict               # resolved hyperparameters, epoch budget applied
    data: DataOptions = field(default_factory=DataOptions)
    seeds: int = 1             # K > 1: one fused run of the K seeds seed, seed+1, ..., seed+K-1

    def __post_init__(self) -> None:
        for flag, value in (("--seed", self.seed), ("--data-seed", self.data_seed)):
            if not 0 <= value <= MAX_SEED:
                raise UserError(f"{flag} must be an integer from 0 to {MAX_SEED}, got {value}.")
        if not 1 <= self.seeds <= MAX_FUSED_SEEDS or self.seed + self.seeds - 1 > MAX_SEED:
            raise UserError(f"--seeds must be an integer from 1 to {MAX_FUSED_SEEDS} (and --seed + --seeds - 1 at most "
                            f"{MAX_SEED}), got {self.seeds}.")

    @property
    def model_seed(self) -> int | list[int]:
        """The trainer's seed argument: the seed, or the list of a fused run's seeds."""
        return self.seed if self.seeds == 1 else [self.seed + k for k in range(self.seeds)]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, doc: dict) -> RunSpec:
        return cls(**{**doc, "data": DataOptions(**doc.get("data", {}))})


def resolve_config(model: str, preset: str | None, dataset: str, overrides: dict | None = None,
                   epochs: int | None = None, max_epochs: int | None = None) -> dict:
    """The model's config for ``dataset``: defaults <- preset <- overrides, then the epoch budget.

    ``epochs``: train exactly this many epochs in all; ``max_epochs``: at most this many. Either goes
    through the model's own ``with_epochs`` (a multi-stage model shortens every stage in proportion).
    """
    config = make_config(model, preset, dataset, overrides)
    cls = get_model(model)
    for n, flag in ((epochs, "--epochs"), (max_epochs, "--max-epochs")):
        if n is not None and n < 1:
            raise UserError(f"{flag} must be >= 1, got {n}.")
    if epochs is not None:
        config = validate_config(cls.Config, cls.with_epochs(dict(config), epochs), where=f"model '{model}'")
    if max_epochs is not None and cls.epochs_in(config) > max_epochs:
        config = validate_config(cls.Config, cls.with_epochs(dict(config), max_epochs), where=f"model '{model}'")
    if cls.epochs_in(config) > MAX_EPOCHS:
        raise UserError(f"model '{model}' would train {cls.epochs_in(config)} epochs, more than any run can finish "
                        f"(limit {MAX_EPOCHS}): fix the epoch setting (--epochs, --set, the preset or the space).")
    return config


def check_model_config(model: str, config: dict, protocol: str = "validation") -> None:
    """The model's own value checks (``check_config`` of its module, which its trainer runs when built) on a
    resolved ``config``, without data: UserError naming the hyperparameter."""
    cls = get_model(model)
    check = getattr(importlib.import_module(cls.__module__), "check_config", None)
    if check is None:
        return
    cfg = cls.Config(**config)
    check(cfg, protocol) if "protocol" in inspect.signature(check).parameters else check(cfg)


def check_fused_seeds(model: str, seeds: int) -> None:
    """UserError when ``seeds`` > 1 asks a model without fused seeds (class attribute FUSES_SEEDS) for them."""
    if seeds > 1 and not getattr(get_model(model), "FUSES_SEEDS", False):
        raise UserError(f"--seeds {seeds}: model '{model}' does not train fused seeds yet; use --seeds 1 "
                        f"(one seed per run).")


def load_run_data(spec: RunSpec, device: Any = None):
    """The ZSLData of ``spec`` (protocol split, scaling, data options, data seed).

    A model whose config asks for region features (a non-empty ``region_tag``; zsl.refined.RegionFields) gets
    x = those features instead of the pooled ones: SOVR-refined (trained on the split's training rows with seed
    ``spec.seed`` on ``device``, None = cuda when available; cached) or plainly pooled (zsl.refined).
    """
    from zsl.refined import load_region_dataset, region_request

    request = region_request(spec.config)
    if request is not None:
        return load_region_dataset(
            spec.dataset, spec.data_root, spec.protocol, seed=spec.data_seed, scale=spec.scale,
            class_embedding=spec.data.class_embedding, split_percent=spec.data.split_percent,
            scaler_fit=spec.data.scaler_fit, request=request, model_seed=spec.seed, device=device)
    from zsl.data import load_dataset

    return load_dataset(spec.dataset, spec.data_root, spec.protocol, seed=spec.data_seed, scale=spec.scale,
                        class_embedding=spec.data.class_embedding, split_percent=spec.data.split_percent,
                        scaler_fit=spec.data.scaler_fit)


class Run:
    """One run of a RunSpec on a device: its data and trainer, stepped epoch by epoch.

    ``train_epoch`` / ``evaluate`` raise zsl.errors.DivergedError on a NaN/inf loss or score.
    """

    def __init__(self, spec: RunSpec, device: Any = "cpu", threads: int | None = None, data=None):
        import torch

        if threads:
            torch.set_num_threads(max(1, int(threads)))
        self.spec = spec
        self.data = data if data is not None else load_run_data(spec, device)
        torch.manual_seed(spec.seed)
        check_fused_seeds(spec.model, spec.seeds)
        self.trainer = get_model(spec.model)(spec.config, self.data, device, spec.model_seed)
        self.device_type = torch.device(device).type

    @property
    def epoch(self) -> int:
        return self.trainer.epoch

    @property
    def epochs_total(self) -> int:
        return self.trainer.epochs_total

    @property
    def scoring_stage(self) -> str:
        """The stage whose scores count (zsl.trainer.Trainer.scoring_stage)."""
        return type(self.trainer).scoring_stage(self.spec.config)

    @property
    def prefix_epochs(self) -> int:
        """Epochs of the stages before the scoring stage (their scores do not count)."""
        stages = type(self.trainer).stage_epochs(self.spec.config)
        names = list(stages)
        return sum(stages[n] for n in names[:names.index(self.scoring_stage)])

    @property
    def in_prefix(self) -> bool:
        """Whether the run's next epoch belongs to a stage before its scoring stage."""
        return self.epoch < self.prefix_epochs

    def train_epoch(self) -> dict:
        """One epoch of the current stage; its losses and timings."""
        losses = self.trainer.train_epoch()
        check_finite(self.spec.dataset, self.trainer.epoch, losses)
        return losses

    def evaluate(self) -> dict:
        """Scores under the spec's protocol (S, U, H, ZSL in percent, plus the model's extras and, on
        Linux, ``eval_transient_gib``: the evaluation's peak host memory above what was resident)."""
        with TransientPeak() as peak:
            scores = self.trainer.evaluate()
        check_finite(self.spec.dataset, self.trainer.epoch, scores)
        if peak.gib is not None:
            scores["eval_transient_gib"] = peak.gib
        return scores

    def run_to_end(self) -> dict:
        """Train every remaining epoch, then evaluate once."""
        while self.epoch < self.epochs_total:
            self.train_epoch()
        return self.evaluate()

    def state_dict(self) -> dict:
        """The trainer's state, plus the device type its random streams belong to."""
        return {**self.trainer.state_dict(), "device_type": self.device_type}

    def load_state_dict(self, state: dict) -> None:
        """Restore a :meth:`state_dict`.  A state written on another device type is refused: CPU and
        CUDA generators are different streams, so the run could not continue as it would have."""
        state = dict(state)
        saved = state.pop("device_type", None)
        if saved is not None and saved != self.device_type:
            raise UserError(f"the checkpoint was written on a {saved} device and its random streams belong to it: "
                            f"resume it on a {saved} device, or start a fresh run.")
        mismatch = state_mismatch(self.trainer.state_dict(), state)
        if mismatch:
            raise UserError(f"the checkpoint's {mismatch}: it was written by another model, setting or dataset.")
        self.trainer.load_state_dict(state)


def state_mismatch(fresh: Any, saved: Any, where: str = "state") -> str | None:
    """Where ``saved`` differs in structure from ``fresh`` (a freshly built trainer's state): a missing key or a
    tensor of another shape, found by walking the mappings and lists both hold; None when it fits."""
    import torch

    if isinstance(fresh, torch.Tensor):
        if not isinstance(saved, torch.Tensor):
            return f"{where} is a {type(saved).__name__}, not a tensor"
        if saved.shape != fresh.shape:
            return f"{where} has shape {tuple(saved.shape)}, where this run's model has {tuple(fresh.shape)}"
        return None
    if isinstance(fresh, dict):
        if not isinstance(saved, dict):
            return f"{where} is a {type(saved).__name__}, not a mapping"
        for key, value in fresh.items():
            if key not in saved:
                return f"{where} has no '{key}'"
            problem = state_mismatch(value, saved[key], f"'{key}'" if where == "state" else f"{where}.{key}")
            if problem:
                return problem
    elif isinstance(fresh, (list, tuple)) and isinstance(saved, (list, tuple)) and len(fresh) == len(saved):
        for i, (a, b) in enumerate(zip(fresh, saved)):
            problem = state_mismatch(a, b, f"{where}[{i}]")
            if problem:
                return problem
    return None
