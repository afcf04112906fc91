"""Nothing lost, nobody in: --force confined to the project's own folders, resume that trusts only signed
state, one lock per experiment, moved/copied experiments, recovered trials reported as they ended,
divergence not retried, a full disk named as such. Real local Ray wherever a search runs."""

import base64
import builtins
import dataclasses
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from ray import cloudpickle

from hpo.experiment import SearchOptions, read_search, study_url
from hpo.folder_guard import MARKER, FolderLock, check_name, remove_experiment_folder
from hpo.search import main as search_main
from hpo.trusted_state import SNAPSHOT_FILE, TUNER_FILE
from hpo.tuner import run_search
from zsl.errors import UserError

from search_fixtures import eszsl_space
from signed_state import resign

ROOT = Path(__file__).resolve().parent.parent
SPACE = eszsl_space()


class Canary:
    """Unpickling this creates ``path``: proof that a planted pickle ran."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return builtins.open, (self.path, "w")


# ---------------------------------------------------------------- --force and names (no Ray)

@pytest.mark.parametrize("name", ["..", ".", "a/b", "../x", "/abs", "", ".hidden", "x" * 200, "a\\b", "sp ace"])
def test_unsafe_experiment_names_are_refused(name):
    with pytest.raises(UserError, match="--name .* is not a plain experiment name"):
        check_name(name)


@pytest.mark.parametrize("name", ["..", "."])
def test_force_with_a_dot_name_deletes_nothing(tmp_path, capsys, name):
    """`--name .. --force` deleted the storage folder's parent (a $HOME with a thesis in it); `--name . --force`
    every other experiment. Now both exit 2 before touching anything."""
    home = tmp_path / "home"
    storage = home / "zsl-hpo-results"
    (storage / "other-search").mkdir(parents=True)
    (storage / "other-search" / MARKER).write_text('{"experiment_id": "x"}')
    (home / "thesis.tex").write_text("years of work")
    code = search_main(["--space", "eszsl", "--name", name, "--force", "--storage-path", str(storage)])
    err = capsys.readouterr().err
    assert code == 2 and "is not a plain experiment name" in err and "Traceback" not in err
    assert (home / "thesis.tex").read_text() == "years of work" and (storage / "other-search" / MARKER).exists()


def test_force_refuses_a_folder_zsl_hpo_did_not_make(tmp_path, capsys):
    storage = tmp_path / "results"
    foreign = storage / "d2sc-search"
    foreign.mkdir(parents=True)
    (foreign / "notes.txt").write_text("mine")
    code = search_main(["--space", "d2sc", "--force", "--storage-path", str(storage)])
    err = capsys.readouterr().err
    assert code == 2 and "was not made by zsl-hpo" in err and (foreign / "notes.txt").read_text() == "mine"


def test_remove_experiment_folder_only_removes_marked_folders_directly_inside(tmp_path):
    parent = tmp_path / "storage"
    ours = parent / "ours"
    ours.mkdir(parents=True)
    (ours / MARKER).write_text('{"experiment_id": "abc"}')
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / MARKER).write_text('{"experiment_id": "abc"}')  # marked, but reached through a link
    (parent / "link").symlink_to(target)
    with pytest.raises(UserError, match="a link or a file"):
        remove_experiment_folder(parent / "link", parent)
    with pytest.raises(UserError, match="does not lie directly inside"):
        remove_experiment_folder(target, parent)
    (parent / "file").write_text("x")
    with pytest.raises(UserError, match="a link or a file"):
        remove_experiment_folder(parent / "file", parent)
    remove_experiment_folder(ours, parent)
    assert not ours.exists() and target.exists() and (parent / "file").exists()


def test_a_live_search_holds_its_experiment_and_a_killed_one_releases_it(tmp_path, capsys):
    storage = tmp_path / "results"
    folder = storage / "busy"
    with FolderLock(folder, "experiment busy"):
        code = search_main(["--space", "eszsl", "--name", "busy", "--storage-path", str(storage), "--force"])
        err = capsys.readouterr().err
        assert code == 2 and "is in use by a live search (pid" in err
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; sys.path.insert(0, sys.argv[1]);"
                               "from hpo.folder_guard import FolderLock; lock = FolderLock(sys.argv[2], 'x').acquire();"
                               "print('locked', flush=True); time.sleep(600)", str(ROOT), str(folder)],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(UserError, match="in use"):
        FolderLock(folder, "experiment busy").acquire()
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    FolderLock(folder, "experiment busy").acquire().release()  # the kernel dropped the dead driver's lock


# ---------------------------------------------------------------- resume trusts only signed state (real Ray)

def _opts(tmp: Path, name: str, **kw) -> SearchOptions:
    space = tmp / "space.yaml"
    if not space.exists():
        space.write_text(kw.pop("space_text", SPACE))
    kw.pop("space_text", None)
    base = dict(space=str(space), datasets=["sim-AWA2"], num_samples=3, max_concurrent=2, name=name,
                storage_path=str(tmp), seed=1, scheduler="fifo", max_failures=0, verbose=0,
                state_key=str(tmp / "state.key"))
    return SearchOptions(**{**base, **kw})


@pytest.fixture(scope="module")
def finished(ray_session, tmp_path_factory):
    """A finished 3-trial search; tests work on copies of its folder (which also shows copies resume)."""
    tmp = tmp_path_factory.mktemp("finished")
    summary = run_search(_opts(tmp, "base"))
    assert summary.completed == 3
    return tmp


def _copy(finished: Path, tmp_path: Path, name: str = "copy") -> tuple[Path, SearchOptions]:
    shutil.copytree(finished / "base", tmp_path / name)
    shutil.copy(finished / "space.yaml", tmp_path / "space.yaml")
    shutil.copy(finished / "state.key", tmp_path / "state.key")
    return tmp_path / name, _opts(tmp_path, name, resume=True)


def _plant(exp: Path, pattern: str, canary: Path) -> None:
    (state,) = exp.glob(pattern)
    if pattern.startswith("experiment_state"):
        doc = json.loads(state.read_text())
        doc["runner_data"]["planted"] = {"_type": "CLOUDPICKLE_FALLBACK",
                                         "value": cloudpickle.dumps(Canary(canary)).hex()}
        state.write_text(json.dumps(doc))
    else:
        state.write_bytes(pickle.dumps(Canary(canary)))


@pytest.mark.parametrize("pattern", ["experiment_state-*.json", "search_gen_state-*.json", "searcher-state-*.pkl"])
def test_planted_ray_state_is_never_unpickled(finished, tmp_path, pattern):
    exp, opts = _copy(finished, tmp_path)
    canary = tmp_path / "pwned"
    _plant(exp, pattern, canary)
    (exp / "callback-states-2099-01-01_00-00-00.pkl").write_bytes(pickle.dumps(Canary(canary)))
    summary = run_search(opts)
    assert summary.trials == 3 and summary.completed == 3
    assert not canary.exists()
    assert not list(exp.glob("callback-states-*.pkl"))  # no file of Ray's state outside the snapshot survives


def test_planted_tuner_pickle_is_refused(finished, tmp_path, capsys):
    exp, opts = _copy(finished, tmp_path)
    canary = tmp_path / "pwned"
    (exp / TUNER_FILE).write_bytes(pickle.dumps(Canary(canary)))
    code = search_main(["--space", opts.space, "--name", "copy", "--storage-path", str(tmp_path), "--resume",
                        "--state-key", opts.state_key, "--verbose", "0"])
    err = capsys.readouterr().err
    assert code == 2 and "tuner.pkl does not match its signature" in err and "Traceback" not in err
    assert not canary.exists()


@pytest.mark.parametrize("damage, message", [
    ("truncate", "is truncated or damaged"),
    ("alter", "does not carry this experiment's signature"),
    ("delete", "holds no signed snapshot"),
    ("other-key", "does not carry this experiment's signature"),
])
def test_a_damaged_or_foreign_snapshot_is_refused(finished, tmp_path, damage, message):
    exp, opts = _copy(finished, tmp_path)
    snapshot = exp / SNAPSHOT_FILE
    if damage == "truncate":
        snapshot.write_bytes(snapshot.read_bytes()[:5000])
    elif damage == "alter":
        doc = json.loads(snapshot.read_text())
        name = next(n for n in doc["files"] if n.startswith("searcher-state"))
        doc["files"][name] = base64.b64encode(pickle.dumps(Canary(tmp_path / "pwned"))).decode()
        snapshot.write_text(json.dumps(doc))
    elif damage == "delete":
        snapshot.unlink()
    else:
        (tmp_path / "state.key").write_text("ab" * 32 + "\n")
        message = "tuner.pkl does not match its signature"  # checked first
    before = sorted(p.name for p in exp.iterdir())
    with pytest.raises(UserError, match=message):
        run_search(opts)
    assert not (tmp_path / "pwned").exists() and sorted(p.name for p in exp.iterdir()) == before


@pytest.mark.parametrize("pattern", ["experiment_state-*.json", "search_gen_state-*.json", "searcher-state-*.pkl"])
def test_truncated_ray_state_resumes_from_the_signed_snapshot(finished, tmp_path, pattern):
    """A full disk or a kill mid-copy leaves Ray's files truncated (a truncated searcher pickle used to hang
    the restore): the signed snapshot stands in for them."""
    exp, opts = _copy(finished, tmp_path)
    (state,) = exp.glob(pattern)
    state.write_bytes(state.read_bytes()[:50])
    summary = run_search(opts)
    assert summary.trials == 3 and summary.completed == 3
    for results in exp.glob("trainable_*/result.json"):  # finished trials were kept, not run again
        assert [json.loads(line)["epoch"] for line in results.read_text().splitlines()] == [1, 2, 3]


@pytest.mark.parametrize("damage, message", [
    ("truncate-search", "search.json is truncated or damaged"),
    ("list-search", "search.json is truncated or damaged"),
    ("delete-study", "the Optuna study of .* is missing"),
    ("truncate-tuner", "tuner.pkl does not match its signature"),
    ("no-key", "the signing key .* is missing on this machine"),
])
def test_states_a_search_cannot_come_back_from_are_refused_in_one_sentence(finished, tmp_path, capsys, damage,
                                                                          message):
    exp, opts = _copy(finished, tmp_path)
    if damage == "truncate-search":
        (exp / "search.json").write_text((exp / "search.json").read_text()[:100])
    elif damage == "list-search":
        (exp / "search.json").write_text("[1, 2]")
    elif damage == "delete-study":
        (exp / "optuna.db").unlink()
    elif damage == "truncate-tuner":
        (exp / TUNER_FILE).write_bytes((exp / TUNER_FILE).read_bytes()[:100])
    else:
        (tmp_path / "state.key").unlink()
    code = search_main(["--space", opts.space, "--name", "copy", "--storage-path", str(tmp_path), "--resume",
                        "--state-key", opts.state_key, "--verbose", "0"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    import re
    assert re.search(message, err), err
    assert not (exp / "optuna.db").exists() if damage == "delete-study" else True  # not silently re-created


def test_a_moved_experiment_resumes_and_reports_from_its_new_place(finished, tmp_path):
    """search.json holds no absolute path; the restored searcher writes to the study beside it, not to the
    original's (which is gone here)."""
    from hpo.report import write_report

    exp, opts = _copy(finished, tmp_path / "first", name="moved")
    moved = tmp_path / "second" / "moved"
    moved.parent.mkdir()
    shutil.move(str(exp), str(moved))
    shutil.copy(tmp_path / "first" / "space.yaml", tmp_path / "second" / "space.yaml")
    key = str(tmp_path / "first" / "state.key")

    def older(state):  # as if the search had been interrupted after its first trial: two trials run again
        return dict(state, trial_data=state["trial_data"][:1])

    resign(moved, key, older)
    summary = run_search(dataclasses.replace(opts, storage_path=str(tmp_path / "second"), state_key=key))
    assert summary.trials == 3 and summary.completed == 3
    record = read_search(moved)
    study = optuna.load_study(study_name=record["study_name"], storage=study_url(record, moved))
    assert len([t for t in study.trials if t.state == TrialState.COMPLETE]) == 5  # 3 before + 2 run again here
    assert not (tmp_path / "first" / "moved").exists()  # nothing recreated at the old place
    folder = write_report(str(moved), top_k=3)
    assert "Trials: 3 (3 completed)" in (folder / "report.md").read_text()


