"""What a running search prints at the default verbosity: one line per ended trial, and each new best.

Ray's own tables (verbose >= 2) show only some columns of one dataset and call a trial's last value its
best; at verbosity 1 the search prints through this Tune callback instead:

    [3/8] trial 7f3a_00002 stopped early by the scheduler at epoch 2/6: objective 11.20 (sim-AWA2 H 10.1, sim-CUB H 12.3) | best so far 24.70 (trial 7f3a_00000)

"best so far" is the highest objective any trial has reported (it never goes down); the trial ranked best at
the end (hpo.ranking) is printed by the end-of-search summary.
"""

from __future__ import annotations

import math

from ray import tune

from hpo.ranking import is_finished


def outcome(result: dict, errored: bool = False) -> str:
    """How a trial ended, from its last result."""
    if errored:
        return "errored"
    if result.get("diverged"):
        return "diverged (not retried)"
    return "completed" if is_finished(result) else "stopped early by the scheduler"


def trial_line(result: dict, datasets: list[str], ended: str) -> str:
    """``<ended> at epoch e/T: objective o (<dataset> H h, ...)`` for one trial's last result."""
    epoch, total = result.get("epoch", 0), result.get("epochs_total", 0)
    objective = result.get("objective", math.nan)
    scores = ", ".join(f"{d} H {result[f'{d}/H']:.1f}" for d in datasets if f"{d}/H" in result)
    text = f"{ended} at epoch {epoch}/{total}: objective {objective:.2f}"
    return text + (f" ({scores})" if scores else "")


class ProgressLines(tune.Callback):
    """Prints one line per ended trial (outcome, epoch, objective, each dataset's H, best so far)."""

    def __init__(self, datasets: list[str], total: int):
        self.datasets, self.total = list(datasets), total
        self.ended, self.best, self.best_trial = 0, -math.inf, None

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info) -> None:
        value = result.get("objective")
        if isinstance(value, (int, float)) and math.isfinite(value) and value > self.best:
            self.best, self.best_trial = value, trial.trial_id

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        self._print(trial, outcome(trial.last_result or {}))

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        self._print(trial, outcome(trial.last_result or {}, errored=True))

    def _print(self, trial, ended: str) -> None:
        self.ended += 1
        best = f"{self.best:.2f} (trial {self.best_trial})" if self.best_trial else "none yet"
        print(f"[{self.ended}/{self.total}] trial {trial.trial_id} {trial_line(trial.last_result or {}, self.datasets, ended)}"
              f" | best so far {best}", flush=True)
