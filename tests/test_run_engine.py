"""One run engine (zsl.run): zsl.train and a search trial give the same numbers for the same spec; data options
and seeds reach every entry point; the experiment record is self-contained; file:// storage; one "best"."""

import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from hpo.experiment import SearchOptions, class_embeddings, make_context, read_search
from hpo.tuner import run_search
from zsl.errors import UserError
from zsl.run import DataOptions, Run, RunSpec, resolve_config
from zsl.train import main as train_main

from search_fixtures import eszsl_space

ROOT = Path(__file__).resolve().parent.parent
CUB73 = ROOT.parent / "shared" / "data" / "cub73"
SPACE = eszsl_space(steps=4, published="{gamma: 2.0, lam: 0.5}")


def _opts(tmp: Path, name: str, **kw) -> SearchOptions:
    space = tmp / "space.yaml"
    space.write_text(SPACE)
    base = dict(space=str(space), datasets=["sim-AWA2"], num_samples=2, max_concurrent=1, name=name,
                storage_path=str(tmp), seed=4, data_seed=2, scheduler="fifo", max_failures=0, verbose=0,
                state_key=str(tmp / "state.key"))
    return SearchOptions(**{**base, **kw})


def test_zsl_train_and_a_search_trial_give_identical_numbers(ray_session, tmp_path):
    """The published point as a search trial (seed 4, data seed 2, 3 epochs) and as zsl.train with the same
    spec: every epoch's S/U/H/ZSL is the same float."""
    summary = run_search(_opts(tmp_path, "same", num_samples=1))
    assert summary.completed == 1
    (trial,) = (tmp_path / "same").glob("trainable_*/result.json")
    rows = [json.loads(line) for line in trial.read_text().splitlines()]
    out = tmp_path / "train"
    code = train_main(["--model", "eszsl", "--dataset", "sim-AWA2", "--preset", "small", "--seed", "4",
                       "--data-seed", "2", "--set", "gamma=2.0", "--set", "lam=0.5", "--set", "solver=gradient",
                       "--set", "steps_per_epoch=4", "--epochs", "3", "--out", str(out)])
    assert code == 0
    history = json.loads((out / "results.json").read_text())["history"]
    assert [r["epoch"] for r in rows] == [h["epoch"] for h in history] == [1, 2, 3]
    for row, h in zip(rows, history):
        assert [row[f"sim-AWA2/{k}"] for k in ("S", "U", "H", "ZSL")] == [h[k] for k in ("S", "U", "H", "ZSL")]


def test_the_record_rules_report_and_resume_after_the_space_file_is_edited(ray_session, tmp_path):
    from hpo.final_job import chosen_settings
    from hpo.report import write_report

    opts = _opts(tmp_path, "rec")
    summary = run_search(opts)
    record = read_search(tmp_path / "rec")
    assert record["space"]["doc"]["published"] == {"gamma": 2.0, "lam": 0.5}
    assert record["context"]["base_configs"]["sim-AWA2"] == resolve_config("eszsl", "small", "sim-AWA2")
    assert record["context"]["data_seed"] == 2 and record["context"]["seed"] == 4
    assert {"torch", "ray", "optuna"} <= set(record["versions"]) and "git_revision" in record
    Path(opts.space).write_text(eszsl_space(steps=1, published="{gamma: 9.0, lam: 9.0}"))
    folder = write_report(str(tmp_path / "rec"), top_k=2)
    published = chosen_settings(str(tmp_path / "rec"), read_search(tmp_path / "rec"))[0]["published"]["params"]
    assert published["gamma"] == 2.0 and published["steps_per_epoch"] == 4  # the final evaluation's, as recorded
    best = yaml.safe_load((folder / "best_setting.yaml").read_text())["config"]
    assert {k: best[k] for k in ("gamma", "lam")} == {k: summary.best_config[k] for k in ("gamma", "lam")}  # one "best"
    resumed = run_search(dataclasses.replace(opts, resume=True))
    assert resumed.trials == 2 and read_search(tmp_path / "rec")["space"] == record["space"]
    hint = (folder / "best_setting.yaml").read_text().splitlines()[1]
    assert hint.endswith("--seed 4 --data-seed 2")
    out = tmp_path / "replay"  # the printed replay trains the best trial again, on the same data: same numbers
    assert train_main(["--config", str(folder / "best_setting.yaml"), "--dataset", "sim-AWA2", "--seed", "4",
                       "--data-seed", "2", "--out", str(out)]) == 0
    replayed = json.loads((out / "results.json").read_text())["final"]
    rows = {json.loads(line)["trial_id"]: json.loads(line) for f in (tmp_path / "rec").glob("trainable_*/result.json")
            for line in f.read_text().splitlines()}
    best_rows = [r for r in rows.values() if r["config"]["gamma"] == best["gamma"]]
    assert replayed["H"] == best_rows[0]["sim-AWA2/H"]


