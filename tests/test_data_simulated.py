"""Simulated benchmarks: real counts, xlsa17 file layout, determinism, atomic cache, labelling."""

import json
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import scipy.io

from data_fixtures import sim_cache  # noqa: F401 (fixture)
from zsl.data import load_dataset
from zsl.data.loading import read_named
from zsl.data.simulated import cache_root, ensure_simulated

COUNTS = {  # final seen/unseen, validation seen/unseen, K, A
    "sim-AWA2": (40, 10, 27, 13, 50, 85),
    "sim-CUB": (150, 50, 100, 50, 200, 312),
    "sim-SUN": (645, 72, 580, 65, 717, 102),
}


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_sim_has_real_class_counts_and_semantics(name, sim_cache):
    seen, unseen, v_seen, v_unseen, k, a = COUNTS[name]
    final = load_dataset(name, protocol="final", cache_dir=sim_cache)
    val = load_dataset(name, protocol="validation", cache_dir=sim_cache)
    assert (final.seen_classes.size, final.unseen_classes.size) == (seen, unseen)
    assert (val.seen_classes.size, val.unseen_classes.size) == (v_seen, v_unseen)
    assert final.n_classes == k and final.emb_dim == a
    assert final.feature_dim == 64 and final.second_view_dim == 64
    assert final.simulated and "simulated" in final.label and "SIMULATED" in final.info["simulated_note"]
    per_class = np.bincount(final.train_y, minlength=k)[final.seen_classes]
    assert 10 <= per_class.min() and per_class.max() < 100                # tens of images per class


def test_sim_files_are_in_exact_xlsa17_layout(sim_cache):
    folder = ensure_simulated("CUB", "small", 0, sim_cache) / "CUB"
    res = scipy.io.loadmat(str(folder / "res101.mat"))
    n = res["labels"].shape[0]
    assert res["features"].shape == (64, n) and res["labels"].shape == (n, 1)
    assert res["labels"].min() == 1 and res["labels"].max() == 200       # 1-based
    assert (res["features"] >= 0).all()                                   # ReLU-like
    assert scipy.io.loadmat(str(folder / "con_paco.mat"))["features"].shape == (n, 64)
    sem = scipy.io.loadmat(str(folder / "att_splits.mat"))
    assert sem["att"].shape == (312, 200) and sem["trainval_loc"].min() >= 1
    assert scipy.io.loadmat(str(folder / "sent_splits.mat"))["att"].shape == (1024, 200)
    assert json.loads((folder / "SIMULATED.json").read_text())["simulated"] is True
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]   # no temporary folders left


def test_views_correlated_but_distinct(sim_cache):
    raw = read_named("sim-AWA2", cache_dir=sim_cache)
    gx = raw.x - raw.x.mean(0)
    gc = raw.c - raw.c.mean(0)
    # the two views share each image's latent: image similarity in one view predicts it in the other
    sim_x, sim_c = np.corrcoef(gx[:200]), np.corrcoef(gc[:200])
    r = np.corrcoef(sim_x.ravel(), sim_c.ravel())[0, 1]
    assert 0.3 < r < 0.99


def test_sim_deterministic_given_seed(tmp_path):
    a = read_named("sim-AWA2", seed=1, cache_dir=tmp_path / "a")
    b = read_named("sim-AWA2", seed=1, cache_dir=tmp_path / "b")
    c = read_named("sim-AWA2", seed=2, cache_dir=tmp_path / "a")
    assert np.array_equal(a.x, b.x) and np.array_equal(a.labels, b.labels)
    assert not np.array_equal(a.labels, c.labels)


def test_small_sims_generate_fast(tmp_path):
    start = time.perf_counter()
    for name in ("sim-AWA2", "sim-CUB", "sim-SUN"):
        load_dataset(name, cache_dir=tmp_path)
    assert time.perf_counter() - start < 10.0                             # ~0.5 s measured; generous for loaded CI
    start = time.perf_counter()
    for name in ("sim-AWA2", "sim-CUB", "sim-SUN"):
        load_dataset(name, cache_dir=tmp_path)                            # cached: read back only
    assert time.perf_counter() - start < 5.0


def test_concurrent_writers_publish_one_complete_copy(tmp_path):
    with ThreadPoolExecutor(4) as pool:
        roots = list(pool.map(lambda _: ensure_simulated("AWA2", "small", 3, tmp_path), range(4)))
    assert len(set(roots)) == 1
    assert sorted(p.name for p in roots[0].iterdir()) == ["AWA2"]
    assert load_dataset("sim-AWA2", seed=3, cache_dir=tmp_path).simulated


def test_cache_root_env_override(monkeypatch, tmp_path):
    monkeypatch.setenv("ZSL_HPO_CACHE", str(tmp_path / "env"))
    assert cache_root() == tmp_path / "env"
    assert cache_root(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.delenv("ZSL_HPO_CACHE")
    assert cache_root().parts[-2:] == (".cache", "zsl-hpo")


def test_check_cli_labels_simulated(sim_cache, capsys):
    from zsl.data.__main__ import main

    assert main(["check", "--dataset", "sim-SUN", "--cache-dir", str(sim_cache)]) == 0
    out = capsys.readouterr().out
    assert "SIMULATED" in out and "717" in out and "validation" in out
