"""``--objective pareto``: the Pareto maths against hand computations, the multi-objective ASHA rung decision
and the report's Pareto section."""

import math
from types import SimpleNamespace

import pytest

from hpo.mo_asha import MultiObjectiveASHA, keep_count, rung_decision, rung_milestones, survivors
from hpo.pareto import compromise, crowding_distance, nondominated_fronts, pareto_section, rank_order

INF = math.inf


# --- non-dominated sorting, crowding distance, rank order -------------------------------------------------------

def test_nondominated_fronts_by_hand():
    points = [(1, 5), (3, 3), (2, 2), (5, 1), (1, 1), (3, 3), (2, 4), (0, 0)]
    # (2,2) is beaten by (3,3) and (2,4); (1,1) also by (2,2); (0,0) by everything. Duplicates share a front.
    assert nondominated_fronts(points) == [[0, 1, 3, 5, 6], [2], [4], [7]]
    assert nondominated_fronts([(1, 2, 3), (3, 2, 1), (1, 2, 2), (0, 0, 0)]) == [[0, 1], [2], [3]]
    assert nondominated_fronts([]) == []
    with pytest.raises(ValueError, match="finite"):
        nondominated_fronts([(1.0, math.nan)])


def test_crowding_distance_by_hand():
    # x: 0, 2, 5, 10 (range 10); y: 0, 4, 7, 10 (range 10)
    # (2,7): (5-0)/10 + (10-4)/10 = 1.1;  (5,4): (10-2)/10 + (7-0)/10 = 1.5;  the ends: inf
    assert crowding_distance([(0, 10), (2, 7), (5, 4), (10, 0)]) == pytest.approx([INF, 1.1, 1.5, INF])
    # a coordinate on which all points agree adds nothing: (1,2,1) gets (3-0)/3 + (3-0)/3 = 2
    assert crowding_distance([(0, 3, 1), (1, 2, 1), (3, 0, 1)]) == pytest.approx([INF, 2.0, INF])
    assert crowding_distance([(1, 5), (1, 5)]) == [0.0, 0.0]  # duplicates: no ends marked, a tie
    assert crowding_distance([(4, 4)]) == [0.0] and crowding_distance([]) == []


def test_rank_order_front_then_crowding_then_mean_then_index():
    assert rank_order([(0, 10), (2, 7), (5, 4), (10, 0)]) == [0, 3, 2, 1]  # ends (inf) by index, then 1.5, 1.1
    assert rank_order([(5, 20), (20, 5), (1, 1)]) == [0, 1, 2]  # equal mean: arrival order
    assert rank_order([(5, 20), (21, 5), (1, 1)]) == [1, 0, 2]  # larger mean first
    assert rank_order([(1, 1), (9, 9), (2, 2)]) == [1, 2, 0]  # fronts first


# --- the rung decision ------------------------------------------------------------------------------------------

def test_keep_count_is_ceil_of_n_over_rf():
    assert [keep_count(n, 3) for n in range(1, 8)] == [1, 1, 1, 2, 2, 2, 3]
    assert keep_count(4, 4 / 3) == 3 and keep_count(6, 3.0) == 2 and keep_count(3, 1.5) == 2


def test_rung_decisions_by_hand():
    """Five trials reach a rung in turn (reduction factor 2); each is judged against what is recorded then."""
    a, b, c, d, e = (10, 10), (20, 5), (5, 20), (8, 8), (15, 15)
    rf = 2
    assert rung_decision([a], 0, rf)  # alone: ceil(1/2) = 1 continues
    # a and b: one front, both ends (inf): b's mean 12.5 beats a's 10; keep 1
    assert survivors([a, b], rf) == [1] and rung_decision([a, b], 1, rf)
    # a, b, c: one front; a is inner (crowding (20-5)/15 * 2 = 2), b and c ends with equal means: arrival order
    assert survivors([a, b, c], rf) == [1, 2] and rung_decision([a, b, c], 2, rf)
    # d is dominated by a: second front, keep 2 = b, c
    assert survivors([a, b, c, d], rf) == [1, 2] and not rung_decision([a, b, c, d], 3, rf)
    # e dominates a and d and is inner on the front {b, c, e}: keep 3 = b, c, e
    assert survivors([a, b, c, d, e], rf) == [1, 2, 4] and rung_decision([a, b, c, d, e], 4, rf)
    # crowding decides inside a front: of (0,10),(2,7),(5,4),(10,0) keep 3 at rf 4/3 drops (2,7) (1.1 < 1.5)
    assert not rung_decision([(0, 10), (5, 4), (10, 0), (2, 7)], 3, 4 / 3)


def test_rungs_are_rays_asha_rungs():
    from ray.tune.schedulers.async_hyperband import _Bracket

    for grace, rf, max_t in [(1, 2, 8), (2, 3, 10_000), (1, 3, 4), (3, 2.5, 50)]:
        ray_rungs = sorted(m for m, _ in _Bracket(grace, max_t, rf, 0)._rungs)
        assert rung_milestones(grace, rf, max_t) == ray_rungs


def _row(epoch, *hs, **extra):
    return {"epoch": epoch, "a/H": hs[0], "b/H": hs[1], "objective": sum(hs) / 2, **extra}


