"""Bad search and run flags: one sentence naming the flag and the fix, exit 2, nothing written, no wait forever.

Each case runs the real CLI entry point in-process (they fail before Ray starts) with a fresh storage folder.
"""

import socket

import pytest

from hpo.search import main as search_main
from zsl.train import main as train_main


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed again when the block ends: nothing listens there


def _bomb(levels: int = 7) -> str:
    """A YAML flow sequence whose aliases expand to 10**levels values (a 'billion laughs' document)."""
    text = "[&a0 [x, x, x, x, x, x, x, x, x, x]"
    for i in range(1, levels):
        text += f", &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]"
    return text + "]"


SPACE_FILES = {  # written into the test's folder for the --space cases below
    "latin1.yaml": "model: eszsl\nparams: {lam: {type: float, low: 0.1, high: 1}}\n# caf\u00e9\n".encode("latin-1"),
    "bomb.yaml": ("model: eszsl\ndescription: " + _bomb(8) + "\nparams: {lam: {type: float, low: 0.1, high: 1}}\n")
    .encode(),
    "cycle.yaml": b"model: eszsl\ndescription: &d [*d]\nparams: {lam: {type: float, low: 0.1, high: 1}}\n",
    "lr_beyond.yaml": b"model: eszsl\npreset: small\nparams: {lr: {type: float, low: 0.1, high: 2.5}}\n",
    "null_fixed.yaml": b"model: eszsl\nparams: {lam: {type: float, low: 0.1, high: 1}, solver: {type: fixed, value: null}}\n",
    "bad_choice.yaml": b"model: eszsl\nparams: {solver: {type: categorical, choices: [gradient, newton]}}\n",
    "fixed_beyond.yaml": b"model: eszsl\nparams: {lam: {type: float, low: 0.1, high: 1}, lr: {type: fixed, value: 5}}\n",
    "conditional_beyond.yaml": (b"model: eszsl\nparams:\n  solver: {type: categorical, choices: [closed_form, gradient]}\n"
                                b"  gamma: {type: float, low: -1, high: 1, when: {solver: gradient}}\n"),
    "int_profile_key.yaml": b"model: eszsl\nprofiles: {cpu: {fixed: {1: 2, zz: 1}}}\nparams: {lam: {type: float, low: 0.1, high: 1}}\n",
}

SEARCH_CASES = {  # name: (flags, expected part of the one sentence)
    "space not UTF-8": (["--space", "{tmp}/latin1.yaml"], "latin1.yaml: byte 0xe9 on line 3 is not UTF-8 text"),
    "space alias bomb": (["--space", "{tmp}/bomb.yaml"], "bomb.yaml: its YAML aliases expand to more than"),
    "space range beyond the model's": (["--space", "{tmp}/lr_beyond.yaml"],
                                       "param 'lr': the value 2.5 is refused by model 'eszsl'"),
    "space fixed value null": (["--space", "{tmp}/null_fixed.yaml"], "param 'solver': null is not a value"),
    # own cases
    "space alias cycle": (["--space", "{tmp}/cycle.yaml"], "a YAML alias refers to a collection that contains it"),
    "space choice the model lacks": (["--space", "{tmp}/bad_choice.yaml"], "the value 'newton' is refused"),
    "space fixed value beyond the model's": (["--space", "{tmp}/fixed_beyond.yaml"],
                                             "param 'lr': the value 5 is refused"),
    "space conditional range beyond the model's": (["--space", "{tmp}/conditional_beyond.yaml"],
                                                   "param 'gamma': the value -1.0 is refused"),
    "space profile with a number as a key": (["--space", "{tmp}/int_profile_key.yaml"],
                                             "profiles.cpu.fixed: key 1 is not a name"),
    "storage path under /proc": (["--storage-path", "/proc/zsl-results"], "cannot write in /proc"),
    "storage path read-only": (["--storage-path", "/sys/kernel/zsl-results"], "cannot write in /sys/kernel"),
    "negative seed": (["--seed", "-1"], "--seed must be an integer from 0 to 4294967295"),
    "seed beyond 2**32": (["--seed", str(2**70)], "--seed must be an integer from 0 to"),
    "negative data seed": (["--data-seed", "-1"], "--data-seed must be an integer from 0 to"),
    "infinite CPUs": (["--cpus-per-trial", "inf"], "--cpus-per-trial must be a finite number > 0"),
    "more CPUs than here": (["--cpus-per-trial", "4096"], "this machine has"),
    "GPU share without a GPU": (["--gpus-per-trial", "0.5"], "GPU(s) visible to PyTorch and no --address"),
    "NaN GPUs": (["--gpus-per-trial", "nan"], "--gpus-per-trial must be a finite number >= 0"),
    "retry forever": (["--max-failures", "-1"], "--max-failures must be >= 0"),
    "infinite time budget": (["--time-budget", "inf"], "--time-budget must be a finite number"),
    "NaN reduction factor": (["--reduction-factor", "nan"], "--reduction-factor must be a finite number"),
    "zero max epochs": (["--max-epochs", "0"], "--max-epochs must be >= 1"),
    "optuna storage not a URL": (["--optuna-storage", "notaurl"], "is not a database URL"),
    "optuna sqlite in a missing folder": (["--optuna-storage", "sqlite:///{tmp}/missing/study.db"],
                                          "missing does not exist"),
    "storage path is a file": (["--storage-path", "{tmp}/afile"], "is a file, not a folder"),
    "storage path below a file": (["--storage-path", "{tmp}/afile/results"], "is a file, not a folder"),
    "unknown storage scheme": (["--storage-path", "bogus://x/y"], "not a storage URI this machine can use"),
    "nothing at the address": (["--address", "127.0.0.1:{port}"], "nothing answers there"),
    "address not host:port": (["--address", "nowhere"], "is not HOST:PORT"),
    "name with a slash": (["--name", "a/b"], "is not a plain experiment name"),
    "bad class embedding": (["--class-embedding", "w2v"], "the embedding must be one of"),
    "class embedding for a dataset not searched": (["--class-embedding", "att,FLO:sent"],
                                                   "FLO is not one of this search's datasets"),
    "resume and force": (["--resume", "--force"], "--resume and --force exclude each other"),
    "bad split percent": (["--split-percent", "50"], "invalid choice"),
}


