"""Report of a finished search: ``python hpo/report.py EXPERIMENT_DIR [--skip-final] [--top K]``.

Writes into ``EXPERIMENT_DIR/report/``: ``report.md`` (leaderboard with per-dataset H, final
evaluation table), ``best_setting.yaml`` (replayable: ``python -m zsl.train --config FILE --dataset D``),
``best_<dataset>.yaml`` (the best trial per dataset H), ``final.json`` and PNG plots.

Final evaluation (unless --skip-final): the best shared setting, the published setting and each
per-dataset best are retrained on full trainval (protocol ``final``) per dataset and evaluated once
on test_seen / test_unseen -- the only place test images are read.  Everything is labelled with
its protocol and with real/simulated data.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script (see hpo/search.py)
    _here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _here]
    try:
        import hpo.experiment  # noqa: F401
    except ImportError:
        sys.path.insert(0, os.path.dirname(_here))

import yaml  # noqa: E402

from hpo.experiment import SEARCH_FILE, STUDY_FILE, SearchOptions, read_search, specialised_space, study_url  # noqa: E402
from hpo.storage import fetch_tree, is_remote, local_path  # noqa: E402
from hpo.spaces import published_point  # noqa: E402
from hpo.ranking import is_finished, rank_key  # noqa: E402
from zsl.models import base_dataset_name  # noqa: E402
from hpo.trainable import SearchContext, aggregate  # noqa: E402
from hpo.trial_status import ray_trial_status  # noqa: E402
from hpo.trusted_state import SNAPSHOT_FILE  # noqa: E402
from zsl.errors import EXIT_USER_ERROR, UserError  # noqa: E402
from zsl.userfiles import check_writable_folder  # noqa: E402


REPORT_INPUTS = ("params.json", "result.json", "error.txt", SEARCH_FILE, STUDY_FILE, SNAPSHOT_FILE)  # what a report reads


@dataclass
class TrialRecord:
    """One trial as read back from its folder: params, per-epoch results, and Ray's final status of it.

    ``status`` is Ray's own record (TERMINATED, ERROR, RUNNING, PAUSED, PENDING; None when the experiment has
    no readable record): an error file left by an attempt Ray later recovered from does not make it errored.
    """

    name: str
    config: dict
    rows: list
    status: str | None
    error_file: bool = False

    @property
    def last(self) -> dict:
        return self.rows[-1] if self.rows else {}

    @property
    def errored(self) -> bool:
        return self.status == "ERROR" if self.status is not None else self.error_file

    @property
    def diverged(self) -> bool:
        return bool(self.last.get("diverged"))

    @property
    def finished(self) -> bool:
        return not self.errored and self.status in (None, "TERMINATED") and is_finished(self.last)

    def outcome(self) -> str:
        if self.errored:
            return "errored"
        if self.diverged:
            return "diverged"
        if self.status in ("RUNNING", "PAUSED", "PENDING"):
            return "interrupted"
        return "completed" if self.finished else "stopped early"


OUTCOMES = ("completed", "stopped early", "diverged", "interrupted", "errored")


def read_trials(exp: Path) -> list[TrialRecord]:
    """Every trial folder of a Ray experiment (params.json, result.json) with Ray's status of it."""
    statuses = ray_trial_status(exp)
    trials = []
    for folder in sorted(p for p in exp.iterdir() if p.is_dir() and (p / "params.json").exists()):
        rows = []
        if (folder / "result.json").exists():
            text = _trial_file(folder / "result.json").splitlines()
            rows = [_json_in(folder / "result.json", line, dict, f"line {i}") for i, line in enumerate(text, 1)
                    if line.strip()]
        trial_id = rows[-1].get("trial_id") if rows else None
        status = statuses.get(trial_id) if trial_id else next(
            (v for k, v in statuses.items() if f"_{k}_" in folder.name), None)
        error_file = (folder / "error.txt").exists() or (folder / "error.pkl").exists()
        params = _json_in(folder / "params.json", _trial_file(folder / "params.json"), dict)
        trials.append(TrialRecord(folder.name, params, rows, status if statuses else None, error_file))
    return trials


JSON_KINDS = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "true/false",
              type(None): "null"}


def _trial_file(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{path} cannot be read ({getattr(err, 'strerror', None) or err}): restore it, or move "
                        "that trial folder out of the experiment.") from None


