"""Trainable pieces without Ray: objective aggregation, divergence detection, Optuna end states,
and the checkpoint round trip that lets ASHA pauses and resumes continue where they stopped."""

import math

import pytest
from optuna.trial import TrialState

from hpo.searcher import final_state
from hpo.trainable import SearchContext, aggregate, build_runs, call_runs, load_checkpoint, save_checkpoint
from zsl.errors import DivergedError, check_finite

CTX = SearchContext(model="eszsl", preset="small", datasets=["sim-AWA2", "sim-CUB"])


def test_aggregate_mean_and_min():
    assert aggregate([10.0, 20.0, 60.0], "mean") == pytest.approx(30.0)
    assert aggregate([10.0, 20.0, 60.0], "min") == 10.0


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_check_finite_names_the_culprit(bad):
    with pytest.raises(DivergedError, match=r"sim-CUB diverged at epoch 3: 'g_loss' is"):
        check_finite("sim-CUB", 3, {"stage": "DFG", "d_loss": 1.0, "g_loss": bad})
    check_finite("sim-CUB", 3, {"stage": "DFG", "d_loss": 1.0})  # finite: no error


@pytest.mark.parametrize("result,error,state", [
    ({"objective": 30.0, "epoch": 8, "epochs_total": 8}, False, TrialState.COMPLETE),
    ({"objective": 30.0, "epoch": 3, "epochs_total": 8}, False, TrialState.PRUNED),
    ({"objective": math.nan, "epoch": 8, "epochs_total": 8}, False, TrialState.FAIL),
    ({"objective": 30.0, "epoch": 3, "epochs_total": 8}, True, TrialState.FAIL),
    (None, False, TrialState.FAIL),
])
def test_final_state(result, error, state):
    assert final_state(result, error) == state


def test_checkpoint_round_trip_continues_the_same_trajectory(tmp_path):
    runs = build_runs(CTX, {"gamma": 0.5, "lam": 0.05})
    call_runs(runs, "step")
    checkpoint = save_checkpoint(runs, {"best_objective": 12.5, "last": {}}, str(tmp_path))
    expected = call_runs(runs, "step")
    resumed = build_runs(CTX, {"gamma": 0.5, "lam": 0.05})
    state = load_checkpoint(checkpoint, resumed)
    assert state["best_objective"] == 12.5
    assert all(progress[0] == 1 for progress in call_runs(resumed, "progress").values())
    got = call_runs(resumed, "step")
    for name in runs:
        for key in (f"{name}/H", f"{name}/S", f"{name}/U", f"{name}/ZSL", f"{name}/loss/loss"):
            assert got[name][key] == pytest.approx(expected[name][key], rel=1e-12, abs=1e-12)
