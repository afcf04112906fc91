"""Reading MATLAB .mat files with user-facing errors (one sentence naming the file and the fix)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.io

from zsl.errors import UserError

_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


def load_mat(path: Path) -> dict:
    """All variables of the MATLAB (v5/v7) file ``path`` as a dict of numpy arrays.

    Raises UserError for a missing, truncated, non-MATLAB or MATLAB v7.3 (HDF5) file.
    """
    if not path.is_file():
        raise UserError(f"missing file {path}: put the xlsa17 file there (see zsl/data/xlsa17/README.md).")
    with open(path, "rb") as fh:
        head = fh.read(520)
    if b"MATLAB 7.3" in head[:128] or _HDF5_MAGIC in head:
        raise UserError(
            f"{path} is a MATLAB v7.3 (HDF5) file, which scipy cannot read: re-save it in MATLAB with save(..., '-v7')."
        )
    try:
        mat = scipy.io.loadmat(str(path))
    except Exception as err:  # scipy raises many types for damaged files; all mean the same to the user
        raise UserError(
            f"{path} is not a readable MATLAB .mat file ({type(err).__name__}): replace it with an intact copy."
        ) from None
    return mat


def get_field(mat: dict, name: str, path: Path) -> np.ndarray:
    """Variable ``name`` of a loaded .mat file, or UserError naming the file and the field."""
    if name not in mat:
        present = ", ".join(sorted(k for k in mat if not k.startswith("__"))) or "none"
        raise UserError(f"{path} has no field '{name}' (fields present: {present}): use the original xlsa17 file.")
    return mat[name]


def save_mat(path: Path, fields: dict) -> None:
    """Write ``fields`` as a MATLAB v5 file (uncompressed, fast to read back)."""
    scipy.io.savemat(str(path), fields, do_compression=False)
