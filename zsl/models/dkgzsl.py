"""DKGZSL, phase 1: the dynamic knowledge-guided generator network (DKG²N) on pooled features, as one
Trainer (spec shared/spec/dkgzsl.md §3.3-§5; its §10 corrections win over the earlier sections).

A knowledge transfer network (KTN) maps class semantics to visual features; its hidden activation D₁
and its output logits D₂ pass through two meta-fusion units (MFU) into the first and second layer of a
WGAN-GP generator.  Each epoch makes two passes over the data (spec §5, ``feedback_loop`` = 2): pass 0
trains the plain generator, pass 1 the MFU-guided one.  Every iteration of a pass takes ``critic_iter``
(KTN step, critic step) pairs, each on a fresh random seen batch, then one generator step on the last
batch (pass 1: with the MFU step).  Evaluation synthesises unseen features with MFU guidance and scores
them with the shared softmax-classifier evaluation (zsl.evaluation): real seen + synthetic unseen rows
for GZSL S/U/H, synthetic unseen rows for ZSL, in percent.

SOVR (the semantic-oriented visual refinement of region features, spec §3.1-§3.2) needs region or patch
features, which ZSLData does not carry: the pooled features pass through :meth:`DKGZSL.refined_features`
unchanged, and every result is labelled :data:`VARIANT_POOLED` (the "w/o SOVR" ablation of spec §2; its
numbers are not comparable with the paper's).  A SOVR stage would run before DKG²N and refine the
features there; it is absent here.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F

from zsl import losses
from zsl.data.types import ZSLData
from zsl.errors import UserError
from zsl.evaluation import ClassifierConfig, gzsl_evaluate, zsl_evaluate
from zsl.models import validate_config
from zsl.models.d2sc_nets import Critic, init_weights
from zsl.models.dkgzsl_nets import KTN, MFU, Generator, ktn_loss
from zsl.refined import RegionFields
from zsl.synthesis import synthesize
from zsl.trainer import SingleStageEpochs

VARIANT_POOLED = "DKGZSL w/o SOVR (pooled features)"
STAGE = "DKG2N"
NETS = ("G", "D", "KTN", "MFU")


@dataclass
class Config(RegionFields):
    """DKGZSL (DKG²N) hyperparameters.  Defaults: the spec's AWA2 values (§6), with each reference
    defect corrected; the reference behaviour stays reachable through a named option (preset ``reference``).

    Networks
      hidden: H, the one coupled width (spec §10) of the generator's and the KTN's hidden layers, MFU
      level 1 and the critic; the MFU MLPs' inner width is H/2 (paper 4096).
    Loop (spec §5)
      epochs: epochs of two passes each (pass 0 plain generator, pass 1 MFU-guided).
      batch_size: rows of each random seen batch (drawn without replacement within a batch).
      iters_per_pass: iterations per pass; 0 = ceil(n_train / batch_size), the reference's walk over the data.
      critic_iter: (KTN step, critic step) pairs per iteration, each on a fresh batch, before the
      generator step on the last one.
    Optimisation (Adam, betas (beta1, 0.999))
      lr: generator, critic and KTN.  feed_lr: MFU (steps in pass 1 only).  fused_adam: fused kernels (same maths).
    Losses (spec §4)
      gamma_adv: γ_D = γ_G, the adversarial weight of both the critic and the generator loss.
      lambda1: gradient-penalty weight λ_GP (its start value when adaptive).  adaptive_gp: after each
      iteration's critic steps, λ ×1.1 if their mean penalty E(‖∇D‖ − 1)² > 1.05, ÷1.1 if < 1.001.
      ktn_weight: weight of the KTN's BCE loss (0.1).  mfu_scale: injection scale of n(K_l) (0.1).
    Reference defects and ambiguities (spec §9, §10): default = correction, other value = reference
      mfu_grads: "zero" = the MFU's gradients are zeroed before every generator step (default);
      "accumulate" = never zeroed, so each MFU step applies the sum of all pass-1 generator gradients
      so far (the reference's missing zero_grad, §9.6).
      synthesis_mfu: "full" = synthesis uses the same MFU knowledge as training, K = MLP(D) + n(P a) ⊙ b
      (default, §9.5 [D]); "drop_semantic" = K = MLP(D) at synthesis (the reference).
    Region features (zsl.refined.RegionFields, inherited)
      region_tag: "" = the pooled res101 features (the "w/o SOVR" ablation); else regions_<tag> of the dataset
      (simulated: sim-g<g>), refined by SOVR (region_features "sovr", sovr_* its options) or pooled
      ("mean" | "global") by the data layer before the run; ``variant`` names which.
    Evaluation (spec §5 stage 4)
      syn_num: synthetic rows per unseen class.  synthesis_chunk: rows per generator call (memory only:
      the rows do not depend on it).  classifier_lr, classifier_epochs (Adam, beta1 0.5).
      classifier_batch: rows per classifier step; 0 = syn_num (the reference's batch).
      classifier_selection: "last" epoch of the classifier (honest default) or "best" H / ZSL over its
      epochs (the reference's practice: it chooses on the evaluation sets, so it is refused under the
      final protocol).
    """

    hidden: int = 4096
    epochs: int = 600
    batch_size: int = 64
    iters_per_pass: int = 0
    critic_iter: int = 5
    lr: float = 1e-4
    feed_lr: float = 1e-5
    beta1: float = 0.5
    fused_adam: bool = True
    gamma_adv: float = 1.0
    lambda1: float = 10.0
    adaptive_gp: bool = True
    ktn_weight: float = 0.1
    mfu_scale: float = 0.1
    mfu_grads: str = "zero"
    synthesis_mfu: str = "full"
    syn_num: int = 1400
    synthesis_chunk: int = 4096
    classifier_lr: float = 5e-4
    classifier_epochs: int = 25
    classifier_batch: int = 0
    classifier_selection: str = "last"


CHOICES = {
    "mfu_grads": ("zero", "accumulate"),
    "synthesis_mfu": ("full", "drop_semantic"),
    "classifier_selection": ("last", "best"),
}
AT_LEAST_ONE = ("hidden", "epochs", "batch_size", "critic_iter", "syn_num", "synthesis_chunk", "classifier_epochs")
POSITIVE = ("lr", "feed_lr", "lambda1", "gamma_adv", "classifier_lr")


def check_config(cfg: Config, protocol: str = "validation") -> None:
    """Raise UserError, in one sentence naming the hyperparameter, for a value the model cannot run."""
    for key, allowed in CHOICES.items():
        if getattr(cfg, key) not in allowed:
            raise UserError(f"hyperparameter '{key}' of model 'dkgzsl' must be one of {', '.join(allowed)}, "
                            f"got {getattr(cfg, key)!r}.")
    for key in AT_LEAST_ONE:
        if getattr(cfg, key) < 1:
            raise UserError(f"hyperparameter '{key}' of model 'dkgzsl' must be at least 1, got {getattr(cfg, key)}.")
    for key in POSITIVE:
        if not getattr(cfg, key) > 0:
            raise UserError(f"hyperparameter '{key}' of model 'dkgzsl' must be > 0, got {getattr(cfg, key)}.")
    for key in ("iters_per_pass", "classifier_batch"):
        if getattr(cfg, key) < 0:
            raise UserError(f"hyperparameter '{key}' of model 'dkgzsl' must be >= 0 (0 = the reference's value), "
                            f"got {getattr(cfg, key)}.")
    for key in ("ktn_weight", "mfu_scale"):
        if not getattr(cfg, key) >= 0:
            raise UserError(f"hyperparameter '{key}' of model 'dkgzsl' must be >= 0, got {getattr(cfg, key)}.")
    if not 0 <= cfg.beta1 < 1:
        raise UserError(f"hyperparameter 'beta1' of model 'dkgzsl' must be in [0, 1), got {cfg.beta1}.")
    if protocol == "final" and cfg.classifier_selection != "last":
        raise UserError("hyperparameter 'classifier_selection=best' of model 'dkgzsl' selects on test data under "
                        "the final protocol: use classifier_selection=last.")


def class_condition(class_emb: torch.Tensor) -> torch.Tensor:
    """The generator's condition: each class row of ``class_emb`` [K, A] L2-normalised (spec §10; also
    CUB's 1024-d ``sent`` rows, which xlsa17 stores un-normalised)."""
    return F.normalize(class_emb, dim=-1)


def build_nets(att_dim: int, hidden: int, feat_dim: int, seed: int) -> nn.ModuleDict:
    """G, D (d2sc_nets.Critic on [x; a]), KTN and MFU at widths (A, H, C), initialised from ``seed``
    (spec §3.7, §10; the caller's global RNG is left untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        critic = Critic(feat_dim, hidden, att_dim=att_dim)
        init_weights(critic)
        return nn.ModuleDict({
            "G": Generator(att_dim, hidden, feat_dim),
            "D": critic,
            "KTN": KTN(att_dim, hidden, feat_dim),
            "MFU": MFU(att_dim, hidden, feat_dim),
        })


class DKGZSL(SingleStageEpochs):
    """The DKG²N trainer (zsl.trainer.Trainer protocol); one stage, ``DKG2N``.  See :class:`Config`."""

    Config = Config
    STAGE = STAGE

    def __init__(self, config: dict, data: ZSLData, device, seed: int):
        self.cfg = cfg = Config(**validate_config(Config, config, where="model 'dkgzsl'"))
        check_config(cfg, data.protocol)
        self.data, self.seed = data, int(seed)
        self.device = dev = torch.device(device)
        self._load_tensors(data)
        att_dim, feat_dim = self.emb.shape[1], self.train_x.shape[1]
        self.nets = build_nets(att_dim, cfg.hidden, feat_dim, self.seed).to(dev)
        self.opts = {name: self._adam(name) for name in NETS}
        self.gen = torch.Generator(device=dev).manual_seed(self.seed)
        self.lam = torch.tensor(float(cfg.lambda1), device=dev)
        self.epoch = 0
        self.epochs_total = cfg.epochs
        self.iters_per_pass = cfg.iters_per_pass or math.ceil(self.train_x.shape[0] / cfg.batch_size)

    # ------------------------------------------------------------------ setup
    @property
    def variant(self) -> str:
        """What this run is, printed and saved with every result: with ``region_tag`` and region_features
        "sovr", the full method on SOVR-refined region features (zsl.refined); with "mean"/"global" pooling of
        the regions, or without region features (the pooled res101 features), a "w/o SOVR" ablation (spec §2)."""
        cfg = self.cfg
        if not cfg.region_tag:
            return VARIANT_POOLED
        if cfg.region_features == "sovr":
            return f"DKGZSL (SOVR-refined regions_{cfg.region_tag}, FDE {cfg.sovr_fde})"
        return f"DKGZSL w/o SOVR ({cfg.region_features}-pooled regions_{cfg.region_tag})"

    def refined_features(self, data: ZSLData) -> tuple:
        """(train, eval-seen, eval-unseen) features the generator learns and the classifier sees, [N_*, C].

        Spec §5 stage 2 makes them with SOVR (FDE -> ARA -> mean over attributes -> min-max) from region
        features: the data layer does that before the run when ``region_tag`` is set (zsl.refined: trained on
        the split's training rows, cached), so the features pass through as it scaled them.
        """
        return data.train_x, data.eval_seen_x, data.eval_unseen_x

    def _load_tensors(self, data: ZSLData) -> None:
        """Move the run's arrays to the device once; refuse training features outside [0, 1]."""
        dev = self.device
        as_f = lambda a: torch.as_tensor(a, dtype=torch.float32, device=dev)  # noqa: E731
        as_i = lambda a: torch.as_tensor(a, dtype=torch.long, device=dev)  # noqa: E731
        train_x, seen_x, unseen_x = self.refined_features(data)
        self.train_x, self.train_y = as_f(train_x), as_i(data.train_y)
        self.eval_seen_x, self.eval_seen_y = as_f(seen_x), as_i(data.eval_seen_y)
        self.eval_unseen_x, self.eval_unseen_y = as_f(unseen_x), as_i(data.eval_unseen_y)
        self.emb = class_condition(as_f(data.class_emb))
        self.seen, self.unseen = as_i(data.seen_classes), as_i(data.unseen_classes)
        low, high = float(self.train_x.min()), float(self.train_x.max())
        if low < -1e-5 or high > 1 + 1e-5:
            raise UserError(f"model 'dkgzsl' needs training features in [0, 1] (its generator and KTN end in a "
                            f"sigmoid), but {data.name}'s span [{low:.3g}, {high:.3g}]: use the data layer's "
                            "min-max scaling.")
        self.train_x = self.train_x.clamp(0.0, 1.0)  # float rounding of the scaler only (never the caller's array)

    def _adam(self, name: str) -> torch.optim.Adam:
        """Adam of net ``name``: lr (feed_lr for the MFU), betas (beta1, 0.999)."""
        cfg = self.cfg
        lr = cfg.feed_lr if name == "MFU" else cfg.lr
        kind = {"fused": True} if cfg.fused_adam else {"foreach": True}
        return torch.optim.Adam(self.nets[name].parameters(), lr=lr, betas=(cfg.beta1, 0.999), **kind)

    # ------------------------------------------------------------------ pieces
    def _batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(x [B, C], a [B, A]) of a random seen batch: B rows drawn without replacement."""
        n = self.train_x.shape[0]
        idx = torch.randperm(n, generator=self.gen, device=self.device)[: min(self.cfg.batch_size, n)]
        return self.train_x[idx], self.emb[self.train_y[idx]]

    def _randn(self, *shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=self.gen, device=self.device)

    def knowledge(self, a: torch.Tensor, semantic: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """MFU knowledge (K₁ [B, H], K₂ [B, C]) for conditions a [B, A]; the KTN runs without gradient
        (its outputs are detached in the MFU, spec §3.4)."""
        with torch.no_grad():
            d1, d2 = self.nets["KTN"](a)
        return self.nets["MFU"](d1, d2, a, semantic)

    def generate(self, z: torch.Tensor, a: torch.Tensor, guided: bool, semantic: bool = True) -> torch.Tensor:
        """x̃ [B, C] = G(z, a) (plain) or G(z, a, K(a)) (MFU-guided)."""
        knowledge = self.knowledge(a, semantic) if guided else None
        return self.nets["G"](z, a, knowledge, self.cfg.mfu_scale)

    # ------------------------------------------------------------------ optimiser steps
    def _ktn_step(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """One KTN step on ktn_weight · BCE(sigmoid(D₂(a)), x); returns the weighted loss (detached)."""
        opt = self.opts["KTN"]
        opt.zero_grad(set_to_none=True)
        loss = self.cfg.ktn_weight * ktn_loss(self.nets["KTN"](a)[1], x)
        loss.backward()
        opt.step()
        return loss.detach()

    def _critic_step(self, x: torch.Tensor, a: torch.Tensor, guided: bool) -> dict[str, torch.Tensor]:
        """One WGAN-GP critic step: γ(E D(x̃, a) − E D(x, a)) + γ λ E(‖∇D(x_mix)‖ − 1)², x̃ from this pass's
        generator with fresh z; returns the detached loss terms (spec §4)."""
        cfg, critic = self.cfg, self.nets["D"]
        z, u = self._randn(x.shape[0], self.emb.shape[1]), torch.rand(x.shape[0], generator=self.gen, device=self.device)
        with torch.no_grad():
            fake = self.generate(z, a, guided)
        real_s, fake_s, gp = critic.scores_and_penalty(x, fake, losses.interpolate(x, fake, u), critic.condition(a=a))
        wdist = real_s.mean() - fake_s.mean()
        loss = cfg.gamma_adv * (self.lam * gp - wdist)
        self.opts["D"].zero_grad(set_to_none=True)
        loss.backward()
        self.opts["D"].step()
        return {"d_loss": loss.detach(), "wasserstein": wdist.detach(), "gp": gp.detach()}

    def _generator_step(self, a: torch.Tensor, guided: bool) -> torch.Tensor:
        """One generator step on −γ E D(G(z, a[, K]), a) with fresh z; pass 1 also steps the MFU (whose
        gradients are zeroed first unless mfu_grads = accumulate).  Returns the loss (detached)."""
        cfg, critic = self.cfg, self.nets["D"]
        z = self._randn(a.shape[0], self.emb.shape[1])
        self.opts["G"].zero_grad(set_to_none=True)
        names = ["G", "MFU"] if guided else ["G"]
        if guided and cfg.mfu_grads == "zero":
            self.opts["MFU"].zero_grad(set_to_none=True)
        loss = -cfg.gamma_adv * critic(self.generate(z, a, guided), critic.condition(a=a)).mean()
        loss.backward(inputs=[p for name in names for p in self.nets[name].parameters()])
        for name in names:
            self.opts[name].step()
        return loss.detach()

    def _iteration(self, guided: bool, log: dict) -> None:
        """critic_iter (KTN, critic) step pairs on fresh batches, λ adapted to their mean penalty, then one
        generator (+ MFU when guided) step on the last batch (spec §5)."""
        cfg = self.cfg
        gp_sum = torch.zeros((), device=self.device)
        for _ in range(cfg.critic_iter):
            x, a = self._batch()
            ktn = self._ktn_step(x, a)
            terms = self._critic_step(x, a, guided)
            gp_sum = gp_sum + terms["gp"]
        if cfg.adaptive_gp:
            self.lam = losses.adapt_gp_weight(self.lam, gp_sum / cfg.critic_iter)
        g_loss = self._generator_step(a, guided)
        tag = "guided" if guided else "plain"
        _acc(log, ktn_loss=ktn, **terms, **{f"g_loss_{tag}": g_loss, f"wasserstein_{tag}": terms["wasserstein"]})

    # ------------------------------------------------------------------ trainer protocol
    def train_epoch(self) -> dict:
        """Pass 0 (plain generator) then pass 1 (MFU-guided), iters_per_pass iterations each; returns the
        mean losses, λ_GP at the epoch's end (spec §10: log it), seconds and ``stage``."""
        if self.epoch >= self.epochs_total:
            raise RuntimeError(f"dkgzsl: all {self.epochs_total} epochs are done.")
        start = time.perf_counter()
        for net in self.nets.values():
            net.train()
        log: dict = {}
        for guided in (False, True):
            for _ in range(self.iters_per_pass):
                self._iteration(guided, log)
        names = sorted(log)
        counts = torch.tensor([self.iters_per_pass * (1 if n.endswith(("_plain", "_guided")) else 2) for n in names],
                              device=self.device)
        values = torch.cat([torch.stack([log[k] for k in names]) / counts, self.lam.reshape(1)]).tolist()  # one sync
        out = dict(zip([*names, "gp_lambda"], values))
        self.epoch += 1
        out.update(stage=STAGE, iterations=2 * self.iters_per_pass, seconds=time.perf_counter() - start)
        return out

    def _eval_seed(self) -> int:
        """The seed of this epoch's evaluation (run seed and epoch): the training stream is untouched."""
        return self.seed * 1_000_003 + 7919 * self.epoch + 17

    @torch.no_grad()
    def synthesize(self, classes: torch.Tensor, num: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(x̃ [len(classes)·num, C], y) from the MFU-guided generator, z ~ N(0, I_A) per class block
        (zsl.synthesis: the rows do not depend on synthesis_chunk)."""
        for net in self.nets.values():
            net.eval()
        semantic = self.cfg.synthesis_mfu == "full"
        att_dim = self.emb.shape[1]

        def draw(gen: torch.Generator, n: int) -> tuple[torch.Tensor]:
            return (torch.randn(n, att_dim, generator=gen, device=self.device),)

        def make(y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
            return self.generate(z, self.emb[y], guided=True, semantic=semantic)

        return synthesize(classes.tolist(), num, seed, self.cfg.synthesis_chunk, draw, make, self.device)

    def evaluate(self) -> dict:
        """GZSL S/U/H and ZSL (percent) on the data's evaluation sets (the protocol chose them), from
        syn_num synthetic rows per unseen class; ``variant`` names what was run.  Own RNG streams."""
        cfg, start = self.cfg, time.perf_counter()
        seed = self._eval_seed()
        syn, syn_y = self.synthesize(self.unseen, cfg.syn_num, seed)
        ccfg = ClassifierConfig(lr=cfg.classifier_lr, beta1=0.5, epochs=cfg.classifier_epochs,
                                batch_size=cfg.classifier_batch or cfg.syn_num, selection=cfg.classifier_selection)
        gen = torch.Generator(device=self.device).manual_seed(seed)
        out = gzsl_evaluate(train_x=self.train_x, train_y=self.train_y, syn_x=syn, syn_y=syn_y,
                            eval_seen_x=self.eval_seen_x, eval_seen_y=self.eval_seen_y,
                            eval_unseen_x=self.eval_unseen_x, eval_unseen_y=self.eval_unseen_y,
                            seen_classes=self.seen, unseen_classes=self.unseen, n_classes=self.emb.shape[0],
                            cfg=ccfg, generator=gen)
        out.update(zsl_evaluate(syn_x=syn, syn_y=syn_y, eval_unseen_x=self.eval_unseen_x,
                                eval_unseen_y=self.eval_unseen_y, unseen_classes=self.unseen, cfg=ccfg, generator=gen))
        out = {k: float(v) for k, v in out.items()}
        out.update(stage=STAGE, variant=self.variant, eval_seconds=time.perf_counter() - start)
        return out

    def state_dict(self) -> dict:
        """Everything needed to continue: nets, optimisers, RNG, λ_GP, epoch, and (mfu_grads = accumulate)
        the MFU's accumulated gradients."""
        grads = None
        if self.cfg.mfu_grads == "accumulate":
            grads = [None if p.grad is None else p.grad.clone() for p in self.nets["MFU"].parameters()]
        return {
            "nets": self.nets.state_dict(),
            "opts": {k: o.state_dict() for k, o in self.opts.items()},
            "rng": self.gen.get_state(),
            "lam": self.lam.clone(),
            "epoch": self.epoch,
            "mfu_grads": grads,
            "seed": self.seed,
            "config": asdict(self.cfg),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore a :meth:`state_dict` (tensors are moved to this run's device)."""
        self.nets.load_state_dict(state["nets"])
        for k, o in self.opts.items():
            o.load_state_dict(state["opts"][k])
        self.gen.set_state(state["rng"].cpu())
        self.lam = state["lam"].to(self.device)
        self.epoch = int(state["epoch"])
        self.seed = int(state["seed"])
        for p, g in zip(self.nets["MFU"].parameters(), state.get("mfu_grads") or []):
            p.grad = None if g is None else g.to(self.device).clone()


def _acc(log: dict, **values: torch.Tensor) -> None:
    """Sum detached loss tensors on the device (averaged once per epoch, one host sync)."""
    for k, v in values.items():
        log[k] = log[k] + v if k in log else v
