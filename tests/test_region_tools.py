"""tools/extract_regions.py (with a fake tiny backbone: ordering, resume, sidecar) and tools/convert_hdf5_regions.py."""

import json
import sys

import numpy as np
import pytest
import scipy.io
import torch
from torch import nn

from tools import convert_hdf5_regions as conv
from tools import extract_regions as ext
from zsl.data.regions import read_regions
from zsl.errors import UserError

pytestmark = pytest.mark.usefixtures("one_thread")
SIZE = 8


class FakeBackbone(nn.Module):
    """Images [B, 3, 8, 8] -> a 2 x 2 map of 4 channels -> tokens [B, 5, 4] (global average first)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, kernel_size=4, stride=4)

    def forward(self, images):
        return ext.map_tokens(self.conv(images))


def _dataset(tmp_path, n=7):
    """res101.mat with image_files (the authors' absolute paths) + labels; the images under tmp/images/<class>/."""
    from PIL import Image

    folder, images = tmp_path / "DS", tmp_path / "images"
    folder.mkdir()
    labels = np.arange(n) % 3 + 1
    stored = [f"/BS/someone/work/DS/images/c{lab}/img_{i}.png" for i, lab in enumerate(labels)]
    rng = np.random.default_rng(0)
    for path in stored:
        local = images / "/".join(path.split("/")[-2:])
        local.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (12, 10, 3), dtype=np.uint8)).save(local)
    files = np.empty((n, 1), dtype=object)
    for i, path in enumerate(stored):
        files[i, 0] = np.array([path])
    scipy.io.savemat(str(folder / "res101.mat"), {"labels": labels.reshape(-1, 1).astype(np.float64),
                                                  "features": np.ones((2, n)), "image_files": files})
    return folder, images, labels, stored


def _run(folder, images, labels, backbone, **kw):
    paths = ext.resolve_image_paths(ext.image_files(folder / "res101.mat"), images)
    meta = {"backbone": "fake", "layer": "conv", "global_token": "global average of the map", "weights": "none"}
    return ext.extract_regions(folder, "fake", paths, labels, backbone, input_size=SIZE, mean=(0.5,) * 3,
                               std=(0.5,) * 3, meta=meta, batch=3, log=None, **kw)


def _expected(images, stored, backbone):
    from PIL import Image

    arr = np.stack([ext.preprocess(Image.open(images / "/".join(p.split("/")[-2:])), SIZE, (0.5,) * 3, (0.5,) * 3)
                    for p in stored])
    with torch.no_grad():
        return backbone(torch.as_tensor(arr)).numpy().astype(np.float16)


def test_image_order_and_path_mapping(tmp_path):
    folder, images, _, stored = _dataset(tmp_path)
    assert ext.image_files(folder / "res101.mat") == stored
    paths = ext.resolve_image_paths(stored, images)
    assert paths[4] == images / "c2" / "img_4.png"
    (images / "c1" / "img_3.png").unlink()
    with pytest.raises(UserError, match="1 of 7 images are missing"):
        ext.resolve_image_paths(stored, images)
    with pytest.raises(UserError, match="is not under"):
        ext.resolve_image_paths(stored, tmp_path / "elsewhere")


