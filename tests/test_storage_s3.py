"""--storage-path s3://...: a real Tune run against a real S3-compatible server on loopback.

moto's server (test extra `moto[server]`) runs on 127.0.0.1; Ray reaches it through pyarrow.fs
using the standard AWS_* environment variables. Checks: experiment state, checkpoints,
TensorBoard event files and the Optuna study all land in the bucket, and an interrupted search
resumes from the bucket alone.
"""

import contextlib
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest
import ray
from ray import cloudpickle, tune
from ray.tune.search.optuna import OptunaSearch

from hpo import storage
from hpo.tuner import environment

BUCKET = "zsl-hpo-test"
STORAGE = f"s3://{BUCKET}/experiments"
ITERATIONS = 4
STUDY = "optuna.db"

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers cannot import tests/


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def s3_server(bucket: str):
    """Run moto's S3 server on loopback with `bucket` created; yields a boto3 S3 client.

    Sets AWS_ENDPOINT_URL and test credentials in os.environ (restored afterwards) so that
    pyarrow.fs, boto3 and Ray workers started inside the block use it.
    """
    server_module = pytest.importorskip("moto.server", reason="needs moto[server] (test extra)")
    boto3 = pytest.importorskip("boto3")
    port = free_port()
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_EC2_METADATA_DISABLED": "true"}
    with environment(env):
        try:
            client = boto3.client("s3")
            client.create_bucket(Bucket=bucket)
            yield client
        finally:
            server.stop()


def bucket_keys(client, bucket: str) -> list[str]:
    """All object keys in a bucket."""
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return [obj["Key"] for page in pages for obj in page.get("Contents", [])]


def counting_trainable(config):
    """Tiny checkpointing trainable: loss = (x - 0.3)^2 / step; fails once if asked.

    Reports `start` (the step it resumed from) so tests can see restores.
    """
    start = 0
    checkpoint = tune.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as folder:
            start = json.loads((Path(folder) / "state.json").read_text())["step"]
    marker = Path(config["fail_dir"]) / f"{tune.get_context().get_trial_id()}.failed"
    for step in range(start + 1, ITERATIONS + 1):
        if config["fail_at"] == step and not marker.exists():
            marker.touch()
            raise RuntimeError("injected failure")
        with tempfile.TemporaryDirectory() as folder:
            (Path(folder) / "state.json").write_text(json.dumps({"step": step}))
            tune.report({"loss": (config["x"] - 0.3) ** 2 / step, "start": start},
                        checkpoint=tune.Checkpoint.from_directory(folder))


@pytest.fixture(scope="module")
def s3():
    """moto S3 on loopback plus a small local Ray that inherits its environment."""
    with s3_server(BUCKET) as client:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            yield client
        finally:
            ray.shutdown()


def run_search(name, fail_dir, fail_at, sidecar, max_failures=0):
    """A 2-trial Optuna search stored on S3, its study in a synced local sidecar; returns the ResultGrid."""
    url = f"sqlite:///{sidecar / STUDY}"
    sidecar.mkdir(parents=True, exist_ok=True)
    callbacks = [storage.SidecarSync(sidecar, f"{STORAGE}/{name}", names=(STUDY,))]
    searcher = OptunaSearch(
        space={"x": optuna.distributions.FloatDistribution(0.0, 1.0)}, metric="loss", mode="min",
        sampler=optuna.samplers.TPESampler(seed=0), study_name=name,
        storage=optuna.storages.RDBStorage(url))
    tuner = tune.Tuner(
        tune.with_parameters(counting_trainable),
        param_space={"fail_dir": str(fail_dir), "fail_at": fail_at},
        tune_config=tune.TuneConfig(search_alg=searcher, num_samples=2, max_concurrent_trials=2),
        run_config=tune.RunConfig(storage_path=STORAGE, name=name, verbose=0, callbacks=callbacks,
                                  failure_config=tune.FailureConfig(max_failures=max_failures)))
    return tuner.fit()


