"""Test helpers around a search's signed snapshot (hpo.trusted_state): read it, edit it with the key."""

import base64
import fnmatch
import json
from pathlib import Path

from hpo.trusted_state import SNAPSHOT_FILE, load_key, signed


def snapshot_files(exp: Path) -> dict[str, bytes]:
    """The Ray state files held in ``exp``'s signed snapshot."""
    doc = json.loads((exp / SNAPSHOT_FILE).read_text())
    return {name: base64.b64decode(content) for name, content in doc["files"].items()}


def resign(exp: Path, key_file: str, edit) -> None:
    """Replace the snapshot's trial list by ``edit(state_dict)`` and sign it again with ``key_file``
    (what a snapshot taken at an earlier moment would hold)."""
    doc = json.loads((exp / SNAPSHOT_FILE).read_text())
    (name,) = fnmatch.filter(doc["files"], "experiment_state-*.json")
    state = json.loads(base64.b64decode(doc["files"][name]))
    doc["files"][name] = base64.b64encode(json.dumps(edit(state)).encode()).decode()
    body = {k: v for k, v in doc.items() if k != "mac"}
    (exp / SNAPSHOT_FILE).write_text(json.dumps(signed(load_key(key_file, create=False), body)))