def test_preprocess_resizes_shorter_side_and_centre_crops():
    from PIL import Image

    image = Image.fromarray(np.full((20, 40, 3), 255, np.uint8))
    out = ext.preprocess(image, 8, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    assert out.shape == (3, 8, 8) and np.allclose(out, 2.0)


def test_extraction_writes_the_contract_in_res101_order(tmp_path):
    torch.manual_seed(0)
    backbone = FakeBackbone()
    folder, images, labels, stored = _dataset(tmp_path)
    npy = _run(folder, images, labels, backbone)
    reg = read_regions(folder, "fake")
    assert reg.path == npy and reg.tokens.shape == (7, 5, 4) and reg.grid == 2
    assert np.array_equal(np.asarray(reg.tokens), _expected(images, stored, backbone))
    assert reg.meta["backbone"] == "fake" and reg.meta["input_size"] == SIZE and reg.meta["weights"] == "none"
    assert sorted(p.name for p in folder.iterdir()) == ["regions_fake.json", "regions_fake.npy", "res101.mat"]


def test_extraction_resumes_after_the_last_recorded_batch(tmp_path):
    from PIL import Image

    torch.manual_seed(0)
    backbone = FakeBackbone()
    folder, images, labels, stored = _dataset(tmp_path)
    opened = []

    def crash_at_fifth(path):
        if len(opened) == 4:
            raise KeyboardInterrupt
        opened.append(path.name)
        return Image.open(path)

    with pytest.raises(KeyboardInterrupt):
        _run(folder, images, labels, backbone, load_image=crash_at_fifth)
    progress = json.loads((folder / "regions_fake.progress.json").read_text())
    assert progress["done"] == 3 and (folder / "regions_fake.npy.partial").is_file()
    assert not (folder / "regions_fake.npy").exists()
    opened.clear()

    def count(path):
        opened.append(path.name)
        return Image.open(path)

    _run(folder, images, labels, backbone, load_image=count)
    assert opened == [f"img_{i}.png" for i in range(3, 7)]                              # only the rest
    assert np.array_equal(np.asarray(read_regions(folder, "fake").tokens), _expected(images, stored, backbone))
    assert not (folder / "regions_fake.progress.json").exists()


def test_resume_refuses_a_partial_run_of_other_settings(tmp_path):
    torch.manual_seed(0)
    folder, images, labels, _ = _dataset(tmp_path)
    (folder / "regions_fake.npy.partial").write_bytes(b"x")
    (folder / "regions_fake.progress.json").write_text(json.dumps({"tag": "fake", "n_images": 7, "done": 3,
                                                                   "labels_sha256": "other"}))
    with pytest.raises(UserError, match="another 'labels_sha256'.*--restart"):
        _run(folder, images, labels, FakeBackbone())
    _run(folder, images, labels, FakeBackbone(), restart=True)
    assert read_regions(folder, "fake").n_images == 7


def test_backbone_refusals_are_one_sentence(tmp_path, monkeypatch):
    with pytest.raises(UserError, match="does not exist: pass --weights"):
        ext.load_backbone("resnet101", tmp_path / "none.pth")
    weights = tmp_path / "w.pth"
    torch.save({}, weights)
    monkeypatch.setitem(sys.modules, "torchvision", None)                               # as if not installed
    monkeypatch.setitem(sys.modules, "timm", None)
    with pytest.raises(UserError, match="needs torchvision, which is not installed: pip install torchvision"):
        ext.load_backbone("resnet101", weights)
    with pytest.raises(UserError, match="needs timm"):
        ext.load_backbone("vit_b16", weights)
    assert ext.main(["--dataset-folder", str(tmp_path), "--images", str(tmp_path), "--backbone", "vit_b16",
                     "--weights", str(weights), "--tag", "t"]) == 2                   # UserError -> exit 2


# ------------------------------------------------------------------------------------------- the converter
def _h5_layout(n=7, maps=True, seed=0):
    rng = np.random.default_rng(seed)
    labels0 = np.arange(n) % 3                                                           # 0-based, like DAZLE's
    fmap = rng.random((n, 4, 2, 2)).astype(np.float32) if maps else rng.random((n, 5, 6)).astype(np.float32)
    return {"feature_map": fmap, "labels": labels0, "trainval_loc": np.arange(0, n - 2), "test_seen_loc": np.array([n - 2]),
            "test_unseen_loc": np.array([n - 1])}


def _with_splits(folder, n=7):
    scipy.io.savemat(str(folder / "att_splits.mat"), {"trainval_loc": np.arange(1, n - 1).reshape(-1, 1),
                                                      "test_seen_loc": np.array([[n - 1]]), "test_unseen_loc": np.array([[n]])})


def test_convert_maps_in_res101_order(tmp_path):
    folder, _, _, _ = _dataset(tmp_path)
    _with_splits(folder)
    src = _h5_layout()
    conv.convert(src, folder, "msdn", "feature_map_ResNet_101_DS.hdf5", {"input_size": 448})
    reg = read_regions(folder, "msdn")
    tokens = np.asarray(reg.tokens, dtype=np.float32)
    cells = src["feature_map"].reshape(7, 4, 4).transpose(0, 2, 1)
    assert np.allclose(tokens[:, 1:], cells, atol=1e-3) and np.allclose(tokens[:, 0], cells.mean(1), atol=1e-3)
    assert reg.meta["global_token"].startswith("global average") and reg.meta["reordered"] is False


def test_convert_reorders_by_image_files_and_verifies(tmp_path):
    folder, _, _, stored = _dataset(tmp_path)
    _with_splits(folder)
    src = _h5_layout(maps=False)
    perm = np.array([3, 0, 6, 1, 5, 2, 4])                                               # hdf5 row j = image perm[j]
    shuffled = {"feature_map": src["feature_map"][perm], "labels": src["labels"][perm],
                "image_files": np.array([s.encode() for s in np.array(stored)[perm]]),
                "trainval_loc": np.flatnonzero(perm < 5), "test_seen_loc": np.flatnonzero(perm == 5),
                "test_unseen_loc": np.flatnonzero(perm == 6)}
    conv.convert(shuffled, folder, "vit", "x.hdf5", {})
    reg = read_regions(folder, "vit")
    assert np.allclose(np.asarray(reg.tokens, np.float32), src["feature_map"], atol=1e-3) and reg.meta["reordered"]
    del shuffled["image_files"]
    with pytest.raises(UserError, match="labels differ from res101.mat's row by row"):
        conv.convert(shuffled, folder, "vit2", "x.hdf5", {})


def test_convert_refuses_other_splits_rows_and_layouts(tmp_path):
    folder, _, _, _ = _dataset(tmp_path)
    _with_splits(folder)
    src = _h5_layout()
    with pytest.raises(UserError, match="'test_seen_loc' selects other images"):
        conv.convert({**src, "test_seen_loc": np.array([0])}, folder, "a", "x.hdf5", {})
    with pytest.raises(UserError, match="has 6 rows but res101.mat has 7 images"):
        conv.convert({k: v[:6] if k in ("feature_map", "labels") else v for k, v in src.items()}, folder, "a", "x.hdf5", {})
    with pytest.raises(UserError, match="neither"):
        conv.convert({**src, "feature_map": np.zeros((7, 2048))}, folder, "a", "x.hdf5", {})
    with pytest.raises(UserError, match="no 'feature_map'"):
        conv.convert({"labels": src["labels"]}, folder, "a", "x.hdf5", {})


def test_convert_cli_with_a_real_hdf5_file(tmp_path):
    h5py = pytest.importorskip("h5py")
    folder, _, _, _ = _dataset(tmp_path)
    with h5py.File(tmp_path / "f.hdf5", "w") as fh:
        for key, value in _h5_layout().items():
            fh.create_dataset(key, data=value)
    assert conv.main(["--hdf5", str(tmp_path / "f.hdf5"), "--dataset-folder", str(folder), "--tag", "h5"]) == 0
    assert read_regions(folder, "h5").tokens.shape == (7, 5, 4)


def test_convert_cli_without_h5py_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "h5py", None)
    assert conv.main(["--hdf5", "x", "--dataset-folder", str(tmp_path), "--tag", "t"]) == 2
    assert "h5py is not installed: pip install h5py" in capsys.readouterr().err
