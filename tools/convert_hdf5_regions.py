"""Convert an hdf5 region-feature file of related public code into ``regions_<tag>.npy`` + sidecar (zsl.data.regions).

Reads the layout MSDN / TransZero / DKGZSL distribute (DAZLE-style extraction scripts):

  feature_map      [N, C, g, g]  ResNet maps (e.g. 2048 x 14 x 14 at 448 px): token 0 is written as the map's
                                 global average (spec dkgzsl.md §9.3), tokens 1..g² the cells row-major; or
                   [N, 1 + g², D] ViT tokens (e.g. 197 x 768): written as they are, token 0 = CLS.
  labels           [N] class ids in att_splits.mat's class order, 0- or 1-based (detected).
  trainval_loc, test_seen_loc, test_unseen_loc   optional, 0- or 1-based row indices (detected).
  image_files      optional, the image path of each row.

Rows are put in res101.mat's order and checked against it: with ``image_files`` in both files rows are matched
by their last two path components (``<class folder>/<file>``); without them the hdf5 rows must already follow
res101.mat (same N, same labels in the same order), since images of one class cannot be told apart by labels.
The split indices, when present, must select the same images as the folder's att_splits.mat.  Every defect is
refused in one sentence.

    python tools/convert_hdf5_regions.py --hdf5 ~/feature_map_ResNet_101_CUB.hdf5 \\
        --dataset-folder ~/xlsa17/data/CUB --tag res101_448 --backbone "resnet101 (MSDN extraction)" --input-size 448

h5py is imported only here (pip install h5py); it is not a dependency of zsl-hpo.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from zsl.data.matfile import get_field, load_mat  # noqa: E402
from zsl.data.regions import labels_sha256, make_sidecar, region_paths, write_sidecar  # noqa: E402
from zsl.errors import EXIT_USER_ERROR, UserError  # noqa: E402

LOCS = ("trainval_loc", "test_seen_loc", "test_unseen_loc")
CHUNK = 256


def _strings(values) -> list[str]:
    out = []
    for v in np.asarray(values).reshape(-1):
        v = np.asarray(v).reshape(-1)[0] if isinstance(v, np.ndarray) else v
        out.append(v.decode() if isinstance(v, bytes) else str(v))
    return out


def _key(path: str) -> str:
    return "/".join(path.replace("\\", "/").split("/")[-2:])


def plan_order(h5_labels: np.ndarray, res_labels: np.ndarray, where: str, h5_files: list[str] | None = None,
               res_files: list[str] | None = None) -> np.ndarray:
    """order [N]: order[i] = the hdf5 row holding res101.mat's image i.  res_labels: 1-based as stored."""
    res_labels = np.asarray(res_labels).reshape(-1).astype(np.int64)
    labels = np.asarray(h5_labels).reshape(-1).astype(np.int64)
    if labels.min() == res_labels.min() - 1 and labels.max() == res_labels.max() - 1:
        labels = labels + 1                                                         # 0-based in the hdf5
    if h5_files is not None and res_files is not None:
        row_of = {_key(f): r for r, f in enumerate(h5_files)}
        missing = [f for f in res_files if _key(f) not in row_of]
        if missing:
            raise UserError(f"{where} has no row for {len(missing)} images of res101.mat (first: {missing[0]}): "
                            f"convert a file extracted from the same image list, or use tools/extract_regions.py.")
        order = np.array([row_of[_key(f)] for f in res_files], dtype=np.int64)
    elif labels.size == res_labels.size:
        order = np.arange(labels.size)
    else:
        raise UserError(f"{where} has {labels.size} rows but res101.mat has {res_labels.size} images and the file "
                        f"stores no image_files to match them by: re-extract with tools/extract_regions.py.")
    bad = np.flatnonzero(labels[order] != res_labels)
    if bad.size:
        how = "after matching image_files" if h5_files is not None and res_files is not None else "row by row"
        raise UserError(f"{where}: labels differ from res101.mat's {how} (first at image {bad[0] + 1}, {bad.size} in "
                        f"all), so its rows follow another order or dataset: re-extract with tools/extract_regions.py.")
    return order


def check_locs(h5_locs: dict, res_locs: dict, order: np.ndarray, where: str) -> None:
    """The hdf5's split indices (0- or 1-based hdf5 rows) select the same images as att_splits.mat's (1-based)."""
    image_of_row = np.empty_like(order)
    image_of_row[order] = np.arange(order.size)
    for name, idx in h5_locs.items():
        if name not in res_locs:
            continue
        want = np.sort(np.asarray(res_locs[name]).reshape(-1).astype(np.int64) - 1)
        idx = np.asarray(idx).reshape(-1).astype(np.int64)
        fits = [np.array_equal(np.sort(image_of_row[idx - base]), want) for base in (0, 1)
                if (idx - base).min() >= 0 and (idx - base).max() < order.size]
        if not any(fits):
            raise UserError(f"{where}: '{name}' selects other images than att_splits.mat's: convert the file that "
                            f"belongs to this xlsa17 split, or re-extract with tools/extract_regions.py.")


