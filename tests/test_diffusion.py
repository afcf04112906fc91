"""The VP schedule, forward process and posterior against spec d2sc §4 and hand computations."""

import math

import pytest
import torch

from zsl.diffusion import (
    distill_factor, make_schedule, q_sample, q_sample_pairs, sample_posterior, sinusoidal_embedding,
    time_grid, vp_alpha_bar,
)

# spec §4 table, T = 4 (rounded as printed there)
S_K = [0.001, 0.2508, 0.5005, 0.7503, 1.0]
ALPHA_BAR_S = [0.99989, 0.5217, 0.0787, 0.00343, 4.3e-5]
BETA = [1e-8, 0.4783, 0.8492, 0.9564, 0.9874]
A_BAR = [1.0, 0.7223, 0.2805, 0.0586, 0.0066]
SIGMA_BAR = [1e-4, 0.6916, 0.9599, 0.9983, 1.0]
C1 = [1.0, 0.6658, 0.2692, 0.0578]
C2 = [0.0, 0.2016, 0.1930, 0.1119]
SQRT_V = [0.0, 0.6639, 0.9403, 0.9920]
DISTILL = [1.0, 0.614, 0.149, 0.014]


def test_schedule_matches_spec_table():
    s = make_schedule(4, 0.1, 20.0)
    assert time_grid(4).tolist() == pytest.approx(S_K, abs=1e-4)
    assert vp_alpha_bar(time_grid(4), 0.1, 20.0).tolist() == pytest.approx(ALPHA_BAR_S, rel=2e-3, abs=1e-6)
    assert s.betas.tolist() == pytest.approx(BETA, abs=1e-4)
    assert s.a_bar.tolist() == pytest.approx(A_BAR, abs=1e-4)
    assert s.sigma_bar.tolist() == pytest.approx(SIGMA_BAR, abs=1e-4)
    assert s.post_c1.tolist() == pytest.approx(C1, abs=1e-4)
    assert s.post_c2.tolist() == pytest.approx(C2, abs=1e-4)
    assert s.post_std.tolist() == pytest.approx(SQRT_V, abs=1e-4)
    assert distill_factor(s, torch.arange(4), 1.5).tolist() == pytest.approx(DISTILL, abs=1e-3)


def test_schedule_hand_values_step_one():
    # k=1 by hand: s1 = 0.001 + 0.999/4; abar(s) = exp(-s^2*19.9/2 - 0.1 s); beta1 = 1 - abar(s1)/abar(s0)
    ab = lambda s: math.exp(-0.5 * s * s * 19.9 - 0.1 * s)  # noqa: E731
    s0, s1 = 0.001, 0.001 + 0.999 / 4
    beta1 = 1 - ab(s1) / ab(s0)
    sched = make_schedule(4, 0.1, 20.0)
    assert sched.betas[1].item() == pytest.approx(beta1, rel=1e-6)
    assert sched.a_bar[1].item() == pytest.approx(math.sqrt(1 - 1e-8) * math.sqrt(1 - beta1), rel=1e-6)
    # posterior j=1 uses beta'_0 = beta_1, beta'_1 = beta_2
    b0, b1 = beta1, sched.betas[2].item()
    abar0, abar1 = 1 - b0, (1 - b0) * (1 - b1)
    assert sched.post_c1[1].item() == pytest.approx(b1 * math.sqrt(abar0) / (1 - abar1), rel=1e-5)
    assert sched.post_c2[1].item() == pytest.approx((1 - abar0) * math.sqrt(1 - b1) / (1 - abar1), rel=1e-5)
    assert sched.post_std[1].item() == pytest.approx(math.sqrt(b1 * (1 - abar0) / (1 - abar1)), rel=1e-5)


def test_forward_process_and_pairs():
    s = make_schedule()
    x0 = torch.tensor([[1.0, -2.0], [0.5, 0.0]])
    eps, eps2 = torch.tensor([[0.3, 0.1], [-1.0, 2.0]]), torch.tensor([[2.0, 0.0], [1.0, 1.0]])
    t = torch.tensor([1, 3])
    x_t = q_sample(s, x0, t, eps)
    assert x_t[0].tolist() == pytest.approx((s.a_bar[1] * x0[0] + s.sigma_bar[1] * eps[0]).tolist())
    assert x_t[1].tolist() == pytest.approx((s.a_bar[3] * x0[1] + s.sigma_bar[3] * eps[1]).tolist())
    x_t2, x_next = q_sample_pairs(s, x0, t, eps, eps2)
    assert torch.equal(x_t2, x_t)
    assert x_next[1].tolist() == pytest.approx((s.a[4] * x_t[1] + s.sigmas[4] * eps2[1]).tolist())


def test_posterior_returns_x0_hat_at_t0_and_adds_noise_after():
    s = make_schedule()
    x0_hat, x_next, eps = torch.rand(3, 5), torch.rand(3, 5), torch.randn(3, 5)
    out = sample_posterior(s, x0_hat, x_next, torch.tensor([0, 2, 2]), eps)
    assert torch.allclose(out[0], x0_hat[0], atol=1e-6)
    expect = s.post_c1[2] * x0_hat[1] + s.post_c2[2] * x_next[1] + s.post_std[2] * eps[1]
    assert torch.allclose(out[1], expect)


def test_sinusoidal_embedding_hand_values_and_odd_width():
    e = sinusoidal_embedding(torch.tensor([0, 2]), 4)  # half = 2, f = [1, 1e-2]
    assert e[0].tolist() == pytest.approx([1.0, 1.0, 0.0, 0.0])
    assert e[1].tolist() == pytest.approx([math.cos(2), math.cos(0.02), math.sin(2), math.sin(0.02)], abs=1e-6)
    odd = sinusoidal_embedding(torch.tensor([3]), 5)
    assert odd.shape == (1, 5) and odd[0, 4] == 0.0


def test_schedule_moves_to_device():
    s = make_schedule().to("cpu")
    assert s.a_bar.device.type == "cpu" and s.n_steps == 4