@pytest.mark.parametrize("case", sorted(SEARCH_CASES))
def test_bad_search_flags(case, tmp_path, capsys):
    flags, expected = SEARCH_CASES[case]
    (tmp_path / "afile").write_text("not a folder")
    for name, data in SPACE_FILES.items():
        (tmp_path / name).write_bytes(data)
    storage = tmp_path / "results"
    args = ["--space", "eszsl", "--storage-path", str(storage), "--verbose", "0"]
    args += [f.format(tmp=tmp_path, port=_closed_port()) for f in flags]
    try:
        code = search_main(args)
    except SystemExit as exit_:  # argparse's own checks (ours print one sentence and exit 2 too)
        code = exit_.code
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert expected in lines[0], lines[0]
    assert not storage.exists() and not (tmp_path / "missing").exists()  # nothing written


CONFIG_FILES = {  # written into the test's folder for the cases below
    "bad.yaml": b"data: {views: 2}\n",
    "latin1.yaml": "model: eszsl\n# caf\u00e9\n".encode("latin-1"),
    "intkeys.yaml": b"1: 2\nfoo: 3\n",
    "intparam.yaml": b"config: {lam: 1, 2: 3, zz: 1}\n",
    "intdataset.yaml": b"per_dataset: {1: {lam: 2}}\n",
    "bomb.yaml": f"config: {{lam: 1}}\ndata: {{x: {_bomb()}}}\n".encode(),
}

TRAIN_CASES = {
    "--config not UTF-8": (["--config", "{tmp}/latin1.yaml"], "byte 0xe9 on line 2 is not UTF-8 text"),
    "--config integer keys": (["--config", "{tmp}/intkeys.yaml"], "key 1 at the top level is not a name"),
    "--out under /proc": (["--out", "/proc/zsl-run"], "--out /proc/zsl-run: cannot write in /proc"),
    "--out read-only": (["--out", "/sys/kernel/zsl-run"], "--out /sys/kernel/zsl-run: cannot write in /sys/kernel"),
    # own cases
    "--config integer hyperparameter name": (["--config", "{tmp}/intparam.yaml"], "key 2 at 'config' is not a name"),
    "--config integer dataset name": (["--config", "{tmp}/intdataset.yaml"], "key 1 at 'per_dataset' is not a name"),
    "--config alias bomb": (["--config", "{tmp}/bomb.yaml"], "(an alias bomb?)"),
    "--config is a folder": (["--config", "{tmp}"], "cannot read it (Is a directory)"),
    "--set alias bomb": (["--set", f"lam={_bomb()}"], "--set lam: its YAML aliases expand to more than"),
    "--set alias cycle": (["--set", "lam=&a [*a]"], "--set lam: a YAML alias refers to a collection that contains it"),
    "epochs beyond any run": (["--set", "epochs=1e30"], "more than any run can finish"),
    "epochs flag beyond any run": (["--epochs", "10000000"], "more than any run can finish"),
    "negative seed": (["--seed", "-1"], "--seed must be an integer from 0 to"),
    "data seed beyond 2**32": (["--data-seed", str(2**40)], "--data-seed must be an integer from 0 to"),
    "unknown data option in --config": (["--config", "{tmp}/bad.yaml"], "unknown data option 'views'"),
}


@pytest.mark.parametrize("case", sorted(TRAIN_CASES))
def test_bad_train_flags(case, tmp_path, capsys):
    flags, expected = TRAIN_CASES[case]
    for name, data in CONFIG_FILES.items():
        (tmp_path / name).write_bytes(data)
    out = tmp_path / "run"
    code = train_main(["--model", "eszsl", "--dataset", "sim-AWA2", "--out", str(out),
                       *[f.format(tmp=tmp_path) for f in flags]])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert expected in err and not out.exists()
