"""The report's answer, from the final evaluation (hpo.final_results): the test scores of every setting with
every seed, the seed spread, the price of one shared setting, the inflation of published practice, and the
provenance of the numbers. Each section is a list of markdown lines; plots are PNGs in the report folder.
"""

from __future__ import annotations

import math
from pathlib import Path

from hpo.final_results import CONFIDENCE, FinalResults, mean_sd, objective_by_seed, paired_gap
from hpo.trainable import SearchContext

SHARED, PUBLISHED = "best shared", "published"


def own(dataset: str) -> str:
    """The name of a dataset's own best setting (from its own search)."""
    return f"best on {dataset}"


def answer_sections(final: FinalResults, ctx: SearchContext, label: str, folder: Path, shown: str) -> list[str]:
    """Every answer section of report.md, in order (writes inflation.png into ``folder``)."""
    return (final_table(final, ctx, label) + seed_spread(final, ctx) + price_table(final, ctx, shown)
            + inflation_table(final, ctx, folder, label) + provenance_table(final, ctx))


def _fmt(values: list[float]) -> str:
    mean, sd, n = mean_sd(values)
    return "n/a" if n == 0 else f"{mean:.2f} ± {sd:.2f}"


def final_table(final: FinalResults, ctx: SearchContext, label: str) -> list[str]:
    """Test H per setting and dataset: mean ± sd over seeds (n), every seed's H, and mean S / U."""
    ds, plan = ctx.datasets, final.plan
    lines = [f"## Final evaluation (protocol final: retrained on full trainval, tested once on the test split; {label})",
             "", f"Seeds {', '.join(map(str, final.seeds))}, one Ray trial each; selection rule: {plan['selection']}. "
             "Cells: test H, mean ± sample sd over seeds [every seed's H, in seed order]; S / U are means.", "",
             "| setting | source | " + " | ".join(f"{d} H" for d in ds) + " | " + " | ".join(f"{d} S / U" for d in ds) + " |",
             "|" + "---|" * (2 + 2 * len(ds))]
    for name, setting in plan["settings"].items():
        cells, su = [], []
        for d in ds:
            runs = final.by_setting.get(name, {}).get(d, {})
            done = [r.honest for _, r in sorted(runs.items()) if r.honest is not None]
            if d not in setting["datasets"]:
                cells.append("--")
                su.append("--")
                continue
            missing = len(runs) - len(done)
            every = ", ".join(f"{h['H']:.1f}" for h in done)
            cells.append(f"{_fmt([h['H'] for h in done])} [{every}]"
                         + (f" ({missing} not finished)" if missing else ""))
            su.append(f"{mean_sd([h['S'] for h in done])[0]:.1f} / {mean_sd([h['U'] for h in done])[0]:.1f}"
                      if done else "n/a")
        lines.append(f"| {name} | {setting['source']} | " + " | ".join(cells) + " | " + " | ".join(su) + " |")
    lines += [""] + [f"Note: {n}." for n in plan.get("notes", [])] + ([""] if plan.get("notes") else [])
    return lines


def _how(ctx: SearchContext) -> str:
    """The aggregate over datasets the answer uses: the search's, the mean for a multi-objective (pareto) search."""
    return "min" if ctx.objective == "min" else "mean"


def seed_spread(final: FinalResults, ctx: SearchContext) -> list[str]:
    """How much of a difference the seed alone makes: the objective per seed of the shared best and the published
    point (test, final protocol), its sd and range, and the largest per-dataset sd."""
    lines = ["## Seed spread (the noise a search ranks through)", "",
             f"Objective = {_how(ctx)} of test H over datasets, per seed (final protocol).", "",
             "| setting | objective per seed | mean ± sd | range | largest per-dataset sd |", "|---|---|---|---|---|"]
    for name in (SHARED, PUBLISHED):
        per_dataset = {d: final.h(name, d) for d in ctx.datasets if final.h(name, d)}
        if len(per_dataset) < len(ctx.datasets):
            continue
        by_seed = objective_by_seed(per_dataset, _how(ctx))
        values = list(by_seed.values())
        worst = max(((mean_sd(list(v.values()))[1], d) for d, v in per_dataset.items()), default=(math.nan, "-"))
        lines.append(f"| {name} | " + ", ".join(f"seed {s}: {v:.2f}" for s, v in by_seed.items())
                     + f" | {_fmt(values)} | {max(values) - min(values):.2f} | {worst[0]:.2f} ({worst[1]}) |")
    if ctx.seeds > 1:
        lines += ["", f"During the search every run trained {ctx.seeds} fused seeds; each trial's per-dataset `H_sd` "
                  "(validation) is in the leaderboard's cells."]
    return lines + [""]


def price_table(final: FinalResults, ctx: SearchContext, shown: str) -> list[str]:
    """The price of one shared setting per dataset: its own best's test H against the shared best's, paired over
    seeds, with the published point beside them."""
    pct = int(CONFIDENCE * 100)
    lines = ["## The price of one shared setting (final protocol, test H)", "",
             f"Gap = own best − shared best, paired over seeds (same seed, same data); {pct}% interval: Student t on "
             "the per-seed differences, mean ± t·sd/√n. A gap above 0 is what tuning that dataset alone buys; an "
             "interval that holds 0 says the seeds cannot tell them apart.", "",
             f"| dataset | shared best H | own best H | published H | gap own − shared ({pct}% CI, pairs) |",
             "|---|---|---|---|---|"]
    missing = []
    for d in ctx.datasets:
        shared, mine, published = final.h(SHARED, d), final.h(own(d), d), final.h(PUBLISHED, d)
        if not mine:
            missing.append(d)
            gap = "no own search"
        else:
            mean, low, high, n = paired_gap(mine, shared)
            gap = f"{mean:+.2f} [{low:+.2f}, {high:+.2f}] (n={n})" if n > 1 else f"{mean:+.2f} (n={n}, no interval)"
        lines.append(f"| {d} | {_fmt(list(shared.values()))} | {_fmt(list(mine.values()))} | "
                     f"{_fmt(list(published.values()))} | {gap} |")
    if missing:
        lines += ["", f"{', '.join(missing)}: no own search, so no price. Run `python hpo/search.py <the same flags> "
                  f"--per-dataset` (one search per dataset, the same space and trials per dataset), then "
                  f"`python hpo/final.py {shown} --force` and this report."]
    return lines + [""]


