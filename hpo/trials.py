"""A search's trials as read back from its folder: params, per-epoch results and Ray's status of each.

The report, the final evaluation (which needs the best trials) and the rehearsal read trials through here.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from hpo.ranking import is_finished, rank_key
from hpo.storage import fetch_tree, is_remote, local_path
from hpo.trial_status import ray_trial_status
from zsl.errors import UserError


@dataclass
class TrialRecord:
    """One trial as read back from its folder: params, per-epoch results, and Ray's final status of it.

    ``status`` is Ray's own record (TERMINATED, ERROR, RUNNING, PAUSED, PENDING; None when the experiment has
    no readable record): an error file left by an attempt Ray later recovered from does not make it errored.
    """

    name: str
    config: dict
    rows: list
    status: str | None
    error_file: bool = False

    @property
    def last(self) -> dict:
        return self.rows[-1] if self.rows else {}

    @property
    def errored(self) -> bool:
        return self.status == "ERROR" if self.status is not None else self.error_file

    @property
    def diverged(self) -> bool:
        return bool(self.last.get("diverged"))

    @property
    def finished(self) -> bool:
        return not self.errored and self.status in (None, "TERMINATED") and is_finished(self.last)

    def outcome(self) -> str:
        if self.errored:
            return "errored"
        if self.diverged:
            return "diverged"
        if self.status in ("RUNNING", "PAUSED", "PENDING"):
            return "interrupted"
        return "completed" if self.finished else "stopped early"


OUTCOMES = ("completed", "stopped early", "diverged", "interrupted", "errored")


def read_trials(exp: Path) -> list[TrialRecord]:
    """Every trial folder of a Ray experiment (params.json, result.json) with Ray's status of it."""
    statuses = ray_trial_status(exp)
    trials = []
    for folder in sorted(p for p in exp.iterdir() if p.is_dir() and (p / "params.json").exists()):
        rows = []
        if (folder / "result.json").exists():
            text = _trial_file(folder / "result.json").splitlines()
            rows = [_json_in(folder / "result.json", line, dict, f"line {i}") for i, line in enumerate(text, 1)
                    if line.strip()]
        trial_id = rows[-1].get("trial_id") if rows else None
        status = statuses.get(trial_id) if trial_id else next(
            (v for k, v in statuses.items() if f"_{k}_" in folder.name), None)
        error_file = (folder / "error.txt").exists() or (folder / "error.pkl").exists()
        params = _json_in(folder / "params.json", _trial_file(folder / "params.json"), dict)
        trials.append(TrialRecord(folder.name, params, rows, status if statuses else None, error_file))
    return trials


JSON_KINDS = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "true/false",
              type(None): "null"}


def _trial_file(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{path} cannot be read ({getattr(err, 'strerror', None) or err}): restore it, or move "
                        "that trial folder out of the experiment.") from None


def _json_in(path: Path, text: str, kind: type, where: str = "") -> dict:
    """The JSON value ``text`` (from ``path``, at ``where``), which must be a ``kind``; UserError if it is not."""
    at = f" at {where}" if where else ""
    try:
        value = json.loads(text)
    except ValueError:
        value = None
        problem = "is empty" if not text.strip() else f"is truncated or damaged{at}"
    else:
        problem = None if isinstance(value, kind) else f"holds {JSON_KINDS.get(type(value), 'a value')}{at}, not an object"
    if problem:
        raise UserError(f"{path} {problem}: a trial's files are written by Ray; restore it, or move that trial "
                        "folder out of the experiment.")
    return value


def leaderboard(trials: list[TrialRecord], datasets: list[str], k: int) -> list[TrialRecord]:
    """Top-k trials with a finite objective, best first (hpo.ranking: full runs first, then last objective)."""
    scored = [t for t in trials if rank_key(t.last, t.finished)[1]]
    return sorted(scored, key=lambda t: rank_key(t.last, t.finished), reverse=True)[:k]


def best_per_dataset(trials: list[TrialRecord], datasets: list[str]) -> dict:
    """{dataset: trial} best on that dataset's H at the last epoch (hpo.ranking, with the dataset's H)."""
    scored = [t for t in trials if t.rows]
    return {d: max(scored, key=lambda t: rank_key(t.last, t.finished, f"{d}/H")) for d in datasets} if scored else {}


@contextlib.contextmanager
def local_experiment(exp_dir: str, names: tuple[str, ...]) -> Iterator[Path]:
    """The experiment ``exp_dir`` as a local folder: itself, or (a URI such as s3://...) a temporary copy of its
    files called one of ``names``, at any depth, removed after the block. UserError when nothing is there."""
    if not is_remote(exp_dir):
        yield local_path(exp_dir)
        return
    name = exp_dir.rstrip("/").rsplit("/", 1)[-1]
    with tempfile.TemporaryDirectory(prefix="zsl-hpo-") as tmp:
        local = Path(tmp) / name
        try:
            fetched = fetch_tree(exp_dir, local, names)
        except OSError as err:
            raise UserError(f"{exp_dir} cannot be read ({err}): check the URI and the storage credentials.") from None
        if not fetched:
            raise UserError(f"{exp_dir} holds no zsl-hpo experiment files: pass the experiment URI printed by hpo/search.py.")
        yield local
