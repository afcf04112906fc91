"""``--objective pareto``: the Pareto maths against hand computations, the multi-objective ASHA rung decision,
the multi-objective Optuna searcher, the report's Pareto section, and one real search on a local Ray."""

import json
import math
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
import yaml
from optuna.study import StudyDirection
from optuna.trial import TrialState

from hpo.mo_asha import MultiObjectiveASHA, keep_count, rung_decision, rung_milestones, survivors
from hpo.pareto import compromise, crowding_distance, nondominated_fronts, pareto_section, rank_order
from hpo.reconcile import RAY_TRIAL_ATTR, reconcile_snapshot
from hpo.searcher import STOP_EPOCH_ATTR, PruningOptunaSearch, make_scheduler, objective_metrics
from hpo.spaces import DefineByRun, parse_space
from zsl.errors import UserError

from search_fixtures import eszsl_space

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


def test_make_scheduler_picks_mo_asha_for_pareto_only():
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    objectives = objective_metrics(["sim-AWA2", "sim-CUB"])
    assert objectives == ["sim-AWA2/H", "sim-CUB/H"]
    mo = make_scheduler("asha", max_t=10, grace_period=1, reduction_factor=3, objectives=objectives)
    assert isinstance(mo, MultiObjectiveASHA) and mo.metrics == tuple(objectives) and list(mo.rungs) == [1, 3, 9]
    assert type(make_scheduler("fifo", max_t=10, grace_period=1, reduction_factor=3, objectives=objectives)) is FIFOScheduler
    assert isinstance(make_scheduler("asha", max_t=10, grace_period=1, reduction_factor=3), ASHAScheduler)


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


# --- the options ------------------------------------------------------------------------------------------------

