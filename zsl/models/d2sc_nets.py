"""Networks of D2SC (spec d2sc §3): generators, critics, encoder, V2S decoder, S2V projection.

Dimensions: Z noise, R visual feature, C second view (contrastive representation), A class
embedding, d_t time-encoding width.  Every Linear layer but S2V is initialised W ~ N(0, 0.02^2),
b = 0 (:func:`init_weights`); there is no normalisation layer anywhere.  Layer widths are sized
from the true concatenation of the inputs (spec §3 note 2).

Fused members: every net takes ``members`` (default None = one plain run).  With ``members=K`` each
Linear is a :class:`StackedLinear` holding K independent layers (weights [K, out, in]) and every
input and output carries a leading K axis ([K, B, ...]); member k of the stack computes exactly what
the plain net with member k's weights computes.  Forwards concatenate on the last axis and count rows
on the second-to-last, so one code path serves both layouts.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.autograd.function import once_differentiable
from torch.nn import functional as F

from zsl.diffusion import sinusoidal_embedding


class StackedLinear(nn.Module):
    """K independent Linear layers applied as one batched matmul: x [K, n, in] -> [K, n, out].

    Parameters are named like nn.Linear's (``weight`` [K, out, in], ``bias`` [K, out]), so a stack's
    state dict is the members' state dicts stacked on a leading axis.
    """

    def __init__(self, members: int, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(members, out_features, in_features))
        self.bias = nn.Parameter(torch.empty(members, out_features)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bias is None:
            return torch.bmm(x, self.weight.mT)
        return torch.baddbmm(self.bias.unsqueeze(1), x, self.weight.mT)


def linear(in_features: int, out_features: int, bias: bool = True, members: int | None = None) -> nn.Module:
    """nn.Linear for a plain run, :class:`StackedLinear` of ``members`` layers for a fused one."""
    if members is None:
        return nn.Linear(in_features, out_features, bias=bias)
    return StackedLinear(members, in_features, out_features, bias=bias)


def init_weights(module: nn.Module) -> None:
    """The reference rule: every Linear gets W ~ N(0, 0.02^2), b = 0 (uses the global torch RNG)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class TimeMLP(nn.Module):
    """t [B] -> Linear(d_t->A) -> SiLU -> Linear(A->A) of the sinusoidal encoding; [B, A]."""

    def __init__(self, dim_t: int, out_dim: int, members: int | None = None):
        super().__init__()
        self.dim_t = dim_t
        self.net = nn.Sequential(linear(dim_t, out_dim, members=members), nn.SiLU(),
                                 linear(out_dim, out_dim, members=members))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.net(sinusoidal_embedding(t, self.dim_t))


class ConMLP(nn.Module):
    """phi(c): c [B, C] -> Linear(C->A) -> SiLU -> Linear(A->A); [B, A]."""

    def __init__(self, con_dim: int, out_dim: int, members: int | None = None):
        super().__init__()
        self.net = nn.Sequential(linear(con_dim, out_dim, members=members), nn.SiLU(),
                                 linear(out_dim, out_dim, members=members))

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        return self.net(c)


def _mlp2(in_dim: int, hidden: int, out_dim: int, members: int | None = None) -> nn.Sequential:
    """Linear -> LeakyReLU(0.2) -> Linear."""
    return nn.Sequential(linear(in_dim, hidden, members=members), nn.LeakyReLU(0.2),
                         linear(hidden, out_dim, members=members))


class RepresentationGenerator(nn.Module):
    """G_c (DRG): [z (Z); c_in (C); a (A); TimeMLP(s(t)) (A)] -> hidden -> C, sigmoid."""

    def __init__(self, noise_dim: int, con_dim: int, att_dim: int, dim_t: int, hidden: int,
                 members: int | None = None):
        super().__init__()
        self.time = TimeMLP(dim_t, att_dim, members)
        self.net = _mlp2(noise_dim + con_dim + 2 * att_dim, hidden, con_dim, members)

    def forward(self, z: torch.Tensor, c_in: torch.Tensor, a: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(torch.cat([z, c_in, a, self.time(t)], -1)))


