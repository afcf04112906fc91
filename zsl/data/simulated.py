"""Simulated stand-ins ``sim-AWA2``, ``sim-CUB``, ``sim-SUN`` for the absent xlsa17 image features.

SIMULATED DATA: never benchmark results.  What is real and what is drawn:

- Real (from the shipped ``zsl/data/xlsa17/<D>/att_splits.mat``): class names, class semantics
  (att / original_att, and CUB's sent_splits.mat), the numbers of classes, of seen/unseen classes
  (AWA2 40/10, CUB 150/50, SUN 645/72) and of train/val classes (27/13, 100/50, 580/65), and the
  split sizes (``full``) or split proportions (``small``).
- Drawn (seeded): which classes are seen/unseen and train/val, which images belong to which
  class, the image order, and every feature.

Generative process (seed ``s``, dataset ``D``; all draws from ``numpy.random.default_rng([s, crc32(D)])``):

1. ``u_k`` = class attributes (L2-normalised original_att rows), centred over classes and divided
   by their overall standard deviation.
2. Attribute part, nonlinear: ``h_k = W_lin u_k + NONLINEAR * W2 tanh(W1 u_k)``; W_lin mixes the
   top-L principal attribute directions at random, W1 [H1, A] Gaussian * GAIN / sqrt(A),
   W2 [L, H1] Gaussian / sqrt(H1) (H1 = 128 hidden, L = 32 latent dims, NONLINEAR = 1, GAIN = 2);
   h is standardised per latent dim.
3. Class part the attributes do not explain: ``m_k = h_k + RESIDUAL * r_k``, r_k ~ N(0, I_L), RESIDUAL = 0.6.
4. Image ``i`` of class ``k``: latent ``z_i = m_k + IMAGE_NOISE * e_i``, e_i ~ N(0, I_L), IMAGE_NOISE = 0.7.
5. Views, non-negative like ReLU features: ``x_i = relu(P_x z_i + b_x + VIEW_NOISE * n_i)`` and
   ``c_i = relu(P_c z_i + b_c + VIEW_NOISE * n'_i)``; P_x, P_c [D, L] Gaussian / sqrt(L),
   b ~ N(0, 0.5^2) per dim, VIEW_NOISE = 0.3.  x and c share z_i, so they are correlated views
   (c stands in for con_paco.mat); each has its own projection and noise.

Difficulty (measured with ESZSL, preset "default" (gamma 100, lam 1, one-hot targets), scale
``small``, seed 0; percent, per-class mean accuracy; reproduce with the command in the data report):

  ============================  =====  =====  =====  =====  ===========
  dataset / protocol              S      U      H     ZSL   ZSL chance
  ============================  =====  =====  =====  =====  ===========
  sim-AWA2 validation            92.6   13.8   24.0   59.3      7.7
  sim-AWA2 final                 85.0   33.3   47.9   62.3     10.0
  sim-CUB  validation            63.0   28.5   39.2   62.1      2.0
  sim-CUB  final                 60.1   22.4   32.6   61.6      2.0
  sim-SUN  validation            26.4   16.0   19.9   52.5      1.5
  sim-SUN  final                 28.1   12.7   17.5   48.3      1.4
  ============================  =====  =====  =====  =====  ===========

So a linear attribute model transfers far above chance yet far from 100 %, with the familiar GZSL
bias towards seen classes.  (sim-SUN ``full``, final: ZSL 66.4, H 20.8: 2048-d views are easier.)

Scales: ``full`` = the real image counts, 2048-d x and c; ``small`` = 64-d x and c with
tens of images per class (AWA2/CUB 30, SUN 20), every class kept.

Files are written in the exact xlsa17 layout (res101.mat with features D x N and 1-based labels,
att_splits.mat copy with simulated *_loc, con_paco.mat N x D, split_{10,30}percent.mat, plus a
SIMULATED.json marker) under ``<cache>/sim/<scale>-seed<s>/<D>/``, written to a temporary folder
and renamed into place (safe under concurrent workers), then read back by the real reader.
``<cache>`` is the ``cache_dir`` argument, else ``$ZSL_HPO_CACHE``, else ``~/.cache/zsl-hpo``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from zsl.data.matfile import get_field, load_mat, save_mat
from zsl.data.protocols import stratified_holdout
from zsl.data.xlsa17 import LOC_FIELDS, REAL_DATASETS, SIMULATED_MARKER
from zsl.errors import UserError

GENERATOR_VERSION = 1
SHIPPED = Path(__file__).resolve().parent / "xlsa17"
SCALES = ("small", "full")
SMALL_PER_CLASS = {"AWA2": 30, "CUB": 30, "SUN": 20}
COUNTS = {  # real xlsa17: (seen, unseen, val classes among seen)
    "AWA2": (40, 10, 13), "CUB": (150, 50, 50), "SUN": (645, 72, 65),
}
HIDDEN, LATENT = 128, 32
RESIDUAL, IMAGE_NOISE, VIEW_NOISE = 0.6, 0.7, 0.3
NONLINEAR, GAIN = 1.0, 2.0
FEATURE_DIM = {"small": 64, "full": 2048}


@dataclass(frozen=True)
class SimSplit:
    """The drawn class partition and image assignment (all 0-based)."""

    labels: np.ndarray          # [N] int64 class of each image, in file order
    locs: dict[str, np.ndarray]  # LOC_FIELDS -> int64 image indices


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The zsl-hpo cache folder: ``cache_dir``, else $ZSL_HPO_CACHE, else ~/.cache/zsl-hpo."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("ZSL_HPO_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "zsl-hpo"


def ensure_simulated(dataset: str, scale: str = "small", seed: int = 0, cache_dir=None) -> Path:
    """The data root holding ``<dataset>/`` of the simulated benchmark, generating it if absent."""
    if dataset not in REAL_DATASETS:
        raise UserError(f"unknown simulated dataset 'sim-{dataset}': choose one of {', '.join('sim-' + d for d in REAL_DATASETS)}.")
    if scale not in SCALES:
        raise UserError(f"unknown scale '{scale}': choose one of {', '.join(SCALES)}.")
    root = cache_root(cache_dir) / "sim" / f"{scale}-seed{seed}"
    target = root / dataset
    if _is_current(target):
        return root
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dataset}.tmp-", dir=root))
    except OSError as err:
        raise UserError(
            f"cannot write the simulated-data cache {root} ({err.strerror}): set ZSL_HPO_CACHE or --cache-dir to a writable folder."
        ) from None
    try:
        write_simulated(tmp, dataset, scale, seed)
        _publish(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def _is_current(folder: Path) -> bool:
    marker = folder / SIMULATED_MARKER
    if not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text()).get("generator_version") == GENERATOR_VERSION
    except (OSError, ValueError):
        return False


def _publish(tmp: Path, target: Path) -> None:
    """Rename the finished ``tmp`` folder to ``target``; a concurrent writer that won keeps its copy."""
    if target.exists() and not _is_current(target):
        stale = target.with_name(f".{target.name}.stale-{os.getpid()}")
        try:
            target.rename(stale)
            shutil.rmtree(stale, ignore_errors=True)
        except OSError:
            pass
    try:
        tmp.rename(target)
    except OSError:
        if not _is_current(target):
            raise


def write_simulated(folder: Path, dataset: str, scale: str, seed: int) -> None:
    """Write the simulated ``dataset`` in xlsa17 layout into the existing empty ``folder``."""
    rng = np.random.default_rng([seed, zlib.crc32(dataset.encode())])
    sem_path = SHIPPED / dataset / "att_splits.mat"
    sem = load_mat(sem_path)
    original_att = get_field(sem, "original_att", sem_path).T.astype(np.float64)   # [K, A]
    split = draw_split(rng, dataset, scale, {f: get_field(sem, f, sem_path).size for f in LOC_FIELDS})
    x, c = draw_features(rng, original_att, split.labels, FEATURE_DIM[scale])
    n = split.labels.size
    loc_type = np.uint16 if n < 2**16 else np.uint32
    sim_locs = {f: (idx + 1).astype(loc_type).reshape(-1, 1) for f, idx in split.locs.items()}
    save_mat(folder / "res101.mat", {"features": x.T, "labels": (split.labels + 1).astype(np.float64).reshape(-1, 1)})
    save_mat(folder / "con_paco.mat", {"features": c})
    for name in ("att_splits.mat", "sent_splits.mat"):
        if (SHIPPED / dataset / name).is_file():
            fields = {k: v for k, v in load_mat(SHIPPED / dataset / name).items() if not k.startswith("__")}
            save_mat(folder / name, {**fields, **sim_locs})
    n_tv = split.locs["trainval_loc"].size
    tv_labels = split.labels[split.locs["trainval_loc"]]
    for percent in (10, 30):
        keep = np.flatnonzero(stratified_holdout(tv_labels, percent / 100, seed=int(rng.integers(2**31))))
        save_mat(folder / f"split_{percent}percent.mat", {"trainval_loc": (keep + 1).astype(loc_type).reshape(-1, 1)})
    marker = {
        "simulated": True, "generator_version": GENERATOR_VERSION, "dataset": dataset, "scale": scale,
        "seed": seed, "n_images": int(n), "n_trainval": int(n_tv), "feature_dim": int(x.shape[1]),
        "note": "SIMULATED features and labels (zsl.data.simulated); class semantics are the real xlsa17 ones.",
    }
    (folder / SIMULATED_MARKER).write_text(json.dumps(marker, indent=1))


def draw_split(rng: np.random.Generator, dataset: str, scale: str, real_sizes: dict[str, int]) -> SimSplit:
    """Seen/unseen and train/val class partitions with the real counts, and labels per image."""
    n_seen, n_unseen, n_val = COUNTS[dataset]
    classes = rng.permutation(n_seen + n_unseen)
    unseen, seen = classes[:n_unseen], classes[n_unseen:]
    val_classes = seen[:n_val]
    tv_fraction = real_sizes["trainval_loc"] / (real_sizes["trainval_loc"] + real_sizes["test_seen_loc"])
    if scale == "small":
        per = SMALL_PER_CLASS[dataset]
        n_tv = int(round(per * tv_fraction))
        tv_counts = np.full(n_seen, n_tv)
        ts_counts = np.full(n_seen, per - n_tv)
        tu_counts = np.full(n_unseen, per)
    else:
        tv_counts = _spread(rng, real_sizes["trainval_loc"], n_seen)
        ts_counts = _spread(rng, real_sizes["test_seen_loc"], n_seen)
        tu_counts = _spread(rng, real_sizes["test_unseen_loc"], n_unseen)
    groups = {
        "trainval_loc": np.repeat(seen, tv_counts),
        "test_seen_loc": np.repeat(seen, ts_counts),
        "test_unseen_loc": np.repeat(unseen, tu_counts),
    }
    ordered = np.concatenate(list(groups.values()))
    position = rng.permutation(ordered.size)        # image j of `ordered` is stored at row position[j]
    labels = np.empty(ordered.size, dtype=np.int64)
    labels[position] = ordered
    locs, start = {}, 0
    for name, group in groups.items():
        locs[name] = np.sort(position[start:start + group.size])
        start += group.size
    seen_rows = np.concatenate([locs["trainval_loc"], locs["test_seen_loc"]])
    is_val = np.isin(labels[seen_rows], val_classes)
    locs["train_loc"] = np.sort(seen_rows[~is_val])
    locs["val_loc"] = np.sort(seen_rows[is_val])
    return SimSplit(labels=labels, locs=locs)


def _spread(rng: np.random.Generator, total: int, k: int) -> np.ndarray:
    """k positive counts summing to ``total``, unequal like real class sizes (half floor, half multinomial)."""
    floor = max(1, total // (2 * k))
    return floor + rng.multinomial(total - floor * k, rng.dirichlet(np.full(k, 5.0)))


def draw_features(rng: np.random.Generator, original_att: np.ndarray, labels: np.ndarray, dim: int):
    """(x [N, dim], c [N, dim]) float32 non-negative views from the process in the module docstring."""
    z = draw_latents(rng, original_att, labels)
    views = []
    for _ in range(2):
        proj = (rng.standard_normal((LATENT, dim)) / np.sqrt(LATENT)).astype(np.float32)
        bias = (0.5 * rng.standard_normal(dim)).astype(np.float32)
        noise = rng.standard_normal((labels.size, dim), dtype=np.float32)
        views.append(np.maximum(z @ proj + bias + VIEW_NOISE * noise, 0.0))
    return views[0], views[1]


def draw_latents(rng: np.random.Generator, original_att: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """z [N, LATENT] float32: each image's latent (steps 1-4 of the module docstring), drawn from ``rng``.

    :func:`draw_features` calls it first, so the region renderer (zsl.data.simulated_regions) can replay
    the same stream and recover the very images of res101.mat.
    """
    att = original_att / np.maximum(np.linalg.norm(original_att, axis=1, keepdims=True), 1e-12)
    u = (att - att.mean(axis=0)) / att.std()                                     # [K, A]
    a_dim = u.shape[1]
    _, _, vt = np.linalg.svd(u, full_matrices=False)                             # principal attribute directions
    top = vt[:LATENT].T                                                           # [A, <=L]
    w_lin = top @ rng.standard_normal((top.shape[1], LATENT)) / np.sqrt(top.shape[1])
    w1 = rng.standard_normal((a_dim, HIDDEN)) * (GAIN / np.sqrt(a_dim))
    w2 = rng.standard_normal((HIDDEN, LATENT)) / np.sqrt(HIDDEN)
    h = u @ w_lin + NONLINEAR * np.tanh(u @ w1) @ w2
    h = (h - h.mean(axis=0)) / h.std(axis=0)
    m = h + RESIDUAL * rng.standard_normal(h.shape)                              # [K, L]
    return (m[labels] + IMAGE_NOISE * rng.standard_normal((labels.size, LATENT))).astype(np.float32)
