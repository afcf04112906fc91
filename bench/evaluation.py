"""Benchmark: one GZSL evaluation at AWA2 reference scale, ours vs a reference-style classifier.

Scale (d2sc spec §1.1, §9, §10): 2048-d features, 40 seen / 10 unseen classes, 23,527 real seen
training rows + 10 x 8,000 synthetic unseen rows, 5,882 eval-seen and 7,913 eval-unseen rows,
25 classifier epochs.  Data: random class-structured features (class means plus noise; the
synthetic unseen rows come from slightly displaced means, like an imperfect generator), so the
accuracies are figures of this toy, not of any benchmark.

Compared, at equal settings (batch = syn_num = 8000, best epoch by H, lr 1e-3, beta1 0.5):
- ``reference-style``: :class:`evaluation_reference.ReferenceClassifier`, the reference's structure
  (spec §9, §11 item 18): nn.Linear + LogSoftmax + NLLLoss through autograd; the training matrix
  kept on the host, re-permuted there (a whole-matrix copy) at every wrap-around; sequential
  batches copied into a device buffer; after every epoch a batched prediction copied back to the
  host and per-class accuracy by a Python loop.  (bench/evaluation_procedure.py times the whole
  evaluation procedure around it: generation and all 22 classifiers.)
- ``ours``: :func:`zsl.evaluation.gzsl_evaluate` with the same settings, then with its defaults
  (batch 512, selection "last").

    python bench/evaluation.py                 # full AWA2 scale (~10 min on 1 thread of a busy 2-core CPU)
    python bench/evaluation.py --scale 0.25    # a quarter of the rows (~4 min there)
    python bench/evaluation.py --device cuda   # on a GPU
Prints times and accuracies of one seed; never asserts.  With ~50 Adam steps (batch = syn_num)
H varies by several points from seed to seed, for both implementations alike.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from evaluation_reference import ReferenceClassifier, best_gzsl  # noqa: E402

from zsl.evaluation import ClassifierConfig, gzsl_evaluate  # noqa: E402

NOISE, SHIFT = 1.5, 0.4  # per-feature noise of real rows; displacement of the synthetic unseen means
AWA2 = {"dim": 2048, "seen": 40, "unseen": 10, "train": 23527, "syn_per_class": 8000,
        "eval_seen": 5882, "eval_unseen": 7913, "epochs": 25}


@dataclass
class Problem:
    """Tensors of one GZSL evaluation (labels are global class ids)."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    syn_x: torch.Tensor
    syn_y: torch.Tensor
    eval_seen_x: torch.Tensor
    eval_seen_y: torch.Tensor
    eval_unseen_x: torch.Tensor
    eval_unseen_y: torch.Tensor
    seen: torch.Tensor
    unseen: torch.Tensor
    n_classes: int


def make_problem(scale: float, device: str, seed: int = 0) -> Problem:
    """Class-structured features: x = max(0, mean[y] + 0.35 * noise); sparse means in [0, 1].

    Synthetic unseen rows use means displaced by 0.1 * noise (an imperfect generator).  ``scale``
    multiplies every row count.
    """
    g = torch.Generator().manual_seed(seed)
    k, dim = AWA2["seen"] + AWA2["unseen"], AWA2["dim"]
    means = torch.rand(k, dim, generator=g) * (torch.rand(k, dim, generator=g) < 0.3)
    seen, unseen = torch.arange(AWA2["seen"]), torch.arange(AWA2["seen"], k)

    def draw(y: torch.Tensor, shift: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
        centre = means + shift * torch.randn(means.shape, generator=g)
        x = (centre[y] + NOISE * torch.randn(len(y), dim, generator=g)).clamp_(min=0.0)
        return x.to(device), y.to(device)

    def labels(classes: torch.Tensor, key: str) -> torch.Tensor:
        return classes[torch.randint(len(classes), (max(len(classes), int(AWA2[key] * scale)),), generator=g)]

    syn_y = unseen.repeat_interleave(max(1, int(AWA2["syn_per_class"] * scale)))
    return Problem(*draw(labels(seen, "train")), *draw(syn_y, shift=SHIFT),
                   *draw(labels(seen, "eval_seen")), *draw(labels(unseen, "eval_unseen")),
                   seen.to(device), unseen.to(device), k)


def timed(fn):
    """(result, seconds) of fn(), synchronising CUDA around it."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the AWA2 row counts (default 1.0)")
    parser.add_argument("--device", default="cpu", help="cpu | cuda (default cpu)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1; 0 leaves torch's default)")
    parser.add_argument("--seed", type=int, default=0, help="data seed; classifier seeds are 1000 + seed, ... (never the data's stream)")
    parser.add_argument("--seeds", type=int, default=1, help="classifier seeds per implementation (default 1)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    p = make_problem(args.scale, args.device, args.seed)
    syn_num = int(p.syn_y.numel() // p.unseen.numel())
    epochs = AWA2["epochs"]
    print(f"GZSL evaluation, AWA2 shapes x{args.scale}: {p.train_x.shape[0]} real seen + {p.syn_x.shape[0]} "
          f"synthetic unseen rows, {p.train_x.shape[1]}-d, {epochs} epochs, device {args.device}, "
          f"{torch.get_num_threads()} CPU threads; random class-structured data (not a benchmark)")

    def ours(batch: int, selection: str, seed: int):
        cfg = ClassifierConfig(epochs=epochs, batch_size=batch, selection=selection)
        gen = torch.Generator(device=args.device).manual_seed(seed)
        return gzsl_evaluate(train_x=p.train_x, train_y=p.train_y, syn_x=p.syn_x, syn_y=p.syn_y,
                             eval_seen_x=p.eval_seen_x, eval_seen_y=p.eval_seen_y, eval_unseen_x=p.eval_unseen_x,
                             eval_unseen_y=p.eval_unseen_y, seen_classes=p.seen, unseen_classes=p.unseen,
                             n_classes=p.n_classes, cfg=cfg, generator=gen)

    def reference(seed: int):
        clf = ReferenceClassifier(torch.cat([p.train_x, p.syn_x]), torch.cat([p.train_y, p.syn_y]), p.n_classes,
                                  lr=1e-3, beta1=0.5, batch=syn_num, epochs=epochs, device=args.device, seed=seed)
        tests = [(p.eval_seen_x, p.eval_seen_y, p.seen.tolist()), (p.eval_unseen_x, p.eval_unseen_y, p.unseen.tolist())]
        return dict(zip("SUH", best_gzsl(clf.fit(tests))))

    runs = [
        ("reference-style (batch=syn_num, best)", reference),
        ("ours (batch=syn_num, best)", lambda seed: ours(syn_num, "best", seed)),
        ("ours (defaults: batch=512, last)", lambda seed: ours(512, "last", seed)),
    ]
    times, hs = {}, {}
    for name, fn in runs:
        for seed in range(1000 + args.seed, 1000 + args.seed + args.seeds):
            res, sec = timed(lambda: fn(seed))
            times.setdefault(name, []).append(sec)
            hs.setdefault(name, []).append(res["H"])
            print(f"{name:40s} seed {seed}  {sec:8.2f} s   S={res['S']:6.2f} U={res['U']:6.2f} H={res['H']:6.2f}",
                  flush=True)
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    ref = mean(times[runs[0][0]])
    for name, _ in runs:
        print(f"{name:40s} mean {mean(times[name]):8.2f} s  mean H {mean(hs[name]):6.2f}  "
              f"speed-up {ref / mean(times[name]):.2f}x")


if __name__ == "__main__":
    main()
