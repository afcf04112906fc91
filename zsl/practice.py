"""What published practice would report for a run, measured beside the honest number.

Public generative-ZSL code reports the maximum over epochs of a test metric, at nested levels: the
evaluation classifier's best epoch on test, the generator's best epoch on test, and the best of
several classifier input views. :class:`PracticeView` scores a ``final``-protocol run's current
weights that way, on the same test split, through a twin run under the ``reference`` protocol (the
label under which selecting on test is allowed):

* ``practice/H``: the twin's evaluation of the main view with the classifier's best test epoch
  (models with a ``classifier_selection`` option; others are scored as they are);
* ``practice/H_view``: the best H over the model's views (keys ``H`` and ``H_<view>``).

The maximum over generator epochs is taken by whoever collects the per-epoch rows. The twin is built
before the run it watches and evaluates with its own random streams (every model's evaluation does),
so the watched run trains exactly as it would alone: its last-epoch ``final`` evaluation is the honest
number.
"""

from __future__ import annotations

from dataclasses import fields, replace

from zsl.data.types import ZSLData
from zsl.models import get_model
from zsl.run import Run, RunSpec

PRACTICE_PROTOCOL = "reference"


def practice_spec(spec: RunSpec) -> RunSpec:
    """``spec`` under the reference protocol, with the best-classifier-epoch rule where the model has one."""
    names = {f.name for f in fields(get_model(spec.model).Config)}
    config = dict(spec.config)
    if "classifier_selection" in names:
        config["classifier_selection"] = "best"
    return replace(spec, protocol=PRACTICE_PROTOCOL, config=config)


def best_view(scores: dict) -> tuple[float, str]:
    """(H, view) of the best view of one evaluation: ``H`` is the main view (named "main"), ``H_<view>`` others."""
    views = {"main": scores["H"]}
    views.update({k[2:]: v for k, v in scores.items()
                  if k.startswith("H_") and k != "H_sd" and isinstance(v, (int, float))})
    name = max(views, key=views.get)
    return float(views[name]), name


class PracticeView:
    """A twin of a final-protocol run that scores its weights as published practice does (module docstring).

    Build it *before* the run it watches (``Run`` seeds torch's global generator when it is built).
    ``data``: the watched run's ZSLData; the twin shares its arrays under the reference label.
    """

    def __init__(self, spec: RunSpec, device, threads: int | None, data: ZSLData):
        self.twin = Run(practice_spec(spec), device, threads, data=replace(data, protocol=PRACTICE_PROTOCOL))

    def scores(self, run: Run) -> dict:
        """``practice/H``, ``practice/S``, ``practice/U``, ``practice/ZSL`` and ``practice/H_view`` of ``run``'s
        current weights (percent)."""
        self.twin.trainer.load_state_dict(run.trainer.state_dict())
        scores = self.twin.evaluate()
        h_view, _ = best_view(scores)
        out = {f"practice/{k}": float(scores[k]) for k in ("S", "U", "H", "ZSL")}
        out["practice/H_view"] = h_view
        return out
