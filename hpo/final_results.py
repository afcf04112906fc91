"""The final evaluation's results, read back and summarised: per setting, dataset and seed, the honest test
scores and what published practice would have reported; seed statistics and the paired gaps the report prints.

Pure functions over numbers (``mean_sd``, ``paired_gap``, ``objective_by_seed``) are tested against hand
computations; :func:`read_final` turns ``EXPERIMENT/final/`` (hpo.final_job) into :class:`FinalResults`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from hpo.final_job import FINAL_NAME, PLAN_FILE, read_plan, run_key
from hpo.trials import read_trials

CONFIDENCE = 0.95


@dataclass
class SeedResult:
    """One run of the final evaluation (one setting's params on one dataset with one seed).

    ``honest``: S/U/H/ZSL on test at the last epoch (protocol final; None when the run did not finish).
    The practice numbers (None without the inflation scores): ``clf`` = last epoch, best classifier epoch on
    test, main view; ``view`` = the same with the best view; ``reported`` = the largest ``view`` over the
    scoring-stage epochs (the number published practice reports) and ``reported_epoch`` where it was.
    """

    honest: dict | None
    outcome: str
    clf: float | None = None
    view: float | None = None
    reported: float | None = None
    reported_epoch: int | None = None
    provenance: dict = field(default_factory=dict)


@dataclass
class FinalResults:
    """{setting: {dataset: {seed: SeedResult}}} with the plan that made them."""

    plan: dict
    by_setting: dict

    @property
    def seeds(self) -> list[int]:
        return list(self.plan["seeds"])

    def h(self, setting: str, dataset: str) -> dict:
        """{seed: honest test H} of the finished runs of ``setting`` on ``dataset``."""
        runs = self.by_setting.get(setting, {}).get(dataset, {})
        return {s: r.honest["H"] for s, r in runs.items() if r.honest is not None}


def read_final(exp: Path) -> FinalResults | None:
    """The final evaluation stored in ``exp/final`` (None when there is none)."""
    folder = exp / FINAL_NAME
    plan = read_plan(str(folder)) if (folder / PLAN_FILE).is_file() else None
    if plan is None:
        return None
    by_key = {}
    for trial in read_trials(folder):
        run = trial.config.get("run", {})
        by_key[run_key(run)] = seed_result(trial.rows, trial.outcome())
    by_setting: dict = {}
    for run in plan["runs"]:
        result = by_key.get(run_key(run), SeedResult(None, "not run"))
        for name in run["settings"]:
            by_setting.setdefault(name, {}).setdefault(run["dataset"], {})[run["seed"]] = result
    return FinalResults(plan, by_setting)


def seed_result(rows: list[dict], outcome: str) -> SeedResult:
    """A run's SeedResult from its per-epoch rows (hpo.final_job.final_trainable)."""
    last = rows[-1] if rows else {}
    honest = {k: float(last[k]) for k in ("S", "U", "H", "ZSL")} if "H" in last and not last.get("diverged") else None
    scored = [r for r in rows if _finite(r.get("practice/H_view"))]
    result = SeedResult(honest, outcome if honest is not None or outcome != "completed" else "no test score",
                        provenance=last.get("provenance") or {})
    if scored and honest is not None:
        best = max(scored, key=lambda r: r["practice/H_view"])
        result.clf, result.view = float(scored[-1]["practice/H"]), float(scored[-1]["practice/H_view"])
        result.reported, result.reported_epoch = float(best["practice/H_view"]), int(best["epoch"])
    return result


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def mean_sd(values: list[float]) -> tuple[float, float, int]:
    """(mean, sample sd -- 0 for one value, count) of ``values``; (nan, nan, 0) for none."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan, 0
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return mean, sd, n


def paired_gap(own: dict, shared: dict, confidence: float = CONFIDENCE) -> tuple[float, float, float, int]:
    """The tunability gap ``own - shared`` paired over the seeds both have: (mean, low, high, pairs).

    The interval is Student's t on the paired differences: mean ± t_{(1+confidence)/2, n-1} · sd / sqrt(n)
    (nan bounds below 2 pairs).
    """
    from scipy.stats import t

    diffs = [own[s] - shared[s] for s in sorted(set(own) & set(shared))]
    mean, sd, n = mean_sd(diffs)
    if n < 2:
        return mean, math.nan, math.nan, n
    half = float(t.ppf((1 + confidence) / 2, n - 1)) * sd / math.sqrt(n)
    return mean, mean - half, mean + half, n


def objective_by_seed(per_dataset: dict, how: str) -> dict:
    """{seed: objective} of one setting: per seed, the mean (or min) over datasets of that seed's H; only seeds
    every dataset has. ``per_dataset``: {dataset: {seed: H}}."""
    from hpo.trainable import aggregate

    seeds = set.intersection(*(set(v) for v in per_dataset.values())) if per_dataset else set()
    return {s: aggregate([per_dataset[d][s] for d in per_dataset], "min" if how == "min" else "mean")
            for s in sorted(seeds)}