def test_pareto_with_one_dataset_is_refused_in_one_sentence(tmp_path, capsys):
    from hpo.experiment import SearchOptions, check_options
    from hpo.search import main

    with pytest.raises(UserError, match=r"^--objective pareto needs 2 datasets or more .* sim-CUB: .*mean\.$"):
        check_options(SearchOptions(objective="pareto", datasets=["sim-CUB"], storage_path=str(tmp_path)))
    assert main(["--objective", "pareto", "--datasets", "sim-CUB,sim-CUB", "--storage-path", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --objective pareto needs 2 datasets") and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []  # nothing written
    check_options(SearchOptions(objective="pareto", datasets=["sim-CUB", "sim-SUN"], storage_path=str(tmp_path)))


# --- the multi-objective searcher -------------------------------------------------------------------------------

def _mo_search(storage=None):
    doc = yaml.safe_load("model: eszsl\nparams:\n  gamma: {type: float, low: 0.1, high: 10.0}\n")
    return PruningOptunaSearch(space=DefineByRun(parse_space(doc, "space.yaml", "tiny")), metric="objective",
                               mode="max", objectives=["a/H", "b/H"], storage=storage,
                               sampler=optuna.samplers.RandomSampler(seed=0))


def _result(epoch, total, ha, hb):
    return {"objective": (ha + hb) / 2, "epoch": epoch, "epochs_total": total, "a/H": ha, "b/H": hb,
            "a/S": 1.0, "training_iteration": epoch}


def test_multi_objective_searcher_tells_values_and_stop_epoch():
    from ray.tune.search import ConcurrencyLimiter

    search = _mo_search()
    study = search._ot_study
    assert study.directions == [StudyDirection.MAXIMIZE] * 2 and search.objectives == ["a/H", "b/H"]
    assert search.metric == "objective" and ConcurrencyLimiter(search, 2).metric == "objective"  # what Ray checks
    for tid in ("done", "stopped", "nan", "err"):
        search.suggest(tid)
    search.on_trial_result("done", _result(1, 3, 1.0, 2.0))  # Optuna refuses intermediate values here: none sent
    search.on_trial_complete("done", _result(3, 3, 4.0, 5.0))
    search.on_trial_complete("stopped", _result(1, 3, 6.0, 1.5))
    search.on_trial_complete("nan", _result(3, 3, math.nan, 5.0))
    search.on_trial_complete("err", None, error=True)
    done, stopped, nan, err = study.trials
    assert done.state == TrialState.COMPLETE and done.values == [4.0, 5.0] and done.intermediate_values == {}
    assert stopped.state == TrialState.PRUNED and stopped.values == [6.0, 1.5]
    assert stopped.user_attrs[STOP_EPOCH_ATTR] == 1 and stopped.user_attrs["a/H"] == 6.0
    assert STOP_EPOCH_ATTR not in done.user_attrs and done.user_attrs["a/S"] == 1.0
    assert nan.state == err.state == TrialState.FAIL and nan.values is None
    search.suggest("next")  # the sampler copes with PRUNED trials that hold values
    assert study.trials[-1].state == TrialState.RUNNING


def test_multi_objective_retry_and_reconcile(tmp_path):
    search = _mo_search(optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}"))
    study = search._ot_study
    search.suggest("ray-1")
    search.on_trial_complete("ray-1", None, error=True)  # errored; --resume later runs it to a stop at epoch 2
    search.on_trial_complete("ray-1", _result(2, 3, 7.0, 8.0))
    failed, retry = study.trials
    assert failed.state == TrialState.FAIL and retry.state == TrialState.PRUNED and retry.values == [7.0, 8.0]
    assert retry.user_attrs["retry_of"] == 0 and retry.user_attrs[STOP_EPOCH_ATTR] == 2 and retry.params == failed.params
    search.suggest("orphan")  # a trial the restored Ray does not know: ended FAIL by reconcile
    entries = [[json.dumps({"trial_id": "ray-1", "status": "TERMINATED"}), "{}"]]
    (tmp_path / "experiment_state-2026-01-01_00-00-00.json").write_text(json.dumps({"trial_data": entries}))
    change = reconcile_snapshot(str(tmp_path), optuna.load_study(study_name=study.study_name,
                                                                 storage=f"sqlite:///{tmp_path / 'optuna.db'}"))
    assert change.orphans == [2] and study.trials[2].state == TrialState.FAIL
    assert study.trials[2].user_attrs[RAY_TRIAL_ATTR] == "orphan"


# --- one real search on a local Ray -----------------------------------------------------------------------------

DATASETS = ["sim-AWA2", "sim-CUB"]
EPOCHS, RF = 5, 2  # rungs at scoring epochs 1, 2, 4: every stop happens before the last epoch


def _rows(exp: Path) -> dict[str, list[dict]]:
    """Ray trial id -> its result rows, from the trial folders."""
    out = {}
    for path in exp.glob("trainable_*/result.json"):
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        if rows:
            out[rows[0]["trial_id"]] = rows
    return out


def test_pareto_search_end_to_end(ray_session, tmp_path, monkeypatch):
    import hpo.tuner
    from hpo.experiment import SearchOptions, read_search, study_url
    from hpo.tuner import run_search

    schedulers, real = [], hpo.tuner.make_scheduler

    def keep(*args, **kwargs):  # the real scheduler, kept to compare its decisions with what Ray and Optuna saw
        schedulers.append(real(*args, **kwargs))
        return schedulers[-1]

    monkeypatch.setattr(hpo.tuner, "make_scheduler", keep)
    space = tmp_path / "space.yaml"
    space.write_text(eszsl_space(epochs=EPOCHS, steps=2))
    opts = SearchOptions(space=str(space), datasets=DATASETS, num_samples=8, max_concurrent=2, name="pareto",
                         storage_path=str(tmp_path), seed=1, objective="pareto", grace_period=1, reduction_factor=RF,
                         max_failures=0, verbose=0)
    summary = run_search(opts)
    (sched,) = schedulers
    assert isinstance(sched, MultiObjectiveASHA) and sched.metric == "objective"
    exp = Path(summary.experiment_dir)
    record = read_search(exp)
    study = optuna.load_study(study_name=record["study_name"], storage=study_url(record, exp))
    rows = _rows(exp)

    assert study.directions == [StudyDirection.MAXIMIZE] * 2
    assert study.metric_names == [f"{d}/H (validation, last scoring epoch)" for d in DATASETS]
    assert study.trials[0].params == {"gamma": 1.0, "lam": 0.1}  # the published point first
    assert len(study.trials) == summary.trials == 8 and summary.errored == 0
    assert summary.stopped_early >= 1 and summary.completed >= 1
    stops = {d["trial_id"]: d for d in sched.decisions if d["action"] == "STOP"}
    by_state = {s: [t for t in study.trials if t.state == s] for s in TrialState}
    assert len(by_state[TrialState.PRUNED]) == summary.stopped_early == len(stops)
    assert len(by_state[TrialState.COMPLETE]) == summary.completed == 8 - len(stops)
    for trial in study.trials:
        tid = trial.user_attrs[RAY_TRIAL_ATTR]
        last = rows[tid][-1]
        assert trial.values == [last[f"{d}/H"] for d in DATASETS] and trial.intermediate_values == {}
        if trial.state == TrialState.PRUNED:  # stopped by the scheduler at the epoch of its last row
            assert last["epoch"] < last["epochs_total"] == EPOCHS
            assert trial.user_attrs[STOP_EPOCH_ATTR] == last["epoch"] == stops[tid]["rung"]
            assert list(stops[tid]["values"]) == trial.values
        else:
            assert trial.state == TrialState.COMPLETE and last["epoch"] == EPOCHS and tid not in stops
    for rung in sched.rungs:  # every decision replays from the rung's record, and matches the trial's row there
        at_rung = [d for d in sched.decisions if d["rung"] == rung]
        vectors = [d["values"] for d in at_rung]
        for k, d in enumerate(at_rung):
            assert d["position"] == k and d["kept"] == rung_decision(vectors[:k + 1], k, RF)
            row = next(r for r in rows[d["trial_id"]] if r["epoch"] == d["epoch"])
            assert tuple(row[f"{x}/H"] for x in DATASETS) == d["values"] and d["epoch"] == rung
    finished = [rows[t.user_attrs[RAY_TRIAL_ATTR]][-1]["objective"] for t in by_state[TrialState.COMPLETE]]
    assert summary.best_objective == pytest.approx(max(finished))  # Ray's metric stays the mean H
    from hpo.report import write_report

    text = (write_report(str(exp), top_k=3) / "report.md").read_text()  # the report reads a multi-objective study
    assert "objective = each dataset's H (multi-objective" in text and "## Pareto view (validation protocol" in text
    assert f"Over the {summary.completed} completed trials" in text and "One setting? The compromise" in text
    assert (exp / "report" / f"pareto_{DATASETS[0]}_{DATASETS[1]}.png").is_file()


def test_pareto_search_with_a_prefix_stage(ray_session, tmp_path):
    """D2SC's DRG prefix reports epoch 0, objective NaN and no ``<dataset>/H``: Ray checks every row for its
    searcher's metric, so the multi-objective searcher shows Ray the mean H; no trial errors, the rungs and
    Optuna see scoring epochs only."""
    from hpo.experiment import SearchOptions, read_search, study_url
    from hpo.tuner import run_search

    tiny = {"noise_dim": 8, "gen_hidden": 32, "ngh": 16, "ndh": 32, "batch_size": 32, "iters_per_epoch": 2,
            "critic_iter": 1, "syn_num": 10, "syn_num_drg": 10, "classifier_epochs": 2, "drg_epochs": 1,
            "dfg_epochs": 2}
    space = tmp_path / "space.yaml"
    space.write_text("model: d2sc\npreset: small\nparams:\n  dfg_lr: {type: float, low: 1.0e-4, high: 3.0e-3, log: true}\n"
                     + "".join(f"  {k}: {{type: fixed, value: {v}}}\n" for k, v in tiny.items()))
    opts = SearchOptions(space=str(space), datasets=DATASETS, num_samples=2, max_concurrent=2, name="prefix",
                         storage_path=str(tmp_path), objective="pareto", grace_period=1, reduction_factor=2,
                         max_failures=0, verbose=0)
    summary = run_search(opts)
    assert summary.errored == 0 and summary.completed + summary.stopped_early == 2
    exp = Path(summary.experiment_dir)
    record = read_search(exp)
    study = optuna.load_study(study_name=record["study_name"], storage=study_url(record, exp))
    for trial in study.trials:
        rows = _rows(exp)[trial.user_attrs[RAY_TRIAL_ATTR]]
        assert [r["epoch"] for r in rows][:1] == [0] and "sim-CUB/H" not in rows[0]  # the prefix row
        assert trial.state in (TrialState.COMPLETE, TrialState.PRUNED)
        assert trial.values == [rows[-1][f"{d}/H"] for d in DATASETS] and rows[-1]["epoch"] >= 1
