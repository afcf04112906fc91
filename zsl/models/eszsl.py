"""ESZSL (Romera-Paredes & Torr, ICML 2015): a linear attribute baseline with a closed form.

Notation (rows = samples): X [N, R] training features, Y [N, Z] targets (one-hot {0, 1} by
default; the paper's {-1, +1} coding with ``target_coding="signed"``), S [Z, A] seen-class embeddings, V [R, A] the learned map; class scores are
X V Sᵀ.  Objective (with β = γλ, which gives the closed form):

    L(V) = ‖X V Sᵀ − Y‖² + γ‖V Sᵀ‖² + λ‖X V‖² + γλ‖V‖²
    ∇L   = 2[(XᵀX + γI) V (SᵀS + λI) − XᵀY S]
    V*   = (XᵀX + γI)⁻¹ XᵀY S (SᵀS + λI)⁻¹

Solvers: ``closed_form`` (every epoch solves V*; epochs only repeat it) and ``gradient``
(Nesterov-accelerated full-batch gradient descent, step ``lr / L`` with L the gradient's
Lipschitz constant; ``steps_per_epoch`` steps per epoch), which converges to V* over epochs:
a fast honest multi-epoch model for scheduler tests.  Computation in float64 on ``device``.

Why one-hot by default: with non-negative (L2-normalised) attributes the signed coding's mass of
-1 targets is fitted through the mean class embedding and swamps the class-specific part; on the
simulated sims it cost 10-60 ZSL points (measured, see zsl/data/simulated.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from zsl.data.types import ZSLData
from zsl.errors import UserError
from zsl.metrics import harmonic_mean, per_class_accuracy
from zsl.models import validate_config
from zsl.trainer import SingleStageEpochs

SOLVERS = ("closed_form", "gradient")
TARGET_CODINGS = ("onehot", "signed")


@dataclass
class Config:
    """ESZSL hyperparameters (search gamma and lam on a log scale)."""

    gamma: float = 100.0         # regulariser on the feature side (> 0)
    lam: float = 1.0             # regulariser on the embedding side (> 0)
    epochs: int = 1              # closed_form: repeats of the solve; gradient: epochs of steps_per_epoch steps
    solver: str = "closed_form"  # "closed_form" | "gradient"
    lr: float = 1.0              # gradient solver: step size as a fraction of 1/L (0 < lr < 2)
    steps_per_epoch: int = 50    # gradient solver: full-batch steps per epoch
    target_coding: str = "onehot"  # "onehot": Y in {0, 1}; "signed": the paper's Y in {-1, +1}


def check_config(cfg: Config) -> None:
    """UserError naming the hyperparameter for out-of-range values."""
    if cfg.solver not in SOLVERS:
        raise UserError(f"hyperparameter 'solver' of model 'eszsl' must be one of {', '.join(SOLVERS)}, got {cfg.solver!r}.")
    if cfg.target_coding not in TARGET_CODINGS:
        raise UserError(f"hyperparameter 'target_coding' of model 'eszsl' must be one of {', '.join(TARGET_CODINGS)}, got {cfg.target_coding!r}.")
    for key in ("gamma", "lam"):
        if not getattr(cfg, key) > 0:
            raise UserError(f"hyperparameter '{key}' of model 'eszsl' must be > 0, got {getattr(cfg, key)!r}.")
    if not 0 < cfg.lr < 2:
        raise UserError(f"hyperparameter 'lr' of model 'eszsl' must lie in (0, 2), got {cfg.lr!r}.")
    if cfg.epochs < 1 or cfg.steps_per_epoch < 1:
        raise UserError("hyperparameters 'epochs' and 'steps_per_epoch' of model 'eszsl' must be >= 1.")


def closed_form(xtx: torch.Tensor, xtys: torch.Tensor, sts: torch.Tensor, gamma: float, lam: float) -> torch.Tensor:
    """V* [R, A] = (XᵀX + γI)⁻¹ (XᵀY S) (SᵀS + λI)⁻¹ from xtx [R, R], xtys [R, A], sts [A, A]."""
    left = xtx + gamma * torch.eye(xtx.shape[0], dtype=xtx.dtype, device=xtx.device)
    right = sts + lam * torch.eye(sts.shape[0], dtype=sts.dtype, device=sts.device)
    return torch.linalg.solve(right, torch.linalg.solve(left, xtys).T).T  # right is symmetric


def objective(x: torch.Tensor, y: torch.Tensor, s: torch.Tensor, v: torch.Tensor, gamma: float, lam: float) -> torch.Tensor:
    """L(V) of the module docstring (0-d tensor); x [N, R], y [N, Z], s [Z, A], v [R, A]."""
    vs = v @ s.T
    xv = x @ v
    return ((xv @ s.T - y) ** 2).sum() + gamma * (vs**2).sum() + lam * (xv**2).sum() + gamma * lam * (v**2).sum()


class ESZSL(SingleStageEpochs):
    """ESZSL as a :class:`zsl.trainer.Trainer` (train_epoch / evaluate / state_dict)."""

    Config = Config
    STAGE = "eszsl"  # the stage name train_epoch reports

    def __init__(self, config: dict, data: ZSLData, device="cpu", seed: int = 0) -> None:
        self.cfg = Config(**validate_config(Config, config, where="model 'eszsl'"))
        check_config(self.cfg)
        self.data, self.device, self.seed = data, torch.device(device), seed
        self.epochs_total, self.epoch = self.cfg.epochs, 0
        f64 = dict(dtype=torch.float64, device=self.device)
        self.emb = torch.as_tensor(data.class_emb, **f64)                              # [K, A]
        x = torch.as_tensor(data.train_x, **f64)
        seen = torch.as_tensor(data.seen_classes, device=self.device)
        y_idx = torch.searchsorted(seen, torch.as_tensor(data.train_y, device=self.device))
        off = -1.0 if self.cfg.target_coding == "signed" else 0.0
        y = torch.full((x.shape[0], seen.numel()), off, **f64)
        y[torch.arange(x.shape[0], device=self.device), y_idx] = 1.0                    # [N, Z]
        s = self.emb[seen]                                                              # [Z, A]
        self._xtx, self._xtys, self._sts = x.T @ x, x.T @ y @ s, s.T @ s
        self._left = self._xtx + self.cfg.gamma * torch.eye(x.shape[1], **f64)          # XᵀX + γI
        self._right = self._sts + self.cfg.lam * torch.eye(s.shape[1], **f64)           # SᵀS + λI
        self._yy, self._n = float((y * y).sum()), x.shape[0]                            # ‖Y‖², N
        self.v = torch.zeros(x.shape[1], s.shape[1], **f64)                            # [R, A]
        self._v_prev = self.v.clone()
        self._momentum_t = 1.0
        self._step_size = self.cfg.lr / self._lipschitz()

    def _lipschitz(self) -> float:
        """Lipschitz constant of ∇L: 2 (λmax(XᵀX) + γ)(λmax(SᵀS) + λ)."""
        top_x = torch.linalg.eigvalsh(self._xtx)[-1].item()
        top_s = torch.linalg.eigvalsh(self._sts)[-1].item()
        return 2.0 * (top_x + self.cfg.gamma) * (top_s + self.cfg.lam)

    def train_epoch(self) -> dict:
        """One epoch: the closed-form solve, or ``steps_per_epoch`` Nesterov steps.  Returns loss (per image) and time."""
        start = time.perf_counter()
        if self.cfg.solver == "closed_form":
            self.v = closed_form(self._xtx, self._xtys, self._sts, self.cfg.gamma, self.cfg.lam)
        else:
            self._gradient_steps(self.cfg.steps_per_epoch)
        self.epoch += 1
        loss = ((self._left @ self.v @ self._right - 2.0 * self._xtys) * self.v).sum() + self._yy  # = L(V), Gram form
        loss = loss / self._n
        return {"loss": float(loss.item()), "time_s": time.perf_counter() - start, "stage": "eszsl"}

    def _gradient_steps(self, steps: int) -> None:
        left, right = self._left, self._right
        t = self._momentum_t
        for _ in range(steps):
            t_next = (1.0 + (1.0 + 4.0 * t * t) ** 0.5) / 2.0
            look = self.v + ((t - 1.0) / t_next) * (self.v - self._v_prev)
            grad = 2.0 * (left @ look @ right - self._xtys)
            self._v_prev, self.v = self.v, look - self._step_size * grad
            t = t_next
        self._momentum_t = t

    def scores(self, x) -> torch.Tensor:
        """Class scores [n, K] = x V Embᵀ for features x [n, R] (numpy or tensor)."""
        return torch.as_tensor(x, dtype=torch.float64, device=self.device) @ self.v @ self.emb.T

    def evaluate(self) -> dict:
        """GZSL S/U/H (argmax over seen ∪ unseen classes) and ZSL (argmax over unseen), percent."""
        d, dev = self.data, self.device
        seen = torch.as_tensor(d.seen_classes, device=dev)
        unseen = torch.as_tensor(d.unseen_classes, device=dev)
        candidates = torch.cat([seen, unseen])
        ys = torch.as_tensor(d.eval_seen_y, device=dev)
        yu = torch.as_tensor(d.eval_unseen_y, device=dev)
        score_s, score_u = self.scores(d.eval_seen_x), self.scores(d.eval_unseen_x)
        pred_s = candidates[score_s[:, candidates].argmax(1)]
        pred_u = candidates[score_u[:, candidates].argmax(1)]
        pred_zsl = unseen[score_u[:, unseen].argmax(1)]
        s_acc = 100.0 * per_class_accuracy(pred_s, ys, seen).item()
        u_acc = 100.0 * per_class_accuracy(pred_u, yu, unseen).item()
        zsl = 100.0 * per_class_accuracy(pred_zsl, yu, unseen).item()
        return {"S": s_acc, "U": u_acc, "H": harmonic_mean(s_acc, u_acc), "ZSL": zsl}

    def state_dict(self) -> dict:
        return {
            "config": dict(vars(self.cfg)), "epoch": self.epoch, "seed": self.seed,
            "v": self.v.cpu(), "v_prev": self._v_prev.cpu(), "momentum_t": self._momentum_t,
        }

    def load_state_dict(self, state: dict) -> None:
        self.epoch = int(state["epoch"])
        self.v = state["v"].to(self.device, torch.float64)
        self._v_prev = state["v_prev"].to(self.device, torch.float64)
        self._momentum_t = float(state["momentum_t"])
