"""Resume trusts only state this project signed: Ray's pickled files pass through a signed snapshot.

Ray Tune restores a search by unpickling files from the experiment folder (``tuner.pkl``, the
trial list ``experiment_state-*.json`` whose entries embed cloudpickle, the searcher snapshots
``search_gen_state-*.json`` and ``searcher-state-*.pkl``, a grid's ``basic-variant-state-*.json``).
Whoever can write that folder (a shared disk, an S3 bucket) could otherwise run code on the driver at the next ``--resume``. So:

* the driver holds a secret key (:func:`load_key`; ``$XDG_CONFIG_HOME/zsl-hpo/state.key``, by default
  ``~/.config/zsl-hpo/state.key``, created on the first search, mode 0600, never written to the
  experiment folder);
* :class:`SignedSnapshot`, a Tune callback, copies Ray's state files from the driver's staging folder
  -- right after Ray wrote them there, all from one moment -- into one JSON file,
  ``trusted-state.json``, with an HMAC-SHA256 over its content and the experiment id, replaced whole
  (temporary file + rename locally, one PUT on object stores) in the experiment folder;
* ``tuner.pkl`` gets its HMAC in ``tuner-signature.json`` when the Tuner is made (:func:`sign_tuner`);
* before ``Tuner.restore``, :func:`restore_signed_state` checks both and writes the snapshot's files
  back over whatever Ray state files the folder holds; anything that does not verify (missing,
  truncated by a kill or a full disk, altered, signed with another key or for another experiment)
  is refused with one sentence, and nothing is unpickled.

A driver killed between a Ray snapshot and the next signed one resumes from the signed one, which is
self-consistent (one moment) but may be a little older: trials then continue from their checkpoints.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import hmac
import json
import os
import secrets
from pathlib import Path

import pyarrow.fs
from ray import tune

from hpo.storage import filesystem
from zsl.errors import UserError

SNAPSHOT_FILE = "trusted-state.json"
TUNER_FILE, TUNER_SIGNATURE = "tuner.pkl", "tuner-signature.json"
RAY_STATE_PATTERNS = ("experiment_state-*.json", "search_gen_state-*.json", "searcher-state-*.pkl",
                      "callback-states-*.pkl", "basic-variant-state-*.json")  # the last: a grid's generator (pickled)
FORMAT = 1


def default_key_file() -> str:
    """``$XDG_CONFIG_HOME/zsl-hpo/state.key`` (``~/.config`` when XDG_CONFIG_HOME is unset)."""
    return str(Path(os.environ.get("XDG_CONFIG_HOME") or "~/.config") / "zsl-hpo" / "state.key")


def load_key(key_file: str, create: bool) -> bytes:
    """The driver's signing key from ``key_file`` (made, 32 random bytes, mode 0600, when ``create``)."""
    path = Path(key_file).expanduser()
    if not path.is_file():
        if not create:
            raise UserError(f"--resume: the signing key {path} is missing on this machine: copy it from the machine "
                            "that ran the search (see cluster/README.md, 'Trust') or pass it with --state-key.")
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32) + "\n")
    try:
        key = bytes.fromhex(path.read_text().strip())
    except (OSError, ValueError):
        key = b""
    if len(key) < 16:
        raise UserError(f"--state-key: {path} is not a zsl-hpo signing key (64 hex digits): restore it or point "
                        "--state-key at the right file.")
    return key


def mac(key: bytes, document: dict) -> str:
    """HMAC-SHA256 (hex) of ``document`` in canonical JSON (sorted keys, no spaces)."""
    payload = json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
    return hmac.new(key, payload, hashlib.sha256).hexdigest()


def signed(key: bytes, document: dict) -> dict:
    return {**document, "mac": mac(key, document)}


