"""Diffusion-GAN machinery of D2SC/ZeroDiff (spec d2sc §4): the variance-preserving schedule,
the forward process and the posterior q(x_t | x_0, x_{t+1}).

The schedule is a small immutable object of per-step coefficient tensors; the forward process
and posterior are pure functions that take their Gaussian noise as arguments (so the caller
owns every random draw and tests can pass hand-chosen noise).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def time_grid(n_steps: int, eps: float = 1e-3) -> torch.Tensor:
    """s_k = eps + (1 - eps) k / T for k = 0..T; float64 [T+1]."""
    k = torch.arange(n_steps + 1, dtype=torch.float64)
    return eps + (1.0 - eps) * k / n_steps


def vp_alpha_bar(s: torch.Tensor, beta_min: float, beta_max: float) -> torch.Tensor:
    """Continuous VP signal fraction abar(s) = exp(-s^2 (beta_max - beta_min)/2 - s beta_min)."""
    return torch.exp(-0.5 * s**2 * (beta_max - beta_min) - s * beta_min)


@dataclass(frozen=True)
class VPSchedule:
    """Per-step coefficients of the DDGAN variance-preserving schedule (all float32 tensors).

    Prior (index k = 0..T, length T+1): ``betas``, ``sigmas`` = sqrt(beta), ``a`` = sqrt(1-beta),
    ``a_bar`` = cumulative product of ``a``, ``sigma_bar`` = sqrt(1 - a_bar^2).
    Posterior (index j = t = 0..T-1, length T): ``post_c1``, ``post_c2`` (mean coefficients of
    x̂_0 and x_{t+1}) and ``post_std`` = sqrt(v_j) with log v clipped at log 1e-20.
    """

    n_steps: int
    betas: torch.Tensor
    sigmas: torch.Tensor
    a: torch.Tensor
    a_bar: torch.Tensor
    sigma_bar: torch.Tensor
    post_c1: torch.Tensor
    post_c2: torch.Tensor
    post_std: torch.Tensor

    def to(self, device: torch.device | str) -> "VPSchedule":
        """The same schedule with every tensor on ``device``."""
        moved = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in self.__dict__.items()}
        return VPSchedule(**moved)


def make_schedule(n_steps: int = 4, beta_min: float = 0.1, beta_max: float = 20.0, eps: float = 1e-3) -> VPSchedule:
    """Build the schedule of spec §4 (computed in float64, stored as float32)."""
    alpha_bar = vp_alpha_bar(time_grid(n_steps, eps), beta_min, beta_max)
    betas = torch.cat([torch.tensor([1e-8], dtype=torch.float64), 1.0 - alpha_bar[1:] / alpha_bar[:-1]])
    sigmas = betas.sqrt()
    a = (1.0 - betas).sqrt()
    a_bar = torch.cumprod(a, 0)
    sigma_bar = (1.0 - a_bar**2).sqrt()

    post_beta = betas[1:]                                  # beta'_j = beta_{j+1}, j = 0..T-1
    post_alpha = 1.0 - post_beta
    post_alpha_bar = torch.cumprod(post_alpha, 0)
    post_alpha_bar_prev = torch.cat([torch.ones(1, dtype=torch.float64), post_alpha_bar[:-1]])
    c1 = post_beta * post_alpha_bar_prev.sqrt() / (1.0 - post_alpha_bar)
    c2 = (1.0 - post_alpha_bar_prev) * post_alpha.sqrt() / (1.0 - post_alpha_bar)
    var = post_beta * (1.0 - post_alpha_bar_prev) / (1.0 - post_alpha_bar)
    log_var = var.clamp_min(1e-20).log().clamp_min(math.log(1e-20))
    post_std = (0.5 * log_var).exp()

    f32 = lambda v: v.to(torch.float32)  # noqa: E731
    return VPSchedule(n_steps, f32(betas), f32(sigmas), f32(a), f32(a_bar), f32(sigma_bar), f32(c1), f32(c2), f32(post_std))


def _col(coef: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """coef[t] as a column [..., B, 1] for broadcasting against [..., B, D] (t: [..., B])."""
    return coef[t].unsqueeze(-1)


def q_sample(sched: VPSchedule, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """x_t = a_bar_t x_0 + sigma_bar_t eps.  x0, noise: [B, D]; t: [B] int64 in 0..T."""
    return _col(sched.a_bar, t) * x0 + _col(sched.sigma_bar, t) * noise


def q_sample_pairs(
    sched: VPSchedule, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, noise_next: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_t, x_{t+1}): x_t = q_sample(x0, t), then x_{t+1} = a_{t+1} x_t + sigma_{t+1} eps'.  t in 0..T-1."""
    x_t = q_sample(sched, x0, t, noise)
    x_next = _col(sched.a, t + 1) * x_t + _col(sched.sigmas, t + 1) * noise_next
    return x_t, x_next


def sample_posterior(
    sched: VPSchedule, x0_hat: torch.Tensor, x_next: torch.Tensor, t: torch.Tensor, noise: torch.Tensor
) -> torch.Tensor:
    """A draw of q(x_t | x̂_0, x_{t+1}) = c1_t x̂_0 + c2_t x_{t+1} + 1[t>0] sqrt(v_t) eps; returns x̂_0 at t=0."""
    mean = _col(sched.post_c1, t) * x0_hat + _col(sched.post_c2, t) * x_next
    nonzero = (t > 0).to(x0_hat.dtype).unsqueeze(-1)
    return mean + nonzero * _col(sched.post_std, t) * noise


def distill_factor(sched: VPSchedule, t: torch.Tensor, power: float) -> torch.Tensor:
    """Per-sample distillation weight f = a_bar_t ** power; [B]."""
    return sched.a_bar[t] ** power


def sinusoidal_embedding(t: torch.Tensor, dim: int, interleaved: bool = False) -> torch.Tensor:
    """Sinusoidal timestep encoding s(t) in R^dim with frequencies f_i = exp(-ln(1e4) i / half).

    t: [B] or [..., B] (any numeric dtype); returns float32 [..., B, dim], zero-padded if dim is odd.
    Layout: ``[cos(t f_0..f_{half-1}), sin(t f_0..)]`` (cos block first, D2SC/DDGAN) or, with
    ``interleaved=True``, ``[cos(t f_0), sin(t f_0), cos(t f_1), ...]`` (RevCD Eq. 17).
    """
    half = dim // 2
    freqs = torch.exp(-math.log(1e4) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    angles = t.to(torch.float32).unsqueeze(-1) * freqs
    if interleaved:
        emb = torch.stack([torch.cos(angles), torch.sin(angles)], dim=-1).reshape(*t.shape, 2 * half)
    else:
        emb = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
    if dim % 2:
        emb = torch.nn.functional.pad(emb, (0, 1))
    return emb
