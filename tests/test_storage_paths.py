"""Where the Optuna study goes for each kind of storage path (no Ray, no network)."""

import sqlite3
from pathlib import Path

import pytest

from hpo import storage


@pytest.mark.parametrize("path,remote", [
    ("s3://bucket/x", True), ("gs://bucket", True), ("/mnt/efs/x", False), ("relative", False),
    ("file:///tmp/x", False), ("~/ray_results", False)])
def test_is_remote(path, remote):
    assert storage.is_remote(path) is remote


def test_local_storage_keeps_study_in_experiment_dir(tmp_path):
    url, callbacks = storage.optuna_storage_for(str(tmp_path / "results"), "exp")
    assert url == f"sqlite:///{tmp_path / 'results' / 'exp' / 'optuna.db'}" and callbacks == []
    assert (tmp_path / "results" / "exp").is_dir()
    sqlite3.connect(url.removeprefix("sqlite:///")).close()  # a usable SQLite location


def test_explicit_optuna_storage_wins(tmp_path):
    url, callbacks = storage.optuna_storage_for("s3://bucket/x", "exp", optuna_storage="postgresql://db/zsl")
    assert (url, callbacks) == ("postgresql://db/zsl", [])


def test_remote_study_cache_is_per_experiment(tmp_path):
    a = storage.local_study_path("s3://bucket/x", "exp", cache_dir=tmp_path)
    b = storage.local_study_path("s3://bucket/y", "exp", cache_dir=tmp_path)
    assert a != b and a.parent.parent == tmp_path and a.name == "optuna.db"
    assert storage.study_uri("s3://bucket/x/", "exp") == "s3://bucket/x/exp/optuna.db"