def _json_in(path: Path, text: str, kind: type, where: str = "") -> dict:
    """The JSON value ``text`` (from ``path``, at ``where``), which must be a ``kind``; UserError if it is not."""
    at = f" at {where}" if where else ""
    try:
        value = json.loads(text)
    except ValueError:
        value = None
        problem = "is empty" if not text.strip() else f"is truncated or damaged{at}"
    else:
        problem = None if isinstance(value, kind) else f"holds {JSON_KINDS.get(type(value), 'a value')}{at}, not an object"
    if problem:
        raise UserError(f"{path} {problem}: a trial's files are written by Ray; restore it, or move that trial "
                        "folder out of the experiment.")
    return value


def leaderboard(trials: list[TrialRecord], datasets: list[str], k: int) -> list[TrialRecord]:
    """Top-k trials with a finite objective, best first (hpo.ranking: full runs first, then last objective)."""
    scored = [t for t in trials if rank_key(t.last, t.finished)[1]]
    return sorted(scored, key=lambda t: rank_key(t.last, t.finished), reverse=True)[:k]


def best_per_dataset(trials: list[TrialRecord], datasets: list[str]) -> dict:
    """{dataset: trial} best on that dataset's H at the last epoch (hpo.ranking, with the dataset's H)."""
    scored = [t for t in trials if t.rows]
    return {d: max(scored, key=lambda t: rank_key(t.last, t.finished, f"{d}/H")) for d in datasets} if scored else {}


def setting_doc(ctx: SearchContext, params: dict) -> dict:
    """A --config file for zsl.train that replays the setting exactly as the search ran it: ``config`` is the
    setting; ``per_dataset`` each dataset's recorded base config (without the setting's keys); ``data``
    the search's data options (when its datasets share one class embedding)."""
    doc = {"model": ctx.model, "preset": ctx.preset, "config": dict(params)}
    if ctx.base_configs:
        doc["per_dataset"] = {base_dataset_name(d): {k: v for k, v in c.items() if k not in params}
                              for d, c in ctx.base_configs.items()}
    embeddings = set(ctx.class_embedding.values()) or {"att"}
    if len(embeddings) == 1:
        doc["data"] = {"class_embedding": embeddings.pop(), "split_percent": ctx.split_percent,
                       "scaler_fit": ctx.scaler_fit}
    return doc


def final_evaluate(ctx: SearchContext, params: dict, dataset: str) -> dict:
    """Retrain ``params`` on full trainval (protocol final) and evaluate once on the test split."""
    from zsl.run import Run

    start = time.perf_counter()
    scores = Run(ctx.run_spec(params, dataset, protocol="final"), "cpu", ctx.torch_threads).run_to_end()
    return {k: float(scores[k]) for k in ("S", "U", "H", "ZSL")} | {"seconds": time.perf_counter() - start}


def final_evaluations(ctx: SearchContext, settings: dict) -> dict:
    """{setting name: {dataset: scores}}; identical settings are trained once (same seed, same result)."""
    done: dict = {}
    out = {}
    for name, params in settings.items():
        key = json.dumps(params, sort_keys=True)
        if key not in done:
            done[key] = {d: final_evaluate(ctx, params, d) for d in ctx.datasets}
        out[name] = done[key]
    return out


def plot_best_so_far(trials: list[TrialRecord], path: Path, label: str) -> None:
    """Best-so-far objective against cumulative scoring-stage trial-epochs of the search (results in time order)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted((r["timestamp"], r["objective"]) for t in trials for r in t.rows
                  if isinstance(r.get("objective"), (int, float)) and math.isfinite(r["objective"]))  # no prefix rows
    best, xs, ys = -math.inf, [], []
    for i, (_, value) in enumerate(rows, start=1):
        best = max(best, value)
        xs.append(i)
        ys.append(best)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.step(xs, ys, where="post")
    ax.set(xlabel="cumulative trial-epochs", ylabel="best objective so far (H, %)", title=f"search progress ({label})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_top_trials(top: list[TrialRecord], datasets: list[str], path: Path, label: str) -> None:
    """Grouped bars: per-dataset final H of the top trials."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / max(1, len(top))
    for i, trial in enumerate(top):
        ax.bar([d + i * width for d in range(len(datasets))], [trial.last.get(f"{ds}/H", 0.0) for ds in datasets],
               width, label=trial.name.split("_")[1])
    ax.set_xticks([d + 0.4 - width / 2 for d in range(len(datasets))], datasets)
    ax.set(ylabel="H (%)", title=f"per-dataset H of the top trials ({label})")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_importances(record: dict, path: Path) -> dict:
    """Optuna fANOVA parameter importances over completed trials (skipped below 4); returns them."""
    import optuna

    study = optuna.load_study(study_name=record["study_name"], storage=record["study_url"])
    completed = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if len(completed) < 4 or len({t.value for t in completed}) < 2:  # e.g. every trial scored 0: nothing to explain
        return {}
    try:
        importances = optuna.importance.get_param_importances(study)
    except (RuntimeError, ValueError):  # e.g. a single distinct setting
        return {}
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 0.3 * len(importances) + 1.5))
    names = list(importances)[::-1]
    ax.barh(names, [importances[n] for n in names])
    ax.set(xlabel="importance (fANOVA)", title="parameter importances")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return importances