def verified(key: bytes, record: dict, experiment_id: str) -> bool:
    """Whether ``record`` (a signed document) carries a valid MAC for ``experiment_id``."""
    body = {k: v for k, v in record.items() if k != "mac"}
    return (isinstance(record.get("mac"), str) and hmac.compare_digest(record["mac"], mac(key, body))
            and body.get("experiment_id") == experiment_id and body.get("format") == FORMAT)


def newest_state_files(names: list[str]) -> list[str]:
    """For each Ray state pattern, the newest matching name (the one Ray restores; names end in a timestamp)."""
    return [max(found) for pattern in RAY_STATE_PATTERNS if (found := fnmatch.filter(names, pattern))]


def write_whole(fs: pyarrow.fs.FileSystem, path: str, payload: bytes) -> None:
    """Replace ``path`` in one step: temporary file + rename locally, a single PUT on object stores."""
    if isinstance(fs, pyarrow.fs.LocalFileSystem):
        tmp = f"{path}.tmp-{os.getpid()}"
        with fs.open_output_stream(tmp) as stream:
            stream.write(payload)
        fs.move(tmp, path)
    else:
        with fs.open_output_stream(path) as stream:
            stream.write(payload)


def read_bytes(fs: pyarrow.fs.FileSystem, path: str) -> bytes | None:
    try:
        with fs.open_input_stream(path) as stream:
            return stream.readall()
    except (FileNotFoundError, OSError):
        return None


def sign_tuner(experiment_dir: str, key: bytes, experiment_id: str) -> None:
    """Write ``tuner-signature.json`` for the ``tuner.pkl`` Ray just wrote in ``experiment_dir``."""
    fs, root = filesystem(experiment_dir)
    content = read_bytes(fs, f"{root}/{TUNER_FILE}")
    if content is None:
        raise FileNotFoundError(f"{experiment_dir}/{TUNER_FILE}")
    doc = signed(key, {"format": FORMAT, "experiment_id": experiment_id, "sha256": hashlib.sha256(content).hexdigest()})
    write_whole(fs, f"{root}/{TUNER_SIGNATURE}", json.dumps(doc).encode())


class SignedSnapshot(tune.Callback):
    """Keeps ``trusted-state.json`` in the experiment folder equal to Ray's newest snapshot, signed.

    Runs in the driver after every controller step (Ray writes its snapshot to the driver staging
    folder synchronously earlier in the same step) and at the end of the experiment (after Ray's
    final snapshot). Rewrites the signed file only when a state file changed.
    """

    def __init__(self, key_file: str, experiment_id: str):
        self.key_file, self.experiment_id = key_file, experiment_id
        self._key: bytes | None = None
        self._seen: tuple = ()

    def __getstate__(self) -> dict:  # pickled into tuner.pkl: never the key, never the cache
        return {"key_file": self.key_file, "experiment_id": self.experiment_id}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["key_file"], state["experiment_id"])

    def on_step_end(self, iteration: int, trials: list, **info) -> None:
        self.snapshot(trials)

    def on_experiment_end(self, trials: list, **info) -> None:
        self.snapshot(trials)

    def snapshot(self, trials: list) -> None:
        """Sign and store Ray's newest state files when they changed since the last call."""
        if not trials:
            return
        storage = trials[0].storage
        staging = Path(storage.experiment_driver_staging_path)
        if not staging.is_dir():
            return
        names = newest_state_files([p.name for p in staging.iterdir() if p.is_file()])
        if not any(fnmatch.fnmatch(n, RAY_STATE_PATTERNS[0]) for n in names):
            return
        stats = tuple((n, (staging / n).stat().st_mtime_ns, (staging / n).stat().st_size) for n in names)
        if stats == self._seen:
            return
        content = {n: (staging / n).read_bytes() for n in names}
        if not all(_complete(n, c) for n, c in content.items()):
            return  # Ray's write failed part-way (e.g. a full disk): keep the last signed snapshot
        if self._key is None:
            self._key = load_key(self.key_file, create=False)
        files = {n: base64.b64encode(c).decode() for n, c in content.items()}
        doc = signed(self._key, {"format": FORMAT, "experiment_id": self.experiment_id, "files": files})
        fs, root = storage.storage_filesystem, storage.experiment_fs_path
        write_whole(fs, f"{root}/{SNAPSHOT_FILE}", json.dumps(doc).encode())
        self._seen = stats


