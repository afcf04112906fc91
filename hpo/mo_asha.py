"""Asynchronous multi-objective successive halving (in the spirit of MO-ASHA, Schmucker et al. 2021) for Ray Tune.

Ray's schedulers judge one metric; ``--objective pareto`` judges a trial by its vector of per-dataset H.

Rungs sit where Ray's ASHAScheduler (one bracket) puts them: at ``grace_period * reduction_factor**k``
scoring-stage epochs (``time_attr``, default ``epoch``), k = 0, 1, ... up to ``max_t``. When a trial first
reports at or past a rung (its highest one reached), its vector is recorded there, in arrival order, and the
rung decides at once (asynchronously: it never waits for other trials):

* with n vectors recorded at the rung (the trial's own included), the trial continues only if it is among
  the ceil(n / reduction_factor) best of them, else it is stopped (STOP);
* "best" is :func:`hpo.pareto.rank_order`: non-dominated sorting (front index, lower first), then crowding
  distance inside the front (larger first), then the mean of the vector (larger first), then arrival order
  at the rung (earlier first). The decision depends only on the vectors recorded so far and their order, so
  it is deterministic and reproducible from :attr:`MultiObjectiveASHA.decisions`.

So the first trial at a rung always continues (ceil(1/rf) = 1), as in ASHA. Rows are ignored (CONTINUE,
nothing recorded) when the time attribute is missing, non-finite or <= 0 (the prefix stage reports epoch 0
and objective NaN, see hpo.trainable), when any metric is missing or non-finite, or when the row marks a
diverged trial. A trial at or past ``max_t`` is stopped, as ASHA does. Decisions are not judged again
after a trial has ended; a trial's last row, if it reaches a new rung, is recorded there (it informs later
decisions).
"""

from __future__ import annotations

import logging
import math
import pickle
from collections.abc import Sequence

from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from hpo.pareto import Point, rank_order

logger = logging.getLogger(__name__)


def rung_milestones(grace_period: float, reduction_factor: float, max_t: float) -> list[float]:
    """The rungs, ascending: ``grace_period * reduction_factor**k`` for the k Ray's ASHAScheduler (one bracket,
    Ray 2.60) uses, i.e. k < int(log(max_t / grace_period) / log(reduction_factor) + 1)."""
    count = int(math.log(max_t / grace_period) / math.log(reduction_factor) + 1)
    return [grace_period * reduction_factor ** k for k in range(count)]


def keep_count(n: int, reduction_factor: float) -> int:
    """How many of the n vectors of a rung continue: ceil(n / reduction_factor) (n / rf rounded to 9 decimals
    first, so that a quotient meant to be whole is not pushed up by floating-point error)."""
    return math.ceil(round(n / reduction_factor, 9))


def survivors(points: Sequence[Point], reduction_factor: float) -> list[int]:
    """Indices (best first) of the keep_count(n) best of the n ``points`` of a rung (hpo.pareto.rank_order)."""
    return rank_order(points)[:keep_count(len(points), reduction_factor)]


def rung_decision(points: Sequence[Point], index: int, reduction_factor: float) -> bool:
    """Whether the point ``points[index]`` (the trial that just reached the rung) continues: it is among the
    :func:`survivors` of every point recorded at the rung, itself included."""
    return index in survivors(points, reduction_factor)


class MultiObjectiveASHA(FIFOScheduler):
    """Ray Tune scheduler: MO-ASHA over ``metrics`` (all maximised; see the module docstring).

    The Tuner's own metric (``TuneConfig(metric=...)``, passed through :meth:`set_search_properties`) is
    accepted and kept as :attr:`metric` -- Ray checks that every reported row holds it -- but the rungs
    judge ``metrics`` only. :attr:`decisions` lists every rung record in order: dicts with ``trial_id``,
    ``rung``, ``epoch``, ``values`` (the vector, in ``metrics`` order), ``position`` (0-based arrival index at
    the rung), ``kept`` (the rung's verdict) and ``action`` (``CONTINUE``, ``STOP``, or ``ENDED`` for a
    trial's last row recorded after it ended).
    """

    def __init__(self, metrics: Sequence[str], *, time_attr: str = "epoch", max_t: float = 100,
                 grace_period: float = 1, reduction_factor: float = 3):
        if len(metrics) < 1 or not grace_period > 0 or not reduction_factor > 1 or not max_t >= grace_period:
            raise ValueError("MultiObjectiveASHA needs metrics, grace_period > 0, reduction_factor > 1 and "
                             "max_t >= grace_period")
        super().__init__()
        self.metrics, self.time_attr = tuple(metrics), time_attr
        self.max_t, self.reduction_factor = max_t, reduction_factor
        self.rungs: dict[float, dict[str, tuple[float, ...]]] = {
            m: {} for m in rung_milestones(grace_period, reduction_factor, max_t)}  # rung -> {trial: vector}, arrival order
        self.decisions: list[dict] = []

    def set_search_properties(self, metric: str | None, mode: str | None, **spec) -> bool:
        """Keep the Tuner's metric for Ray's row checks (the rungs use ``self.metrics``); always accepted."""
        if metric:
            self._metric = metric
        return True

    def judged(self, result: dict) -> tuple[float, tuple[float, ...]] | None:
        """(time, vector) of a row the rungs may judge, or None for a row they ignore (module docstring)."""
        t = result.get(self.time_attr)
        values = [result.get(m) for m in self.metrics]
        if result.get("diverged") or not all(_finite(v) for v in [t, *values]) or t <= 0:
            return None
        return float(t), tuple(float(v) for v in values)

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        row = self.judged(result)
        if row is None:
            return TrialScheduler.CONTINUE
        if row[0] >= self.max_t:
            return TrialScheduler.STOP
        return self._record(trial.trial_id, *row, ended=False)

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        row = self.judged(result or {})
        if row is not None and row[0] < self.max_t:
            self._record(trial.trial_id, *row, ended=True)

    def _record(self, trial_id: str, t: float, vector: tuple[float, ...], ended: bool) -> str:
        """Record ``vector`` at the highest rung <= ``t`` (once per trial and rung) and decide there."""
        reached = [m for m in self.rungs if m <= t]
        if not reached or trial_id in self.rungs[reached[-1]]:
            return TrialScheduler.CONTINUE
        rung = self.rungs[reached[-1]]
        rung[trial_id] = vector
        kept = rung_decision(list(rung.values()), len(rung) - 1, self.reduction_factor)
        action = "ENDED" if ended else TrialScheduler.CONTINUE if kept else TrialScheduler.STOP
        self.decisions.append({"trial_id": trial_id, "rung": reached[-1], "epoch": t, "values": vector,
                               "position": len(rung) - 1, "kept": kept, "action": action})
        logger.debug("MO-ASHA rung %g: trial %s %s (%d recorded, keep %d)", reached[-1], trial_id, action,
                     len(rung), keep_count(len(rung), self.reduction_factor))
        return TrialScheduler.STOP if action == TrialScheduler.STOP else TrialScheduler.CONTINUE

    def debug_string(self) -> str:
        stopped = sum(d["action"] == TrialScheduler.STOP for d in self.decisions)
        rungs = " | ".join(f"rung {m:g}: {len(r)}" for m, r in self.rungs.items() if r)
        return f"Using multi-objective ASHA over {len(self.metrics)} metrics: {stopped} stopped. {rungs}"

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as fh:
            pickle.dump(self.__dict__, fh)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as fh:
            self.__dict__.update(pickle.load(fh))


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