def test_scheduler_judges_scoring_rows_at_rungs_only():
    sched = MultiObjectiveASHA(["a/H", "b/H"], max_t=8, grace_period=1, reduction_factor=2)  # rungs 1, 2, 4, 8
    assert sched.set_search_properties("objective", "max") and sched.metric == "objective"
    t1, t2, t3 = (SimpleNamespace(trial_id=f"t{i}") for i in (1, 2, 3))
    cont, stop = "CONTINUE", "STOP"
    assert sched.on_trial_result(None, t1, _row(0, 1.0, 1.0, objective=math.nan)) == cont  # prefix row: ignored
    assert sched.on_trial_result(None, t1, _row(1, math.nan, 9.0)) == cont  # non-finite: ignored
    assert sched.on_trial_result(None, t1, _row(1, 9.0, 9.0, diverged=1)) == cont  # diverged: ignored
    assert sched.decisions == []
    assert sched.on_trial_result(None, t1, _row(1, 10.0, 10.0)) == cont  # first at rung 1
    assert sched.on_trial_result(None, t2, _row(1, 5.0, 5.0)) == stop   # dominated by t1, keep 1 of 2
    assert sched.on_trial_result(None, t1, _row(1, 0.0, 0.0)) == cont   # recorded there already: not judged again
    assert sched.on_trial_result(None, t3, _row(3, 1.0, 30.0)) == cont  # rung 2 (the highest reached): first there
    # rung 2: t3 and t1 are the two ends of one front (crowding inf); t3's mean 15.5 beats t1's 12; keep 1 of 2
    assert sched.on_trial_result(None, t1, _row(2, 12.0, 12.0)) == stop
    assert [(d["trial_id"], d["rung"], d["position"], d["action"]) for d in sched.decisions] == [
        ("t1", 1, 0, cont), ("t2", 1, 1, stop), ("t3", 2, 0, cont), ("t1", 2, 1, stop)]
    assert sched.on_trial_result(None, t3, _row(8, 1.0, 30.0)) == stop  # max_t reached, as ASHA
    sched.on_trial_complete(None, t3, _row(4, 1.0, 1.0))  # a last row at a new rung is recorded (no action)
    assert sched.decisions[-1]["action"] == "ENDED" and sched.rungs[4] == {"t3": (1.0, 1.0)}


# --- compromise and the report's section ------------------------------------------------------------------------

def test_compromise_by_hand():
    # best = (50, 50); regrets (0,40) (20,20) (10,25) (40,0): the largest are 40, 20, 25, 40
    index, regrets = compromise([(50, 10), (30, 30), (40, 25), (10, 50)])
    assert index == 1 and regrets == pytest.approx((20, 20))
    # equal largest regret 10 everywhere: mean regrets 20/3, 20/3, 4 -> the third
    a, d, b = (50, 40, 40), (40, 40, 50), (40, 50, 48)
    assert compromise([a, d, b]) == (2, pytest.approx((10, 0, 2)))
    assert compromise([a, d])[0] == 0  # equal in both: the smaller index
    with pytest.raises(ValueError):
        compromise([])


def test_pareto_section_writes_one_png_per_pair_and_sane_lines(tmp_path):
    datasets = ["sim-AWA2", "sim-CUB", "sim-SUN"]
    points = {"t0": {"sim-AWA2": 50, "sim-CUB": 10, "sim-SUN": 30}, "t1": {"sim-AWA2": 30, "sim-CUB": 30, "sim-SUN": 31},
              "t2": {"sim-AWA2": 20, "sim-CUB": 20, "sim-SUN": 20}, "t3": {"sim-AWA2": 10, "sim-CUB": 50, "sim-SUN": 30},
              "t4": {"sim-AWA2": math.nan, "sim-CUB": 60, "sim-SUN": 60}}
    marked = {"published": {"sim-AWA2": 25, "sim-CUB": 25, "sim-SUN": 25}, "best shared (mean H)": points["t1"]}
    lines = pareto_section(points, datasets, marked, tmp_path, "simulated data")
    text = "\n".join(lines)
    assert lines[0] == "## Pareto view (validation protocol, simulated data)"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "pareto_sim-AWA2_sim-CUB.png", "pareto_sim-AWA2_sim-SUN.png", "pareto_sim-CUB_sim-SUN.png"]
    assert all(p.stat().st_size > 1000 for p in tmp_path.iterdir())
    rows = [line for line in lines if line.startswith("| t") and not line.startswith("| trial")]
    assert [r.split(" | ")[0] for r in rows] == ["| t1", "| t0", "| t3"]  # non-dominated, by mean H; t2 is beaten
    assert "1 trial(s) without a finite H" in text and "t4" not in text
    assert "**t1**" in text and "at most 20.00 H points" in text  # best (50, 50, 31): t1's regrets 20, 20, 0
    assert "- published (sim-AWA2 25.00, sim-CUB 25.00, sim-SUN 25.00): dominated by 1 trial(s)." in lines
    assert "non-dominated by every trial" in text and "`pareto_sim-CUB_sim-SUN.png`" in text
    one = pareto_section(points, ["sim-AWA2"], marked, tmp_path / "none", "simulated data")
    assert one[-1] == "A Pareto front needs 2 datasets or more; this search has 1."
    assert "no front" in pareto_section({"t": {"sim-AWA2": 1.0}}, datasets[:2], {}, tmp_path, "x")[-1]
