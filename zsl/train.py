"""One training run of any registered model, without Ray: ``python -m zsl.train --model M --dataset D``.

Configuration, lowest to highest precedence: the model's defaults, ``--preset``, ``--config FILE``,
``--set key=value`` (repeatable; values parsed as YAML: 1e-3, true, [1, 2]), ``--epochs N``.

``--config FILE.yaml`` is a mapping with any of these keys (the format ``config.yaml`` of every
run and the search report's best setting are written in, so either can be replayed)::

    model: d2sc            # used when --model is not given (flags win)
    preset: paper          # used when --preset is not given
    dataset: AWA2          # used when --dataset is not given
    config: {lr: 1.0e-4}   # hyperparameters, over the preset
    data: {class_embedding: sent}   # data options (see below)
    per_dataset:           # optional, per base dataset name (sim-AWA2 uses AWA2), over config
      AWA2: {syn_num: 8000}

``--epochs N``: the run trains N epochs in all; the model decides how its stages share them
(``with_epochs`` of the Trainer protocol: D2SC splits them in the proportion of its stages).

Data options (flags, or the ``data:`` mapping of a --config file; flags win): ``class_embedding``
(att | original_att | sent), ``split_percent`` (100 | 30 | 10), ``scaler_fit`` (train_rows |
full_trainval); ``--data-seed`` draws the simulated world and the validation holdout, ``--seed`` the model.
The run itself goes through zsl.run (the engine the search and the report use too).

Output directory (``--out``, default ``runs/<model>_<dataset>_<protocol>_s<seed>``):
``config.yaml`` (resolved, in the --config format), ``results.json`` (run settings, per-evaluation
history, final metrics), ``checkpoint.pt`` (written atomically every ``--checkpoint-every`` epochs
and at the end), ``tensorboard/`` (scalars, see zsl.runlog).  An existing non-empty --out is
refused unless ``--resume`` (continue from its checkpoint; the settings must match) or ``--force``
(delete this tool's files in it and start over).  User errors: one line on stderr, exit 2; a run whose loss or
metrics become NaN/inf stops with one line naming the epoch and the value, exit 3.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import re
import shutil
import sys
import time
from dataclasses import MISSING
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from zsl.errors import EXIT_DIVERGED, EXIT_USER_ERROR, DivergedError, UserError
from zsl.models import base_dataset_name, preset_note
from zsl.run import DataOptions, Run, RunSpec, resolve_config
from zsl.userfiles import check_writable_folder, load_yaml, read_yaml_file

# torch, tensorboard and the data layer are imported where used, so that flag errors and --help are instant.
if TYPE_CHECKING:
    import torch

PROTOCOLS = ("validation", "final", "reference")
CONFIG_FILE_KEYS = ("model", "preset", "dataset", "config", "per_dataset", "data")
RUN_FILES = ("checkpoint.pt", "config.yaml", "results.json")
TB_DIR = "tensorboard"
CHECKPOINT_FORMAT = 1
METRIC_KEYS = ("S", "U", "H", "ZSL")


# ---------------------------------------------------------------- configuration (the edge)

class _YamlLoader(yaml.SafeLoader):
    """SafeLoader that also reads 1e-3 / 5E+2 as floats (YAML 1.2; PyYAML would keep them strings)."""


_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def parse_sets(items: list[str]) -> dict:
    """``["lr=1e-3", "views=[V, VC]"]`` -> ``{"lr": 0.001, "views": ["V", "VC"]}``."""
    out = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise UserError(f"--set {item!r} is not key=value: write it like --set lr=1e-3.")
        out[key] = load_yaml(text, f"--set {key}", _YamlLoader)
    return out


def read_config_file(path: str) -> dict:
    """The validated mapping of a ``--config`` file (format in the module docstring)."""
    _, doc = read_yaml_file(path, f"--config {path}", _YamlLoader)
    doc = {} if doc is None else doc
    if not isinstance(doc, dict):
        raise UserError(f"--config {path}: expected a mapping with keys {', '.join(CONFIG_FILE_KEYS)}.")
    _check_names(doc, f"--config {path}")
    unknown = sorted(set(doc) - set(CONFIG_FILE_KEYS))
    if unknown:
        raise UserError(f"--config {path}: unknown key '{unknown[0]}'; allowed keys are {', '.join(CONFIG_FILE_KEYS)}.")
    for key in ("config", "per_dataset", "data"):
        if not isinstance(doc.get(key) or {}, dict):
            raise UserError(f"--config {path}: '{key}' must be a mapping.")
    for name, entry in (doc.get("per_dataset") or {}).items():
        if not isinstance(entry or {}, dict):
            raise UserError(f"--config {path}: per_dataset '{name}' must be a mapping.")
    return doc


def _check_names(doc: dict, where: str) -> None:
    """Every key of the file, of its mappings and of each per_dataset entry is a name (text), not a number."""
    sections = [("the top level", doc)] + [(f"'{k}'", doc[k]) for k in ("config", "per_dataset", "data")
                                           if isinstance(doc.get(k), dict)]
    sections += [(f"per_dataset '{name}'", entry) for name, entry in (doc.get("per_dataset") or {}).items()
                 if isinstance(doc.get("per_dataset"), dict) and isinstance(entry, dict)]
    for what, mapping in sections:
        bad = next((key for key in mapping if not isinstance(key, str)), None)
        if bad is not None:
            raise UserError(f"{where}: key {bad!r} at {what} is not a name: write names as text (a hyperparameter, "
                            "a dataset or one of the file's keys).")


def resolve_spec(args: argparse.Namespace) -> RunSpec:
    """Merge the config file, flags and --set/--epochs into a validated RunSpec."""
    doc = read_config_file(args.config) if args.config else {}
    model = args.model or doc.get("model")
    dataset = args.dataset or doc.get("dataset")
    if not model or not dataset:
        missing = "--model" if not model else "--dataset"
        raise UserError(f"{missing} is required (or give it in the --config file).")
    preset = args.preset if args.preset is not None else doc.get("preset")
    overrides = dict(doc.get("config") or {})
    overrides.update((doc.get("per_dataset") or {}).get(base_dataset_name(dataset)) or {})
    overrides.update(parse_sets(args.set))
    config = resolve_config(model, preset, dataset, overrides, epochs=args.epochs)
    data_root = str(Path(args.data_root).expanduser()) if args.data_root else None
    data = dict(doc.get("data") or {})
    unknown = sorted(set(data) - set(DataOptions.__dataclass_fields__))
    if unknown:
        raise UserError(f"--config {args.config}: unknown data option '{unknown[0]}'; allowed are "
                        f"{', '.join(DataOptions.__dataclass_fields__)}.")
    data.update({k: v for k, v in (("class_embedding", args.class_embedding), ("split_percent", args.split_percent),
                                   ("scaler_fit", args.scaler_fit)) if v is not None})
    return RunSpec(model, dataset, preset, args.protocol, args.seed, args.data_seed, args.scale, data_root, config,
                   DataOptions(**data), seeds=args.seeds)


def resolve_device(name: str | None) -> torch.device:
    """cpu | cuda | cuda:N (default: cuda when available, else cpu); UserError if unusable here."""
    import torch

    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name!r} is not a device: use cpu or cuda.") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {name}: no CUDA GPU is visible to PyTorch here; use --device cpu.")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"--device {name}: only {torch.cuda.device_count()} GPU(s) are visible; pick another index.")
    elif device.type != "cpu":
        raise UserError(f"--device {name}: only cpu and cuda are supported.")
    return device


def check_out_dir(out: Path, resume: bool, force: bool) -> None:
    """Refuse to overwrite a previous run (see the module docstring)."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file: pass a directory.")
    check_writable_folder(out, f"--out {out}")
    if resume:
        if not (out / "checkpoint.pt").is_file():
            raise UserError(f"--resume: {out} holds no checkpoint.pt to continue from; drop --resume to start afresh.")
    elif out.is_dir() and any(out.iterdir()) and not force:
        raise UserError(f"--out {out} already exists and is not empty: pass --resume to continue it, --force to overwrite it, or another --out.")


