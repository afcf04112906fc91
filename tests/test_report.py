"""Report CLI on bad input (the full report is exercised on a real search in test_search.py)."""

from hpo.report import main


def test_report_on_a_folder_that_is_no_experiment_exits_2(tmp_path, capsys):
    assert main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "is not a zsl-hpo experiment directory" in err and len(err.strip().splitlines()) == 1


def _trial(name: str, objective: float, status: str = "TERMINATED", error_file: bool = False, epoch: int = 3):
    from hpo.report import TrialRecord

    row = {"epoch": epoch, "epochs_total": 3, "objective": objective, "best_objective": objective, "sim-AWA2/H": objective}
    return TrialRecord(name, {"gamma": objective}, [row], status, error_file)


def test_outcomes_come_from_rays_record_not_from_error_files():
    from hpo.report import leaderboard

    recovered = _trial("trainable_a_1", 30.9, error_file=True)  # crashed once, restored, finished
    failed = _trial("trainable_b_2", 40.0, status="ERROR", error_file=True, epoch=1)
    stopped = _trial("trainable_c_3", 50.0, epoch=1)
    cut = _trial("trainable_d_4", 60.0, status="RUNNING", epoch=2)
    assert [t.outcome() for t in (recovered, failed, stopped, cut)] == ["completed", "errored", "stopped early",
                                                                         "interrupted"]
    assert leaderboard([failed, stopped, recovered, cut], ["sim-AWA2"], 4)[0] is recovered  # full runs first


def test_a_search_where_no_trial_learned_says_so():
    from pathlib import Path

    from hpo.report import render
    from hpo.trainable import SearchContext

    trials = [_trial(f"trainable_{i}_{i}", 0.0) for i in range(3)]
    ctx = SearchContext(model="revcd", preset="small", datasets=["sim-AWA2"])
    text = render(Path("exp"), ctx, "simulated data", trials, trials, {}, {}, {})
    assert "**No trial learned**" in text


def test_report_says_which_keys_the_single_setting_shares_and_which_stay_per_dataset():
    from hpo.report import shared_and_per_dataset
    from hpo.trainable import SearchContext
    from zsl.models import make_config

    datasets = ["sim-AWA2", "sim-CUB", "sim-SUN"]
    ctx = SearchContext(model="d2sc", preset="paper", datasets=datasets,
                        base_configs={d: make_config("d2sc", "paper", d) for d in datasets},
                        class_embedding={"sim-AWA2": "att", "sim-CUB": "sent", "sim-SUN": "att"})
    text = shared_and_per_dataset(ctx, {"dfg_lr": 1e-4, "syn_num": 400, "noise_dim": 312})
    per_dataset = text.split("per dataset, from the base preset: ")[1].split(";")[0].split(", ")
    assert {"drg_epochs", "dfg_epochs", "syn_num_drg", "gamma_recons"} <= set(per_dataset)
    assert "syn_num" not in per_dataset and "noise_dim" not in per_dataset and "batch_size" not in per_dataset
    assert "shares 3 keys" in text and "sim-CUB: sent" in text
