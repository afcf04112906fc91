"""One search experiment: options -> a Ray Tune Tuner (new or restored) -> results.

The experiment directory ``<storage_path>/<name>/`` holds Ray's trial folders (TensorBoard event
files, results, checkpoints), ``search.json`` (the options and context of this search, read by
the report), ``optuna.db`` (the Optuna study, unless ``optuna_storage`` names another database),
the zsl-hpo marker and Ray's state with its signed copy (see hpo.folder_guard, hpo.trusted_state).
``search.json`` holds no absolute path of the folder itself: a folder can be moved or copied and
reported or resumed from its new place.
"""

from __future__ import annotations

import json
import math
import os
import re
import uuid
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from zsl.errors import UserError
from zsl.userfiles import check_writable_folder
from hpo.folder_guard import check_name, remove_experiment_folder, write_marker
from hpo.storage import is_remote, local_path
from hpo.trusted_state import default_key_file
from hpo.spaces import PROFILES, Space, check_model_ranges, load_space, parse_space, read_space_doc
from hpo.trainable import OBJECTIVES, SearchContext
from zsl.models import base_dataset_name
from zsl.run import CLASS_EMBEDDINGS, MAX_FUSED_SEEDS, MAX_SEED, DataOptions, check_fused_seeds

SEARCH_FILE = "search.json"
STUDY_FILE = "optuna.db"
SIM_DATASETS = ["sim-AWA2", "sim-CUB", "sim-SUN"]
DATASET_RUNS = ("auto", "parallel", "sequential")
REAL_DATASETS = ["AWA2", "CUB", "SUN"]
RECORD_FORMAT = 2  # search.json layout: 2 = experiment_id, no absolute paths


@dataclass
class SearchOptions:
    """The validated options of a search (the CLI's flags, as data)."""

    space: str = "d2sc"
    datasets: list | None = None
    data_root: str | None = None
    scale: str = "small"
    num_samples: int = 8
    max_concurrent: int = 2
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    dataset_runs: str = "auto"  # "parallel" | "sequential" | "auto" (see dataset_runs_mode)
    name: str | None = None
    storage_path: str = "~/zsl-hpo-results"
    address: str | None = None
    resume: bool = False
    force: bool = False
    seed: int = 0
    seeds: int = 1  # fused seeds per run (models with FUSES_SEEDS); the objective is their mean H
    time_budget: float | None = None
    objective: str = "mean"
    max_epochs: int | None = None
    grace_period: int = 2  # scoring-stage epochs (D2SC: DFG) before ASHA may stop a trial
    reduction_factor: float = 3.0
    scheduler: str = "asha"
    searcher: str = "tpe"
    optuna_storage: str | None = None
    max_failures: int = 1
    verbose: int = 1
    data_seed: int = 0  # simulated world and validation holdout (--seed drives the searcher and the models)
    class_embedding: str = "att"  # "att", or per dataset: "att,CUB:sent" (see class_embeddings)
    split_percent: int = 100
    scaler_fit: str = "train_rows"
    profile: str = "auto"  # run profile of the space: auto (see resolved_profile), cpu, gpu, demo, rehearse, ...
    per_dataset: bool = False  # one search per dataset instead of one shared search (see per_dataset_options)
    state_key: str = field(default_factory=default_key_file)  # the driver's key that signs Ray's state (hpo.trusted_state)

    def resolved_datasets(self) -> list[str]:
        return list(self.datasets) if self.datasets else (REAL_DATASETS if self.data_root else SIM_DATASETS)

    def resolved_profile(self) -> str:
        """The run profile: ``profile``; auto means gpu when trials get GPUs, else demo for the embedded
        default data (no --datasets, no --data-root: the ten-minute demo), else cpu."""
        if self.profile != "auto":
            return self.profile
        if self.gpus_per_trial > 0:
            return "gpu"
        return "demo" if not self.datasets and not self.data_root else "cpu"

    def experiment_name(self) -> str:
        return self.name or f"{Path(self.space).stem}-search"


