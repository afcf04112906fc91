"""What a search may do to the folders it is pointed at: names, ownership marker, removal, lock.

* An experiment name is one plain path component (letters, digits, ``. _ -``, not ``.``/``..``, no
  separator), so ``<storage>/<name>`` never names the storage folder itself or anything above it.
* Every folder a search creates (the experiment folder, and the driver's sidecar folder for remote
  storage) carries the marker file :data:`MARKER` holding the experiment's id. ``--force`` removes a
  folder only when it carries that marker, is not a symbolic link, and lies directly inside the folder
  it is expected in; anything else is refused with one sentence.
* :class:`FolderLock` is an exclusive, non-blocking ``flock`` on ``.<name>.lock`` beside the sidecar
  folder (beside, so that ``--force`` can delete and remake the folder while holding it), held by the
  driver for the whole search: a second search (or a ``--force``) on the same experiment is refused
  while the first is alive. The kernel drops the lock when the driver dies, even by SIGKILL.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import shutil
from pathlib import Path

from zsl.errors import UserError

MARKER = ".zsl-hpo-experiment"
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")


def check_name(name: str) -> str:
    """``name`` if it is a safe experiment name (one path component), else a UserError."""
    if not _NAME.match(name or "") or name in (".", ".."):
        raise UserError(f"--name {name!r} is not a plain experiment name: use 1-128 letters, digits, '.', '_' "
                        "or '-', starting with a letter, digit or '_' (no '/', no '.' or '..').")
    return name


def write_marker(folder: Path, experiment_id: str) -> None:
    """Mark ``folder`` as made by zsl-hpo for experiment ``experiment_id``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MARKER).write_text(json.dumps({"experiment_id": experiment_id}) + "\n")


def marker_id(folder: Path) -> str | None:
    """The experiment id in ``folder``'s marker, or None when it has no (readable) marker."""
    try:
        return json.loads((folder / MARKER).read_text())["experiment_id"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def remove_experiment_folder(folder: Path, parent: Path, flag: str = "--force") -> None:
    """Delete ``folder`` (a search's own folder directly inside ``parent``); refuse anything else.

    Refused (UserError, nothing deleted): a symbolic link, a path not directly inside ``parent``
    once resolved, or a folder without the zsl-hpo marker.
    """
    if not folder.exists() and not folder.is_symlink():
        return
    if folder.is_symlink() or not folder.is_dir():
        raise UserError(f"{flag}: {folder} is not a folder made by zsl-hpo (a link or a file): remove or rename it "
                        "yourself, or choose another --name.")
    if folder.resolve().parent != parent.resolve():
        raise UserError(f"{flag}: {folder} does not lie directly inside {parent}: refusing to delete it; "
                        "choose another --name.")
    if marker_id(folder) is None:
        raise UserError(f"{flag}: {folder} exists but was not made by zsl-hpo (no {MARKER} in it): nothing was "
                        "deleted; remove it yourself or choose another --name.")
    shutil.rmtree(folder)


class FolderLock:
    """An exclusive lock on ``<parent>/.<name>.lock`` for ``folder`` = ``<parent>/<name>``, held until release."""

    def __init__(self, folder: Path, what: str):
        folder = Path(folder)
        self.path, self.what, self._fh = folder.parent / f".{folder.name}.lock", what, None

    def acquire(self) -> FolderLock:
        """Take the lock or raise a UserError naming the process that holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            fh.close()
            if err.errno in (errno.EAGAIN, errno.EACCES):
                raise UserError(f"{self.what} is in use by a live search ({holder}): wait for it to end, stop it, "
                                "or choose another --name.") from None
            raise
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} on {os.uname().nodename}\n")
        fh.flush()
        self._fh = fh
        return self

    def release(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
