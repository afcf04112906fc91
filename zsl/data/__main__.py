"""``python -m zsl.data check --dataset D [--data-root R]``: validate a dataset folder and summarise it.

Prints a table (images, classes, dims, split sizes per protocol, feature views, SIMULATED when so),
or, for bad input, one sentence naming the file and the fix on stderr with exit code 2.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from zsl.data.loading import DATASET_NAMES, read_named
from zsl.data.protocols import PROTOCOLS, SCALER_FITS, check_protocol, make_split
from zsl.data.simulated import SCALES
from zsl.data.xlsa17 import CLASS_EMBEDDINGS, EXPECTED_ATT_DIM, SPLIT_PERCENTS, VALIDATION_FIELDS, Xlsa17
from zsl.errors import EXIT_USER_ERROR, UserError


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m zsl.data", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="validate one dataset and print a summary")
    check.add_argument("--dataset", required=True,
                       help=f"a folder under --data-root in the xlsa17 layout (e.g. AWA1, APY, FLO, your own), or one of "
                            f"{', '.join(DATASET_NAMES)}")
    check.add_argument("--data-root", default=None, help="folder holding <DATASET>/ (optional for sim-*)")
    check.add_argument("--class-embedding", default=None, help=f"one of {', '.join(CLASS_EMBEDDINGS)} (default att)")
    check.add_argument("--split-percent", type=int, default=100, help=f"one of {', '.join(map(str, SPLIT_PERCENTS))}")
    check.add_argument("--att-dim", type=int, default=None, help="required class-embedding dimension")
    check.add_argument("--scale", default="small", help=f"simulated scale: {', '.join(SCALES)}")
    check.add_argument("--protocol", default=None, help=f"only this protocol: {', '.join(PROTOCOLS)} (default all)")
    check.add_argument("--seed", type=int, default=0)
    check.add_argument("--scaler-fit", default="train_rows", help=f"one of {', '.join(SCALER_FITS)}")
    check.add_argument("--cache-dir", default=None, help="cache for simulated data (default $ZSL_HPO_CACHE or ~/.cache/zsl-hpo)")
    return parser.parse_args(argv)


def summary(raw: Xlsa17, name: str, seed: int, scaler_fit: str, protocols=PROTOCOLS) -> str:
    """A plain-text table describing ``raw`` and its split under every protocol."""
    lines = [f"dataset {name}" + ("   *** SIMULATED (not real image features) ***" if raw.simulated else "   (real features)")]
    views = f"x {raw.x.shape[1]}-d ({raw.sources['x'].rsplit('/', 1)[-1]})"
    views += f", c {raw.c.shape[1]}-d (con_paco.mat)" if raw.c is not None else ", no second view"
    lines += [
        f"  images           {raw.n_images}",
        f"  classes          {len(raw.class_names)}",
        f"  class embedding  {raw.class_embedding}, {raw.class_emb.shape[1]}-d"
        + (f" (the known size for {name})" if name in EXPECTED_ATT_DIM and raw.class_embedding != "sent"
           else " (size not checked: a dataset checked by structure alone)" if not raw.simulated
           and raw.class_embedding != "sent" else ""),
        f"  feature views    {views}",
        "  xlsa17 sets      " + ", ".join(f"{k} {v.size}" for k, v in raw.locs.items()),
        f"  {'protocol':<11} {'seen':>5} {'unseen':>6} {'train':>7} {'eval_seen':>9} {'eval_unseen':>11}",
    ]
    for protocol in protocols:
        if protocol == "validation" and not set(VALIDATION_FIELDS) <= set(raw.locs) and len(protocols) > 1:
            lines.append(f"  {protocol:<11} not available: att_splits.mat has no train_loc/val_loc")
            continue
        s = make_split(raw.labels, raw.locs, protocol, seed, raw.percent_positions, scaler_fit)
        lines.append(
            f"  {protocol:<11} {s.seen_classes.size:>5} {s.unseen_classes.size:>6} {s.train.size:>7} "
            f"{s.eval_seen.size:>9} {s.eval_unseen.size:>11}"
        )
    if raw.percent_positions is not None:
        lines.append(f"  split_percent    training rows limited to {np.unique(raw.percent_positions).size} trainval images")
    if raw.simulated:
        lines.append("  SIMULATED: labels, splits and features are generated (zsl.data.simulated); class semantics are real.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.protocol is not None:
            check_protocol(args.protocol)
        raw = read_named(args.dataset, args.data_root, args.seed, args.scale, args.class_embedding,
                         args.split_percent, args.cache_dir, args.att_dim)
        protocols = PROTOCOLS if args.protocol is None else (args.protocol,)
        text = summary(raw, args.dataset, args.seed, args.scaler_fit, protocols)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
