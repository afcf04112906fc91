"""RevCD's pure math against hand computations: DDPM schedule, noising, posterior, DDIM, time
embedding, affine pre-conditioning, semantic normalisation and cosine classification."""

import math

import numpy as np
import pytest
import torch

from zsl import ddpm
from zsl.models.revcd import cosine_nearest, from_signed, normalise_semantics, to_signed
from zsl.models.revcd_nets import sinusoidal_embedding


def test_linear_schedule_hand_values():
    # T = 3: β = 1e-4, (1e-4 + 0.02)/2, 0.02; ᾱ are running products of 1 − β
    sched = ddpm.Schedule.make("linear", 3, "cpu")
    assert sched.betas.tolist() == pytest.approx([0.0, 1e-4, 0.01005, 0.02], abs=1e-7)
    a1 = 0.9999
    a2 = a1 * (1 - 0.01005)
    a3 = a2 * 0.98
    assert sched.alpha_bars.tolist() == pytest.approx([1.0, a1, a2, a3], rel=1e-6)
    assert sched.timesteps == 3


def test_default_schedule_snr_range_matches_spec():
    sched = ddpm.Schedule.make("linear", 1000, "cpu")
    ratio = ddpm.snr(sched.alpha_bars[1:].double())
    assert ratio[0].item() == pytest.approx(9999, rel=1e-3)   # t = 1: about 1e4
    assert 3e-5 < ratio[-1].item() < 5e-5                     # t = T: about 4e-5


def test_cosine_schedule_follows_its_formula():
    T, s = 100, 0.008
    betas = ddpm.beta_schedule("cosine", T)
    abar = torch.cumprod(1 - betas, 0)
    f = lambda t: math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2
    assert abar[49].item() == pytest.approx(f(50) / f(0), rel=1e-9)
    assert betas.max().item() <= 0.999


def test_q_sample_and_eps_inverse():
    s0, eps = torch.tensor([[1.0, -1.0]]), torch.tensor([[0.5, 2.0]])
    st = ddpm.q_sample(s0, torch.tensor([0.64]), eps)
    np.testing.assert_allclose(st.numpy(), [[0.8 + 0.3, -0.8 + 1.2]], rtol=1e-6)
    np.testing.assert_allclose(ddpm.eps_from_x0(st, torch.tensor([0.64]), s0).numpy(), eps.numpy(), rtol=1e-5)


def test_noise_loss_is_snr_weighted_reconstruction_loss():
    gen = torch.Generator().manual_seed(0)
    s0, x0, eps = (torch.randn(5, 7, generator=gen, dtype=torch.float64) for _ in range(3))
    abar = torch.rand(5, generator=gen, dtype=torch.float64) * 0.98 + 0.01
    st = ddpm.q_sample(s0, abar, eps)
    lhs = (eps - ddpm.eps_from_x0(st, abar, x0)).pow(2).sum(1)
    rhs = ddpm.snr(abar) * (s0 - x0).pow(2).sum(1)
    assert torch.allclose(lhs, rhs)


def test_posterior_mean_hand_coefficients_and_eps_form():
    # ᾱ_t = 0.5, ᾱ_{t-1} = 0.8: α = 0.625, β = 0.375
    x0, st = torch.tensor([[1.0]]), torch.tensor([[2.0]])
    mu = ddpm.posterior_mean(x0, st, torch.tensor(0.5), torch.tensor(0.8))
    cx = math.sqrt(0.8) * 0.375 / 0.5
    cs = math.sqrt(0.625) * 0.2 / 0.5
    assert mu.item() == pytest.approx(cx * 1.0 + cs * 2.0, rel=1e-6)
    # equivalent ε form of spec §7: (s_t − β·ε̂/√(1−ᾱ_t))/√α
    eps_hat = ddpm.eps_from_x0(st, torch.tensor(0.5), x0)
    alt = (st - 0.375 * eps_hat / math.sqrt(0.5)) / math.sqrt(0.625)
    assert mu.item() == pytest.approx(alt.item(), rel=1e-6)


def test_ddpm_sigma_hand_values():
    at, ap = torch.tensor(0.5), torch.tensor(0.8)
    beta = 0.375
    assert ddpm.ddpm_sigma("beta", at, ap).item() == pytest.approx(math.sqrt(beta))
    assert ddpm.ddpm_sigma("beta_tilde", at, ap).item() == pytest.approx(math.sqrt(beta * 0.2 / 0.5))
    assert ddpm.ddpm_sigma("beta_literal", at, ap).item() == pytest.approx(beta)
    assert ddpm.ddpm_sigma("zero", at, ap).item() == 0.0


def test_ddim_eta0_is_deterministic_and_exact_on_true_x0():
    gen = torch.Generator().manual_seed(1)
    s0, eps, z1, z2 = (torch.randn(4, 3, generator=gen) for _ in range(4))
    at, ap = torch.tensor(0.3), torch.tensor(0.7)
    st = ddpm.q_sample(s0, at, eps)
    a = ddpm.ddim_step(s0, st, at, ap, 0.0, z1)
    b = ddpm.ddim_step(s0, st, at, ap, 0.0, z2)
    assert torch.equal(a, b)
    # with the true x0, the η = 0 jump keeps the same ε: lands exactly on q_sample(s0, ᾱ', ε)
    assert torch.allclose(a, ddpm.q_sample(s0, ap, eps), atol=1e-6)
    # the last jump (to t' = 0, ᾱ' = 1) returns x̂₀ itself
    assert torch.allclose(ddpm.ddim_step(s0, st, at, torch.tensor(1.0), 0.0, z1), s0, atol=1e-6)