def restore_signed_state(experiment_dir: str, key: bytes, experiment_id: str) -> list[str]:
    """Check ``tuner.pkl`` and the signed snapshot of ``experiment_dir``; put the snapshot's files in place.

    Every Ray state file of the folder is replaced by the snapshot's copy (others matching Ray's state
    patterns are deleted). Returns the restored names. UserError (nothing changed) when anything fails
    to verify.
    """
    fs, root = filesystem(experiment_dir)
    root = root.rstrip("/")
    where = f"--resume: {experiment_dir}"
    tuner = read_bytes(fs, f"{root}/{TUNER_FILE}")
    signature = _json(read_bytes(fs, f"{root}/{TUNER_SIGNATURE}"))
    if tuner is None:
        raise UserError(f"{where} has no {TUNER_FILE} (the search never started): start it again with --force.")
    if signature is None or not verified(key, signature, experiment_id) \
            or not hmac.compare_digest(signature.get("sha256", ""), hashlib.sha256(tuner).hexdigest()):
        raise UserError(f"{where}/{TUNER_FILE} does not match its signature (missing, truncated, altered, or signed "
                        "with another key): nothing was loaded; start again with --force or another --name.")
    raw = read_bytes(fs, f"{root}/{SNAPSHOT_FILE}")
    if raw is None:
        raise UserError(f"{where} holds no signed snapshot ({SNAPSHOT_FILE}): the search was stopped before its "
                        "first trial was recorded; start it again with --force.")
    snapshot = _json(raw)
    if snapshot is None:
        raise UserError(f"{where}/{SNAPSHOT_FILE} is truncated or damaged (a full disk or a kill while it was "
                        "written): nothing was loaded; free space and start again with --force.")
    if not verified(key, snapshot, experiment_id) or not isinstance(snapshot.get("files"), dict):
        raise UserError(f"{where}/{SNAPSHOT_FILE} does not carry this experiment's signature (altered, copied from "
                        "another experiment, or signed with another key): nothing was loaded; see cluster/README.md "
                        "'Trust'.")
    files = snapshot["files"]
    if not all(Path(n).name == n and _is_state_file(n) and isinstance(c, str) for n, c in files.items()):
        raise UserError(f"{where}/{SNAPSHOT_FILE} lists a file that is not Ray state: nothing was loaded.")
    infos = fs.get_file_info(pyarrow.fs.FileSelector(root, allow_not_found=True))
    for name in [Path(i.path).name for i in infos if i.type == pyarrow.fs.FileType.File]:
        if _is_state_file(name) and name not in files:
            fs.delete_file(f"{root}/{name}")
    for name, content in files.items():
        write_whole(fs, f"{root}/{name}", base64.b64decode(content))
    return sorted(snapshot["files"])


def _complete(name: str, content: bytes) -> bool:
    """Whether a Ray state file was written whole: the trial list (written in place, not atomically) must be
    a JSON document with its trial data; the searcher files are replaced atomically by Ray and must be non-empty."""
    if not fnmatch.fnmatch(name, RAY_STATE_PATTERNS[0]):
        return bool(content)
    try:
        return isinstance(json.loads(content)["trial_data"], list)
    except (ValueError, KeyError, TypeError):
        return False


def _is_state_file(name: str) -> bool:
    return any(fnmatch.fnmatch(name, pattern) for pattern in RAY_STATE_PATTERNS)


def _json(raw: bytes | None) -> dict | None:
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def main() -> int:
    """``python -m hpo.trusted_state``: make this machine's signing key (if missing) and print its path."""
    path = Path(default_key_file()).expanduser()
    load_key(str(path), create=True)
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
