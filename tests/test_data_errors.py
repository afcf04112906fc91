"""Every bad input to ``python -m zsl.data check`` ends in one sentence, exit code 2, no traceback."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from data_fixtures import write_tiny

REPO = Path(__file__).resolve().parent.parent


def _rewrite(folder: Path, files: dict, name: str, **changes) -> None:
    scipy.io.savemat(str(folder / name), {**files[name], **changes})


def _loc(files, name):
    return files["att_splits.mat"][name].astype(np.int64)


# case -> (how to break a valid tiny AWA2 folder, extra CLI args, text the message must contain)
def _missing_res101(d, f):
    (d / "res101.mat").unlink()


def _missing_field(d, f):
    scipy.io.savemat(str(d / "res101.mat"), {"features": f["res101.mat"]["features"]})


def _length_mismatch(d, f):
    _rewrite(d, f, "res101.mat", features=f["res101.mat"]["features"][:, :-3])


def _wrong_orientation(d, f):
    _rewrite(d, f, "res101.mat", features=f["res101.mat"]["features"].T.copy())


def _zero_based(d, f):
    names = ("trainval_loc", "test_seen_loc", "test_unseen_loc", "train_loc", "val_loc")
    _rewrite(d, f, "att_splits.mat", **{name: _loc(f, name) - 1 for name in names})


def _out_of_range(d, f):
    loc = _loc(f, "test_unseen_loc")
    loc[-1] = 10_000
    _rewrite(d, f, "att_splits.mat", test_unseen_loc=loc)


def _overlapping_classes(d, f):
    labels = f["res101.mat"]["labels"].copy()
    labels[_loc(f, "test_unseen_loc")[0] - 1] = labels[_loc(f, "trainval_loc")[0] - 1]
    _rewrite(d, f, "res101.mat", labels=labels)


def _nan_features(d, f):
    feats = f["res101.mat"]["features"].copy()
    feats[2, 5] = np.nan
    _rewrite(d, f, "res101.mat", features=feats)


def _truncated(d, f):
    data = (d / "res101.mat").read_bytes()
    (d / "res101.mat").write_bytes(data[: len(data) // 2])


def _not_a_mat(d, f):
    (d / "att_splits.mat").write_text("this is not a MATLAB file\n")


def _hdf5(d, f):
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan 1 00:00:00 2024 HDF5 schema 1.00 .".ljust(128)
    (d / "res101.mat").write_bytes(header + b"\0" * 384 + b"\x89HDF\r\n\x1a\n" + b"\0" * 64)


def _labels_out_of_range(d, f):
    labels = f["res101.mat"]["labels"].copy()
    labels[0] = 99
    _rewrite(d, f, "res101.mat", labels=labels)


def _second_view_rows(d, f):
    _rewrite(d, f, "con_paco.mat", features=f["con_paco.mat"]["features"][:-1])


def _empty_split(d, f):
    _rewrite(d, f, "att_splits.mat", test_seen_loc=np.zeros((0, 1), dtype=np.uint16))


def _att_dim_in_file(d, f):
    sem = f["att_splits.mat"]
    _rewrite(d, f, "att_splits.mat", att=sem["att"][:80], original_att=sem["original_att"][:80])


def _ce_ce_transposed(d, f):
    n = f["res101.mat"]["labels"].size
    scipy.io.savemat(str(d / "ce_ce.mat"), {"features": np.ones((7, n), dtype=np.float32)})


def _complex_features(d, f):
    _rewrite(d, f, "res101.mat", features=f["res101.mat"]["features"].astype(np.complex64))


def _int8_features(d, f):
    _rewrite(d, f, "res101.mat", features=(f["res101.mat"]["features"] * 100).astype(np.int8))


def _constant_features(d, f):
    _rewrite(d, f, "res101.mat", features=np.ones_like(f["res101.mat"]["features"]))


def _duplicate_class_names(d, f):
    names = f["att_splits.mat"]["allclasses_names"].copy()
    names[1, 0] = names[0, 0]
    _rewrite(d, f, "att_splits.mat", allclasses_names=names)


def _class_without_images(d, f):
    sem = f["att_splits.mat"]
    names = np.concatenate([sem["allclasses_names"], np.array([["ghost"]], dtype=object)])
    _rewrite(d, f, "att_splits.mat", allclasses_names=names, att=np.hstack([sem["att"], sem["att"][:, :1]]),
             original_att=np.hstack([sem["original_att"], sem["original_att"][:, :1]]))


def _val_overlapping_train(d, f):
    _rewrite(d, f, "att_splits.mat", val_loc=np.concatenate([_loc(f, "val_loc"), _loc(f, "train_loc")[:1]]))


def _original_att_cell_array(d, f):
    att = f["att_splits.mat"]["original_att"]
    cell = np.empty((1, att.shape[1]), dtype=object)
    for j in range(att.shape[1]):
        cell[0, j] = att[:, j]
    _rewrite(d, f, "att_splits.mat", original_att=cell)


def _original_att_text(d, f):
    _rewrite(d, f, "att_splits.mat", original_att=np.array(["not numbers"]))


def _original_att_complex(d, f):
    _rewrite(d, f, "att_splits.mat", original_att=f["att_splits.mat"]["original_att"].astype(np.complex128))


def _intact(d, f):
    pass


CASES = {
    "original_att as a cell array": (_original_att_cell_array, [], "'original_att' is stored as a cell array"),
    "original_att as text": (_original_att_text, [], "'original_att' holds <U11 values, not real numbers"),
    "original_att complex": (_original_att_complex, [], "'original_att' holds complex128 values"),
    "complex features": (_complex_features, [], "holds complex numbers"),
    "int8 features": (_int8_features, [], "holds integers (int8)"),
    "constant features": (_constant_features, [], "the same for every image (constant)"),
    "duplicate class names": (_duplicate_class_names, [], "lists class 'class0' twice"),
    "class without images": (_class_without_images, [], "('ghost') of att_splits.mat has no image"),
    "val_loc overlapping train_loc": (_val_overlapping_train, [], "train_loc and val_loc share class"),
    "data root missing": (_intact, ["--data-root", "{root}/nowhere"], "does not exist"),
    "unknown dataset": (_intact, ["--dataset", "AWA3"], "/AWA3: datasets under"),
    "dataset not a folder name": (_intact, ["--dataset", "../AWA2"], "is not a folder name"),
    "unknown protocol": (_intact, ["--protocol", "test"], "unknown protocol 'test'"),
    "unknown class embedding": (_intact, ["--class-embedding", "w2v"], "unknown class embedding"),
    "bad split percent": (_intact, ["--split-percent", "50"], "split_percent"),
    "split percent file missing": (_intact, ["--split-percent", "10"], "split_10percent.mat"),
    "sent without sent_splits.mat": (_intact, ["--class-embedding", "sent"], "sent_splits.mat"),
    "requested att dim": (_intact, ["--att-dim", "300"], "300 are expected"),
    "missing res101.mat": (_missing_res101, [], "missing file"),
    "missing field": (_missing_field, [], "no field 'labels'"),
    "features/labels length mismatch": (_length_mismatch, [], "image columns"),
    "wrong orientation": (_wrong_orientation, [], "save features.T"),
    "zero-based indices": (_zero_based, [], "1-based"),
    "out-of-range indices": (_out_of_range, [], "10000"),
    "overlapping seen/unseen classes": (_overlapping_classes, [], "seen) and test_unseen_loc"),
    "NaN features": (_nan_features, [], "NaN/inf"),
    "truncated .mat": (_truncated, [], "not a readable MATLAB"),
    "not a .mat file": (_not_a_mat, [], "not a readable MATLAB"),
    "MATLAB v7.3": (_hdf5, [], "v7.3"),
    "labels out of class range": (_labels_out_of_range, [], "class 99"),
    "second view rows": (_second_view_rows, [], "con_paco.mat"),
    "empty split": (_empty_split, [], "'test_seen_loc' is empty"),
    "att dim in file": (_att_dim_in_file, [], "85 are expected"),
    "ce_ce transposed": (_ce_ce_transposed, [], "ce_ce.mat"),
    "unwritable cache": (_intact, ["--dataset", "sim-AWA2", "--cache-dir", "/proc/zsl-cache"], "cannot write the simulated-data cache"),
    "sim unknown scale": (_intact, ["--dataset", "sim-SUN", "--scale", "huge"], "unknown scale 'huge'"),
}


def _check_command(args):
    return [sys.executable, "-m", "zsl.data", "check", *args]


ENV = {**os.environ, "PYTHONPATH": str(REPO)}


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    """case -> (returncode, stdout, stderr): all broken folders checked by concurrent CLI processes."""
    procs = {}
    for case, (breaker, extra, _) in CASES.items():
        root = tmp_path_factory.mktemp("bad")
        breaker(root / "AWA2", write_tiny(root / "AWA2"))
        args = ["--dataset", "AWA2", "--data-root", str(root), "--cache-dir", str(root / "cache")]
        args += [a.format(root=root) for a in extra]
        procs[case] = subprocess.Popen(_check_command(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                       text=True, env=ENV, cwd=REPO)
    return {case: (p.wait(), *p.communicate()) for case, p in procs.items()}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_gives_one_sentence_and_exit_2(case, outcomes):
    code, out, err = outcomes[case]
    assert code == 2, out + err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and lines[0].endswith("."), err
    assert CASES[case][2] in lines[0]


def _run_check(args):
    return subprocess.run(_check_command(args), capture_output=True, text=True, env=ENV, cwd=REPO)


def test_valid_tiny_folder_passes_check(tmp_path):
    write_tiny(tmp_path / "AWA2")
    proc = _run_check(["--dataset", "AWA2", "--data-root", str(tmp_path)])
    assert proc.returncode == 0, proc.stderr
    assert "images           60" in proc.stdout and "SIMULATED" not in proc.stdout