def per_dataset_options(opts: SearchOptions) -> list[SearchOptions]:
    """``--per-dataset``: one search per dataset, each with the shared search's space, run profile, trials and
    budget, named ``<name>-<dataset>`` beside it (where hpo.final_job looks for each dataset's own best)."""
    from hpo.final_job import per_dataset_experiment

    objective = "mean" if opts.objective == "pareto" else opts.objective  # one dataset: one objective
    return [replace(opts, datasets=[d], per_dataset=False, profile=opts.resolved_profile(), objective=objective,
                    name=per_dataset_experiment(opts.experiment_name(), d),
                    class_embedding=class_embeddings(opts)[d])
            for d in opts.resolved_datasets()]


def check_options(opts: SearchOptions) -> None:
    """One-sentence UserErrors for values argparse cannot check."""
    finite = lambda v: v is None or math.isfinite(v)  # noqa: E731
    checks = [
        (opts.num_samples >= 1, "--num-samples must be >= 1"),
        (opts.max_concurrent >= 1, "--max-concurrent must be >= 1"),
        (finite(opts.cpus_per_trial) and opts.cpus_per_trial > 0, "--cpus-per-trial must be a finite number > 0"),
        (finite(opts.gpus_per_trial) and opts.gpus_per_trial >= 0,
         "--gpus-per-trial must be a finite number >= 0 (fractions allowed)"),
        (0 <= opts.seed <= MAX_SEED, f"--seed must be an integer from 0 to {MAX_SEED}"),
        (0 <= opts.data_seed <= MAX_SEED, f"--data-seed must be an integer from 0 to {MAX_SEED}"),
        (1 <= opts.seeds <= MAX_FUSED_SEEDS, f"--seeds must be an integer from 1 to {MAX_FUSED_SEEDS}"),
        (opts.max_failures >= 0, "--max-failures must be >= 0 (Ray's -1, retry forever, would never end a trial "
                                 "that always fails)"),
        (finite(opts.reduction_factor), "--reduction-factor must be a finite number"),
        (finite(opts.time_budget), "--time-budget must be a finite number of seconds"),
        (opts.max_epochs is None or opts.max_epochs >= 1, "--max-epochs must be >= 1"),
        (opts.grace_period >= 1, "--grace-period must be >= 1"),
        (opts.reduction_factor > 1, "--reduction-factor must be > 1"),
        (opts.time_budget is None or opts.time_budget > 0, "--time-budget must be > 0 seconds"),
        (opts.objective in OBJECTIVES, "--objective must be mean, min or pareto"),
        (opts.objective != "pareto" or len(set(opts.resolved_datasets())) >= 2,
         f"--objective pareto needs 2 datasets or more (a front over one dataset is just its best trial), "
         f"and --datasets names only {', '.join(dict.fromkeys(opts.resolved_datasets()))}: add datasets or use "
         "--objective mean"),
        (opts.dataset_runs in DATASET_RUNS, "--dataset-runs must be auto, parallel or sequential"),
        (not (opts.resume and opts.force), "--resume and --force exclude each other: pass one"),
        (opts.max_epochs is None or opts.grace_period <= opts.max_epochs, "--grace-period must not exceed --max-epochs"),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(message + ".")
    check_name(opts.experiment_name())
    class_embeddings(opts)
    DataOptions(split_percent=opts.split_percent, scaler_fit=opts.scaler_fit)
    check_storage(opts)
    check_optuna_storage(opts)
    check_local_resources(opts)


def check_local_resources(opts: SearchOptions) -> None:
    """Without --address the search starts its own Ray on this machine: a trial asking for more CPUs or GPUs than
    it has would wait forever, so refuse it."""
    if opts.address:
        return
    cpus = os.cpu_count() or 1
    if opts.cpus_per_trial > cpus:
        raise UserError(f"--cpus-per-trial {opts.cpus_per_trial:g}: this machine has {cpus} CPUs and no --address names "
                        f"a cluster, so no trial could start: use --cpus-per-trial {cpus} or less.")
    if opts.gpus_per_trial > 0:
        import torch

        gpus = torch.cuda.device_count()
        if opts.gpus_per_trial > max(gpus, 0) or gpus == 0:
            raise UserError(f"--gpus-per-trial {opts.gpus_per_trial:g}: this machine has {gpus} GPU(s) visible to "
                            "PyTorch and no --address names a cluster, so no trial could start: use --gpus-per-trial "
                            "0 here, or --address to join a GPU cluster.")


def check_address(opts: SearchOptions) -> None:
    """--address HOST:PORT must have something listening (Ray would otherwise wait)."""
    if not opts.address or opts.address in ("auto", "local") or "://" in opts.address:
        return
    import socket

    host, _, port = opts.address.rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"--address {opts.address!r} is not HOST:PORT (or auto): e.g. --address 10.0.0.5:6379.")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as err:
        raise UserError(f"--address {opts.address}: nothing answers there ({err.strerror or err}): start the cluster "
                        "(ray up / ray start --head) or fix the address.") from None