class FeatureGenerator(nn.Module):
    """G_x (DFG): [z (Z); a (A); phi(c) (A); x_{t+1} (R); TimeMLP(s(t)) (A)] -> hidden -> R, sigmoid."""

    def __init__(self, noise_dim: int, att_dim: int, con_dim: int, feat_dim: int, dim_t: int, hidden: int,
                 members: int | None = None):
        super().__init__()
        self.con = ConMLP(con_dim, att_dim, members)
        self.time = TimeMLP(dim_t, att_dim, members)
        self.net = _mlp2(noise_dim + 3 * att_dim + feat_dim, hidden, feat_dim, members)

    def forward(self, z: torch.Tensor, a: torch.Tensor, c: torch.Tensor, x_next: torch.Tensor,
                t: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(torch.cat([z, a, self.con(c), x_next, self.time(t)], -1)))


class _ScoresAndPenalty(torch.autograd.Function):
    """Critic scores of real/fake rows and the WGAN-GP penalty of the interpolates, with a hand-written
    backward (same gradients as autograd's double backward, without its zero-valued passes).

    The critic is h = S W1^T + h_cond (per B-row block), score = LReLU(h) w2^T + b2.  For an
    interpolate row the input gradient is g = (m * w2) W1 with m = LReLU'(h) in {1, slope}, piecewise
    constant in h, so the penalty E(||g|| - 1)^2 has no gradient through h (autograd propagates zeros
    there: a wasted weight-gradient matmul and gradient additions).  The backward stacks the score
    rows and the penalty term into one weight-gradient matmul with 3B inner rows:
    dW1 = [dh_real; dh_fake; m * w2]^T [S_real; S_fake; dPen/dg].
    """

    @staticmethod
    def forward(ctx, subject, h_cond, w1, w2, b2, slope: float):
        """subject [..., 3B, s] (real, fake, interpolates; no gradient), h_cond [..., B, H] (condition
        part of the first layer, bias included), w1 [..., H, s], w2 [..., 1, H], b2 [..., 1] ->
        (scores [..., 2B], penalty [...]); "..." is empty for a plain run, K for fused members."""
        b = h_cond.shape[-2]
        h = (subject @ w1.mT).unflatten(-2, (3, b)) + h_cond.unsqueeze(-3)
        slopes = torch.where(h > 0, 1.0, h.new_tensor(slope))      # LReLU'(h), [..., 3, B, H]
        act = (h * slopes)[..., :2, :, :].flatten(-3, -2)
        scores = (act @ w2.mT).squeeze(-1) + b2
        gw = slopes[..., 2, :, :] * w2                               # d score / d h of the interpolates
        g = gw @ w1                                                  # input gradient, [..., B, s]
        norm = g.norm(dim=-1)
        penalty = ((norm - 1.0) ** 2).mean(-1)
        ctx.save_for_backward(subject, w1, w2, act, slopes, gw, g, norm)
        return scores, penalty

    @staticmethod
    @once_differentiable
    def backward(ctx, d_scores, d_penalty):
        subject, w1, w2, act, slopes, gw, g, norm = ctx.saved_tensors
        b, lead = gw.shape[-2], gw.shape[:-2]
        if d_scores is None:
            d_scores = torch.zeros(*lead, 2 * b, dtype=act.dtype, device=act.device)
        if d_penalty is None:
            d_penalty = torch.zeros(lead, dtype=act.dtype, device=act.device)
        dh = d_scores.unsqueeze(-1) * slopes[..., :2, :, :].flatten(-3, -2) * w2   # [..., 2B, H]
        scale = torch.where(norm > 0, (norm - 1.0) / norm, 0.0) * (2.0 / b)
        dg = (d_penalty.unsqueeze(-1) * scale).unsqueeze(-1) * g                    # [..., B, s]
        dw1 = torch.cat([dh, gw], -2).mT @ torch.cat([subject[..., : 2 * b, :], dg], -2)
        dw2 = d_scores.unsqueeze(-2) @ act + ((dg @ w1.mT) * slopes[..., 2, :, :]).sum(-2, keepdim=True)
        db2 = d_scores.sum(-1, keepdim=True)
        dh_cond = dh.unflatten(-2, (2, b)).sum(-3)
        return None, dh_cond, dw1, dw2, db2, None


