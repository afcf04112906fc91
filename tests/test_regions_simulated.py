"""Simulated region features: the same images as the simulated res101.mat, a separate random stream, the contract."""

import hashlib
import zlib

import numpy as np
import scipy.io

from data_fixtures import sim_cache  # noqa: F401 (fixture)
from zsl.data.matfile import get_field, load_mat
from zsl.data.regions import read_regions
from zsl.data.simulated import LATENT, SHIPPED, VIEW_NOISE, draw_features, draw_split, ensure_simulated
from zsl.data.simulated_regions import DIM, ensure_simulated_regions, parse_sim_tag, render_for, sim_tag
from zsl.data.xlsa17 import LOC_FIELDS


def _old_draw_features(rng, original_att, labels, dim):
    """zsl.data.simulated.draw_features as it was before draw_latents was split out (main at 1479cb0), verbatim."""
    from zsl.data.simulated import GAIN, HIDDEN, IMAGE_NOISE, NONLINEAR, RESIDUAL

    att = original_att / np.maximum(np.linalg.norm(original_att, axis=1, keepdims=True), 1e-12)
    u = (att - att.mean(axis=0)) / att.std()
    a_dim = u.shape[1]
    _, _, vt = np.linalg.svd(u, full_matrices=False)
    top = vt[:LATENT].T
    w_lin = top @ rng.standard_normal((top.shape[1], LATENT)) / np.sqrt(top.shape[1])
    w1 = rng.standard_normal((a_dim, HIDDEN)) * (GAIN / np.sqrt(a_dim))
    w2 = rng.standard_normal((HIDDEN, LATENT)) / np.sqrt(HIDDEN)
    h = u @ w_lin + NONLINEAR * np.tanh(u @ w1) @ w2
    h = (h - h.mean(axis=0)) / h.std(axis=0)
    m = h + RESIDUAL * rng.standard_normal(h.shape)
    z = (m[labels] + IMAGE_NOISE * rng.standard_normal((labels.size, LATENT))).astype(np.float32)
    views = []
    for _ in range(2):
        proj = (rng.standard_normal((LATENT, dim)) / np.sqrt(LATENT)).astype(np.float32)
        bias = (0.5 * rng.standard_normal(dim)).astype(np.float32)
        noise = rng.standard_normal((labels.size, dim), dtype=np.float32)
        views.append(np.maximum(z @ proj + bias + VIEW_NOISE * noise, 0.0))
    return views[0], views[1]


def _world(dataset="CUB", seed=3):
    rng = np.random.default_rng([seed, zlib.crc32(dataset.encode())])
    sem = load_mat(SHIPPED / dataset / "att_splits.mat")
    att = get_field(sem, "original_att", SHIPPED).T.astype(np.float64)
    split = draw_split(rng, dataset, "small", {f: get_field(sem, f, SHIPPED).size for f in LOC_FIELDS})
    return rng, att, split.labels


def test_draw_latents_split_keeps_the_pooled_views_bit_identical():
    rng_old, att, labels = _world()
    rng_new, _, _ = _world()
    old, new = _old_draw_features(rng_old, att, labels, 64), draw_features(rng_new, att, labels, 64)
    assert all(np.array_equal(a, b) for a, b in zip(old, new))
    assert rng_old.random() == rng_new.random()                       # and leaves the stream where it was


def _array_hashes(folder):
    out = {}
    for path in sorted(folder.glob("*.mat")):
        mat = scipy.io.loadmat(str(path))
        for key in sorted(k for k in mat if not k.startswith("__") and mat[k].dtype != object):
            out[(path.name, key)] = hashlib.sha256(np.ascontiguousarray(mat[key]).tobytes()).hexdigest()
    return out


def test_rendering_regions_leaves_the_simulated_files_untouched(tmp_path):
    folder = ensure_simulated("AWA2", "small", 0, tmp_path) / "AWA2"
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.iterdir()}
    arrays = _array_hashes(folder)
    assert ensure_simulated_regions("AWA2", "small", 0, 4, tmp_path) == folder
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.iterdir() if p.name in before} == before
    assert sorted(set(p.name for p in folder.iterdir()) - set(before)) == ["regions_sim-g4.json", "regions_sim-g4.npy"]
    fresh = ensure_simulated("AWA2", "small", 0, tmp_path / "fresh") / "AWA2"           # generated after the regions
    assert _array_hashes(fresh) == arrays
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]                   # no temporary file left


def test_regions_meet_the_contract_and_follow_res101_rows(sim_cache):
    folder = ensure_simulated_regions("AWA2", "small", 0, 4, sim_cache)
    reg = read_regions(folder, "sim-g4")
    labels = scipy.io.loadmat(str(folder / "res101.mat"))["labels"].reshape(-1)
    assert reg.tokens.shape == (labels.size, 17, DIM) and reg.tokens.dtype == np.float16
    assert reg.meta["simulated"] is True and "SIMULATED" in reg.meta["note"]
    assert reg.meta["labels_sha256"] and reg.grid == 4
    mtime = reg.path.stat().st_mtime_ns
    ensure_simulated_regions("AWA2", "small", 0, 4, sim_cache)                         # cached: not rewritten
    assert reg.path.stat().st_mtime_ns == mtime


def test_rendering_is_deterministic_and_other_grids_work():
    labels_a, tokens_a = render_for("AWA2", "small", 1, 4)
    labels_b, tokens_b = render_for("AWA2", "small", 1, 4)
    assert np.array_equal(labels_a, labels_b) and np.array_equal(tokens_a, tokens_b)
    _, (tokens7, obj7) = render_for("AWA2", "small", 1, 7, return_object=True)
    assert tokens7.shape == (labels_a.size, 50, DIM) and obj7.shape[1] == 9            # a 3 x 3 object on 7 x 7
    assert (tokens_a >= 0).all()                                                       # ReLU-like, like res101
    assert parse_sim_tag(sim_tag(7)) == 7 and parse_sim_tag("vit_b16") is None


def test_object_is_one_square_blob_and_parts_carry_the_foreground():
    _, (tokens, obj) = render_for("AWA2", "small", 0, 4, return_object=True)
    rows, cols = np.divmod(obj, 4)
    assert ((rows.max(1) - rows.min(1)) == 1).all() and ((cols.max(1) - cols.min(1)) == 1).all()
    assert len({tuple(o) for o in obj}) > 5                                            # placed anywhere
    n = tokens.shape[0]
    is_obj = np.zeros((n, 16), bool)
    is_obj[np.arange(n)[:, None], obj] = True
    unit = tokens[:, 1:] / np.linalg.norm(tokens[:, 1:], axis=2, keepdims=True)
    direction = unit[is_obj].mean(0) - unit[~is_obj].mean(0)
    score = unit @ direction                                                           # a linear probe finds the object
    assert (score[is_obj].mean() - score[~is_obj].mean()) > 3 * score[~is_obj].std()
