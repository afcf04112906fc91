"""SOVR, the semantic-oriented visual refinement of DKGZSL (spec shared/spec/dkgzsl.md §3.1-§3.2, §5 stages 1-2;
its §10 corrections win): region tokens -> one refined global feature per image that any model can train on.

Notation: B images, R = g² regions, C channels, A attributes, E word-vector width (300), Z seen classes.

FDE, the feature denoising encoder (§3.1), tokens [B, 1 + R, C] -> refined regions [B, R, C]:
  1. P' = sigmoid(Conv1d_k3(P)) along the region axis (P = the R region tokens as [B, C, R]);
  2. position attention :func:`position_attention` with the global token g and learned queries W_q [R, C];
  3. small-blob removal :func:`blob_mask` (threshold, 8-connected components of at least
     ``blob_min_area`` · R cells on the g x g grid);
  4. re-weighting P' ⊙ sigmoid(a ⊙ keep) -- removed cells get sigmoid(0) = 0.5 (the reference, ``fde_reweight``
     "sigmoid"), or P' ⊙ sigmoid(a) ⊙ keep ("hard": removed cells zeroed);
  5. per-channel top-k (k = ``fde_topk`` · R) :func:`channel_topk`.
  The never-trained auxiliary heads and the dead modules of the reference are not built.
ARA, attribute-region attention (§3.2), regions [B, R, C] -> H [B, A, C] and scores ŝ [B, A]
  (:func:`ara_forward`): attribute vectors V [A, E] (learnable; from the word vectors when given, else a fixed
  random init, see :func:`attribute_vectors`), W1 [E, C] ~ N(0, 1), W2 [E, C] = 0 (uniform attention at start);
  regions L2-normalised; logits V W2 f_r; top-k (``ara_topk`` · R) per attribute with the others filled by 0
  (the reference, ``ara_fill`` "zero") or -inf ("-inf"); softmax over regions; h_a = Σ_r α f_r; ŝ_a = v_a W1 h_a.
  Class logits S = ŝ φᵀ over the seen classes (:func:`class_logits`), φ = class attributes thresholded at 0 and
  row-L2-normalised (:func:`class_prototypes`); loss = cross-entropy, no temperature.
Refined feature: x = mean over attributes of H, [B, C] (:meth:`SOVR.refine`); the caller min-max scales it on
  the training rows (zsl.refined).

Grid-dependent constants are fractions of R (spec §10), equal to the paper's at R = 196: FDE top-120/196, ARA
top-80/196, minimum blob area 30/196 (rounded half up, at least 1: 10, 7 and 2 cells at R = 16).  The blob
threshold 0.05 is absolute, as in the reference (a is L2-normalised, so at R = 16 a uniform a is 0.25 and
little is removed).

``fde`` (spec §9.2 / §10):
  "joint"     -- FDE and ARA trained together on L_ARA and both applied at extraction (default, the correction);
  "identity"  -- no FDE: ARA on the raw region tokens (the first ablation);
  "reference" -- the released code: ARA trained on raw regions, an untrained random FDE applied at extraction.

Stage 1 (:func:`train_sovr`): ``pre_iters`` RMSprop steps (lr 1e-4, weight decay 1e-4, momentum 0.9) on
class-balanced batches of min(Z, pre_bs) seen classes x max(⌊pre_bs / Z⌋, 1) images (40 for AWA2's 40 seen
classes, spec §10).  It sees the training rows and their labels only.  Stage 2 (:func:`extract`): x for any rows.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from zsl.errors import DivergedError, UserError

PAPER_REGIONS = 196
FDE_MODES = ("joint", "identity", "reference")
ARA_FILLS = ("zero", "-inf")
FDE_REWEIGHTS = ("sigmoid", "hard")
WORD_DIM = 300
WORD_SEED = 20251   # the fixed random attribute vectors (no word vectors for simulated attributes)
PRELOAD_BYTES = 1 << 30  # training rows held in memory (float32) up to this size, else read per batch


@dataclass
class SOVRConfig:
    """SOVR hyperparameters (defaults: spec §6 with §10's fractions of R; the reference's defects behind options)."""

    fde: str = "joint"                  # joint | identity | reference (see the module docstring)
    pre_iters: int = 1101               # stage-1 steps (paper: 1101 AWA2/CUB, 1501 SUN)
    pre_bs: int = 50                    # class-balanced batch: min(Z, pre_bs) classes x max(pre_bs // Z, 1) images
    lr: float = 1e-4                    # RMSprop
    weight_decay: float = 1e-4
    momentum: float = 0.9
    ara_topk: float = 80 / 196          # regions kept per attribute, as a fraction of R
    ara_fill: str = "zero"              # zero (reference: removed logits set to 0) | -inf
    fde_topk: float = 120 / 196         # activations kept per channel, as a fraction of R
    blob_threshold: float = 0.05        # binarisation threshold of the L2-normalised position attention
    blob_min_area: float = 30 / 196     # minimum 8-connected blob, as a fraction of R
    fde_reweight: str = "sigmoid"       # sigmoid (reference: removed cells weigh sigmoid(0) = 0.5) | hard
    extract_batch: int = 256            # images per stage-2 forward pass (memory only)


def check_sovr_config(cfg: SOVRConfig, prefix: str = "") -> None:
    """UserError naming the hyperparameter (``prefix`` + field, e.g. 'sovr_fde') for a value SOVR cannot run."""
    for key, allowed in (("fde", FDE_MODES), ("ara_fill", ARA_FILLS), ("fde_reweight", FDE_REWEIGHTS)):
        if getattr(cfg, key) not in allowed:
            raise UserError(f"hyperparameter '{prefix}{key}' must be one of {', '.join(allowed)}, got {getattr(cfg, key)!r}.")
    for key in ("ara_topk", "fde_topk", "blob_min_area"):
        if not 0 < getattr(cfg, key) <= 1:
            raise UserError(f"hyperparameter '{prefix}{key}' is a fraction of the regions and must lie in (0, 1], "
                            f"got {getattr(cfg, key)!r}.")
    for key in ("pre_iters", "pre_bs", "extract_batch"):
        if getattr(cfg, key) < 1:
            raise UserError(f"hyperparameter '{prefix}{key}' must be >= 1, got {getattr(cfg, key)!r}.")
    if not cfg.lr > 0 or cfg.weight_decay < 0 or not 0 <= cfg.momentum < 1:
        raise UserError(f"hyperparameters '{prefix}lr' (> 0), '{prefix}weight_decay' (>= 0) and '{prefix}momentum' "
                        f"(in [0, 1)) are out of range: got {cfg.lr!r}, {cfg.weight_decay!r}, {cfg.momentum!r}.")
    if not 0 <= cfg.blob_threshold < 1:
        raise UserError(f"hyperparameter '{prefix}blob_threshold' must lie in [0, 1), got {cfg.blob_threshold!r}.")


def count_of(fraction: float, regions: int) -> int:
    """round(fraction · regions), halves up, clipped to 1..regions: 80/196 -> 80 at R = 196, 7 at R = 16."""
    return max(1, min(regions, math.floor(fraction * regions + 0.5 + 1e-9)))


# ----------------------------------------------------------------------------------------------- pure maths
def position_attention(act: torch.Tensor, glob: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
    """FDE step 2, a [B, R]: M[b, r, v] = Σ_c act[b, c, r] · glob[b, c] · q̂[v, c] (q̂ = queries [R, C] with rows
    L2-normalised), softmax over v, mean over r, then L2-normalised over R.  act [B, C, R], glob [B, C]."""
    q = F.normalize(queries, dim=1)
    scores = torch.einsum("bcr,bc,vc->brv", act, glob, q)
    return F.normalize(scores.softmax(dim=2).mean(dim=1), dim=1)


def blob_mask(a: torch.Tensor, grid: int, threshold: float, min_area: int) -> torch.Tensor:
    """FDE step 3, keep [B, R] bool: cells with a > threshold lying in an 8-connected component (on the
    grid x grid map, row-major) of at least ``min_area`` such cells.  a [B, R], R = grid².

    Components by max-label propagation (3 x 3 max-pool restricted to the on-cells, until nothing changes), so it
    runs on any device; equal to scipy.ndimage.label with a 3 x 3 structure of ones (tested)."""
    b, r = a.shape
    on = (a > threshold).reshape(b, 1, grid, grid)
    ids = torch.arange(1, r + 1, device=a.device, dtype=torch.float32).reshape(1, 1, grid, grid)
    labels = torch.where(on, ids, torch.zeros((), device=a.device))
    for _ in range(r):
        grown = torch.where(on, F.max_pool2d(labels, 3, stride=1, padding=1), labels)
        if torch.equal(grown, labels):
            break
        labels = grown
    flat = labels.reshape(b, r)
    area = (flat[:, :, None] == flat[:, None, :]).sum(dim=2)
    return on.reshape(b, r) & (area >= min_area)


def fde_weights(a: torch.Tensor, keep: torch.Tensor, mode: str = "sigmoid") -> torch.Tensor:
    """FDE step 4, region weights [B, R] from a [B, R] and keep [B, R]: sigmoid(a ⊙ keep) ("sigmoid", the
    reference: a removed cell weighs sigmoid(0) = 0.5) or sigmoid(a) ⊙ keep ("hard": removed cells weigh 0)."""
    return torch.sigmoid(a * keep) if mode == "sigmoid" else torch.sigmoid(a) * keep


def topk_mask(x: torch.Tensor, k: int, dim: int = -1) -> torch.Tensor:
    """Bool mask of x's shape, True at the k largest entries along ``dim`` (ties: torch.topk's choice)."""
    return torch.zeros_like(x, dtype=torch.bool).scatter_(dim, x.topk(k, dim=dim).indices, True)


def channel_topk(p: torch.Tensor, k: int) -> torch.Tensor:
    """FDE step 5: p [B, C, R] with all but each channel's k largest activations (along R) set to 0."""
    return p * topk_mask(p, k, dim=2)


