"""The real search CLI (hpo/search.py, ESZSL gradient solver on simulated data) on a
multi-node ray.cluster_utils.Cluster: trials spread over workers, and trials whose nodes are
lost mid-run restore from their checkpoints on surviving nodes, the search completing.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray
from ray._private import state as ray_state

import hpo
from test_distributed import cluster  # noqa: F401 -- the shared multi-node fixture

ROOT = Path(hpo.__file__).resolve().parents[1]
SIMULATED = "sim-AWA2,sim-CUB,sim-SUN"  # simulated benchmarks: three datasets make a trial last seconds


def search(cluster, storage, *extra):
    """Start hpo/search.py against the cluster in a subprocess; returns the Popen."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    cmd = [sys.executable, str(ROOT / "hpo" / "search.py"), "--space", "eszsl", "--datasets", SIMULATED,
           "--scheduler", "fifo", "--address", cluster.address, "--storage-path", str(storage),
           "--name", "dist", "--verbose", "0", *extra]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def trial_rows(experiment):
    """Every trial's reported rows (result.json), keyed by trial folder name."""
    return {f.parent.name: [json.loads(line) for line in f.read_text().splitlines()]
            for f in Path(experiment).glob("*/result.json")}


def finish(proc, timeout_s=400):
    """Wait for the search; fail with its output if it did not succeed."""
    out, _ = proc.communicate(timeout=timeout_s)
    assert proc.returncode == 0, out[-3000:]


@pytest.mark.slow
def test_real_search_spreads_over_workers(cluster, tmp_path):
    workers = {cluster.add_node(num_cpus=1).node_id for _ in range(2)}
    cluster.wait_for_nodes()
    proc = search(cluster, tmp_path, "--num-samples", "4", "--max-concurrent", "2")
    ray.init(address=cluster.address, log_to_driver=False)
    seen = set()
    while proc.poll() is None:  # where trial actors live, sampled while the search runs
        seen |= {a["Address"]["NodeID"] for a in ray_state.actors().values() if a["State"] == "ALIVE"}
        time.sleep(0.1)
    finish(proc)
    rows = trial_rows(tmp_path / "dist")
    assert len(rows) == 4 and all(rows.values())  # (a sampled setting may diverge: that trial errors)
    assert seen & workers == workers  # both workers ran trials
    assert cluster.head_node.node_id not in seen  # the 0-CPU head never did


@pytest.mark.slow
def test_real_search_survives_losing_nodes_mid_trial(cluster, tmp_path):
    workers = [cluster.add_node(num_cpus=1) for _ in range(4)]  # 2 run trials, 2 spare
    cluster.wait_for_nodes()
    proc = search(cluster, tmp_path, "--num-samples", "2", "--max-concurrent", "2", "--max-failures", "3")
    ray.init(address=cluster.address, log_to_driver=False)
    experiment = tmp_path / "dist"
    deadline = time.monotonic() + 300
    # Two results processed by the driver means a checkpoint is registered for that trial.
    while not any(len(rows) >= 2 for rows in trial_rows(experiment).values()):
        assert proc.poll() is None and time.monotonic() < deadline, "no trial reported twice"
        time.sleep(0.02)
    running = [a for a in ray_state.actors().values() if a["State"] == "ALIVE"]
    for actor in running:  # freeze the trials mid-run, then lose their nodes
        os.kill(actor["Pid"], signal.SIGSTOP)
    lost = {a["Address"]["NodeID"] for a in running}
    for node in workers:
        if node.node_id in lost:
            cluster.remove_node(node, allow_graceful=False)
    for actor in running:  # a stopped process cannot notice its raylet died: end it
        try:
            os.kill(actor["Pid"], signal.SIGKILL)
        except ProcessLookupError:
            pass
    finish(proc)
    rows = trial_rows(experiment)
    # Seed 0 samples the space's published point and one stable setting: both must finish.
    assert len(rows) == 2 and all(r[-1]["epoch"] == r[-1]["epochs_total"] for r in rows.values())
    restored = [name for name, r in rows.items()
                if any(row["iterations_since_restore"] == 1 and row["training_iteration"] > 1 for row in r)]
    assert restored, "no trial continued from a checkpoint"  # resumed mid-run, not from scratch
    assert lost and len(lost) <= 2