def test_a_file_uri_search_resumes_and_reports(ray_session, tmp_path):
    from hpo.report import write_report

    uri = f"file://{tmp_path}"
    summary = run_search(_opts(tmp_path, "viauri", storage_path=uri))
    assert summary.completed == 2 and (tmp_path / "viauri" / "search.json").is_file()
    assert run_search(_opts(tmp_path, "viauri", storage_path=uri, resume=True)).trials == 2
    folder = write_report(f"{uri}/viauri", top_k=2)
    assert "Trials: 2 (2 completed)" in (folder / "report.md").read_text()


def test_max_epochs_caps_every_stage_in_proportion_through_the_context():
    opts = SearchOptions(space="d2sc", datasets=["sim-AWA2"], max_epochs=10)
    ctx = make_context(opts, "paper", {}, "d2sc")
    config = ctx.run_spec({}, "sim-AWA2").config
    assert (config["drg_epochs"], config["dfg_epochs"]) == (5, 5)


def test_seeds_stay_apart_and_data_options_reach_the_spec():
    opts = SearchOptions(space="eszsl", datasets=["sim-AWA2", "sim-CUB"], seed=7, data_seed=3,
                         class_embedding="original_att,CUB:att", split_percent=30, scaler_fit="full_trainval")
    ctx = make_context(opts, "small", {}, "eszsl")
    spec = ctx.run_spec({}, "sim-AWA2")
    assert (spec.seed, spec.data_seed) == (7, 3)
    assert spec.data == DataOptions("original_att", 30, "full_trainval")
    assert ctx.run_spec({}, "sim-CUB").data.class_embedding == "att"  # CUB names sim-CUB too


@pytest.mark.parametrize("value, message", [
    ("bogus", "must be one of att, original_att, sent"),
    ("AWA2:sent,XYZ:att", "XYZ is not one of this search's datasets"),
])
def test_bad_class_embedding_flags(value, message):
    with pytest.raises(UserError, match=message):
        class_embeddings(SearchOptions(datasets=["sim-AWA2"], class_embedding=value))


def test_data_options_are_validated_and_recorded_by_zsl_train(tmp_path, capsys):
    with pytest.raises(UserError, match="--split-percent must be one of 100, 30, 10"):
        DataOptions(split_percent=50)
    code = train_main(["--model", "eszsl", "--dataset", "sim-CUB", "--scaler-fit", "full_trainval",
                       "--class-embedding", "original_att", "--out", str(tmp_path / "r")])
    assert code == 0
    results = json.loads((tmp_path / "r" / "results.json").read_text())
    assert results["data_options"] == {"class_embedding": "original_att", "split_percent": 100,
                                       "scaler_fit": "full_trainval"}
    code = train_main(["--model", "eszsl", "--dataset", "sim-AWA2", "--class-embedding", "sent",
                       "--out", str(tmp_path / "s")])
    assert code == 2 and "class embedding 'sent' needs" in capsys.readouterr().err


@pytest.mark.skipif(not (CUB73 / "CUB" / "sent_splits.mat").is_file(), reason="needs ../shared/data/cub73")
def test_cub_sentence_embedding_on_real_features(tmp_path):
    """Real CNN features of the CUB73 development set with CUB's 1024-d sentence embeddings."""
    spec = RunSpec("eszsl", "CUB", None, "validation", 0, 0, "small", str(CUB73),
                   resolve_config("eszsl", None, "CUB"), DataOptions(class_embedding="sent"))
    run = Run(spec)
    assert run.data.class_emb.shape[1] == 1024
    scores = run.run_to_end()
    assert 0.0 < scores["H"] <= 100.0
