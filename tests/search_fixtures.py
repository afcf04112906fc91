"""Small ESZSL search spaces for end-to-end searches on a real local Ray (seconds per trial)."""

RANGE = "{type: float, low: 1.0e-2, high: 1.0e+2, log: true}"


def eszsl_space(epochs: int = 3, steps: int = 5, published: str = "{gamma: 1.0, lam: 0.1}", gamma: str = RANGE) -> str:
    """A space over ESZSL's gamma and lam (gradient solver, ``steps`` steps per epoch, ``epochs`` epochs)."""
    return (f"model: eszsl\npreset: small\nparams:\n  gamma: {gamma}\n  lam: {RANGE}\n"
            f"  solver: {{type: fixed, value: gradient}}\n  steps_per_epoch: {{type: fixed, value: {steps}}}\n"
            f"  epochs: {{type: fixed, value: {epochs}}}\npublished: {published}\n")
