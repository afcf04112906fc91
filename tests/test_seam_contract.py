"""The seam contract, checked for every registered model through the run engine (zsl.run).

For each name in zsl.models.MODELS: the epoch budget (epochs_in / with_epochs) matches the trainer and
spans its stages in order; evaluate() returns S/U/H/ZSL in percent; a state_dict taken mid-run and loaded
into a fresh trainer (another seed) continues to the same losses and scores as an uninterrupted run, and
evaluate() does not perturb training; under the validation protocol no test image reaches the model.
A newly registered model fails here until it has an entry in TINY.
"""

import io

import numpy as np
import pytest
import torch

from data_fixtures import write_sentinel_tiny
from zsl.models import get_model, model_names
from zsl.run import Run, RunSpec, resolve_config

# name -> (preset, overrides): each model at toy size, a few seconds per run, several epochs (and stages).
TINY = {
    "eszsl": (None, {"solver": "gradient", "epochs": 4, "steps_per_epoch": 3}),
    "d2sc": (None, {"noise_dim": 8, "gen_hidden": 32, "ngh": 16, "ndh": 32, "drg_epochs": 2, "dfg_epochs": 2,
                    "batch_size": 16, "critic_iter": 2, "syn_num": 5, "syn_num_drg": 5, "classifier_epochs": 2}),
    "revcd": (None, {"hidden": 32, "time_dim": 16, "vis_tokens": 4, "vis_dim": 16, "vis_layers": 1, "vis_heads": 2,
                     "timesteps": 50, "sample_steps": 5, "batch_size": 16, "epochs": 4, "lr": 2e-3}),
    "dkgzsl": (None, {"hidden": 16, "batch_size": 8, "iters_per_pass": 2, "critic_iter": 2, "epochs": 4,
                      "lr": 1e-3, "feed_lr": 1e-4, "syn_num": 5, "classifier_epochs": 2}),
}

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """A tiny xlsa17 folder whose test images (test_seen, test_unseen) carry SENTINEL features."""
    root = tmp_path_factory.mktemp("contract")
    write_sentinel_tiny(root / "TINY")
    return str(root)


def _spec(model: str, root: str, seed: int = 0, epochs: int | None = None) -> RunSpec:
    preset, overrides = TINY[model]
    config = resolve_config(model, preset, "TINY", overrides, epochs=epochs)
    return RunSpec(model, "TINY", preset, "validation", seed, 0, "small", root, config)


def _roundtrip(state: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def _numbers(values: dict) -> dict:
    return {k: v for k, v in values.items() if isinstance(v, float) and "second" not in k and not k.endswith("_s")}


@pytest.mark.parametrize("model", model_names())
def test_epoch_budget_spans_the_stages(model, root):
    cls = get_model(model)
    spec = _spec(model, root, epochs=3)
    run = Run(spec)
    assert cls.epochs_in(spec.config) == run.epochs_total == 3
    stages = [run.train_epoch().get("stage") for _ in range(run.epochs_total)]
    assert run.epoch == 3
    seen = list(dict.fromkeys(stages))
    assert stages == sorted(stages, key=seen.index)  # each stage once, in one block, in order


@pytest.mark.parametrize("model", model_names())
def test_scores_and_resume_equivalence(model, root):
    straight = Run(_spec(model, root, seed=3))
    total = straight.epochs_total
    losses = [_numbers(straight.train_epoch()) for _ in range(total)]
    final = straight.evaluate()
    for key in ("S", "U", "H", "ZSL"):
        assert isinstance(final[key], float) and 0.0 <= final[key] <= 100.0, key

    first = Run(_spec(model, root, seed=3), data=straight.data)
    head = [_numbers(first.train_epoch()) for _ in range(total // 2)]
    first.evaluate()  # must not perturb the training stream
    torch.manual_seed(12345)  # nor may the caller's global RNG matter
    second = Run(_spec(model, root, seed=99), data=straight.data)  # its own seed is overwritten by the state
    second.load_state_dict(_roundtrip(first.state_dict()))
    tail = [_numbers(second.train_epoch()) for _ in range(total - total // 2)]
    assert second.epoch == total
    for got, want in zip(head + tail, losses):
        assert got.keys() == want.keys()
        for k in got:
            assert got[k] == pytest.approx(want[k], rel=1e-5, abs=1e-6), k
    resumed = second.evaluate()
    for key in ("S", "U", "H", "ZSL"):
        assert resumed[key] == pytest.approx(final[key], abs=1e-4), key


@pytest.mark.parametrize("model", model_names())
def test_no_test_image_reaches_a_model_under_validation(model, root):
    run = Run(_spec(model, root))
    data = run.data
    arrays = [data.train_x, data.eval_seen_x, data.eval_unseen_x]
    arrays += [a for a in (data.train_c, data.eval_seen_c, data.eval_unseen_c) if a is not None]
    assert max(float(np.abs(a).max()) for a in arrays) < 10.0  # a SENTINEL row would scale to ~1e6
    run.run_to_end()  # and the model trains and scores on what it was given
