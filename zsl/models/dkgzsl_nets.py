"""Networks of DKG²N (spec dkgzsl §3.3-§3.6 with the §10 corrections): the knowledge transfer network
(KTN), the two meta-fusion units (MFU) and the generator they guide.  The critic is
:class:`zsl.models.d2sc_nets.Critic` (the same function: [x; a] -> Linear -> LeakyReLU(0.2) -> Linear).

Shapes: B rows, A condition width (the class embedding's, d_a; also the noise width), C visual width,
H hidden width.  One H serves the generator's hidden layer, the KTN's hidden layer, MFU level 1 and the
critic (spec §10: D₁ is added to the generator's first hidden layer, so the widths are coupled); the MFU
MLPs' inner width is H/2.

Initialisation (spec §3.7, §10): the generator's Linear layers and the MFU projections P₁, P₂ get
W ~ N(0, 0.02²), b = 0 (:func:`zsl.models.d2sc_nets.init_weights`); the KTN and the MFU MLPs keep
PyTorch's default init; the MFU vectors b₁, b₂ are N(0, 1).  All draws use the global torch RNG: the
caller seeds it.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from zsl.models.d2sc_nets import init_weights


def inject(h: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    """h + scale · n(k), n the per-row L2 normalisation (spec §3.5): h, k [B, W] -> [B, W]."""
    return h + scale * F.normalize(k, dim=-1)


def fuse(mlp_out: torch.Tensor, proj_out: torch.Tensor | None, b: torch.Tensor) -> torch.Tensor:
    """One MFU level's knowledge K = MLP(D) + n(P a) ⊙ b (spec §3.4): mlp_out, proj_out [B, W], b [W]
    -> [B, W].  ``proj_out`` None drops the semantic term: K = MLP(D) (the reference's synthesis, §9.5)."""
    if proj_out is None:
        return mlp_out
    return mlp_out + F.normalize(proj_out, dim=-1) * b


def mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    """Linear -> ReLU -> Linear (PyTorch default init)."""
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, out_dim))


class KTN(nn.Module):
    """Knowledge transfer network (spec §3.3): a [B, A] -> (D₁ [B, H], D₂ [B, C]).

    D₁ = ReLU(Linear(A→H) a) is the hidden "knowledge", D₂ = Linear(H→C) D₁ the pre-activation output;
    the KTN's feature estimate is x̂ = sigmoid(D₂) (its loss takes D₂ as logits).  Deterministic: no noise.
    """

    def __init__(self, att_dim: int, hidden: int, feat_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(att_dim, hidden)
        self.fc2 = nn.Linear(hidden, feat_dim)

    def forward(self, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        d1 = F.relu(self.fc1(a))
        return d1, self.fc2(d1)


class MFU(nn.Module):
    """Both meta-fusion units (spec §3.4, §10): (D₁ [B, H], D₂ [B, C], a [B, A]) -> (K₁ [B, H], K₂ [B, C]).

    K_l = MLP_l(D_l) + n(P_l a) ⊙ b_l with MLP₁: H → H/2 → H, MLP₂: C → H/2 → C, P₁: A → H, P₂: A → C.
    D₁, D₂ are detached: no gradient reaches the KTN through the MFU.
    """

    def __init__(self, att_dim: int, hidden: int, feat_dim: int):
        super().__init__()
        inner = max(1, hidden // 2)
        self.mlp1 = mlp(hidden, inner, hidden)
        self.mlp2 = mlp(feat_dim, inner, feat_dim)
        self.proj1 = nn.Linear(att_dim, hidden)
        self.proj2 = nn.Linear(att_dim, feat_dim)
        init_weights(self.proj1)
        init_weights(self.proj2)
        self.b1 = nn.Parameter(torch.randn(hidden))
        self.b2 = nn.Parameter(torch.randn(feat_dim))

    def forward(self, d1: torch.Tensor, d2: torch.Tensor, a: torch.Tensor,
                semantic: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """``semantic`` False drops the n(P a) ⊙ b terms (the reference's synthesis, spec §9.5)."""
        k1 = fuse(self.mlp1(d1.detach()), self.proj1(a) if semantic else None, self.b1)
        k2 = fuse(self.mlp2(d2.detach()), self.proj2(a) if semantic else None, self.b2)
        return k1, k2


class Generator(nn.Module):
    """G (spec §3.5): (z [B, A], a [B, A], knowledge (K₁, K₂) or None) -> x̃ [B, C] in (0, 1).

    h₁ = ReLU(Linear(2A→H) [z; a]) (+ scale · n(K₁) when guided); o = Linear(H→C) h₁ (+ scale · n(K₂));
    x̃ = sigmoid(o).  Without knowledge it is the plain generator of the reference's first pass.
    """

    def __init__(self, att_dim: int, hidden: int, feat_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(2 * att_dim, hidden)  # z has the condition's width (spec §3.5)
        self.fc2 = nn.Linear(hidden, feat_dim)
        init_weights(self)

    def forward(self, z: torch.Tensor, a: torch.Tensor, knowledge: tuple[torch.Tensor, torch.Tensor] | None = None,
                scale: float = 0.1) -> torch.Tensor:
        h = F.relu(self.fc1(torch.cat([z, a], -1)))
        if knowledge is not None:
            h = inject(h, knowledge[0], scale)
        o = self.fc2(h)
        if knowledge is not None:
            o = inject(o, knowledge[1], scale)
        return torch.sigmoid(o)


def ktn_loss(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """BCE(sigmoid(logits), x) summed over the C dims, averaged over the B rows (spec §3.3, without the
    weight): logits, x [B, C] with x in [0, 1] -> 0-d.  Computed from the logits (the same value as the
    reference's sigmoid-then-BCE, without its log(0) clamp at saturation)."""
    return F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1).mean(-1)


def count_parameters(module: nn.Module) -> int:
    """Number of scalar parameters of ``module``."""
    return sum(p.numel() for p in module.parameters())
