"""The one definition of "best trial", used by the end-of-search summary, the report's leaderboard,
``best_setting.yaml`` and the per-dataset bests.

A trial is scored by its objective *at its last reported epoch*: the setting a search picks is retrained
for its whole budget and scored at its last epoch (the ``final`` protocol), never at an epoch chosen by
looking at scores. Trials that ran their whole budget rank before trials the scheduler stopped early
(a shorter run's score is not comparable); a trial without a finite score (errored, diverged) ranks
last. Optuna is told the same value: COMPLETE trials their last objective, PRUNED ones their last
intermediate value. The per-trial best-so-far (``best_objective``) is reported for TensorBoard only.
"""

from __future__ import annotations

import math


def rank_key(last: dict, finished: bool, metric: str = "objective") -> tuple:
    """Sort key, greatest best: (ran its whole budget, finite last ``metric``, its value)."""
    value = last.get(metric)
    finite = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return (bool(finished), finite, value if finite else -math.inf)


def is_finished(last: dict) -> bool:
    """Whether a trial's last row shows a run of its whole budget that did not diverge."""
    return bool(last) and not last.get("diverged") and last.get("epoch", 0) >= last.get("epochs_total", math.inf)
