"""RevCD's networks: sinusoidal time embedding, the Transformer visual encoder, the fully connected
U-Net denoiser with cross Hadamard–addition conditioning, and the auxiliary seen-class classifier.

Shapes: N rows, A semantic dims (d_s), R visual dims, H hidden width, M = d_model of the visual encoder.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def sinusoidal_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """TE(t, d) with cos and sin interleaved: [cos(t·f_0), sin(t·f_0), cos(t·f_1), …] (RevCD Eq. 17).

    t: [N] integer (or float) timesteps; f_i = max_period^(−2i/d); returns [N, dim] float32.
    ``dim`` must be even.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * 2 * torch.arange(half, device=t.device, dtype=torch.float32) / dim)
    angles = t.float().unsqueeze(1) * freqs.unsqueeze(0)  # [N, half]
    return torch.stack([angles.cos(), angles.sin()], dim=2).reshape(t.shape[0], 2 * half)


class VisualEncoder(nn.Module):
    """Transformer over a pooled feature cut into K tokens: x [N, R] -> c(x) [N, M].

    The R dims are zero-padded to a multiple of K, cut into K chunks, each embedded linearly to M
    with a learned position embedding, passed through pre-norm Transformer layers and mean-pooled.
    With K = 1 attention is trivial and the encoder is a learned nonlinear map.
    """

    def __init__(self, feat_dim: int, tokens: int, d_model: int, layers: int, heads: int, dropout: float):
        super().__init__()
        self.tokens = tokens
        self.chunk = -(-feat_dim // tokens)
        self.pad = self.chunk * tokens - feat_dim
        self.embed = nn.Linear(self.chunk, d_model)
        self.pos = nn.Parameter(torch.randn(tokens, d_model) * 0.02)
        layer = nn.TransformerEncoderLayer(
            d_model, heads, dim_feedforward=4 * d_model, dropout=dropout, batch_first=True, norm_first=True
        )
        self.body = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pad:
            x = F.pad(x, (0, self.pad))
        tok = self.embed(x.reshape(x.shape[0], self.tokens, self.chunk)) + self.pos
        return self.norm(self.body(tok)).mean(1)


class CondBlock(nn.Module):
    """Linear -> conditioning -> BatchNorm -> ReLU -> Dropout, with per-layer projections of the
    time embedding (τ) and of the visual code (c) to this layer's width.

    ``role`` "encoder": h·τ + c (time multiplies, vision adds); "decoder": h·c + τ.
    ``fusion`` "cross" is that rule; the readings of the paper's §4.0.2 ("concatenated and added"):
    "add" is h + τ + c, "concat" feeds [h, t_emb] to the Linear and adds c afterwards.
    ``offset``: use (1 + projection) as the multiplier (a stability deviation).
    """

    def __init__(self, d_in: int, d_out: int, time_dim: int, cond_dim: int, dropout: float,
                 role: str, fusion: str, offset: bool):
        super().__init__()
        self.lin = nn.Linear(d_in + (time_dim if fusion == "concat" else 0), d_out)
        self.time_proj = nn.Linear(time_dim, d_out)
        self.cond_proj = nn.Linear(cond_dim, d_out)
        self.bn = nn.BatchNorm1d(d_out)
        self.drop = nn.Dropout(dropout)
        self.role, self.fusion, self.offset = role, fusion, offset

    def forward(self, h, temb, cond, skip=None):
        h = self.lin(torch.cat([h, temb], 1) if self.fusion == "concat" else h)
        if skip is not None:
            h = h + skip
        tau, c = self.time_proj(temb), self.cond_proj(cond)
        if self.fusion == "concat":
            h = h + c
        elif self.fusion == "add":
            h = h + tau + c
        else:
            mult, add = (tau, c) if self.role == "encoder" else (c, tau)
            h = h * (1 + mult if self.offset else mult) + add
        return self.drop(F.relu(self.bn(h)))


class Denoiser(nn.Module):
    """x₀-predictor s_θ(s_t, t, c): E1 (A→H), E2 (H→H/2), D1 (H/2→H, + E1 skip), out (H→A).

    Inputs: s_t [N, A], t [N] int, cond [N, M] (visual code or null code); returns ŝ_0 [N, A].
    """

    def __init__(self, sem_dim: int, hidden: int, time_dim: int, cond_dim: int, dropout: float,
                 time_mlp: bool, fusion: str, offset: bool):
        super().__init__()
        self.time_dim = time_dim
        self.time_mlp = (nn.Sequential(nn.Linear(time_dim, time_dim), nn.SiLU(), nn.Linear(time_dim, time_dim))
                         if time_mlp else nn.Identity())
        half = max(1, hidden // 2)
        args = dict(time_dim=time_dim, cond_dim=cond_dim, dropout=dropout, fusion=fusion, offset=offset)
        self.e1 = CondBlock(sem_dim, hidden, role="encoder", **args)
        self.e2 = CondBlock(hidden, half, role="encoder", **args)
        self.d1 = CondBlock(half, hidden, role="decoder", **args)
        self.out = nn.Linear(hidden, sem_dim)

    def forward(self, s_t, t, cond):
        temb = self.time_mlp(sinusoidal_embedding(t, self.time_dim))
        h1 = self.e1(s_t, temb, cond)
        h2 = self.e2(h1, temb, cond)
        return self.out(self.d1(h2, temb, cond, skip=h1))


class SeenClassifier(nn.Module):
    """Auxiliary classifier ϑ on ŝ_0 (in [−1, 1] space): ŝ_0 [N, A] -> logits over seen classes [N, Cs].

    ``kind`` "linear": a Linear layer; "cosine": cosine similarity to the fixed seen prototypes
    (``prototypes`` [Cs, A], same space) divided by ``temperature``.
    """

    def __init__(self, kind: str, prototypes: torch.Tensor, temperature: float):
        super().__init__()
        self.kind, self.temperature = kind, temperature
        self.register_buffer("prototypes", prototypes.clone())
        self.linear = nn.Linear(prototypes.shape[1], prototypes.shape[0]) if kind == "linear" else None

    def forward(self, s0_hat):
        if self.linear is not None:
            return self.linear(s0_hat)
        return F.normalize(s0_hat, dim=1) @ F.normalize(self.prototypes, dim=1).T / self.temperature


class RevCDNet(nn.Module):
    """Everything RevCD trains jointly: visual encoder, null code ∅, denoiser and classifier ϑ.

    ``null_cond`` "learned": ∅ is a learned code vector [M] replacing c(x); "zero_input": ∅ = c(0).
    """

    def __init__(self, encoder: VisualEncoder, denoiser: Denoiser, classifier: SeenClassifier,
                 null_cond: str, code_dim: int, feat_dim: int):
        super().__init__()
        self.encoder, self.denoiser, self.classifier = encoder, denoiser, classifier
        self.null_cond, self.feat_dim = null_cond, feat_dim
        self.null_code_vec = nn.Parameter(torch.zeros(code_dim)) if null_cond == "learned" else None

    def code(self, x: torch.Tensor, drop: torch.Tensor | None = None) -> torch.Tensor:
        """Visual codes [N, M] of x [N, R]; rows where ``drop`` [N] bool is True get the null code."""
        if drop is None:
            return self.encoder(x)
        if self.null_code_vec is None:
            return self.encoder(x * (~drop).unsqueeze(1).to(x.dtype))
        return torch.where(drop.unsqueeze(1), self.null_code_vec.expand(x.shape[0], -1), self.encoder(x))

    def null_code(self, n: int, like: torch.Tensor) -> torch.Tensor:
        """The null code repeated n times [n, M] (``like``: any tensor on the target device/dtype)."""
        if self.null_code_vec is not None:
            return self.null_code_vec.expand(n, -1)
        return self.encoder(like.new_zeros(1, self.feat_dim)).expand(n, -1)