def ara_attention(logits: torch.Tensor, k: int, fill: str = "zero") -> torch.Tensor:
    """α [B, A, R]: per attribute, the top-k logits [B, A, R] kept, the others set to 0 ("zero", the reference)
    or -inf ("-inf"), then softmax over the regions."""
    keep = topk_mask(logits, k, dim=2)
    value = 0.0 if fill == "zero" else float("-inf")
    return logits.masked_fill(~keep, value).softmax(dim=2)


def ara_forward(regions: torch.Tensor, v: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, k: int,
                fill: str = "zero") -> tuple[torch.Tensor, torch.Tensor]:
    """ARA (§3.2): (H [B, A, C], ŝ [B, A]) from regions [B, R, C], V [A, E], W1 [E, C], W2 [E, C].

    f_r = regions L2-normalised over C; e[b, a, r] = v_a W2 f_r; α = :func:`ara_attention` (top-k, fill);
    h_a = Σ_r α[a, r] f_r; ŝ_a = v_a W1 h_a."""
    f = F.normalize(regions, dim=2)
    logits = torch.einsum("ac,brc->bar", v @ w2, f)
    h = ara_attention(logits, k, fill) @ f
    return h, (h * (v @ w1)).sum(dim=2)


def class_prototypes(att: np.ndarray | torch.Tensor) -> torch.Tensor:
    """φ [K, A] float32: class attributes thresholded at 0 (AWA2's four negative entries, spec §10) and row-L2-normalised."""
    phi = torch.as_tensor(np.asarray(att, dtype=np.float32)).clamp_min(0.0)
    return F.normalize(phi, dim=1)


