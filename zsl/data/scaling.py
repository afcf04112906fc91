"""Per-dimension MinMax scaling (spec d2sc.md §1.4), as pure functions."""

from __future__ import annotations

import numpy as np


def fit_minmax(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(low [D], span [D]) of ``rows`` [n, D]; a constant dimension gets span 1 (like sklearn)."""
    low = rows.min(axis=0)
    span = rows.max(axis=0) - low
    return low, np.where(span > 0, span, 1.0).astype(rows.dtype)


def apply_minmax(x: np.ndarray, low: np.ndarray, span: np.ndarray) -> np.ndarray:
    """(x - low) / span as float32 [n, D]; the fitted rows land in [0, 1], other rows may leave it."""
    return ((x - low) / span).astype(np.float32)