def clear_run_files(out: Path) -> None:
    """Delete the files a previous run of this tool wrote in ``out`` (nothing else)."""
    for name in RUN_FILES:
        (out / name).unlink(missing_ok=True)
    shutil.rmtree(out / TB_DIR, ignore_errors=True)


# ---------------------------------------------------------------- files of a run

def atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)``, then rename over ``path`` (readers never see a half-written file)."""
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


def save_checkpoint(out: Path, spec: RunSpec, run: Run, history: list[dict]) -> None:
    import torch

    state = {"format": CHECKPOINT_FORMAT, "spec": spec.to_dict(), "epoch": run.epoch,
             "model": run.state_dict(), "history": history}
    atomic_write(out / "checkpoint.pt", lambda tmp: torch.save(state, tmp))


def load_checkpoint(out: Path) -> dict:
    """The checkpoint in ``out`` (tensors on CPU), loaded with weights_only (never arbitrary unpickling)."""
    import torch

    path = out / "checkpoint.pt"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as err:
        raise UserError(f"--resume: {path} cannot be read ({err}); delete it or use --force.") from None
    problem = checkpoint_problem(state)
    if problem:
        raise UserError(f"--resume: {path} is not a zsl.train checkpoint ({problem}); delete it or use --force.")
    return state


CHECKPOINT_FIELDS = {"format": int, "spec": dict, "epoch": int, "model": dict, "history": list}


def checkpoint_problem(state) -> str | None:
    """What makes ``state`` unlike the checkpoints save_checkpoint writes, or None."""
    if not isinstance(state, dict):
        return f"it holds a {type(state).__name__}, not a mapping"
    for key, kind in CHECKPOINT_FIELDS.items():
        if key not in state:
            return f"it has no '{key}'"
        if not isinstance(state[key], kind) or isinstance(state[key], bool):
            return f"its '{key}' is of type {type(state[key]).__name__}, not {kind.__name__}"
    if state["format"] > CHECKPOINT_FORMAT:
        return f"it has format {state['format']}, newer than this zsl-hpo's {CHECKPOINT_FORMAT}: upgrade to resume it"
    if not all(isinstance(row, dict) and isinstance(row.get("epoch"), int) for row in state["history"]):
        return "its 'history' holds entries that are not evaluations"
    return None


def check_resume_spec(saved: dict, spec: RunSpec, out: Path) -> None:
    """UserError naming the first setting that differs from the checkpoint's."""
    current = spec.to_dict()
    for key, value in current.items():
        default = RunSpec.__dataclass_fields__[key].default   # a field newer than the checkpoint: its default
        if saved.get(key, None if default is MISSING else default) != value:
            if key == "config":
                diff = sorted(k for k in set(value) | set(saved[key]) if value.get(k) != saved[key].get(k))
                key = f"hyperparameter '{diff[0]}'"
            raise UserError(f"--resume: {key} differs from the run in {out}; repeat that run's flags or use another --out.")


