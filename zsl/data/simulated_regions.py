"""Simulated region features for sim-AWA2 / sim-CUB / sim-SUN: the images of zsl.data.simulated on a g x g grid.

SIMULATED DATA: never benchmark results.  The region file ``regions_sim-g<g>.npy`` (+ sidecar, the contract of
zsl.data.regions) sits beside the simulated ``res101.mat`` in the same cache folder and holds the *same images*:
:func:`render_for` replays the simulated world's random stream (``default_rng([seed, crc32(D)])``: the split,
then :func:`zsl.data.simulated.draw_latents`) to recover each image's class and latent z_i, and draws everything
below from a SEPARATE stream ``default_rng([seed, crc32(D), REGION_STREAM])``, so res101.mat, con_paco.mat and
the split files stay byte-for-byte what they were.

Rendering (tokens of width DIM = 64 at every scale; u_k = the standardised class attributes of
zsl.data.simulated step 1):

1. Attribute groups: the A attributes cut into PARTS = 4 contiguous index ranges (for CUB roughly the body
   parts, elsewhere arbitrary); part q of image z of class k has content
   ``c_q(k, z) = ATT_GAIN * tanh(ATT_CURVE * B_q u_k[group q]) / tanh(ATT_CURVE) + LATENT_GAIN * E_q z``
   (B_q, E_q Gaussian / sqrt(fan-in)): a nonlinear function of its group's attributes plus the image latent
   (class residual and image noise, shared with the pooled view x).
2. The object: a random s x s block of cells (s = max(2, g // 2); a connected blob, 4 of 16 cells at g = 4);
   each of its cells shows one part (every part at least once, the order random per image), token
   ``relu(T_q + FG + c_q(k_i, z_i) + PART_NOISE * n)``: T_q a part-identity template, FG a foreground template.
3. Clutter, every other cell: ``b * relu(BG + DISTRACT * c_q'(k_j, z_j) + CLUTTER_NOISE * n)`` -- a part q' of a
   random other image j (its attributes are wrong for this image), no foreground template, brightness b
   log-normal (sigma BRIGHTNESS) per cell.
4. Token 0, the global token: ``relu(FG + mean_q c_q(k_i, z_i) + GLOBAL_NOISE * n)``, a noisy summary.

So the attribute evidence is localised and misleading evidence surrounds it: averaging all cells mixes in
random other classes' parts, attending to the foreground parts does not.  Measured (bench/sovr.py) with
ESZSL under the validation protocol: see the README's "Region features" section.
"""

from __future__ import annotations

import json
import os
import zlib
from pathlib import Path

import numpy as np

from zsl.data.matfile import get_field, load_mat
from zsl.data.regions import create_region_file, labels_sha256, make_sidecar, region_paths, write_sidecar
from zsl.data.simulated import SHIPPED, draw_latents, draw_split, ensure_simulated
from zsl.data.xlsa17 import LOC_FIELDS
from zsl.errors import UserError

REGION_GENERATOR_VERSION = 1
REGION_STREAM = 0x52454749  # "REGI": the regions' own random stream, apart from the pooled views' stream
DIM, PARTS = 64, 4
ATT_GAIN, ATT_CURVE, LATENT_GAIN = 1.0, 2.0, 1.0
PART_ID, FG_GAIN, BG_GAIN = 1.0, 1.0, 0.5
PART_NOISE, CLUTTER_NOISE, GLOBAL_NOISE = 0.3, 0.3, 1.0
DISTRACT, BRIGHTNESS = 1.0, 0.5
GRIDS = range(2, 15)


def sim_tag(grid: int) -> str:
    """The region tag of the simulated grid-``grid`` regions: ``sim-g<grid>``."""
    return f"sim-g{grid}"


def parse_sim_tag(tag: str) -> int | None:
    """The grid of a simulated tag ``sim-g<g>``, or None when ``tag`` is not one."""
    if tag.startswith("sim-g") and tag[5:].isdigit():
        return int(tag[5:])
    return None


def ensure_simulated_regions(dataset: str, scale: str = "small", seed: int = 0, grid: int = 4,
                             cache_dir=None) -> Path:
    """The folder of simulated ``dataset`` (generated if absent) holding ``regions_sim-g<grid>.npy`` + sidecar
    (rendered if absent or from another generator version).  Writes go to temporary names, then rename."""
    if grid not in GRIDS:
        raise UserError(f"simulated region grid {grid} is out of range: use a tag sim-g2 .. sim-g14 (e.g. sim-g4).")
    folder = ensure_simulated(dataset, scale=scale, seed=seed, cache_dir=cache_dir) / dataset
    npy, side = region_paths(folder, sim_tag(grid))
    if _is_current(side) and npy.is_file():
        return folder
    tmp = npy.with_name(f".{npy.name}.tmp-{os.getpid()}")
    try:
        labels, rendered = render_for(dataset, scale, seed, grid)
        out = create_region_file(tmp, labels.size, grid, DIM)
        out[:] = rendered.astype(np.float16)
        out.flush()
        del out
        os.replace(tmp, npy)
    finally:
        if tmp.exists():
            tmp.unlink()
    write_sidecar(side, make_sidecar(
        sim_tag(grid), backbone="simulated", layer="simulated parts and clutter", input_size=None, grid=grid,
        dim=DIM, n_images=labels.size, global_token="noisy global summary (simulated)",
        labels_sha=labels_sha256(labels + 1), simulated=True, generator_version=REGION_GENERATOR_VERSION,
        dataset=dataset, scale=scale, seed=seed,
        note="SIMULATED region features (zsl.data.simulated_regions); not a benchmark result."))
    return folder


