"""Bad files handed to the CLIs (issue 14): a damaged experiment for the report, a foreign or damaged checkpoint
for ``zsl.train --resume``, a report folder nobody can write (zsl.train's --out: tests/test_search_bad_input.py).
Each: one sentence naming the file or flag and the fix, exit 2, no traceback, nothing written or overwritten.

Every case runs the CLI's ``main(argv)`` in-process (each fails before Ray, training or any write).
"""

import json
import shutil

import pytest
import torch

from hpo.experiment import SEARCH_FILE, SearchOptions, prepare
from hpo.report import main as report_main
from search_fixtures import eszsl_space
from zsl.train import main as train_main

def _one_sentence(code, capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _snapshot(folder):
    """{relative path: bytes} of every file under ``folder``: the proof that nothing was written."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- the report

@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    """A real search record (prepare) with two hand-written trial folders and an empty Optuna study."""
    import optuna

    from hpo.experiment import study_url

    root = tmp_path_factory.mktemp("exp")
    space = root / "tiny.yaml"
    space.write_text(eszsl_space(epochs=2, steps=2))
    prepare(SearchOptions(space=str(space), datasets=["sim-AWA2"], storage_path=str(root), name="tiny"))
    exp = root / "tiny"
    record = json.loads((exp / SEARCH_FILE).read_text())
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    optuna.create_study(study_name=record["study_name"], storage=study_url(record, exp))
    for i, (tid, gamma) in enumerate((("aaaa0001", 1.0), ("bbbb0002", 2.0)), start=1):
        folder = exp / f"trainable_{tid}_{i}_gamma={gamma}"
        folder.mkdir()
        (folder / "params.json").write_text(json.dumps({"gamma": gamma, "lam": 0.1, "solver": "gradient",
                                                        "steps_per_epoch": 2, "epochs": 2}))
        rows = [{"epoch": e, "epochs_total": 2, "objective": 10.0 * e * gamma, "best_objective": 10.0 * e * gamma,
                 "sim-AWA2/H": 10.0 * e * gamma, "trial_id": tid, "timestamp": 100 * i + e} for e in (1, 2)]
        (folder / "result.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return exp


def _trial_file(exp, name):
    return next(exp.glob("trainable_bbbb0002_*")) / name


def _truncate_result(exp):
    path = _trial_file(exp, "result.json")
    path.write_text(path.read_text()[:-30])


def _newer_search(exp):
    path = exp / SEARCH_FILE
    path.write_text(json.dumps({**json.loads(path.read_text()), "format": 99}))


REPORT_CASES = {  # name: (how to damage the experiment, extra flags, expected part of the sentence)
    "truncated result.json": (_truncate_result, [], "result.json is truncated or damaged at line 2"),
    "empty params.json": (lambda exp: _trial_file(exp, "params.json").write_text(""), [], "params.json is empty"),
    "params.json that is a list": (lambda exp: _trial_file(exp, "params.json").write_text("[1, 2]"), [],
                                   "params.json holds an array, not an object"),
    "truncated search.json": (lambda exp: (exp / SEARCH_FILE).write_text('{"format": 1, "opt'), [],
                              "search.json is truncated or damaged"),
    "newer search.json": (_newer_search, [], "written by a newer zsl-hpo (format 99)"),
    "--out under /proc": (None, ["--out", "/proc/zsl-report"], "cannot write in /proc"),
    "--out read-only": (None, ["--out", "/sys/kernel/zsl-report"], "cannot write in /sys/kernel"),
    # own cases
    "--out is a file": (None, ["--out", "{exp}/search.json"], "search.json is a file, not a folder"),
    "result.json row that is a number": (lambda exp: _trial_file(exp, "result.json").write_text("7\n"), [],
                                         "result.json holds a number at line 1, not an object"),
    "params.json not UTF-8": (lambda exp: _trial_file(exp, "params.json").write_bytes(b'{"gamma": "\xff"}'), [],
                              "params.json cannot be read"),
    "--top 0": (None, ["--top", "0"], "--top 0: the leaderboard needs at least one row"),
}


@pytest.mark.parametrize("case", sorted(REPORT_CASES))
def test_bad_report_input(case, experiment, tmp_path, capsys):
    damage, flags, expected = REPORT_CASES[case]
    exp = tmp_path / "tiny"
    shutil.copytree(experiment, exp)
    if damage:
        damage(exp)
    before = _snapshot(exp)
    code = report_main([str(exp), *[f.format(exp=exp) for f in flags]])
    assert expected in _one_sentence(code, capsys)
    assert _snapshot(exp) == before and not (exp / "report").exists()


def test_the_intact_experiment_reports(experiment, tmp_path, capsys):
    exp = tmp_path / "tiny"
    shutil.copytree(experiment, exp)
    assert report_main([str(exp)]) == 0, capsys.readouterr().err
    assert (exp / "report" / "report.md").is_file()


# ---------------------------------------------------------------- zsl.train --resume and --out

FAST = ["--model", "eszsl", "--dataset", "sim-AWA2", "--preset", "small", "--set", "steps_per_epoch=2",
        "--epochs", "2", "--device", "cpu"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "run"
    assert train_main([*FAST, "--out", str(out)]) == 0
    return out


def _edit_checkpoint(edit):
    def apply(path):
        state = torch.load(path, weights_only=True)
        torch.save(edit(state), path)
    return apply


def _wrong_shape(state):
    model = dict(state["model"])
    model["v"] = torch.zeros(3, 3)
    return {**state, "model": model}


CHECKPOINT_CASES = {  # name: (how to change checkpoint.pt, expected part of the sentence)
    "a list": (_edit_checkpoint(lambda s: [1, 2]), "it holds a list, not a mapping"),
    "no model": (_edit_checkpoint(lambda s: {k: v for k, v in s.items() if k != "model"}), "it has no 'model'"),
    "history an int": (_edit_checkpoint(lambda s: {**s, "history": 5}), "its 'history' is of type int, not list"),
    "tensor of the wrong shape": (_edit_checkpoint(_wrong_shape),
                                  "does not fit this run (the checkpoint's 'v' has shape (3, 3)"),
    # own cases
    "newer format": (_edit_checkpoint(lambda s: {**s, "format": 99}), "it has format 99, newer than"),
    "model not a mapping": (_edit_checkpoint(lambda s: {**s, "model": [1]}), "its 'model' is of type list, not dict"),
    "history rows not evaluations": (_edit_checkpoint(lambda s: {**s, "history": [1, 2]}),
                                     "its 'history' holds entries that are not evaluations"),
    "model state missing a tensor": (_edit_checkpoint(lambda s: {**s, "model": {k: v for k, v in s["model"].items()
                                                                                if k != "v_prev"}}),
                                     "the checkpoint's state has no 'v_prev'"),
    "not a checkpoint at all": (lambda path: path.write_bytes(b"PK\x03\x04 not a torch file"), "cannot be read"),
}


@pytest.mark.parametrize("case", sorted(CHECKPOINT_CASES))
def test_bad_checkpoint_is_refused_by_resume(case, finished_run, tmp_path, capsys):
    change, expected = CHECKPOINT_CASES[case]
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    change(out / "checkpoint.pt")
    before = _snapshot(out)
    sentence = _one_sentence(train_main([*FAST, "--out", str(out), "--resume"]), capsys)
    assert str(out / "checkpoint.pt") in sentence and expected in sentence, sentence
    assert _snapshot(out) == before
