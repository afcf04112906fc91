"""Region features into the ZSLData a model trains on: SOVR-refined (cached), or plainly pooled.

The seam: a model asks for region features through its config.  Its ``Config`` dataclass inherits
:class:`RegionFields` (or declares ``region_tag`` and any ``sovr_*`` fields itself); a non-empty ``region_tag``
makes :func:`zsl.run.load_run_data` call :func:`load_region_dataset` instead of ``zsl.data.load_dataset``.
Models without the field never see any of this, and ``hpo/`` knows nothing of it: a search may tune
``sovr_*`` like any hyperparameter.

``region_features``:
  "sovr"   -- SOVR (zsl.models.sovr) trained on the protocol's TRAINING rows only (their labels; under
              ``validation`` the evaluation rows are carved from trainval and never reach SOVR, under
              ``final`` they are the test rows), then every needed row refined and min-max scaled on the
              scaler rows, like the pooled features;
  "mean"   -- plain average pooling of the R region tokens (the baseline SOVR has to beat);
  "global" -- token 0 (ViT CLS / the ResNet map's global average).

Cache: SOVR runs once per (region file contents, SOVR config, seed, device type, training rows and labels,
seen classes, class attributes, word vectors, rows refined): ``<cache>/refined/<dataset>/refined_<tag>_<key>.npy``
([rows, C] float32, unscaled, rows in ascending image order) + ``.json`` (the key's inputs, the stage-1 log),
``<cache>`` as for the simulated data (``cache_dir``, else $ZSL_HPO_CACHE, else ~/.cache/zsl-hpo).  Written to a
temporary name and renamed; a lock file makes concurrent trials wait for one computation instead of repeating it.
The SOVR seed is the run's seed (a fused run uses its first seed).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from zsl.data.loading import read_named, to_zsldata
from zsl.data.matfile import get_field, load_mat
from zsl.data.protocols import check_protocol, make_split
from zsl.data.regions import RegionFeatures, check_tag, read_regions
from zsl.data.simulated import cache_root
from zsl.data.simulated_regions import ensure_simulated_regions, parse_sim_tag
from zsl.data.types import ZSLData
from zsl.errors import UserError

REGION_FEATURES = ("sovr", "mean", "global")
CACHE_VERSION = 1
SOVR_PREFIX = "sovr_"


@dataclass
class RegionFields:
    """Config fields of a model that trains on region features (inherit them in the model's Config).

    region_tag: "" = the pooled res101 features (nothing changes); otherwise the tag of
    ``<dataset folder>/regions_<tag>.npy`` (simulated datasets: ``sim-g<g>``, generated on demand).
    region_features: sovr | mean | global (module docstring).  region_word_vectors: "" = ARA's fixed random
    init (zsl.models.sovr.attribute_vectors), else an .npy [A, E] of attribute word vectors in att_splits.mat's
    attribute order (e.g. the 300-d vectors the reference ships), a path relative to the dataset folder or
    absolute.  ``sovr_<name>``: field <name> of zsl.models.sovr.SOVRConfig (the defaults are the same).
    """

    region_tag: str = ""
    region_features: str = "sovr"
    region_word_vectors: str = ""
    sovr_fde: str = "joint"
    sovr_pre_iters: int = 1101
    sovr_pre_bs: int = 50
    sovr_lr: float = 1e-4
    sovr_weight_decay: float = 1e-4
    sovr_momentum: float = 0.9
    sovr_ara_topk: float = 80 / 196
    sovr_ara_fill: str = "zero"
    sovr_fde_topk: float = 120 / 196
    sovr_blob_threshold: float = 0.05
    sovr_blob_min_area: float = 30 / 196
    sovr_fde_reweight: str = "sigmoid"
    sovr_extract_batch: int = 256


@dataclass(frozen=True)
class RegionRequest:
    """What a run's config asks for: the region tag, the feature kind, SOVR's config (zsl.models.sovr.SOVRConfig)."""

    tag: str
    features: str
    sovr: object
    word_vectors: str = ""


def region_request(config: dict) -> RegionRequest | None:
    """The region request in a resolved model config, or None when it has no non-empty ``region_tag``."""
    tag = config.get("region_tag") or ""
    if not tag:
        return None
    from zsl.models.sovr import SOVRConfig, check_sovr_config

    check_tag(tag)
    features = config.get("region_features", "sovr")
    if features not in REGION_FEATURES:
        raise UserError(f"hyperparameter 'region_features' must be one of {', '.join(REGION_FEATURES)}, got {features!r}.")
    known = {f.name for f in dataclasses.fields(SOVRConfig)}
    values = {key[len(SOVR_PREFIX):]: value for key, value in config.items() if key.startswith(SOVR_PREFIX)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise UserError(f"unknown hyperparameter '{SOVR_PREFIX}{unknown[0]}': SOVR's are "
                        f"{', '.join(SOVR_PREFIX + k for k in sorted(known))}.")
    sovr = SOVRConfig(**values)
    check_sovr_config(sovr, prefix=SOVR_PREFIX)
    return RegionRequest(tag=tag, features=features, sovr=sovr, word_vectors=config.get("region_word_vectors") or "")


def load_region_dataset(
    name: str,
    data_root=None,
    protocol: str = "validation",
    seed: int = 0,
    scale: str = "small",
    class_embedding: str | None = None,
    split_percent: int = 100,
    cache_dir=None,
    *,
    request: RegionRequest,
    scaler_fit: str = "train_rows",
    model_seed: int = 0,
    device=None,
    attribute_vectors: np.ndarray | None = None,
) -> ZSLData:
    """Like zsl.data.load_dataset (same arguments and split), with x = the requested region features.

    request: from :func:`region_request`.  model_seed: SOVR's seed.  device: SOVR's (None = cuda when available).
    attribute_vectors: ARA's word-vector init [A, E] (None: the request's ``word_vectors`` file, else the fixed
    random init of zsl.models.sovr).
    ``info`` gains ``features`` (e.g. "SOVR-refined regions_vit_b16"), ``regions`` (the sidecar's provenance)
    and, for SOVR, ``sovr`` (config, seed, cache file, stage-1 log); ``sources`` gains ``regions``.
    """
    check_protocol(protocol)
    raw = read_named(name, data_root, seed, scale, class_embedding, split_percent, cache_dir)
    split = make_split(raw.labels, raw.locs, protocol, seed, raw.percent_positions, scaler_fit)
    regions = open_regions(name, raw, request.tag, seed, scale, cache_dir)
    rows = np.unique(np.concatenate([split.train, split.eval_seen, split.eval_unseen, split.scaler_rows]))
    extra: dict = {}
    if request.features == "mean":
        x_rows, x_source, label = regions.mean_pooled(rows), regions.path, f"mean-pooled regions_{request.tag}"
    elif request.features == "global":
        x_rows, x_source, label = regions.global_token(rows), regions.path, f"global token of regions_{request.tag}"
    else:
        if attribute_vectors is None and request.word_vectors:
            attribute_vectors = read_word_vectors(raw.folder, request.word_vectors, raw.class_emb.shape[1])
        x_rows, x_source, record = refined_features(
            regions, raw.labels, split.train, rows, _attributes(raw), request.sovr, model_seed, device,
            cache_root(cache_dir) / "refined" / name, attribute_vectors)
        label, extra = f"SOVR-refined regions_{request.tag}", {"sovr": record}
    x = np.full((raw.n_images, regions.dim), np.nan, dtype=np.float32)    # rows never needed stay NaN, never read
    x[rows] = x_rows
    raw = dataclasses.replace(raw, x=x, sources={**raw.sources, "x": str(x_source), "regions": str(regions.path)})
    meta = {k: regions.meta.get(k) for k in ("tag", "backbone", "layer", "input_size", "grid", "dim", "global_token")}
    return to_zsldata(raw, split, name, protocol, info={
        "seed": seed, "scale": scale if raw.simulated else None, "split_percent": split_percent,
        "scaler_fit": scaler_fit, "features": label, "regions": meta, **extra,
    })


def open_regions(name: str, raw, tag: str, seed: int, scale: str, cache_dir=None) -> RegionFeatures:
    """The validated region file ``regions_<tag>`` of dataset ``name`` (simulated ones rendered on demand)."""
    grid = parse_sim_tag(tag)
    if raw.simulated:
        if grid is None:
            raise UserError(f"simulated dataset '{name}' has generated region features only: use region_tag "
                            f"sim-g<g> (e.g. sim-g4), not '{tag}'.")
        ensure_simulated_regions(raw.folder.name, scale, seed, grid, cache_dir)
    elif grid is not None:
        raise UserError(f"region tag '{tag}' names simulated regions but '{name}' is a real dataset: use the tag "
                        f"of your regions_<tag>.npy (see README, 'Region features').")
    return read_regions(raw.folder, tag, raw.labels + 1)


def read_word_vectors(folder: Path, name: str, a_dim: int) -> np.ndarray:
    """The attribute word vectors [A, E] float32 of .npy file ``name`` (relative to the dataset folder, or absolute)."""
    path = Path(name).expanduser()
    path = path if path.is_absolute() else Path(folder) / path
    try:
        vec = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise UserError(f"region_word_vectors {path} is not a readable .npy array ({type(err).__name__}): save the "
                        f"[A, E] attribute vectors with np.save, or leave region_word_vectors empty.") from None
    if vec.ndim != 2 or vec.shape[0] != a_dim or not np.issubdtype(vec.dtype, np.floating) or not np.isfinite(vec).all():
        raise UserError(f"region_word_vectors {path} has shape {vec.shape} ({vec.dtype}) but must be finite floats "
                        f"[{a_dim}, E], one row per attribute in att_splits.mat's order: save the matching vectors.")
    return vec.astype(np.float32)


def _attributes(raw) -> np.ndarray:
    """The class attributes [K, A] SOVR's ARA is trained against: att_splits.mat's original_att (φ normalises it)."""
    if raw.class_embedding in ("att", "original_att"):
        return raw.class_emb
    path = raw.folder / "att_splits.mat"
    return get_field(load_mat(path), "original_att", path).T.astype(np.float32)


def _digest(arr: np.ndarray) -> str:
    arr = np.ascontiguousarray(arr)
    return hashlib.sha256(str(arr.dtype).encode() + str(arr.shape).encode() + arr.tobytes()).hexdigest()


def refined_features(regions: RegionFeatures, labels: np.ndarray, train_rows: np.ndarray, rows: np.ndarray,
                     class_att: np.ndarray, cfg, seed: int, device, folder: Path,
                     word_vectors: np.ndarray | None = None) -> tuple[np.ndarray, Path, dict]:
    """(x [rows, C] float32 unscaled, cache file, record): SOVR trained on ``train_rows`` (with their labels
    [N]-indexed from ``labels``, seen classes = the classes among them), applied to ``rows``; cached (module doc)."""
    import torch

    from zsl.models.sovr import extract, train_sovr

    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    train_rows = np.sort(np.asarray(train_rows, dtype=np.int64))
    train_labels = labels[train_rows]
    seen = np.unique(train_labels)
    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "extract_batch"}
    key_doc = {
        "version": CACHE_VERSION, "regions": regions.identity(), "sovr": settings, "seed": int(seed),
        "device": device.type, "train_rows": _digest(train_rows), "train_labels": _digest(train_labels),
        "seen_classes": _digest(seen), "attributes": _digest(np.asarray(class_att, np.float32)),
        "word_vectors": None if word_vectors is None else _digest(np.asarray(word_vectors, np.float32)),
        "rows": _digest(np.asarray(rows, np.int64)),
    }
    key = hashlib.sha256(json.dumps(key_doc, sort_keys=True).encode()).hexdigest()[:20]
    path = folder / f"refined_{regions.tag}_{key}.npy"
    side = path.with_suffix(".json")
    shape = (int(np.asarray(rows).size), regions.dim)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot write the refined-feature cache {folder} ({err.strerror}): set ZSL_HPO_CACHE or "
                        f"--cache-dir to a writable folder.") from None
    hit = _read_cache(path, side, shape)
    if hit is not None:
        return hit[0], path, {**hit[1], "cache": "hit"}
    with _locked(path.with_suffix(".lock")):
        hit = _read_cache(path, side, shape)
        if hit is not None:
            return hit[0], path, {**hit[1], "cache": "hit"}
        start = time.perf_counter()
        model, log = train_sovr(regions, train_rows, train_labels, seen, class_att, cfg, seed, device, word_vectors)
        x = extract(model, regions, rows, device, cfg.extract_batch)
        if not np.isfinite(x).all():
            from zsl.errors import DivergedError
            raise DivergedError("SOVR's refined features hold NaN/inf values: the SOVR setting is unstable (lower sovr_lr).")
        record = {"file": str(path), "config": dataclasses.asdict(cfg), "seed": int(seed), "device": device.type,
                  "train_images": int(train_rows.size), "seen_classes": int(seen.size), "rows": shape[0],
                  "stage1": log, "seconds": time.perf_counter() - start, "key_inputs": key_doc}
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        with open(tmp, "wb") as fh:
            np.save(fh, x.astype(np.float32))
        os.replace(tmp, path)
        tmp_side = side.with_name(f".{side.name}.tmp-{os.getpid()}")
        tmp_side.write_text(json.dumps(record, indent=1, sort_keys=True))
        os.replace(tmp_side, side)
    return x, path, {**record, "cache": "computed"}


def _read_cache(path: Path, side: Path, shape: tuple[int, int]):
    """(x, record) of a complete cache entry of ``shape``, else None (absent, partial or damaged: recomputed)."""
    if not (path.is_file() and side.is_file()):
        return None
    try:
        x = np.load(path, allow_pickle=False)
        record = json.loads(side.read_text())
    except (OSError, ValueError, EOFError):
        return None
    if x.shape != shape or x.dtype != np.float32 or not np.isfinite(x).all():
        return None
    return x, record


@contextlib.contextmanager
def _locked(lock: Path):
    """An exclusive advisory lock on ``lock`` (POSIX flock; elsewhere no lock: concurrent runs may both compute)."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(lock, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