def write_report(exp_dir: str, top_k: int = 5, skip_final: bool = False, out: str | None = None) -> Path:
    """Build every report artefact of ``exp_dir`` (a folder or a URI such as s3://...); returns the report folder.

    A remote experiment's trial records, search record and study are fetched to a temporary folder
    first; its report goes to ``out`` (default ``./<experiment name>.report``).
    """
    if top_k < 1:
        raise UserError(f"--top {top_k}: the leaderboard needs at least one row: pass --top 1 or more.")
    if not is_remote(exp_dir):
        exp = local_path(exp_dir)
        return _write_report(exp, top_k, skip_final, out or str(exp / "report"), shown=str(exp))
    name = exp_dir.rstrip("/").rsplit("/", 1)[-1]
    with tempfile.TemporaryDirectory(prefix="zsl-hpo-report-") as tmp:
        local = Path(tmp) / name
        try:
            fetched = fetch_tree(exp_dir, local, REPORT_INPUTS)
        except OSError as err:
            raise UserError(f"{exp_dir} cannot be read ({err}): check the URI and the storage credentials.") from None
        if not fetched:
            raise UserError(f"{exp_dir} holds no zsl-hpo experiment files: pass the experiment URI printed by hpo/search.py.")
        record = read_search(local)  # its default study is the uploaded optuna.db, now in ``local``
        return _write_report(local, top_k, skip_final, out or f"{name}.report", shown=exp_dir, record=record)


def _write_report(exp: Path, top_k: int, skip_final: bool, out: str, shown: str, record: dict | None = None) -> Path:
    """write_report on a local experiment folder ``exp``; ``shown`` names it in messages."""
    record = record or read_search(exp)
    check_writable_folder(out, f"report folder {out} (--out)")
    record = {**record, "study_url": study_url(record, exp)}  # the study beside search.json, wherever it is now
    ctx = SearchContext(**record["context"])
    opts = SearchOptions(**record["options"])
    space, _, _ = specialised_space(opts, record)
    kind = "simulated" if all(d.startswith("sim-") for d in ctx.datasets) else "real"
    label = f"{kind} data"
    trials = read_trials(exp)
    if not trials:
        raise UserError(f"{shown} holds no trials yet: run the search first.")
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    top = leaderboard(trials, ctx.datasets, top_k)
    if not top:
        raise UserError(f"no trial of {shown} reported a finite objective: nothing to report.")
    best, per_dataset = top[0], best_per_dataset(trials, ctx.datasets)
    constants = {p.name: p.value for p in space.params if p.kind == "fixed"}
    settings = {"best shared": best.config, "published": {**constants, **published_point(space)}}
    replay = f"--seed {ctx.seed} --data-seed {ctx.data_seed}" + (
        f" (trials were capped at {ctx.max_epochs} epochs: add --epochs to match)" if ctx.max_epochs else "")
    write_yaml(folder / "best_setting.yaml", setting_doc(ctx, best.config), replay,
               f"best shared setting of {exp.name} ({ctx.objective} H over datasets, validation protocol, {label})")
    for d, trial in per_dataset.items():
        write_yaml(folder / f"best_{d}.yaml", {**setting_doc(ctx, trial.config), "dataset": d}, replay,
                   f"best trial of {exp.name} on {d} H (validation protocol, {label})")
        settings[f"best on {d}"] = trial.config
    plot_best_so_far(trials, folder / "best_so_far.png", label)
    plot_top_trials(top, ctx.datasets, folder / "top_trials_h.png", label)
    importances = plot_importances(record, folder / "importances.png")
    final = {} if skip_final else final_evaluations(ctx, settings)
    (folder / "final.json").write_text(json.dumps({"protocol": "final", "data": kind, "objective": ctx.objective,
                                                   "settings": settings, "results": final}, indent=2))
    text = render(exp, ctx, label, trials, top, per_dataset, final, importances)
    (folder / "report.md").write_text(text)
    print(text)
    return folder


def write_yaml(path: Path, doc: dict, replay: str, comment: str) -> None:
    """``doc`` as YAML under a one-line ``# comment`` and the replay command (python -m zsl.train --config)."""
    path.write_text(f"# {comment}\n# replay: python -m zsl.train --config {path.name} --dataset <name> {replay}\n"
                    + yaml.safe_dump(doc, sort_keys=False))


