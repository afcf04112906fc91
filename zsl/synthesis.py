"""Synthesis of many rows in bounded memory, with results that do not depend on the chunk size.

A generative model's evaluation synthesises ``per_class`` rows for each of many classes (the
published D2SC setting asks 8,000 per class: 520,000 rows on SUN's 65 validation classes).  One
generator call over all of them holds every hidden activation at once (gigabytes per layer at
4,096-wide nets); here the rows are produced in chunks and written into one preallocated result.

Random streams: the rows of a class are cut into blocks of at most :data:`BLOCK_ROWS` rows, and
each block draws its noise from its own ``torch.Generator`` seeded from (seed, class id, block
index) by :func:`block_seed`.  A chunk is a run of whole blocks, so the noise every row sees, and
hence the result, is the same whatever the chunk size (up to the float rounding of matrix products
whose row count changes; none was seen on CPU for chunks of at least 64 rows).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

BLOCK_ROWS = 1024


def block_seed(seed: int, class_id: int, block: int) -> int:
    """A 63-bit seed for block ``block`` of class ``class_id`` under run seed ``seed`` (numpy's
    SeedSequence mixing: stable across platforms and Python versions; seed, ids >= 0)."""
    state = np.random.SeedSequence([int(seed), int(class_id), int(block)]).generate_state(1, np.uint64)[0]
    return int(state) >> 1


@dataclass(frozen=True)
class Block:
    """``rows`` consecutive synthetic rows of class ``class_id``, with their own noise stream ``seed``."""

    class_id: int
    rows: int
    seed: int


def plan_blocks(classes: Sequence[int], per_class: int, seed: int) -> list[Block]:
    """The blocks of ``per_class`` rows for each class, in class order then block order."""
    blocks = []
    for class_id in classes:
        for b, start in enumerate(range(0, per_class, BLOCK_ROWS)):
            blocks.append(Block(int(class_id), min(BLOCK_ROWS, per_class - start), block_seed(seed, class_id, b)))
    return blocks


def chunk_blocks(blocks: list[Block], chunk_rows: int) -> Iterator[list[Block]]:
    """Consecutive runs of whole blocks of at most ``chunk_rows`` rows (at least one block each)."""
    run, rows = [], 0
    for block in blocks:
        if run and rows + block.rows > chunk_rows:
            yield run
            run, rows = [], 0
        run.append(block)
        rows += block.rows
    if run:
        yield run


def synthesize(
    classes: Sequence[int],
    per_class: int,
    seed: int,
    chunk_rows: int,
    draw: Callable[[torch.Generator, int], tuple[torch.Tensor, ...]],
    make: Callable[..., torch.Tensor],
    device: torch.device,
    dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows [n, d], y [n] int64 on ``device``), n = len(classes) * per_class, class-major order.

    ``draw(generator, rows)`` returns the noise tensors of one block (each [rows, ...], drawn in a
    fixed order from that block's generator); ``make(y, *noise)`` maps a chunk's labels [m] and its
    blocks' noise, concatenated row-wise, to its rows [m, d].  At most ``chunk_rows`` rows (or one
    block, if larger) pass through ``make`` at a time; the result is allocated once, in ``dtype``
    (default: that of ``make``'s rows).
    """
    blocks = plan_blocks(classes, per_class, seed)
    n = sum(b.rows for b in blocks)
    y = torch.as_tensor([int(c) for c in classes], dtype=torch.long).repeat_interleave(per_class).to(device)
    out, start = None, 0
    for run in chunk_blocks(blocks, chunk_rows):
        noise = [draw(torch.Generator(device=device).manual_seed(b.seed), b.rows) for b in run]
        fields = [torch.cat(parts) if len(parts) > 1 else parts[0] for parts in zip(*noise)]
        stop = start + sum(b.rows for b in run)
        rows = make(y[start:stop], *fields)
        if out is None:
            out = torch.empty(n, rows.shape[1], dtype=dtype or rows.dtype, device=device)
        out[start:stop] = rows
        start = stop
    if out is None:
        raise ValueError("synthesize needs at least one class and per_class >= 1.")
    return out, y