def check_storage(opts: SearchOptions) -> None:
    """--storage-path: a folder that is (or can be made) writable, or a URI of a file system pyarrow knows."""
    path = opts.storage_path
    if is_remote(path):
        import pyarrow.fs

        try:
            pyarrow.fs.FileSystem.from_uri(path)
        except (pyarrow.ArrowInvalid, pyarrow.ArrowNotImplementedError, ValueError, OSError) as err:
            raise UserError(f"--storage-path {path}: not a storage URI this machine can use ({str(err).splitlines()[0]}): "
                            "use a local folder, file://, s3:// or gs://.") from None
        return
    check_writable_folder(local_path(path), f"--storage-path {path}")


def check_optuna_storage(opts: SearchOptions) -> None:
    """--optuna-storage: an SQLAlchemy database URL (sqlite:///FILE in an existing folder, postgresql://...)."""
    url = opts.optuna_storage
    if url is None:
        return
    scheme, sep, rest = url.partition("://")
    if not sep or not scheme or not re.match(r"^[a-z][a-z0-9+]*$", scheme):
        raise UserError(f"--optuna-storage {url!r} is not a database URL: use e.g. sqlite:///study.db or "
                        "postgresql://user@host/db.")
    if scheme == "sqlite":
        file = rest[1:] if rest.startswith("/") else rest  # sqlite:///rel.db, sqlite:////abs/path.db
        folder = Path(file).expanduser().parent
        if file and not folder.is_dir():
            raise UserError(f"--optuna-storage {url}: the folder {folder} does not exist: create it or pick another file.")


def class_embeddings(opts: SearchOptions) -> dict:
    """``--class-embedding``: one embedding for every dataset ("att"), or a default plus per-dataset ones
    ("att,CUB:sent"; a base name such as CUB also names sim-CUB) -> {dataset: embedding}."""
    datasets, default, per = opts.resolved_datasets(), "att", {}
    if len(set(datasets)) != len(datasets):
        raise UserError("--datasets lists a dataset twice: list each once.")
    for item in [x.strip() for x in opts.class_embedding.split(",") if x.strip()]:
        name, sep, kind = item.rpartition(":")
        if kind not in CLASS_EMBEDDINGS:
            raise UserError(f"--class-embedding {item!r}: the embedding must be one of {', '.join(CLASS_EMBEDDINGS)}.")
        if not sep:
            default = kind
            continue
        matches = [d for d in datasets if name in (d, base_dataset_name(d))]
        if not matches:
            raise UserError(f"--class-embedding {item!r}: {name} is not one of this search's datasets "
                            f"({', '.join(datasets)}).")
        per.update({d: kind for d in matches})
    return {d: per.get(d, default) for d in datasets}


def storage_root(opts: SearchOptions) -> str:
    """The storage path: a remote URI as given, a local path (or file:// URI) expanded and made absolute."""
    path = opts.storage_path
    return path.rstrip("/") if is_remote(path) else str(local_path(path))


def experiment_dir(opts: SearchOptions) -> str:
    """``<storage_path>/<name>``."""
    return f"{storage_root(opts)}/{opts.experiment_name()}"


