"""The final evaluation (hpo/final.py) as Ray trials, and the answer the report reads from it.

A real local Ray declares one (fake) GPU so that ``--gpus-per-trial`` placement is visible on a CPU machine;
the runs themselves use the CPU (``device="cpu"``).
"""

import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import ray

from d2sc_toy import toy_data
from hpo.experiment import SearchOptions, per_dataset_options
from hpo.final_job import FinalOptions, plan_runs, run_final
from hpo.final_results import mean_sd, objective_by_seed, paired_gap, seed_result
from hpo.tuner import run_search
from search_fixtures import eszsl_space
from test_search import _hparams
from zsl.errors import UserError
from zsl.practice import PracticeView, best_view
from zsl.run import Run, RunSpec

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ["sim-AWA2", "sim-CUB"]


# ------------------------------------------------------------------------------------- pure arithmetic

def test_mean_sd_and_the_paired_gap_against_hand_computations():
    assert mean_sd([]) == (pytest.approx(math.nan, nan_ok=True), pytest.approx(math.nan, nan_ok=True), 0)
    assert mean_sd([4.0]) == (4.0, 0.0, 1)
    mean, sd, n = mean_sd([1.0, 2.0, 6.0])
    assert (mean, n) == (3.0, 3) and sd == pytest.approx(math.sqrt((4 + 1 + 9) / 2))
    # diffs 2, 1, 5 (seed 3 has no pair): mean 8/3, sd sqrt(13/3), t(0.975, 2) = 4.302653
    gap, low, high, pairs = paired_gap({0: 10.0, 1: 12.0, 2: 17.0, 3: 50.0}, {0: 8.0, 1: 11.0, 2: 12.0})
    half = 4.302653 * math.sqrt(13 / 3) / math.sqrt(3)
    assert pairs == 3 and gap == pytest.approx(8 / 3)
    assert (low, high) == (pytest.approx(8 / 3 - half, abs=1e-5), pytest.approx(8 / 3 + half, abs=1e-5))
    assert math.isnan(paired_gap({0: 1.0}, {0: 0.5})[1])  # one pair: no interval


def test_objective_per_seed_uses_only_seeds_every_dataset_has():
    per = {"a": {0: 10.0, 1: 20.0, 2: 0.0}, "b": {0: 30.0, 1: 10.0}}
    assert objective_by_seed(per, "mean") == {0: 20.0, 1: 15.0}
    assert objective_by_seed(per, "min") == {0: 10.0, 1: 10.0}


def test_plan_trains_a_run_shared_by_settings_once():
    settings = {"best shared": {"params": {"g": 1}, "datasets": ["A", "B"]},
                "published": {"params": {"g": 2}, "datasets": ["A", "B"]},
                "best on A": {"params": {"g": 1}, "datasets": ["A"]}}
    runs = plan_runs(settings, [0, 1])
    assert len(runs) == 8  # (g1: A, B) + (g2: A, B), two seeds each; "best on A" is g1 on A
    shared = [r for r in runs if r["dataset"] == "A" and r["params"] == {"g": 1}]
    assert [r["settings"] for r in shared] == [["best shared", "best on A"]] * 2


def test_seed_result_splits_what_practice_adds():
    rows = [{"epoch": 1, "practice/H": 20.0, "practice/H_view": 22.0},
            {"epoch": 2, "practice/H": 30.0, "practice/H_view": 35.0},
            {"epoch": 3, "practice/H": 25.0, "practice/H_view": 26.0, "S": 40.0, "U": 15.0, "H": 21.8, "ZSL": 30.0}]
    r = seed_result(rows, "completed")
    assert r.honest["H"] == 21.8 and (r.clf, r.view) == (25.0, 26.0) and (r.reported, r.reported_epoch) == (35.0, 2)
    assert seed_result(rows[:2], "completed").honest is None  # no test row: not a result
    assert best_view({"H": 3.0, "H_VC": 5.0, "H_sd": 9.0}) == (5.0, "VC")


# ------------------------------------------------------------------------------------- the practice twin

