"""Ray's own record of how each trial ended, read as plain JSON (nothing is unpickled).

Ray's trial list (``experiment_state-*.json``) holds every trial's status: TERMINATED (ended by itself
or by the scheduler), ERROR (failed after its retries), or RUNNING / PAUSED / PENDING (the search was
interrupted). Error files in a trial folder are not a status: Ray leaves them behind when it recovers
a trial from its checkpoint after a crash.
"""

from __future__ import annotations

import base64
import fnmatch
import json
from pathlib import Path

from hpo.storage import files_in, filesystem
from hpo.trusted_state import RAY_STATE_PATTERNS, SNAPSHOT_FILE, read_bytes


def trial_statuses(raw: bytes | str) -> dict[str, str]:
    """Trial id -> status of one ``experiment_state-*.json`` content (ValueError when it is not one)."""
    state = json.loads(raw)
    statuses = {}
    for entry in state["trial_data"]:
        meta = json.loads(entry[0] if isinstance(entry, list) else entry)
        statuses[meta["trial_id"]] = meta["status"]
    return statuses


def ray_trial_status(experiment_dir: str | Path) -> dict[str, str]:
    """Trial id -> Ray's status for ``experiment_dir`` (a folder or URI); {} when no readable trial list exists.

    Reads the newest trial list Ray wrote; when that one is damaged (a kill or a full disk while it was
    copied), the copy in the signed snapshot.
    """
    fs, root = filesystem(str(experiment_dir))
    root = root.rstrip("/")
    names = sorted(fnmatch.filter(files_in(str(experiment_dir)), RAY_STATE_PATTERNS[0]), reverse=True)
    sources = [lambda n=name: read_bytes(fs, f"{root}/{n}") for name in names]
    for read in sources + [lambda: _from_snapshot(read_bytes(fs, f"{root}/{SNAPSHOT_FILE}"))]:
        try:
            raw = read()
            if raw:
                return trial_statuses(raw)
        except (OSError, ValueError, KeyError, TypeError, IndexError):
            continue
    return {}


def _from_snapshot(raw: bytes | None) -> bytes | None:
    """The newest trial list held in a signed snapshot's content (None without one)."""
    if raw is None:
        return None
    files = json.loads(raw)["files"]
    names = fnmatch.filter(files, RAY_STATE_PATTERNS[0])
    return base64.b64decode(files[max(names)]) if names else None
