"""D2SC: dual-stage diffusion-GAN feature generation for (G)ZSL (spec d2sc §2-§9), as one Trainer.

Stage 1 (DRG) trains G_c to generate the second-view representation c from class semantics;
stage 2 (DFG) trains G_x to generate visual features x conditioned on (a, c).  One trainer runs
both: ``drg_epochs`` epochs of DRG, then ``dfg_epochs`` of DFG (``epochs_total`` = their sum).
ZeroDiff is this model with the D2SC terms off (preset ``zerodiff``).

Fused seeds: built with a list of seeds, the trainer runs K = len(seeds) members as one batched
model.  Every net is a stack of K nets (zsl.models.d2sc_nets.StackedLinear), every batch tensor
carries a leading K axis, each member draws from its own generator in the order a plain run draws,
and losses, gradient clipping and the adaptive GP weight are per member, so member k trains as the
plain run with seed k up to the float rounding of batched matmuls.  That rounding does not stay
small for ever: the gradient penalty depends on which side of zero each LeakyReLU input lies, so a
pre-activation within rounding of zero flips the penalty's gradient, and from then on member k is
another sample of seed k's training, as the plain run would be on other hardware or BLAS (measured
on sim-AWA2 at the demo sizes: equal within 2e-7 for 18 DRG iterations, 7e-4 apart after the 19th).
Evaluation scores each member with its own weights and seed and reports the members' mean (and sd)
of S/U/H/ZSL.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from zsl import losses
from zsl.data.types import ZSLData
from zsl.diffusion import make_schedule, q_sample_pairs, sample_posterior
from zsl.errors import UserError
from zsl.models import validate_config
from zsl.synthesis import synthesize
from zsl.models.d2sc_nets import (
    Critic, Encoder, FeatureGenerator, RepresentationGenerator, SemanticDecoder, init_weights, linear,
)

logger = logging.getLogger(__name__)

STAGES = ("DRG", "DFG")


@dataclass
class Config:
    """Hyperparameters of D2SC.  Defaults follow the D2SC AWA2 scripts (spec §10) except where a
    reference defect (spec §11) is corrected; each such option keeps the reference value reachable.

    Architecture / schedule
      noise_dim: Z; 0 means Z = A.   dim_t: time-encoding width; 0 means d_t = A (any value works:
      layers are sized from the true concatenation).   gen_hidden: G_c/G_x/E hidden width (4096).
      ngh: V2S decoder hidden width.   ndh: critic hidden width.   n_steps, beta_min, beta_max: VP schedule.
    Loop
      drg_epochs, dfg_epochs: epochs of stage 1 and 2.  batch_size, critic_iter.
      batch_sampling: "random" = each batch is randperm(n)[:B] and an epoch is ceil(n/B) iterations
      (reference, §1.6); "permutation" = consecutive slices of a reshuffled permutation (true passes).
      iters_per_epoch: 0 = the spec's ceil(n_train/B) iterations per epoch; > 0 = exactly that many
      (same per-epoch compute on every dataset, e.g. for ASHA on small simulated data).
    Optimisation
      drg_lr, dfg_lr, dec_lr, beta1; fused_adam: use fused Adam kernels (same maths, faster).
      encoder_betas: "beta1" = the encoder uses (beta1, 0.999) like every other net (default: the
      reference's (0.9, 0.999) comes from forgetting to pass betas, defect 11); "reference" = (0.9, 0.999).
      grad_clip: L2 grad-norm clip of every DFG net (D2SC's 1.0); 0 disables (ZeroDiff).
    Losses
      lambda1: GP weight (fixed in DRG, adaptive start value in DFG); adaptive_gp: DFG adapts it.
      gamma_adv, gamma_vae, gamma_x0, gamma_xt, gamma_recons, gamma_dist, factor_dist,
      gamma_con_step (CPR), gamma_mmd, gamma_center: the weights of spec §7.  freeze_dec: Dec is
      not updated by the DFG generator step.  kl_clamp: clamp of the VAE KL term.
      drg_generator_input: "noisy_next" = G_c sees c_{t+1} as DDGAN intends (default: the reference's
      c_t gives an identity shortcut at t=0 that inference never sees, defect 4); "reference" = c_t.
      drg_neg_sampling, drg_neg_ratio: "mismatch_att" adds gamma_x0*ratio*E D_c0(c_0[idx], a_wrong) to the
      DRG critic's fake term (spec §5 step 6): idx = ceil(ratio*B) batch rows drawn without repeats,
      each paired with the attribute of a seen class drawn uniformly among those != its own; "none" = off.
      drg_semantic_loss: add drg_gamma_recons*MSE(Dec(ĉ0), a) to the DRG generator loss (default on:
      otherwise the DRG decoder influences nothing, defect 6); off = reference (logged only).
      s2v_trainable: train the S2V projection with the generator (default on: the reference's frozen
      random S2V makes the centre loss a shrinkage towards noise, defect 7); off = reference.
      mmd_bandwidths: "median" = sum of Gaussian kernels at median-heuristic bandwidths scaled by
      mmd_scales (default: sigma=1 on [0,1]^R features gives a constant loss, defect 9);
      "reference" = a single sigma = 1.
      vae_recon: "sum" = squared error summed over dims / B, ZeroDiff scale (default: the per-element
      mean is R times weaker and invites posterior collapse, defect 10); "mean" = reference;
      "bce_sum" = ZeroDiff's own term (binary cross-entropy summed over dims / B).
      vae_weight_unit: what gamma_vae weighs.  "loss" = the VAE loss as reduced (reference);
      "per_dim" = the per-element reconstruction error, whatever the reduction: gamma_vae is divided
      by R under the summed reductions, so one value means the same reconstruction weight under
      "mean" and "sum" (they then differ only in the KL's relative weight).  Searches use per_dim.
      dec_normalise: L2-normalise the decoder output: "auto" (when the class embeddings are unit rows,
      i.e. class_embedding_norm), "on", "off".
    Synthesis / evaluation
      syn_num_drg, syn_num: synthetic samples per unseen class in DRG / DFG evaluation.
      syn_num_ratio: > 0 replaces syn_num by round(ratio x the mean real training images per seen
      class), a value one setting can share across datasets of different sizes (0 = use syn_num).
      synthesis: "one_step" or "progressive" (T-step chain) DFG sampling.
      synthesis_chunk: rows per generator call in evaluation (bounds its memory; the synthetic rows
      do not depend on it: zsl.synthesis draws noise per class block).  synthesis_store: dtype the
      synthetic rows are kept in for the classifiers: "float32" (default, as the reference) or
      "float16" (half the memory; rows rounded to ~3 significant digits, classifiers still train in
      float32) for evaluations whose float32 rows alone exceed the host's memory.
      eval_views: classifier views in DFG, first one reported as S/U/H/ZSL, others with a suffix
      (e.g. H_VC); letters V (visual x), C (second view c), S ([Dec(x); h]).  DRG always uses C.
      unseen_bias, unseen_bias_mode: "inert" = reference (the bias never reaches synthesis, defect 8);
      "shift" = add unseen_bias to z for unseen-class synthesis.
      classifier_lr, classifier_epochs, classifier_selection ("last"; "best" only under the
      validation or reference protocol).  classifier_batch: rows per classifier Adam step; 0 = the
      synthetic rows per class (syn_num, or syn_num_drg in DRG), the reference's batch.  Default 512:
      the reference's batch gives few steps (AWA2 DFG: 325 in 25 epochs), so its numbers partly
      measure an under-trained classifier rather than the generator; searches compare both.
      drg_handoff: "final" = DFG synthesises with the last DRG generator; "best_zsl" = with the DRG
      epoch of best ZSL on the evaluation split (refused under the final protocol: that is test data).
      monitor_eval_seen: log critic gaps on 64 evaluation-seen samples per DFG iteration (reference
      defect 2; off by default, no gradients either way).
      compile: torch.compile every network's forward (same maths; for long GPU runs).
    Without a second feature view in the data, c is the visual feature x itself (C = R).
    """

    noise_dim: int = 312
    dim_t: int = 0
    gen_hidden: int = 4096
    ngh: int = 4096
    ndh: int = 4096
    n_steps: int = 4
    beta_min: float = 0.1
    beta_max: float = 20.0
    drg_epochs: int = 300
    dfg_epochs: int = 300
    batch_size: int = 64
    critic_iter: int = 5
    batch_sampling: str = "random"
    iters_per_epoch: int = 0
    drg_lr: float = 1e-3
    dfg_lr: float = 5e-4
    dec_lr: float = 1e-4
    beta1: float = 0.5
    fused_adam: bool = True
    encoder_betas: str = "beta1"
    grad_clip: float = 1.0
    lambda1: float = 10.0
    adaptive_gp: bool = True
    gamma_adv: float = 10.0
    gamma_vae: float = 1.0
    gamma_x0: float = 1.0
    gamma_xt: float = 1.0
    gamma_recons: float = 1.0
    freeze_dec: bool = True
    gamma_dist: float = 5.0
    factor_dist: float = 1.5
    gamma_con_step: float = 0.02
    gamma_mmd: float = 0.25
    gamma_center: float = 0.25
    kl_clamp: float = 100.0
    drg_generator_input: str = "noisy_next"
    drg_neg_sampling: str = "none"
    drg_neg_ratio: float = 0.0
    drg_semantic_loss: bool = True
    drg_gamma_recons: float = 1.0
    s2v_trainable: bool = True
    mmd_bandwidths: str = "median"
    mmd_scales: list = field(default_factory=lambda: [0.25, 0.5, 1.0, 2.0, 4.0])
    vae_recon: str = "sum"
    vae_weight_unit: str = "loss"
    dec_normalise: str = "auto"
    syn_num_drg: int = 1800
    syn_num: int = 8000
    syn_num_ratio: float = 0.0
    synthesis: str = "one_step"
    synthesis_chunk: int = 4096
    synthesis_store: str = "float32"
    eval_views: list = field(default_factory=lambda: ["V"])
    unseen_bias: float = 0.0
    unseen_bias_mode: str = "inert"
    classifier_lr: float = 1e-3
    classifier_epochs: int = 25
    classifier_batch: int = 512
    classifier_selection: str = "last"
    drg_handoff: str = "final"
    monitor_eval_seen: bool = False
    compile: bool = False


CHOICES = {
    "batch_sampling": ("random", "permutation"),
    "encoder_betas": ("beta1", "reference"),
    "drg_generator_input": ("noisy_next", "reference"),
    "drg_neg_sampling": ("none", "mismatch_att"),
    "mmd_bandwidths": ("median", "reference"),
    "vae_recon": ("sum", "mean", "bce_sum"),
    "vae_weight_unit": ("loss", "per_dim"),
    "dec_normalise": ("auto", "on", "off"),
    "synthesis": ("one_step", "progressive"),
    "synthesis_store": ("float32", "float16"),
    "unseen_bias_mode": ("inert", "shift"),
    "classifier_selection": ("last", "best"),
    "drg_handoff": ("final", "best_zsl"),
}
VIEW_PARTS = set("VCS")


def check_config(cfg: Config, protocol: str) -> None:
    """Raise UserError for an option value out of its choices or a selection that would read test data."""
    for key, allowed in CHOICES.items():
        if getattr(cfg, key) not in allowed:
            raise UserError(f"d2sc option '{key}' must be one of {', '.join(allowed)}, got {getattr(cfg, key)!r}: fix the value.")
    for view in cfg.eval_views:
        if not view or not set(str(view)) <= VIEW_PARTS:
            raise UserError(f"d2sc option 'eval_views' has {view!r}: use views made of the letters V, C, S (e.g. V, C, VC).")
    if not cfg.eval_views:
        raise UserError("d2sc option 'eval_views' is empty: give at least one view, e.g. [V].")
    for key in ("batch_size", "critic_iter", "n_steps", "syn_num", "syn_num_drg", "gen_hidden", "ngh", "ndh",
                "synthesis_chunk"):
        if getattr(cfg, key) < 1:
            raise UserError(f"d2sc option '{key}' must be >= 1, got {getattr(cfg, key)}: fix the value.")
    if not cfg.syn_num_ratio >= 0:
        raise UserError(f"d2sc option 'syn_num_ratio' must be >= 0 (0 = use syn_num), got {cfg.syn_num_ratio}: fix the value.")
    if cfg.classifier_batch < 0:
        raise UserError(f"d2sc option 'classifier_batch' must be >= 0 (0 = syn_num, the reference), got {cfg.classifier_batch}: fix the value.")
    if cfg.iters_per_epoch < 0:
        raise UserError(f"d2sc option 'iters_per_epoch' must be >= 0 (0 = ceil(n_train/batch_size)), got {cfg.iters_per_epoch}: fix the value.")
    if not 0.0 <= cfg.drg_neg_ratio <= 1.0:
        raise UserError(f"d2sc option 'drg_neg_ratio' must lie in [0, 1], got {cfg.drg_neg_ratio}: fix the value.")
    if cfg.drg_neg_sampling == "none" and cfg.drg_neg_ratio != 0.0:
        raise UserError("d2sc option 'drg_neg_ratio' has no effect with drg_neg_sampling=none: set drg_neg_sampling=mismatch_att or drop the ratio.")
    if cfg.drg_epochs < 0 or cfg.dfg_epochs < 0:
        raise UserError("d2sc options 'drg_epochs' and 'dfg_epochs' must be >= 0: fix the values.")
    if protocol == "final":
        if cfg.drg_handoff != "final":
            raise UserError("d2sc option 'drg_handoff=best_zsl' selects on test data under the final protocol: use drg_handoff=final.")
        if cfg.classifier_selection != "last":
            raise UserError("d2sc option 'classifier_selection=best' selects on test data under the final protocol: use last.")


def check_fusable(cfg: Config, seeds: list[int]) -> None:
    """Raise UserError for a fused run (a list of seeds) that this trainer cannot fuse."""
    if not seeds:
        raise UserError("d2sc: a fused run needs at least one seed.")
    if len(set(seeds)) != len(seeds):
        raise UserError(f"d2sc: the seeds of a fused run must differ, got {seeds}.")
    for key, plain in (("drg_neg_sampling", "none"), ("drg_handoff", "final"), ("monitor_eval_seen", False)):
        if getattr(cfg, key) != plain:
            raise UserError(f"d2sc option '{key}={getattr(cfg, key)}' is not available in fused runs yet: "
                            f"use {key}={plain} or run the seeds one by one.")


def _set_requires_grad(modules: list[nn.Module], flag: bool) -> None:
    for m in modules:
        m.requires_grad_(flag)


def _adam(params, lr: float, betas: tuple[float, float], fused: bool) -> torch.optim.Adam:
    """Adam with fused kernels when asked (falls back to foreach)."""
    params = list(params)
    if fused:
        return torch.optim.Adam(params, lr=lr, betas=betas, fused=True)
    return torch.optim.Adam(params, lr=lr, betas=betas, foreach=True)


class D2SC:
    """The D2SC trainer (zsl.trainer.Trainer protocol).  See :class:`Config` for every option."""

    Config = Config
    FUSES_SEEDS = True   # a list of seeds trains the members as one batched model

    @classmethod
    def epochs_in(cls, config: dict) -> int:
        """Epochs of both stages of a resolved ``config``."""
        return int(config["drg_epochs"]) + int(config["dfg_epochs"])

    @classmethod
    def stage_epochs(cls, config: dict) -> dict[str, int]:
        """{"DRG": drg_epochs, "DFG": dfg_epochs}, in training order."""
        return {"DRG": int(config["drg_epochs"]), "DFG": int(config["dfg_epochs"])}

    @classmethod
    def scoring_stage(cls, config: dict) -> str:
        """DFG produces the features a run is scored on; a run without DFG epochs is scored on DRG."""
        return "DFG" if int(config["dfg_epochs"]) > 0 else "DRG"

    @classmethod
    def with_epochs(cls, config: dict, n: int) -> dict:
        """``config`` with n epochs in all, split between DRG and DFG in the config's proportion
        (each stage keeps at least one epoch when n >= 2; n = 1 runs DRG only)."""
        drg, dfg = int(config.get("drg_epochs", Config.drg_epochs)), int(config.get("dfg_epochs", Config.dfg_epochs))
        share = drg / (drg + dfg) if drg + dfg else 0.5
        n_drg = n if n < 2 else min(max(round(n * share), 1), n - 1)
        return {**config, "drg_epochs": n_drg, "dfg_epochs": n - n_drg}

    def __init__(self, config: dict, data: ZSLData, device, seed: int | list[int]):
        """``seed``: one seed (a plain run) or a list of seeds (one fused run of len(seed) members)."""
        self.cfg = cfg = Config(**validate_config(Config, config, where="model 'd2sc'"))
        check_config(cfg, data.protocol)
        if cfg.drg_neg_sampling != "none" and len(data.seen_classes) < 2:
            raise UserError("d2sc option 'drg_neg_sampling=mismatch_att' needs at least 2 seen classes to pick a wrong attribute: use drg_neg_sampling=none.")
        self.seeds = [int(s) for s in seed] if isinstance(seed, (list, tuple)) else None
        self.fused = self.seeds is not None
        if self.fused:
            check_fusable(cfg, self.seeds)
        self.data, self.seed = data, self.seeds[0] if self.fused else int(seed)
        self.lead = 1 if self.fused else 0     # the row axis of every batch tensor
        self.device = dev = torch.device(device)
        self._load_tensors(data)
        A = self.emb.shape[1]
        self.Z = cfg.noise_dim or A
        d_t = cfg.dim_t or A
        R, C = self.train_x.shape[1], self.train_c.shape[1]
        normalise = {"on": True, "off": False}.get(cfg.dec_normalise)
        if normalise is None:
            normalise = bool(torch.allclose(self.emb.norm(dim=1), torch.ones((), device=dev), atol=1e-3))
        self.sched = make_schedule(cfg.n_steps, cfg.beta_min, cfg.beta_max).to(dev)
        dims = (A, R, C, d_t, normalise)
        if self.fused:   # each member initialised as its plain run, then stacked
            members = [self._build_nets(dims, s).state_dict() for s in self.seeds]
            self.nets = self._build_nets(dims, None, members=len(self.seeds))
            self.nets.load_state_dict({k: torch.stack([m[k] for m in members]) for k in members[0]})
        else:
            self.nets = self._build_nets(dims, self.seed)
        self.nets.to(dev)
        if cfg.compile:
            for net in self.nets.values():
                net.compile()
        n = self.nets
        betas = (cfg.beta1, 0.999)
        enc_betas = betas if cfg.encoder_betas == "beta1" else (0.9, 0.999)
        fused = cfg.fused_adam
        self.opts = {
            "G_c": _adam(n["G_c"].parameters(), cfg.drg_lr, betas, fused),
            "D_c": _adam([*n["D_c0"].parameters(), *n["D_ct"].parameters()], cfg.drg_lr, betas, fused),
            "Dec_c": _adam(n["Dec_c"].parameters(), cfg.dec_lr, betas, fused),
            "G_x": _adam([*n["G_x"].parameters(), *n["S2V"].parameters()], cfg.dfg_lr, betas, fused),
            "E": _adam(n["E"].parameters(), cfg.dfg_lr, enc_betas, fused),
            "D_x": _adam([*n["D_x0"].parameters(), *n["D_xt"].parameters(), *n["D_xc"].parameters()],
                         cfg.dfg_lr, betas, fused),
            "Dec_x": _adam(n["Dec_x"].parameters(), cfg.dec_lr, betas, fused),
        }
        self.gens = [torch.Generator(device=dev).manual_seed(s) for s in (self.seeds or [self.seed])]
        self.lam = torch.full((len(self.seeds),) if self.fused else (), float(cfg.lambda1), device=dev)
        per_seen_class = self.train_x.shape[0] / max(len(data.seen_classes), 1)
        self.syn_num = max(1, round(cfg.syn_num_ratio * per_seen_class)) if cfg.syn_num_ratio > 0 else cfg.syn_num
        per_element = losses.recon_elements(cfg.vae_recon, R) if cfg.vae_weight_unit == "per_dim" else 1
        self.vae_weight = cfg.gamma_vae / per_element
        self.mmd_scales = torch.tensor(cfg.mmd_scales, dtype=torch.float32, device=dev)
        self.epoch = 0
        self.epochs_total = cfg.drg_epochs + cfg.dfg_epochs
        self.iters_per_epoch = cfg.iters_per_epoch or math.ceil(self.train_x.shape[0] / cfg.batch_size)
        self._perm = torch.empty(0, dtype=torch.long, device=dev)
        self._perm_pos = 0
        self.best_drg = {"ZSL": -1.0, "G_c": None}
        self._member_view: D2SC | None = None

    def _build_nets(self, dims: tuple, seed: int | None, members: int | None = None) -> nn.ModuleDict:
        """The eleven nets of spec §3, initialised from ``seed`` (the reference rule; S2V keeps PyTorch's
        default init); ``members`` = K builds the stacked layout, left for the caller to fill."""
        A, R, C, d_t, normalise = dims
        cfg, Z, k = self.cfg, self.Z, members
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed if seed is not None else 0)
            nets = nn.ModuleDict({
                "G_c": RepresentationGenerator(Z, C, A, d_t, cfg.gen_hidden, k),
                "D_c0": Critic(C, cfg.ndh, att_dim=A, members=k),
                "D_ct": Critic(C, cfg.ndh, next_dim=C, att_dim=A, dim_t=d_t, emb_dim=A, members=k),
                "Dec_c": SemanticDecoder(C, cfg.ngh, A, normalise, k),
                "E": Encoder(R, A, Z, cfg.gen_hidden, k),
                "G_x": FeatureGenerator(Z, A, C, R, d_t, cfg.gen_hidden, k),
                "D_x0": Critic(R, cfg.ndh, att_dim=A, members=k),
                "D_xt": Critic(R, cfg.ndh, next_dim=R, att_dim=A, con_dim=C, dim_t=d_t, emb_dim=A, members=k),
                "D_xc": Critic(R, cfg.ndh, con_dim=C, emb_dim=A, members=k),
                "Dec_x": SemanticDecoder(R, cfg.ngh, A, normalise, k),
            })
            if members is None:
                init_weights(nets)
            nets["S2V"] = linear(A, R, members=k)  # PyTorch default init, as the reference
        return nets

    # ------------------------------------------------------------------ data
    def _load_tensors(self, data: ZSLData) -> None:
        """Move every array the run needs to the device once (c falls back to x without a second view)."""
        dev = self.device
        t = lambda a, dt=torch.float32: torch.as_tensor(a, dtype=dt, device=dev)  # noqa: E731
        self.emb = t(data.class_emb)
        self.train_x, self.train_y = t(data.train_x), t(data.train_y, torch.long)
        self.eval_seen_x, self.eval_seen_y = t(data.eval_seen_x), t(data.eval_seen_y, torch.long)
        self.eval_unseen_x, self.eval_unseen_y = t(data.eval_unseen_x), t(data.eval_unseen_y, torch.long)
        second = data.has_second_view
        if not second:
            logger.warning("d2sc: %s has no second view (con_paco.mat): view c is the visual view x, so the C and "
                           "VC results are x-based (results: second_view = 0)", data.name)
        self.train_c = t(data.train_c) if second else self.train_x
        self.eval_seen_c = t(data.eval_seen_c) if second else self.eval_seen_x
        self.eval_unseen_c = t(data.eval_unseen_c) if second else self.eval_unseen_x
        self.seen = t(data.seen_classes, torch.long)
        self.unseen = t(data.unseen_classes, torch.long)
        self.seen_sorted = self.seen.sort().values

    def _draw(self, draw: Callable[[torch.Generator], torch.Tensor]) -> torch.Tensor:
        """``draw(generator)`` from the run's generator; fused: from each member's, stacked [K, ...]."""
        if not self.fused:
            return draw(self.gens[0])
        return torch.stack([draw(g) for g in self.gens])

    def _randn(self, *shape: int) -> torch.Tensor:
        """N(0, I) of one member's ``shape`` (with the leading K axis when fused)."""
        return self._draw(lambda g: torch.randn(*shape, generator=g, device=self.device))

    def _randn_like(self, v: torch.Tensor) -> torch.Tensor:
        return self._randn(*v.shape[self.lead:])

    def _rand(self, *shape: int) -> torch.Tensor:
        return self._draw(lambda g: torch.rand(*shape, generator=g, device=self.device))

    def _timesteps(self, b: int) -> torch.Tensor:
        return self._draw(lambda g: torch.randint(0, self.cfg.n_steps, (b,), generator=g, device=self.device))

    def _rows(self, v: torch.Tensor) -> int:
        """Batch rows of ``v`` (its axis after the member axis when fused)."""
        return v.shape[self.lead]

    def _batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(x [B,R], c [B,C], a [B,A], y [B]) of one training batch (spec §1.6 or a permutation slice)."""
        n, b = self.train_x.shape[0], min(self.cfg.batch_size, self.train_x.shape[0])
        perm = lambda g: torch.randperm(n, generator=g, device=self.device)  # noqa: E731
        if self.cfg.batch_sampling == "random":
            idx = self._draw(lambda g: perm(g)[:b])
        else:
            if self._perm_pos + b > self._perm.shape[-1]:
                self._perm = self._draw(perm)
                self._perm_pos = 0
            idx = self._perm[..., self._perm_pos: self._perm_pos + b]
            self._perm_pos += b
        y = self.train_y[idx]
        return self.train_x[idx], self.train_c[idx], self.emb[y], y

    # ------------------------------------------------------------------ shared pieces
    @property
    def stage(self) -> str:
        return "DRG" if self.epoch < self.cfg.drg_epochs else "DFG"

    def _pairs(self, v0: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return q_sample_pairs(self.sched, v0, t, self._randn_like(v0), self._randn_like(v0))

    def _posterior(self, v0_hat: torch.Tensor, v_next: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return sample_posterior(self.sched, v0_hat, v_next, t, self._randn_like(v0_hat))

    def _critic_terms(self, critic: Critic, cond: torch.Tensor, real: torch.Tensor, fake: torch.Tensor,
                      u: torch.Tensor):
        """(real scores [B], fake scores [B], E(||grad||-1)^2 at the interpolates u real + (1-u) fake).

        Real, fake and interpolates go through the critic's first layer in one 3B-row matmul, and the
        penalty's backward is written out (:meth:`Critic.scores_and_penalty`): the gradients of
        autograd's double backward without its zero-valued passes.
        """
        return critic.scores_and_penalty(real, fake, losses.interpolate(real, fake, u), cond)

    def _step(self, names: list[str], nets: list[str], clip: float = 0.0) -> None:
        """Clip (per net and member, if clip > 0) and step the named optimisers."""
        if clip > 0:
            for name in nets:
                params = [p for p in self.nets[name].parameters() if p.grad is not None]
                if params and self.fused:
                    losses.clip_member_grad_norms(params, clip)
                elif params:
                    torch.nn.utils.clip_grad_norm_(params, clip, foreach=True)
        for name in names:
            self.opts[name].step()

    def _backward(self, loss: torch.Tensor, nets: list[str]) -> None:
        """Backpropagate into the named nets' parameters only (skips gradients of the GP interpolates).
        Fused: the members' losses are summed, so each member's parameters get its own gradient."""
        loss.sum().backward(inputs=[p for name in nets for p in self.nets[name].parameters()])

    def _zero(self, names: list[str]) -> None:
        for name in names:
            self.opts[name].zero_grad(set_to_none=True)

    # ------------------------------------------------------------------ stage 1: DRG
    def _drg_generate(self, c0, c_t, c_next, a, t):
        """ĉ_0 from G_c (input c_{t+1} or, for the reference, c_t) and ĉ_t from the posterior."""
        c_in = c_next if self.cfg.drg_generator_input == "noisy_next" else c_t
        c0_hat = self.nets["G_c"](self._randn(self._rows(c0), self.Z), c_in, a, t)
        return c0_hat, self._posterior(c0_hat, c_next, t)

    def _drg_mismatch_draws(self, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(rows [k], offsets [k]) of DRG negative sampling: ceil(ratio*B) batch rows without repeats and
        offsets in [0, K_seen-2] choosing another seen class for each."""
        k = losses.n_mismatched(b, self.cfg.drg_neg_ratio)
        gen = self.gens[0]   # plain runs only (check_fusable)
        rows = torch.randperm(b, generator=gen, device=self.device)[:k]
        offsets = torch.randint(0, self.seen_sorted.shape[0] - 1, (k,), generator=gen, device=self.device)
        return rows, offsets

    def _drg_mismatched_score(self, c0: torch.Tensor, y: torch.Tensor, rows: torch.Tensor,
                              offsets: torch.Tensor) -> torch.Tensor:
        """E D_c0(c0[rows], a_wrong): real c paired with another seen class's attribute."""
        D = self.nets["D_c0"]
        return losses.mismatched_pair_score(lambda c, a: D(c, D.condition(a=a)), c0, y, self.emb,
                                            self.seen_sorted, rows, offsets)

    @torch.no_grad()
    def _drg_critic_batches(self, steps: int) -> list[dict]:
        """The batches, diffused pairs, fakes (ĉ_0, ĉ_t), GP mixing weights (and negative-sampling draws)
        of ``steps`` critic steps.

        G_c is frozen during the critic steps, so its ``steps`` forwards are one call on all rows.
        Random numbers are drawn per step in the order of one step done alone (batch, t, pair noise,
        z, posterior noise, u of D_c0, u of D_ct, then the negative-sampling rows and offsets when on):
        the training stream is the same either way.
        """
        draws = []
        for _ in range(steps):
            _, c0, a, y = self._batch()
            b = self._rows(c0)
            t = self._timesteps(b)
            c_t, c_next = self._pairs(c0, t)
            z = self._randn(b, self.Z)
            noise = self._randn_like(c0)
            d = dict(c0=c0, a=a, y=y, t=t, c_t=c_t, c_next=c_next, z=z, noise=noise,
                     u0=self._rand(b), ut=self._rand(b))
            if self.cfg.drg_neg_sampling == "mismatch_att":   # draws only when on
                d["neg_rows"], d["neg_offsets"] = self._drg_mismatch_draws(b)
            draws.append(d)
        cat = lambda key: torch.cat([d[key] for d in draws], self.lead)  # noqa: E731
        c_in = cat("c_next") if self.cfg.drg_generator_input == "noisy_next" else cat("c_t")
        c0_hat = self.nets["G_c"](cat("z"), c_in, cat("a"), cat("t"))
        ct_hat = sample_posterior(self.sched, c0_hat, cat("c_next"), cat("t"), cat("noise"))
        b = self._rows(draws[0]["c0"])
        for d, f0, ft in zip(draws, c0_hat.split(b, self.lead), ct_hat.split(b, self.lead)):
            d.update(c0_hat=f0, ct_hat=ft)
        return draws

    def _drg_iteration(self, log: dict) -> None:
        """critic_iter critic steps (D_c0, D_ct, Dec_c) then one G_c step on the last batch (spec §5)."""
        cfg, n = self.cfg, self.nets
        critics = [n["D_c0"], n["D_ct"], n["Dec_c"]]
        _set_requires_grad([n["G_c"]], False)
        _set_requires_grad(critics, True)
        for d in self._drg_critic_batches(cfg.critic_iter):
            self._zero(["D_c", "Dec_c"])
            c0, a, t, c_t, c_next = d["c0"], d["a"], d["t"], d["c_t"], d["c_next"]
            loss_dec = losses.mse(n["Dec_c"](c0)[0], a)
            r0, f0, gp0 = self._critic_terms(n["D_c0"], n["D_c0"].condition(a=a), c0, d["c0_hat"], d["u0"])
            rt, ft, gpt = self._critic_terms(n["D_ct"], n["D_ct"].condition(x_next=c_next, a=a, t=t),
                                             c_t, d["ct_hat"], d["ut"])
            wdist = cfg.gamma_x0 * (r0.mean(-1) - f0.mean(-1)) + cfg.gamma_xt * (rt.mean(-1) - ft.mean(-1))
            gp = cfg.gamma_x0 * gp0 + cfg.gamma_xt * gpt
            loss = loss_dec - wdist + cfg.lambda1 * gp
            if cfg.drg_neg_sampling == "mismatch_att":   # drawn only when on: the stream is unchanged when off
                neg = self._drg_mismatched_score(c0, d["y"], d["neg_rows"], d["neg_offsets"])
                loss = loss + cfg.gamma_x0 * cfg.drg_neg_ratio * neg
            self._backward(loss, ["D_c0", "D_ct", "Dec_c"])
            self._step(["D_c", "Dec_c"], [])
        _acc(log, d_loss=-wdist + cfg.lambda1 * gp, wasserstein=wdist, gp=gp, dec_loss=loss_dec)
        if cfg.drg_neg_sampling == "mismatch_att":
            _acc(log, neg_score=neg)   # E D_c0(real c, wrong attribute); not part of the logged d_loss

        _set_requires_grad(critics, False)
        _set_requires_grad([n["G_c"]], True)
        self._zero(["G_c"])
        t = self._timesteps(self._rows(c0))
        c_t, c_next = self._pairs(c0, t)
        c0_hat, ct_hat = self._drg_generate(c0, c_t, c_next, a, t)
        adv = (-cfg.gamma_x0 * n["D_c0"](c0_hat, n["D_c0"].condition(a=a)).mean(-1)
               - cfg.gamma_xt * n["D_ct"](ct_hat, n["D_ct"].condition(x_next=c_next, a=a, t=t)).mean(-1))
        cpr = losses.mse(ct_hat, c_t)
        att_mse = losses.mse(n["Dec_c"](c0_hat)[0], a)
        loss_g = adv + cfg.gamma_con_step * cpr
        if cfg.drg_semantic_loss:
            loss_g = loss_g + cfg.drg_gamma_recons * att_mse
        loss_g.sum().backward()
        self._step(["G_c"], [])
        _acc(log, g_loss=loss_g, g_adv=adv, cpr=cpr, att_mse=att_mse)

    # ------------------------------------------------------------------ stage 2: DFG
    def _encode(self, x0: torch.Tensor, a: torch.Tensor):
        """(z, mu, logvar): a reparameterised encoder sample z = mu + e^{logvar/2} eps, [B, Z] each."""
        mu, logvar = self.nets["E"](x0, a)
        return mu + (0.5 * logvar).exp() * self._randn_like(mu), mu, logvar

    def _dfg_generate(self, x0, c, a, z):
        """Draw t and (x_t, x_{t+1}); return x_t, x_{t+1}, t, x̂_0, x̂_t."""
        t = self._timesteps(self._rows(x0))
        x_t, x_next = self._pairs(x0, t)
        x0_hat = self.nets["G_x"](z, a, c, x_next, t)
        return x_t, x_next, t, x0_hat, self._posterior(x0_hat, x_next, t)

    def _dfg_conditions(self, x_next, c, a, t):
        n = self.nets
        return (n["D_x0"].condition(a=a), n["D_xt"].condition(x_next=x_next, a=a, c=c, t=t),
                n["D_xc"].condition(c=c))

    def _dfg_iteration(self, log: dict) -> None:
        """critic_iter critic steps (3 critics + Dec_x, distillation, clipping), adaptive lambda,
        then one E/G_x step on the last batch (spec §6)."""
        cfg, n = self.cfg, self.nets
        critics = [n["D_x0"], n["D_xt"], n["D_xc"], n["Dec_x"]]
        gens = [n["E"], n["G_x"], n["S2V"]]
        gp_total = torch.zeros((), device=self.device)
        for _ in range(cfg.critic_iter):
            _set_requires_grad(critics, True)
            _set_requires_grad(gens, False)
            self._zero(["D_x", "Dec_x"])
            x0, c, a, _ = self._batch()
            with torch.no_grad():
                z, _, _ = self._encode(x0, a)
                x_t, x_next, t, x0_hat, xt_hat = self._dfg_generate(x0, c, a, z)
            loss_dec = cfg.gamma_recons * losses.weighted_l1(n["Dec_x"](x0)[0], a)
            k0, kt, kc = self._dfg_conditions(x_next, c, a, t)
            b = self._rows(x0)
            r0, f0, gp0 = self._critic_terms(n["D_x0"], k0, x0, x0_hat, self._rand(b))
            rt, ft, gpt = self._critic_terms(n["D_xt"], kt, x_t, xt_hat, self._rand(b))
            rc, fc, gpc = self._critic_terms(n["D_xc"], kc, x0, x0_hat, self._rand(b))
            w0, wt, wc = r0 - f0, rt - ft, rc - fc
            wdist = cfg.gamma_x0 * w0.mean(-1) + cfg.gamma_xt * wt.mean(-1) + wc.mean(-1)
            gp = cfg.gamma_x0 * gp0 + cfg.gamma_xt * gpt + gpc
            factor = self.sched.a_bar[t] ** cfg.factor_dist
            dist = cfg.gamma_dist * losses.distillation_loss(w0, wt, wc, factor)
            loss_d = cfg.gamma_adv * (-wdist + self.lam * gp) + dist
            self._backward(loss_dec + loss_d, ["D_x0", "D_xt", "D_xc", "Dec_x"])
            self._step(["D_x", "Dec_x"], ["D_x0", "D_xt", "D_xc", "Dec_x"], cfg.grad_clip)
            gp_total = gp_total + gp.detach()
        if cfg.monitor_eval_seen:
            _acc(log, **self._monitor_eval_seen())
        _acc(log, d_loss=loss_d, wasserstein=wdist, gp=gp, dist=dist, dec_loss=loss_dec, gp_lambda=self.lam)
        if cfg.adaptive_gp:
            self.lam = losses.adapt_gp_weight(self.lam, gp_total / cfg.critic_iter)

        _set_requires_grad(critics, False)
        _set_requires_grad([n["E"], n["G_x"]], True)
        _set_requires_grad([n["S2V"]], cfg.s2v_trainable)
        _set_requires_grad([n["Dec_x"]], not cfg.freeze_dec)
        step_names = ["E", "G_x"] + ([] if cfg.freeze_dec else ["Dec_x"])
        self._zero(step_names)
        z, mu, logvar = self._encode(x0, a)
        x_t, x_next, t, x0_hat, xt_hat = self._dfg_generate(x0, c, a, z)
        k0, kt, kc = self._dfg_conditions(x_next, c, a, t)
        adv = -cfg.gamma_adv * (cfg.gamma_x0 * n["D_x0"](x0_hat, k0).mean(-1)
                                + cfg.gamma_xt * n["D_xt"](xt_hat, kt).mean(-1)
                                + n["D_xc"](x0_hat, kc).mean(-1))
        vae = losses.vae_loss(x0_hat, x0, mu, logvar, cfg.vae_recon, cfg.kl_clamp)
        mmd = losses.mmd(x0_hat, x0, self._mmd_sigmas(x0_hat, x0))
        center = losses.center_loss(x0_hat, n["S2V"](a))
        rec = losses.weighted_l1(n["Dec_x"](x0_hat)[0], a)
        loss_g = (self.vae_weight * vae + adv + cfg.gamma_mmd * mmd + cfg.gamma_center * center
                  + cfg.gamma_recons * rec)
        loss_g.sum().backward()
        self._step(step_names, ["E", "G_x", "S2V"] + step_names[2:], cfg.grad_clip)
        _acc(log, g_loss=loss_g, g_adv=adv, vae=vae, mmd=mmd, center=center, sem_rec=rec)

    def _mmd_sigmas(self, x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self.cfg.mmd_bandwidths == "reference":
            return torch.ones(1, device=self.device)
        return losses.median_bandwidths(x_hat, x, self.mmd_scales)

    @torch.no_grad()
    def _monitor_eval_seen(self) -> dict:
        """Critic gap D_x0(x) - D_x0(x̂) on 64 evaluation-seen samples (monitoring only, defect 2)."""
        n = self.nets
        idx = torch.randperm(self.eval_seen_x.shape[0], generator=self.gens[0], device=self.device)[:64]
        x, c = self.eval_seen_x[idx], self.eval_seen_c[idx]
        a = self.emb[self.eval_seen_y[idx]]
        z, _, _ = self._encode(x, a)
        _, _, _, x0_hat, _ = self._dfg_generate(x, c, a, z)
        cond = n["D_x0"].condition(a=a)
        return {"monitor_eval_seen_gap": (n["D_x0"](x, cond) - n["D_x0"](x0_hat, cond)).mean()}

    # ------------------------------------------------------------------ trainer protocol
    def train_epoch(self) -> dict:
        """One epoch (iters_per_epoch, by default ceil(n_train/B), iterations) of the current stage; returns mean losses, timing, stage."""
        if self.epoch >= self.epochs_total:
            raise RuntimeError(f"d2sc: all {self.epochs_total} epochs are done.")
        stage = self.stage
        for net in self.nets.values():
            net.train()
        start = time.perf_counter()
        log: dict = {}
        iteration = self._drg_iteration if stage == "DRG" else self._dfg_iteration
        for _ in range(self.iters_per_epoch):
            iteration(log)
        names = sorted(log)
        values = torch.stack([log[k] / self.iters_per_epoch for k in names])
        if self.fused:
            values = values.mean(-1)      # the members' mean of each loss
        out = dict(zip(names, values.tolist()))  # the one host sync
        out.update(stage=stage, seconds=time.perf_counter() - start, iterations=self.iters_per_epoch)
        self.epoch += 1
        if stage == "DRG" and self.cfg.drg_handoff == "best_zsl":
            self._track_best_drg()
        return out

    def _track_best_drg(self) -> None:
        """Keep G_c of the best DRG ZSL (validation/reference protocols only) and install it at hand-off."""
        zsl = self._evaluate_drg(self._eval_seed())["ZSL"]
        if zsl > self.best_drg["ZSL"]:
            self.best_drg = {"ZSL": zsl, "G_c": copy.deepcopy(self.nets["G_c"].state_dict())}
        if self.epoch == self.cfg.drg_epochs:
            self.nets["G_c"].load_state_dict(self.best_drg["G_c"])

    def _eval_seed(self) -> int:
        """The seed of this epoch's evaluation (from run seed and epoch): the training stream is untouched."""
        return self.seed * 1_000_003 + 7919 * self.epoch + 17

    def _draw_noise(self, progressive: bool, features: bool) -> Callable[[torch.Generator, int], tuple]:
        """A block's noise, in a fixed order: z_c [n, Z] and c_in [n, C] for G_c; for features also
        z [n, Z], x_T [n, R] and, progressive, one posterior draw [n, R] per step after the first."""
        Z, C, R, dev = self.Z, self.train_c.shape[1], self.train_x.shape[1], self.device
        chain = self.cfg.n_steps - 1 if progressive else 0

        def draw(gen: torch.Generator, n: int) -> tuple:
            sizes = [Z, C] + ([Z, R] + [R] * chain if features else [])
            return tuple(torch.randn(n, d, generator=gen, device=dev) for d in sizes)
        return draw

    def _represent(self, y: torch.Tensor, z_c: torch.Tensor, c_in: torch.Tensor) -> torch.Tensor:
        """ĉ [n, C] = G_c(z_c, c_in, a_y, t = T-1) (spec §9)."""
        t = torch.full((y.shape[0],), self.cfg.n_steps - 1, device=self.device, dtype=torch.long)
        return self.nets["G_c"](z_c, c_in, self.emb[y], t)

    def _generate(self, y, z_c, c_in, z, x, *chain_noise, unseen: bool = True):
        """(x̂ [n, R], ĉ [n, C]): a fresh ĉ from G_c, then G_x one-step, or the T-step posterior chain
        (z and ĉ fixed along it) when ``chain_noise`` holds its T-1 draws (spec §9)."""
        c_hat = self._represent(y, z_c, c_in)
        a = self.emb[y]
        if unseen and self.cfg.unseen_bias_mode == "shift":
            z = z + self.cfg.unseen_bias
        steps = self.cfg.n_steps - 1
        for k, noise in enumerate([*chain_noise, None]):
            t = torch.full((y.shape[0],), steps - k, device=self.device, dtype=torch.long)
            x0_hat = self.nets["G_x"](z, a, c_hat, x, t)
            if noise is not None:
                x = sample_posterior(self.sched, x0_hat, x, t, noise)
        return x0_hat, c_hat

    @torch.no_grad()
    def synthesize_representation(self, classes: torch.Tensor, num: int, seed: int):
        """(ĉ [len(classes)*num, C], y) from G_c: z, c_in ~ N(0, I), t = T-1 (spec §9), in chunks of
        ``synthesis_chunk`` rows (zsl.synthesis: the result does not depend on the chunk size)."""
        self.nets["G_c"].eval()
        return synthesize(classes.tolist(), num, seed, self.cfg.synthesis_chunk,
                          self._draw_noise(False, features=False), self._represent, self.device,
                          getattr(torch, self.cfg.synthesis_store))

    @torch.no_grad()
    def synthesize_view(self, view: str, classes: torch.Tensor, num: int, seed: int,
                        progressive: bool = False, unseen: bool = True):
        """(rows [len(classes)*num, d_view], y) of classifier ``view`` for synthetic features, built
        chunk by chunk: only the view's rows are kept, never every chunk's x̂ and ĉ at once."""
        for name in ("G_c", "G_x", "Dec_x"):
            self.nets[name].eval()

        def make(y, *noise):
            return self._view(view, *self._generate(y, *noise, unseen=unseen))
        return synthesize(classes.tolist(), num, seed, self.cfg.synthesis_chunk,
                          self._draw_noise(progressive, features=True), make, self.device,
                          getattr(torch, self.cfg.synthesis_store))

    def synthesize_features(self, classes: torch.Tensor, num: int, seed: int,
                            progressive: bool = False, unseen: bool = True):
        """(x̂ [n, R], ĉ [n, C], y [n]), n = len(classes)*num: one-step x̂ = G_x(z, a, ĉ, x ~ N(0,I), T-1),
        or the progressive T-step chain returning the last x̂_0 (spec §9)."""
        rows, y = self.synthesize_view("VC", classes, num, seed, progressive, unseen)
        R = self.train_x.shape[1]
        return rows[:, :R], rows[:, R:], y

    def _view(self, view: str, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """Classifier input of ``view``: concatenation of V = x, C = c, S = [Dec(x); h] in letter order."""
        parts = []
        for letter in view:
            if letter == "V":
                parts.append(x)
            elif letter == "C":
                parts.append(c)
            else:
                parts.extend(self.nets["Dec_x"](x))
        return torch.cat(parts, 1) if len(parts) > 1 else parts[0]

    def _classify(self, view: str, syn: torch.Tensor, syn_y: torch.Tensor, per_class: int, seed: int) -> dict:
        """GZSL S/U/H and ZSL of softmax classifiers on ``view``: real seen + synthetic unseen rows
        ``syn`` [n, d_view] (``per_class`` of each unseen class; classifier_batch 0 means that many)."""
        from zsl.evaluation import ClassifierConfig, gzsl_evaluate, zsl_evaluate

        cfg = self.cfg
        ccfg = ClassifierConfig(lr=cfg.classifier_lr, beta1=0.5, epochs=cfg.classifier_epochs,
                                batch_size=cfg.classifier_batch or per_class, selection=cfg.classifier_selection)
        gen = torch.Generator(device=self.device).manual_seed(seed)
        with torch.no_grad():
            unseen_x = self._view(view, self.eval_unseen_x, self.eval_unseen_c)
            seen_x = self._view(view, self.eval_seen_x, self.eval_seen_c)
            train_x = self._view(view, self.train_x, self.train_c)
        out = gzsl_evaluate(
            train_x=train_x, train_y=self.train_y,
            syn_x=syn, syn_y=syn_y,
            eval_seen_x=seen_x, eval_seen_y=self.eval_seen_y,
            eval_unseen_x=unseen_x, eval_unseen_y=self.eval_unseen_y,
            seen_classes=self.seen, unseen_classes=self.unseen, n_classes=self.emb.shape[0],
            cfg=ccfg, generator=gen,
        )
        out.update(zsl_evaluate(syn_x=syn, syn_y=syn_y, eval_unseen_x=unseen_x, eval_unseen_y=self.eval_unseen_y,
                                unseen_classes=self.unseen, cfg=ccfg, generator=gen))
        return {k: float(v) for k, v in out.items()}

    def _evaluate_drg(self, seed: int) -> dict:
        """DRG evaluation on the C view: synthetic unseen ĉ vs real second-view features (spec §9)."""
        c_hat, y = self.synthesize_representation(self.unseen, self.cfg.syn_num_drg, seed)
        return self._classify("C", c_hat, y, self.cfg.syn_num_drg, seed)

    def _evaluated_stage(self) -> str:
        """The stage whose generator an evaluation now scores (DRG right after its last epoch)."""
        cfg = self.cfg
        drg = cfg.dfg_epochs == 0 or (cfg.drg_epochs > 0 and self.epoch <= cfg.drg_epochs)
        return "DRG" if drg else "DFG"

    def evaluate(self) -> dict:
        """S, U, H, ZSL (percent) on the data's evaluation sets; DRG: C view; DFG: eval_views[0]
        (other views suffixed, e.g. H_VC).  Each view's synthetic rows are built from the same seed,
        one view at a time (bounded memory).  Uses its own RNG; the training stream is unchanged.
        Fused: each member is scored as its plain run would be; the members' mean is returned, with
        ``<key>_sd`` (sample sd over members) for S/U/H/ZSL and ``members``."""
        if self.fused:
            return self._evaluate_members()
        for net in self.nets.values():
            net.eval()
        seed = self._eval_seed()
        start = time.perf_counter()
        stage = self._evaluated_stage()
        if stage == "DRG":
            out = self._evaluate_drg(seed)
        else:
            out = {}
            for i, view in enumerate(self.cfg.eval_views):
                syn, y = self.synthesize_view(view, self.unseen, self.syn_num, seed,
                                              progressive=self.cfg.synthesis == "progressive")
                res = self._classify(view, syn, y, self.syn_num, seed)
                del syn
                out.update(res if i == 0 else {f"{k}_{view}": v for k, v in res.items()})
        out["stage"] = stage
        out["second_view"] = float(self.data.has_second_view)  # 0: con_paco.mat absent, c fell back to x
        out["eval_seconds"] = time.perf_counter() - start
        return out

    def member_nets(self, k: int) -> dict:
        """Member k's nets as a plain run's state dict (a fused run's weights sliced at k)."""
        return {name: v[k] for name, v in self.nets.state_dict().items()}

    def _evaluate_members(self) -> dict:
        """Score every member with its own weights and seed through one plain view of the model."""
        if self._member_view is None:
            self._member_view = D2SC(dict(self.cfg.__dict__), self.data, self.device, self.seeds[0])
        view, runs = self._member_view, []
        for k, seed in enumerate(self.seeds):
            view.nets.load_state_dict(self.member_nets(k))
            view.seed, view.epoch = seed, self.epoch
            runs.append(view.evaluate())
        return combine_members(runs)

    def state_dict(self) -> dict:
        """Everything needed to continue: nets, optimisers, RNG state, adaptive lambda, counters."""
        return {
            "nets": self.nets.state_dict(),
            "opts": {k: o.state_dict() for k, o in self.opts.items()},
            "rng": [g.get_state() for g in self.gens] if self.fused else self.gens[0].get_state(),
            "lam": self.lam.clone(),
            "epoch": self.epoch,
            "perm": self._perm.clone(),
            "perm_pos": self._perm_pos,
            "best_drg": copy.deepcopy(self.best_drg),
            "config": dict(self.cfg.__dict__),
            "seed": self.seeds if self.fused else self.seed,  # the evaluation streams derive from it
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore a :meth:`state_dict` (device-agnostic: tensors are moved to this run's device)."""
        fused = isinstance(state.get("seed"), list)
        if fused != self.fused or (fused and len(state["seed"]) != len(self.seeds)):
            held = f"a fused run of {len(state['seed'])} seeds" if fused else "a plain run"
            this = f"a fused run of {len(self.seeds)} seeds" if self.fused else "a plain run"
            raise UserError(f"d2sc: the checkpoint holds {held} and this run is {this}: resume with the seeds it was written with.")
        self.nets.load_state_dict(state["nets"])
        for k, o in self.opts.items():
            o.load_state_dict(state["opts"][k])
        rng = state["rng"] if self.fused else [state["rng"]]
        for g, r in zip(self.gens, rng):
            g.set_state(r.cpu())
        self.lam = state["lam"].to(self.device)
        self.epoch = int(state["epoch"])
        self._perm = state["perm"].to(self.device)
        self._perm_pos = int(state["perm_pos"])
        self.best_drg = copy.deepcopy(state["best_drg"])
        if self.fused:
            self.seeds = [int(v) for v in state["seed"]]
            self.seed = self.seeds[0]
        else:
            self.seed = int(state.get("seed", self.seed))  # older checkpoints lack it: keep this run's


def combine_members(runs: list[dict]) -> dict:
    """One evaluation of a fused run from its members' evaluations: the mean of every numeric key,
    the sample sd (0 for one member) of S/U/H/ZSL as ``<key>_sd``, and ``members``."""
    out = dict(runs[0])
    for key, value in runs[0].items():
        if isinstance(value, (int, float)):
            values = torch.tensor([float(r[key]) for r in runs], dtype=torch.float64)
            out[key] = float(values.mean())
            if key in ("S", "U", "H", "ZSL"):
                out[f"{key}_sd"] = float(values.std()) if len(runs) > 1 else 0.0
    out["members"] = float(len(runs))
    return out


def _acc(log: dict, **values: torch.Tensor) -> None:
    """Accumulate detached loss tensors on device (summed over iterations; averaged once per epoch)."""
    for k, v in values.items():
        v = v.detach().float()
        log[k] = log[k] + v if k in log else v
