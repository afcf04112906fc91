"""The one exception type for mistakes a user can fix (bad file, flag or value).

Command-line entry points catch it, print its message (one sentence naming the
file/flag and the fix) and exit with code 2 -- never a traceback.
"""


class UserError(Exception):
    """A user-fixable error; ``str(err)`` is a single sentence naming the culprit and the fix."""


EXIT_USER_ERROR = 2


class DivergedError(RuntimeError):
    """A run produced a NaN/inf loss or metric: the setting is unstable (not retried: same seed, same result)."""


EXIT_DIVERGED = 3


def check_finite(where: str, epoch: int, values: dict) -> None:
    """Raise DivergedError naming the first NaN/inf float in ``values`` (losses or metrics of one epoch)."""
    import math

    for key, value in values.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise DivergedError(f"{where} diverged at epoch {epoch}: '{key}' is {value}; the setting is unstable.")
