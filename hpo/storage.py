"""Keeping a search's driver-side files (Optuna study, search record) on remote storage.

Ray Tune writes experiment state, checkpoints and TensorBoard files to `storage_path` itself,
local or remote (s3://, gs://, through pyarrow.fs). The Optuna study cannot follow: SQLite
needs a POSIX file system, so it cannot live on S3. The rule:

* local or NFS/EFS storage path: the study sits in the experiment directory itself.
* remote storage path: the study (and any other driver-side file, such as the search record)
  lives in a local "sidecar" folder on the driver, is uploaded to the experiment directory
  after every finished trial and at the end (`SidecarSync`), and is fetched back before a
  resume (`fetch_sidecar`), so that a new head node can continue the search from the bucket.
* `--optuna-storage URL` (e.g. postgresql://... reachable from the head) bypasses SQLite.

Only the driver ever opens the study, so one local file with a copy on shared storage is safe.
"""

from __future__ import annotations

import re
from pathlib import Path

import pyarrow.fs
from ray import tune


def is_remote(storage_path: str) -> bool:
    """Whether a storage path is a URI (s3://, gs://, ...) rather than a local path."""
    return bool(re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", storage_path)) and not storage_path.startswith("file://")


def local_path(path: str) -> Path:
    """A local folder given as a path or a ``file://`` URI, expanded and absolute."""
    if path.startswith("file://"):
        path = path[len("file://"):]
    return Path(path).expanduser().resolve()


def filesystem(folder: str) -> tuple[pyarrow.fs.FileSystem, str]:
    """The pyarrow file system and path of a local folder or a URI."""
    if is_remote(folder):
        return pyarrow.fs.FileSystem.from_uri(folder)
    return pyarrow.fs.LocalFileSystem(), folder


def files_in(folder: str) -> list[str]:
    """Names of the plain files directly inside a local or remote folder (empty when it does not exist)."""
    fs, path = filesystem(folder)
    infos = fs.get_file_info(pyarrow.fs.FileSelector(path, allow_not_found=True))
    return sorted(Path(info.path).name for info in infos if info.type == pyarrow.fs.FileType.File)


def copy_file(source: str, destination: str) -> None:
    """Copy one file between a local path and a URI (either direction), via pyarrow.fs."""
    if not is_remote(destination):
        Path(destination).parent.mkdir(parents=True, exist_ok=True)
    pyarrow.fs.copy_files(source, destination)


def fetch_sidecar(remote_dir: str, local_dir: Path, names: tuple[str, ...]) -> list[str]:
    """Download the files `names` found in remote_dir into local_dir; returns those fetched.

    Local copies of the other names are deleted, so a stale local file from an earlier run
    of the same name never stands in for a missing remote one.
    """
    present = set(files_in(remote_dir))
    local_dir = Path(local_dir)
    local_dir.mkdir(parents=True, exist_ok=True)
    for name in names:
        if name in present:
            copy_file(f"{remote_dir.rstrip('/')}/{name}", str(local_dir / name))
        else:
            (local_dir / name).unlink(missing_ok=True)
    return [name for name in names if name in present]


def fetch_tree(remote_dir: str, local_dir: Path, names: tuple[str, ...]) -> int:
    """Download every file called one of ``names`` under remote_dir (any depth) into local_dir, keeping
    the relative layout; returns how many were fetched."""
    fs, root = filesystem(remote_dir)
    root = root.rstrip("/")
    infos = fs.get_file_info(pyarrow.fs.FileSelector(root, recursive=True, allow_not_found=True))
    fetched = 0
    for info in infos:
        if info.type == pyarrow.fs.FileType.File and Path(info.path).name in names:
            target = Path(local_dir) / info.path[len(root) + 1:]
            target.parent.mkdir(parents=True, exist_ok=True)
            pyarrow.fs.copy_files(info.path, str(target), source_filesystem=fs)
            fetched += 1
    return fetched


class SidecarSync(tune.Callback):
    """Tune callback that uploads the driver's sidecar files to the remote experiment dir.

    Uploads whenever a file changed, checked after every step of Ray's loop (before the signed
    snapshot of hpo.trusted_state is taken in the same step, so the bucket's study is never older
    than the snapshot a resume starts from), after each trial ends and when the experiment ends.
    local_dir: the driver-local folder; remote_dir: the experiment directory URI.
    """

    def __init__(self, local_dir: Path, remote_dir: str, names: tuple[str, ...]):
        self.local_dir = Path(local_dir)
        self.remote_dir = remote_dir.rstrip("/")
        self.names = names
        self._uploaded: tuple = ()

    def _stamp(self) -> tuple:
        paths = [self.local_dir / name for name in self.names]
        return tuple((p.stat().st_mtime_ns, p.stat().st_size) if p.is_file() else None for p in paths)

    def upload(self) -> None:
        """Copy every existing sidecar file to the experiment directory."""
        stamp = self._stamp()
        for name in self.names:
            if (self.local_dir / name).is_file():
                copy_file(str(self.local_dir / name), f"{self.remote_dir}/{name}")
        self._uploaded = stamp

    def on_step_end(self, iteration, trials, **info):
        if self._stamp() != self._uploaded:
            self.upload()

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.upload()

    def on_trial_error(self, iteration, trials, trial, **info):
        self.upload()

    def on_experiment_end(self, trials, **info):
        self.upload()


def sync_callbacks(experiment_dir: str, sidecar: Path, names: tuple[str, ...]) -> list[tune.Callback]:
    """The Tune callbacks that keep `sidecar` copied into a remote experiment dir (none for local)."""
    return [SidecarSync(sidecar, experiment_dir, names)] if is_remote(experiment_dir) else []
