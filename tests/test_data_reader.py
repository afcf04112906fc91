"""The xlsa17 reader on files in the real layout: the shipped att_splits.mat plus a res101.mat written here."""

import shutil

import numpy as np
import pytest
import scipy.io

from data_fixtures import SHIPPED, labels_for_real_splits, real_locs, write_res101, write_tiny
from zsl.data import load_dataset
from zsl.data.xlsa17 import read_xlsa17


@pytest.fixture(scope="module")
def awa2_root(tmp_path_factory):
    """<root>/AWA2 with the real att_splits.mat and a synthetic res101.mat whose labels fit its splits."""
    root = tmp_path_factory.mktemp("xlsa17")
    folder = root / "AWA2"
    folder.mkdir()
    shutil.copy(SHIPPED / "AWA2" / "att_splits.mat", folder)
    labels = labels_for_real_splits("AWA2", n_unseen=10, n_val=13, n_classes=50)
    write_res101(folder, labels)
    return root, labels


def test_reader_transposes_features_and_shifts_indices(awa2_root):
    root, labels = awa2_root
    raw = read_xlsa17(root / "AWA2", "AWA2")
    assert raw.x.shape == (labels.size, 4)
    assert np.array_equal(raw.x[:, 0], np.arange(1, labels.size + 1))   # row i holds image i+1: transposed, in order
    assert np.array_equal(raw.labels, labels)                           # 1-based labels -> 0-based
    locs = real_locs("AWA2")
    assert all(np.array_equal(raw.locs[k], locs[k]) for k in locs)
    assert [len(raw.locs[k]) for k in ("trainval_loc", "test_seen_loc", "test_unseen_loc")] == [23527, 5882, 7913]
    assert raw.c is None and not raw.simulated
    assert raw.class_names[:2] == ["antelope", "grizzly+bear"]


def test_att_is_normalised_original_att_and_close_to_xlsa17_att(awa2_root):
    root, _ = awa2_root
    mat = scipy.io.loadmat(str(SHIPPED / "AWA2" / "att_splits.mat"))
    att = read_xlsa17(root / "AWA2", "AWA2", "att").class_emb
    raw = read_xlsa17(root / "AWA2", "AWA2", "original_att").class_emb
    assert att.shape == (50, 85)
    np.testing.assert_allclose(np.linalg.norm(att, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(raw, mat["original_att"].T, rtol=1e-6)
    np.testing.assert_allclose(att, mat["att"].T, atol=1e-3)             # spec §1.2: ≈ xlsa17 att


def test_ce_ce_replaces_x_and_con_paco_is_second_view(tmp_path):
    files = write_tiny(tmp_path / "AWA2")
    n = files["res101.mat"]["labels"].size
    ce = np.arange(n * 3, dtype=np.float32).reshape(n, 3)               # N x D, not transposed
    scipy.io.savemat(str(tmp_path / "AWA2" / "ce_ce.mat"), {"features": ce})
    raw = read_xlsa17(tmp_path / "AWA2", "AWA2")
    assert np.array_equal(raw.x, ce)
    assert np.array_equal(raw.c, files["con_paco.mat"]["features"])
    assert raw.sources["x"].endswith("ce_ce.mat")


def test_sent_embedding_read_as_is_for_cub(tmp_path):
    folder = tmp_path / "CUB"
    folder.mkdir()
    shutil.copy(SHIPPED / "CUB" / "sent_splits.mat", folder)
    write_res101(folder, labels_for_real_splits("CUB", n_unseen=50, n_val=50, n_classes=200))
    raw = read_xlsa17(folder, "CUB", "sent")
    sent = scipy.io.loadmat(str(SHIPPED / "CUB" / "sent_splits.mat"))["att"].T
    assert raw.class_emb.shape == (200, 1024)
    np.testing.assert_allclose(raw.class_emb, sent, rtol=1e-6)
    assert raw.class_names[0] == "002.Laysan_Albatross"


def test_load_dataset_real_final_matches_locs_and_scales_on_train(awa2_root):
    root, labels = awa2_root
    data = load_dataset("AWA2", data_root=root, protocol="final")
    locs = real_locs("AWA2")
    assert np.array_equal(data.train_y, labels[locs["trainval_loc"]])
    assert np.array_equal(data.eval_unseen_y, labels[locs["test_unseen_loc"]])
    assert data.seen_classes.size == 40 and data.unseen_classes.size == 10
    np.testing.assert_allclose(data.train_x.min(0), 0.0, atol=1e-6)
    np.testing.assert_allclose(data.train_x.max(0), 1.0, atol=1e-6)
    assert not data.simulated and "real features" in data.label


@pytest.mark.parametrize("dataset,counts", [("AWA2", (10, 13, 50)), ("CUB", (50, 50, 200)), ("SUN", (72, 65, 717))])
def test_every_shipped_att_splits_passes_the_validator(tmp_path, dataset, counts):
    folder = tmp_path / dataset
    folder.mkdir()
    shutil.copy(SHIPPED / dataset / "att_splits.mat", folder)
    write_res101(folder, labels_for_real_splits(dataset, *counts))
    raw = read_xlsa17(folder, dataset)
    assert raw.class_emb.shape == (counts[2], {"AWA2": 85, "CUB": 312, "SUN": 102}[dataset])
    assert raw.n_images == {"AWA2": 37322, "CUB": 11788, "SUN": 14340}[dataset]