def test_search_state_checkpoints_tensorboard_and_study_land_in_s3(s3, tmp_path):
    results = run_search("complete", tmp_path, fail_at=0, sidecar=tmp_path / "sidecar")
    assert not results.errors and len(results) == 2
    keys = bucket_keys(s3, BUCKET)
    under = [k.removeprefix("experiments/complete/") for k in keys if k.startswith("experiments/complete/")]
    assert any(k.startswith("experiment_state") for k in under)
    assert "tuner.pkl" in under
    assert sum("/checkpoint_" in k and k.endswith("state.json") for k in under) >= 2
    assert sum("events.out.tfevents" in k for k in under) == 2  # one TensorBoard file per trial
    assert "optuna.db" in under
    for result in results:  # checkpoints are read back from S3
        assert result.checkpoint.path.startswith(f"{BUCKET}/experiments/complete/")
        with result.checkpoint.as_directory() as folder:
            assert json.loads((Path(folder) / "state.json").read_text()) == {"step": ITERATIONS}
    # The uploaded study, fetched into a fresh file, holds both finished trials.
    fresh = tmp_path / "fresh"
    assert storage.fetch_sidecar(f"{STORAGE}/complete", fresh, names=(STUDY, "absent.json")) == [STUDY]
    study = optuna.load_study(study_name="complete", storage=f"sqlite:///{fresh / STUDY}")
    finished = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(finished) == 2
    assert sorted(t.value for t in finished) == pytest.approx(sorted(r.metrics["loss"] for r in results))


@pytest.mark.slow
def test_interrupted_search_resumes_from_s3_alone(s3, tmp_path):
    name = "resume"
    first = run_search(name, tmp_path, fail_at=3, sidecar=tmp_path / "sidecar-a")
    assert len(first.errors) == 2  # both trials died after checkpointing step 2
    # The driver's disk is lost; a new driver at the same sidecar path has only the bucket.
    sidecar = tmp_path / "sidecar-a"
    shutil.rmtree(sidecar)
    assert tune.Tuner.can_restore(f"{STORAGE}/{name}")
    assert storage.fetch_sidecar(f"{STORAGE}/{name}", sidecar, names=(STUDY,)) == [STUDY]
    with sqlite3.connect(sidecar / STUDY) as db:  # the study came back from S3
        assert db.execute("select count(*) from trials").fetchone()[0] == 2
    restored = tune.Tuner.restore(f"{STORAGE}/{name}", trainable=tune.with_parameters(counting_trainable),
                                  resume_errored=True)
    results = restored.fit()
    assert not results.errors
    for result in results:
        assert result.metrics["training_iteration"] == ITERATIONS
        assert result.metrics["start"] == 2  # continued from the step-2 checkpoint in S3
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{sidecar / STUDY}")
    # The resumed search kept the fetched study (not a fresh one). Ray's OptunaSearch told Optuna
    # FAIL when the trials errored, and an Optuna trial cannot be reopened, so they stay FAIL.
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.FAIL] * 2


def test_sidecar_sync_round_trip_without_ray(tmp_path):
    """Upload after a trial, fetch on a fresh driver; stale local copies are never reused."""
    with s3_server("zsl-sync") as client:
        remote = "s3://zsl-sync/runs/exp"
        sidecar = tmp_path / "a"
        sidecar.mkdir()
        study = optuna.create_study(study_name="exp", storage=f"sqlite:///{sidecar / STUDY}")
        study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
        (sidecar / "search.json").write_text("{}")
        storage.SidecarSync(sidecar, remote, names=(STUDY, "search.json")).on_trial_complete(0, [], None)
        assert bucket_keys(client, "zsl-sync") == ["runs/exp/optuna.db", "runs/exp/search.json"]
        assert storage.fetch_sidecar(remote, tmp_path / "b", names=(STUDY, "search.json")) == [STUDY, "search.json"]
        assert len(optuna.load_study(study_name="exp", storage=f"sqlite:///{tmp_path / 'b' / STUDY}").trials) == 3
        stale = tmp_path / "c" / STUDY
        stale.parent.mkdir()
        stale.write_bytes(b"left over")
        assert storage.fetch_sidecar("s3://zsl-sync/runs/other", tmp_path / "c", names=(STUDY,)) == []
        assert not stale.exists()  # nothing in the bucket: start a fresh study