# ---------------------------------------------------------------- outcomes: recovered, diverged, full disk

def _trial_worker_pids() -> list[int]:
    """Processes running a trial (Ray titles them ``ray::ImplicitFunc...``), from /proc."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and b"ImplicitFunc" in (entry / "cmdline").read_bytes():
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def test_a_trial_recovered_after_a_worker_kill_is_reported_as_it_ended(ray_session, tmp_path):
    """The spot-instance case: a trial's worker dies, Ray restores the trial from its checkpoint, it finishes.
    Its folder keeps Ray's error.txt; the summary, Optuna and the report all call it completed."""
    from hpo.report import read_trials, write_report

    opts = _opts(tmp_path, "kill", num_samples=2, max_failures=1,
                 space_text=eszsl_space(epochs=8, steps=40))
    outcome = {}
    thread = threading.Thread(target=lambda: outcome.update(summary=run_search(opts)))
    thread.start()
    exp, killed = tmp_path / "kill", None
    deadline = time.time() + 240
    while killed is None and time.time() < deadline and thread.is_alive():
        checkpoints = list(exp.glob("trainable_*/checkpoint_*")) if exp.exists() else []
        pids = _trial_worker_pids()
        if checkpoints and pids:
            os.kill(pids[0], signal.SIGKILL)
            killed = pids[0]
        time.sleep(0.2)
    thread.join(timeout=400)
    assert killed is not None, "no trial worker to kill"
    summary = outcome["summary"]
    assert summary.trials == 2 and summary.completed == 2 and summary.errored == 0
    trials = read_trials(exp)
    assert any(t.error_file for t in trials), "the kill left no error file: the scenario did not happen"
    assert [t.outcome() for t in trials] == ["completed", "completed"]
    record = read_search(exp)
    study = optuna.load_study(study_name=record["study_name"], storage=study_url(record, exp))
    assert sorted(t.state.name for t in study.trials) == ["COMPLETE", "COMPLETE"]
    text = (write_report(str(exp), top_k=2) / "report.md").read_text()
    assert "Trials: 2 (2 completed)" in text and "errored" not in text


