"""Image family: the quick run end to end, and every loader on small files written here."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch

from rdrop_experiments import get_experiment, run_experiment
from rdrop_experiments.data.images import (
    load_fashion_mnist,
    load_hf_image_dataset,
    load_image_folder,
    load_images,
    read_idx,
)


def test_quick_run_is_well_formed(tmp_path):
    recs = run_experiment("image", out=tmp_path, variant="quick", progress=False)
    assert len({r["data_hash"] for r in recs}) == 1 and recs[0]["data_hash"]  # one data, all runs
    exp = get_experiment("image")
    assert sorted((r["method"], r["seed"]) for r in recs) == sorted(
        (s["methods"][0], 0) for s in exp.grid)  # one seed per grid point (quick)
    for r in recs:
        assert r["metric"] == "accuracy" and 0.2 < r["value"] <= 1.0  # digits learn fast
        assert r["curves"][0]["step"] == r["config"]["eval_every"]
        assert {"train_loss", "valid_loss", "valid_accuracy", "sample_passes"} <= set(
            r["curves"][0])
        assert r["extra"]["data"] == "sklearn:load_digits"
    rd = next(r for r in recs if r["method"] == "rdrop")
    assert rd["curves"][0]["train_consistency"] > 0


def _write_idx(path, array):
    codes = {np.dtype(np.uint8): 0x08}
    header = bytes([0, 0, codes[array.dtype], array.ndim]) + struct.pack(
        f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.tobytes())


def test_fashion_mnist_idx_files(tmp_path):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 30), ("t10k", 10)):
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz",
                   rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz",
                   rng.integers(0, 10, (n,), dtype=np.uint8))
    assert read_idx(tmp_path / "t10k-labels-idx1-ubyte.gz").shape == (10,)
    data = load_fashion_mnist(tmp_path, train_size=12, valid_size=8)
    assert data.sizes() == {"train": 12, "valid": 8, "test": 10}
    x, _ = data.splits["train"]
    assert x.shape == (12, 1, 28, 28) and x.min() >= 0.0 and x.max() <= 1.0
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        load_fashion_mnist(tmp_path / "nowhere")


def _write_pngs(root, classes, n, size=8):
    from PIL import Image

    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(n):
            arr = np.full((size, size), 40 * c + i, dtype=np.uint8)
            Image.fromarray(arr).save(root / name / f"{i}.png")


def test_image_folder_with_and_without_split_dirs(tmp_path):
    _write_pngs(tmp_path / "split" / "train", ["cat", "dog"], 6)
    _write_pngs(tmp_path / "split" / "test", ["cat", "dog"], 2)
    data = load_image_folder(tmp_path / "split", valid_size=2)
    assert data.classes == ["cat", "dog"]
    assert data.sizes() == {"train": 10, "valid": 2, "test": 4}
    assert data.shape == (1, 8, 8)
    _write_pngs(tmp_path / "flat", ["a", "b", "c"], 10, size=12)
    flat = load_image_folder(tmp_path / "flat", image_size=8, channels=3)
    assert sum(flat.sizes().values()) == 30 and flat.shape == (3, 8, 8)


def test_image_recipe_on_a_folder(tmp_path):
    _write_pngs(tmp_path / "imgs", ["a", "b"], 12)
    recs = run_experiment("image", {"dataset": "folder", "data_path": str(tmp_path / "imgs"),
                                    "valid_size": 4, "patch_size": 4, "max_steps": 3,
                                    "eval_every": 3, "seeds": 1, "progress": False},
                          out=tmp_path / "out", progress=False)
    assert len(recs) == len(get_experiment("image").grid)  # one run per arm and grid point
    assert recs[0]["extra"]["sizes"]["train"] == 18


def test_hf_loader_needs_datasets_or_reads_it(tmp_path):
    try:
        import datasets
    except ImportError:
        with pytest.raises(ImportError, match="pip install datasets"):
            load_hf_image_dataset(tmp_path)
        return
    from PIL import Image

    imgs = [Image.fromarray(np.full((8, 8), i * 20, dtype=np.uint8)) for i in range(10)]
    ds = datasets.Dataset.from_dict({"image": imgs, "label": [i % 2 for i in range(10)]})
    datasets.DatasetDict({"train": ds, "test": ds}).save_to_disk(str(tmp_path / "hf"))
    data = load_hf_image_dataset(tmp_path / "hf", valid_size=2)
    assert data.sizes() == {"train": 8, "valid": 2, "test": 10}


def test_dispatch_errors():
    with pytest.raises(ValueError, match="needs data_path"):
        load_images("folder")
    with pytest.raises(ValueError, match="unknown image dataset"):
        load_images("cifar")
    assert torch.is_tensor(load_images("digits").splits["test"][0])
