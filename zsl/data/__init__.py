"""Data: the xlsa17 reader and validator, split protocols, simulated benchmarks.

Public entry point: ``load_dataset(name, data_root=None, protocol="validation", seed=0, ...)``
returning a :class:`ZSLData` (implemented in ``zsl.data.loading``).
"""

from zsl.data.loading import load_dataset
from zsl.data.types import ZSLData

__all__ = ["ZSLData", "load_dataset"]
