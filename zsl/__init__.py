"""zsl: a zero-shot-learning library (data, diffusion, models, evaluation).

Usable on its own; it never imports Ray or Optuna (those live in ``hpo/``).
"""

from zsl.errors import UserError

__all__ = ["UserError"]
