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
    - the epoch budget, owned by the model (class methods, on resolved configs):
      ``epochs_in(config) -> int`` is the run's epochs over all stages; ``with_epochs(config, n)``
      is ``config`` trained for ``n`` epochs in all (a multi-stage model decides how stages share them:
      D2SC splits them in the proportion of its stages). A cap (``zsl.run.resolve_config``) applies
      ``with_epochs`` only when it is below ``epochs_in``.
    - stages (class methods, on resolved configs): ``stage_epochs(config)`` is ``{stage: epochs}`` in
      training order; ``scoring_stage(config)`` names the stage whose scores count (a search ranks and
      stops trials on it; the stages before it are a prefix whose cost counts and whose scores are
      reported under their own names). ``train_epoch()``'s ``stage`` key says which stage an epoch ran.
    - optional ``variant`` (str attribute): what a run actually is when it is not the full method (e.g. an
      ablation forced by the data); ``zsl.train`` prints it and saves it in results.json, and a model that has
      one also returns it as ``evaluate()``'s ``variant`` so that every saved evaluation carries it.
    """

    epochs_total: int
    epoch: int

    @classmethod
    def epochs_in(cls, config: dict) -> int: ...

    @classmethod
    def with_epochs(cls, config: dict, n: int) -> dict: ...

    @classmethod
    def stage_epochs(cls, config: dict) -> dict[str, int]: ...

    @classmethod
    def scoring_stage(cls, config: dict) -> str: ...

    def __init__(self, config: dict, data: ZSLData, device: Any, seed: int) -> None: ...
    # A model whose class sets FUSES_SEEDS = True also takes a list of seeds: one fused run of those
    # members (evaluate() then returns the members' mean S/U/H/ZSL, <key>_sd and members).

    def train_epoch(self) -> dict: ...

    def evaluate(self) -> dict: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


class SingleStageEpochs:
    """The epoch budget and stage of a one-stage model whose config has an ``epochs`` field (a mixin).

    Its one stage is called ``STAGE`` (the ``stage`` its ``train_epoch`` reports; default "train").
    """

    STAGE = "train"

    @classmethod
    def stage_epochs(cls, config: dict) -> dict[str, int]:
        return {cls.STAGE: int(config["epochs"])}

    @classmethod
    def scoring_stage(cls, config: dict) -> str:
        return cls.STAGE

    @classmethod
    def epochs_in(cls, config: dict) -> int:
        """Epochs of a resolved ``config``."""
        return int(config["epochs"])

    @classmethod
    def with_epochs(cls, config: dict, n: int) -> dict:
        """``config`` trained for ``n`` epochs."""
        return {**config, "epochs": n}
