"""RevCD: reversed conditional diffusion for (G)ZSL (spec: shared/spec/revcd.md).

A conditional DDPM models the class-semantic vector s given an image feature x.  Training uses seen
pairs only; at test time the reverse chain, steered by classifier-free guidance on x, turns each
test feature into ŝ, which is classified by the nearest class prototype under cosine distance.
Every [X] choice of the spec is a named :class:`Config` field.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from zsl import ddpm
from zsl.data.types import ZSLData
from zsl.errors import UserError
from zsl.metrics import harmonic_mean, per_class_accuracy
from zsl.models import validate_config
from zsl.models.revcd_nets import Denoiser, RevCDNet, SeenClassifier, VisualEncoder
from zsl.trainer import SingleStageEpochs


@dataclass
class Config:
    """RevCD hyperparameters (spec §9); [X] marks our choice where the paper is silent."""

    # --- data preparation
    sem_norm: str = "minmax_dim"   # [X] semantics into [0,1]: minmax_dim (clip<0, per-dim min-max) | global_max | raw
    visual_norm: str = "none"      # [X] extra feature scaling on top of the loader's: none | minmax (fit on train) | l2
    # --- diffusion
    timesteps: int = 1000          # T [I]
    beta_schedule: str = "linear"  # [X] linear | cosine
    beta_start: float = 1e-4       # [X] β_1 of the linear schedule
    beta_end: float = 0.02         # [X] β_T of the linear schedule
    # --- networks
    hidden: int = 512              # [X] U-Net width H (bottleneck H/2)
    dropout: float = 0.1           # [X] dropout in the U-Net blocks
    time_dim: int = 128            # [X] sinusoidal embedding size d (even)
    time_mlp: bool = True          # [X] SiLU MLP on the time embedding before the per-layer projections
    fusion: str = "cross"          # cross: encoder h*tau+c, decoder h*c+tau (§3.3.1) | ablations (§4.0.2): add (h+tau+c), concat ([h,t]->Linear, +c)
    mult_offset: bool = False      # deviation: multiply by (1 + projection) instead of the projection
    vis_tokens: int = 16           # [X] K tokens the pooled feature is cut into
    vis_dim: int = 256             # [X] Transformer d_model
    vis_layers: int = 2            # [X] Transformer layers
    vis_heads: int = 4             # [X] attention heads
    vis_dropout: float = 0.1       # [X] Transformer dropout
    null_cond: str = "learned"     # [X] CFG null condition: learned code vector | zero_input (c(0))
    classifier: str = "linear"     # [X] auxiliary classifier on ŝ_0: linear | cosine (fixed seen prototypes)
    cls_temperature: float = 0.1   # [X] temperature of the cosine classifier
    # --- loss
    lambda_rec: float = 1.0        # λ1 [P]
    lambda_noise: float = 1.0      # λ2 [P]
    lambda_cls: float = 0.1        # λ3 [X], dataset dependent
    snr_clamp: float = 0.0         # deviation: >0 weighs L_noise by min(SNR_t, γ)·L_rec (min-SNR); 0 = exact ε-loss
    p_uncond: float = 0.1          # [X] condition-dropout probability for CFG
    # --- optimisation
    epochs: int = 300              # [X] passes over the training images (≈30k iterations at batch 256 on AWA2)
    batch_size: int = 256          # [X]
    lr: float = 5e-4               # [X] AdamW learning rate
    weight_decay: float = 1e-4     # [X] AdamW weight decay
    lr_schedule: str = "cosine"    # [X] cosine decay over all iterations | constant
    grad_clip: float = 1.0         # [X] max gradient norm (0 = off)
    ema_decay: float = 0.0         # deviation: >0 evaluates an EMA of the weights with this decay
    # --- sampling and classification
    guidance: float = 1.0          # [X] CFG strength g: ŝ_0 = (1+g)·ŝ_c − g·ŝ_u (0 = purely conditional)
    sampler: str = "ddpm"          # ddpm: ancestral (strided if sample_steps < T) | ddim
    sample_steps: int = 0          # reverse steps visited, strided evenly; 0 = all T (the full chain)
    ddim_eta: float = 0.0          # DDIM η (0 deterministic, 1 = ancestral with posterior variance)
    ddpm_sigma: str = "beta"       # ancestral noise: beta (√β) | beta_tilde (√β̃) | beta_literal (β, paper text) | zero
    clip_x0: bool = False          # [X] clip the guided ŝ_0 to [-1, 1] at every step
    samples_per_image: int = 1     # deviation when > 1: average this many ŝ per image
    sample_batch: int = 8192       # images per sampling chunk (memory knob, no effect on results)
    calibration: float = 0.0       # non-paper: constant added to seen-class distances in GZSL (calibrated stacking)


_CHOICES = {
    "sem_norm": ("minmax_dim", "global_max", "raw"),
    "visual_norm": ("none", "minmax", "l2"),
    "beta_schedule": ddpm.BETA_SCHEDULES,
    "fusion": ("cross", "add", "concat"),
    "null_cond": ("learned", "zero_input"),
    "classifier": ("linear", "cosine"),
    "lr_schedule": ("cosine", "constant"),
    "sampler": ("ddpm", "ddim"),
    "ddpm_sigma": ddpm.DDPM_SIGMAS,
}


def check_config(cfg: Config) -> None:
    """Reject impossible settings with one sentence naming the hyperparameter (UserError)."""
    for key, options in _CHOICES.items():
        if getattr(cfg, key) not in options:
            raise UserError(f"hyperparameter '{key}' of model 'revcd' must be one of {', '.join(options)}, got {getattr(cfg, key)!r}.")
    positive = ("timesteps", "hidden", "time_dim", "vis_tokens", "vis_dim", "vis_layers", "vis_heads",
                "epochs", "batch_size", "samples_per_image", "sample_batch")
    for key in positive:
        if getattr(cfg, key) < 1:
            raise UserError(f"hyperparameter '{key}' of model 'revcd' must be at least 1, got {getattr(cfg, key)}.")
    if cfg.time_dim % 2:
        raise UserError(f"hyperparameter 'time_dim' of model 'revcd' must be even, got {cfg.time_dim}.")
    if cfg.vis_dim % cfg.vis_heads:
        raise UserError(f"hyperparameter 'vis_dim' ({cfg.vis_dim}) of model 'revcd' must be divisible by 'vis_heads' ({cfg.vis_heads}).")
    if not 0 <= cfg.sample_steps <= cfg.timesteps:
        raise UserError(f"hyperparameter 'sample_steps' ({cfg.sample_steps}) of model 'revcd' must be in 0..'timesteps' ({cfg.timesteps}); 0 means all.")
    if not 0.0 <= cfg.p_uncond < 1.0:
        raise UserError(f"hyperparameter 'p_uncond' of model 'revcd' must be in [0, 1), got {cfg.p_uncond}.")
    if not 0.0 <= cfg.ema_decay < 1.0:
        raise UserError(f"hyperparameter 'ema_decay' of model 'revcd' must be in [0, 1), got {cfg.ema_decay}.")
    if not 0.0 < cfg.beta_start <= cfg.beta_end < 1.0:
        raise UserError("hyperparameters 'beta_start'/'beta_end' of model 'revcd' must satisfy 0 < beta_start <= beta_end < 1.")
    for key in ("dropout", "vis_dropout"):
        if not 0.0 <= getattr(cfg, key) < 1.0:
            raise UserError(f"hyperparameter '{key}' of model 'revcd' must be in [0, 1), got {getattr(cfg, key)}.")


def normalise_semantics(emb: np.ndarray, kind: str) -> np.ndarray:
    """Class semantics [K, A] into [0, 1] (spec §2): the classification prototypes and diffusion targets.

    ``minmax_dim``: clip negatives to 0, then per-dimension min–max over all K classes (constant
    dimensions become 0); ``global_max``: clip negatives, divide by the global maximum; ``raw``: as given.
    """
    emb = np.asarray(emb, dtype=np.float64)
    if kind == "raw":
        return emb.astype(np.float32)
    emb = np.clip(emb, 0.0, None)
    if kind == "global_max":
        return (emb / max(emb.max(), 1e-12)).astype(np.float32)
    lo, span = emb.min(0, keepdims=True), np.ptp(emb, axis=0, keepdims=True)
    return np.where(span > 0, (emb - lo) / np.where(span > 0, span, 1.0), 0.0).astype(np.float32)


def to_signed(s: torch.Tensor) -> torch.Tensor:
    """Affine pre-conditioning [0, 1] -> [−1, 1]: s′ = 2s − 1."""
    return 2 * s - 1


def from_signed(s: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`to_signed`: (s′ + 1)/2."""
    return (s + 1) / 2


