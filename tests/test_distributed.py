"""Multi-node behaviour on one machine with ray.cluster_utils.Cluster (real raylets).

A head with no CPUs (like cluster/gpu.yaml) plus small worker nodes: trials spread over the
workers; a worker killed mid-trial makes the trial restore from its checkpoint on another node;
fractional GPUs (fake GPU counts, no real GPU needed) pack four trials onto one GPU.
"""

import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import ray
from ray import cloudpickle, tune
from ray.cluster_utils import Cluster

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers cannot import tests/

# Detect a dead node in ~1.5 s instead of Ray's default ~15 s.
FAST_FAILURE_DETECTION = {"health_check_period_ms": 500, "health_check_failure_threshold": 3,
                          "health_check_initial_delay_ms": 0}


@pytest.fixture
def cluster():
    """A head advertising 0 CPUs (so trials only run on added workers); torn down after."""
    made = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "include_dashboard": False, "_system_config": FAST_FAILURE_DETECTION})
    try:
        yield made
    finally:
        ray.shutdown()
        made.shutdown()


def connect(cluster):
    """Connect the driver after all nodes are up."""
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)


def checkpointing_trainable(config):
    """Reports node id per step and checkpoints each step; logs each (re)start to a file.

    config: steps (int), step_s (seconds per step), log_dir (a folder every node can see).
    """
    start = 0
    checkpoint = tune.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as folder:
            start = json.loads((Path(folder) / "state.json").read_text())["step"]
    node = ray.get_runtime_context().get_node_id()
    trial = tune.get_context().get_trial_id()
    with open(Path(config["log_dir"]) / f"{trial}.starts", "a") as log:
        log.write(json.dumps({"node": node, "start": start}) + "\n")
    for step in range(start + 1, config["steps"] + 1):
        time.sleep(config["step_s"])
        with tempfile.TemporaryDirectory() as folder:
            (Path(folder) / "state.json").write_text(json.dumps({"step": step}))
            tune.report({"score": step, "node": node, "start": start},
                        checkpoint=tune.Checkpoint.from_directory(folder))


def starts(log_dir, trial_id):
    """The (node, start step) of each time a trial started."""
    text = (Path(log_dir) / f"{trial_id}.starts").read_text()
    return [json.loads(line) for line in text.splitlines()]


def tuner(trainable, tmp_path, num_samples, config, max_failures=0, resources=None):
    """A Tuner over `num_samples` copies of `config`, stored under tmp_path."""
    if resources:
        trainable = tune.with_resources(trainable, resources)
    return tune.Tuner(
        trainable, param_space=config,
        tune_config=tune.TuneConfig(num_samples=num_samples),
        run_config=tune.RunConfig(storage_path=str(tmp_path / "results"), name="dist", verbose=0,
                                  failure_config=tune.FailureConfig(max_failures=max_failures)))


@pytest.mark.slow
def test_trials_spread_over_worker_nodes(cluster, tmp_path):
    workers = {cluster.add_node(num_cpus=1).node_id for _ in range(2)}
    connect(cluster)
    config = {"steps": 3, "step_s": 0.2, "log_dir": str(tmp_path)}
    results = tuner(checkpointing_trainable, tmp_path, 4, config).fit()
    assert not results.errors and len(results) == 4
    assert all(r.metrics["training_iteration"] == 3 for r in results)
    used = {r.metrics["node"] for r in results}
    assert used == workers  # both workers used, never the 0-CPU head


def wait_for(predicate, timeout_s, what):
    """Poll until predicate() is truthy; fail the test after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout_s} s waiting for {what}")


@pytest.mark.slow
def test_trial_survives_losing_its_node(cluster, tmp_path):
    nodes = {cluster.add_node(num_cpus=1).node_id: None for _ in range(3)}
    connect(cluster)
    nodes = {n.node_id: n for n in cluster.worker_nodes}
    config = {"steps": 8, "step_s": 0.5, "log_dir": str(tmp_path)}
    run = tuner(checkpointing_trainable, tmp_path, 2, config, max_failures=2)
    outcome = {}
    fit = threading.Thread(target=lambda: outcome.update(results=run.fit()))
    fit.start()

    def victim():
        """A trial with >= 2 checkpoints on disk, and the node it runs on."""
        for trial_dir in (tmp_path / "results" / "dist").glob("checkpointing_trainable_*"):
            if len(list(trial_dir.glob("checkpoint_*"))) >= 2:
                trial_id = "_".join(trial_dir.name.split("_")[2:4])  # <hash>_<index>
                return trial_id, starts(tmp_path, trial_id)[-1]["node"]
        return None

    trial_id, node_id = wait_for(victim, 120, "a trial to write two checkpoints")
    cluster.remove_node(nodes[node_id], allow_graceful=False)
    fit.join(timeout=300)
    assert not fit.is_alive(), "search did not finish after the node loss"
    results = outcome["results"]
    assert not results.errors and len(results) == 2
    assert all(r.metrics["training_iteration"] == 8 for r in results)  # nothing lost
    history = starts(tmp_path, trial_id)
    assert len(history) == 2, history  # started once, restored once
    assert history[1]["start"] >= 2  # resumed from its checkpoint, not from scratch
    assert history[1]["node"] != node_id  # on a surviving node


def gpu_trainable(config):
    """Records its GPU ids and run interval; waits until `together` trials have started."""
    log_dir = Path(config["log_dir"])
    trial = tune.get_context().get_trial_id()
    began = time.time()
    (log_dir / f"{trial}.began").touch()
    deadline = time.monotonic() + config["wait_s"]
    while len(list(log_dir.glob("*.began"))) < config["together"] and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    tune.report({"gpu_ids": [str(g) for g in ray.get_gpu_ids()], "began": began, "ended": time.time(),
                 "node": ray.get_runtime_context().get_node_id()})


def max_overlap(intervals):
    """Largest number of (start, end) intervals open at one instant."""
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    open_now = peak = 0
    for _, change in events:
        open_now += change
        peak = max(peak, open_now)
    return peak


@pytest.mark.slow
def test_quarter_gpu_trials_pack_four_per_gpu(cluster, tmp_path):
    gpu_node = cluster.add_node(num_cpus=8, num_gpus=1).node_id  # a fake GPU count
    connect(cluster)
    config = {"log_dir": str(tmp_path), "together": 4, "wait_s": 60}
    results = tuner(gpu_trainable, tmp_path, 8, config, resources={"cpu": 1, "gpu": 0.25}).fit()
    assert not results.errors and len(results) == 8
    metrics = [r.metrics for r in results]
    assert all(m["node"] == gpu_node and m["gpu_ids"] == ["0"] for m in metrics)
    assert max_overlap([(m["began"], m["ended"]) for m in metrics]) == 4
