"""Report of a search: ``python hpo/report.py EXPERIMENT_DIR [--top K] [--out DIR]``. It only reads.

Writes into ``EXPERIMENT_DIR/report/``: ``report.md`` (leaderboard with per-dataset H under the validation
protocol; then, once ``python hpo/final.py EXPERIMENT_DIR`` has run, the final evaluation with every seed,
the seed spread, the price of one shared setting, the inflation table and the provenance of the numbers),
``best_setting.yaml`` (replayable: ``python -m zsl.train --config FILE --dataset D``), ``best_<dataset>.yaml``,
``final.json`` (the final evaluation's numbers) and PNG plots. Everything is labelled with its protocol
and with real/simulated data.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script (see hpo/search.py)
    _here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _here]
    try:
        import hpo.experiment  # noqa: F401
    except ImportError:
        sys.path.insert(0, os.path.dirname(_here))

import yaml  # noqa: E402

from hpo.experiment import (SEARCH_FILE, STUDY_FILE, SearchOptions, atomic_write_text, read_search,  # noqa: E402
                            specialised_space, study_url)
from hpo.spaces import published_params  # noqa: E402
from hpo.storage import is_remote, local_path  # noqa: E402
from zsl.models import base_dataset_name  # noqa: E402
from hpo.trainable import SearchContext  # noqa: E402
from hpo.answer import answer_sections, final_document  # noqa: E402
from hpo.final_job import PLAN_FILE  # noqa: E402
from hpo.final_results import read_final  # noqa: E402
from hpo.trials import OUTCOMES, TrialRecord, best_per_dataset, leaderboard, local_experiment, read_trials  # noqa: E402,F401
from hpo.trusted_state import SNAPSHOT_FILE  # noqa: E402
from zsl.errors import EXIT_USER_ERROR, UserError  # noqa: E402
from zsl.userfiles import check_writable_folder  # noqa: E402


REPORT_INPUTS = ("params.json", "result.json", "error.txt", SEARCH_FILE, STUDY_FILE, SNAPSHOT_FILE, PLAN_FILE)  # what a report reads


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
    """Optuna fANOVA parameter importances over completed trials (skipped below 4) for the objective -- the mean
    of the per-dataset H under ``--objective pareto``; returns them."""
    import optuna

    study = optuna.load_study(study_name=record["study_name"], storage=record["study_url"])
    completed = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    mean = lambda t: sum(t.values) / len(t.values)  # noqa: E731  (one value, or one per dataset under pareto)
    if len(completed) < 4 or len({mean(t) for t in completed}) < 2:  # e.g. every trial scored 0: nothing to explain
        return {}
    try:
        importances = optuna.importance.get_param_importances(study, target=mean if len(study.directions) > 1 else None)
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


def write_report(exp_dir: str, top_k: int = 5, out: str | None = None) -> Path:
    """Build every report artefact of ``exp_dir`` (a folder or a URI such as s3://...); returns the report folder.

    A remote experiment's trial records, search record and study are fetched to a temporary folder
    first; its report goes to ``out`` (default ``./<experiment name>.report``).
    """
    if top_k < 1:
        raise UserError(f"--top {top_k}: the leaderboard needs at least one row: pass --top 1 or more.")
    out = out or (str(local_path(exp_dir) / "report") if not is_remote(exp_dir)
                  else f"{exp_dir.rstrip('/').rsplit('/', 1)[-1]}.report")
    with local_experiment(exp_dir, REPORT_INPUTS) as exp:
        return _write_report(exp, top_k, out, shown=exp_dir if is_remote(exp_dir) else str(exp))


def _write_report(exp: Path, top_k: int, out: str, shown: str) -> Path:
    """write_report on a local experiment folder ``exp``; ``shown`` names it in messages."""
    record = read_search(exp)
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
    replay = f"--seed {ctx.seed} --data-seed {ctx.data_seed}" + (
        f" (trials were capped at {ctx.max_epochs} epochs: add --epochs to match)" if ctx.max_epochs else "")
    write_yaml(folder / "best_setting.yaml", setting_doc(ctx, best.config), replay,
               f"best shared setting of {exp.name} ({objective_words(ctx.objective)}, validation protocol, {label})")
    for d, trial in per_dataset.items():
        write_yaml(folder / f"best_{d}.yaml", {**setting_doc(ctx, trial.config), "dataset": d}, replay,
                   f"best trial of {exp.name} on {d} H (validation protocol, {label})")
    plot_best_so_far(trials, folder / "best_so_far.png", label)
    plot_top_trials(top, ctx.datasets, folder / "top_trials_h.png", label)
    importances = plot_importances(record, folder / "importances.png")
    pareto = pareto_view(trials, ctx, best, published_params(space), folder, label)
    final = read_final(exp)
    sections = answer_sections(final, ctx, label, folder, shown) if final else [
        "## Final evaluation", "", "Not run yet: `python hpo/final.py " + shown + "` retrains the best shared setting, "
        "the published one and each dataset's own best (from `--per-dataset` searches) on full trainval with 3 seeds "
        "and tests them once, as Ray trials; then run this report again.", ""]
    if final:
        atomic_write_text(folder / "final.json", json.dumps(final_document(final, ctx, kind), indent=2))
    text = render(exp, ctx, label, trials, top, per_dataset, importances, pareto + [""] + sections)
    (folder / "report.md").write_text(text)
    print(text)
    return folder


def pareto_view(trials, ctx: SearchContext, best, published: dict, folder: Path, label: str) -> list[str]:
    """The Pareto section (hpo.pareto) over the trials that ran their whole budget, their last-epoch validation H
    per dataset; the shared best and the published point's trial (when it ran its whole budget) are marked."""
    from hpo.pareto import pareto_section

    def h(t):
        return {d: t.last.get(f"{d}/H") for d in ctx.datasets}

    full = [t for t in trials if t.finished]
    marked = {"best shared (mean H)": h(best)}
    marked.update({"published": h(t) for t in full if t.config == published})
    return pareto_section({t.name.split("_")[1]: h(t) for t in full}, ctx.datasets, marked, folder, label)


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


def render(exp: Path, ctx: SearchContext, label: str, trials, top, per_dataset, importances: dict,
           sections: list[str]) -> str:
    """report.md as text: the search's leaderboard (validation protocol), then ``sections`` (the final answer)."""
    ds = ctx.datasets
    counts = {o: n for o in OUTCOMES if (n := sum(t.outcome() == o for t in trials))}
    seeds = f"{ctx.seeds} fused seeds ({ctx.seed}..{ctx.seed + ctx.seeds - 1}), their mean H" if ctx.seeds > 1 \
        else f"seed {ctx.seed}"
    lines = [f"# Search report: {exp.name} ({label})", "",
             f"Model {ctx.model} (preset {ctx.preset}), datasets {', '.join(ds)} -- {label}, "
             f"objective = {objective_words(ctx.objective)}. Trials: {len(trials)} "
             f"({', '.join(f'{v} {k}' for k, v in counts.items())}).", "",
             "## Leaderboard (protocol: validation -- scored on held-out trainval, never test images)", "",
             f"Each run: {seeds}, data seed {ctx.data_seed}; class embedding "
             + ", ".join(f"{d}: {ctx.class_embedding.get(d, 'att')}" for d in ds)
             + "; selection: a trial's objective at its last epoch, full runs first (hpo/ranking.py).", "",
             "| rank | trial | outcome | epochs | objective (last) | best so far | " + " | ".join(f"{d} H" for d in ds) + " |",
             "|" + "---|" * (6 + len(ds))]
    for i, t in enumerate(top, 1):
        lines.append(f"| {i} | {t.name.split('_')[1]} | {t.outcome()} | {t.last['epoch']}/{t.last['epochs_total']} | "
                     f"{t.last['objective']:.2f} | {t.last['best_objective']:.2f} | "
                     + " | ".join(_h_cell(t.last, d) for d in ds) + " |")
    if all(t.last.get("objective", 0.0) <= 0.0 for t in top):
        lines += ["", "**No trial learned**: every ranked trial has objective 0 (H = 0 on some dataset), so this "
                  "ranking, the best setting below and any importance carry no information.", ""]
    lines += ["", "Best shared setting (best_setting.yaml):", "", "```", yaml.safe_dump(top[0].config).strip(), "```", ""]
    lines += [shared_and_per_dataset(ctx, top[0].config), ""]
    lines += ["Best trial per dataset among the shared search's trials (validation H; a dataset's own best comes from "
              "its own search, see the price table): "
              + ", ".join(f"{d}: {t.name.split('_')[1]}" for d, t in per_dataset.items()), ""]
    if importances:
        lines += ["Parameter importances (Optuna fANOVA): " + ", ".join(f"{k} {v:.2f}" for k, v in importances.items()), ""]
    lines += sections
    lines += ["Plots: best_so_far.png, top_trials_h.png" + (", importances.png" if importances else "") + "."]
    return "\n".join(lines) + "\n"


def objective_words(objective: str) -> str:
    """How a search's objective reads in the report."""
    if objective == "pareto":
        return "each dataset's H (multi-objective; ranked here by mean H)"
    return f"{objective} H over datasets"


def _h_cell(last: dict, dataset: str) -> str:
    """A leaderboard cell: the dataset's H, with ± its sd over fused seeds when the run had several."""
    h = f"{last.get(f'{dataset}/H', float('nan')):.2f}"
    sd = last.get(f"{dataset}/H_sd")
    return h + (f" ± {sd:.2f}" if isinstance(sd, (int, float)) and last.get(f"{dataset}/members", 1) > 1 else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hpo/report.py", description="Leaderboard, best setting, plots, and the final evaluation's answer (hpo/final.py) of a search; reads only.")
    parser.add_argument("experiment_dir")
    parser.add_argument("--top", type=int, default=5, help="leaderboard size")
    parser.add_argument("--out", help="report folder (default EXPERIMENT_DIR/report)")
    args = parser.parse_args(argv)
    try:
        write_report(args.experiment_dir, args.top, args.out)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())