def sidecar_dir(opts: SearchOptions) -> Path:
    """Where search.json and optuna.db live: the experiment dir, or ./<name>.hpo for a remote storage."""
    exp = experiment_dir(opts)
    return Path(f"{opts.experiment_name()}.hpo").resolve() if is_remote(exp) else Path(exp)


def specialised_space(opts: SearchOptions, record: dict | None = None) -> tuple[Space, str | None, dict]:
    """The space of ``opts`` under its run profile (see Space.specialise); from an experiment's
    ``record`` (the space as it was when the search started) when given, else from its file today."""
    if record is not None and "space" in record:
        saved = record["space"]
        recorded = f" (as recorded in {SEARCH_FILE})" if "options" in record else ""  # else: not yet recorded
        space = parse_space(saved["doc"], f"{saved['source']}{recorded}", saved["name"])
    else:
        space = load_space(opts.space)
    return space.specialise(run_profile(opts, space))


def run_profile(opts: SearchOptions, space: Space) -> str:
    """The run profile ``opts`` asks of ``space`` (demo falls back to cpu in a space without one)."""
    profile = opts.resolved_profile()
    if profile == "demo" and profile not in space.profiles:
        profile = "cpu"
    if profile not in space.profiles and profile not in PROFILES:
        names = ", ".join(sorted({"auto", *PROFILES, *space.profiles}))
        raise UserError(f"--profile {profile}: space {space.name} has no such run profile: pass one of {names}.")
    return profile


def provenance() -> dict:
    """Versions of the stack and the project's git revision (None outside a git checkout)."""
    import platform
    import subprocess
    from importlib.metadata import PackageNotFoundError, version

    versions = {"python": platform.python_version()}
    for package in ("zsl-hpo", "torch", "ray", "optuna", "numpy", "scipy"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = None
    root = Path(__file__).resolve().parent.parent
    try:
        revision = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                  timeout=10).stdout.strip() or None
        dirty = bool(subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                    capture_output=True, text=True, timeout=10).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        revision, dirty = None, False
    return {"versions": versions, "git_revision": revision, "git_dirty": dirty if revision else None}


def dataset_runs_mode(opts: SearchOptions) -> str:
    """How a trial runs its datasets: "parallel" (one Ray actor each, on an equal share of the trial's
    CPUs/GPUs) or "sequential". ``auto``: parallel when there are several datasets and the trial has a
    GPU share or at least one CPU per dataset."""
    n = len(opts.resolved_datasets())
    if opts.dataset_runs != "auto":
        return opts.dataset_runs
    return "parallel" if n > 1 and (opts.gpus_per_trial > 0 or opts.cpus_per_trial >= n) else "sequential"


def make_context(opts: SearchOptions, preset: str | None, overrides: dict, model: str) -> SearchContext:
    """The trials' context; each dataset's base config (model defaults <- preset <- the space's overrides) is
    resolved here, once, and travels with it: presets edited during a search change nothing."""
    from zsl.models import make_config

    check_fused_seeds(model, opts.seeds)
    datasets, mode = opts.resolved_datasets(), dataset_runs_mode(opts)
    share = len(datasets) if mode == "parallel" else 1
    return SearchContext(
        base_configs={d: make_config(model, preset, d, overrides) for d in datasets},
        model=model, preset=preset, datasets=datasets, data_root=opts.data_root,
        scale=opts.scale, base_overrides=overrides, objective=opts.objective,
        max_epochs=opts.max_epochs, seed=opts.seed, device="cuda" if opts.gpus_per_trial > 0 else "cpu",
        torch_threads=max(1, int(opts.cpus_per_trial / share)), dataset_runs=mode,
        cpus_per_run=opts.cpus_per_trial / share, gpus_per_run=opts.gpus_per_trial / share,
        data_seed=opts.data_seed, class_embedding=class_embeddings(opts), split_percent=opts.split_percent,
        scaler_fit=opts.scaler_fit, seeds=opts.seeds,
    )


def check_datasets(ctx: SearchContext) -> None:
    """Resolve each dataset's base config and load its validation split once in the driver, so that bad
    names, paths and options fail before Ray starts."""
    from zsl.run import load_run_data

    for name in ctx.datasets:
        load_run_data(ctx.run_spec({}, name))


