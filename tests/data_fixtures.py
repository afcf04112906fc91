"""Helpers for the data tests: xlsa17-layout folders written in a tmp dir.

- ``labels_for_real_splits``: per-image class labels consistent with a shipped (real) att_splits.mat,
  since the real res101.mat labels are not available.
- ``write_tiny``: a small self-made dataset folder, easy to corrupt one field at a time.
- ``sim_cache``: a session fixture (import it into the test module to use it).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.io

SHIPPED = Path(__file__).resolve().parent.parent / "zsl" / "data" / "xlsa17"


def real_locs(dataset: str) -> dict[str, np.ndarray]:
    """The 0-based *_loc sets of the shipped att_splits.mat of ``dataset``."""
    mat = scipy.io.loadmat(str(SHIPPED / dataset / "att_splits.mat"))
    return {k: mat[k].reshape(-1).astype(np.int64) - 1 for k in mat if k.endswith("_loc")}


def labels_for_real_splits(dataset: str, n_unseen: int, n_val: int, n_classes: int) -> np.ndarray:
    """[N] 0-based labels: test_unseen -> unseen classes, val_loc -> val classes, train_loc -> train classes."""
    locs = real_locs(dataset)
    n = 1 + max(int(v.max()) for v in locs.values())
    labels = np.full(n, -1, dtype=np.int64)
    unseen = np.arange(n_unseen)
    val = np.arange(n_unseen, n_unseen + n_val)
    train = np.arange(n_unseen + n_val, n_classes)
    for name, classes in (("test_unseen_loc", unseen), ("val_loc", val), ("train_loc", train)):
        idx = locs[name]
        labels[idx] = classes[np.arange(idx.size) % classes.size]
    assert (labels >= 0).all()
    return labels


def write_res101(folder: Path, labels: np.ndarray, dim: int = 4) -> np.ndarray:
    """res101.mat in xlsa17 layout (features dim x N, labels N x 1 1-based); returns features [N, dim].

    Column 0 of the features is the 1-based image number, so tests can check row bookkeeping.
    """
    n = labels.size
    feats = np.random.default_rng(0).random((n, dim)).astype(np.float32)
    feats[:, 0] = np.arange(1, n + 1)
    scipy.io.savemat(str(folder / "res101.mat"), {"features": feats.T, "labels": (labels + 1).reshape(-1, 1).astype(np.float64)})
    return feats


def write_tiny(folder: Path, a_dim: int = 85, k: int = 6, per_class: int = 10) -> dict:
    """A valid tiny dataset in ``folder`` (N = k * per_class images, 2 unseen, 1 val, 3 train classes).

    Returns the dicts written, keyed by file name, so a test can corrupt one field and rewrite.
    """
    folder.mkdir(parents=True, exist_ok=True)
    labels = np.repeat(np.arange(k), per_class)
    n = labels.size
    rng = np.random.default_rng(1)
    rows = np.arange(n)
    unseen = labels < 2
    seen_rows = rows[~unseen]
    test_seen = seen_rows[(seen_rows % per_class) >= per_class - 2]
    trainval = np.setdiff1d(seen_rows, test_seen)
    att = rng.random((a_dim, k))
    sem = {
        "att": att / np.linalg.norm(att, axis=0, keepdims=True), "original_att": att * 100,
        "allclasses_names": np.array([[f"class{i}"] for i in range(k)], dtype=object),
        "trainval_loc": trainval + 1, "test_seen_loc": test_seen + 1, "test_unseen_loc": rows[unseen] + 1,
        "train_loc": seen_rows[labels[seen_rows] >= 3] + 1, "val_loc": seen_rows[labels[seen_rows] == 2] + 1,
    }
    sem = {key: (v.reshape(-1, 1).astype(np.uint16) if key.endswith("_loc") else v) for key, v in sem.items()}
    files = {
        "res101.mat": {"features": rng.random((8, n)).astype(np.float32), "labels": (labels + 1).reshape(-1, 1).astype(np.float64)},
        "att_splits.mat": sem,
        "con_paco.mat": {"features": rng.random((n, 5)).astype(np.float32)},
    }
    for name, fields in files.items():
        scipy.io.savemat(str(folder / name), fields)
    return files


@pytest.fixture(scope="session")
def sim_cache(tmp_path_factory):
    """One simulated-data cache per test session (never the user's ~/.cache)."""
    return tmp_path_factory.mktemp("zsl-hpo-cache")


SENTINEL = 1.0e6  # the raw feature value of every test image: it would stand out after scaling


def write_sentinel_tiny(folder: Path) -> None:
    """A tiny dataset (write_tiny, 12 images per class) whose test images (test_seen, test_unseen) carry
    SENTINEL in every feature of both views: a model or evaluation that reads one shows it."""
    files = write_tiny(folder, per_class=12)
    sem = files["att_splits.mat"]
    test_rows = np.concatenate([sem["test_seen_loc"].ravel(), sem["test_unseen_loc"].ravel()]).astype(int) - 1
    res = files["res101.mat"]
    feats = res["features"].copy()
    feats[:, test_rows] = SENTINEL
    scipy.io.savemat(str(folder / "res101.mat"), {**res, "features": feats})
    view = files["con_paco.mat"]["features"].copy()
    view[test_rows] = SENTINEL
    scipy.io.savemat(str(folder / "con_paco.mat"), {"features": view})
