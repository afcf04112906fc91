"""SOVR-refined features as a model's data: honesty (training rows only), the cache, the seam in zsl.run."""

import dataclasses

import numpy as np
import pytest

from data_fixtures import sim_cache  # noqa: F401 (fixture)
from zsl.data import load_dataset
from zsl.data.loading import read_named
from zsl.data.protocols import make_split
from zsl.errors import UserError
from zsl.models import sovr as sovr_module
from zsl.models.eszsl import ESZSL
from zsl.models.eszsl import Config as ESZSLConfig
from zsl.models.sovr import SOVRConfig
from zsl.refined import RegionFields, load_region_dataset, region_request

pytestmark = pytest.mark.usefixtures("one_thread")
FAST = {"region_tag": "sim-g4", "sovr_pre_iters": 20}


def test_region_request_reads_only_models_that_ask():
    assert region_request({"gamma": 1.0}) is None and region_request({"region_tag": ""}) is None
    req = region_request({**FAST, "sovr_fde": "identity"})
    assert req.tag == "sim-g4" and req.features == "sovr" and req.sovr.fde == "identity" and req.sovr.pre_iters == 20
    with pytest.raises(UserError, match="unknown hyperparameter 'sovr_fdee'"):
        region_request({**FAST, "sovr_fdee": "joint"})
    with pytest.raises(UserError, match="'sovr_ara_fill'"):
        region_request({**FAST, "sovr_ara_fill": "nan"})
    with pytest.raises(UserError, match="'region_features'"):
        region_request({**FAST, "region_features": "max"})


def test_word_vectors_file_is_read_and_checked(sim_cache, monkeypatch, tmp_path):
    calls = []
    train = sovr_module.train_sovr

    def spy(*args, **kw):
        calls.append(args[-1] if len(args) > 8 else kw.get("word_vectors"))
        return train(*args, **kw)

    monkeypatch.setattr(sovr_module, "train_sovr", spy)
    vectors = np.random.default_rng(0).random((85, 300)).astype(np.float32)
    np.save(tmp_path / "w2v.npy", vectors)
    _load(sim_cache, region_word_vectors=str(tmp_path / "w2v.npy"))
    assert np.array_equal(calls[0], vectors)
    np.save(tmp_path / "bad.npy", vectors[:80])
    with pytest.raises(UserError, match=r"has shape \(80, 300\).*\[85, E\]"):
        _load(sim_cache, region_word_vectors=str(tmp_path / "bad.npy"))
    with pytest.raises(UserError, match="not a readable .npy"):
        _load(sim_cache, region_word_vectors="missing.npy")


def test_region_fields_mirror_sovr_config():
    fields = {f.name: f.default for f in dataclasses.fields(RegionFields) if f.name.startswith("sovr_")}
    assert fields == {"sovr_" + k: v for k, v in dataclasses.asdict(SOVRConfig()).items()}


def _spy(monkeypatch):
    calls = []
    train, extract = sovr_module.train_sovr, sovr_module.extract

    def spy_train(source, rows, labels, seen, *args, **kw):
        calls.append(("train", np.array(rows), np.array(labels), np.array(seen)))
        return train(source, rows, labels, seen, *args, **kw)

    def spy_extract(model, source, rows, *args, **kw):
        calls.append(("extract", np.array(rows)))
        return extract(model, source, rows, *args, **kw)

    monkeypatch.setattr(sovr_module, "train_sovr", spy_train)
    monkeypatch.setattr(sovr_module, "extract", spy_extract)
    return calls


def _load(cache, protocol="validation", **config):
    return load_region_dataset("sim-AWA2", protocol=protocol, cache_dir=cache, request=region_request({**FAST, **config}),
                               model_seed=0, device="cpu")


def test_sovr_sees_training_rows_only_and_validation_never_touches_test(sim_cache, monkeypatch):
    calls = _spy(monkeypatch)
    data = _load(sim_cache)
    raw = read_named("sim-AWA2", cache_dir=sim_cache)
    split = make_split(raw.labels, raw.locs, "validation", 0)
    (_, rows, labels, seen), (_, refined) = calls
    assert np.array_equal(rows, np.sort(split.train)) and np.array_equal(labels, raw.labels[rows])
    assert not np.isin(rows, np.concatenate([split.eval_seen, split.eval_unseen])).any()
    assert np.array_equal(seen, data.seen_classes) and not np.isin(seen, data.unseen_classes).any()
    trainval = raw.locs["trainval_loc"]
    assert np.isin(refined, trainval).all()                                       # no test image is refined
    assert data.info["features"] == "SOVR-refined regions_sim-g4" and data.info["sovr"]["cache"] == "computed"
    assert data.provenance()["feature_file"].startswith("refined_sim-g4_") and data.simulated
    assert data.feature_dim == 64 and np.isfinite(data.train_x).all() and np.isfinite(data.eval_unseen_x).all()
    assert data.train_x.min() == 0.0 and data.train_x.max() == 1.0                # min-max on the training rows
    assert data.info["sovr"]["train_images"] == split.train.size


