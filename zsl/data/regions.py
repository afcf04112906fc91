"""Per-image region features of a dataset folder: the input contract of region models (SOVR, spec dkgzsl.md §2).

A dataset folder in the xlsa17 layout may hold, beside ``res101.mat``, any number of region-feature sets, each
named by a tag (letters, digits, ``.``, ``_``, ``-``)::

    regions_<tag>.npy    [N, 1 + R, D] float16; row i = image i of res101.mat (the same N and order as its
                         'labels'); token 0 is the global token (ViT CLS, or the ResNet map's global average),
                         tokens 1..R are the g x g grid cells in row-major order (R = g * g).
    regions_<tag>.json   the sidecar (below).

The sidecar names how the tokens were made and ties them to res101.mat's image order::

    {"format": 1, "tag": "vit_b16", "backbone": "vit_base_patch16_224", "layer": "last_hidden_state",
     "input_size": 224, "grid": 14, "dim": 768, "dtype": "float16", "n_images": 37322,
     "global_token": "cls", "labels_sha256": "<hex>", ...any further keys (weights, tool, note)...}

``labels_sha256`` is the SHA-256 of res101.mat's ``labels`` as they are stored (1-based class numbers), cast to
little-endian int64, in file order (:func:`labels_sha256`): a region file whose rows follow another image order
(or another dataset) fails it even when N agrees.

:func:`read_regions` opens the array memory-mapped (``np.load(mmap_mode="r")``; nothing is read into memory but
a sample of rows checked for NaN/inf) and raises :class:`zsl.errors.UserError`, one sentence naming the file and
the fix, for each defect.  :func:`create_region_file` / :func:`write_sidecar` are the writing side used by
zsl.data.simulated_regions and the tools in ``tools/``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from zsl.data.matfile import get_field, load_mat
from zsl.errors import UserError

REGIONS_FORMAT = 1
DTYPE = "float16"
TAG_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
SIDECAR_KEYS = ("format", "tag", "backbone", "layer", "input_size", "grid", "dim", "dtype", "n_images",
                "global_token", "labels_sha256")
FINITE_SAMPLE = 256   # rows checked for NaN/inf when a region file is opened (evenly spaced, first and last included)
FIXERS = "tools/extract_regions.py (from the images) or tools/convert_hdf5_regions.py (from an hdf5 feature file)"


def labels_sha256(labels_1based: np.ndarray) -> str:
    """SHA-256 (hex) of res101.mat's labels [N] (1-based, file order) as little-endian int64 bytes."""
    return hashlib.sha256(np.ascontiguousarray(np.asarray(labels_1based).reshape(-1), dtype="<i8").tobytes()).hexdigest()


def check_tag(tag: str) -> str:
    """``tag`` if it can name a region file, else UserError."""
    if not isinstance(tag, str) or not TAG_RE.match(tag):
        raise UserError(f"region tag {tag!r} cannot name a file regions_<tag>.npy: use 1-64 letters, digits, '.', '_' "
                        f"or '-' (e.g. vit_b16).")
    return tag


def region_paths(folder: str | os.PathLike, tag: str) -> tuple[Path, Path]:
    """(``<folder>/regions_<tag>.npy``, ``<folder>/regions_<tag>.json``)."""
    check_tag(tag)
    folder = Path(folder)
    return folder / f"regions_{tag}.npy", folder / f"regions_{tag}.json"


def make_sidecar(tag: str, *, backbone: str, layer: str, input_size: int | None, grid: int, dim: int, n_images: int,
                 global_token: str, labels_sha: str, **extra) -> dict:
    """The sidecar dict of a region file (keys of the module docstring; ``extra`` keys are kept as provenance)."""
    return {"format": REGIONS_FORMAT, "tag": check_tag(tag), "backbone": backbone, "layer": layer,
            "input_size": input_size, "grid": int(grid), "dim": int(dim), "dtype": DTYPE, "n_images": int(n_images),
            "global_token": global_token, "labels_sha256": labels_sha, **extra}


