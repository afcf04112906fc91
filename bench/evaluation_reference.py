"""The reference D2SC's evaluation, re-implemented from the spec (d2sc §9, §11 items 1 and 18) for benchmarks.

Written from the spec's description only (no reference code).  Two pieces:

- :class:`ReferenceClassifier`: Linear + LogSoftmax + NLLLoss through autograd, init N(0, 0.02²),
  bias 0, Adam(lr, (beta1, 0.999)); the training matrix lives on the host and is consumed in
  sequential batches of a host-side shuffled copy, re-shuffled (a whole-matrix copy) at every
  wrap-around; each batch is copied into a device buffer.  After every epoch each test set is
  predicted in batches, the predictions are copied to the host and the per-class mean accuracy
  is computed by a Python loop over classes.  It returns the whole per-epoch history; callers
  pick the best epoch (the reference's test-set selection) or the last.
- :func:`reference_dfg_evaluation`: one DFG evaluation of the reference: three generations
  through the trainer's own G_c / G_x (unseen one-step, unseen progressive, seen one-step), each
  run class by class with batch = syn_num and copied to the host; the V, C, S feature views of
  real and synthetic rows; then GZSL and ZSL classifiers for each of V, VS, C, VC, VCS x
  {one-step, progressive} (20) and the "Seen (V)" classifier twice.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from zsl.metrics import harmonic_mean

VIEWS = ("V", "VS", "C", "VC", "VCS")
MODES = ("one_step", "progressive")


class ReferenceClassifier:
    """Softmax classifier in the reference's structure; rows x [N, D] and local labels y [N] in 0..n_out-1.

    ``x`` and ``y`` are moved to the host; the model lives on ``device``.  The global torch RNG
    (seeded here with ``seed``) draws the init and the shuffles, as in the reference.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, n_out: int, *, lr: float, beta1: float,
                 batch: int, epochs: int, device: str, seed: int):
        torch.manual_seed(seed)
        self.x, self.y = x.cpu(), y.cpu()
        self.batch, self.epochs, self.device = batch, epochs, device
        self.model = nn.Sequential(nn.Linear(self.x.shape[1], n_out), nn.LogSoftmax(dim=1)).to(device)
        nn.init.normal_(self.model[0].weight, 0.0, 0.02)
        nn.init.zeros_(self.model[0].bias)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=lr, betas=(beta1, 0.999))
        self.loss = nn.NLLLoss()
        self.input = torch.empty(batch, self.x.shape[1], device=device)
        self.label = torch.empty(batch, dtype=torch.long, device=device)
        self.pos, self.started = 0, False

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Sequential rows of a host-side shuffled copy, wrapping around with a fresh shuffle."""
        n = self.x.shape[0]
        if not self.started:
            perm = torch.randperm(n)
            self.x, self.y, self.started = self.x[perm], self.y[perm], True
        if self.pos + self.batch <= n:
            sl = slice(self.pos, self.pos + self.batch)
            self.pos += self.batch
            return self.x[sl], self.y[sl]
        head_x, head_y = self.x[self.pos:], self.y[self.pos:]
        perm = torch.randperm(n)
        self.x, self.y = self.x[perm], self.y[perm]
        self.pos = self.batch - head_x.shape[0]
        return torch.cat([head_x, self.x[:self.pos]]), torch.cat([head_y, self.y[:self.pos]])

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Batched argmax [N] (local class ids), copied back to the host."""
        out = torch.empty(x.shape[0], dtype=torch.long)
        with torch.no_grad():
            for start in range(0, x.shape[0], self.batch):
                out[start:start + self.batch] = self.model(x[start:start + self.batch].to(self.device)).argmax(1).cpu()
        return out

    @staticmethod
    def per_class_acc(pred: torch.Tensor, target: torch.Tensor, classes: list[int]) -> float:
        """Per-class mean accuracy (fraction) by a Python loop over classes, one host read per class;
        classes absent from ``target`` are skipped (as zsl.metrics.per_class_accuracy does)."""
        accs = []
        for c in classes:
            mask = target == c
            if bool(mask.any()):
                accs.append(float((pred[mask] == c).sum()) / float(mask.sum()))
        return sum(accs) / len(accs) if accs else 0.0

    def fit(self, tests: list[tuple[torch.Tensor, torch.Tensor, list[int]]]) -> list[list[float]]:
        """Train ``epochs`` epochs of ceil(N / batch) steps; after each, the accuracy (percent) on
        every test set (x [M, D], local labels [M], its local classes).  Returns [epochs][len(tests)]."""
        history = []
        targets = [y.cpu() for _, y, _ in tests]
        for _ in range(self.epochs):
            for _ in range(0, self.x.shape[0], self.batch):
                bx, by = self.next_batch()
                self.input.copy_(bx)
                self.label.copy_(by)
                self.opt.zero_grad()
                self.loss(self.model(self.input), self.label).backward()
                self.opt.step()
            history.append([100 * self.per_class_acc(self.predict(x), t, classes)
                            for (x, _, classes), t in zip(tests, targets)])
        return history


