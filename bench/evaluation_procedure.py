"""Benchmark: one whole D2SC DFG evaluation, the reference's procedure vs ours, on AWA2 dimensions.

SIMULATED DATA.  Data: sim-AWA2 at scale "full" (2048-d x and c views, AWA2's real class
semantics and split sizes), protocol "final" (evaluation sets = simulated test_seen /
test_unseen), then a stratified ``--scale`` fraction of every class's rows.  Generator: the D2SC
trainer built with the "paper" preset for AWA2 (G_c, G_x of width 4096, Z 312, A 85, Dec_x of
width 4096; the critics, which evaluation never runs, at width 256), untrained (fresh init) by
default, or "trained-ish": ``--train-iters`` DRG and DFG iterations (batch 64) through
``train_epoch()`` on the full simulated training set (about 6 min on one thread, cached on disk).  Both
procedures score that same generator on the same data.

- reference (bench/evaluation_reference.py, written from spec d2sc §9): generation of unseen
  one-step, unseen progressive and seen one-step sets (syn_num per class, class by class, host
  copies); views V, C, S for real and synthetic rows; GZSL + ZSL classifiers for V, VS, C, VC, VCS
  x {one-step, progressive} (20) and "Seen (V)" twice, each 25 epochs at batch = syn_num, tested
  after every epoch (host copies, Python per-class loop), best epoch kept.
- ours: ``D2SC.evaluate()`` itself: one vectorised unseen one-step synthesis, view V, one GZSL and
  one ZSL classifier (25 epochs, batch 512 at full scale, selection "last": no test-set selection).

Rows scale with ``--scale`` (syn_num = 8000 x scale), and so do both classifier batches (the
reference's = syn_num, ours = 512 x scale), so that each classifier keeps its full-scale number of
Adam steps per epoch (~13 and ~200 for GZSL); network sizes do not scale.  Comparable accuracies: ours
vs the reference's V one-step classifier at its LAST epoch (same generator, view, sampling and
epochs; differing classifier batch and RNG draws).  The reference's reported numbers (best epoch,
best of the two V sampling modes) select on the test sets (spec §11 item 1): they are higher by
construction and are printed for completeness, not as a like-for-like figure.

    python bench/evaluation_procedure.py --scale 0.02 --train-iters 40  # first run also trains (~6 min)
    python bench/evaluation_procedure.py --scale 0.04 --train-iters 40  # ~5-10 min on 1 busy thread
    python bench/evaluation_procedure.py --scale 1 --device cuda        # on a GPU (not run here)

Measured (2-core VM shared with other jobs, 1 thread; generator trained 40+40 iterations; seed 0;
CPU = this process's CPU seconds, robust to the load only up to cache sharing; wall grows with load):

  scale  ours CPU / wall   reference CPU / wall   ratio CPU / wall   load (1-min) during ref
  0.02     12.9 /  19.3       105.4 / 152.7          8.2x /  7.9x    2.2 -> 2.9
  0.04     17.1 /  22.8       217.4 / 555.6         12.7x / 24.3x    3.0 -> 14.4
  0.02 *   15.5 /  81.5       112.8 / 429.2          7.3x /  5.3x    11.6 -> 11.6
  0.02 b    5.3 /   5.3       103.0 / 137.7         19.6x / 25.8x    4.4 -> 4.3
  0.1      29.3 /  29.3       413.9 / 414.3         14.1x / 14.1x    0.8 -> 1.0 (quiet; lean Adam)
  Rows 1-2 used torch.optim.Adam in our classifier; * = rerun with the lean Adam now in
  zsl.evaluation (identical printed accuracies; per step 1.55 -> 1.29 ms at batch 10 in a
  back-to-back micro-benchmark) under load 10-15, where even CPU seconds inflate (the reference's
  too).  b = our classifier batch left at 512 instead of 512 x scale: ~5 steps per epoch instead of
  ~200, cheap but under-trained (ZSL 12.3, U 6.2), so not "at equal accuracy".

  accuracy (percent, simulated)       scale 0.02: S / U / H / ZSL     scale 0.04: S / U / H / ZSL
  ours, V one-step, last epoch          100.0 / 26.5 / 41.9 / 30.5      100.0 / 14.5 / 25.3 / 30.0
  reference V one-step, last epoch      100.0 /  3.0 /  5.8 / 29.6      100.0 /  6.5 / 12.2 / 29.0
  reference reports (best epoch+mode)    97.5 / 11.8 / 21.0 / 35.2       49.3 / 14.9 / 22.8 / 38.6

  scale 0.1 (quiet run above):           ours 100.0 / 12.1 / 21.5 / 34.0;  reference V one-step, last
  epoch 100.0 / 7.6 / 14.1 / 44.4;  reference reports (test-selected) 100.0 / 9.4 / 17.2 / 53.2.

Reading: at scales 0.02-0.04 ZSL agrees within a point on the comparable row, at 0.1 the reference's
last-epoch ZSL is 10 points higher (its batch = syn_num classifier vs ours at 512 x scale); GZSL U/H differ by more, in our favour
(the reference takes only ~13 steps per epoch at batch = syn_num; 137-320 evaluation rows per split
make every figure noisy).  The reference's reported figures are test-selected (not comparable).
At these small scales our time has a fixed part (~9,000 classifier steps whatever the scale) that
the reference's 7,150 larger steps amortise better.  From the 0.04 and 0.1 CPU points the marginal
costs are ~200 s (ours) and ~3,300 s (reference) per unit of scale, i.e. ~16x toward full scale
(extrapolated, not measured; the 0.02-0.04 points alone had suggested ~25x).
A FLOP count at full scale (this module's procedure: generation 46 T, classifiers incl. Dec ~37 T;
ours: synthesis 6.1 T, two classifiers 1.2 T) gives ~11x if the reference ran at our FLOP efficiency,
which it does not (autograd, host copies and reshuffles, per-class loops).  Ours is mostly one forward
pass of G_c and G_x over 80k rows (~70-85%), which no change of method can avoid.
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
from zsl.data.simulated import cache_root  # noqa: E402
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


EVAL_NETS = ("G_c", "G_x", "Dec_x")  # the networks a DFG evaluation runs


def d2sc_config(data: ZSLData, syn_num: int, train_iters: int, scale: float = 1.0) -> dict:
    """The "paper" AWA2 preset, critics at width 256 (evaluation never runs them), one DRG + one DFG
    epoch, and our classifier batch (512) times ``scale`` so that it keeps its full-scale steps per epoch."""
    return make_config("d2sc", "paper", data.name, {
        "ndh": 256, "syn_num": syn_num, "drg_epochs": 1, "dfg_epochs": 1, "iters_per_epoch": max(train_iters, 1),
        "classifier_batch": max(1, round(D2SC.Config.classifier_batch * min(scale, 1.0)))})


def trained_nets(full: ZSLData, train_iters: int, device: str, seed: int) -> dict:
    """State of EVAL_NETS after ``train_iters`` DRG and DFG iterations on the full data, cached on disk
    under <zsl-hpo cache>/bench/ (about 190 MB), so that later runs skip the training."""
    path = cache_root() / "bench" / f"d2sc-sim-awa2-{train_iters}x2-seed{seed}.pt"
    if path.exists():
        return torch.load(path, map_location=device, weights_only=True)
    model = D2SC(d2sc_config(full, 1, train_iters), full, device, seed)
    for _ in range(model.epochs_total):
        model.train_epoch()
    state = {name: model.nets[name].state_dict() for name in EVAL_NETS}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path.with_suffix(".tmp"))
    path.with_suffix(".tmp").replace(path)
    return state


def build_generator(full: ZSLData, data: ZSLData, syn_num: int, scale: float, train_iters: int, device: str,
                    seed: int) -> D2SC:
    """A D2SC trainer on ``data`` past its DFG stage: untrained (train_iters 0) or with the nets of
    :func:`trained_nets` (trained on ``full``)."""
    model = D2SC(d2sc_config(data, syn_num, train_iters, scale), data, device, seed)
    if train_iters > 0:
        for name, state in trained_nets(full, train_iters, device, seed).items():
            model.nets[name].load_state_dict(state)
    model.epoch = model.epochs_total  # evaluate as the DFG stage would after its last epoch
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
    print(f"ours: V one-step, last epoch                         {ours['S']:6.2f} {ours['U']:6.2f} {ours['H']:6.2f} {ours['ZSL']:6.2f}")
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
    parser.add_argument("--scale", type=float, default=0.02, help="fraction of AWA2's rows and syn_num (default 0.02)")
    parser.add_argument("--device", default="cpu", help="cpu | cuda (default cpu)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--train-iters", type=int, default=0, help="DRG and DFG iterations before evaluating (default 0: untrained)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data subset, the generator and the classifiers")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    syn_num = max(1, round(AWA2_SYN_NUM * args.scale))
    full = load_dataset("sim-AWA2", protocol="final", scale="full", seed=0)
    data = scaled(full, args.scale, args.seed)
    model = build_generator(full, data, syn_num, args.scale, args.train_iters, args.device, args.seed)
    print(f"SIMULATED sim-AWA2 full x{args.scale}: {data.train_x.shape[0]} train, {data.eval_seen_x.shape[0]} "
          f"eval-seen, {data.eval_unseen_x.shape[0]} eval-unseen rows; syn_num {syn_num}; classifier batch "
          f"reference {syn_num}, ours {model.cfg.classifier_batch}; generator "
          f"{'trained %d+%d iterations' % (args.train_iters, args.train_iters) if args.train_iters else 'untrained'}; "
          f"device {args.device}, {torch.get_num_threads()} thread(s)", flush=True)
    ours, ours_time = timed(model.evaluate, args.device)
    print(f"ours done: {ours_time}", flush=True)
    ref, ref_time = timed(lambda: reference_dfg_evaluation(model, syn_num=syn_num, seed=args.seed), args.device)
    report(ours, ours_time, ref, ref_time)


if __name__ == "__main__":
    main()