def test_ddim_eta1_equals_ddpm_posterior():
    gen = torch.Generator().manual_seed(2)
    x0, st = torch.randn(4, 3, generator=gen), torch.randn(4, 3, generator=gen)
    at, ap = torch.tensor(0.3), torch.tensor(0.7)
    zero = torch.zeros(4, 3)
    assert torch.allclose(ddpm.ddim_step(x0, st, at, ap, 1.0, zero), ddpm.posterior_mean(x0, st, at, ap), atol=1e-6)
    assert ddpm.ddim_sigma(1.0, at, ap).item() == pytest.approx(ddpm.ddpm_sigma("beta_tilde", at, ap).item(), rel=1e-6)


def test_ddpm_final_jump_returns_x0():
    x0, st = torch.tensor([[0.3, -0.2]]), torch.tensor([[5.0, 1.0]])
    out = ddpm.ddpm_step(x0, st, torch.tensor(0.99), torch.tensor(1.0), torch.tensor(0.0), torch.zeros(1, 2))
    assert torch.allclose(out, x0)


def test_strided_timesteps():
    assert ddpm.strided_timesteps(1000, 10) == [1000, 900, 800, 700, 600, 500, 400, 300, 200, 100, 0]
    assert ddpm.strided_timesteps(10, 3) == [10, 7, 3, 0]
    assert ddpm.strided_timesteps(5, 5) == [5, 4, 3, 2, 1, 0]
    with pytest.raises(ValueError):
        ddpm.strided_timesteps(5, 6)


def test_sinusoidal_embedding_interleaves_cos_sin():
    emb = sinusoidal_embedding(torch.tensor([1, 3]), 4)
    f1 = 10000 ** -0.5
    assert emb[0].tolist() == pytest.approx([math.cos(1), math.sin(1), math.cos(f1), math.sin(f1)], rel=1e-6)
    assert emb[1].tolist() == pytest.approx([math.cos(3), math.sin(3), math.cos(3 * f1), math.sin(3 * f1)], rel=1e-6)


def test_affine_preconditioning_round_trip():
    s = torch.tensor([0.0, 0.25, 1.0])
    assert to_signed(s).tolist() == [-1.0, -0.5, 1.0]
    assert torch.equal(from_signed(to_signed(s)), s)


def test_semantic_normalisation_hand_values():
    emb = np.array([[-0.01, 0.2, 0.5], [0.1, 0.4, 0.5], [0.3, 0.3, 0.5]], dtype=np.float32)
    mm = normalise_semantics(emb, "minmax_dim")
    np.testing.assert_allclose(mm, [[0, 0, 0], [1 / 3, 1, 0], [1, 0.5, 0]], atol=1e-6)
    gm = normalise_semantics(emb, "global_max")
    np.testing.assert_allclose(gm, [[0, 0.4, 1], [0.2, 0.8, 1], [0.6, 0.6, 1]], atol=1e-6)
    assert np.array_equal(normalise_semantics(emb, "raw"), emb)


def test_cosine_nearest_hand_data():
    protos = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    queries = torch.tensor([[2.0, 0.1], [0.1, 3.0], [1.0, 0.9], [5.0, 5.0]])
    assert cosine_nearest(queries, protos).tolist() == [0, 1, 2, 2]
    # an offset of 0.5 on prototype 2's distance (calibration) moves [1, 0.9] (dist ≈ 0.0014 vs 0.26) to 0
    assert cosine_nearest(queries, protos, torch.tensor([0.0, 0.0, 0.5])).tolist() == [0, 1, 0, 0]


def _hand_block(role, fusion="cross", offset=False):
    """A CondBlock whose Linear is the identity, τ = [2, 3], c = [1, −10], BatchNorm the identity."""
    from zsl.models.revcd_nets import CondBlock

    block = CondBlock(2, 2, time_dim=2, cond_dim=2, dropout=0.5, role=role, fusion=fusion, offset=offset).eval()
    with torch.no_grad():
        block.lin.weight.copy_(torch.eye(2, block.lin.in_features))
        block.lin.bias.zero_()
        for proj, bias in ((block.time_proj, [2.0, 3.0]), (block.cond_proj, [1.0, -10.0])):
            proj.weight.zero_()
            proj.bias.copy_(torch.tensor(bias))
    block.bn.eps = 0.0
    return block


def test_cross_hadamard_addition_conditioning_by_hand():
    h, temb, cond = torch.tensor([[1.0, -2.0]]), torch.zeros(1, 2), torch.zeros(1, 2)
    # encoder: relu(h·τ + c) = relu([1·2 + 1, −2·3 − 10]) = [3, 0]
    assert _hand_block("encoder")(h, temb, cond).tolist() == [[3.0, 0.0]]
    # decoder: relu(h·c + τ) = relu([1·1 + 2, −2·(−10) + 3]) = [3, 23]
    assert _hand_block("decoder")(h, temb, cond).tolist() == [[3.0, 23.0]]
    # offset multiplier: relu(h·(1 + τ) + c) = relu([4, −18]) = [4, 0]
    assert _hand_block("encoder", offset=True)(h, temb, cond).tolist() == [[4.0, 0.0]]
    # additive ablation: relu(h + τ + c) = relu([4, −9]) = [4, 0]
    assert _hand_block("encoder", fusion="add")(h, temb, cond).tolist() == [[4.0, 0.0]]
