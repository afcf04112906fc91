"""Gaussian DDPM arithmetic: β schedules, forward noising, x₀↔ε conversion and strided reverse steps.

Pure functions on tensors (no modules, no state).  Timesteps are integers t ∈ {0, 1, …, T} with the
convention ᾱ_0 = 1, so that every table below has T + 1 entries indexed directly by t (entry 0 is the
clean data).  This is the plain DDPM of Ho et al. (many steps, small β); D2SC's few-step
diffusion-GAN schedule lives in :mod:`zsl.diffusion` and is a different object.

Strided sampling: a reverse step may jump from t to any t' < t.  With ᾱ' = ᾱ_{t'} the jump behaves
like one DDPM step with effective β = 1 − ᾱ_t/ᾱ', so the full chain (t' = t − 1) is the special case.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

BETA_SCHEDULES = ("linear", "cosine")
DDPM_SIGMAS = ("beta", "beta_tilde", "beta_literal", "zero")


def beta_schedule(kind: str, timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """β_1..β_T as a float64 tensor [T].

    ``linear``: evenly spaced from ``beta_start`` to ``beta_end`` (Ho et al.).
    ``cosine``: ᾱ(t) = cos²((t/T + s)/(1 + s)·π/2) / cos²(s/(1+s)·π/2), s = 0.008, β clipped at 0.999
    (Nichol & Dhariwal).
    """
    if kind == "linear":
        return torch.linspace(beta_start, beta_end, timesteps, dtype=torch.float64)
    if kind == "cosine":
        s = 0.008
        steps = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
        abar = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
        abar = abar / abar[0]
        return (1 - abar[1:] / abar[:-1]).clamp(max=0.999)
    raise ValueError(f"unknown beta schedule {kind!r}; choose one of {BETA_SCHEDULES}")


@dataclass
class Schedule:
    """Tables of a DDPM, each [T + 1] float32 on one device, indexed by integer t (entry 0: ᾱ_0 = 1).

    ``betas[0]`` is 0; ``alpha_bars[t]`` = ∏_{i ≤ t} (1 − β_i).
    """

    betas: torch.Tensor
    alpha_bars: torch.Tensor

    @property
    def timesteps(self) -> int:
        return self.betas.numel() - 1

    @classmethod
    def make(cls, kind: str, timesteps: int, device, beta_start: float = 1e-4, beta_end: float = 0.02) -> "Schedule":
        """Build the tables in float64, store them as float32 on ``device``."""
        betas = beta_schedule(kind, timesteps, beta_start, beta_end)
        abar = torch.cumprod(1 - betas, 0)
        betas = torch.cat([betas.new_zeros(1), betas])
        abar = torch.cat([abar.new_ones(1), abar])
        return cls(betas.float().to(device), abar.float().to(device))


def _col(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """[N] -> [N, 1, …] so that it broadcasts against ``like`` [N, D, …]; a 0-d value passes through."""
    return values.reshape(values.shape + (1,) * (like.dim() - values.dim())) if values.dim() else values


def q_sample(s0: torch.Tensor, abar_t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Forward noising s_t = √ᾱ_t·s_0 + √(1−ᾱ_t)·ε.  s0, eps: [N, D]; abar_t: [N] or 0-d."""
    a = _col(abar_t, s0)
    return a.sqrt() * s0 + (1 - a).sqrt() * eps