def _is_current(side: Path) -> bool:
    try:
        return json.loads(side.read_text()).get("generator_version") == REGION_GENERATOR_VERSION
    except (OSError, ValueError):
        return False


def render_for(dataset: str, scale: str, seed: int, grid: int, return_object: bool = False):
    """(labels [N] 0-based, tokens [N, 1 + grid², DIM] float32) of the simulated ``dataset``'s very images
    (with ``return_object``: (labels, (tokens, object cells [N, s²])))."""
    world = np.random.default_rng([seed, zlib.crc32(dataset.encode())])       # replay of zsl.data.simulated
    sem_path = SHIPPED / dataset / "att_splits.mat"
    sem = load_mat(sem_path)
    original_att = get_field(sem, "original_att", sem_path).T.astype(np.float64)
    split = draw_split(world, dataset, scale, {f: get_field(sem, f, sem_path).size for f in LOC_FIELDS})
    z = draw_latents(world, original_att, split.labels)
    rng = np.random.default_rng([seed, zlib.crc32(dataset.encode()), REGION_STREAM])
    return split.labels, render_regions(rng, original_att, split.labels, z, grid, return_object=return_object)


def render_regions(rng: np.random.Generator, original_att: np.ndarray, labels: np.ndarray, z: np.ndarray,
                   grid: int, dim: int = DIM, return_object: bool = False):
    """Tokens [N, 1 + grid², dim] float32 (token 0 global, then the grid row-major) by the module docstring's steps.

    original_att [K, A] raw class attributes; labels [N] 0-based; z [N, L] image latents.  With
    ``return_object``: (tokens, object cells [N, s²] 0-based region indices) -- the ground truth, for tests.
    """
    n, latent = z.shape
    att = original_att / np.maximum(np.linalg.norm(original_att, axis=1, keepdims=True), 1e-12)
    u = (att - att.mean(axis=0)) / att.std()                                            # [K, A]
    groups = np.array_split(np.arange(u.shape[1]), PARTS)
    f32 = np.float32
    part_att = np.stack([np.tanh(ATT_CURVE * u[:, g] @ (rng.standard_normal((g.size, dim)) / np.sqrt(g.size)))
                         for g in groups], 1) / np.tanh(ATT_CURVE)                                # [K, P, D]
    part_lat = rng.standard_normal((PARTS, latent, dim)) / np.sqrt(latent)                # [P, L, D]
    content = (ATT_GAIN * part_att[labels] + LATENT_GAIN * np.einsum("nl,pld->npd", z, part_lat)).astype(f32)  # [N, P, D]
    part_id = (PART_ID * rng.standard_normal((PARTS, dim))).astype(f32)
    fg = (FG_GAIN * rng.standard_normal(dim)).astype(f32)
    bg = (BG_GAIN * rng.standard_normal(dim)).astype(f32)
    cells = grid * grid
    side = max(2, grid // 2)
    tokens = np.empty((n, 1 + cells, dim), dtype=f32)
    # clutter everywhere first: parts of random other images, no foreground template, random brightness
    other = rng.integers(0, n, size=(n, cells))
    other_part = rng.integers(0, PARTS, size=(n, cells))
    bright = np.exp(BRIGHTNESS * rng.standard_normal((n, cells, 1))).astype(f32)
    noise = rng.standard_normal((n, cells, dim), dtype=f32)
    tokens[:, 1:] = bright * np.maximum(bg + DISTRACT * content[other, other_part] + CLUTTER_NOISE * noise, 0.0)
    # the object: an s x s block at a random place, each cell one part (all parts present, order random)
    top = rng.integers(0, grid - side + 1, size=n)
    left = rng.integers(0, grid - side + 1, size=n)
    dr, dc = np.divmod(np.arange(side * side), side)
    obj_cells = (top[:, None] + dr) * grid + (left[:, None] + dc)                         # [N, s²]
    base = np.resize(np.arange(PARTS), side * side)
    which = np.argsort(rng.random((n, side * side)), axis=1)
    obj_part = base[which]                                                              # [N, s²] a permutation per image
    noise = rng.standard_normal((n, side * side, dim), dtype=f32)
    rows = np.arange(n)[:, None]
    obj = part_id[obj_part] + fg + content[rows, obj_part] + PART_NOISE * noise
    tokens[rows, 1 + obj_cells] = np.maximum(obj, 0.0)
    noise = rng.standard_normal((n, dim), dtype=f32)
    tokens[:, 0] = np.maximum(fg + content.mean(axis=1) + GLOBAL_NOISE * noise, 0.0)
    return (tokens, obj_cells) if return_object else tokens
