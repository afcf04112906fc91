"""ESZSL: closed form against hand computation, gradient solver converging to it, accuracy on the sims."""

import dataclasses

import numpy as np
import pytest
import torch

from data_fixtures import sim_cache  # noqa: F401 (fixture)
from zsl.data import load_dataset
from zsl.models import make_config
from zsl.models.eszsl import ESZSL, Config, closed_form, objective


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny matmuls: threads only add hand-off cost


def _cfg(**overrides):
    return {**dataclasses.asdict(Config()), **overrides}


def test_closed_form_matches_numpy_formula_and_zeroes_gradient():
    rng = np.random.default_rng(0)
    x, s = rng.random((30, 6)), rng.random((4, 5))
    y = -np.ones((30, 4))
    y[np.arange(30), rng.integers(0, 4, 30)] = 1.0
    gamma, lam = 0.7, 0.3
    expected = np.linalg.inv(x.T @ x + gamma * np.eye(6)) @ x.T @ y @ s @ np.linalg.inv(s.T @ s + lam * np.eye(5))
    xt, yt, st = (torch.tensor(a) for a in (x, y, s))
    v = closed_form(xt.T @ xt, xt.T @ yt @ st, st.T @ st, gamma, lam)
    np.testing.assert_allclose(v.numpy(), expected, rtol=1e-8, atol=1e-10)
    v = v.clone().requires_grad_(True)
    objective(xt, yt, st, v, gamma, lam).backward()
    assert v.grad.abs().max().item() < 1e-8                               # stationary point of the objective


@pytest.fixture(scope="module")
def sims(sim_cache):
    return {
        (name, protocol): load_dataset(name, protocol=protocol, cache_dir=sim_cache)
        for name in ("sim-AWA2", "sim-CUB", "sim-SUN") for protocol in ("validation", "final")
    }


def test_gradient_solver_converges_to_closed_form(sims):
    data = sims[("sim-AWA2", "validation")]
    exact = ESZSL(_cfg(), data)
    exact.train_epoch()
    model = ESZSL(_cfg(solver="gradient", epochs=20, steps_per_epoch=50), data)
    losses, errors = [], []
    for _ in range(model.epochs_total):
        losses.append(model.train_epoch()["loss"])
        errors.append(((model.v - exact.v).norm() / exact.v.norm()).item())
    assert model.epoch == 20
    assert errors[-1] < 0.1 and errors[-1] < errors[4] < errors[0]
    assert losses[-1] == pytest.approx(exact.train_epoch()["loss"], rel=1e-3)
    assert abs(model.evaluate()["ZSL"] - exact.evaluate()["ZSL"]) < 3.0


def test_gram_form_loss_equals_explicit_objective(sims):
    data = sims[("sim-AWA2", "final")]
    model = ESZSL(_cfg(solver="gradient", steps_per_epoch=5), data)
    loss = model.train_epoch()["loss"]
    x = torch.as_tensor(data.train_x, dtype=torch.float64)
    seen = torch.as_tensor(data.seen_classes)
    y = torch.zeros(x.shape[0], seen.numel(), dtype=torch.float64)
    y[torch.arange(x.shape[0]), torch.searchsorted(seen, torch.as_tensor(data.train_y))] = 1.0
    s = torch.as_tensor(data.class_emb, dtype=torch.float64)[seen]
    explicit = objective(x, y, s, model.v, model.cfg.gamma, model.cfg.lam).item() / x.shape[0]
    assert loss == pytest.approx(explicit, rel=1e-9)


@pytest.mark.parametrize("name", ["sim-AWA2", "sim-CUB", "sim-SUN"])
@pytest.mark.parametrize("protocol", ["validation", "final"])
def test_eszsl_well_above_chance_and_below_perfect_on_sims(sims, name, protocol):
    data = sims[(name, protocol)]
    model = ESZSL(make_config("eszsl", "default", name), data, device="cpu", seed=0)
    model.train_epoch()
    result = model.evaluate()
    chance = 100.0 / data.unseen_classes.size
    assert 3 * chance < result["ZSL"] < 90.0
    assert 0.0 < result["U"] < result["S"] <= 100.0
    assert result["H"] == pytest.approx(2 * result["S"] * result["U"] / (result["S"] + result["U"]))


def test_bad_hyperparameter_is_a_user_error(sims):
    from zsl.errors import UserError

    with pytest.raises(UserError, match="'gamma'"):
        ESZSL(_cfg(gamma=0.0), sims[("sim-AWA2", "final")])
    with pytest.raises(UserError, match="'solver'"):
        ESZSL(_cfg(solver="sgd"), sims[("sim-AWA2", "final")])