def write_yaml(path: Path, doc: dict) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(yaml.safe_dump(doc, sort_keys=False)))


def write_json(path: Path, doc: dict) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(doc, indent=2)))


# ---------------------------------------------------------------- the run

def plain(metrics: dict) -> dict:
    """Numbers as floats and strings kept (JSON- and weights_only-safe); other values dropped."""
    from zsl.runlog import numeric_items

    return {**{k: v for k, v in metrics.items() if isinstance(v, str)}, **numeric_items(metrics)}


def format_numbers(values: dict) -> str:
    from zsl.runlog import numeric_items

    return " ".join(f"{k}={v:.4g}" for k, v in numeric_items(values).items())


def final_table(spec: RunSpec, data, metrics: dict, epochs: int) -> str:
    """The closing summary: dataset (labelled simulated), protocol, model, S/U/H/ZSL in percent, and the model's
    ``variant`` line when its evaluation names one (e.g. an ablation run in place of the full method)."""
    dataset = f"{spec.dataset} (simulated)" if data.simulated else spec.dataset
    head = f"{'dataset':<22} {'protocol':<11} {'model':<8} {'epochs':>6} " + " ".join(f"{k:>6}" for k in METRIC_KEYS)
    row = f"{dataset:<22} {spec.protocol:<11} {spec.model:<8} {epochs:>6} " + " ".join(
        f"{metrics[k]:6.2f}" if k in metrics else f"{'-':>6}" for k in METRIC_KEYS)
    lines = [f"Final metrics (percent) on {data.label}:", head, row]
    if isinstance(metrics.get("variant"), str):
        lines.append(f"model variant: {metrics['variant']}")
    if spec.seeds > 1:
        lines.append(f"mean of {spec.seeds} fused seeds {spec.seed}..{spec.seed + spec.seeds - 1}; sd over them: "
                     + " ".join(f"{k} {metrics[k + '_sd']:.2f}" for k in METRIC_KEYS if k + "_sd" in metrics))
    if data.simulated:
        lines.append("SIMULATED data: these numbers are not benchmark results.")
    return "\n".join(lines)