def eps_from_x0(s_t: torch.Tensor, abar_t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """The noise implied by a clean-vector prediction: ε̂ = (s_t − √ᾱ_t·x̂₀)/√(1−ᾱ_t).  Needs ᾱ_t < 1 (t ≥ 1)."""
    a = _col(abar_t, s_t)
    return (s_t - a.sqrt() * x0) / (1 - a).sqrt()


def snr(abar_t: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio ᾱ_t/(1−ᾱ_t); ‖ε − ε̂‖² = SNR_t·‖s_0 − x̂₀‖² for an x₀-predictor."""
    return abar_t / (1 - abar_t)


def posterior_mean(x0: torch.Tensor, s_t: torch.Tensor, abar_t: torch.Tensor, abar_prev: torch.Tensor) -> torch.Tensor:
    """Mean of q(s_{t'} | s_t, s_0 = x̂₀) for a jump t → t' (ᾱ_prev = ᾱ_{t'}), Eq. 9 with effective β.

    μ = (√ᾱ'·β/(1−ᾱ_t))·x̂₀ + (√α·(1−ᾱ')/(1−ᾱ_t))·s_t, where α = ᾱ_t/ᾱ', β = 1 − α.
    """
    a_t, a_p = _col(abar_t, s_t), _col(abar_prev, s_t)
    alpha = a_t / a_p
    return (a_p.sqrt() * (1 - alpha) * x0 + alpha.sqrt() * (1 - a_p) * s_t) / (1 - a_t)


def ddpm_sigma(kind: str, abar_t: torch.Tensor, abar_prev: torch.Tensor) -> torch.Tensor:
    """Noise scale σ of an ancestral step t → t' (effective β = 1 − ᾱ_t/ᾱ').

    ``beta``: √β (Ho et al.'s σ² = β); ``beta_tilde``: √(β·(1−ᾱ')/(1−ᾱ_t)) (the true posterior std);
    ``beta_literal``: β itself (the paper's literal, nearly deterministic reading); ``zero``: 0.
    """
    beta = 1 - abar_t / abar_prev
    if kind == "beta":
        return beta.sqrt()
    if kind == "beta_tilde":
        return (beta * (1 - abar_prev) / (1 - abar_t)).sqrt()
    if kind == "beta_literal":
        return beta
    if kind == "zero":
        return torch.zeros_like(beta)
    raise ValueError(f"unknown DDPM sigma {kind!r}; choose one of {DDPM_SIGMAS}")


def ddpm_step(x0, s_t, abar_t, abar_prev, sigma, noise):
    """Ancestral step s_{t'} = μ̃(x̂₀, s_t) + σ·z.  All of x0, s_t, noise [N, D]; the rest 0-d or [N]."""
    return posterior_mean(x0, s_t, abar_t, abar_prev) + _col(sigma, s_t) * noise


def ddim_sigma(eta: float, abar_t: torch.Tensor, abar_prev: torch.Tensor) -> torch.Tensor:
    """DDIM noise scale σ = η·√((1−ᾱ')/(1−ᾱ_t))·√(1 − ᾱ_t/ᾱ'); η = 1 gives the DDPM posterior std."""
    return eta * ((1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev)).sqrt()


def ddim_step(x0, s_t, abar_t, abar_prev, eta: float, noise):
    """DDIM step s_{t'} = √ᾱ'·x̂₀ + √(1 − ᾱ' − σ²)·ε̂ + σ·z (Song et al.); η = 0 is deterministic."""
    sigma = ddim_sigma(eta, abar_t, abar_prev)
    eps = eps_from_x0(s_t, abar_t, x0)
    a_p = _col(abar_prev, s_t)
    sig = _col(sigma, s_t)
    return a_p.sqrt() * x0 + (1 - a_p - sig**2).clamp(min=0).sqrt() * eps + sig * noise


def strided_timesteps(timesteps: int, steps: int) -> list[int]:
    """The descending visit order of a strided sampler: ``steps`` integers in 1..T ending at T, then 0.

    t_i = round(i·T/S) for i = S..1 (S = ``steps``); S = T gives T, T−1, …, 1.  The trailing 0 is
    the target of the last jump.
    """
    if not 1 <= steps <= timesteps:
        raise ValueError(f"sample steps must be in 1..{timesteps}, got {steps}")
    ts = sorted({max(1, round(i * timesteps / steps)) for i in range(1, steps + 1)}, reverse=True)
    return ts + [0]
