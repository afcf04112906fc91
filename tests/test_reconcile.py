"""A killed driver's torn snapshot (trial list and searcher state from different moments) is made
consistent before Ray restores it; Optuna trials keep their Ray trial id and orphans end as FAIL."""

import json

import optuna
import pytest
import ray.cloudpickle as cloudpickle
import yaml
from optuna.trial import TrialState

from hpo.reconcile import LIMITER_KEY, RAY_TRIAL_ATTR, reconcile_snapshot, reconciled_generator_state
from hpo.searcher import PruningOptunaSearch
from hpo.spaces import DefineByRun, parse_space
from zsl.errors import UserError


def _gen_state(counter, live):
    return {"counter": counter, "total_samples": 4, "finished": False,
            LIMITER_KEY: {"max_concurrent": 2, "live_trials": set(live), "num_unfinished_live_trials": len(live)}}


def test_searcher_newer_than_trial_list_counts_only_known_trials():
    state = _gen_state(4, {"c", "d"})  # c, d were started after the trial list was written
    new, change = reconciled_generator_state(state, {"a": "TERMINATED", "b": "RUNNING"})
    assert new["counter"] == 2 and change.counter == (4, 2)
    assert new[LIMITER_KEY]["live_trials"] == {"b"} and new[LIMITER_KEY]["num_unfinished_live_trials"] == 1
    assert change.dropped_live == ["c", "d"] and change.added_live == ["b"]
    assert state["counter"] == 4 and state[LIMITER_KEY]["live_trials"] == {"c", "d"}  # input untouched


def test_searcher_older_than_trial_list_takes_the_known_trials():
    state = _gen_state(2, {"b"})
    trials = {"a": "TERMINATED", "b": "TERMINATED", "c": "RUNNING", "d": "PENDING", "e": "ERROR"}
    new, change = reconciled_generator_state(state, trials)
    assert new["counter"] == 5 and new[LIMITER_KEY]["live_trials"] == {"b", "c", "d", "e"}  # --resume restarts e
    assert change.added_live == ["c", "d", "e"] and change.dropped_live == []


def test_consistent_snapshot_is_left_alone():
    state = _gen_state(3, {"c"})
    new, change = reconciled_generator_state(state, {"a": "TERMINATED", "b": "TERMINATED", "c": "RUNNING"})
    assert not change and new == state and change.describe() == ""


def _write_snapshot(folder, trials, gen_state, stamp="2026-01-01_00-00-00"):
    entries = [[json.dumps({"trial_id": tid, "status": status}), "{}"] for tid, status in trials.items()]
    (folder / f"experiment_state-{stamp}.json").write_text(json.dumps({"trial_data": entries}))
    (folder / f"search_gen_state-{stamp}.json").write_bytes(cloudpickle.dumps(gen_state))


def test_reconcile_snapshot_rewrites_the_newest_files_and_fails_orphans(tmp_path):
    _write_snapshot(tmp_path, {"a": "TERMINATED"}, _gen_state(1, set()), stamp="2026-01-01_00-00-00")
    _write_snapshot(tmp_path, {"a": "TERMINATED", "b": "RUNNING"}, _gen_state(3, {"b", "z"}), "2026-01-02_00-00-00")
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'optuna.db'}", direction="maximize")
    for tid in ("a", "b", "z"):
        trial = study.ask()
        trial.set_user_attr(RAY_TRIAL_ATTR, tid)
    study.tell(0, 1.0)
    change = reconcile_snapshot(str(tmp_path), study)
    assert change.counter == (3, 2) and change.dropped_live == ["z"] and change.orphans == [2]
    newest = cloudpickle.loads((tmp_path / "search_gen_state-2026-01-02_00-00-00.json").read_bytes())
    assert newest["counter"] == 2 and newest[LIMITER_KEY]["live_trials"] == {"b"}
    older = cloudpickle.loads((tmp_path / "search_gen_state-2026-01-01_00-00-00.json").read_bytes())
    assert older["counter"] == 1  # only the file Ray restores from is rewritten
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.RUNNING, TrialState.FAIL]
    assert not reconcile_snapshot(str(tmp_path), study)  # now consistent: a second pass changes nothing
    assert sorted(p.name for p in tmp_path.iterdir() if "tmp" in p.name) == []


def test_truncated_trial_list_is_one_clear_error(tmp_path):
    _write_snapshot(tmp_path, {"a": "TERMINATED"}, _gen_state(1, set()))
    state = next(tmp_path.glob("experiment_state-*.json"))
    state.write_text(state.read_text()[:20])
    with pytest.raises(UserError, match="truncated .* --name .* --force"):
        reconcile_snapshot(str(tmp_path), None)


def test_searcher_finds_the_optuna_trial_its_snapshot_lacks():
    doc = yaml.safe_load("model: eszsl\nparams:\n  gamma: {type: float, low: 0.1, high: 10.0}\n")
    space = parse_space(doc, "space.yaml", "tiny")
    search = PruningOptunaSearch(space=DefineByRun(space), metric="objective", mode="max",
                                 sampler=optuna.samplers.RandomSampler(seed=0))
    search.suggest("ray-1")
    study = search._ot_study
    assert study.trials[0].user_attrs[RAY_TRIAL_ATTR] == "ray-1"
    del search._ot_trials["ray-1"]  # a searcher restored from a snapshot taken before ray-1 started
    search.on_trial_result("ray-1", {"objective": 3.0, "training_iteration": 1})
    search.on_trial_complete("ray-1", {"objective": 4.0, "epoch": 2, "epochs_total": 2})
    trial = study.trials[0]
    assert trial.state == TrialState.COMPLETE and trial.value == 4.0 and trial.intermediate_values == {1: 3.0, 2: 4.0}
    search.on_trial_complete("ray-unknown", {"objective": 1.0})  # a trial Optuna never saw: ignored
    assert len(study.trials) == 1


def test_errored_trial_that_ends_well_after_resume_is_recorded_as_a_retry():
    doc = yaml.safe_load("model: eszsl\nparams:\n  gamma: {type: float, low: 0.1, high: 10.0}\n")
    search = PruningOptunaSearch(space=DefineByRun(parse_space(doc, "space.yaml", "tiny")), metric="objective",
                                 mode="max", sampler=optuna.samplers.RandomSampler(seed=0))
    params = search.suggest("ray-1")
    search.on_trial_result("ray-1", {"objective": 2.0, "training_iteration": 1})
    search.on_trial_complete("ray-1", None, error=True)  # e.g. its node was lost beyond --max-failures
    study = search._ot_study
    assert [t.state for t in study.trials] == [TrialState.FAIL]
    # --resume restarts it from its checkpoint (epoch 1); it reports epochs 2-3 and finishes
    search.on_trial_result("ray-1", {"objective": 5.0, "training_iteration": 2})
    search.on_trial_complete("ray-1", {"objective": 6.0, "training_iteration": 3, "epoch": 3, "epochs_total": 3})
    failed, retry = study.trials
    assert failed.state == TrialState.FAIL and retry.state == TrialState.COMPLETE and retry.value == 6.0
    assert retry.params == failed.params == params and retry.user_attrs == {RAY_TRIAL_ATTR: "ray-1", "retry_of": 0}
    assert retry.intermediate_values == {1: 2.0, 2: 5.0, 3: 6.0}  # every epoch, the last one too
    search.on_trial_complete("ray-1", {"objective": 6.0, "epoch": 3, "epochs_total": 3})  # told twice: no new record
    assert len(study.trials) == 2
