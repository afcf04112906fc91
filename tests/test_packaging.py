"""A plain (non-editable) install carries its data: presets, shipped semantics and search spaces."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_a_plain_install_runs_zsl_train_and_the_search(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    source = tmp_path / "src"  # a clean copy: pip builds in the source tree, which must stay untouched
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".git", "build", "*.egg-info", "__pycache__", "runs"))
    build = subprocess.run([python, "-m", "pip", "install", "--quiet", "--no-deps", str(source)],
                           capture_output=True, text=True, cwd=tmp_path)
    assert build.returncode == 0, build.stderr[-2000:]
    work = tmp_path / "elsewhere"  # no checkout on the path: everything comes from the installed package
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = subprocess.run([python, "-c", "import zsl, hpo, search_spaces; print(zsl.__file__, search_spaces.__file__)"],
                           capture_output=True, text=True, cwd=work, env=env)
    assert str(venv) in where.stdout and str(source) not in where.stdout and str(REPO) not in where.stdout, where.stdout
    train = subprocess.run([python, "-m", "zsl.train", "--model", "eszsl", "--dataset", "sim-AWA2", "--preset", "small",
                            "--epochs", "2", "--out", str(work / "run")], capture_output=True, text=True, cwd=work,
                           env=env, timeout=600)
    assert train.returncode == 0, train.stdout[-2000:] + train.stderr[-2000:]
    search = subprocess.run([python, "-m", "hpo.search", "--space", "eszsl", "--datasets", "sim-AWA2", "--num-samples",
                             "1", "--scheduler", "fifo", "--storage-path", str(work / "results"), "--verbose", "0"],
                            capture_output=True, text=True, cwd=work, env=env, timeout=600)
    assert search.returncode == 0, search.stdout[-2000:] + search.stderr[-2000:]
    assert (work / "results" / "eszsl-search" / "search.json").is_file()