def class_logits(scores: torch.Tensor, phi: torch.Tensor) -> torch.Tensor:
    """S [B, Z] = Σ_a ŝ[b, a] φ[y, a] for attribute scores [B, A] and prototypes φ [Z, A] (no temperature)."""
    return scores @ phi.T


def attribute_vectors(a_dim: int, given: np.ndarray | None = None) -> np.ndarray:
    """The ARA initialisation V0 [A, E] float32 (rows L2-normalised): ``given`` attribute word vectors [A, E]
    (e.g. the 300-d GloVe rows the reference ships), else FIXED RANDOM vectors -- N(0, 1) [A, 300] from
    numpy default_rng(WORD_SEED), identical for every run -- which carry no semantics (the simulated
    attributes have no names); nearly orthogonal in 300 dimensions, so V starts as a near-one-hot code."""
    if given is None:
        vec = np.random.default_rng(WORD_SEED).standard_normal((a_dim, WORD_DIM))
    else:
        vec = np.asarray(given, dtype=np.float64)
        if vec.ndim != 2 or vec.shape[0] != a_dim or not np.isfinite(vec).all() or (np.linalg.norm(vec, axis=1) == 0).any():
            raise UserError(f"attribute_vectors must be a finite [A, E] array with A = {a_dim} non-zero rows (one per "
                            f"attribute, in att_splits.mat's order), got shape {vec.shape}: pass the matching word vectors.")
    return (vec / np.linalg.norm(vec, axis=1, keepdims=True)).astype(np.float32)


