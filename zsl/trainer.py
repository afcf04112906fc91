"""The model side of the zsl/hpo seam: what ``hpo/`` may call on any model.

A model is a class registered in :mod:`zsl.models`, built as
``Model(config: dict, data: ZSLData, device: str | torch.device, seed: int)``.
``hpo/`` sees nothing of a model but this protocol.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from zsl.data.types import ZSLData


@runtime_checkable
class Trainer(Protocol):
    """One training run of one model on one dataset.

    - ``epochs_total``: epochs of all stages together (one counter across stages, for schedulers).
    - ``epoch``: epochs finished so far (0 .. epochs_total).
    - ``train_epoch()``: runs one epoch of the current stage; returns losses and timings
      (plain floats; the key ``stage`` names the stage).
    - ``evaluate()``: scores the model on the data's evaluation sets (chosen by the protocol)
      and returns at least ``S``, ``U``, ``H`` (GZSL per-class mean accuracy, percent) and
      ``ZSL`` (unseen-only per-class mean accuracy, percent).
    - ``state_dict()`` / ``load_state_dict()``: everything needed to continue the run
      (nets, optimisers, RNG states, counters, adaptive coefficients).
    """

    epochs_total: int
    epoch: int

    def __init__(self, config: dict, data: ZSLData, device: Any, seed: int) -> None: ...

    def train_epoch(self) -> dict: ...

    def evaluate(self) -> dict: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...
