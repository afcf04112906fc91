"""Reader and validator of one xlsa17 dataset folder (spec d2sc.md §1).

Folder ``<root>/<DATASET>/`` holds:

- ``res101.mat``: ``features`` 2048 x N (columns = images; transposed here), ``labels`` N x 1, 1-based.
- ``ce_ce.mat`` (optional): ``features`` N x 2048 (rows = images, NOT transposed); when present it
  replaces the res101 features as the visual view x.
- ``con_paco.mat`` (optional): ``features`` N x 2048, the second view c.
- ``att_splits.mat`` (or ``sent_splits.mat`` for ``class_embedding="sent"``): ``att`` / ``original_att``
  A x K (transposed here), ``allclasses_names`` K x 1 and 1-based image indices ``*_loc``.
- ``split_{10,30}percent.mat`` (optional): ``trainval_loc``, 1-based positions into the
  trainval-ordered subset (§1.5).
- ``SIMULATED.json``: written only by :mod:`zsl.data.simulated`; marks the folder as simulated.

Everything is checked on the way in; any defect raises :class:`zsl.errors.UserError` with one
sentence naming the file and the fix.  Returned indices and labels are 0-based.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from zsl.data.matfile import get_field, load_mat
from zsl.errors import UserError

REAL_DATASETS = ("AWA2", "CUB", "SUN")  # the datasets with shipped semantics and simulated stand-ins
# Class-embedding dimensions of the xlsa17-layout datasets in common use (att / original_att). Any other
# folder in the same layout is read too, checked by structure alone.
EXPECTED_ATT_DIM = {"AWA1": 85, "AWA2": 85, "APY": 64, "CUB": 312, "SUN": 102, "FLO": 1024}
SENT_DIM = 1024
CLASS_EMBEDDINGS = ("att", "original_att", "sent")
SPLIT_PERCENTS = (10, 30, 100)
LOC_FIELDS = ("trainval_loc", "test_seen_loc", "test_unseen_loc", "train_loc", "val_loc")
VALIDATION_FIELDS = ("train_loc", "val_loc")  # only the validation protocol needs them (some APY copies lack them)
SIMULATED_MARKER = "SIMULATED.json"


@dataclass
class Xlsa17:
    """The validated contents of one dataset folder (all indices 0-based, all views row = image).

    Shapes: N images, R visual dim, C second-view dim, K classes, A embedding dim.
    """

    folder: Path
    x: np.ndarray                 # [N, R] float32 visual features (ce_ce if present, else res101)
    c: np.ndarray | None          # [N, C] float32 second view (con_paco), or None
    labels: np.ndarray            # [N] int64 class ids 0..K-1
    class_names: list[str]        # [K]
    class_emb: np.ndarray         # [K, A] float32, the chosen class embedding
    class_embedding: str          # "att" | "original_att" | "sent"
    locs: dict[str, np.ndarray]   # LOC_FIELDS -> int64 image indices 0..N-1
    percent_positions: np.ndarray | None  # positions 0..len(trainval)-1 kept by split_percent, or None
    simulated: bool
    sources: dict[str, str] = field(default_factory=dict)  # view/role -> file path

    @property
    def n_images(self) -> int:
        return int(self.labels.shape[0])


def read_xlsa17(
    folder: Path,
    dataset: str,
    class_embedding: str = "att",
    split_percent: int = 100,
    att_dim: int | None = None,
) -> Xlsa17:
    """Read and validate ``folder`` (= ``<root>/<dataset>``); see the module docstring for the layout.

    ``att_dim``: the class-embedding dimension required (default: the known one of ``dataset``
    for ``att``/``original_att``, 1024 for ``sent``).
    """
    folder = Path(folder)
    if class_embedding not in CLASS_EMBEDDINGS:
        raise UserError(f"unknown class embedding '{class_embedding}': choose one of {', '.join(CLASS_EMBEDDINGS)}.")
    if split_percent not in SPLIT_PERCENTS:
        raise UserError(f"split_percent must be one of 10, 30, 100, got {split_percent}: fix --split-percent.")
    if not folder.is_dir():
        raise UserError(f"dataset folder {folder} does not exist: point --data-root at the folder that contains {dataset}/.")
    x, labels, x_path = _read_visual(folder)
    n = labels.shape[0]
    c_path = folder / "con_paco.mat"
    c = _read_row_view(c_path, n) if c_path.is_file() else None
    sem_path = folder / ("sent_splits.mat" if class_embedding == "sent" else "att_splits.mat")
    if class_embedding == "sent" and not sem_path.is_file():
        raise UserError(f"class embedding 'sent' needs {sem_path} (xlsa17 ships it for CUB only): add it or use class embedding 'att'.")
    sem = load_mat(sem_path)
    names = _class_names(sem, sem_path)
    emb = _class_embedding(sem, sem_path, class_embedding, len(names))
    want = att_dim or (SENT_DIM if class_embedding == "sent" else EXPECTED_ATT_DIM.get(dataset))
    if want is not None and emb.shape[1] != want:
        raise UserError(
            f"{sem_path}: the '{class_embedding}' class embedding has {emb.shape[1]} dimensions but {want} are "
            f"expected for {dataset}: use the original xlsa17 file for this dataset."
        )
    _check_labels(labels, len(names), folder / "res101.mat")
    empty = np.flatnonzero(np.bincount(labels, minlength=len(names)) == 0)
    if empty.size:
        raise UserError(f"{folder / 'res101.mat'}: class {empty[0] + 1} ('{names[empty[0]]}') of {sem_path.name} has no "
                        f"image ({empty.size} such classes): drop their columns from {sem_path.name} or add their images.")
    present = [name for name in LOC_FIELDS if name not in VALIDATION_FIELDS or name in sem]
    locs = {name: _indices(get_field(sem, name, sem_path), sem_path, name, n) for name in present}
    _check_splits(locs, labels, sem_path)
    positions = _read_percent(folder, split_percent, len(locs["trainval_loc"]))
    sources = {"x": str(x_path), "semantics": str(sem_path)}
    if c is not None:
        sources["c"] = str(c_path)
    if positions is not None:
        sources["split_percent"] = str(folder / f"split_{split_percent}percent.mat")
    return Xlsa17(
        folder=folder, x=x, c=c, labels=labels, class_names=names, class_emb=emb,
        class_embedding=class_embedding, locs=locs, percent_positions=positions,
        simulated=(folder / SIMULATED_MARKER).is_file(), sources=sources,
    )


def _read_visual(folder: Path) -> tuple[np.ndarray, np.ndarray, Path]:
    """(x [N, R], labels [N] 0-based, path of the file x came from): res101 labels, ce_ce or res101 features."""
    res_path = folder / "res101.mat"
    res = load_mat(res_path)
    raw_labels = get_field(res, "labels", res_path)
    labels = _integer_vector(raw_labels, res_path, "labels") - 1
    n = labels.shape[0]
    ce_path = folder / "ce_ce.mat"
    if ce_path.is_file():
        return _read_row_view(ce_path, n), labels, ce_path
    feats = _matrix(get_field(res, "features", res_path), res_path)
    if feats.shape[1] != n:
        if feats.shape[0] == n:
            raise UserError(
                f"{res_path}: 'features' is stored {feats.shape[0]} x {feats.shape[1]} (images as rows) but xlsa17 "
                f"res101.mat stores D x N with one column per image: save features.T instead."
            )
        raise UserError(
            f"{res_path}: 'features' has {feats.shape[1]} image columns but 'labels' has {n} entries: "
            f"use a res101.mat whose features and labels come from the same image list."
        )
    return _finite(np.ascontiguousarray(feats.T, dtype=np.float32), res_path), labels, res_path


def _read_row_view(path: Path, n: int) -> np.ndarray:
    """Field ``features`` of ce_ce.mat / con_paco.mat: N x D with rows in res101.mat order."""
    feats = _matrix(get_field(load_mat(path), "features", path), path)
    if feats.shape[0] != n:
        if feats.shape[1] == n:
            raise UserError(
                f"{path}: 'features' is stored {feats.shape[0]} x {feats.shape[1]} (images as columns) but this file "
                f"must be N x D with one row per image: save features.T instead."
            )
        raise UserError(
            f"{path}: 'features' has {feats.shape[0]} rows but res101.mat has {n} images: "
            f"extract this view for exactly the images of res101.mat, in the same order."
        )
    return _finite(np.ascontiguousarray(feats, dtype=np.float32), path)


def _matrix(arr: np.ndarray, path: Path) -> np.ndarray:
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.number) or min(arr.shape) == 0:
        raise UserError(f"{path}: 'features' must be a non-empty numeric 2-D matrix, got shape {arr.shape}: use the original file.")
    if np.issubdtype(arr.dtype, np.complexfloating):
        raise UserError(f"{path}: 'features' holds complex numbers ({arr.dtype}): save the real-valued features.")
    if not np.issubdtype(arr.dtype, np.floating):
        raise UserError(f"{path}: 'features' holds integers ({arr.dtype}), not CNN features (quantised or label "
                        "data?): save the floating-point features.")
    return arr


def _finite(feats: np.ndarray, path: Path) -> np.ndarray:
    bad = ~np.isfinite(feats)
    if bad.any():
        row = int(np.argwhere(bad)[0][0])
        raise UserError(
            f"{path}: 'features' contains {int(bad.sum())} NaN/inf values (first in image {row + 1}): "
            f"re-extract the features for those images."
        )
    if feats.shape[0] > 1 and np.all(feats.max(axis=0) == feats.min(axis=0)):
        raise UserError(f"{path}: 'features' are the same for every image (constant): re-extract the features.")
    return feats


def _integer_vector(arr: np.ndarray, path: Path, name: str) -> np.ndarray:
    """A numeric N x 1 (or 1 x N) array of whole numbers as an int64 vector [N]."""
    if arr.size == 0:
        raise UserError(f"{path}: '{name}' is empty: use a file that lists at least one image.")
    if not np.issubdtype(arr.dtype, np.number) or (arr.ndim == 2 and min(arr.shape) != 1) or arr.ndim > 2:
        raise UserError(f"{path}: '{name}' must be a numeric n x 1 vector, got shape {arr.shape}: use the original file.")
    flat = arr.reshape(-1)
    as_int = flat.astype(np.int64)
    if not np.array_equal(as_int, flat):
        raise UserError(f"{path}: '{name}' contains non-integer values: it must hold whole 1-based numbers.")
    return as_int


def _indices(arr: np.ndarray, path: Path, name: str, n: int, universe: str = "images in res101.mat") -> np.ndarray:
    """A 1-based index vector into ``n`` items (``universe`` names them), checked, as 0-based int64."""
    idx = _integer_vector(arr, path, name)
    if idx.min() < 1:
        raise UserError(
            f"{path}: '{name}' contains index {idx.min()} but xlsa17 indices are 1-based (1..{n}): add 1 to a 0-based index list."
        )
    if idx.max() > n:
        raise UserError(
            f"{path}: '{name}' refers to item {idx.max()} but there are only {n} {universe}: "
            f"use the split file that belongs to this res101.mat."
        )
    if np.unique(idx).size != idx.size:
        raise UserError(f"{path}: '{name}' lists some images more than once: use the original split file.")
    return idx - 1


def _class_names(sem: dict, path: Path) -> list[str]:
    raw = get_field(sem, "allclasses_names", path).reshape(-1)
    names = [str(np.asarray(item).reshape(-1)[0]) if np.asarray(item).size else "" for item in raw]
    seen, dup = set(), None
    for name in names:
        if name in seen and name:
            dup = name
            break
        seen.add(name)
    if dup is not None:
        raise UserError(f"{path}: 'allclasses_names' lists class '{dup}' twice: each class needs one column; use the "
                        "original xlsa17 file.")
    return names


def _class_embedding(sem: dict, path: Path, kind: str, k: int) -> np.ndarray:
    """[K, A] float32: 'sent' = att as-is, 'original_att' raw, 'att' = L2-normalised original_att rows."""
    source = "att" if kind == "sent" else "original_att"
    mat = get_field(sem, source, path)
    if mat.dtype == object:
        raise UserError(f"{path}: '{source}' is stored as a cell array, not a numeric A x {k} matrix: save it as a "
                        "numeric matrix (cell2mat in MATLAB).")
    if not np.issubdtype(mat.dtype, np.number) or np.issubdtype(mat.dtype, np.complexfloating):
        raise UserError(f"{path}: '{source}' holds {mat.dtype} values, not real numbers: save it as a numeric "
                        f"A x {k} matrix.")
    if mat.ndim != 2 or mat.shape[1] != k:
        raise UserError(
            f"{path}: '{source}' has shape {mat.shape} but must be A x {k} (one column per class in allclasses_names): "
            f"use the original xlsa17 file."
        )
    emb = np.ascontiguousarray(mat.T, dtype=np.float64)
    if not np.isfinite(emb).all():
        raise UserError(f"{path}: '{source}' contains NaN/inf values: use the original xlsa17 file.")
    if kind == "att":
        norms = np.linalg.norm(emb, axis=1, keepdims=True)
        emb = emb / np.where(norms > 0, norms, 1.0)
    return emb.astype(np.float32)


def _check_labels(labels: np.ndarray, k: int, path: Path) -> None:
    if labels.min() < 0:
        raise UserError(f"{path}: 'labels' contains 0 but xlsa17 labels are 1-based class positions (1..{k}): add 1 to the labels.")
    if labels.max() >= k:
        raise UserError(
            f"{path}: 'labels' contains class {labels.max() + 1} but att_splits.mat lists only {k} classes: "
            f"use the res101.mat and att_splits.mat of the same dataset."
        )


def _check_splits(locs: dict[str, np.ndarray], labels: np.ndarray, path: Path) -> None:
    """Non-empty index sets, disjoint image sets, seen/unseen class sets disjoint."""
    for name, idx in locs.items():
        if idx.size == 0:
            raise UserError(f"{path}: '{name}' is empty: use the original xlsa17 split file.")
    for a, b in (("trainval_loc", "test_seen_loc"), ("trainval_loc", "test_unseen_loc"), ("test_seen_loc", "test_unseen_loc")):
        both = np.intersect1d(locs[a], locs[b])
        if both.size:
            raise UserError(f"{path}: '{a}' and '{b}' share {both.size} images (first: {both[0] + 1}): they must be disjoint.")
    seen = np.unique(labels[locs["trainval_loc"]])
    unseen = np.unique(labels[locs["test_unseen_loc"]])
    common = np.intersect1d(seen, unseen)
    if common.size:
        raise UserError(
            f"{path}: {common.size} classes (first: class {common[0] + 1}) appear both in trainval_loc (seen) and "
            f"test_unseen_loc (unseen): use the split file that belongs to this res101.mat."
        )
    if "train_loc" in locs and "val_loc" in locs:
        both = np.intersect1d(np.unique(labels[locs["train_loc"]]), np.unique(labels[locs["val_loc"]]))
        if both.size:
            raise UserError(f"{path}: train_loc and val_loc share class {both[0] + 1} ({both.size} in all), but the "
                            "validation protocol holds val classes out as unseen: use the original split file.")
    stray = np.setdiff1d(np.unique(labels[locs["test_seen_loc"]]), seen)
    if stray.size:
        raise UserError(f"{path}: test_seen_loc holds images of class {stray[0] + 1}, which has no trainval image: use the original split file.")


def _read_percent(folder: Path, percent: int, n_trainval: int) -> np.ndarray | None:
    """0-based positions into trainval kept by split_{percent}percent.mat, or None for 100 %."""
    if percent == 100:
        return None
    path = folder / f"split_{percent}percent.mat"
    if not path.is_file():
        raise UserError(f"missing file {path}: add the xlsa17 split_{percent}percent.mat or use split_percent 100.")
    return _indices(get_field(load_mat(path), "trainval_loc", path), path, "trainval_loc", n_trainval, "trainval images")
