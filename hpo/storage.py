"""Where a search keeps its Optuna study, given the experiment's storage path.

Ray Tune writes experiment state, checkpoints and TensorBoard files to `storage_path`
itself, local or remote (s3://, gs://, through pyarrow.fs). The Optuna study is different:
SQLite needs a POSIX file system, so it cannot live on S3. The rule:

* `--optuna-storage URL` given (e.g. postgresql://... reachable from the head): used as is.
* local or NFS/EFS storage path: ``sqlite:///<storage_path>/<name>/optuna.db``.
* remote storage path: a SQLite file on the driver's local disk, downloaded from
  ``<storage_path>/<name>/optuna.db`` when the search starts (so that --resume finds the
  study) and uploaded back after every finished trial and at the end (`StudySync`).

Only the driver (the process running the search) ever opens the study, so one local file
with a copy on shared storage is safe.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from urllib.parse import urlparse

import pyarrow.fs
from ray import tune

STUDY_FILE = "optuna.db"


def is_remote(storage_path: str) -> bool:
    """Whether a storage path is a URI (s3://, gs://, ...) rather than a local path."""
    return bool(re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", storage_path)) and not storage_path.startswith("file://")


def study_uri(storage_path: str, name: str) -> str:
    """Location of the study file inside the experiment directory."""
    return f"{storage_path.rstrip('/')}/{name}/{STUDY_FILE}"


def default_cache_dir() -> Path:
    """Local folder for driver-side copies of remote studies."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "zsl-hpo" / "studies"


def local_study_path(storage_path: str, name: str, cache_dir: Path | None = None) -> Path:
    """Driver-local SQLite path standing for the remote study (one per experiment URI)."""
    uri = study_uri(storage_path, name)
    key = f"{urlparse(uri).netloc}-{name}-{hashlib.sha1(uri.encode()).hexdigest()[:10]}"
    return (cache_dir or default_cache_dir()) / key / STUDY_FILE


def remote_exists(uri: str) -> bool:
    """Whether a file exists at a pyarrow-reachable URI."""
    fs, path = pyarrow.fs.FileSystem.from_uri(uri)
    return fs.get_file_info(path).type == pyarrow.fs.FileType.File


def copy_file(source: str, destination: str) -> None:
    """Copy one file between a local path and a URI (either direction), via pyarrow.fs."""
    if not is_remote(destination):
        Path(destination).parent.mkdir(parents=True, exist_ok=True)
    pyarrow.fs.copy_files(source, destination)


class StudySync(tune.Callback):
    """Tune callback that keeps the remote copy of a driver-local SQLite study current.

    Uploads after each trial completes or errors and when the experiment ends, so an
    interrupted search loses at most the study updates of the last trial.
    """

    def __init__(self, local_path: Path, remote_uri: str):
        self.local_path = Path(local_path)
        self.remote_uri = remote_uri

    def upload(self) -> None:
        """Copy the local study file to the experiment directory (if it exists yet)."""
        if self.local_path.is_file():
            copy_file(str(self.local_path), self.remote_uri)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.upload()

    def on_trial_error(self, iteration, trials, trial, **info):
        self.upload()

    def on_experiment_end(self, trials, **info):
        self.upload()


def optuna_storage_for(storage_path: str, name: str, optuna_storage: str | None = None,
                       cache_dir: Path | None = None) -> tuple[str, list[tune.Callback]]:
    """Optuna storage URL for an experiment, plus the Tune callbacks it needs.

    storage_path: the search's --storage-path (local path or URI); name: experiment name;
    optuna_storage: an explicit --optuna-storage URL, which wins. For a remote storage path
    the remote study (if any) is downloaded first, so call this before building the searcher.
    """
    if optuna_storage:
        return optuna_storage, []
    if not is_remote(storage_path):
        local = Path(storage_path.removeprefix("file://")).expanduser().resolve() / name / STUDY_FILE
        local.parent.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{local}", []
    remote = study_uri(storage_path, name)
    local = local_study_path(storage_path, name, cache_dir)
    local.parent.mkdir(parents=True, exist_ok=True)
    if remote_exists(remote):
        copy_file(remote, str(local))
    else:  # a fresh experiment: never continue a stale local copy
        local.unlink(missing_ok=True)
    return f"sqlite:///{local}", [StudySync(local, remote)]