def train_run(spec: RunSpec, device: torch.device, out: Path, eval_every: int, checkpoint_every: int,
              resume: bool) -> dict:
    """Load data, build the model, train all epochs with evaluations, write out/; returns final metrics."""
    from tqdm import tqdm

    from zsl.runlog import RunLog

    started = time.perf_counter()
    state = None
    if resume:  # checked before the (possibly slow) data loading
        state = load_checkpoint(out)
        check_resume_spec(state.get("spec", {}), spec, out)
    run = Run(spec, device)
    data, model = run.data, run.trainer
    note = preset_note(spec.model, spec.preset, spec.dataset)
    if note:
        print(f"note: {note}", flush=True)
    print(f"data: {data.label}: {len(data.train_y)} train, {len(data.eval_seen_y)} eval-seen, "
          f"{len(data.eval_unseen_y)} eval-unseen rows, {data.feature_dim}-d features", flush=True)
    variant = getattr(model, "variant", None)  # a model that runs a variant of its method says which
    if variant:
        print(f"model: {spec.model}: {variant}", flush=True)
    history: list[dict] = []
    if state is not None:
        try:
            run.load_state_dict(state["model"])
        except UserError as err:
            raise UserError(f"--resume: {out / 'checkpoint.pt'} does not fit this run ({str(err).rstrip('.')}); "
                            "delete it or use --force.") from None
        history = list(state["history"])
        print(f"resumed from {out / 'checkpoint.pt'} after epoch {model.epoch}", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    write_yaml(out / "config.yaml", {"model": spec.model, "preset": spec.preset, "dataset": spec.dataset,
                                     "config": spec.config})
    log = RunLog(out / TB_DIR, purge_step=model.epoch + 1 if resume else None)
    log.text("run", f"{spec.model}{f' ({variant})' if variant else ''} on {data.label}, seed {spec.seed}\n\n"
             + yaml.safe_dump(spec.config))
    total, bar, stage = model.epochs_total, None, None
    try:
        while model.epoch < total:
            stats = run.train_epoch()
            epoch = model.epoch
            if stats.get("stage") != stage or bar is None:
                if bar is not None:
                    bar.close()
                stage = stats.get("stage")
                bar = tqdm(total=total - epoch + 1, desc=str(stage or "train"), unit="epoch", disable=None)
            bar.update(1)
            log.train(epoch, stats)
            line = f"epoch {epoch}/{total} [{stage or 'train'}] {format_numbers(stats)}"
            if epoch % eval_every == 0 or epoch == total:
                metrics = plain(run.evaluate())
                log.evaluation(epoch, metrics)
                history.append({"epoch": epoch, **metrics})
                line += " | " + format_numbers({k: metrics[k] for k in metrics if k in METRIC_KEYS})
            tqdm.write(line, file=sys.stdout)
            if epoch % checkpoint_every == 0 or epoch == total:
                save_checkpoint(out, spec, run, history)
        if not history or history[-1]["epoch"] != model.epoch:  # e.g. resumed after the last epoch
            history.append({"epoch": model.epoch, **plain(run.evaluate())})
    finally:
        if bar is not None:
            bar.close()
        log.close()
    final = history[-1]
    write_json(out / "results.json", {
        "model": spec.model, **({"variant": variant} if variant else {}), "dataset": spec.dataset, "label": data.label,
        "simulated": data.simulated,
        "protocol": spec.protocol, "seed": spec.seed, "data_seed": spec.data_seed, "scale": spec.scale,
        "data_options": spec.to_dict()["data"], "data_sources": data.info.get("sources"),
        "device": str(device), "epochs": model.epoch, "final": final, "history": history,
        "wall_seconds": time.perf_counter() - started,
    })
    print(final_table(spec, data, final, model.epoch))
    print(f"outputs in {out} (config.yaml, results.json, checkpoint.pt); tensorboard --logdir {out / TB_DIR}")
    return final


# ---------------------------------------------------------------- command line

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m zsl.train", description="Train and evaluate one model on one dataset (no Ray).")
    p.add_argument("--model", help="registered model name (eszsl, d2sc, revcd, dkgzsl)")
    p.add_argument("--dataset", help="AWA2 | CUB | SUN (need --data-root) or sim-AWA2 | sim-CUB | sim-SUN")
    p.add_argument("--data-root", help="the xlsa17 data folder holding <DATASET>/ (real datasets only)")
    p.add_argument("--preset", help="a preset of the model (zsl/presets/<model>.yaml)")
    p.add_argument("--config", metavar="FILE.yaml", help="settings file (format: see module docstring)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one hyperparameter (repeatable)")
    p.add_argument("--epochs", type=int, help="override the model's epoch count(s)")
    p.add_argument("--device", help="cpu | cuda | cuda:N (default: cuda if available, else cpu)")
    p.add_argument("--protocol", choices=PROTOCOLS, default="validation",
                   help="validation (default; no test image is read) | final (test sets) | reference (published practice)")
    p.add_argument("--seed", type=int, default=0, help="training seed (default 0)")
    p.add_argument("--seeds", type=int, default=1, metavar="K",
                   help="train the K seeds --seed .. --seed+K-1 as one fused run and report their mean and sd "
                        "(default 1; models that fuse seeds: d2sc)")
    p.add_argument("--data-seed", type=int, default=0, help="simulated world and validation holdout seed (default 0)")
    p.add_argument("--scale", choices=("small", "full"), default="small", help="size of simulated datasets (default small)")
    p.add_argument("--class-embedding", choices=("att", "original_att", "sent"),
                   help="class semantics: att (default, L2-normalised attributes), original_att, sent (CUB sentences)")
    p.add_argument("--split-percent", type=int, choices=(100, 30, 10), help="share of trainval images to train on (default 100)")
    p.add_argument("--scaler-fit", choices=("train_rows", "full_trainval"),
                   help="fit the feature scaler on the training rows used (default) or on all trainval rows (reference)")
    p.add_argument("--eval-every", type=int, default=1, metavar="K", help="evaluate every K epochs and at the end (default 1)")
    p.add_argument("--checkpoint-every", type=int, default=1, metavar="K", help="checkpoint every K epochs and at the end (default 1)")
    p.add_argument("--out", help="output directory (default runs/<model>_<dataset>_<protocol>_s<seed>)")
    p.add_argument("--resume", action="store_true", help="continue the run whose checkpoint is in --out")
    p.add_argument("--force", action="store_true", help="overwrite a previous run in --out")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.eval_every < 1 or args.checkpoint_every < 1:
            raise UserError("--eval-every and --checkpoint-every must be >= 1.")
        if args.resume and args.force:
            raise UserError("--resume and --force contradict each other: pass one of them.")
        spec = resolve_spec(args)
        device = resolve_device(args.device)
        out = Path(args.out or f"runs/{spec.model}_{spec.dataset}_{spec.protocol}_s{spec.seed}")
        check_out_dir(out, args.resume, args.force)
        if args.force and out.is_dir():
            clear_run_files(out)
        train_run(spec, device, out, args.eval_every, args.checkpoint_every, args.resume)
    except UserError as err:
        print(f"zsl.train: error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("zsl.train: interrupted; continue from the last checkpoint with --resume.", file=sys.stderr)
        return 130
    except DivergedError as err:
        print(f"zsl.train: {err} The last good checkpoint stays in --out; lower the learning rates or change the "
              "setting.", file=sys.stderr)
        return EXIT_DIVERGED
    return 0


if __name__ == "__main__":
    sys.exit(main())
