"""SOVR has to beat plain average pooling of the same region tokens (ESZSL, sim-AWA2, validation protocol).

Measured margins, SOVR minus mean pooling (data seed 0, SOVR seeds 0-2): 1101 steps H +8.7 to +13.9, ZSL +20.6
to +24.1; 300 steps (used here) H +8.4 to +13.2, ZSL +18.3 to +21.5.  The assertion keeps about half of the
smallest margin at data seed 0, seed 0.  The ZSL gain holds on data seed 1 too (+19 to +28); the H gain there
ranged from +0.5 to +9.7, so H is asserted on data seed 0 only.
"""

import numpy as np
import pytest

from data_fixtures import sim_cache  # noqa: F401 (fixture)
from zsl.models.eszsl import ESZSL
from zsl.refined import load_region_dataset, region_request

pytestmark = pytest.mark.usefixtures("one_thread")


def _eszsl(data) -> dict:
    model = ESZSL({}, data)
    model.train_epoch()
    return model.evaluate()


def test_sovr_beats_average_pooling_on_simulated_regions(sim_cache):
    base = {"region_tag": "sim-g4", "sovr_pre_iters": 300}
    scores = {kind: _eszsl(load_region_dataset("sim-AWA2", protocol="validation", seed=0, cache_dir=sim_cache,
                                               request=region_request({**base, "region_features": kind}),
                                               model_seed=0, device="cpu"))
              for kind in ("mean", "sovr")}
    mean, sovr = scores["mean"], scores["sovr"]
    assert sovr["ZSL"] >= mean["ZSL"] + 10.0, scores
    assert sovr["H"] >= mean["H"] + 4.0, scores
    assert all(np.isfinite(list(s.values())).all() for s in scores.values())
