"""The region-feature input contract (zsl.data.regions): one clear UserError per defect, memory-mapped reads."""

import json

import numpy as np
import pytest
import scipy.io

from zsl.data.regions import (create_region_file, labels_sha256, make_sidecar, read_regions, region_paths,
                              write_sidecar)
from zsl.errors import UserError

N, GRID, DIM = 12, 3, 5


def _write(folder, tokens=None, labels=None, **meta_changes):
    """A valid dataset folder with res101.mat labels and regions_t.npy + sidecar; returns (labels, tokens)."""
    folder.mkdir(parents=True, exist_ok=True)
    labels = np.arange(N) % 4 + 1 if labels is None else labels                      # 1-based, as stored
    scipy.io.savemat(str(folder / "res101.mat"), {"labels": labels.reshape(-1, 1).astype(np.float64),
                                                  "features": np.ones((2, N))})
    if tokens is None:
        tokens = np.random.default_rng(0).random((N, 1 + GRID * GRID, DIM)).astype(np.float16)
        tokens[:, 0, 0] = np.arange(N)                                               # row bookkeeping
    npy, side = region_paths(folder, "t")
    np.save(npy, tokens)
    meta = make_sidecar("t", backbone="fake", layer="last", input_size=32, grid=GRID, dim=DIM, n_images=N,
                        global_token="cls", labels_sha=labels_sha256(labels))
    meta.update(meta_changes)
    write_sidecar(side, meta)
    return labels, tokens


def _error(folder, **kw) -> str:
    with pytest.raises(UserError) as err:
        read_regions(folder, "t", **kw)
    message = str(err.value)
    assert "\n" not in message and message.endswith(".")
    return message


def test_valid_file_reads_memory_mapped(tmp_path):
    labels, tokens = _write(tmp_path)
    reg = read_regions(tmp_path, "t")
    assert isinstance(reg.tokens, np.memmap) and not reg.tokens.flags.writeable
    assert (reg.n_images, reg.n_regions, reg.dim, reg.grid) == (N, GRID * GRID, DIM, GRID)
    rows = np.array([7, 2, 9])
    assert np.array_equal(reg.rows(rows), tokens[rows].astype(np.float32))          # returned in the asked order
    assert np.allclose(reg.mean_pooled(rows), tokens[rows, 1:].astype(np.float32).mean(1))
    assert np.array_equal(reg.global_token(rows)[:, 0], [7, 2, 9])
    assert read_regions(tmp_path, "t", labels_1based=labels).n_images == N          # labels passed in


def test_labels_hash_is_defined_on_int64_1based_file_order():
    import hashlib
    labels = np.array([3.0, 1.0, 2.0])
    assert labels_sha256(labels) == hashlib.sha256(np.array([3, 1, 2], dtype="<i8").tobytes()).hexdigest()
    assert labels_sha256(labels) != labels_sha256(labels[::-1])


def test_missing_region_file_lists_present_tags(tmp_path):
    _write(tmp_path)
    msg = _error_tag(tmp_path, "other")
    assert "regions_other.npy" in msg and "tags present: t" in msg and "extract_regions.py" in msg


def _error_tag(folder, tag):
    with pytest.raises(UserError) as err:
        read_regions(folder, tag)
    return str(err.value)


def test_bad_tag(tmp_path):
    assert "cannot name a file" in _error_tag(tmp_path, "../x")


def test_missing_sidecar(tmp_path):
    _write(tmp_path)
    region_paths(tmp_path, "t")[1].unlink()
    assert "has no sidecar regions_t.json" in _error(tmp_path)


def test_sidecar_not_json_or_incomplete(tmp_path):
    _write(tmp_path)
    side = region_paths(tmp_path, "t")[1]
    side.write_text("{not json")
    assert "not readable JSON" in _error(tmp_path)
    meta = make_sidecar("t", backbone="b", layer="l", input_size=1, grid=GRID, dim=DIM, n_images=N,
                        global_token="cls", labels_sha="x")
    del meta["labels_sha256"]
    side.write_text(json.dumps(meta))
    assert "lacks 'labels_sha256'" in _error(tmp_path)


def test_sidecar_tag_dtype_and_format(tmp_path):
    _write(tmp_path, tag="u")
    assert "names tag 'u'" in _error(tmp_path)
    _write(tmp_path, dtype="float32")
    assert "says dtype 'float32'" in _error(tmp_path)
    _write(tmp_path, format=9)
    assert "format 9" in _error(tmp_path)
    _write(tmp_path, grid="3")
    assert "'grid' must be a positive integer" in _error(tmp_path)


def test_array_dtype_not_float16(tmp_path):
    _write(tmp_path, tokens=np.zeros((N, 1 + GRID * GRID, DIM), np.float32))
    assert "stores float32 but region files are float16" in _error(tmp_path)


def test_truncated_array(tmp_path):
    _write(tmp_path)
    npy = region_paths(tmp_path, "t")[0]
    npy.write_bytes(npy.read_bytes()[:100])
    assert "not a readable .npy array" in _error(tmp_path)


def test_wrong_rank(tmp_path):
    _write(tmp_path, tokens=np.zeros((N, DIM), np.float16))
    assert "[N, 1 + R, D]" in _error(tmp_path)


def test_n_differs_from_res101_labels(tmp_path):
    _write(tmp_path, tokens=np.zeros((N - 1, 1 + GRID * GRID, DIM), np.float16), n_images=N - 1)
    msg = _error(tmp_path)
    assert f"has {N - 1} images but" in msg and "res101.mat has 12 labels" in msg


def test_n_differs_from_sidecar(tmp_path):
    _write(tmp_path, n_images=N + 1)
    assert f"says {N + 1}" in _error(tmp_path)


def test_grid_not_square(tmp_path):
    _write(tmp_path, tokens=np.zeros((N, 1 + 8, DIM), np.float16))
    assert "8 regions per image after the global token, not a square grid" in _error(tmp_path)


def test_grid_differs_from_sidecar(tmp_path):
    _write(tmp_path, tokens=np.zeros((N, 1 + 16, DIM), np.float16))
    assert "4 x 4 grid but regions_t.json says grid 3" in _error(tmp_path)


def test_dim_differs_from_sidecar(tmp_path):
    _write(tmp_path, dim=DIM + 1)
    assert f"{DIM} channels per token but regions_t.json says dim {DIM + 1}" in _error(tmp_path)


def test_label_hash_mismatch_means_wrong_row_order(tmp_path):
    labels, tokens = _write(tmp_path)
    _write(tmp_path, tokens=tokens, labels_sha256=labels_sha256(labels[::-1]))
    assert "another image order" in _error(tmp_path)


def test_non_finite_values_in_sample(tmp_path):
    tokens = np.zeros((N, 1 + GRID * GRID, DIM), np.float16)
    tokens[N - 1, 3, 2] = np.inf                                                      # the last row is always sampled
    _write(tmp_path, tokens=tokens)
    assert f"NaN/inf values (first seen in image {N}" in _error(tmp_path)


def test_create_region_file_is_writable_memmap(tmp_path):
    out = create_region_file(tmp_path / "regions_w.npy", 3, 2, 4)
    out[1] = 1.5
    out.flush()
    del out
    back = np.load(tmp_path / "regions_w.npy")
    assert back.shape == (3, 5, 4) and back.dtype == np.float16 and back[1].min() == 1.5 and back[0].max() == 0