def to_tokens(block: np.ndarray) -> np.ndarray:
    """[n, C, g, g] maps -> [n, 1 + g², C] (token 0 = global average); [n, 1 + g², D] tokens pass through."""
    block = np.asarray(block, dtype=np.float32)
    if block.ndim == 4:
        cells = block.reshape(block.shape[0], block.shape[1], -1).transpose(0, 2, 1)
        return np.concatenate([cells.mean(axis=1, keepdims=True), cells], axis=1)
    return block


def convert(source, folder: Path, tag: str, where: str, meta: dict, chunk: int = CHUNK) -> Path:
    """Write ``<folder>/regions_<tag>.npy`` + sidecar from ``source`` (an h5py.File or a dict of arrays)."""
    folder = Path(folder)
    res_path = folder / "res101.mat"
    res = load_mat(res_path)
    res_labels = get_field(res, "labels", res_path).reshape(-1)
    for key in ("feature_map", "labels"):
        if key not in source:
            raise UserError(f"{where} has no '{key}' dataset (keys: {', '.join(sorted(source.keys()))}): convert a "
                            f"file in the MSDN/TransZero layout (feature_map, labels, *_loc).")
    fmap = source["feature_map"]
    shape = tuple(fmap.shape)
    if len(shape) == 4 and shape[2] == shape[3]:
        grid, dim, kind = shape[2], shape[1], "map"
    elif len(shape) == 3 and round((shape[1] - 1) ** 0.5) ** 2 == shape[1] - 1:
        grid, dim, kind = round((shape[1] - 1) ** 0.5), shape[2], "tokens"
    else:
        raise UserError(f"{where}: 'feature_map' has shape {shape}, neither [N, C, g, g] maps nor [N, 1 + g*g, D] "
                        f"tokens: convert a region-feature file, not pooled features.")
    h5_files = _strings(source["image_files"][()]) if "image_files" in source else None
    res_files = _strings(res["image_files"]) if "image_files" in res else None
    order = plan_order(np.asarray(source["labels"][()]), res_labels, where, h5_files, res_files)
    sem_path = folder / "att_splits.mat"
    if sem_path.is_file():
        sem = load_mat(sem_path)
        check_locs({k: np.asarray(source[k][()]) for k in LOCS if k in source},
                   {k: sem[k] for k in LOCS if k in sem}, order, where)
    npy, side = region_paths(folder, tag)
    partial = npy.with_name(npy.name + ".partial")
    out = np.lib.format.open_memmap(partial, mode="w+", dtype=np.float16, shape=(order.size, 1 + grid * grid, dim))
    for start in range(0, order.size, chunk):
        rows = order[start:start + chunk]
        sorted_rows, back = np.unique(rows, return_inverse=True)                     # hdf5 wants increasing indices
        block = to_tokens(fmap[sorted_rows])[back]
        peak = np.abs(block).max()
        if not np.isfinite(block).all() or peak > np.finfo(np.float16).max:
            raise UserError(f"{where}: rows for images {start + 1}..{start + rows.size} hold NaN/inf or values beyond "
                            f"float16's range (max {peak:.3g}): fix the source file.")
        out[start:start + rows.size] = block.astype(np.float16)
    out.flush()
    del out
    os.replace(partial, npy)
    write_sidecar(side, make_sidecar(
        tag, backbone=meta.get("backbone") or f"unknown (converted from {Path(where).name})",
        layer=meta.get("layer") or "as stored in feature_map", input_size=meta.get("input_size"), grid=grid, dim=dim,
        n_images=order.size, labels_sha=labels_sha256(res_labels),
        global_token="global average of the map (computed by the converter)" if kind == "map" else "cls (token 0 as stored)",
        source=str(where), tool="tools/convert_hdf5_regions.py", reordered=bool((order != np.arange(order.size)).any())))
    return npy


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Convert an MSDN/TransZero/DKGZSL hdf5 region-feature file into regions_<tag>.npy.")
    parser.add_argument("--hdf5", required=True)
    parser.add_argument("--dataset-folder", required=True, help="the xlsa17 folder holding res101.mat (written into)")
    parser.add_argument("--tag", required=True)
    parser.add_argument("--backbone", default=None, help="provenance for the sidecar, e.g. 'resnet101 (MSDN extraction)'")
    parser.add_argument("--layer", default=None)
    parser.add_argument("--input-size", type=int, default=None)
    args = parser.parse_args(argv)
    try:
        try:
            import h5py
        except ImportError:
            raise UserError("h5py is not installed: pip install h5py (only tools/convert_hdf5_regions.py needs it).") from None
        path = Path(args.hdf5).expanduser()
        if not path.is_file():
            raise UserError(f"hdf5 file {path} does not exist: pass --hdf5 the feature file to convert.")
        try:
            source = h5py.File(path, "r")
        except OSError as err:
            raise UserError(f"{path} is not a readable hdf5 file ({err}): pass an intact copy.") from None
        with source:
            npy = convert(source, Path(args.dataset_folder).expanduser(), args.tag, str(path),
                          {"backbone": args.backbone, "layer": args.layer, "input_size": args.input_size})
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    print(f"wrote {npy} and its sidecar")
    return 0


if __name__ == "__main__":
    sys.exit(main())