def local_ids(y: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """Global class ids y [N] -> positions in ``classes`` (every id must be present)."""
    lookup = torch.full((int(classes.max()) + 1,), -1, dtype=torch.long)
    lookup[classes.cpu()] = torch.arange(classes.numel())
    return lookup[y.cpu()]


def generate_per_class(model, classes: torch.Tensor, syn_num: int, progressive: bool, seed: int,
                       unseen: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x̂, ĉ, y) on the host, generated class by class with batch = syn_num through the trainer's
    G_c and G_x (each class a fresh ĉ draw, then one-step or the T-step chain), as the reference does;
    each class draws its noise from its own streams (zsl.synthesis, seeded by ``seed`` and the class)."""
    n = classes.numel() * syn_num
    xs = torch.empty(n, model.train_x.shape[1])
    cs = torch.empty(n, model.train_c.shape[1])
    for i, c in enumerate(classes.tolist()):
        x_hat, c_hat, _ = model.synthesize_features(classes[i:i + 1], syn_num, seed, progressive=progressive,
                                                    unseen=unseen)
        xs[i * syn_num:(i + 1) * syn_num].copy_(x_hat.cpu())
        cs[i * syn_num:(i + 1) * syn_num].copy_(c_hat.cpu())
    return xs, cs, classes.cpu().repeat_interleave(syn_num)


def host_views(model, x: torch.Tensor, c: torch.Tensor, chunk: int) -> dict[str, torch.Tensor]:
    """Every view of VIEWS on the host for rows x [N, R], c [N, C]: V = x, C = c, S = [Dec_x(x); h],
    with Dec_x run once in device chunks of ``chunk`` rows, and the concatenations built on the host."""
    dev = model.device
    with torch.no_grad():
        s = torch.cat([torch.cat(model.nets["Dec_x"](x[i:i + chunk].to(dev)), 1).cpu()
                       for i in range(0, x.shape[0], chunk)])
    parts = {"V": x.cpu(), "C": c.cpu(), "S": s}
    return {view: torch.cat([parts[letter] for letter in view], 1) if len(view) > 1 else parts[view]
            for view in VIEWS}


def reference_dfg_evaluation(model, *, syn_num: int, epochs: int = 25, lr: float = 1e-3, beta1: float = 0.5,
                             seed: int = 0) -> dict:
    """One DFG evaluation in the reference's structure on a :class:`zsl.models.d2sc.D2SC` trainer.

    Returns {"results": {(kind, view, mode): per-epoch history}, "seconds": {phase: s}} where kind is
    "GZSL" (history rows [S, U]), "ZSL" ([acc]) or "Seen" ([acc]); percent.
    """
    seconds: dict[str, float] = {}
    clock = time.perf_counter()
    for net in model.nets.values():
        net.eval()
    syn = {mode: generate_per_class(model, model.unseen, syn_num, mode == "progressive", seed + k, unseen=True)
           for k, mode in enumerate(MODES)}
    seen_syn = generate_per_class(model, model.seen, syn_num, False, seed + len(MODES), unseen=False)
    seconds["generation"] = time.perf_counter() - clock

    clock = time.perf_counter()
    chunk = syn_num
    real = [host_views(model, x, c, chunk) for x, c in ((model.train_x, model.train_c),
                                                        (model.eval_seen_x, model.eval_seen_c),
                                                        (model.eval_unseen_x, model.eval_unseen_c))]
    fake = {mode: host_views(model, syn[mode][0], syn[mode][1], chunk) for mode in MODES}
    seconds["views"] = time.perf_counter() - clock

    clock = time.perf_counter()
    seen, unseen = model.seen.cpu(), model.unseen.cpu()
    all_classes = torch.arange(model.emb.shape[0])
    seen_list, unseen_list = seen.tolist(), unseen.tolist()
    zsl_list = list(range(unseen.numel()))
    train_y, es_y, eu_y = model.train_y.cpu(), model.eval_seen_y.cpu(), model.eval_unseen_y.cpu()
    eu_local = local_ids(eu_y, unseen)
    fit = dict(lr=lr, beta1=beta1, batch=syn_num, epochs=epochs, device=str(model.device))
    results = {}
    for mode in MODES:
        syn_y = syn[mode][2]
        for view in VIEWS:
            train_v, es_v, eu_v = (views[view] for views in real)
            x = torch.cat([train_v, fake[mode][view]])
            y = torch.cat([train_y, syn_y])
            clf = ReferenceClassifier(x, local_ids(y, all_classes), all_classes.numel(), seed=seed, **fit)
            results["GZSL", view, mode] = clf.fit([(es_v, es_y, seen_list), (eu_v, eu_y, unseen_list)])
            clf = ReferenceClassifier(fake[mode][view], local_ids(syn_y, unseen), unseen.numel(), seed=seed, **fit)
            results["ZSL", view, mode] = clf.fit([(eu_v, eu_local, zsl_list)])
    seen_local = list(range(seen.numel()))
    for copy in ("first", "second"):  # the reference computes "Seen (V)" twice
        clf = ReferenceClassifier(seen_syn[0], local_ids(seen_syn[2], seen), seen.numel(), seed=seed, **fit)
        results["Seen", "V", copy] = clf.fit([(real[1]["V"], local_ids(es_y, seen), seen_local)])
    seconds["classifiers"] = time.perf_counter() - clock
    return {"results": results, "seconds": seconds}


def best_gzsl(history: list[list[float]]) -> tuple[float, float, float]:
    """(S, U, H) of the first epoch with the best H (the reference's selection on the test sets)."""
    return max(((s, u, harmonic_mean(s, u)) for s, u in history), key=lambda row: row[2])


def last_gzsl(history: list[list[float]]) -> tuple[float, float, float]:
    """(S, U, H) after the last epoch (the honest selection ours uses)."""
    s, u = history[-1]
    return s, u, harmonic_mean(s, u)
