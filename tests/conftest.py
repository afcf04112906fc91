"""Fixtures shared by several test modules, and the environment every Ray started by the tests shares.

Ray 2.60 turns token authentication on by default; a test's local Ray and the CLI children it starts
must agree, so the suite disables it (and usage reporting) for itself before any Ray starts. Searches
sign their state with a key under XDG_CONFIG_HOME: the suite points it at a folder of its own, so that
it never writes into the user's ~/.config.
"""

import os
import tempfile

import pytest
import torch

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ["XDG_CONFIG_HOME"] = tempfile.mkdtemp(prefix="zsl-hpo-tests-config-")


@pytest.fixture(scope="module")
def one_thread():
    """Run a module's tiny-tensor tests on one thread (OpenMP hand-offs dominate on a shared 2-core CPU)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def ray_session():
    """A real local Ray for one test module (2 CPUs, no dashboard); workers import this checkout. Yields its address."""
    import ray

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    info = ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                    runtime_env={"env_vars": {"PYTHONPATH": root}})
    yield info.address_info["gcs_address"]
    ray.shutdown()
