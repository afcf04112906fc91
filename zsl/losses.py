"""Loss terms of D2SC/ZeroDiff as pure functions on tensors (spec d2sc §5-§7).

Shapes: B batch rows, D feature dims.  Every function returns a 0-d tensor (differentiable)
unless stated otherwise.  Inputs may carry leading axes (fused members: [K, B, D]); reductions run
over the trailing batch and feature axes only, so the result is then one value per member, [K].
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F


def interpolate(real: torch.Tensor, fake: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """WGAN-GP interpolate x̃ = u real + (1-u) fake; u: [B] in [0,1], real/fake: [B, D]."""
    u = u.unsqueeze(-1)
    return u * real + (1.0 - u) * fake


def gradient_penalty(grad: torch.Tensor) -> torch.Tensor:
    """E[(||g_i||_2 - 1)^2] over rows of the critic's input gradient ``grad`` [B, D] (without lambda)."""
    return ((grad.norm(2, dim=-1) - 1.0) ** 2).mean(-1)


def weighted_l1(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """WL1 = (1/B) sum_i sum_j |d_ij|^3 / ||d_i||_2 with d = pred - target (weights not detached).

    Undefined (NaN) for a row with d_i = 0, as in the reference.
    """
    d = pred - target
    return (d.abs() ** 3 / d.norm(2, dim=-1, keepdim=True)).sum(-1).mean(-1)


def kl_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, e^logvar) || N(0, I)) summed over dims, averaged over the B rows."""
    return -0.5 * (1.0 + logvar - mu**2 - logvar.exp()).sum((-2, -1)) / mu.shape[-2]


def vae_loss(
    x_hat: torch.Tensor, x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor,
    recon: str = "mean", kl_clamp: float = 100.0,
) -> torch.Tensor:
    """Reconstruction + clamp(KL, 0, kl_clamp).

    recon "mean": squared error averaged over B*D elements (D2SC reference);
    "sum": squared error summed over dims, averaged over B (ZeroDiff's scale);
    "bce_sum": binary cross-entropy summed over dims, averaged over B (ZeroDiff's own term; x_hat
    and x in [0, 1]).
    """
    if recon == "bce_sum":
        rec = F.binary_cross_entropy(x_hat, x, reduction="none").sum((-2, -1)) / x.shape[-2]
    else:
        sq = (x_hat - x) ** 2
        rec = sq.mean((-2, -1)) if recon == "mean" else sq.sum((-2, -1)) / x.shape[-2]
    return rec + kl_standard_normal(mu, logvar).clamp(0.0, kl_clamp)


def mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the B*D elements (F.mse_loss, per member when fused)."""
    return ((pred - target) ** 2).mean((-2, -1))


def recon_elements(recon: str, dim: int) -> int:
    """How many per-element errors one row's reconstruction term adds up: 1 for "mean", ``dim``
    for the summed reductions.  A loss weight divided by it is a weight per element."""
    return 1 if recon == "mean" else dim


def pairwise_sq_dists(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """||x_i - y_j||^2 as [Bx, By] (clamped at 0 against rounding)."""
    d = (x * x).sum(-1, keepdim=True) + (y * y).sum(-1).unsqueeze(-2) - 2.0 * x @ y.mT
    return d.clamp_min(0.0)


def mmd(x: torch.Tensor, y: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """Biased MMD^2 with the kernel mean_s exp(-||u-v||^2 / (2 sigma_s^2)), diagonals included.

    Averaging over bandwidths keeps MMD^2 in [0, 2] whatever their number, so gamma_mmd keeps its scale.

    x: [Bx, D] generated, y: [By, D] real; sigmas: [S] bandwidths (one for the reference's sigma=1),
    or [K, S] for fused members.
    """
    inv = (1.0 / (2.0 * sigmas**2))[..., None, None, :]
    def k(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.exp(-pairwise_sq_dists(a, b).unsqueeze(-1) * inv).mean(-1)
    return k(x, x).mean((-2, -1)) + k(y, y).mean((-2, -1)) - 2.0 * k(x, y).mean((-2, -1))


def median_bandwidths(x: torch.Tensor, y: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """Median-heuristic bandwidths sigma_s = sqrt(scale_s * median ||u - v||^2 / 2) over the pooled batch.

    The median is taken over all pairs of [x; y] (off-diagonal), detached; returns [S] ([K, S] fused).
    """
    pooled = torch.cat([x, y], -2).detach()
    d = pairwise_sq_dists(pooled, pooled)
    n = d.shape[-1]
    off = d[..., ~torch.eye(n, dtype=torch.bool, device=d.device)]
    med = off.median(-1).values.clamp_min(1e-12)
    return (scales * med.unsqueeze(-1) / 2.0).sqrt()


def center_loss(x_hat: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """(1/B) sum_i ||x̂_i - center_i||^2; centers: [B, D] (the class centre of each row)."""
    return ((x_hat - centers) ** 2).sum(-1).mean(-1)


def distillation_loss(w0: torch.Tensor, wt: torch.Tensor, wc: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Mutual-learning loss between the three DFG critics (spec §6 step 6), without gamma_dist.

    w0, wt, wc: [B] per-sample real-minus-fake critic gaps; factor: [B] weight a_bar_t^factor_dist
    applied to the four pairs that involve the diffusion critic.  Each pair pulls one gap towards
    the other's stop-gradient value, so gradients reach all three critics.
    """
    def pull(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        return (p - q.detach()) ** 2
    return (
        (factor * pull(w0, wt)).mean(-1) + (factor * pull(wt, w0)).mean(-1)
        + (factor * pull(wc, wt)).mean(-1) + (factor * pull(wt, wc)).mean(-1)
        + pull(w0, wc).mean(-1) + pull(wc, w0).mean(-1)
    )


def clip_member_grad_norms(params: list[torch.Tensor], max_norm: float, eps: float = 1e-6) -> torch.Tensor:
    """Per-member clip_grad_norm_ for parameters stacked on a leading member axis [K, ...]: member k's
    gradients are scaled by min(1, max_norm / (||g_k|| + eps)), ||g_k|| the L2 norm over all of
    member k's gradients (torch.nn.utils.clip_grad_norm_'s rule, member by member).  Returns the [K] norms."""
    norms = torch.stack([p.grad.pow(2).flatten(1).sum(1) for p in params]).sum(0).sqrt()
    coef = (max_norm / (norms + eps)).clamp(max=1.0)
    for p in params:
        p.grad.mul_(coef.view(-1, *[1] * (p.grad.dim() - 1)))
    return norms


def adapt_gp_weight(lam: torch.Tensor, mean_penalty: torch.Tensor, high: float = 1.05, low: float = 1.001,
                    rate: float = 1.1) -> torch.Tensor:
    """Adaptive GP weight of DFG: lam*rate if mean_penalty > high, lam/rate if < low, else lam (on device)."""
    return torch.where(mean_penalty > high, lam * rate, torch.where(mean_penalty < low, lam / rate, lam))


def n_mismatched(batch: int, ratio: float) -> int:
    """Rows of a batch that get a wrong class attribute in DRG negative sampling: ceil(ratio * batch)."""
    return math.ceil(ratio * batch)


def mismatched_classes(y: torch.Tensor, classes: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """A class other than y_i for each row: classes[(pos(y_i) + 1 + offsets_i) mod K].

    y: [k] labels, each one of ``classes``; classes: [K] sorted ascending, K >= 2; offsets: [k]
    integers in [0, K-2].  The step 1 + offset lies in [1, K-1], so the result is never y_i, and it
    is uniform over the K-1 other classes when the offsets are.
    """
    pos = torch.searchsorted(classes, y)
    return classes[(pos + 1 + offsets) % classes.shape[0]]


def mismatched_pair_score(critic, c: torch.Tensor, y: torch.Tensor, class_emb: torch.Tensor,
                          classes: torch.Tensor, rows: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """E_i critic(c[rows_i], class_emb[wrong_i]): the mean critic value of real c paired with a wrong
    class's attribute (spec d2sc §5 step 6; without the weight gamma_x0 * ratio).

    critic: callable (c [k, C], a [k, A]) -> scores [k]; c: [B, C]; y: [B] labels; class_emb: [K_all, A];
    classes: [K] sorted candidate classes (the seen ones); rows: [k] batch rows; offsets: [k] in [0, K-2].
    """
    wrong = mismatched_classes(y[rows], classes, offsets)
    return critic(c[rows], class_emb[wrong]).mean()