def write_sidecar(path: str | os.PathLike, meta: dict) -> None:
    """Write the sidecar ``meta`` to ``path`` atomically (temporary file, then rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(meta, indent=1, sort_keys=True))
    os.replace(tmp, path)


def create_region_file(path: str | os.PathLike, n_images: int, grid: int, dim: int) -> np.memmap:
    """A new writable memory-mapped .npy [n_images, 1 + grid², dim] float16 at ``path`` (zero-filled)."""
    return np.lib.format.open_memmap(Path(path), mode="w+", dtype=np.float16, shape=(n_images, 1 + grid * grid, dim))


@dataclass
class RegionFeatures:
    """An opened, validated region file.  ``tokens`` is the read-only memory map [N, 1 + R, D] float16."""

    path: Path
    sidecar_path: Path
    tokens: np.ndarray
    meta: dict = field(default_factory=dict)

    @property
    def tag(self) -> str:
        return str(self.meta["tag"])

    @property
    def n_images(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def grid(self) -> int:
        return int(self.meta["grid"])

    @property
    def n_regions(self) -> int:
        """R = g²."""
        return int(self.tokens.shape[1]) - 1

    @property
    def dim(self) -> int:
        return int(self.tokens.shape[2])

    def rows(self, rows: np.ndarray) -> np.ndarray:
        """Tokens of images ``rows`` [n] as float32 [n, 1 + R, D] (read in ascending order, returned in ``rows``' order)."""
        rows = np.asarray(rows, dtype=np.int64)
        order = np.argsort(rows, kind="stable")
        out = np.empty((rows.size,) + self.tokens.shape[1:], dtype=np.float32)
        out[order] = self.tokens[rows[order]]
        return out

    def mean_pooled(self, rows: np.ndarray, chunk: int = 4096) -> np.ndarray:
        """Plain average pooling: the mean of the R region tokens (global token excluded), float32 [n, D]."""
        rows = np.asarray(rows, dtype=np.int64)
        return np.concatenate([self.rows(rows[i:i + chunk])[:, 1:].mean(axis=1) for i in range(0, rows.size, chunk)]
                              or [np.empty((0, self.dim), np.float32)])

    def global_token(self, rows: np.ndarray) -> np.ndarray:
        """Token 0 (the global token) of images ``rows``, float32 [n, D]."""
        rows = np.asarray(rows, dtype=np.int64)
        order = np.argsort(rows, kind="stable")
        out = np.empty((rows.size, self.dim), dtype=np.float32)
        out[order] = self.tokens[rows[order], 0]
        return out

    def identity(self) -> dict:
        """What the file's contents are, for cache keys: the sidecar, the array's byte size and a SHA-256 of
        sampled 1 MiB blocks (start, middle, end) -- cheap on a multi-GB file, changed by any re-extraction."""
        size = self.path.stat().st_size
        digest = hashlib.sha256()
        block = 1 << 20
        with open(self.path, "rb") as fh:
            for start in sorted({0, max(0, size // 2 - block // 2), max(0, size - block)}):
                fh.seek(start)
                digest.update(fh.read(block))
        return {"sidecar": self.meta, "bytes": size, "sample_sha256": digest.hexdigest()}


def read_regions(folder: str | os.PathLike, tag: str, labels_1based: np.ndarray | None = None,
                 sample: int = FINITE_SAMPLE) -> RegionFeatures:
    """Open and validate ``<folder>/regions_<tag>.npy`` against its sidecar and res101.mat's labels.

    labels_1based: res101.mat's 'labels' [N] as stored (read from ``<folder>/res101.mat`` when None).
    sample: rows checked for NaN/inf (evenly spaced).  Raises UserError naming the file and the fix.
    """
    npy, side = region_paths(folder, tag)
    res_path = Path(folder) / "res101.mat"
    if not npy.is_file():
        present = sorted(p.name[len("regions_"):-len(".npy")] for p in Path(folder).glob("regions_*.npy"))
        listed = f" (tags present: {', '.join(present)})" if present else ""
        raise UserError(f"missing region file {npy}{listed}: write it with {FIXERS}, or pick a present tag.")
    if not side.is_file():
        raise UserError(f"{npy} has no sidecar {side.name}: re-run the tool that wrote it ({FIXERS}), which writes both.")
    meta = _read_sidecar(side, tag)
    tokens = _open_array(npy)
    if labels_1based is None:
        labels_1based = get_field(load_mat(res_path), "labels", res_path)
    labels_1based = np.asarray(labels_1based).reshape(-1)
    _check_shape(tokens, meta, npy, side, res_path, labels_1based.size)
    if meta["labels_sha256"] != labels_sha256(labels_1based):
        raise UserError(f"{npy}: the labels hash in {side.name} differs from {res_path}'s labels, so its rows follow "
                        f"another image order (or dataset): re-extract in res101.mat's image_files order, or reorder "
                        f"with tools/convert_hdf5_regions.py.")
    _check_finite(tokens, npy, sample)
    return RegionFeatures(path=npy, sidecar_path=side, tokens=tokens, meta=meta)


def _read_sidecar(side: Path, tag: str) -> dict:
    try:
        meta = json.loads(side.read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"{side} is not readable JSON ({type(err).__name__}): re-run the tool that wrote the region "
                        f"file to rewrite it.") from None
    if not isinstance(meta, dict):
        raise UserError(f"{side} must hold a JSON object (the region file's sidecar): re-run the tool that wrote it.")
    missing = [key for key in SIDECAR_KEYS if key not in meta]
    if missing:
        raise UserError(f"{side} lacks '{missing[0]}' ({len(missing)} required keys missing): re-run the tool that "
                        f"wrote the region file, which writes every key ({', '.join(SIDECAR_KEYS)}).")
    if meta["format"] != REGIONS_FORMAT:
        raise UserError(f"{side} is region format {meta['format']!r}, but this version reads format {REGIONS_FORMAT}: "
                        f"re-run the tool of this version.")
    if meta["tag"] != tag:
        raise UserError(f"{side} names tag {meta['tag']!r} but the file is regions_{tag}: rename the pair of files "
                        f"or fix 'tag' in the sidecar.")
    if meta["dtype"] != DTYPE:
        raise UserError(f"{side} says dtype {meta['dtype']!r} but region files are float16: convert the array with "
                        f"arr.astype(np.float16) and set 'dtype' to \"float16\".")
    for key in ("grid", "dim", "n_images"):
        if not isinstance(meta[key], int) or isinstance(meta[key], bool) or meta[key] < 1:
            raise UserError(f"{side}: '{key}' must be a positive integer, got {meta[key]!r}: fix the sidecar.")
    return meta


def _open_array(npy: Path) -> np.ndarray:
    try:
        return np.load(npy, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise UserError(f"{npy} is not a readable .npy array ({type(err).__name__}; truncated or not written by "
                        f"np.save?): re-extract it with {FIXERS}.") from None


def _check_shape(tokens: np.ndarray, meta: dict, npy: Path, side: Path, res_path: Path, n_labels: int) -> None:
    if tokens.ndim != 3 or min(tokens.shape) == 0:
        raise UserError(f"{npy} has shape {tokens.shape} but a region file is [N, 1 + R, D] (images, global token plus "
                        f"g x g regions, channels): re-extract it with {FIXERS}.")
    if tokens.dtype != np.float16:
        raise UserError(f"{npy} stores {tokens.dtype} but region files are float16: save arr.astype(np.float16) "
                        f"instead.")
    n, n_tokens, dim = tokens.shape
    if n != n_labels:
        raise UserError(f"{npy} has {n} images but {res_path} has {n_labels} labels: extract regions for exactly the "
                        f"images of res101.mat, in its order.")
    if n != meta["n_images"]:
        raise UserError(f"{npy} has {n} images but {side.name} says {meta['n_images']}: the pair comes from different "
                        f"runs; re-run the tool that wrote them.")
    regions = n_tokens - 1
    grid = math.isqrt(regions) if regions > 0 else 0
    if grid < 1 or grid * grid != regions:
        raise UserError(f"{npy} has {regions} regions per image after the global token, not a square grid g x g: "
                        f"store the global token plus every cell of the feature map, row-major.")
    if grid != meta["grid"]:
        raise UserError(f"{npy} holds a {grid} x {grid} grid but {side.name} says grid {meta['grid']}: fix 'grid' "
                        f"in the sidecar or re-extract.")
    if dim != meta["dim"]:
        raise UserError(f"{npy} has {dim} channels per token but {side.name} says dim {meta['dim']}: fix 'dim' in "
                        f"the sidecar or re-extract.")


def _check_finite(tokens: np.ndarray, npy: Path, sample: int) -> None:
    n = tokens.shape[0]
    rows = np.unique(np.linspace(0, n - 1, num=min(n, max(2, sample))).round().astype(np.int64))
    bad = ~np.isfinite(np.asarray(tokens[rows]))
    if bad.any():
        first = int(rows[np.argwhere(bad)[0][0]])
        raise UserError(f"{npy} holds NaN/inf values (first seen in image {first + 1} of a {rows.size}-row sample): "
                        f"re-extract those images (float16 overflows above 65504: scale the features or check the "
                        f"backbone).")
