"""TensorBoard scalars of one single run (``python -m zsl.train``; searches log through Ray instead).

Tags: ``train/<stage>/<key>`` for every number ``train_epoch()`` returns (stages keep losses of
the same name apart), ``eval/<key>`` for every number ``evaluate()`` returns (S, U, H, ZSL, ...).
The step is the run's global epoch counter (1 = after the first epoch).
"""

from __future__ import annotations

import numbers
from pathlib import Path

from torch.utils.tensorboard import SummaryWriter


def numeric_items(values: dict) -> dict[str, float]:
    """The entries of ``values`` that are real numbers (not bools), as floats."""
    return {k: float(v) for k, v in values.items() if isinstance(v, numbers.Real) and not isinstance(v, bool)}


class RunLog:
    """Writes a run's scalars as TensorBoard event files under ``log_dir``.

    ``purge_step``: when resuming after epoch k, pass k + 1 so that TensorBoard drops events the
    interrupted run wrote after its last checkpoint.
    """

    def __init__(self, log_dir: str | Path, purge_step: int | None = None) -> None:
        self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)

    def train(self, epoch: int, stats: dict) -> None:
        """Numbers of one ``train_epoch()`` result under ``train/<stage>/``."""
        stage = str(stats.get("stage", "train"))
        for key, value in numeric_items(stats).items():
            self.writer.add_scalar(f"train/{stage}/{key}", value, epoch)

    def evaluation(self, epoch: int, metrics: dict) -> None:
        """Numbers of one ``evaluate()`` result under ``eval/``."""
        for key, value in numeric_items(metrics).items():
            self.writer.add_scalar(f"eval/{key}", value, epoch)
        self.writer.flush()

    def text(self, tag: str, text: str) -> None:
        self.writer.add_text(tag, text)

    def close(self) -> None:
        self.writer.close()
