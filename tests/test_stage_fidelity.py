"""Stage-aware fidelity: a search counts, ranks and stops trials on scoring-stage epochs only (D2SC: DFG);
the earlier stage (DRG) is a reported, costed, unjudged prefix."""

import math

import optuna
import pytest
from optuna.trial import TrialState

from hpo import trainable as trainable_module
from hpo.experiment import SearchOptions, read_search, study_url
from hpo.trainable import SearchContext
from hpo.tuner import run_search
from zsl.run import resolve_config

TINY = {"noise_dim": 8, "gen_hidden": 32, "ngh": 16, "ndh": 32, "batch_size": 32, "iters_per_epoch": 2,
        "critic_iter": 1, "syn_num": 10, "syn_num_drg": 10, "classifier_epochs": 2}

pytestmark = pytest.mark.usefixtures("one_thread")


def test_prefix_first_then_scoring_epochs_aligned_across_datasets(monkeypatch):
    """sim-AWA2 has 1 DRG epoch, sim-CUB 3: the trial runs the prefixes first (epoch 0, objective NaN, DRG scores
    under DRG/...), then both datasets' DFG epochs side by side as scoring epochs 1 and 2."""
    rows = []
    monkeypatch.setattr(trainable_module.tune, "report", lambda metrics, checkpoint=None: rows.append(dict(metrics)))
    monkeypatch.setattr(trainable_module.tune, "get_checkpoint", lambda: None)
    base = {"sim-AWA2": resolve_config("d2sc", "small", "sim-AWA2", {**TINY, "drg_epochs": 1, "dfg_epochs": 2}),
            "sim-CUB": resolve_config("d2sc", "small", "sim-CUB", {**TINY, "drg_epochs": 3, "dfg_epochs": 2})}
    ctx = SearchContext(model="d2sc", preset="small", datasets=list(base), base_configs=base)
    trainable_module.trainable({}, ctx.to_dict())
    assert [r["stage"] for r in rows] == ["prefix"] * 3 + ["scoring"] * 2
    assert [r["epoch"] for r in rows] == [0, 0, 0, 1, 2] and {r["epochs_total"] for r in rows} == {2}
    assert [r["trial_epochs"] for r in rows] == [1, 2, 3, 4, 5]
    for r in rows[:3]:
        assert math.isnan(r["objective"]) and math.isnan(r["best_objective"])
        assert "DRG/sim-CUB/H" in r and "sim-CUB/H" not in r
    assert "DRG/sim-AWA2/H" in rows[0] and "sim-AWA2/H" not in rows[2]  # AWA2 waited for CUB's prefix
    best = -math.inf
    for r in rows[3:]:
        assert r["objective"] == pytest.approx((r["sim-AWA2/H"] + r["sim-CUB/H"]) / 2)
        best = max(best, r["objective"])
        assert r["best_objective"] == pytest.approx(best)
        assert "DRG/sim-CUB/H" in r  # the prefix's last scores stay visible under their own name


def test_a_search_judges_trials_on_scoring_epochs_only(ray_session, tmp_path):
    """A real D2SC search with ASHA (grace 1): every judged result, Optuna intermediate value and best comes from
    DFG epochs; DRG rows carry epoch 0 and no objective."""
    space = tmp_path / "space.yaml"
    fixed = "".join(f"  {k}: {{type: fixed, value: {v}}}\n" for k, v in TINY.items())
    space.write_text("model: d2sc\npreset: small\nparams:\n"
                     "  dfg_lr: {type: float, low: 1.0e-4, high: 3.0e-3, log: true}\n" + fixed +
                     "  drg_epochs: {type: fixed, value: 2}\n  dfg_epochs: {type: fixed, value: 4}\n")
    opts = SearchOptions(space=str(space), datasets=["sim-AWA2"], num_samples=4, max_concurrent=2, name="stages",
                         storage_path=str(tmp_path), seed=0, grace_period=1, reduction_factor=2, max_failures=0,
                         verbose=0, state_key=str(tmp_path / "key"))
    summary = run_search(opts)
    assert summary.trials == 4 and summary.errored == 0
    exp = tmp_path / "stages"
    from hpo.report import read_trials

    trials = read_trials(exp)
    for t in trials:
        stages = [(r["stage"], r["epoch"]) for r in t.rows]
        assert stages[:2] == [("prefix", 0), ("prefix", 0)], stages  # nobody is stopped inside DRG
        assert all(e >= 1 for s, e in stages[2:] if s == "scoring")
        assert t.last["stage"] == "scoring" and math.isfinite(t.last["objective"])
    record = read_search(exp)
    study = optuna.load_study(study_name=record["study_name"], storage=study_url(record, exp))
    for t in study.trials:
        assert t.state in (TrialState.COMPLETE, TrialState.PRUNED)
        assert sorted(t.intermediate_values) == list(range(1, len(t.intermediate_values) + 1))  # DFG epochs 1..k
    assert summary.best_objective == max(t.last["objective"] for t in trials if t.finished)