def cosine_nearest(queries: torch.Tensor, prototypes: torch.Tensor, offsets: torch.Tensor | None = None) -> torch.Tensor:
    """Row index of the nearest prototype under cosine distance 1 − cos (spec Eq. 24).

    queries [N, A], prototypes [M, A], optional ``offsets`` [M] added to each prototype's distance
    (calibrated stacking); returns [N] int64 positions into ``prototypes``.
    """
    dist = 1 - F.normalize(queries, dim=1) @ F.normalize(prototypes, dim=1).T
    if offsets is not None:
        dist = dist + offsets
    return dist.argmin(1)


def scale_features(train_x: np.ndarray, others: list[np.ndarray], kind: str) -> list[np.ndarray]:
    """Extra visual scaling: ``minmax`` fitted on ``train_x`` only, ``l2`` per row, ``none``; returns [train, *others]."""
    arrays = [train_x, *others]
    if kind == "none":
        return arrays
    if kind == "l2":
        return [a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12) for a in arrays]
    lo, span = train_x.min(0), np.ptp(train_x, axis=0)
    span = np.where(span > 0, span, 1.0)
    return [((a - lo) / span).astype(np.float32) for a in arrays]


class RevCD(SingleStageEpochs):
    """The Trainer (zsl.trainer) for RevCD.  One epoch = one shuffled pass over the training images
    in full batches; ``evaluate()`` samples ŝ for every evaluation image in one batched chain."""

    Config = Config
    STAGE = "diffusion"  # the stage name train_epoch reports

    def __init__(self, config: dict, data: ZSLData, device, seed: int):
        cfg = Config(**validate_config(Config, config, where="model 'revcd'"))
        check_config(cfg)
        self.cfg, self.data, self.seed = cfg, data, int(seed)
        self.device = torch.device(device)
        self.epochs_total, self.epoch = cfg.epochs, 0
        self._tensors(data)
        n_train = self.train_x.shape[0]
        self.batch = min(cfg.batch_size, n_train)
        self.iters_per_epoch = max(1, n_train // self.batch)
        self.sched = ddpm.Schedule.make(cfg.beta_schedule, cfg.timesteps, self.device, cfg.beta_start, cfg.beta_end)
        self.gen = torch.Generator(self.device).manual_seed(self.seed)
        self._cpu_rng = torch.Generator().manual_seed(self.seed).get_state()
        self._cuda_rng = None
        with self._own_global_rng():
            torch.manual_seed(self.seed)
            self.net = self._build().to(self.device)
        self.ema = copy.deepcopy(self.net).requires_grad_(False) if cfg.ema_decay > 0 else None
        self.opt = torch.optim.AdamW(self.net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        total = cfg.epochs * self.iters_per_epoch
        decay = (lambda i: 0.5 * (1 + math.cos(math.pi * min(i, total) / total))) if cfg.lr_schedule == "cosine" else (lambda i: 1.0)
        self.lr_sched = torch.optim.lr_scheduler.LambdaLR(self.opt, decay)

    # ------------------------------------------------------------------ setup
    def _tensors(self, data: ZSLData) -> None:
        """Move the data to the device: features, seen-local labels, prototypes [K, A] in [0, 1]."""
        tr, es, eu = scale_features(data.train_x, [data.eval_seen_x, data.eval_unseen_x], self.cfg.visual_norm)
        dev = self.device
        as_f = lambda a: torch.as_tensor(np.asarray(a, dtype=np.float32), device=dev)
        as_i = lambda a: torch.as_tensor(np.asarray(a, dtype=np.int64), device=dev)
        self.train_x, self.eval_seen_x, self.eval_unseen_x = as_f(tr), as_f(es), as_f(eu)
        self.seen, self.unseen = as_i(data.seen_classes), as_i(data.unseen_classes)
        self.eval_seen_y, self.eval_unseen_y = as_i(data.eval_seen_y), as_i(data.eval_unseen_y)
        self.prototypes = as_f(normalise_semantics(data.class_emb, self.cfg.sem_norm))
        local = torch.full((data.n_classes,), -1, dtype=torch.int64, device=dev)
        local[self.seen] = torch.arange(len(self.seen), device=dev)
        self.train_local = local[as_i(data.train_y)]
        if bool((self.train_local < 0).any()):
            raise UserError(f"dataset '{data.name}': train_y holds classes outside seen_classes; fix the split.")
        self.seen_targets = to_signed(self.prototypes[self.seen])  # [Cs, A] in [-1, 1]

    def _build(self) -> RevCDNet:
        cfg, A, R = self.cfg, self.data.emb_dim, self.data.feature_dim
        encoder = VisualEncoder(R, cfg.vis_tokens, cfg.vis_dim, cfg.vis_layers, cfg.vis_heads, cfg.vis_dropout)
        denoiser = Denoiser(A, cfg.hidden, cfg.time_dim, cfg.vis_dim, cfg.dropout, cfg.time_mlp, cfg.fusion, cfg.mult_offset)
        classifier = SeenClassifier(cfg.classifier, self.seen_targets, cfg.cls_temperature)
        return RevCDNet(encoder, denoiser, classifier, cfg.null_cond, cfg.vis_dim, R)

    @contextlib.contextmanager
    def _own_global_rng(self):
        """Run with this model's own global RNG stream (dropout draws), leaving the caller's untouched."""
        cuda = self.device.type == "cuda"
        index = self.device.index if self.device.index is not None else 0
        with torch.random.fork_rng(devices=[index] if cuda else []):
            torch.set_rng_state(self._cpu_rng)
            if cuda and self._cuda_rng is not None:
                torch.cuda.set_rng_state(self._cuda_rng, index)
            yield
            self._cpu_rng = torch.get_rng_state()
            if cuda:
                self._cuda_rng = torch.cuda.get_rng_state(index)

    # ------------------------------------------------------------------ training
    def losses(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        """The three RevCD losses on training rows ``idx`` [B] (spec §5); draws t, ε, drop from ``self.gen``."""
        cfg, gen, dev = self.cfg, self.gen, self.device
        x, y = self.train_x[idx], self.train_local[idx]
        s0 = self.seen_targets[y]
        n = idx.shape[0]
        t = torch.randint(1, cfg.timesteps + 1, (n,), generator=gen, device=dev)
        eps = torch.randn(s0.shape, generator=gen, device=dev)
        drop = torch.rand(n, generator=gen, device=dev) < cfg.p_uncond
        abar = self.sched.alpha_bars[t]
        s_t = ddpm.q_sample(s0, abar, eps)
        s0_hat = self.net.denoiser(s_t, t, self.net.code(x, drop))
        err = (s0_hat - s0).pow(2).mean(1)  # [B]
        if cfg.snr_clamp > 0:
            l_noise = (ddpm.snr(abar).clamp(max=cfg.snr_clamp) * err).mean()
        else:
            l_noise = (eps - ddpm.eps_from_x0(s_t, abar, s0_hat)).pow(2).mean()
        keep = (~drop).float()
        ce = F.cross_entropy(self.net.classifier(s0_hat), y, reduction="none")
        l_cls = (ce * keep).sum() / keep.sum().clamp(min=1.0)
        l_rec = err.mean()
        total = cfg.lambda_rec * l_rec + cfg.lambda_noise * l_noise + cfg.lambda_cls * l_cls
        return {"loss": total, "rec": l_rec, "noise": l_noise, "cls": l_cls}

    def _step(self, idx: torch.Tensor) -> torch.Tensor:
        """One joint optimiser step; returns the detached losses [4] (no host sync)."""
        out = self.losses(idx)
        self.opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        if self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.net.parameters(), self.cfg.grad_clip)
        self.opt.step()
        self.lr_sched.step()
        if self.ema is not None:
            self._update_ema()
        return torch.stack([out[k].detach() for k in ("loss", "rec", "noise", "cls")])

    @torch.no_grad()
    def _update_ema(self) -> None:
        ema_p, p = list(self.ema.parameters()), list(self.net.parameters())
        torch._foreach_lerp_(ema_p, p, 1 - self.cfg.ema_decay)
        for b_ema, b in zip(self.ema.buffers(), self.net.buffers()):
            b_ema.copy_(b)

    def train_epoch(self) -> dict:
        """One shuffled pass in ``iters_per_epoch`` full batches; mean losses (one host sync)."""
        start = time.perf_counter()
        n_it = self.iters_per_epoch
        with self._own_global_rng():
            self.net.train()
            perm = torch.randperm(self.train_x.shape[0], generator=self.gen, device=self.device)
            sums = torch.zeros(4, device=self.device)
            for idx in perm[: n_it * self.batch].view(n_it, self.batch):
                sums += self._step(idx)
        self.epoch += 1
        loss, rec, noise, cls = (sums / n_it).tolist()
        return {"stage": "diffusion", "loss": loss, "loss_rec": rec, "loss_noise": noise, "loss_cls": cls,
                "lr": self.opt.param_groups[0]["lr"], "epoch_s": time.perf_counter() - start}

    # ------------------------------------------------------------------ sampling and evaluation
    @torch.no_grad()
    def sample_semantics(self, x: torch.Tensor, generator: torch.Generator, cfg: Config | None = None) -> torch.Tensor:
        """ŝ in [0, 1] [N, A] for features x [N, R]: guided reverse chain over all rows at once, in
        chunks of ``sample_batch`` images; c(x) and the null code are computed once per chunk."""
        cfg = cfg or self.cfg
        net = self.ema if self.ema is not None else self.net
        net.eval()
        return torch.cat([self._sample_chunk(net, chunk, generator, cfg) for chunk in x.split(cfg.sample_batch)])

    def _sample_chunk(self, net: RevCDNet, x, gen, cfg: Config) -> torch.Tensor:
        k, g = cfg.samples_per_image, cfg.guidance
        code = net.code(x).repeat_interleave(k, 0)  # [n, M]
        n, guided = code.shape[0], g != 0
        if guided:
            code = torch.cat([code, net.null_code(n, code)])
        s = torch.randn(n, self.data.emb_dim, generator=gen, device=self.device)
        visits = ddpm.strided_timesteps(cfg.timesteps, cfg.sample_steps or cfg.timesteps)
        abars = self.sched.alpha_bars
        for t, t_prev in zip(visits[:-1], visits[1:]):
            tt = torch.full((code.shape[0],), t, dtype=torch.int64, device=self.device)
            pred = net.denoiser(torch.cat([s, s]) if guided else s, tt, code)
            x0 = (1 + g) * pred[:n] - g * pred[n:] if guided else pred
            if cfg.clip_x0:
                x0 = x0.clamp(-1, 1)
            noise = torch.randn(s.shape, generator=gen, device=self.device) if t_prev > 0 else torch.zeros_like(s)
            if cfg.sampler == "ddim":
                s = ddpm.ddim_step(x0, s, abars[t], abars[t_prev], cfg.ddim_eta, noise)
            else:
                sigma = ddpm.ddpm_sigma(cfg.ddpm_sigma, abars[t], abars[t_prev])
                s = ddpm.ddpm_step(x0, s, abars[t], abars[t_prev], sigma, noise)
        return from_signed(s).view(-1, k, s.shape[1]).mean(1)

    def evaluate(self, **sampling) -> dict:
        """GZSL S/U/H and ZSL accuracy (percent) on the data's evaluation sets.

        ``sampling``: optional overrides of sampling fields (e.g. ``sample_steps=50``) for this call
        only.  Uses its own generator (seeded from the run seed), so the training stream is untouched.
        """
        cfg = Config(**{**asdict(self.cfg), **sampling})
        check_config(cfg)
        start = time.perf_counter()
        gen = torch.Generator(self.device).manual_seed(self.seed + 7919)
        with self._own_global_rng():
            s_hat = self.sample_semantics(torch.cat([self.eval_seen_x, self.eval_unseen_x]), gen, cfg)
        n_seen = self.eval_seen_x.shape[0]
        cand = torch.cat([self.seen, self.unseen])
        offsets = torch.cat([torch.full((len(self.seen),), cfg.calibration, device=self.device),
                             torch.zeros(len(self.unseen), device=self.device)])
        pred = cand[cosine_nearest(s_hat, self.prototypes[cand], offsets)]
        pred_zsl = self.unseen[cosine_nearest(s_hat[n_seen:], self.prototypes[self.unseen])]
        acc = torch.stack([
            per_class_accuracy(pred[:n_seen], self.eval_seen_y, self.seen),
            per_class_accuracy(pred[n_seen:], self.eval_unseen_y, self.unseen),
            per_class_accuracy(pred_zsl, self.eval_unseen_y, self.unseen),
        ]) * 100
        s, u, zsl = acc.tolist()
        return {"S": s, "U": u, "H": harmonic_mean(s, u), "ZSL": zsl, "eval_s": time.perf_counter() - start}

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict:
        return {
            "epoch": self.epoch,
            "seed": self.seed,
            "net": self.net.state_dict(),
            "ema": None if self.ema is None else self.ema.state_dict(),
            "opt": self.opt.state_dict(),
            "lr_sched": self.lr_sched.state_dict(),
            "gen": self.gen.get_state(),
            "cpu_rng": self._cpu_rng.clone(),
            "cuda_rng": None if self._cuda_rng is None else self._cuda_rng.clone(),
            "config": asdict(self.cfg),
        }

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.seed = int(state["epoch"]), int(state["seed"])
        self.net.load_state_dict(state["net"])
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"])
        self.opt.load_state_dict(state["opt"])
        self.lr_sched.load_state_dict(state["lr_sched"])
        self.gen.set_state(state["gen"])
        self._cpu_rng = state["cpu_rng"].clone()
        self._cuda_rng = None if state["cuda_rng"] is None else state["cuda_rng"].clone()