# ----------------------------------------------------------------------------------------------- networks
class FDE(nn.Module):
    """Feature denoising encoder: tokens [B, 1 + R, C] -> refined regions [B, R, C] (module docstring, steps 1-5)."""

    def __init__(self, dim: int, grid: int, cfg: SOVRConfig) -> None:
        super().__init__()
        regions = grid * grid
        self.grid = grid
        self.conv = nn.Conv1d(dim, dim, kernel_size=3, padding=1)
        self.queries = nn.Parameter(torch.randn(regions, dim))
        self.k = count_of(cfg.fde_topk, regions)
        self.threshold = cfg.blob_threshold
        self.min_area = count_of(cfg.blob_min_area, regions)
        self.reweight = cfg.fde_reweight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        glob, patches = tokens[:, 0], tokens[:, 1:].transpose(1, 2)          # [B, C], [B, C, R]
        act = torch.sigmoid(self.conv(patches))                               # P'
        a = position_attention(act, glob, self.queries)                       # [B, R]
        keep = blob_mask(a.detach(), self.grid, self.threshold, self.min_area)
        return channel_topk(act * fde_weights(a, keep, self.reweight)[:, None, :], self.k).transpose(1, 2)


class ARA(nn.Module):
    """Attribute-region attention: regions [B, R, C] -> (H [B, A, C], ŝ [B, A]) (:func:`ara_forward`)."""

    def __init__(self, dim: int, regions: int, vectors: np.ndarray, cfg: SOVRConfig) -> None:
        super().__init__()
        self.v = nn.Parameter(torch.as_tensor(vectors, dtype=torch.float32).clone())          # [A, E]
        self.w1 = nn.Parameter(torch.randn(vectors.shape[1], dim))                            # N(0, 1)
        self.w2 = nn.Parameter(torch.zeros(vectors.shape[1], dim))                            # uniform attention
        self.k = count_of(cfg.ara_topk, regions)
        self.fill = cfg.ara_fill

    def forward(self, regions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return ara_forward(regions, self.v, self.w1, self.w2, self.k, self.fill)


class SOVR(nn.Module):
    """FDE (unless ``fde`` = identity) then ARA.  ``regions(tokens, training)`` is what ARA sees: in the
    ``reference`` mode raw regions while training and the untrained FDE's output at extraction."""

    def __init__(self, dim: int, grid: int, vectors: np.ndarray, cfg: SOVRConfig) -> None:
        super().__init__()
        self.mode = cfg.fde
        self.fde = None if cfg.fde == "identity" else FDE(dim, grid, cfg)
        self.ara = ARA(dim, grid * grid, vectors, cfg)

    def regions(self, tokens: torch.Tensor, training: bool) -> torch.Tensor:
        if self.fde is None or (self.mode == "reference" and training):
            return tokens[:, 1:]
        return self.fde(tokens)

    def trained_parameters(self) -> list[nn.Parameter]:
        """What stage 1 optimises: ARA, plus FDE in the joint mode (the reference never steps FDE)."""
        params = list(self.ara.parameters())
        return params + list(self.fde.parameters()) if self.mode == "joint" else params

    def forward(self, tokens: torch.Tensor, phi_seen: torch.Tensor) -> torch.Tensor:
        """Seen-class logits [B, Z] of tokens [B, 1 + R, C] (training path)."""
        return class_logits(self.ara(self.regions(tokens, training=True))[1], phi_seen)

    @torch.no_grad()
    def refine(self, tokens: torch.Tensor) -> torch.Tensor:
        """The refined global feature x [B, C] = mean over attributes of H (extraction path)."""
        return self.ara(self.regions(tokens, training=False))[0].mean(dim=1)


# ----------------------------------------------------------------------------------------------- stages 1 and 2
class _Rows:
    """Token rows by image index, from a RegionFeatures (``.rows``) or an array [N, 1 + R, C]; the training rows
    are held in memory (float32, on the device) when they fit in PRELOAD_BYTES."""

    def __init__(self, source, device: torch.device, keep: np.ndarray | None = None) -> None:
        self.read = source.rows if hasattr(source, "rows") else (lambda idx: np.asarray(source[idx], dtype=np.float32))
        self.device, self.pool, self.where = device, None, None
        shape = source.tokens.shape if hasattr(source, "tokens") else source.shape
        if keep is not None and keep.size * int(np.prod(shape[1:])) * 4 <= PRELOAD_BYTES:
            self.pool = torch.as_tensor(self.read(keep), device=device)
            self.where = np.full(shape[0], -1, dtype=np.int64)
            self.where[keep] = np.arange(keep.size)

    def __call__(self, idx: np.ndarray) -> torch.Tensor:
        if self.pool is not None:
            return self.pool[torch.as_tensor(self.where[idx], device=self.device)]
        return torch.as_tensor(self.read(idx), device=self.device)


def balanced_batch(rng: np.random.Generator, by_class: list[np.ndarray], batch: int) -> np.ndarray:
    """Image rows of one class-balanced batch: min(Z, batch) of the Z classes (no repeat), then max(batch // Z, 1)
    images of each (without replacement when the class has enough).  by_class: each class's rows."""
    z = len(by_class)
    per = max(batch // z, 1)
    picked = rng.choice(z, size=min(z, batch), replace=False)
    return np.concatenate([rng.choice(by_class[c], size=per, replace=by_class[c].size < per) for c in picked])


def train_sovr(source, train_rows: np.ndarray, train_labels: np.ndarray, seen_classes: np.ndarray,
               class_att: np.ndarray, cfg: SOVRConfig, seed: int, device="cpu",
               word_vectors: np.ndarray | None = None) -> tuple[SOVR, dict]:
    """Stage 1: (trained SOVR in eval mode, log) from the training rows only.

    source: RegionFeatures or tokens [N, 1 + R, C]; train_rows [n] image rows with labels train_labels [n]
    (global class ids, all in seen_classes [Z]); class_att [K, A] the class attributes (φ = class_prototypes).
    log: pre_iters, batch images, mean loss over the first and last min(100, pre_iters // 10) steps and batch accuracy (%), seconds.
    """
    check_sovr_config(cfg)
    device = torch.device(device)
    shape = source.tokens.shape if hasattr(source, "tokens") else source.shape
    regions, dim = shape[1] - 1, shape[2]
    grid = math.isqrt(regions)
    train_rows = np.asarray(train_rows, dtype=np.int64)
    train_labels = np.asarray(train_labels, dtype=np.int64)
    seen_classes = np.sort(np.asarray(seen_classes, dtype=np.int64))
    if not np.isin(train_labels, seen_classes).all():
        raise ValueError("every training label must be a seen class")
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SOVR(dim, grid, attribute_vectors(class_att.shape[1], word_vectors), cfg).to(device)
    phi_seen = class_prototypes(class_att)[torch.as_tensor(seen_classes)].to(device)
    by_class = [train_rows[train_labels == c] for c in seen_classes]
    if any(rows.size == 0 for rows in by_class):
        raise ValueError("every seen class needs a training row")
    rows = _Rows(source, device, keep=np.unique(train_rows))
    target_of = np.full(shape[0], -1, dtype=np.int64)                     # image row -> seen-class column
    target_of[train_rows] = np.searchsorted(seen_classes, train_labels)
    opt = torch.optim.RMSprop(model.trained_parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum)
    rng = np.random.default_rng([seed, 0x534F5652])
    losses = torch.zeros(cfg.pre_iters, device=device)
    hits = torch.zeros(cfg.pre_iters, device=device)
    model.train()
    batch = 0
    for it in range(cfg.pre_iters):
        idx = balanced_batch(rng, by_class, cfg.pre_bs)
        batch = idx.size
        target = torch.as_tensor(target_of[idx], device=device)
        logits = model(rows(idx), phi_seen)
        loss = F.cross_entropy(logits, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses[it] = loss.detach()
        hits[it] = (logits.detach().argmax(1) == target).float().mean()
    model.eval()
    window = min(100, max(1, cfg.pre_iters // 10))
    log = {"pre_iters": cfg.pre_iters, "batch_images": int(batch),
           "loss_first": float(losses[:window].mean()), "loss_last": float(losses[-window:].mean()),
           "batch_acc_last": 100.0 * float(hits[-window:].mean()), "seconds": time.perf_counter() - start}
    if not math.isfinite(log["loss_last"]):
        raise DivergedError(f"SOVR pre-training diverged: its loss is {log['loss_last']}; lower sovr_lr.")
    return model, log


def extract(model: SOVR, source, rows: np.ndarray, device="cpu", batch: int = 256) -> np.ndarray:
    """Stage 2: refined features x [n, C] float32 (unscaled) of image rows [n] (in ``rows``' order)."""
    device = torch.device(device)
    rows = np.asarray(rows, dtype=np.int64)
    read = _Rows(source, device)
    parts = [model.refine(read(rows[i:i + batch])).float().cpu().numpy() for i in range(0, rows.size, batch)]
    return np.concatenate(parts) if parts else np.empty((0, model.ara.w1.shape[1]), np.float32)