class Critic(nn.Module):
    """A WGAN critic on [subject; x_{t+1}?; a?; phi(c)?; TimeMLP(s(t))?] -> ndh -> 1 (LeakyReLU).

    ``subject`` is the input judged real/fake (and interpolated by the gradient penalty); the other
    parts form the condition, built once per batch by :meth:`condition`.  The first layer on the
    concatenation is stored as its two column blocks, ``fc1_subject`` (no bias) and ``fc1_cond``
    (with the bias): W [s; k] = W_s s + W_c k, row by row the same layer.  :meth:`forward` takes n*B
    subject rows for one B-row condition (real, fake and interpolates in one forward) and applies
    W_c to the condition once.
    """

    def __init__(self, subject_dim: int, hidden: int, *, next_dim: int = 0, att_dim: int = 0,
                 con_dim: int = 0, dim_t: int = 0, emb_dim: int = 0, members: int | None = None):
        super().__init__()
        self.next_dim, self.att_dim = next_dim, att_dim
        self.con = ConMLP(con_dim, emb_dim, members) if con_dim else None
        self.time = TimeMLP(dim_t, emb_dim, members) if dim_t else None
        cond_dim = next_dim + att_dim + (emb_dim if con_dim else 0) + (emb_dim if dim_t else 0)
        self.in_features = subject_dim + cond_dim
        self.fc1_subject = linear(subject_dim, hidden, bias=False, members=members)
        self.fc1_cond = linear(cond_dim, hidden, members=members)
        self.fc2 = linear(hidden, 1, members=members)

    def condition(self, *, x_next=None, a=None, c=None, t=None) -> torch.Tensor:
        """The condition rows [B, cond_dim] in the order x_{t+1}, a, phi(c), TimeMLP(s(t))."""
        parts = []
        if self.next_dim:
            parts.append(x_next)
        if self.att_dim:
            parts.append(a)
        if self.con is not None:
            parts.append(self.con(c))
        if self.time is not None:
            parts.append(self.time(t))
        return torch.cat(parts, -1)

    def forward(self, subject: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Critic values [..., n*B] for subject rows [..., n*B, s] (n blocks of B) against cond [..., B, k]."""
        b = cond.shape[-2]
        h = self.fc1_subject(subject).unflatten(-2, (-1, b)) + self.fc1_cond(cond).unsqueeze(-3)
        return self.fc2(F.leaky_relu(h, 0.2).flatten(-3, -2)).squeeze(-1)

    def scores_and_penalty(self, real: torch.Tensor, fake: torch.Tensor, mix: torch.Tensor,
                           cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(scores of real [..., B], of fake [..., B], E(||d critic(mix)/d mix||_2 - 1)^2 [...]) in one
        first-layer matmul over the 3B subject rows; gradients reach the critic's parameters and
        ``cond``, not the subject rows (real, fake and interpolates are data here)."""
        if real.requires_grad or fake.requires_grad or mix.requires_grad:
            raise ValueError("Critic.scores_and_penalty: subject rows must not require gradients.")
        scores, penalty = _ScoresAndPenalty.apply(
            torch.cat([real, fake, mix], -2), self.fc1_cond(cond), self.fc1_subject.weight,
            self.fc2.weight, self.fc2.bias, 0.2)
        s_real, s_fake = scores.chunk(2, dim=-1)
        return s_real, s_fake, penalty


class Encoder(nn.Module):
    """E (embed_type VA): [x (R); a (A)] -> hidden -> 2Z (LReLU both) -> heads mu, logvar [B, Z]."""

    def __init__(self, feat_dim: int, att_dim: int, noise_dim: int, hidden: int, members: int | None = None):
        super().__init__()
        self.body = nn.Sequential(
            linear(feat_dim + att_dim, hidden, members=members), nn.LeakyReLU(0.2),
            linear(hidden, 2 * noise_dim, members=members), nn.LeakyReLU(0.2),
        )
        self.mu = linear(2 * noise_dim, noise_dim, members=members)
        self.logvar = linear(2 * noise_dim, noise_dim, members=members)

    def forward(self, x: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(torch.cat([x, a], -1))
        return self.mu(h), self.logvar(h)


class SemanticDecoder(nn.Module):
    """Dec (V2S): v [B, D] -> Linear(D->ngh), LReLU -> h; Linear(ngh->A), L2-normalised if ``normalise``.

    forward returns (a_hat [B, A], h [B, ngh]).
    """

    def __init__(self, in_dim: int, hidden: int, att_dim: int, normalise: bool, members: int | None = None):
        super().__init__()
        self.fc1 = linear(in_dim, hidden, members=members)
        self.fc2 = linear(hidden, att_dim, members=members)
        self.normalise = normalise

    def forward(self, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = F.leaky_relu(self.fc1(v), 0.2)
        out = self.fc2(h)
        if self.normalise:
            out = F.normalize(out, dim=-1)
        return out, h
