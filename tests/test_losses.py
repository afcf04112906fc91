"""Loss terms of D2SC against hand computations."""

import math

import pytest
import torch

from zsl import losses


def test_interpolate_and_gradient_penalty():
    real, fake = torch.tensor([[1.0, 1.0], [0.0, 2.0]]), torch.tensor([[3.0, -1.0], [0.0, 0.0]])
    mix = losses.interpolate(real, fake, torch.tensor([0.25, 1.0]))
    assert mix.tolist() == [[2.5, -0.5], [0.0, 2.0]]
    grad = torch.tensor([[3.0, 4.0], [0.0, 1.0]])  # norms 5 and 1 -> ((4)^2 + 0)/2
    assert losses.gradient_penalty(grad).item() == pytest.approx(8.0)


def test_gradient_penalty_of_linear_critic_is_exact():
    # D(x) = w.x has gradient w everywhere: GP = (||w|| - 1)^2
    w = torch.tensor([0.6, 0.8, 2.0])
    x = torch.randn(4, 3, requires_grad=True)
    grad, = torch.autograd.grad((x @ w).sum(), x, create_graph=True)
    assert losses.gradient_penalty(grad).item() == pytest.approx((w.norm().item() - 1) ** 2, rel=1e-6)


def test_weighted_l1_hand_value():
    pred, target = torch.tensor([[3.0, 4.0], [1.0, 0.0]]), torch.zeros(2, 2)
    # row 1: (27 + 64)/5; row 2: 1/1 -> mean
    assert losses.weighted_l1(pred, target).item() == pytest.approx(((27 + 64) / 5 + 1) / 2)


def test_kl_and_vae_loss_hand_values():
    mu, logvar = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, math.log(2.0)]])
    kl = -0.5 * ((1 + 0 - 1 - 1) + (1 + math.log(2) - 0 - 2))
    assert losses.kl_standard_normal(mu, logvar).item() == pytest.approx(kl)
    x, x_hat = torch.zeros(1, 4), torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    assert losses.vae_loss(x_hat, x, mu, logvar, "mean").item() == pytest.approx(0.5 + kl)
    assert losses.vae_loss(x_hat, x, mu, logvar, "sum").item() == pytest.approx(2.0 + kl)


def test_vae_kl_clamp_zeroes_gradient_above_limit():
    mu = torch.full((1, 3), 20.0, requires_grad=True)  # KL = 600 > 100
    loss = losses.vae_loss(torch.zeros(1, 2), torch.zeros(1, 2), mu, torch.zeros(1, 3), "mean", kl_clamp=100.0)
    loss.backward()
    assert loss.item() == pytest.approx(100.0) and torch.all(mu.grad == 0)


def test_mmd_single_bandwidth_hand_value():
    x, y = torch.tensor([[0.0], [1.0]]), torch.tensor([[0.0], [2.0]])
    k = lambda d2: math.exp(-d2 / 2)  # noqa: E731  sigma = 1
    kxx = (2 + 2 * k(1)) / 4
    kyy = (2 + 2 * k(4)) / 4
    kxy = (k(0) + k(4) + k(1) + k(1)) / 4
    assert losses.mmd(x, y, torch.ones(1)).item() == pytest.approx(kxx + kyy - 2 * kxy, rel=1e-6)
    assert losses.mmd(x, x, torch.ones(1)).item() == pytest.approx(0.0, abs=1e-7)


def test_mmd_multi_bandwidth_is_mean_of_single_ones():
    x, y = torch.rand(5, 3), torch.rand(4, 3)
    sig = torch.tensor([0.5, 2.0])
    single = [losses.mmd(x, y, s.reshape(1)) for s in sig]
    assert losses.mmd(x, y, sig).item() == pytest.approx(sum(single).item() / 2, rel=1e-5)


def test_median_bandwidths_hand_value():
    x, y = torch.tensor([[0.0], [1.0]]), torch.tensor([[3.0]])
    # pairwise squared distances among {0,1,3}: 1, 9, 4 (each twice) -> median 4
    sig = losses.median_bandwidths(x, y, torch.tensor([1.0, 2.0]))
    assert sig.tolist() == pytest.approx([math.sqrt(2.0), 2.0])


def test_center_loss_hand_value():
    x_hat, centers = torch.tensor([[1.0, 2.0], [0.0, 0.0]]), torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    assert losses.center_loss(x_hat, centers).item() == pytest.approx((5 + 25) / 2)


def test_distillation_loss_value_and_stop_gradients():
    w0 = torch.tensor([1.0, 2.0], requires_grad=True)
    wt = torch.tensor([0.0, 1.0], requires_grad=True)
    wc = torch.tensor([2.0, 2.0], requires_grad=True)
    f = torch.tensor([0.5, 1.0])
    loss = losses.distillation_loss(w0, wt, wc, f)
    mean = lambda v: sum(v) / 2  # noqa: E731
    expect = (2 * mean([0.5 * 1, 1 * 1]) + 2 * mean([0.5 * 4, 1 * 1]) + 2 * mean([1, 0]))
    assert loss.item() == pytest.approx(expect)
    loss.backward()
    # d/dw0 only through the terms where w0 is not stop-gradiented: f(w0-wt)^2 and (w0-wc)^2
    g0 = [(0.5 * 2 * 1 + 2 * -1) / 2, (1.0 * 2 * 1 + 0) / 2]
    assert w0.grad.tolist() == pytest.approx(g0)


def test_adapt_gp_weight_rules():
    lam = torch.tensor(10.0)
    assert losses.adapt_gp_weight(lam, torch.tensor(1.2)).item() == pytest.approx(11.0)
    assert losses.adapt_gp_weight(lam, torch.tensor(0.5)).item() == pytest.approx(10 / 1.1)
    assert losses.adapt_gp_weight(lam, torch.tensor(1.02)).item() == pytest.approx(10.0)


def test_vae_loss_bce_sum_is_zerodiffs_term_and_recon_elements():
    from zsl.losses import recon_elements, vae_loss
    x_hat = torch.tensor([[0.25, 0.5], [0.75, 0.5]])
    x = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    mu, logvar = torch.zeros(2, 3), torch.zeros(2, 3)  # KL 0
    bce = -(math.log(0.75) + math.log(0.5) + math.log(0.75) + math.log(0.5)) / 2  # summed over dims, / B
    assert vae_loss(x_hat, x, mu, logvar, "bce_sum").item() == pytest.approx(bce, rel=1e-6)
    assert vae_loss(x_hat, x, mu, logvar, "mean").item() == pytest.approx((0.0625 + 0.25 + 0.0625 + 0.25) / 4)
    assert (recon_elements("mean", 2048), recon_elements("sum", 2048), recon_elements("bce_sum", 7)) == (1, 2048, 7)
