"""The Pareto view over per-dataset H: non-dominated sorting, crowding distance, the compromise setting, plots.

A *point* is one trial's vector of per-dataset H (percent, one coordinate per dataset, all maximised).
Point ``a`` dominates ``b`` when ``a_d >= b_d`` on every dataset and ``a_d > b_d`` on at least one.
The maths here is pure (lists of tuples in, indices out) and is shared by the report's Pareto section
(:func:`pareto_section`) and the multi-objective ASHA scheduler (:mod:`hpo.mo_asha`): one implementation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import combinations
from pathlib import Path

Point = Sequence[float]


def _check(points: Sequence[Point]) -> None:
    """ValueError unless every point has the same number (>= 1) of finite coordinates."""
    if points and (len({len(p) for p in points}) != 1 or not len(points[0])):
        raise ValueError("every point needs the same number (>= 1) of coordinates")
    if any(not math.isfinite(v) for p in points for v in p):
        raise ValueError("points must be finite (drop trials without a finite H on every dataset first)")


def dominates(a: Point, b: Point) -> bool:
    """Whether ``a`` dominates ``b`` under maximisation (>= everywhere, > somewhere)."""
    return all(x >= y for x, y in zip(a, b)) and any(x > y for x, y in zip(a, b))


def nondominated_fronts(points: Sequence[Point]) -> list[list[int]]:
    """Non-dominated sorting (Deb et al.'s fast sort), maximisation: ``[front 0, front 1, ...]``.

    points: n vectors of equal length m (finite). Returns the indices of ``points`` per front, each front in
    ascending index order; front 0 is the Pareto front, front k+1 is the front of what remains without fronts
    0..k. Identical points never dominate each other, so they share a front. O(m n^2).
    """
    _check(points)
    n = len(points)
    beaten_by = [0] * n                  # how many points dominate i
    beats: list[list[int]] = [[] for _ in range(n)]
    for i, j in combinations(range(n), 2):
        if dominates(points[i], points[j]):
            beats[i].append(j)
            beaten_by[j] += 1
        elif dominates(points[j], points[i]):
            beats[j].append(i)
            beaten_by[i] += 1
    fronts, front = [], [i for i in range(n) if beaten_by[i] == 0]
    while front:
        fronts.append(sorted(front))
        following = []
        for i in front:
            for j in beats[i]:
                beaten_by[j] -= 1
                if beaten_by[j] == 0:
                    following.append(j)
        front = following
    return fronts


def crowding_distance(points: Sequence[Point]) -> list[float]:
    """NSGA-II crowding distance of the points of one front (same order as ``points``).

    For each coordinate d the points are sorted by (value, index); if they do not all share one value, the two
    ends get ``inf`` and every inner point adds ``(next - previous) / (max - min)`` along d (its neighbours' gap,
    as a share of the front's range on d). A coordinate on which all points agree adds nothing. A large distance
    means an isolated point (more diversity); a front of one or two distinct points is all ``inf``.
    """
    _check(points)
    n = len(points)
    distance = [0.0] * n
    for d in range(len(points[0]) if n else 0):
        order = sorted(range(n), key=lambda i: (points[i][d], i))
        low, high = points[order[0]][d], points[order[-1]][d]
        if high == low:
            continue
        distance[order[0]] = distance[order[-1]] = math.inf
        for k in range(1, n - 1):
            distance[order[k]] += (points[order[k + 1]][d] - points[order[k - 1]][d]) / (high - low)
    return distance


def rank_order(points: Sequence[Point]) -> list[int]:
    """All indices of ``points``, best first: by front (:func:`nondominated_fronts`), then by crowding distance
    inside the front (larger first), then by mean coordinate (larger first), then by index (smaller first).

    Deterministic: the last key is unique. The mean breaks the ties crowding leaves (e.g. the ``inf`` of a
    front's ends, duplicates); the index (arrival order, for the scheduler) breaks the rest.
    """
    key = {}
    for f, front in enumerate(nondominated_fronts(points)):
        for i, c in zip(front, crowding_distance([points[i] for i in front])):
            key[i] = (f, -c, -sum(points[i]) / len(points[i]), i)
    return sorted(range(len(points)), key=key.__getitem__)


def compromise(points: Sequence[Point]) -> tuple[int, tuple[float, ...]]:
    """The min-max-regret point: (its index, its regret per coordinate, in H points).

    regret_d(p) = (best value on d among ``points``) - p_d >= 0. The compromise minimises the largest regret
    over d; ties go to the smaller mean regret, then to the smaller index. It is always on the Pareto front
    (a point that dominates another has no larger regret anywhere and a smaller mean regret). ValueError when
    ``points`` is empty.
    """
    _check(points)
    if not points:
        raise ValueError("compromise of no points")
    best = [max(p[d] for p in points) for d in range(len(points[0]))]
    regrets = [tuple(b - v for b, v in zip(best, p)) for p in points]
    index = min(range(len(points)), key=lambda i: (max(regrets[i]), sum(regrets[i]) / len(best), i))
    return index, regrets[index]


def pareto_section(points: dict[str, dict[str, float]], datasets: list[str], marked: dict[str, dict[str, float]],
                   folder: Path, label: str) -> list[str]:
    """The report's Pareto section: markdown lines, and one PNG per pair of datasets written into ``folder``.

    points: {trial name: {dataset: H}} (completed trials, validation H at their last epoch); a trial without a
    finite H on every one of ``datasets`` is left out (and counted). marked: {name: {dataset: H}} of settings
    to show (e.g. "published", "best shared (mean H)"), annotated on the plots and placed against the front.
    label: what the data is (e.g. "simulated data"). Writes ``pareto_<a>_<b>.png`` for each pair (a, b) of
    ``datasets`` in their order.
    """
    heading = [f"## Pareto view (validation protocol, {label})", ""]
    if len(datasets) < 2:
        return heading + [f"A Pareto front needs 2 datasets or more; this search has {len(datasets)}."]
    names = [n for n, h in points.items() if _complete(h, datasets)]
    vectors = [tuple(float(points[n][d]) for d in datasets) for n in names]
    left_out = len(points) - len(names)
    note = [f"{left_out} trial(s) without a finite H on every dataset are left out.", ""] if left_out else []
    if not vectors:
        return heading + note + ["No completed trial has an H on every dataset: there is no front to show."]
    front = nondominated_fronts(vectors)[0]
    lines = heading + note + [
        f"Over the {len(vectors)} completed trials, {len(front)} are non-dominated on ({', '.join(datasets)}) H: "
        "no other trial is at least as good on every dataset and better on one.", "",
        "| trial | " + " | ".join(f"{d} H" for d in datasets) + " | mean H |",
        "|---|" + "---|" * (len(datasets) + 1)]
    for i in sorted(front, key=lambda i: (-sum(vectors[i]), i)):
        lines.append(f"| {names[i]} | " + " | ".join(f"{v:.2f}" for v in vectors[i])
                     + f" | {sum(vectors[i]) / len(datasets):.2f} |")
    lines += ["", *_compromise_lines(names, vectors, datasets), *_marked_lines(marked, vectors, datasets)]
    pngs = [plot_pair(names, vectors, front, marked, datasets, a, b, folder, label)
            for a, b in combinations(range(len(datasets)), 2)]
    return lines + ["", "Plots: " + ", ".join(f"`{p.name}`" for p in pngs)]


def _complete(h: dict, datasets: list[str]) -> bool:
    return all(isinstance(h.get(d), (int, float)) and not isinstance(h.get(d), bool) and math.isfinite(h[d])
               for d in datasets)


def _compromise_lines(names: list[str], vectors: list[tuple], datasets: list[str]) -> list[str]:
    """The compromise trial, its regret per dataset, and the answer to "one setting?"."""
    index, regrets = compromise(vectors)
    per = ", ".join(f"{d} {r:.2f}" for d, r in zip(datasets, regrets))
    return [f"Compromise (smallest largest regret; regret = that dataset's best H in this search minus the "
            f"trial's H): **{names[index]}**, regret per dataset: {per}.", "",
            f"One setting? The compromise gives up at most {max(regrets):.2f} H points on any dataset against that "
            "dataset's best trial of this search."]


def _marked_lines(marked: dict, vectors: list[tuple], datasets: list[str]) -> list[str]:
    """Where each marked setting stands against the search's trials (on the front, or dominated by k)."""
    lines = []
    for name, h in marked.items():
        if not _complete(h, datasets):
            lines.append(f"- {name}: no H on every dataset, not placed.")
            continue
        point = tuple(float(h[d]) for d in datasets)
        beaten = sum(dominates(v, point) for v in vectors)
        where = "non-dominated by every trial" if not beaten else f"dominated by {beaten} trial(s)"
        lines.append(f"- {name} (" + ", ".join(f"{d} {v:.2f}" for d, v in zip(datasets, point)) + f"): {where}.")
    return ["", *lines] if lines else []


def _pair_front(xy: list[tuple[float, float]]) -> list[int]:
    """Indices of the 2-d non-dominated points, by increasing x (then decreasing y): the staircase's corners."""
    return sorted(nondominated_fronts(xy)[0], key=lambda i: (xy[i][0], -xy[i][1]))


def plot_pair(names: list[str], vectors: list[tuple], front: list[int], marked: dict, datasets: list[str],
              a: int, b: int, folder: Path, label: str) -> Path:
    """``folder/pareto_<a>_<b>.png``: every trial grey, the trials non-dominated on all datasets highlighted, the
    front of this pair alone as a step line, the compromise ringed, marked settings annotated. Returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xy = [(v[a], v[b]) for v in vectors]
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    ax.scatter(*zip(*xy), s=14, color="0.7", label="trials")
    ax.scatter(*zip(*[xy[i] for i in front]), s=30, color="tab:blue", label="non-dominated (all datasets)")
    corners = [xy[i] for i in _pair_front(xy)]
    ax.step(*zip(*corners), where="pre", color="tab:blue", lw=1, label="front of this pair")
    best = xy[compromise(vectors)[0]]
    ax.scatter(*best, s=110, facecolors="none", edgecolors="tab:green", lw=1.5, label="compromise (all datasets)")
    for name, h in marked.items():
        if _complete(h, datasets):
            ax.scatter([h[datasets[a]]], [h[datasets[b]]], marker="*", s=120, color="tab:red", zorder=3)
            ax.annotate(name, (h[datasets[a]], h[datasets[b]]), textcoords="offset points", xytext=(5, 5), fontsize=7)
    ax.set(xlabel=f"{datasets[a]} H (%)", ylabel=f"{datasets[b]} H (%)",
           title=f"Pareto view, validation protocol ({label})")
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    path = Path(folder) / f"pareto_{datasets[a]}_{datasets[b]}.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
