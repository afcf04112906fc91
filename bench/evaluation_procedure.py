"""Benchmark: one whole D2SC DFG evaluation, the reference's procedure vs ours, on AWA2 dimensions.

SIMULATED DATA.  Data: sim-AWA2 at scale "full" (2048-d x and c views, AWA2's real class
semantics and split sizes), protocol "final" (evaluation sets = simulated test_seen /
test_unseen), then a stratified ``--scale`` fraction of every class's rows.  Generator: the D2SC
trainer built with the "paper" preset for AWA2 (G_c, G_x of width 4096, Z 312, A 85, Dec_x of
width 4096; the critics, which evaluation never runs, at width 256), untrained (fresh init) by
default, or trained for ``--train-iters`` DRG and DFG iterations through ``train_epoch()``.  Both
procedures score that same generator on the same data.

- reference (bench/evaluation_reference.py, written from spec d2sc §9): generation of unseen
  one-step, unseen progressive and seen one-step sets (syn_num per class, class by class, host
  copies); views V, C, S for real and synthetic rows; GZSL + ZSL classifiers for V, VS, C, VC, VCS
  x {one-step, progressive} (20) and "Seen (V)" twice, each 25 epochs at batch = syn_num, tested
  after every epoch (host copies, Python per-class loop), best epoch kept.
- ours: ``D2SC.evaluate()`` itself: one vectorised unseen one-step synthesis, view V, one GZSL and
  one ZSL classifier (25 epochs, batch 512, selection "last": no test-set selection).

Rows scale with ``--scale`` (syn_num = 8000 x scale, and the reference's classifier batch with
it, so its ~13 steps per epoch are kept); network sizes do not.  Comparable accuracies: ours
vs the reference's V one-step classifier at its LAST epoch (same generator, view, sampling and
epochs; differing classifier batch and RNG draws).  The reference's reported numbers (best epoch,
best of the two V sampling modes) select on the test sets (spec §11 item 1): they are higher by
construction and are printed for completeness, not as a like-for-like figure.

    python bench/evaluation_procedure.py --scale 0.05      # ~6 min on 1 thread of a loaded 2-core CPU
    python bench/evaluation_procedure.py --scale 1 --device cuda

Figures measured on this 2-core machine, 1 thread, shared with other jobs (see the load averages):
(filled in below from real runs)
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from evaluation_reference import MODES, VIEWS, best_gzsl, last_gzsl, reference_dfg_evaluation  # noqa: E402

from zsl.data import load_dataset  # noqa: E402
from zsl.data.types import ZSLData  # noqa: E402
from zsl.models import make_config  # noqa: E402
from zsl.models.d2sc import D2SC  # noqa: E402

AWA2_SYN_NUM = 8000  # DFG syn_num of the D2SC AWA2 script (spec §10)


def loadavg() -> str:
    """The 1-minute load average of this machine (Linux), as text."""
    try:
        return Path("/proc/loadavg").read_text().split()[0]
    except OSError:
        return "n/a"


def stratified(y: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Sorted row indices: ceil(fraction * n_c) random rows of every class c of labels y [N]."""
    keep = []
    for c in np.unique(y):
        rows = np.flatnonzero(y == c)
        keep.append(rng.permutation(rows)[:max(1, int(np.ceil(fraction * rows.size)))])
    return np.sort(np.concatenate(keep))


def scaled(data: ZSLData, fraction: float, seed: int) -> ZSLData:
    """``data`` with a stratified ``fraction`` of the training and both evaluation sets' rows."""
    if fraction >= 1:
        return data
    rng = np.random.default_rng(seed)
    tr, es, eu = (stratified(y, fraction, rng) for y in (data.train_y, data.eval_seen_y, data.eval_unseen_y))
    return dataclasses.replace(
        data, train_x=data.train_x[tr], train_y=data.train_y[tr], train_c=data.train_c[tr],
        eval_seen_x=data.eval_seen_x[es], eval_seen_y=data.eval_seen_y[es], eval_seen_c=data.eval_seen_c[es],
        eval_unseen_x=data.eval_unseen_x[eu], eval_unseen_y=data.eval_unseen_y[eu],
        eval_unseen_c=data.eval_unseen_c[eu])


def build_generator(data: ZSLData, syn_num: int, train_iters: int, device: str, seed: int) -> D2SC:
    """A D2SC trainer past its DFG stage: trained ``train_iters`` DRG + DFG iterations, or untrained (0)."""
    config = make_config("d2sc", "paper", data.name, {
        "ndh": 256, "syn_num": syn_num, "drg_epochs": 1, "dfg_epochs": 1, "iters_per_epoch": max(train_iters, 1)})
    model = D2SC(config, data, device, seed)
    if train_iters > 0:
        for _ in range(model.epochs_total):
            model.train_epoch()
    else:
        model.epoch = model.epochs_total  # untrained: evaluate as the DFG stage would after its last epoch
    return model


