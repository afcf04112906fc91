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

from hpo.trusted_state import RAY_STATE_PATTERNS, SNAPSHOT_FILE


def trial_statuses(raw: bytes | str) -> dict[str, str]:
    """Trial id -> status of one ``experiment_state-*.json`` content (ValueError when it is not one)."""
    state = json.loads(raw)
    statuses = {}
    for entry in state["trial_data"]:
        meta = json.loads(entry[0] if isinstance(entry, list) else entry)
        statuses[meta["trial_id"]] = meta["status"]
    return statuses


def ray_trial_status(exp: Path) -> dict[str, str]:
    """Trial id -> Ray's status for the experiment folder ``exp``; {} when no readable trial list exists.

    Reads the newest trial list Ray wrote; when that one is damaged (a kill or a full disk while it was
    copied), the copy in the signed snapshot.
    """
    candidates = sorted(fnmatch.filter([p.name for p in exp.glob("experiment_state-*.json")], RAY_STATE_PATTERNS[0]))
    sources = [(exp / name).read_bytes for name in reversed(candidates)] + [lambda: _from_snapshot(exp)]
    for read in sources:
        try:
            raw = read()
            if raw:
                return trial_statuses(raw)
        except (OSError, ValueError, KeyError, TypeError, IndexError):
            continue
    return {}


def saved_statuses(experiment_dir: str) -> dict[str, str]:
    """Trial id -> status in the newest trial list Ray saved in ``experiment_dir`` (a folder or URI); {} if none."""
    from hpo.storage import files_in, filesystem

    fs, root = filesystem(experiment_dir)
    names = fnmatch.filter(files_in(experiment_dir), RAY_STATE_PATTERNS[0])
    if not names:
        return {}
    try:
        with fs.open_input_stream(f"{root.rstrip('/')}/{max(names)}") as stream:
            return trial_statuses(stream.readall())
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return {}


def _from_snapshot(exp: Path) -> bytes | None:
    files = json.loads((exp / SNAPSHOT_FILE).read_text())["files"]
    names = fnmatch.filter(files, RAY_STATE_PATTERNS[0])
    return base64.b64decode(files[max(names)]) if names else None