def new_search(opts: SearchOptions) -> tuple[dict, Space, SearchContext]:
    """(space record, specialised space, trial context) of a new search, with the space checked against the
    model and every dataset loaded once: its mistakes are found before anything is locked, written or deleted."""
    doc, source, name = read_space_doc(opts.space)
    space_record = {"name": name, "source": source, "doc": doc}
    space, preset, overrides = specialised_space(opts, {"space": space_record})
    profile = run_profile(opts, space)  # recorded: "" when the space defines no such profile (run as written)
    ctx = replace(make_context(opts, preset, overrides, space.model), profile=profile if profile in space.profiles else "")
    check_model_ranges(space, ctx.base_configs)
    check_datasets(ctx)
    return space_record, space, ctx


def prepare(opts: SearchOptions, checked: tuple[dict, Space, SearchContext] | None = None
            ) -> tuple[Space, SearchContext, Path]:
    """Validate options and space, guard the experiment dir (refuse overwrite), write search.json.

    ``checked``: new_search(opts), when the caller ran it already. The caller holds the experiment's FolderLock. ``--force`` deletes only folders this project made
    (hpo.folder_guard.remove_experiment_folder); a remote experiment's files stay where they are.
    """
    check_options(opts)
    sidecar = sidecar_dir(opts)
    search_file = sidecar / SEARCH_FILE
    exists = search_file.exists() or (not is_remote(experiment_dir(opts)) and Path(experiment_dir(opts)).exists())
    if opts.resume:
        saved = read_search(sidecar, flag="--resume")
        return specialised_space(opts, saved)[0], SearchContext(**saved["context"]), sidecar
    if exists and not opts.force:
        raise UserError(f"experiment {experiment_dir(opts)} already exists: pass --resume to continue it, --force to overwrite it, or --name to start another.")
    space_record, space, ctx = checked or new_search(opts)
    if exists and opts.force:
        if not is_remote(experiment_dir(opts)):
            remove_experiment_folder(Path(experiment_dir(opts)), Path(storage_root(opts)))
        remove_experiment_folder(sidecar, sidecar.parent)
    experiment_id = uuid.uuid4().hex
    write_marker(sidecar, experiment_id)
    record = {"format": RECORD_FORMAT, "experiment_id": experiment_id, "options": asdict(opts),
              "context": ctx.to_dict(), "space": space_record, "study_name": opts.experiment_name(),
              "optuna_storage": opts.optuna_storage, **provenance()}
    atomic_write_text(search_file, json.dumps(record, indent=2))
    return space, ctx, sidecar


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``path`` through a temporary file and a rename: readers never see half of it."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def study_url(record: dict, folder: str | os.PathLike) -> str:
    """The Optuna storage URL of a search record read from ``folder`` (the sqlite file inside it by default)."""
    return record.get("optuna_storage") or f"sqlite:///{Path(folder).expanduser().resolve() / STUDY_FILE}"


def read_search(exp_dir: str | os.PathLike, flag: str | None = None) -> dict:
    """The search.json of an experiment directory (UserError when it is not one, or is damaged)."""
    path = Path(exp_dir).expanduser() / SEARCH_FILE
    where = f"{flag}: " if flag else ""
    if not path.is_file():
        raise UserError(f"{where}{Path(exp_dir)} is not a zsl-hpo experiment directory (no {SEARCH_FILE}): pass the "
                        "folder printed by hpo/search.py (or check --name/--storage-path).")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        record = None
    keys = ("options", "context", "study_name")
    if not isinstance(record, dict) or not all(isinstance(record.get(k), (dict, str)) for k in keys):
        raise UserError(f"{where}{path} is truncated or damaged: it cannot be read; restore it from a copy, or "
                        "start the search again with --force.")
    if record.get("format", 1) > RECORD_FORMAT:
        raise UserError(f"{where}{path} was written by a newer zsl-hpo (format {record['format']}): upgrade this "
                        "installation to read it.")
    return record