def test_final_protocol_trains_on_trainval_and_refines_the_test_rows(sim_cache, monkeypatch):
    calls = _spy(monkeypatch)
    data = _load(sim_cache, protocol="final")
    raw = read_named("sim-AWA2", cache_dir=sim_cache)
    (_, rows, _, seen), (_, refined) = calls
    assert np.array_equal(rows, np.sort(raw.locs["trainval_loc"]))
    assert np.isin(raw.locs["test_unseen_loc"], refined).all() and seen.size == 40
    assert data.eval_unseen_x.shape == (raw.locs["test_unseen_loc"].size, 64)


def test_cache_is_reused_and_keyed_by_config_and_seed(sim_cache, monkeypatch):
    first = _load(sim_cache, sovr_fde="identity")
    calls = _spy(monkeypatch)
    again = _load(sim_cache, sovr_fde="identity")
    assert calls == [] and again.info["sovr"]["cache"] == "hit"
    assert np.array_equal(first.train_x, again.train_x) and np.array_equal(first.eval_seen_x, again.eval_seen_x)
    other = _load(sim_cache, sovr_fde="identity", sovr_ara_fill="-inf")
    assert len(calls) == 2 and other.info["sovr"]["file"] != first.info["sovr"]["file"]
    reseeded = load_region_dataset("sim-AWA2", cache_dir=sim_cache, model_seed=1, device="cpu",
                                   request=region_request({**FAST, "sovr_fde": "identity"}))
    assert len(calls) == 4 and not np.array_equal(reseeded.train_x, first.train_x)


def test_pooled_baselines_need_no_training(sim_cache, monkeypatch):
    calls = _spy(monkeypatch)
    mean = _load(sim_cache, region_features="mean")
    glob = _load(sim_cache, region_features="global")
    assert calls == [] and mean.info["features"] == "mean-pooled regions_sim-g4"
    assert glob.info["features"] == "global token of regions_sim-g4" and mean.feature_dim == glob.feature_dim == 64
    plain = load_dataset("sim-AWA2", cache_dir=sim_cache)
    assert np.array_equal(mean.train_y, plain.train_y) and np.array_equal(mean.eval_unseen_y, plain.eval_unseen_y)


def test_tag_errors(sim_cache, tmp_path):
    with pytest.raises(UserError, match="use region_tag sim-g<g>"):
        load_region_dataset("sim-AWA2", cache_dir=sim_cache, request=region_request({"region_tag": "vit_b16"}))
    with pytest.raises(UserError, match="sim-g2 .. sim-g14"):
        load_region_dataset("sim-AWA2", cache_dir=sim_cache, request=region_request({"region_tag": "sim-g40"}))


@dataclasses.dataclass
class RegionESZSLConfig(ESZSLConfig, RegionFields):
    """ESZSL's hyperparameters plus the region fields: a model that asks for region features."""


class RegionESZSL(ESZSL):
    """ESZSL on whatever x its data carries; its config asks for regions (test-only model)."""

    Config = RegionESZSLConfig

    def __init__(self, config, data, device="cpu", seed=0):
        base = {f.name for f in dataclasses.fields(ESZSLConfig)}
        super().__init__({k: v for k, v in config.items() if k in base}, data, device, seed)


def test_seam_through_the_run_engine(sim_cache, monkeypatch):
    from zsl import models
    from zsl.run import Run, RunSpec, load_run_data, resolve_config

    monkeypatch.setenv("ZSL_HPO_CACHE", str(sim_cache))
    monkeypatch.setitem(models.MODELS, "eszsl_regions", "test_sovr_refined:RegionESZSL")
    config = resolve_config("eszsl_regions", None, "sim-AWA2", FAST)
    spec = RunSpec(model="eszsl_regions", dataset="sim-AWA2", preset=None, protocol="validation", seed=0, data_seed=0,
                   scale="small", data_root=None, config=config)
    run = Run(spec, "cpu")
    assert run.data.info["features"] == "SOVR-refined regions_sim-g4"
    scores = run.run_to_end()
    assert {"S", "U", "H", "ZSL"} <= set(scores)
    off = RunSpec(**{**spec.to_dict(), "config": {**config, "region_tag": ""}, "data": spec.data})
    assert "features" not in load_run_data(off).info                             # region_tag "" = pooled res101
    plain = RunSpec(**{**spec.to_dict(), "model": "eszsl", "config": resolve_config("eszsl", None, "sim-AWA2"),
                       "data": spec.data})
    assert np.array_equal(load_run_data(plain).train_x, load_dataset("sim-AWA2").train_x)
