"""Searcher and scheduler: Optuna TPE (or random) through Ray, with early-stopped trials told PRUNED.

Ray's stock ``OptunaSearch`` tells Optuna that a trial ASHA stopped early is COMPLETE with its last
value, so TPE learns from truncated runs as if they had finished.  :class:`PruningOptunaSearch`
tells Optuna PRUNED for any trial that ended without error before its last epoch (its intermediate
values, reported every epoch, stay recorded), FAIL for errored or non-finite ones.

Under ``--objective pareto`` the study is multi-objective: one objective per dataset, its H at the last
scoring epoch, all maximised (:func:`objective_metrics`). Optuna accepts no intermediate values there
(``Trial.report`` raises NotImplementedError on a multi-objective study), so none are reported; a COMPLETE
trial is told its per-dataset H; a PRUNED one keeps its last per-dataset H as its values (Optuna's ``tell``
refuses values with PRUNED, its storage and ``create_trial`` accept them: see :func:`tell_pruned`) and the
scoring epoch it stopped at (user attribute ``stopped_at_epoch``). The scheduler is then
:class:`hpo.mo_asha.MultiObjectiveASHA` (under ``asha``).
"""

from __future__ import annotations

import logging
import math
import warnings

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch

from hpo.mo_asha import MultiObjectiveASHA
from hpo.reconcile import RAY_TRIAL_ATTR
from hpo.spaces import DefineByRun, Space, published_point

logger = logging.getLogger(__name__)
METRIC, MODE = "objective", "max"
STUDY_METRIC = "objective: H over datasets (validation, last scoring epoch)"  # the study's metric name
EPOCH_ATTR = "epoch"
STOP_EPOCH_ATTR = "stopped_at_epoch"  # user attribute of a PRUNED trial of a multi-objective study


def objective_metrics(datasets: list[str]) -> list[str]:
    """The per-dataset result keys a multi-objective (``pareto``) search optimises: ``<dataset>/H``."""
    return [f"{d}/H" for d in datasets]


def study_metric_names(objectives: list[str] | None) -> list[str]:
    """The study's metric names: the aggregate's, or one per dataset ("sim-AWA2/H (validation, last scoring epoch)")."""
    if not objectives:
        return [STUDY_METRIC]
    return [f"{m} (validation, last scoring epoch)" for m in objectives]


def final_state(result: dict | None, error: bool) -> TrialState:
    """The Optuna state of a finished Ray trial from its last result.

    Errored, result-less or non-finite -> FAIL; stopped before ``epochs_total`` -> PRUNED; else COMPLETE.
    """
    if error or not result or not _finite(result.get(METRIC)):
        return TrialState.FAIL
    if result.get(EPOCH_ATTR, 0) < result.get("epochs_total", 0):
        return TrialState.PRUNED
    return TrialState.COMPLETE


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def objective_values(result: dict | None, objectives: list[str]) -> list[float] | None:
    """The values of ``objectives`` in ``result`` (a multi-objective trial's values), or None unless all are finite."""
    values = [(result or {}).get(m) for m in objectives]
    return [float(v) for v in values] if all(_finite(v) for v in values) else None


def tell_pruned(study: optuna.Study, trial: optuna.Trial, values: list[float]) -> None:
    """End the RUNNING ``trial`` of a multi-objective ``study`` as PRUNED, keeping ``values``.

    Optuna 5.0's ``Study.tell`` refuses values with PRUNED (a single-objective PRUNED trial gets its last
    intermediate value instead, which a multi-objective trial cannot have); FrozenTrial, ``create_trial`` and
    the storages accept them. So this does what ``tell`` does for a PRUNED trial -- the sampler's
    ``after_trial`` hook, then the storage's state-and-values write -- with the values kept. TPE does not use
    them: it ranks the PRUNED trials of a multi-objective study by intermediate values, which they lack.
    """
    frozen = study._storage.get_trial(trial._trial_id)
    study.sampler.after_trial(study, frozen, TrialState.PRUNED, values)
    study._storage.set_trial_state_values(frozen._trial_id, TrialState.PRUNED, values)


def per_dataset_scores(result: dict | None) -> dict:
    """Each dataset's scoring-stage S/U/H/ZSL of a trial's last result (no prefix stage, no losses)."""
    keys = ("S", "U", "H", "ZSL")
    return {k: float(v) for k, v in (result or {}).items()
            if k.count("/") == 1 and k.rsplit("/", 1)[1] in keys and _finite(v)}


