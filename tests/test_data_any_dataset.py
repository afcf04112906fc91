"""Any xlsa17-layout dataset: AWA1, APY, FLO by name with their known dimensions checked, any other folder by
structure alone; a dataset without train_loc/val_loc refused in one sentence under the validation protocol.
Folders are built from the real shipped split files plus a res101.mat written here."""

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from data_fixtures import SHIPPED, labels_for_real_splits, write_res101, write_tiny
from zsl.data import load_dataset
from zsl.errors import UserError

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("xlsa17-any")
    awa = labels_for_real_splits("AWA2", n_unseen=10, n_val=13, n_classes=50)
    for name in ("AWA1", "MyData"):  # AWA2's real splits under another name (AWA1 has the same 85 x 50 shape)
        (root / name).mkdir()
        shutil.copy(SHIPPED / "AWA2" / "att_splits.mat", root / name)
        write_res101(root / name, awa)
    flo = root / "FLO"  # FLO's attributes are 1024-d sentence features: CUB's real sentence file stands in
    flo.mkdir()
    sent = scipy.io.loadmat(str(SHIPPED / "CUB" / "sent_splits.mat"))
    scipy.io.savemat(str(flo / "att_splits.mat"), {**{k: v for k, v in sent.items() if not k.startswith("__")},
                                                   "original_att": sent["att"]})
    write_res101(flo, labels_for_real_splits("CUB", n_unseen=50, n_val=50, n_classes=200))
    apy = root / "APY"  # a copy without train_loc / val_loc
    written = write_tiny(apy, a_dim=64)
    splits = {k: v for k, v in written["att_splits.mat"].items() if k not in ("train_loc", "val_loc")}
    scipy.io.savemat(str(apy / "att_splits.mat"), splits)
    return root


def _check(root: Path, dataset: str, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "zsl.data", "check", "--data-root", str(root), "--dataset", dataset,
                           *extra], capture_output=True, text=True, cwd=REPO)


@pytest.mark.parametrize("dataset, expect", [
    ("AWA1", "85-d (the known size for AWA1)"),
    ("FLO", "1024-d (the known size for FLO)"),
    ("MyData", "85-d (size not checked: a dataset checked by structure alone)"),
    ("APY", "validation  not available: att_splits.mat has no train_loc/val_loc"),
])
def test_check_accepts_any_xlsa17_layout_folder(root, dataset, expect):
    done = _check(root, dataset)
    assert done.returncode == 0, done.stderr
    assert expect in done.stdout and "(real features)" in done.stdout


def test_a_known_dataset_with_the_wrong_embedding_size_is_refused(root, tmp_path):
    (tmp_path / "APY").mkdir()
    for name in ("att_splits.mat", "res101.mat"):
        shutil.copy(root / "AWA1" / name, tmp_path / "APY" / name)  # 85-d attributes under the name APY (64-d)
    done = _check(tmp_path, "APY")
    assert done.returncode == 2 and "has 85 dimensions but 64 are expected for APY" in done.stderr


def test_without_train_and_val_locs_validation_is_one_sentence_and_final_works(root):
    with pytest.raises(UserError, match="no train_loc or val_loc, which the validation protocol needs"):
        load_dataset("APY", root, "validation")
    data = load_dataset("APY", root, "final")
    assert data.class_emb.shape[1] == 64 and len(data.eval_unseen_y) > 0


def test_an_unknown_dataset_trains_with_the_presets_default(root, tmp_path, capsys):
    from zsl.train import main as train_main

    assert train_main(["--model", "eszsl", "--dataset", "MyData", "--data-root", str(root), "--out",
                       str(tmp_path / "run")]) == 0
    assert np.isfinite(__import__("json").loads((tmp_path / "run" / "results.json").read_text())["final"]["H"])
    from zsl.models import preset_note

    assert preset_note("d2sc", "paper", "MyData").startswith("preset 'paper' of d2sc has no entry for MyData")
    assert preset_note("d2sc", "paper", "sim-CUB") is None and preset_note("eszsl", "small", "MyData") is None
