"""Split protocols: which images train a model and which score it (pure index arithmetic).

- ``final``: train = trainval; eval = test_seen / test_unseen.
- ``reference``: the same split as ``final``; the label says that models may select on it
  (the published practice, spec d2sc.md §11 defect 1), so its numbers are optimistic.
- ``validation``: carved from trainval ONLY.  The xlsa17 ``val`` classes present in trainval
  play unseen (eval-unseen = their trainval images); the ``train`` classes play seen, and a
  stratified ``holdout`` fraction of their trainval images (seeded) is eval-seen.
  test_seen_loc / test_unseen_loc are never read.

``split_percent`` (§1.5) keeps only the given trainval positions as training rows.  The scaler is
fitted on the training rows actually used (``scaler_fit="train_rows"``, default); the reference
fitted it on all of the protocol's training rows before subsetting (``"full_trainval"``, defect 3).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from zsl.errors import UserError

PROTOCOLS = ("validation", "final", "reference")
SCALER_FITS = ("train_rows", "full_trainval")
HOLDOUT = 0.2


@dataclass(frozen=True)
class Split:
    """Image indices (0-based rows of the N images) and class ids (0-based) of one protocol."""

    train: np.ndarray           # [N_tr] int64
    eval_seen: np.ndarray       # [N_es] int64
    eval_unseen: np.ndarray     # [N_eu] int64
    seen_classes: np.ndarray    # [Ns] int64, sorted
    unseen_classes: np.ndarray  # [Nu] int64, sorted, disjoint from seen_classes
    scaler_rows: np.ndarray     # [N_fit] int64 rows the MinMax scaler is fitted on


def check_protocol(protocol: str) -> None:
    if protocol not in PROTOCOLS:
        raise UserError(f"unknown protocol '{protocol}': choose one of {', '.join(PROTOCOLS)}.")


def make_split(
    labels: np.ndarray,
    locs: dict[str, np.ndarray],
    protocol: str,
    seed: int = 0,
    percent_positions: np.ndarray | None = None,
    scaler_fit: str = "train_rows",
    holdout: float = HOLDOUT,
) -> Split:
    """The split of ``protocol``; labels [N] 0-based, locs 0-based (see zsl.data.xlsa17.Xlsa17).

    ``percent_positions``: positions into trainval_loc kept as training rows (split_percent), or None.
    Deterministic given ``seed`` (only the validation holdout is random).
    """
    check_protocol(protocol)
    if scaler_fit not in SCALER_FITS:
        raise UserError(f"unknown scaler_fit '{scaler_fit}': choose one of {', '.join(SCALER_FITS)}.")
    trainval = locs["trainval_loc"]
    kept = trainval if percent_positions is None else trainval[np.sort(percent_positions)]
    if protocol == "validation":
        full_train, eval_seen, eval_unseen = _validation_sets(labels, locs, seed, holdout)
    else:
        full_train, eval_seen, eval_unseen = trainval, locs["test_seen_loc"], locs["test_unseen_loc"]
    train = full_train[np.isin(full_train, kept)]
    if train.size == 0:
        raise UserError(f"the {protocol} protocol leaves no training image with this split_percent file: use a larger split_percent.")
    seen_classes = np.unique(labels[full_train])
    unseen_classes = np.unique(labels[eval_unseen])
    return Split(
        train=train, eval_seen=eval_seen, eval_unseen=eval_unseen,
        seen_classes=seen_classes, unseen_classes=unseen_classes,
        scaler_rows=train if scaler_fit == "train_rows" else full_train,
    )


def _validation_sets(labels: np.ndarray, locs: dict[str, np.ndarray], seed: int, holdout: float):
    """(train, eval_seen, eval_unseen) image indices, all drawn from trainval_loc only."""
    trainval = locs["trainval_loc"]
    missing = [name for name in ("train_loc", "val_loc") if name not in locs]
    if missing:
        raise UserError(f"att_splits.mat has no {' or '.join(missing)}, which the validation protocol needs to hold out "
                        "classes: use an xlsa17 copy that has them, or --protocol final (no selection) instead.")
    tv_labels = labels[trainval]
    val_classes = np.unique(labels[locs["val_loc"]])
    train_classes = np.setdiff1d(np.unique(labels[locs["train_loc"]]), val_classes)
    in_val = np.isin(tv_labels, val_classes)
    in_train = np.isin(tv_labels, train_classes)
    if not in_val.any():
        raise UserError("att_splits.mat: no trainval image belongs to a val_loc class, so no validation split can be built: use the original xlsa17 split file.")
    if not in_train.any():
        raise UserError("att_splits.mat: no trainval image belongs to a train_loc class, so no validation split can be built: use the original xlsa17 split file.")
    seen_rows = trainval[in_train]
    held = stratified_holdout(labels[seen_rows], holdout, seed)
    return seen_rows[~held], seen_rows[held], trainval[in_val]


def stratified_holdout(y: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask [n] holding out round(fraction * n_c) of each class's n_c items, seeded.

    Every class with at least 2 items keeps at least one item and holds out at least one.
    """
    rng = np.random.default_rng(seed)
    keys = rng.random(y.shape[0])
    order = np.lexsort((keys, y))                     # grouped by class, random within class
    sorted_y = y[order]
    starts = np.flatnonzero(np.r_[True, sorted_y[1:] != sorted_y[:-1]])
    counts = np.diff(np.r_[starts, sorted_y.size])
    rank = np.arange(sorted_y.size) - np.repeat(starts, counts)
    n_hold = np.clip(np.rint(fraction * counts), 1, counts - 1)
    n_hold = np.where(counts >= 2, n_hold, 0)
    mask = np.zeros(y.shape[0], dtype=bool)
    mask[order] = rank < np.repeat(n_hold, counts)
    return mask