@dataclasses.dataclass
class Timing:
    """Wall seconds, this process's CPU seconds, and the 1-minute load average before and after."""

    wall: float
    cpu: float
    load: tuple[str, str]

    def __str__(self) -> str:
        return f"{self.wall:8.1f} s wall, {self.cpu:8.1f} s CPU  (load {self.load[0]} -> {self.load[1]})"


def timed(fn, device: str):
    """(fn(), :class:`Timing`).  On one CPU thread, CPU seconds are the work done, whatever else the
    machine runs; wall seconds grow with the load."""
    before = loadavg()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start, cpu = time.perf_counter(), time.process_time()
    out = fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return out, Timing(time.perf_counter() - start, time.process_time() - cpu, (before, loadavg()))


def report(ours: dict, ours_time: Timing, ref: dict, ref_time: Timing) -> None:
    """Print seconds, ratios and the accuracies each procedure reports."""
    res, phases = ref["results"], ref["seconds"]
    print(f"\nreference procedure   {ref_time}")
    print(f"  wall s: generation {phases['generation']:.1f}, views {phases['views']:.1f}, "
          f"{len(res)} classifiers {phases['classifiers']:.1f}")
    print(f"ours (D2SC.evaluate)  {ours_time}")
    print(f"ratio reference / ours: {ref_time.wall / ours_time.wall:.1f}x wall, {ref_time.cpu / ours_time.cpu:.1f}x CPU\n")
    s, u, h = last_gzsl(res["GZSL", "V", "one_step"])
    zsl_last = res["ZSL", "V", "one_step"][-1][0]
    print("accuracy, percent (simulated data)                        S      U      H    ZSL")
    print(f"ours: V one-step, last epoch, batch 512              {ours['S']:6.2f} {ours['U']:6.2f} {ours['H']:6.2f} {ours['ZSL']:6.2f}")
    print(f"reference: V one-step, last epoch  [comparable]      {s:6.2f} {u:6.2f} {h:6.2f} {zsl_last:6.2f}")
    s, u, h = best_gzsl(res["GZSL", "V", "one_step"])
    zsl_best = max(row[0] for row in res["ZSL", "V", "one_step"])
    print(f"reference: V one-step, best epoch  [test-selected]   {s:6.2f} {u:6.2f} {h:6.2f} {zsl_best:6.2f}")
    s, u, h = max((best_gzsl(res["GZSL", "V", m]) for m in MODES), key=lambda row: row[2])
    zsl_best = max(row[0] for m in MODES for row in res["ZSL", "V", m])
    print(f"reference reports: V, best epoch and mode [test-sel.] {s:6.2f} {u:6.2f} {h:6.2f} {zsl_best:6.2f}")
    print("reference, other views (best epoch; H / ZSL): " + ", ".join(
        f"{v} {m.replace('_', '-')} {best_gzsl(res['GZSL', v, m])[2]:.1f}/{max(r[0] for r in res['ZSL', v, m]):.1f}"
        for v in VIEWS[1:] for m in MODES))
    print("reference Seen (V), best epoch: " + ", ".join(
        f"{max(r[0] for r in res['Seen', 'V', c]):.1f}" for c in ("first", "second")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=0.05, help="fraction of AWA2's rows and syn_num (default 0.05)")
    parser.add_argument("--device", default="cpu", help="cpu | cuda (default cpu)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--train-iters", type=int, default=0, help="DRG and DFG iterations before evaluating (default 0: untrained)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data subset, the generator and the classifiers")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    syn_num = max(1, round(AWA2_SYN_NUM * args.scale))
    data = scaled(load_dataset("sim-AWA2", protocol="final", scale="full", seed=0), args.scale, args.seed)
    model = build_generator(data, syn_num, args.train_iters, args.device, args.seed)
    print(f"SIMULATED sim-AWA2 full x{args.scale}: {data.train_x.shape[0]} train, {data.eval_seen_x.shape[0]} "
          f"eval-seen, {data.eval_unseen_x.shape[0]} eval-unseen rows; syn_num {syn_num}; generator "
          f"{'trained %d+%d iterations' % (args.train_iters, args.train_iters) if args.train_iters else 'untrained'}; "
          f"device {args.device}, {torch.get_num_threads()} thread(s)", flush=True)
    ours, ours_time = timed(model.evaluate, args.device)
    print(f"ours done: {ours_time}", flush=True)
    ref, ref_time = timed(lambda: reference_dfg_evaluation(model, syn_num=syn_num, seed=args.seed), args.device)
    report(ours, ours_time, ref, ref_time)


if __name__ == "__main__":
    main()