def shared_and_per_dataset(ctx: SearchContext, params: dict) -> str:
    """One paragraph: the keys the single setting shares (the space's params) and the base-config keys
    that still differ between datasets (they stay per dataset), with the data options."""
    configs = [ctx.base_configs.get(d, {}) for d in ctx.datasets]
    per_dataset = sorted(k for k in set().union(*configs) - set(params)
                         if len({repr(c.get(k)) for c in configs}) > 1)
    embeddings = ctx.class_embedding if isinstance(ctx.class_embedding, dict) else {}
    data = ", ".join(f"{d}: {e}" for d, e in embeddings.items()) or "the same for every dataset"
    return (f"The single setting shares {len(params)} keys (every param of the space, sampled or fixed); "
            f"per dataset, from the base preset: {', '.join(per_dataset) or 'nothing'}; class embedding: {data}.")


def render(exp: Path, ctx: SearchContext, label: str, trials, top, per_dataset, final: dict, importances: dict) -> str:
    """report.md as text."""
    ds = ctx.datasets
    counts = {o: n for o in OUTCOMES if (n := sum(t.outcome() == o for t in trials))}
    lines = [f"# Search report: {exp.name} ({label})", "",
             f"Model {ctx.model} (preset {ctx.preset}), datasets {', '.join(ds)} -- {label}, "
             f"objective = {ctx.objective} H over datasets. Trials: {len(trials)} "
             f"({', '.join(f'{v} {k}' for k, v in counts.items())}).", "",
             "## Leaderboard (protocol: validation -- scored on held-out trainval, never test images)", "",
             "| rank | trial | outcome | epochs | objective (last) | best so far | " + " | ".join(f"{d} H" for d in ds) + " |",
             "|" + "---|" * (6 + len(ds))]
    for i, t in enumerate(top, 1):
        lines.append(f"| {i} | {t.name.split('_')[1]} | {t.outcome()} | {t.last['epoch']}/{t.last['epochs_total']} | "
                     f"{t.last['objective']:.2f} | {t.last['best_objective']:.2f} | "
                     + " | ".join(f"{t.last.get(f'{d}/H', float('nan')):.2f}" for d in ds) + " |")
    if all(t.last.get("objective", 0.0) <= 0.0 for t in top):
        lines += ["", "**No trial learned**: every ranked trial has objective 0 (H = 0 on some dataset), so this "
                  "ranking, the best setting below and any importance carry no information.", ""]
    lines += ["", "Best shared setting (best_setting.yaml):", "", "```", yaml.safe_dump(top[0].config).strip(), "```", ""]
    lines += [shared_and_per_dataset(ctx, top[0].config), ""]
    lines += ["Best trial per dataset (validation H): " + ", ".join(f"{d}: {t.name.split('_')[1]}" for d, t in per_dataset.items()), ""]
    if importances:
        lines += ["Parameter importances (Optuna fANOVA): " + ", ".join(f"{k} {v:.2f}" for k, v in importances.items()), ""]
    if final:
        lines += [f"## Final evaluation (protocol: final -- retrained on full trainval, evaluated once on test; {label})", "",
                  "| setting | " + " | ".join(f"{d} S / U / H" for d in ds) + f" | {ctx.objective} H |", "|" + "---|" * (2 + len(ds))]
        for name, per in final.items():
            hs = [per[d]["H"] for d in ds]
            lines.append(f"| {name} | " + " | ".join(f"{per[d]['S']:.1f} / {per[d]['U']:.1f} / {per[d]['H']:.1f}" for d in ds)
                         + f" | {aggregate(hs, ctx.objective):.2f} |")
        lines += ["", "The cost of one shared setting: compare each dataset's H under 'best shared' with 'best on <dataset>'.", ""]
    else:
        lines += ["Final evaluation skipped (--skip-final).", ""]
    lines += ["Plots: best_so_far.png, top_trials_h.png" + (", importances.png" if importances else "") + "."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hpo/report.py", description="Leaderboard, best setting, plots and final test evaluation of a search.")
    parser.add_argument("experiment_dir")
    parser.add_argument("--top", type=int, default=5, help="leaderboard size")
    parser.add_argument("--skip-final", action="store_true", help="skip the final retrain + test evaluation")
    parser.add_argument("--out", help="report folder (default EXPERIMENT_DIR/report)")
    args = parser.parse_args(argv)
    try:
        write_report(args.experiment_dir, args.top, args.skip_final, args.out)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())
