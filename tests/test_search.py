"""End-to-end searches on a real local Ray: ASHA stops trials, Optuna records them PRUNED,
TensorBoard HParams hold every trial, an error does not stop the search, SIGINT/SIGKILL + --resume."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import ray
from optuna.trial import TrialState

from hpo.experiment import SearchOptions, read_search, study_url
from hpo.tuner import run_search
from zsl.models import make_config

from signed_state import resign

ROOT = Path(__file__).resolve().parent.parent
DATASETS = ["sim-AWA2", "sim-CUB"]
EPOCHS = 8
SPACE = """
model: eszsl
preset: small
params:
  gamma: {type: float, low: 1.0e-3, high: 1.0e+3, log: true}
  lam: {type: float, low: 1.0e-3, high: 1.0e+3, log: true}
  steps_per_epoch: {type: categorical, choices: [2, 5, 10]}
  solver: {type: fixed, value: gradient}
  epochs: {type: categorical, choices: [8, 100001]}   # the model accepts 100001; the run engine's sanity bound
                                                      # refuses it when the trial starts: an errored trial
published: {gamma: 1.0, lam: 0.1, steps_per_epoch: 5, epochs: 8}
"""


@pytest.fixture(scope="module")
def ray_session():
    env = {"env_vars": {"PYTHONPATH": str(ROOT)}}
    info = ray.init(address="local", num_cpus=2, include_dashboard=False, runtime_env=env, log_to_driver=False)
    yield info.address_info["gcs_address"]
    ray.shutdown()


@pytest.fixture(scope="module")
def search(ray_session, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("search")
    space = tmp / "space.yaml"
    space.write_text(SPACE)
    opts = SearchOptions(space=str(space), datasets=DATASETS, num_samples=8, max_concurrent=2, name="e2e",
                         storage_path=str(tmp), seed=3, grace_period=1, reduction_factor=2, max_failures=0, verbose=0)
    summary = run_search(opts)
    exp = Path(summary.experiment_dir)
    record = read_search(exp)
    study = optuna.load_study(study_name=record["study_name"], storage=study_url(record, exp))
    return summary, exp, study


def _trial_dirs(exp: Path):
    return sorted(p for p in exp.iterdir() if p.is_dir() and p.name.startswith("trainable_"))


def _results(trial_dir: Path) -> list[dict]:
    path = trial_dir / "result.json"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_asha_stops_trials_and_optuna_records_them_pruned(search):
    summary, exp, study = search
    assert summary.trials == 8
    assert summary.stopped_early >= 1 and summary.completed >= 1 and summary.errored >= 1
    states = [t.state for t in study.trials]
    assert len(study.trials) == 8 and TrialState.RUNNING not in states
    pruned = [t for t in study.trials if t.state == TrialState.PRUNED]
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    failed = [t for t in study.trials if t.state == TrialState.FAIL]
    assert len(pruned) == summary.stopped_early and len(complete) == summary.completed and len(failed) == summary.errored
    for t in pruned:
        steps = sorted(t.intermediate_values)
        assert 1 <= len(steps) < EPOCHS and steps == list(range(1, len(steps) + 1))
        assert t.value == pytest.approx(t.intermediate_values[steps[-1]])
    for t in complete:
        assert sorted(t.intermediate_values) == list(range(1, EPOCHS + 1))
    for t in failed:
        assert t.params["epochs"] == 100001
    assert study.trials[0].params == {"gamma": 1.0, "lam": 0.1, "steps_per_epoch": 5, "epochs": 8}  # published first
    assert study.metric_names == ["objective: H over datasets (validation, last scoring epoch)"]
    for t in pruned + complete:  # each dataset's last scores, for optuna-dashboard
        assert {f"{d}/{k}" for d in DATASETS for k in ("S", "U", "H", "ZSL")} <= set(t.user_attrs)
        assert sum(t.user_attrs[f"{d}/H"] for d in DATASETS) / len(DATASETS) == pytest.approx(t.value)


def test_reports_per_dataset_scores_and_best_so_far(search):
    _, exp, _ = search
    reported = [rows for rows in map(_results, _trial_dirs(exp)) if rows]
    assert reported
    for rows in reported:
        best = -1.0
        for row in rows:
            hs = [row[f"{d}/H"] for d in DATASETS]
            assert row["objective"] == pytest.approx(sum(hs) / len(hs))
            best = max(best, row["objective"])
            assert row["best_objective"] == pytest.approx(best)
            for d in DATASETS:
                assert {f"{d}/S", f"{d}/U", f"{d}/ZSL", f"{d}/loss/loss"} <= set(row)
            assert row["epochs_total"] == EPOCHS


def _hparams(trial_dir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    acc = EventAccumulator(str(trial_dir), size_guidance={"scalars": 0})
    acc.Reload()
    metric_tags, hparams = set(), {}
    for content in acc.PluginTagToContent("hparams").values():
        data = plugin_data_pb2.HParamsPluginData.FromString(content)
        if data.HasField("experiment"):
            metric_tags |= {m.name.tag for m in data.experiment.metric_infos}
        if data.HasField("session_start_info"):
            hparams.update(data.session_start_info.hparams)
    return metric_tags, hparams, acc


def test_tensorboard_hparams_for_every_trial_with_results(search):
    summary, exp, _ = search
    checked = 0
    for trial_dir in _trial_dirs(exp):
        rows = _results(trial_dir)
        if not rows:
            continue  # the errored trials never reported
        metric_tags, hparams, acc = _hparams(trial_dir)
        assert {"ray/tune/objective", "ray/tune/best_objective"} <= metric_tags, trial_dir.name
        assert {"gamma", "lam", "steps_per_epoch"} <= set(hparams), trial_dir.name
        best = acc.Scalars("ray/tune/best_objective")
        assert len(best) == len(rows) and best[-1].value == pytest.approx(rows[-1]["best_objective"], rel=1e-5)
        checked += 1
    assert checked == summary.completed + summary.stopped_early >= 4  # early-stopped trials included


def test_report_leaderboard_and_best_setting_only_read(search):
    from hpo.report import write_report
    from zsl.train import read_config_file

    summary, exp, _ = search
    before = sorted(str(p) for p in exp.rglob("*") if "report" not in p.parts)
    folder = write_report(str(exp), top_k=3)
    text = (folder / "report.md").read_text()
    assert "protocol: validation" in text and "simulated" in text
    assert "Not run yet: `python hpo/final.py" in text and not (folder / "final.json").exists()  # the report never trains
    assert sorted(str(p) for p in exp.rglob("*") if "report" not in p.parts) == before
    assert {"best_so_far.png", "top_trials_h.png", "best_setting.yaml"} <= {p.name for p in folder.iterdir()}
    doc = read_config_file(str(folder / "best_setting.yaml"))
    assert doc["model"] == "eszsl" and doc["preset"] == "small" and doc["config"] == summary.best_config
    make_config(doc["model"], doc["preset"], "sim-AWA2", doc["config"])  # replayable through the seam


def _cli(args, address):
    env = dict(os.environ, PYTHONPATH=str(ROOT))  # the suite's Ray settings (conftest) reach the child too
    return subprocess.Popen([sys.executable, "hpo/search.py", *args, "--address", address], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _interrupt_and_resume(tmp_path, address, sig, name):
    space = tmp_path / "space.yaml"
    space.write_text(SPACE.replace("[8, 100001]", "[8]"))  # no errored trial here
    args = ["--space", str(space), "--datasets", ",".join(DATASETS), "--num-samples", "4", "--max-concurrent", "2",
            "--storage-path", str(tmp_path), "--name", name, "--scheduler", "fifo", "--verbose", "0"]
    proc = _cli(args, address)
    exp = tmp_path / name
    deadline = time.time() + 240
    while time.time() < deadline:  # wait until at least one trial finished and others are running
        done = [d for d in _trial_dirs(exp) if len(_results(d)) == EPOCHS] if exp.exists() else []
        if done:
            break
        time.sleep(1)
    assert done, "no trial finished before the interrupt"
    before = {d.name: len(_results(d)) for d in _trial_dirs(exp)}
    proc.send_signal(sig)
    interrupted_out, _ = proc.communicate(timeout=120)
    if sig == signal.SIGINT:  # Ctrl-C: our advice and summary, exit 130, not Ray's Tuner.restore advice
        assert proc.returncode == 130, interrupted_out[-2000:]
        assert "continue with the same command plus --resume" in interrupted_out
        assert "Tuner.restore(" not in interrupted_out
    again = _cli(args, address)
    out, _ = again.communicate(timeout=120)
    assert "already exists" in out and again.returncode == 2  # refuses to overwrite without --resume
    resumed = _cli([*args, "--resume"], address)
    out, _ = resumed.communicate(timeout=400)
    assert resumed.returncode == 0, out
    after = {d.name: _results(d) for d in _trial_dirs(exp)}
    graceful = sig == signal.SIGINT
    finished = {n: rows for n, rows in after.items() if rows and rows[-1]["epoch"] == EPOCHS}
    assert len(finished) == 4, (out, {n: [r["epoch"] for r in rows] for n, rows in after.items()})  # --num-samples finished
    # SIGKILL gives Ray no chance to snapshot the experiment: a trial started after its last snapshot is
    # unknown to the restored run and is sampled anew (its partial progress lost); at most max-concurrent.
    orphans = set(after) - set(finished)
    assert len(orphans) <= (0 if graceful else 2), orphans
    assert all(before.get(n, 0) < EPOCHS for n in orphans)  # never a trial that had finished
    for rows in finished.values():  # every trial finished (from its last recorded checkpoint)
        epochs = [r["epoch"] for r in rows]
        assert sorted(set(epochs)) == list(range(1, EPOCHS + 1)) and epochs[-1] == EPOCHS
        if graceful:  # Ctrl-C saves the experiment state: at most the epoch in flight is redone
            assert len(epochs) <= EPOCHS + 1
    for name_, count in before.items():
        if count == EPOCHS and graceful:  # finished before the interrupt: kept, not re-run
            assert len(after[name_]) == EPOCHS
        if count == EPOCHS:  # finished before the interrupt: still there and finished
            assert name_ in finished
    record = read_search(exp)
    study = optuna.load_study(study_name=record["study_name"], storage=study_url(record, exp))
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 4  # every observation kept across the interrupt
    return out


def test_sigint_then_resume(ray_session, tmp_path):
    _interrupt_and_resume(tmp_path, ray_session, signal.SIGINT, "sigint")


def test_resume_after_torn_snapshot(ray_session, tmp_path):
    """A driver killed while Ray copies its snapshot can leave a damaged trial list: resume ignores Ray's
    copy and restores the signed snapshot. A driver killed between Ray's snapshot and the signed one
    resumes from an older signed snapshot (here: it lacks the last two trials the study holds): the search
    still reaches --num-samples trials, the trials unknown to it are sampled anew and their Optuna
    trials (finished before the kill) stay COMPLETE."""
    space = tmp_path / "space.yaml"
    space.write_text(SPACE.replace("[2, 5, 10]", "[2, 5]").replace("[8, 100001]", "[8]"))
    key = str(tmp_path / "state.key")
    opts = SearchOptions(space=str(space), datasets=DATASETS, num_samples=4, max_concurrent=2, name="torn",
                         storage_path=str(tmp_path), seed=5, scheduler="fifo", max_failures=0, verbose=0,
                         state_key=key)
    assert run_search(opts).completed == 4
    exp = tmp_path / "torn"
    state_file = max(exp.glob("experiment_state-*.json"))
    state_file.write_text(state_file.read_text()[:1000])  # Ray's own copy torn
    resumed = run_search(dataclasses.replace(opts, resume=True))
    assert resumed.trials == 4 and resumed.completed == 4
    record = read_search(exp)
    study = optuna.load_study(study_name=record["study_name"], storage=study_url(record, exp))
    assert len(study.trials) == 4  # nothing re-sampled: the signed snapshot knew every trial

    dropped = []

    def older(state):  # the snapshot of a moment before the last two trials were sampled
        dropped.extend(json.loads(entry[0])["trial_id"] for entry in state["trial_data"][2:])
        return dict(state, trial_data=state["trial_data"][:2])

    resign(exp, key, older)
    resumed = run_search(dataclasses.replace(opts, resume=True))
    assert resumed.trials == 4 and resumed.completed == 4  # without reconciling: 2 trials, the search "done"
    study = optuna.load_study(study_name=record["study_name"], storage=study_url(record, exp))
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 6  # the two dropped trials had finished before; their observations stay
    assert set(dropped) < {t.user_attrs["ray_trial_id"] for t in complete}


@pytest.mark.parametrize("cpus, gpus, mode, expected", [
    (1, 0, "auto", "sequential"), (2, 0, "auto", "parallel"), (1, 0.5, "auto", "parallel"),
    (4, 0, "sequential", "sequential"), (1, 0, "parallel", "parallel"),
])
def test_dataset_runs_mode_and_trial_resources(cpus, gpus, mode, expected):
    from hpo.experiment import make_context
    from hpo.tuner import trial_resources

    opts = SearchOptions(datasets=DATASETS, cpus_per_trial=cpus, gpus_per_trial=gpus, dataset_runs=mode)
    ctx = make_context(opts, "small", {}, "eszsl")
    resources = trial_resources(opts, ctx)
    assert ctx.dataset_runs == expected
    if expected == "parallel":  # an empty head bundle and one equal share per dataset
        assert resources.head_bundle_is_empty and resources.bundles == [{"CPU": cpus / 2, **({"GPU": gpus / 2} if gpus else {})}] * 2
        assert ctx.torch_threads == max(1, int(cpus / 2))
    else:
        assert resources == {"cpu": cpus, "gpu": gpus} and ctx.torch_threads == max(1, int(cpus))


def test_parallel_dataset_runs_match_sequential(ray_session, tmp_path):
    """--dataset-runs parallel (one Ray actor per dataset in the trial's placement group) reports exactly
    the numbers of the sequential trial for the same seed and setting."""
    space = tmp_path / "space.yaml"
    space.write_text(SPACE.replace("[2, 5, 10]", "[5]").replace("[8, 100001]", "[3]").replace("epochs: 8}", "epochs: 3}"))
    rows = {}
    for mode in ("sequential", "parallel"):
        opts = SearchOptions(space=str(space), datasets=DATASETS, num_samples=1, max_concurrent=1, name=mode,
                             storage_path=str(tmp_path), seed=2, scheduler="fifo", dataset_runs=mode,
                             cpus_per_trial=2, max_failures=0, verbose=0)
        assert run_search(opts).completed == 1
        (trial,) = _trial_dirs(tmp_path / mode)
        rows[mode] = _results(trial)
    keys = ["epoch", "objective", *(f"{d}/{k}" for d in DATASETS for k in ("S", "U", "H", "ZSL", "loss/loss"))]
    assert len(rows["parallel"]) == 3
    assert [[r[k] for k in keys] for r in rows["parallel"]] == [[r[k] for k in keys] for r in rows["sequential"]]


@pytest.mark.slow
def test_sigkill_then_resume(ray_session, tmp_path):
    _interrupt_and_resume(tmp_path, ray_session, signal.SIGKILL, "sigkill")