@pytest.mark.slow
def test_search_cli_on_s3_and_resume_on_a_fresh_driver(tmp_path):
    """hpo/search.py --storage-path s3://...: everything lands in the bucket; --resume after the
    driver's local files are lost gets the search record and the study back from the bucket."""
    root = Path(storage.__file__).resolve().parents[1]
    driver = tmp_path / "driver"
    driver.mkdir()
    cmd = [sys.executable, str(root / "hpo" / "search.py"), "--space", "eszsl", "--datasets", "sim-AWA2",
           "--num-samples", "2", "--scheduler", "fifo", "--storage-path", "s3://zsl-cli/exp", "--name", "cli",
           "--verbose", "0", "--seed", "0"]
    with s3_server("zsl-cli") as client:
        env = dict(os.environ, PYTHONPATH=str(root), RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
        first = subprocess.run(cmd, cwd=driver, env=env, capture_output=True, text=True, timeout=600)
        assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
        keys = [k.removeprefix("exp/cli/") for k in bucket_keys(client, "zsl-cli")]
        assert {"search.json", "optuna.db", "tuner.pkl"} <= set(keys)
        assert any(k.startswith("experiment_state") for k in keys)
        assert sum("events.out.tfevents" in k for k in keys) >= 2  # TensorBoard files of both trials
        assert any("/checkpoint_" in k for k in keys)
        shutil.rmtree(driver / "cli.hpo")  # the driver's disk is lost
        again = subprocess.run(cmd + ["--resume"], cwd=driver, env=env, capture_output=True, text=True,
                               timeout=600)
        assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
        study = optuna.load_study(study_name="cli", storage=f"sqlite:///{driver / 'cli.hpo' / STUDY}")
        assert len(study.trials) == 2  # the study came back from the bucket
        shutil.rmtree(driver / "cli.hpo")  # the final evaluation and the report from another machine read the bucket alone
        final = subprocess.run([sys.executable, str(root / "hpo" / "final.py"), "s3://zsl-cli/exp/cli", "--seeds", "1",
                                "--settings", "best shared"], cwd=driver, env=env, capture_output=True, text=True,
                               timeout=600)
        assert final.returncode == 0, final.stdout[-2000:] + final.stderr[-2000:]
        keys = [k for k in bucket_keys(client, "zsl-cli") if k.startswith("exp/cli/final/")]
        assert any(k.endswith("final-plan.json") for k in keys) and any(k.endswith("result.json") for k in keys)
        report = subprocess.run([sys.executable, str(root / "hpo" / "report.py"), "s3://zsl-cli/exp/cli"],
                                cwd=driver, env=env, capture_output=True, text=True, timeout=600)
        assert report.returncode == 0, report.stdout[-2000:] + report.stderr[-2000:]
        text = (driver / "cli.report" / "report.md").read_text()
        assert "# Search report: cli (simulated data)" in text and "Trials: 2 (2 completed" in text
        assert "## Final evaluation (protocol final" in text and "| best shared |" in text
        missing = subprocess.run([sys.executable, str(root / "hpo" / "report.py"), "s3://zsl-cli/nothing-here"],
                                 cwd=driver, env=env, capture_output=True, text=True, timeout=600)
        assert missing.returncode == 2 and "holds no zsl-hpo experiment files" in missing.stderr
        assert "Traceback" not in missing.stderr


@pytest.mark.slow
def test_s3_search_killed_before_its_first_trial_ends_resumes_from_the_bucket(tmp_path):
    """The study and search record reach the bucket before any trial runs, so a driver SIGKILLed while its
    first trials are still running resumes on a fresh driver from the bucket alone (it used to find no
    study there and fail with KeyError 'Record does not exist')."""
    root = Path(storage.__file__).resolve().parents[1]
    driver = tmp_path / "driver"
    driver.mkdir()
    space = tmp_path / "space.yaml"
    space.write_text("model: eszsl\npreset: small\nparams:\n"
                     "  gamma: {type: float, low: 1.0e-2, high: 1.0e+2, log: true}\n"
                     "  solver: {type: fixed, value: gradient}\n  steps_per_epoch: {type: fixed, value: 60}\n"
                     "  epochs: {type: fixed, value: 10}\npublished: {gamma: 1.0}\n")
    cmd = [sys.executable, str(root / "hpo" / "search.py"), "--space", str(space), "--datasets", "sim-AWA2",
           "--num-samples", "2", "--scheduler", "fifo", "--storage-path", "s3://zsl-early/exp", "--name", "early",
           "--verbose", "0"]
    with s3_server("zsl-early") as client:
        env = dict(os.environ, PYTHONPATH=str(root))
        first = subprocess.Popen(cmd, cwd=driver, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline, keys = time.time() + 240, []
        while time.time() < deadline and "exp/early/trusted-state.json" not in keys:
            keys = bucket_keys(client, "zsl-early")
            time.sleep(0.2)
        first.kill()
        first.wait()
        assert {"exp/early/optuna.db", "exp/early/search.json", "exp/early/trusted-state.json"} <= set(keys)
        ended = [k for k in keys if k.endswith("result.json")]
        shutil.rmtree(driver / "early.hpo")  # a fresh driver: only the bucket is left
        again = subprocess.run(cmd + ["--resume"], cwd=driver, env=env, capture_output=True, text=True, timeout=600)
        assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
        study = optuna.load_study(study_name="early", storage=f"sqlite:///{driver / 'early.hpo' / STUDY}")
        assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 2, (ended, study.trials)