class PruningOptunaSearch(OptunaSearch):
    """OptunaSearch whose early-stopped trials reach Optuna as PRUNED (see module docstring).

    Each Optuna trial carries its Ray trial id (user attribute ``ray_trial_id``), so that a searcher
    restored from a snapshot older than Ray's trial list finds the Optuna trial of a Ray trial it
    did not know (:meth:`optuna_trial`), and :mod:`hpo.reconcile` can tell orphans apart.

    ``objectives`` (result keys, e.g. :func:`objective_metrics`; needs ``space``) makes the study
    multi-objective through Ray's own route: OptunaSearch with a metric list and a mode list creates it
    with one maximised direction per key (Ray 2.60). The searcher then shows Ray ``METRIC`` (the mean H,
    the Tuner's metric too) as its metric: Ray raises when a reported row lacks a searcher's metric, and the
    rows of a prefix stage carry no ``<dataset>/H`` (hpo.trainable). The study's values are read from a
    trial's last result when it ends (:meth:`on_trial_complete`); see the module docstring.
    """

    def __init__(self, *args, objectives: list[str] | None = None, **kwargs):
        if objectives:
            if not kwargs.get("space"):
                raise ValueError("a multi-objective PruningOptunaSearch needs its space at construction")
            kwargs.update(metric=list(objectives), mode=[MODE] * len(objectives))
        super().__init__(*args, **kwargs)
        self.objectives = list(objectives) if objectives else None
        if objectives:  # the study is made: Ray's row checks and the ConcurrencyLimiter see the mean H
            self._metric, self._mode = METRIC, MODE

    def suggest(self, trial_id: str) -> dict | None:
        params = super().suggest(trial_id)
        if trial_id in self._ot_trials:
            self._ot_trials[trial_id].set_user_attr(RAY_TRIAL_ATTR, trial_id)
        return params

    def optuna_trial(self, trial_id: str) -> optuna.Trial | None:
        """The live Optuna trial of a Ray trial, looked up in the study when this searcher's snapshot lacks it."""
        if trial_id not in self._ot_trials:
            running = self._ot_study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            match = [t for t in running if t.user_attrs.get(RAY_TRIAL_ATTR) == trial_id]
            if not match:
                return None
            self._ot_trials[trial_id] = optuna.Trial(self._ot_study, match[0]._trial_id)
        return self._ot_trials[trial_id]

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        """Record the trial's objective at this epoch as an Optuna intermediate value (once per step); nothing
        for a multi-objective study (Optuna takes no intermediate values there)."""
        if self.__dict__.get("objectives"):
            return
        steps = self.__dict__.setdefault("_reported_steps", {}).setdefault(trial_id, set())
        step = result.get(EPOCH_ATTR, result.get("training_iteration"))  # scoring-stage epochs (hpo.trainable)
        value = result.get(METRIC)
        if step is None or step in steps or not _finite(value):
            return
        ot_trial = self.optuna_trial(trial_id)
        if ot_trial is None:
            return
        try:
            ot_trial.report(float(value), step)
        except UpdateFinishedTrialError:  # ended in Optuna: a resumed errored trial (kept for its retry record)
            self.__dict__.setdefault("_retry_values", {}).setdefault(trial_id, {})[step] = float(value)
        steps.add(step)

    def restore(self, checkpoint_path: str) -> None:
        """Ray's restore of the pickled searcher, then: the study re-opened at ``study_url`` when the driver set
        it (the experiment folder was moved or copied: the pickle names the study at its old place), and
        the live trials the study does not hold dropped (they cannot be told; should not happen, as the
        study reaches remote storage before each signed snapshot)."""
        url = self.__dict__.get("study_url")
        super().restore(checkpoint_path)
        if url:
            self.study_url = url
            self._storage = optuna.storages.RDBStorage(url)
            self._ot_study = optuna.load_study(study_name=self._study_name, storage=self._storage,
                                               sampler=self._ot_study.sampler, pruner=self._ot_study.pruner)
        known = {t._trial_id for t in self._ot_study.get_trials(deepcopy=False)}
        live = {}
        for tid, trial in self._ot_trials.items():
            if trial._trial_id in known:
                live[tid] = optuna.Trial(self._ot_study, trial._trial_id) if url else trial
            else:
                logger.warning("Ray trial %s has no Optuna trial in the restored study: its results are not told", tid)
        self._ot_trials = live

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        ot_trial = self.optuna_trial(trial_id)
        if ot_trial is None:
            return
        state, objectives = final_state(result, error), self.__dict__.get("objectives")
        if objectives and state != TrialState.FAIL and objective_values(result, objectives) is None:
            state = TrialState.FAIL
        if state in (TrialState.PRUNED, TrialState.COMPLETE):
            # Ray may call on_trial_complete, not on_trial_result, with a trial's last result (the one that made
            # the scheduler stop it, or the last one of a trial that returned in the same controller step):
            # record it (once per step); a PRUNED trial's value is its last intermediate value.
            self.on_trial_result(trial_id, result)
        told = self._ot_study._storage.get_trial(ot_trial._trial_id)
        retried = self.__dict__.setdefault("_retried", set())
        if told.state == TrialState.FAIL and state != TrialState.FAIL and trial_id not in retried:
            self._record_retry(told, trial_id, result, state)
            retried.add(trial_id)
        elif told.state.is_finished():  # told before a driver crash (the searcher snapshot is older)
            logger.info("Optuna already holds the end of trial %s (%s)", trial_id, told.state.name)
        else:
            for key, value in per_dataset_scores(result).items():  # shown per trial in optuna-dashboard
                ot_trial.set_user_attr(key, value)
            if objectives:
                self._tell_objectives(ot_trial, result, state)
            else:
                self._ot_study.tell(ot_trial, result[METRIC] if state == TrialState.COMPLETE else None, state=state)
        self._completed_trials.add(trial_id)

    def _tell_objectives(self, ot_trial: optuna.Trial, result: dict | None, state: TrialState) -> None:
        """End a trial of a multi-objective study: COMPLETE and PRUNED with their per-dataset values (a PRUNED one
        with the epoch it stopped at as a user attribute), FAIL without."""
        values = objective_values(result, self.objectives) if state != TrialState.FAIL else None
        if state == TrialState.PRUNED:
            ot_trial.set_user_attr(STOP_EPOCH_ATTR, result[EPOCH_ATTR])
            tell_pruned(self._ot_study, ot_trial, values)
        else:
            self._ot_study.tell(ot_trial, values, state=state)

    def _record_retry(self, failed: optuna.trial.FrozenTrial, trial_id: str, result: dict, state: TrialState) -> None:
        """A trial that errored, resumed (``--resume``) and then ended well: its Optuna trial is FAIL and
        cannot change, so the new outcome is added as a trial of its own with the same params (in a
        multi-objective study: its per-dataset values, scores and, when PRUNED, stop epoch)."""
        if self.__dict__.get("objectives"):
            attrs = {**failed.user_attrs, **per_dataset_scores(result), "retry_of": failed.number}
            if state == TrialState.PRUNED:
                attrs[STOP_EPOCH_ATTR] = result[EPOCH_ATTR]
            self._ot_study.add_trial(optuna.trial.create_trial(
                params=failed.params, distributions=failed.distributions, state=state, user_attrs=attrs,
                values=objective_values(result, self.objectives)))
            return
        values = {**failed.intermediate_values, **self.__dict__.get("_retry_values", {}).pop(trial_id, {})}
        value = result[METRIC] if state == TrialState.COMPLETE else None
        self._ot_study.add_trial(optuna.trial.create_trial(
            params=failed.params, distributions=failed.distributions, value=value, state=state,
            intermediate_values=values, user_attrs={**failed.user_attrs, "retry_of": failed.number}))


