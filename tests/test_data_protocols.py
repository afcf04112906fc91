"""Split protocols: disjointness, no test image under validation, determinism, scaler fitted on training rows."""

import numpy as np
import pytest

from data_fixtures import labels_for_real_splits, real_locs, sim_cache  # noqa: F401 (fixture)
from zsl.data import load_dataset
from zsl.data.loading import read_named
from zsl.data.protocols import make_split, stratified_holdout
from zsl.data.scaling import apply_minmax, fit_minmax

REAL_COUNTS = {"AWA2": (10, 13, 50), "CUB": (50, 50, 200), "SUN": (72, 65, 717)}   # unseen, val, K


def _assert_validation_clean(labels, locs, seed, percent_positions=None):
    split = make_split(labels, locs, "validation", seed, percent_positions)
    test = np.union1d(locs["test_seen_loc"], locs["test_unseen_loc"])
    used = np.concatenate([split.train, split.eval_seen, split.eval_unseen])
    assert np.isin(used, locs["trainval_loc"]).all()
    assert not np.isin(used, test).any()                                  # no test image, ever
    assert np.unique(used).size == used.size                              # the three sets are disjoint
    assert np.intersect1d(split.seen_classes, split.unseen_classes).size == 0
    assert np.array_equal(split.unseen_classes, np.unique(labels[locs["val_loc"]]))
    assert set(np.unique(labels[split.eval_seen])) <= set(split.seen_classes)
    assert np.isin(split.scaler_rows, split.train).all()
    return split


@pytest.mark.parametrize("dataset", sorted(REAL_COUNTS))
def test_validation_protocol_never_touches_test_images_real_splits(dataset):
    labels = labels_for_real_splits(dataset, *REAL_COUNTS[dataset])
    locs = real_locs(dataset)
    split = _assert_validation_clean(labels, locs, seed=3)
    n_seen_tv = np.isin(labels[locs["trainval_loc"]], split.seen_classes).sum()
    assert split.eval_seen.size == pytest.approx(0.2 * n_seen_tv, rel=0.05)


@pytest.mark.parametrize("name", ["sim-AWA2", "sim-CUB", "sim-SUN"])
def test_validation_protocol_never_touches_test_images_sims(name, sim_cache):
    raw = read_named(name, cache_dir=sim_cache)
    _assert_validation_clean(raw.labels, raw.locs, seed=0)
    raw = read_named(name, cache_dir=sim_cache, split_percent=30)
    split = _assert_validation_clean(raw.labels, raw.locs, seed=0, percent_positions=raw.percent_positions)
    assert np.isin(split.train, raw.locs["trainval_loc"][raw.percent_positions]).all()


def test_final_and_reference_use_xlsa17_sets():
    labels = labels_for_real_splits("AWA2", *REAL_COUNTS["AWA2"])
    locs = real_locs("AWA2")
    for protocol in ("final", "reference"):
        split = make_split(labels, locs, protocol)
        assert np.array_equal(split.train, locs["trainval_loc"])
        assert np.array_equal(split.eval_seen, locs["test_seen_loc"])
        assert np.array_equal(split.eval_unseen, locs["test_unseen_loc"])
        assert split.seen_classes.size == 40 and split.unseen_classes.size == 10


def test_validation_split_deterministic_given_seed():
    labels = labels_for_real_splits("CUB", *REAL_COUNTS["CUB"])
    locs = real_locs("CUB")
    a, b, c = (make_split(labels, locs, "validation", seed) for seed in (5, 5, 6))
    assert np.array_equal(a.eval_seen, b.eval_seen) and np.array_equal(a.train, b.train)
    assert not np.array_equal(a.eval_seen, c.eval_seen)


def test_stratified_holdout_hand_counts():
    y = np.array([0] * 10 + [1] * 5 + [2] * 1 + [3] * 2)
    held = stratified_holdout(y, 0.2, seed=0)
    assert [int(held[y == k].sum()) for k in range(4)] == [2, 1, 0, 1]   # round(0.2 n), >= 1 kept and held when n >= 2


def test_split_percent_subset_and_scaler_fitted_on_used_rows(sim_cache):
    raw = read_named("sim-AWA2", cache_dir=sim_cache, split_percent=10)
    expected_rows = raw.locs["trainval_loc"][np.sort(raw.percent_positions)]
    data = load_dataset("sim-AWA2", protocol="final", split_percent=10, cache_dir=sim_cache)
    assert np.array_equal(data.train_y, raw.labels[expected_rows])
    low, span = fit_minmax(raw.x[expected_rows])
    np.testing.assert_allclose(data.train_x, apply_minmax(raw.x[expected_rows], low, span), atol=1e-6)
    np.testing.assert_allclose(data.eval_unseen_x, apply_minmax(raw.x[raw.locs["test_unseen_loc"]], low, span), atol=1e-6)
    # reference behaviour (defect 3): scaler fitted on all of trainval, so the subset does not span [0, 1]
    ref = load_dataset("sim-AWA2", protocol="final", split_percent=10, cache_dir=sim_cache, scaler_fit="full_trainval")
    low, span = fit_minmax(raw.x[raw.locs["trainval_loc"]])
    np.testing.assert_allclose(ref.train_x, apply_minmax(raw.x[expected_rows], low, span), atol=1e-6)
    assert (ref.train_x.max(0) < 1.0 - 1e-6).any()


def test_validation_scaler_ignores_eval_rows(sim_cache):
    data = load_dataset("sim-CUB", protocol="validation", cache_dir=sim_cache)
    np.testing.assert_allclose(data.train_x.min(0), 0.0, atol=1e-6)
    np.testing.assert_allclose(data.train_x.max(0), 1.0, atol=1e-6)
    np.testing.assert_allclose(data.train_c.max(0), 1.0, atol=1e-6)
    held_out = np.concatenate([data.eval_seen_x, data.eval_unseen_x])
    assert held_out.max() > 1.0 or held_out.min() < 0.0                # not fitted on them: they leave [0, 1]


def test_minmax_hand_values():
    rows = np.array([[0.0, 2.0, 5.0], [4.0, 2.0, 7.0]], dtype=np.float32)
    low, span = fit_minmax(rows)
    assert low.tolist() == [0.0, 2.0, 5.0] and span.tolist() == [4.0, 1.0, 2.0]
    assert apply_minmax(np.array([[2.0, 3.0, 9.0]], dtype=np.float32), low, span).tolist() == [[0.5, 1.0, 2.0]]