def inflation_table(final: FinalResults, ctx: SearchContext, folder: Path, label: str) -> list[str]:
    """Honest test H against what published practice would report, per setting, dataset and seed, with each
    selection's share; writes inflation.png."""
    rows = [(name, d, seed, r) for name, per in final.by_setting.items() for d, runs in per.items()
            for seed, r in sorted(runs.items()) if r.reported is not None]
    if not rows:
        return ["## Inflation of published practice", "", "No practice scores (the final evaluation ran with "
                "--no-inflation, or no run finished).", ""]
    lines = ["## Inflation of published practice (same runs, same test split)", "",
             "Honest = the final protocol's number (last epoch, last classifier epoch, main view). Practice adds, in "
             "turn, the classifier's best epoch on test, the best view, then the generator's best epoch on test "
             "(scoring-stage epochs): the last column is what public generative-ZSL code reports.", "",
             "| setting | dataset | seed | honest H | + classifier epoch | + view | + generator epoch (reported) | "
             "inflation | reported at epoch |", "|---|---|---|---|---|---|---|---|---|"]
    for name, d, seed, r in rows:
        lines.append(f"| {name} | {d} | {seed} | {r.honest['H']:.2f} | {r.clf:.2f} | {r.view:.2f} | {r.reported:.2f} | "
                     f"{r.reported - r.honest['H']:+.2f} | {r.reported_epoch} |")
    distinct = {id(r): r for *_, r in rows}.values()  # a run shared by two settings counts once
    gaps = [r.reported - r.honest["H"] for r in distinct]
    mean, sd, n = mean_sd(gaps)
    lines += ["", f"Over the {n} distinct runs: practice reports {mean:+.2f} ± {sd:.2f} H points above the honest "
              f"number (largest {max(gaps):+.2f}). Plot: inflation.png.", ""]
    plot_inflation(rows, folder / "inflation.png", label)
    return lines


def plot_inflation(rows: list, path: Path, label: str) -> None:
    """Per (setting, dataset): honest and reported H, mean bars with every seed as a dot."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict = {}
    for name, d, _, r in rows:
        groups.setdefault(f"{name}\n{d}", []).append((r.honest["H"], r.reported))
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(groups)), 4))
    for i, (key, pairs) in enumerate(groups.items()):
        for j, (what, color) in enumerate((("honest", "tab:blue"), ("reported", "tab:red"))):
            values = [p[j] for p in pairs]
            ax.bar(i + (j - 0.5) * 0.38, sum(values) / len(values), 0.36, color=color, alpha=0.6,
                   label=what if i == 0 else None)
            ax.scatter([i + (j - 0.5) * 0.38] * len(values), values, color="black", s=8, zorder=3)
    ax.set_xticks(range(len(groups)), list(groups), fontsize=7)
    ax.set(ylabel="test H (%)", title=f"honest (final protocol) vs published practice ({label})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def provenance_table(final: FinalResults, ctx: SearchContext) -> list[str]:
    """What the final numbers rest on, per dataset, as the runs recorded it."""
    seen = {}
    for per in final.by_setting.values():
        for d, runs in per.items():
            for r in runs.values():
                if r.provenance and d not in seen:
                    seen[d] = r.provenance
    lines = ["## Provenance of the final numbers", "",
             "| dataset | data | features (dim) | second view (dim) | class embedding (dim) | data seed | split % | protocol |",
             "|---|---|---|---|---|---|---|---|"]
    for d in ctx.datasets:
        p = seen.get(d)
        if p:
            second = f"{p['second_view_file']} ({p['second_view_dim']})" if p.get("second_view_file") else "none"
            features = p["feature_file"] if p.get("features", "pooled") == "pooled" else f"{p['features']}: {p['feature_file']}"
            lines.append(f"| {d} | {p['data']} | {features} ({p['feature_dim']}) | {second} | "
                         f"{p['class_embedding']} ({p['class_embedding_dim']}) | {p['data_seed']} | {p['split_percent']} | "
                         f"{p['protocol']} |")
    return lines + ["", f"Model {ctx.model}, preset {ctx.preset}; device {final.plan['resources']['device']}; "
                        f"selection: {final.plan['selection']}; git {final.plan.get('git_revision') or 'unknown'}.", ""]


def final_document(final: FinalResults, ctx: SearchContext, kind: str) -> dict:
    """final.json: every run's numbers under its setting, dataset and seed, with the plan's provenance."""
    def run_doc(r):
        return {"outcome": r.outcome, "test": r.honest, "practice": {"classifier_epoch": r.clf, "view": r.view,
                "reported": r.reported, "reported_epoch": r.reported_epoch}, "provenance": r.provenance}

    return {"protocol": "final", "data": kind, "objective": ctx.objective, "seeds": final.seeds,
            "selection": final.plan["selection"], "settings": final.plan["settings"],
            "results": {name: {d: {str(s): run_doc(r) for s, r in runs.items()} for d, runs in per.items()}
                        for name, per in final.by_setting.items()},
            "git_revision": final.plan.get("git_revision"), "versions": final.plan.get("versions")}