def make_sampler(searcher: str, seed: int, num_samples: int) -> optuna.samplers.BaseSampler:
    """Seeded multivariate TPE (startup trials: a third of the budget, 3..10) or a seeded random sampler."""
    if searcher == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    startup = max(3, min(10, num_samples // 3))
    with warnings.catch_warnings():  # multivariate/group/constant_liar are marked experimental by Optuna
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, n_startup_trials=startup,
                                          constant_liar=True)


def make_search_alg(space: Space, *, searcher: str, seed: int, num_samples: int, storage_url: str,
                    study_name: str, max_concurrent: int, objectives: list[str] | None = None) -> ConcurrencyLimiter:
    """The searcher: PruningOptunaSearch over the space (published point first) under a ConcurrencyLimiter;
    ``objectives`` (``pareto``): a multi-objective study over those result keys (TPE handles several objectives)."""
    storage = optuna.storages.RDBStorage(storage_url)
    published = published_point(space)
    search = PruningOptunaSearch(
        space=DefineByRun(space), metric=METRIC, mode=MODE, objectives=objectives,
        points_to_evaluate=[published] if published else None,
        sampler=make_sampler(searcher, seed, num_samples), study_name=study_name, storage=storage,
    )
    with warnings.catch_warnings():  # set_metric_names is marked experimental by Optuna
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        search._ot_study.set_metric_names(study_metric_names(objectives))
    return ConcurrencyLimiter(search, max_concurrent=max_concurrent)


def make_scheduler(kind: str, *, max_t: int, grace_period: int, reduction_factor: float,
                   objectives: list[str] | None = None):
    """ASHA over the ``epoch`` counter (scoring-stage epochs) or FIFO (no early stopping); with ``objectives``
    (``pareto``), ``asha`` is the multi-objective ASHA of hpo.mo_asha over those result keys, same rungs."""
    if kind == "fifo":
        return FIFOScheduler()
    if objectives:
        return MultiObjectiveASHA(objectives, time_attr=EPOCH_ATTR, max_t=max_t, grace_period=grace_period,
                                  reduction_factor=reduction_factor)
    return ASHAScheduler(time_attr=EPOCH_ATTR, max_t=max_t, grace_period=grace_period,
                         reduction_factor=reduction_factor)