TINY_D2SC = dict(noise_dim=8, gen_hidden=32, ngh=24, ndh=40, batch_size=16, critic_iter=2, iters_per_epoch=3,
                 drg_epochs=1, dfg_epochs=2, syn_num_drg=20, syn_num=20, classifier_epochs=4, classifier_batch=16,
                 eval_views=["V", "VC"])


def test_the_watched_run_trains_as_it_would_alone_and_practice_only_adds():
    data = toy_data(protocol="final")
    spec = RunSpec("d2sc", "toy", None, "final", 3, 0, "small", None, TINY_D2SC)
    alone = Run(spec, "cpu", 1, data=data).run_to_end()
    twin = PracticeView(spec, "cpu", 1, data)
    watched = Run(spec, "cpu", 1, data=data)
    practice = []
    while watched.epoch < watched.epochs_total:
        watched.train_epoch()
        if watched.epoch > watched.prefix_epochs:
            practice.append(twin.scores(watched))
    honest = watched.evaluate()
    assert {k: honest[k] for k in ("S", "U", "H", "ZSL")} == {k: alone[k] for k in ("S", "U", "H", "ZSL")}
    last = practice[-1]
    assert last["practice/H"] >= honest["H"]  # the best classifier epoch includes the last one
    assert last["practice/H_view"] == max(last["practice/H"], twin.twin.evaluate()["H_VC"])
    assert twin.twin.data.protocol == "reference" and watched.data.protocol == "final"


# ------------------------------------------------------------------------------------- on a real Ray

