"""Extract region features ``regions_<tag>.npy`` + sidecar (zsl.data.regions) from a dataset's images.

Images are read in res101.mat's ``image_files`` order (so row i is image i of res101.mat) from your local copy
of the dataset, and passed through a frozen backbone whose weights you already have on disk:

  resnet101  torchvision ResNet-101, 448 x 448 input, the last conv block's 14 x 14 x 2048 map; token 0 = its
             global average (spec dkgzsl.md §9.3), tokens 1..196 = the cells, row-major.  ImageNet mean/std.
  vit_b16    timm ViT-B/16 (vit_base_patch16_224), 224 x 224 input, the last hidden state after the final norm
             (forward_features): CLS + 196 patch tokens of 768.  mean = std = 0.5 (the original ViT weights).

    python tools/extract_regions.py --dataset-folder ~/xlsa17/data/CUB --images ~/CUB_200_2011/images \\
        --backbone resnet101 --weights ~/weights/resnet101-63fe2227.pth --tag res101_448 --device cuda
    python tools/extract_regions.py --dataset-folder ~/xlsa17/data/AWA2 --images ~/Animals_with_Attributes2/JPEGImages \\
        --backbone vit_b16 --weights ~/weights/vit_base_patch16_224.pth --tag vit_b16 --device cuda

Nothing is downloaded: ``--weights`` is a state dict file (torchvision's resnet101 one, or timm's
vit_base_patch16_224 one); a missing package or file is refused in one sentence.  The stored absolute paths in
image_files are mapped onto ``--images`` by the shortest trailing part that exists there (e.g. ``<class>/<file>``).
Images are resized (shorter side) and centre-cropped to the input size.

Batched and resumable: tokens go into ``regions_<tag>.npy.partial`` (a float16 memory map) and every finished
batch is recorded in ``regions_<tag>.progress.json``; a rerun with the same arguments continues after the last
recorded batch (``--restart`` starts over).  At the end the file is checked for NaN/inf, renamed to
``regions_<tag>.npy`` and the sidecar is written.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from zsl.data.matfile import get_field, load_mat  # noqa: E402
from zsl.data.regions import labels_sha256, make_sidecar, region_paths, write_sidecar  # noqa: E402
from zsl.errors import EXIT_USER_ERROR, UserError  # noqa: E402

BACKBONES = {
    "resnet101": {"input_size": 448, "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225),
                  "layer": "layer4 (last conv block) output", "global_token": "global average of the map",
                  "name": "torchvision resnet101"},
    "vit_b16": {"input_size": 224, "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5),
                "layer": "last hidden state after the final norm (forward_features)", "global_token": "cls",
                "name": "timm vit_base_patch16_224"},
}


# ------------------------------------------------------------------------------------------- image order
def image_files(res_path: Path) -> list[str]:
    """res101.mat's ``image_files`` [N] as strings, in file order (the row order of every feature file)."""
    raw = get_field(load_mat(res_path), "image_files", res_path).reshape(-1)
    return [str(np.asarray(item).reshape(-1)[0]) for item in raw]


def resolve_image_paths(stored: list[str], images_root: Path) -> list[Path]:
    """Local paths of the stored image paths: the shortest trailing part (1, 2, ... path components) of the
    first path that exists under ``images_root``, applied to all; UserError when none or some are missing."""
    images_root = Path(images_root)
    parts = stored[0].replace("\\", "/").split("/")
    for k in range(1, len(parts) + 1):
        if (images_root / Path(*parts[-k:])).is_file():
            break
    else:
        raise UserError(f"image {stored[0]} of res101.mat is not under {images_root} (tried every trailing part of "
                        f"its path): pass --images the folder that holds the dataset's images.")
    paths = [images_root / Path(*p.replace("\\", "/").split("/")[-k:]) for p in stored]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise UserError(f"{len(missing)} of {len(paths)} images are missing under {images_root} (first: {missing[0]}): "
                        f"complete the image folder (res101.mat lists every image it needs).")
    return paths


def preprocess(image, size: int, mean, std) -> np.ndarray:
    """A PIL image -> [3, size, size] float32: RGB, shorter side resized to ``size`` (bilinear), centre crop,
    scaled to [0, 1], normalised by mean/std."""
    from PIL import Image

    image = image.convert("RGB")
    w, h = image.size
    scale = size / min(w, h)
    image = image.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BILINEAR)
    w, h = image.size
    left, top = (w - size) // 2, (h - size) // 2
    arr = np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.float32) / 255.0
    return ((arr - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)).transpose(2, 0, 1)


