"""``load_dataset``: name + protocol -> a scaled, split :class:`ZSLData` (the library's data entry point)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from zsl.data.protocols import Split, check_protocol, make_split
from zsl.data.scaling import apply_minmax, fit_minmax
from zsl.data.simulated import ensure_simulated
from zsl.data.types import ZSLData
from zsl.data.xlsa17 import EXPECTED_ATT_DIM, REAL_DATASETS, Xlsa17, read_xlsa17
from zsl.errors import UserError

SIM_PREFIX = "sim-"
PROTOCOL_NOTES = {
    "validation": "validation split carved from trainval only; no test image is used",
    "final": "trainval -> test_seen/test_unseen; report once, never select on it",
    "reference": "trainval -> test_seen/test_unseen with selection on the test split allowed (published practice; optimistic)",
}
DATASET_NAMES = REAL_DATASETS + tuple(SIM_PREFIX + d for d in REAL_DATASETS)


def resolve_folder(name: str, data_root=None, seed: int = 0, scale: str = "small", cache_dir=None) -> tuple[Path, str]:
    """(dataset folder, base name): the user's ``<data_root>/<name>`` or the generated simulated one.

    A real dataset is any folder under ``data_root`` in the xlsa17 layout: AWA1, AWA2, APY, CUB, SUN and FLO
    have their class-embedding dimension checked too (zsl.data.xlsa17.EXPECTED_ATT_DIM); other names
    (e.g. your own ViT features) are checked by structure alone.
    """
    if name.startswith(SIM_PREFIX):
        base = name[len(SIM_PREFIX):]
        if base not in REAL_DATASETS:
            raise UserError(f"unknown dataset '{name}': simulated ones are {', '.join(SIM_PREFIX + d for d in REAL_DATASETS)}.")
        return ensure_simulated(base, scale=scale, seed=seed, cache_dir=cache_dir) / base, base
    if not name or name in (".", "..") or "/" in name or "\\" in name:
        raise UserError(f"dataset '{name}' is not a folder name: pass --dataset NAME for <data root>/NAME "
                        f"(e.g. {', '.join(sorted(EXPECTED_ATT_DIM))}).")
    if data_root is None:
        hint = f" or use 'sim-{name}'" if name in REAL_DATASETS else ""
        raise UserError(f"dataset '{name}' needs real features: pass --data-root (the xlsa17 data folder){hint}.")
    root = Path(data_root).expanduser()
    if not root.is_dir():
        raise UserError(f"data root {root} does not exist: pass --data-root pointing at the xlsa17 data folder.")
    if not (root / name).is_dir():
        found = sorted(p.name for p in root.iterdir() if p.is_dir() and (p / "att_splits.mat").is_file())
        raise UserError(f"no dataset folder {root / name}: datasets under {root} are "
                        f"{', '.join(found) or 'none (no <NAME>/att_splits.mat)'}; check --dataset and --data-root.")
    return root / name, name


def read_named(name: str, data_root=None, seed: int = 0, scale: str = "small", class_embedding=None,
               split_percent: int = 100, cache_dir=None, att_dim: int | None = None) -> Xlsa17:
    """The validated raw files of dataset ``name`` (simulated ones generated on demand)."""
    folder, base = resolve_folder(name, data_root, seed, scale, cache_dir)
    return read_xlsa17(folder, base, class_embedding or "att", split_percent, att_dim)


def load_dataset(
    name: str,
    data_root: str | os.PathLike | None = None,
    protocol: str = "validation",
    seed: int = 0,
    scale: str = "small",
    class_embedding: str | None = None,
    split_percent: int = 100,
    cache_dir: str | os.PathLike | None = None,
    *,
    scaler_fit: str = "train_rows",
) -> ZSLData:
    """Dataset ``name`` split by ``protocol`` and MinMax-scaled on its training rows.

    name: a folder under ``data_root`` in the xlsa17 layout (AWA1, AWA2, APY, CUB, SUN, FLO, or any other) or
    "sim-AWA2" | "sim-CUB" | "sim-SUN" (generated at ``scale`` "small" | "full" with ``seed``,
    cached under ``cache_dir``; ``data_root`` is ignored).  protocol: "validation" | "final" |
    "reference" (see zsl.data.protocols).  class_embedding: "att" (default; L2-normalised
    original_att) | "original_att" | "sent" (CUB).  split_percent: 100 | 30 | 10.
    scaler_fit: "train_rows" fits the scaler on the training rows actually used (default);
    "full_trainval" reproduces the reference's fit on all training rows before split_percent subsetting.
    Seed: simulated world and validation holdout.  Raises UserError for bad input.
    """
    check_protocol(protocol)
    raw = read_named(name, data_root, seed, scale, class_embedding, split_percent, cache_dir)
    split = make_split(raw.labels, raw.locs, protocol, seed, raw.percent_positions, scaler_fit)
    return to_zsldata(raw, split, name, protocol, info={
        "seed": seed, "scale": scale if raw.simulated else None, "split_percent": split_percent, "scaler_fit": scaler_fit,
    })


def to_zsldata(raw: Xlsa17, split: Split, name: str, protocol: str, info: dict) -> ZSLData:
    """Assemble the ZSLData: rows of each set, views MinMax-scaled with the scaler fitted on split.scaler_rows."""
    views = {"x": _scaled(raw.x, split)}
    if raw.c is not None:
        views["c"] = _scaled(raw.c, split)
    sets = {"train": split.train, "eval_seen": split.eval_seen, "eval_unseen": split.eval_unseen}
    fields = {f"{s}_{v}": arr[idx] for s, idx in sets.items() for v, arr in views.items()}
    fields.update({f"{s}_y": raw.labels[idx] for s, idx in sets.items()})
    info = {
        **info, "sources": raw.sources, "class_embedding": raw.class_embedding,
        "sizes": {s: int(idx.size) for s, idx in sets.items()},
        "simulated_note": "SIMULATED features and labels; not a benchmark result." if raw.simulated else None,
        "protocol_note": PROTOCOL_NOTES[protocol],
    }
    return ZSLData(
        name=name, protocol=protocol, simulated=raw.simulated, class_names=list(raw.class_names),
        class_emb=raw.class_emb, seen_classes=split.seen_classes.astype(np.int64),
        unseen_classes=split.unseen_classes.astype(np.int64), info=info, **fields,
    )


def _scaled(view: np.ndarray, split: Split) -> np.ndarray:
    low, span = fit_minmax(view[split.scaler_rows])
    return apply_minmax(view, low, span)