@pytest.fixture(scope="module")
def fake_gpu_ray():
    info = ray.init(address="local", num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False,
                    runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
    yield info.address_info["gcs_address"]
    ray.shutdown()


@pytest.fixture(scope="module")
def searched(fake_gpu_ray, tmp_path_factory):
    """A shared ESZSL search over two datasets and each dataset's own search (--per-dataset)."""
    tmp = tmp_path_factory.mktemp("final")
    space = tmp / "space.yaml"
    space.write_text(eszsl_space(epochs=3, steps=3))
    opts = SearchOptions(space=str(space), datasets=DATASETS, num_samples=3, max_concurrent=2, name="shared",
                         storage_path=str(tmp), seed=1, grace_period=1, reduction_factor=2, verbose=0)
    run_search(opts)
    owns = per_dataset_options(opts)
    assert [o.experiment_name() for o in owns] == ["shared-sim-AWA2", "shared-sim-CUB"]
    assert [o.datasets for o in owns] == [["sim-AWA2"], ["sim-CUB"]] and {o.num_samples for o in owns} == {3}
    for own in owns:
        run_search(own)
    return tmp / "shared"


def _rows(trial_dir: Path) -> list[dict]:
    path = trial_dir / "result.json"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def test_final_runs_as_ray_trials_on_their_gpu_share_and_the_report_answers(searched, fake_gpu_ray):
    from hpo.report import write_report

    summary = run_final(FinalOptions(experiment=str(searched), seeds=2, gpus_per_trial=0.5, device="cpu", verbose=0))
    plan = json.loads((searched / "final" / "final-plan.json").read_text())
    assert set(plan["settings"]) == {"best shared", "published", "best on sim-AWA2", "best on sim-CUB"}
    assert plan["seeds"] == [1, 2] and plan["resources"]["gpus_per_trial"] == 0.5
    assert summary.finished == summary.runs == len(plan["runs"]) and summary.errored == 0
    trials = [d for d in (searched / "final").iterdir() if (d / "params.json").exists()]
    assert len(trials) == len(plan["runs"])
    for trial in trials:
        rows = _rows(trial)
        last = rows[-1]
        assert last["gpu_ids"] == ["0"] and last["device"] == "cpu"  # placed on the declared GPU, computed on the CPU
        assert all(r["pid"] != os.getpid() for r in rows)  # never in the driver
        assert [r["epoch"] for r in rows] == [1, 2, 3] and all("practice/H_view" in r for r in rows)
        assert last["provenance"]["protocol"] == "final" and last["provenance"]["data"] == "simulated"
        assert last["provenance"]["seed"] == json.loads((trial / "params.json").read_text())["run"]["seed"]
    assert {"run/setting", "run/protocol", "run/data", "run/dataset", "run/seed"} <= set(_hparams(trials[0])[1])
    folder = write_report(str(searched), top_k=2)
    text = (folder / "report.md").read_text()
    for heading in ("## Final evaluation (protocol final", "## Seed spread", "## The price of one shared setting",
                    "## Inflation of published practice", "## Provenance of the final numbers"):
        assert heading in text
    assert "(n=2)" in text and (folder / "inflation.png").stat().st_size > 0
    doc = json.loads((folder / "final.json").read_text())
    assert doc["protocol"] == "final" and doc["seeds"] == [1, 2]
    for dataset in DATASETS:
        runs = doc["results"][f"best on {dataset}"][dataset]
        assert set(runs) == {"1", "2"} and all(0.0 <= r["test"]["H"] <= 100.0 for r in runs.values())
        assert all(r["practice"]["reported"] >= r["test"]["H"] for r in runs.values())
    with pytest.raises(UserError, match="already exists: pass --resume"):
        run_final(FinalOptions(experiment=str(searched), seeds=2, verbose=0))


@pytest.mark.slow
def test_a_killed_final_evaluation_resumes_without_recomputing_finished_runs(searched, fake_gpu_ray, tmp_path):
    import shutil

    exp = tmp_path / "shared"
    shutil.copytree(searched, exp, ignore=shutil.ignore_patterns("final", "report"))
    cmd = [sys.executable, "hpo/final.py", str(exp), "--seeds", "3", "--max-concurrent", "1", "--address", fake_gpu_ray,
           "--no-inflation", "--verbose", "0"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    child = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             start_new_session=True)
    deadline, finished = time.time() + 240, {}
    while time.time() < deadline and len(finished) < 2:
        time.sleep(0.5)
        finished = {d.name: (d / "result.json").read_bytes() for d in (exp / "final").glob("*/")
                    if any("H" in r for r in _rows(d))}
    os.killpg(child.pid, signal.SIGKILL)
    child.wait()
    assert len(finished) >= 2, "no run finished before the kill"
    again = subprocess.run(cmd + ["--resume"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    for name, content in finished.items():  # a run finished before the kill is not trained again
        assert (exp / "final" / name / "result.json").read_bytes() == content, name
    plan = json.loads((exp / "final" / "final-plan.json").read_text())
    done = [d for d in (exp / "final").glob("*/") if any("H" in r for r in _rows(d))]
    assert len(done) == len(plan["runs"])


def test_bad_final_options_are_one_sentence(searched, tmp_path):
    from hpo.final import main

    assert main([str(tmp_path / "nothing")]) == 2
    assert main([str(searched), "--seeds", "0"]) == 2
    assert main([str(searched), "--force", "--settings", "best on Mars"]) == 2
    assert main([str(searched), "--force", "--gpus-per-trial", "2"]) == 2  # this Ray declares one GPU
    assert not (tmp_path / "nothing").exists() and (searched / "final" / "final-plan.json").is_file()  # nothing lost


def test_per_dataset_searches_keep_the_shared_profile_and_embedding():
    opts = SearchOptions(space="d2sc", class_embedding="att,CUB:sent")
    owns = per_dataset_options(opts)
    assert [o.datasets[0] for o in owns] == ["sim-AWA2", "sim-CUB", "sim-SUN"]
    assert {o.profile for o in owns} == {"demo"}  # the embedded default's profile, although --datasets is now set
    assert [o.class_embedding for o in owns] == ["att", "sent", "att"]
    assert replace(owns[0], per_dataset=True).per_dataset
    pareto = per_dataset_options(SearchOptions(space="d2sc", objective="pareto"))
    assert {o.objective for o in pareto} == {"mean"}  # one dataset: one objective
    with pytest.raises(UserError, match="lists a dataset twice"):
        per_dataset_options(SearchOptions(space="d2sc", datasets=["sim-AWA2", "sim-AWA2"]))
