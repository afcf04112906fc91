"""Benchmark: transient host memory of one D2SC evaluation at paper widths (DFG, SUN class counts).

One evaluation = synthesise ``syn_num`` rows for each validation unseen class of simulated SUN at
full scale (65 classes, 2,048-d features, 102-d attributes), then train the GZSL and ZSL softmax
classifiers on them.  Nets at the ``paper`` preset's widths (4,096), untrained: memory depends on
shapes, not on weights.  Data: **simulated** (``sim-SUN --scale full``), validation protocol.

Transient memory = peak resident set during the evaluation minus the resident set just before it
(the model, its optimisers and the data are already resident): zsl.memory.TransientPeak (Linux).

    python bench/evaluation_memory.py                                 # syn_num 8000: 520,000 rows
    python bench/evaluation_memory.py --syn-num 1000 --classifier-epochs 1
    python bench/evaluation_memory.py --chunk 1000000000              # one generator call (unchunked)
    python bench/evaluation_memory.py --store float16
    python bench/evaluation_memory.py --device cuda                  # seconds and device memory on a GPU

Synthesis at these widths costs ~92 MFLOP per row (G_c and G_x forward): syn_num 8000 is ~48 TFLOP,
several minutes on a 2-core CPU.  Classifier epochs do not change memory: ``--classifier-epochs 1``
measures the same peak faster.  Prints figures; never asserts.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from zsl.memory import TransientPeak  # noqa: E402
from zsl.run import RunSpec, load_run_data, resolve_config  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--syn-num", type=int, default=8000, help="synthetic rows per unseen class (published: 8000)")
    ap.add_argument("--chunk", type=int, default=None, help="synthesis_chunk rows (default: the model's)")
    ap.add_argument("--store", default=None, help="synthesis_store: float32 | float16 (default: the model's)")
    ap.add_argument("--classifier-epochs", type=int, default=25)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="cpu | cuda (on cuda the device memory peak is printed too)")
    args = ap.parse_args()

    import torch

    from zsl.models.d2sc import D2SC

    torch.set_num_threads(args.threads)
    over = {"syn_num": args.syn_num, "classifier_epochs": args.classifier_epochs, "drg_epochs": 1, "dfg_epochs": 1}
    if args.chunk is not None:
        over["synthesis_chunk"] = args.chunk
    if args.store is not None:
        over["synthesis_store"] = args.store
    config = resolve_config("d2sc", "paper", "sim-SUN", over)
    spec = RunSpec("d2sc", "sim-SUN", "paper", "validation", 0, 0, "full", None, config)
    data = load_run_data(spec)
    model = D2SC(config, data, args.device, 0)
    cuda = model.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        resident = torch.cuda.memory_allocated()
    model.epoch = 2  # past the DRG epoch: evaluate() scores the DFG
    rows = args.syn_num * len(data.unseen_classes)
    store_bytes = 2 if config["synthesis_store"] == "float16" else 4
    start = time.perf_counter()
    with TransientPeak() as peak:
        out = model.evaluate()
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    print(f"d2sc paper widths, sim-SUN full (simulated), validation: {len(data.unseen_classes)} unseen classes x "
          f"{args.syn_num} = {rows:,} synthetic rows x {data.train_x.shape[1]} dims; "
          f"chunk {config['synthesis_chunk']}, store {config['synthesis_store']}, "
          f"{args.classifier_epochs} classifier epochs, {args.threads} threads, device {model.device}")
    print(f"  transient peak {peak.gib:.2f} GiB (store of the rows alone: {rows * data.train_x.shape[1] * store_bytes / 2**30:.2f} GiB); "
          f"{seconds:.0f} s; S {out['S']:.1f} U {out['U']:.1f} H {out['H']:.1f} ZSL {out['ZSL']:.1f} (untrained nets)")
    if cuda:
        print(f"  device memory: transient peak {(torch.cuda.max_memory_allocated() - resident) / 2**30:.2f} GiB above the "
              f"{resident / 2**30:.2f} GiB resident before ({torch.cuda.get_device_name()})")


if __name__ == "__main__":
    main()