def test_a_diverged_trial_is_not_retried(ray_session, tmp_path):
    """gamma = inf makes ESZSL's loss NaN at the first epoch: the trial ends once (diverged, Optuna FAIL),
    although --max-failures would have retried an error; the other trial completes."""
    from hpo.report import read_trials

    space = eszsl_space(gamma="{type: categorical, choices: [.inf, 1.0]}", published="{gamma: .inf, lam: 0.1}")
    opts = _opts(tmp_path, "div", num_samples=2, max_concurrent=1, max_failures=2, space_text=space)
    summary = run_search(opts)
    assert summary.diverged >= 1 and summary.errored == 0
    exp = tmp_path / "div"
    trials = read_trials(exp)
    diverged = [t for t in trials if t.outcome() == "diverged"]
    assert diverged and all(len(t.rows) == 1 and not t.error_file for t in diverged)  # one attempt, no retry
    assert "diverged at epoch 1" in diverged[0].last["diverged_reason"]
    record = read_search(exp)
    study = optuna.load_study(study_name=record["study_name"], storage=study_url(record, exp))
    assert study.trials[0].state == TrialState.FAIL and study.trials[0].params["gamma"] == float("inf")


def test_zsl_train_reports_divergence_and_exits_nonzero(tmp_path, capsys):
    from zsl.train import main as train_main

    code = train_main(["--model", "eszsl", "--dataset", "sim-AWA2", "--preset", "small", "--set", "gamma=.inf",
                       "--set", "solver=gradient", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 3 and "sim-AWA2 diverged at epoch 1: 'loss' is nan" in err and "Traceback" not in err


def test_a_full_disk_is_named_and_the_search_resumes(ray_session, tmp_path, capsys, monkeypatch):
    """ENOSPC injected into Ray's experiment snapshot after the first trials started: one sentence saying the
    disk is full, exit 2; after space is freed, --resume finishes every trial from the signed snapshot."""
    import errno

    from ray.tune.execution import tune_controller

    real_json = tune_controller.json
    calls = {"n": 0}

    class FullDisk:
        def __getattr__(self, name):
            return getattr(real_json, name)

        @staticmethod
        def dump(obj, fh, **kw):
            calls["n"] += 1
            if calls["n"] > 3:
                fh.write("{\"trial_da")  # what a full disk leaves: a torn file
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_json.dump(obj, fh, **kw)

    opts = _opts(tmp_path, "full", num_samples=3, max_concurrent=1)
    args = ["--space", opts.space, "--name", "full", "--storage-path", str(tmp_path), "--datasets", "sim-AWA2",
            "--num-samples", "3", "--max-concurrent", "1", "--scheduler", "fifo", "--max-failures", "0",
            "--state-key", opts.state_key, "--verbose", "0", "--seed", "1"]
    monkeypatch.setattr(tune_controller, "json", FullDisk())
    code = search_main(args)
    err = capsys.readouterr().err
    assert code == 2 and "the disk is full" in err and "--resume" in err, err
    monkeypatch.setattr(tune_controller, "json", real_json)
    assert search_main(args + ["--resume"]) == 0
    record = read_search(tmp_path / "full")
    study = optuna.load_study(study_name=record["study_name"], storage=study_url(record, tmp_path / "full"))
    assert len([t for t in study.trials if t.state == TrialState.COMPLETE]) >= 3


def test_progress_lines_name_outcomes_and_best_never_goes_down(ray_session, tmp_path, capsys):
    """Default verbosity: one line per ended trial with the objective and each dataset's H, ASHA's stops named as
    such, a best-so-far that never decreases, and no Ray table or second TensorBoard hint."""
    import re

    opts = _opts(tmp_path, "talk", num_samples=5, max_concurrent=2, scheduler="asha", grace_period=1,
                 reduction_factor=2, verbose=1, space_text=eszsl_space(epochs=4, steps=2))
    summary = run_search(opts)
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if re.match(r"^\[\d+/5\] trial ", line)]
    assert len(lines) == summary.trials == 5
    assert sum("stopped early by the scheduler" in line for line in lines) == summary.stopped_early
    assert all("sim-AWA2 H " in line for line in lines)
    bests = [float(re.search(r"best so far ([\d.]+)", line).group(1)) for line in lines]
    assert bests == sorted(bests)
    assert "tensorboard --logdir /tmp/ray" not in out and "Trial status" not in out
    assert f"tensorboard: tensorboard --logdir {summary.experiment_dir}" in out