# ------------------------------------------------------------------------------------------- backbones
def map_tokens(fmap):
    """Tokens [B, 1 + g², C] from a feature map [B, C, g, g]: token 0 = the global average, then the cells row-major."""
    import torch

    flat = fmap.flatten(2).transpose(1, 2)
    return torch.cat([flat.mean(dim=1, keepdim=True), flat], dim=1)


def load_backbone(kind: str, weights: Path):
    """(module images [B, 3, S, S] -> tokens [B, 1 + R, D], spec dict) for ``kind`` with the state dict ``weights``."""
    import torch
    from torch import nn

    if kind not in BACKBONES:
        raise UserError(f"unknown backbone '{kind}': choose one of {', '.join(BACKBONES)}.")
    weights = Path(weights).expanduser()
    if not weights.is_file():
        raise UserError(f"weights file {weights} does not exist: pass --weights the {BACKBONES[kind]['name']} state "
                        f"dict you have (nothing is downloaded).")
    package = "torchvision" if kind == "resnet101" else "timm"
    try:
        module = __import__(package)
    except ImportError:
        raise UserError(f"backbone '{kind}' needs {package}, which is not installed: pip install {package} "
                        f"(it is an optional extra of zsl-hpo).") from None
    state = torch.load(weights, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    if kind == "resnet101":
        net = module.models.resnet101(weights=None)
        _load_state(net, state, weights)
        body = nn.Sequential(*list(net.children())[:-2])

        class ResNetTokens(nn.Module):
            def __init__(self):
                super().__init__()
                self.body = body

            def forward(self, images):
                return map_tokens(self.body(images))

        return ResNetTokens().eval(), BACKBONES[kind]
    net = module.create_model("vit_base_patch16_224", pretrained=False, num_classes=0)
    _load_state(net, state, weights)

    class ViTTokens(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, images):
            return self.net.forward_features(images)

    return ViTTokens().eval(), BACKBONES[kind]


def _load_state(net, state, path: Path) -> None:
    try:
        missing, _ = net.load_state_dict(state, strict=False)
    except RuntimeError as err:
        raise UserError(f"{path} does not fit the backbone ({str(err).splitlines()[0]}): pass the matching state dict.") from None
    wanted = [k for k in missing if not k.startswith(("fc.", "head."))]
    if wanted:
        raise UserError(f"{path} lacks {len(wanted)} of the backbone's weights (first: {wanted[0]}): pass the "
                        f"matching state dict.")


# ------------------------------------------------------------------------------------------- the extraction
def extract_regions(folder: Path, tag: str, paths: list[Path], labels_1based: np.ndarray, backbone, *,
                    input_size: int, mean, std, meta: dict, batch: int = 32, device="cpu", restart: bool = False,
                    load_image=None, log=print) -> Path:
    """Write ``<folder>/regions_<tag>.npy`` + sidecar: tokens of ``paths`` (res101.mat's order) by ``backbone``
    (a torch module images [B, 3, S, S] -> tokens [B, 1 + g², D]), resuming a recorded partial run.

    meta: the sidecar's provenance (backbone, layer, global_token, weights ...).  load_image: path -> PIL image
    (default PIL.Image.open).  Returns the region file's path.
    """
    import torch

    npy, side = region_paths(folder, tag)
    partial = npy.with_name(npy.name + ".partial")
    progress_path = npy.with_name(f"regions_{tag}.progress.json")
    n = len(paths)
    lab_sha = labels_sha256(labels_1based)
    if len(labels_1based) != n:
        raise ValueError("one label per image")
    record = {"tag": tag, "n_images": n, "labels_sha256": lab_sha, "input_size": input_size,
              "backbone": meta.get("backbone"), "weights": meta.get("weights")}
    state = _resume(partial, progress_path, record, restart)
    if load_image is None:
        from PIL import Image
        load_image = Image.open
    backbone = backbone.to(device).eval()
    out = None if state is None else np.lib.format.open_memmap(partial, mode="r+")
    done = 0 if state is None else state["done"]
    start = time.perf_counter()
    while done < n:
        rows = range(done, min(n, done + batch))
        images = np.stack([_read(load_image, paths[i], input_size, mean, std) for i in rows])
        with torch.no_grad():
            tokens = backbone(torch.as_tensor(images, device=device)).float().cpu().numpy()
        if out is None:
            grid = int(round((tokens.shape[1] - 1) ** 0.5))
            if tokens.ndim != 3 or grid * grid != tokens.shape[1] - 1:
                raise UserError(f"the backbone gives tokens of shape {tokens.shape[1:]}, not 1 + g x g regions: use "
                                f"--backbone resnet101 or vit_b16 at their input sizes.")
            out = np.lib.format.open_memmap(partial, mode="w+", dtype=np.float16, shape=(n,) + tokens.shape[1:])
            record.update(grid=grid, dim=int(tokens.shape[2]))
        if np.abs(tokens).max() > np.finfo(np.float16).max:
            raise UserError(f"the backbone's features exceed float16's range (max {np.abs(tokens).max():.3g}) in "
                            f"images {rows.start + 1}..{rows.stop}: check the backbone and its weights.")
        out[rows.start:rows.stop] = tokens.astype(np.float16)
        out.flush()
        done = rows.stop
        _write_json(progress_path, {**record, "done": done})
        if log and (done == n or (done // batch) % 50 == 0):
            log(f"{done}/{n} images ({time.perf_counter() - start:.0f} s)")
    grid, dim = out.shape[1] - 1, out.shape[2]
    bad = [i for i in range(0, n, 1024) if not np.isfinite(np.asarray(out[i:i + 1024])).all()]
    if bad:
        raise UserError(f"{partial} holds NaN/inf values near image {bad[0] + 1}: check the images and the backbone, "
                        f"then rerun with --restart.")
    del out
    os.replace(partial, npy)
    write_sidecar(side, make_sidecar(tag, backbone=meta.get("backbone", "unknown"), layer=meta.get("layer", "unknown"),
                                     input_size=input_size, grid=int(round(grid ** 0.5)), dim=int(dim), n_images=n,
                                     global_token=meta.get("global_token", "unknown"), labels_sha=lab_sha,
                                     **{k: v for k, v in meta.items()
                                        if k not in ("backbone", "layer", "global_token")}))
    progress_path.unlink(missing_ok=True)
    return npy


def _read(load_image, path: Path, size: int, mean, std) -> np.ndarray:
    try:
        with load_image(path) as image:
            return preprocess(image, size, mean, std)
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read image {path} ({type(err).__name__}): replace it with an intact copy.") from None


def _resume(partial: Path, progress_path: Path, record: dict, restart: bool) -> dict | None:
    """The recorded progress of a partial run with the same ``record``, None to start afresh."""
    if restart or not (partial.is_file() and progress_path.is_file()):
        return None
    try:
        state = json.loads(progress_path.read_text())
    except (OSError, ValueError):
        return None
    if any(state.get(k) != v for k, v in record.items()):
        changed = next(k for k, v in record.items() if state.get(k) != v)
        raise UserError(f"{partial} is a partial extraction with another '{changed}': rerun with its arguments, or "
                        f"pass --restart to start over.")
    return state


def _write_json(path: Path, doc: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(doc, indent=1, sort_keys=True))
    os.replace(tmp, path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Extract regions_<tag>.npy + sidecar from a dataset's images.")
    parser.add_argument("--dataset-folder", required=True, help="the xlsa17 folder holding res101.mat (written into)")
    parser.add_argument("--images", required=True, help="your local image folder of the dataset")
    parser.add_argument("--backbone", required=True, choices=sorted(BACKBONES))
    parser.add_argument("--weights", required=True, help="state dict file of the backbone (never downloaded)")
    parser.add_argument("--tag", required=True, help="names regions_<tag>.npy, e.g. res101_448 or vit_b16")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--input-size", type=int, default=None, help="override the backbone's input size")
    parser.add_argument("--restart", action="store_true", help="ignore a recorded partial run and start over")
    args = parser.parse_args(argv)
    try:
        folder = Path(args.dataset_folder).expanduser()
        res_path = folder / "res101.mat"
        labels = get_field(load_mat(res_path), "labels", res_path).reshape(-1)
        paths = resolve_image_paths(image_files(res_path), Path(args.images).expanduser())
        backbone, spec = load_backbone(args.backbone, Path(args.weights))
        size = args.input_size or spec["input_size"]
        meta = {"backbone": spec["name"], "layer": spec["layer"], "global_token": spec["global_token"],
                "weights": str(Path(args.weights).expanduser().resolve()), "tool": "tools/extract_regions.py",
                "mean": list(spec["mean"]), "std": list(spec["std"]), "resize": "shorter side, bilinear, centre crop"}
        npy = extract_regions(folder, args.tag, paths, labels, backbone, input_size=size, mean=spec["mean"],
                              std=spec["std"], meta=meta, batch=args.batch, device=args.device, restart=args.restart)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    print(f"wrote {npy} and its sidecar")
    return 0


if __name__ == "__main__":
    sys.exit(main())
