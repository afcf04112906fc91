"""A paper-scale rehearsal of a search: the real shapes through the whole search path, in minutes on a CPU.

``python hpo/search.py --space d2sc --rehearse`` runs the space's ``rehearse`` profile (for D2SC: the
paper preset's 4,096-wide nets, real class counts, 2,048-d simulated features at full scale, the
real two-stage epoch structure with one iteration per epoch and a few epochs per stage) through
the trainable, ASHA, the epoch cap (``--max-epochs`` below the profile's epochs, so every stage is
shortened), checkpoints, and the final evaluation of the best setting.  Then it checks what the
search did (:func:`check`) and prints the memory and seconds it saw per dataset and stage.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

from hpo.experiment import SearchOptions
from zsl.errors import UserError

SIM_FULL = ["sim-AWA2", "sim-CUB", "sim-SUN"]
MEMORY_BOUND_GIB = 4.0  # transient host memory of one evaluation


def rehearsal_options(opts: SearchOptions) -> SearchOptions:
    """``opts`` made a rehearsal: profile ``rehearse``, simulated full-scale data unless datasets are
    given, 3 trials one at a time, ASHA from the first scoring epoch, and a cap one epoch below the
    profile's run length (the cap is part of what is rehearsed)."""
    if "://" in opts.storage_path:
        raise UserError("--rehearse runs on local storage: drop --storage-path or pass a local folder.")
    return replace(opts, profile="rehearse", datasets=opts.datasets or SIM_FULL, scale="full",
                   num_samples=3, max_concurrent=1, grace_period=1, scheduler="asha", searcher="tpe",
                   max_epochs=opts.max_epochs or 4, name=opts.name or f"{Path(opts.space).stem}-rehearsal")


@dataclass
class Finding:
    """What a rehearsal saw: failures (each one sentence), rung judgements and per-stage figures."""

    failures: list
    judged: list        # (trial, rung epoch, stage of the row ASHA judged there, "stopped" | "continued")
    figures: dict       # (dataset, stage) -> {"train_s": [...], "eval_s": [...], "eval_gib": [...]}


def rung_epochs(grace_period: int, reduction_factor: float, max_epoch: int) -> list[int]:
    """ASHA's milestones grace * rf^k that a run of ``max_epoch`` scoring epochs reaches."""
    rungs, r = [], float(grace_period)
    while r <= max_epoch:
        rungs.append(int(r))
        r *= reduction_factor
    return rungs


def check(trials: list, datasets: list[str], rungs: list[int] = (1,), bound_gib: float = MEMORY_BOUND_GIB) -> Finding:
    """Check a rehearsal's trials (hpo.report.TrialRecord): no trial errored; every prefix-stage row has
    epoch 0 and no objective; every scoring row has an epoch >= 1 and a finite objective; the row ASHA
    judged at each rung epoch (``rungs``) and the last row of a trial stopped early are scoring rows;
    every evaluation stayed under the bound."""
    failures, judged, figures = [], [], {}
    for t in trials:
        if t.errored:
            failures.append(f"trial {t.name} errored (see its error.txt).")
        for row in t.rows:
            stage = row.get("stage")
            objective = row.get("objective")
            if stage == "prefix" and (row.get("epoch") != 0 or _finite(objective)):
                failures.append(f"trial {t.name}: a prefix-stage row has epoch {row.get('epoch')} and objective "
                                f"{objective}: the scheduler or Optuna could judge the first stage.")
            if stage == "scoring" and (row.get("epoch", 0) < 1 or not _finite(objective)):
                failures.append(f"trial {t.name}: a scoring row has epoch {row.get('epoch')} and objective {objective}.")
            _collect(row, datasets, figures)
            for key, value in row.items():
                if key.endswith("/eval_transient_gib") and value > bound_gib:
                    failures.append(f"trial {t.name}: {key} = {value:.2f} GiB exceeds {bound_gib} GiB.")
        last = t.last
        stopped = bool(last) and not t.errored and last.get("epoch", 0) < last.get("epochs_total", 0)
        for rung in rungs:
            row = next((r for r in t.rows if r.get("epoch") == rung), None)
            if row is not None:
                judged.append((t.name, rung, row.get("stage"), "stopped" if stopped and row is last else "continued"))
        if stopped and last.get("stage") != "scoring":
            failures.append(f"trial {t.name} was stopped on a {last.get('stage')} row.")
    if not trials:
        failures.append("the rehearsal produced no trials.")
    return Finding(failures, judged, figures)


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _collect(row: dict, datasets: list[str], figures: dict) -> None:
    """Add a row's seconds and memory to ``figures`` under (dataset, stage): a prefix row's keys are
    ``<STAGE>/<dataset>/...``, a scoring row's ``<dataset>/...`` (the scoring stage)."""
    prefix_row = row.get("stage") == "prefix"
    for key, train in row.items():
        parts = key.split("/")
        if parts[-2:] != ["loss", "seconds"] or len(parts) != (4 if prefix_row else 3):
            continue
        stage, name = (parts[0], parts[1]) if prefix_row else ("scoring", parts[0])
        if name not in datasets:
            continue
        head = key[: -len("/loss/seconds")]
        fig = figures.setdefault((name, stage), {"train_s": [], "eval_s": [], "eval_gib": []})
        fig["train_s"].append(train)
        for metric, out in (("eval_seconds", "eval_s"), ("eval_transient_gib", "eval_gib")):
            if f"{head}/{metric}" in row:
                fig[out].append(row[f"{head}/{metric}"])


def render(finding: Finding) -> str:
    """The rehearsal's summary: per dataset and stage, seconds and memory; rung judgements; the verdict."""
    lines = ["rehearsal: per dataset and stage (train seconds per epoch, evaluation seconds, evaluation transient GiB, max)"]
    for (name, stage), fig in sorted(finding.figures.items()):
        mean = lambda xs: sum(xs) / len(xs) if xs else float("nan")  # noqa: E731
        gib = max(fig["eval_gib"]) if fig["eval_gib"] else float("nan")
        lines.append(f"  {name:9s} {stage:8s} train {mean(fig['train_s']):7.1f} s  eval {mean(fig['eval_s']):7.1f} s  "
                     f"memory {gib:5.2f} GiB  ({len(fig['train_s'])} epochs)")
    for trial, epoch, stage, outcome in finding.judged:
        short = trial.split("_")[1] if trial.count("_") >= 2 else trial  # Ray's trainable_<id>_<n>_<params>
        lines.append(f"  ASHA rung at scoring epoch {epoch}: trial {short} judged on a {stage} row ({outcome})")
    lines.append("rehearsal passed" if not finding.failures else "rehearsal FAILED:\n  " + "\n  ".join(finding.failures))
    return "\n".join(lines)
