"""Make a killed search's saved state consistent before Ray restores it.

Ray Tune writes its experiment snapshot (the trial list, ``experiment_state-*.json``) and the
searcher's snapshot (``search_gen_state-*.json``: the sample counter and the concurrency
limiter's live trials) to a driver staging folder, then copies the folder to the experiment
directory in a background thread, file by file. A driver killed during that copy (SIGKILL, a
lost head node) can leave the trial list of one snapshot beside the searcher state of another.
Restored as-is, the counter may count trials Ray no longer knows (the search then ends short of
``--num-samples``), or miss trials it does know (the search overshoots), and the limiter may
hold trials that no longer exist or not forward the results of trials it does not list.

:func:`reconcile_snapshot` rewrites the searcher snapshot from the trial list Ray will restore
(the counter is the number of known trials; the limiter's live trials are the known trials that
will run again: unfinished and errored ones, which ``--resume`` restarts) and ends as FAIL every Optuna trial still RUNNING whose Ray trial is unknown to
that list (an orphan: its partial progress is lost; Ray samples a new trial in its place).
Optuna trials carry their Ray trial id (user attribute ``ray_trial_id``, set by the searcher).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

import optuna
import pyarrow.fs
import ray.cloudpickle as cloudpickle
from optuna.trial import TrialState

from hpo.storage import files_in, filesystem
from hpo.trial_status import trial_statuses
from hpo.trusted_state import write_whole
from zsl.errors import UserError

EXPERIMENT_STATE, GENERATOR_STATE = "experiment_state-*.json", "search_gen_state-*.json"
LIMITER_KEY = "name:ConcurrencyLimiter"
RAY_TRIAL_ATTR = "ray_trial_id"
ENDED = ("TERMINATED",)  # the status of trials that will not run again (--resume restarts errored ones)


@dataclass
class Reconciled:
    """What :func:`reconcile_snapshot` changed (empty when the snapshot was consistent)."""

    counter: tuple[int, int] | None = None  # (saved, restored) sample counter
    dropped_live: list[str] = field(default_factory=list)  # limiter entries unknown to the trial list
    added_live: list[str] = field(default_factory=list)  # unfinished known trials the limiter did not list
    orphans: list[int] = field(default_factory=list)  # Optuna trial numbers ended as FAIL

    def __bool__(self) -> bool:
        return bool(self.counter or self.dropped_live or self.added_live or self.orphans)

    def describe(self) -> str:
        parts = []
        if self.counter:
            parts.append(f"searcher counter {self.counter[0]} -> {self.counter[1]} (the trials Ray restores)")
        if self.dropped_live or self.added_live:
            parts.append(f"concurrency limiter: {len(self.dropped_live)} unknown trial(s) dropped, "
                         f"{len(self.added_live)} trial(s) that run again added")
        if self.orphans:
            parts.append(f"Optuna trial(s) {', '.join(map(str, self.orphans))} ended as FAIL (started after the "
                         "last experiment snapshot; Ray samples new trials in their place)")
        return "; ".join(parts)


def reconciled_generator_state(state: dict, trials: dict[str, str]) -> tuple[dict, Reconciled]:
    """The searcher-generator snapshot made consistent with the trial list ``trials`` (trial id -> status).

    Pure: returns a new dict. ``state`` is Ray's SearchGenerator state (``counter``, and the
    ConcurrencyLimiter's state under ``name:ConcurrencyLimiter`` with ``live_trials``).
    """
    new, change = dict(state), Reconciled()
    if new.get("counter") != len(trials):
        change.counter = (new.get("counter"), len(trials))
        new["counter"] = len(trials)
        new["finished"] = False
    limiter = new.get(LIMITER_KEY)
    if limiter is not None:
        live = set(limiter.get("live_trials", ()))
        unfinished = {tid for tid, status in trials.items() if status not in ENDED}
        change.dropped_live = sorted(live - set(trials))
        change.added_live = sorted(unfinished - live)
        if change.dropped_live or change.added_live:
            kept = (live & set(trials)) | unfinished
            new[LIMITER_KEY] = dict(limiter, live_trials=kept, num_unfinished_live_trials=len(kept))
    return new, change


def orphaned_trials(study: optuna.Study, known: set[str]) -> list[optuna.trial.FrozenTrial]:
    """RUNNING Optuna trials whose Ray trial id is not among ``known``."""
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    return [t for t in running if RAY_TRIAL_ATTR in t.user_attrs and t.user_attrs[RAY_TRIAL_ATTR] not in known]


def reconcile_snapshot(experiment_dir: str, study: optuna.Study | None) -> Reconciled:
    """Rewrite the newest searcher snapshot of ``experiment_dir`` (local path or URI) to match its trial list.

    Call it only after hpo.trusted_state.restore_signed_state: it unpickles the searcher snapshot.

    Also ends orphaned Optuna trials as FAIL when ``study`` is given. Returns what changed.
    """
    fs, root = filesystem(experiment_dir)
    names = files_in(experiment_dir)
    state_file, gen_file = _newest(names, root, EXPERIMENT_STATE), _newest(names, root, GENERATOR_STATE)
    if state_file is None:
        return Reconciled()
    trials = saved_trials(fs, state_file)
    change = Reconciled()
    if gen_file is not None:
        with fs.open_input_stream(gen_file) as stream:
            state = cloudpickle.loads(stream.readall())
        new, change = reconciled_generator_state(state, trials)
        if change:
            write_whole(fs, gen_file, cloudpickle.dumps(new))
    if study is not None:
        for trial in orphaned_trials(study, set(trials)):
            study.tell(trial.number, state=TrialState.FAIL)
            change.orphans.append(trial.number)
    return change


def saved_trials(fs: pyarrow.fs.FileSystem, state_file: str) -> dict[str, str]:
    """Trial id -> status of the trials listed in one ``experiment_state-*.json``."""
    with fs.open_input_stream(state_file) as stream:
        raw = stream.readall()
    try:
        return trial_statuses(raw)
    except (ValueError, KeyError, TypeError, IndexError):
        raise UserError(f"--resume: {state_file} is truncated or damaged and Ray cannot restore from it: start "
                        "another search with --name (this one's finished trial folders stay readable) or overwrite "
                        "it with --force.") from None


def _newest(names: list[str], root: str, pattern: str) -> str | None:
    """The file Ray restores from: the greatest name matching ``pattern`` (names end in a timestamp)."""
    matching = fnmatch.filter(names, pattern)
    return f"{root.rstrip('/')}/{max(matching)}" if matching else None
