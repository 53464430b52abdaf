"""Image classification data: Fashion-MNIST from the Debian package, digits from scikit-learn,
and full-size formats from a local path (an image folder, a Hugging Face dataset saved to disk).

Every loader returns :class:`ImageData`: float images in ``[0, 1]`` shaped ``(N, C, H, W)`` and
integer labels, per split (``train``, ``valid``, ``test``).
"""

from __future__ import annotations

import gzip
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "FASHION_MNIST_DIR",
    "ImageData",
    "load_digits_images",
    "load_fashion_mnist",
    "load_hf_image_dataset",
    "load_image_folder",
    "load_images",
    "read_idx",
]

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                         "Shirt", "Sneaker", "Bag", "Ankle boot")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


@dataclass
class ImageData:
    """Splits of an image classification set.

    Attributes:
        splits: ``{"train"|"valid"|"test": (images, labels)}``, images float ``(N, C, H, W)``
            in ``[0, 1]``, labels long ``(N,)``.
        classes: class names, index = label.
        source: where the data came from (for the run record).
    """

    splits: dict[str, tuple[Tensor, Tensor]]
    classes: list[str]
    source: str

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        c, h, w = self.splits["train"][0].shape[1:]
        return int(c), int(h), int(w)

    def sizes(self) -> dict[str, int]:
        """Examples per split."""
        return {k: len(v[1]) for k, v in self.splits.items()}


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file (the MNIST format; ``.gz`` or plain) into a numpy array.

    Raises:
        ValueError: not an IDX file.

    Example:
        >>> import tempfile, os
        >>> p = os.path.join(tempfile.mkdtemp(), "x.idx")
        >>> _ = open(p, "wb").write(bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 8, 9]))
        >>> read_idx(p).tolist()
        [7, 8, 9]
    """
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path} is not an IDX file.")
    dtypes = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if raw[2] not in dtypes:
        raise ValueError(f"{path}: unknown IDX type code {raw[2]:#x}.")
    ndim = raw[3]
    shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=dtypes[raw[2]], offset=4 + 4 * ndim)
    return data.reshape(shape)


def _split_train_valid(
    x: Tensor, y: Tensor, valid_size: int, train_size: int, seed: int
) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """A seeded permutation: the first ``valid_size`` go to valid, the next ``train_size``
    (0 = all the rest) to train."""
    if valid_size >= len(y):
        raise ValueError(f"valid_size={valid_size} leaves no training data (have {len(y)}).")
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    valid, rest = perm[:valid_size], perm[valid_size:]
    if train_size:
        rest = rest[:train_size]
    return (x[rest], y[rest]), (x[valid], y[valid])


def load_fashion_mnist(
    root: str | os.PathLike[str] = FASHION_MNIST_DIR,
    *,
    train_size: int = 0,
    valid_size: int = 5000,
    test_size: int = 0,
    split_seed: int = 0,
) -> ImageData:
    """Fashion-MNIST from the Debian package ``dataset-fashion-mnist`` (idx ``.gz`` files).

    ``valid`` is carved out of the official training set by a seeded permutation; ``test`` is the
    official test set (its first ``test_size`` images if ``test_size > 0``).

    Raises:
        FileNotFoundError: the files are absent (``make data`` installs the package).
    """
    root = Path(root)
    names = {
        "train_x": "train-images-idx3-ubyte", "train_y": "train-labels-idx1-ubyte",
        "test_x": "t10k-images-idx3-ubyte", "test_y": "t10k-labels-idx1-ubyte",
    }
    arrays = {}
    for key, stem in names.items():
        path = next((root / (stem + s) for s in (".gz", "") if (root / (stem + s)).exists()), None)
        if path is None:
            raise FileNotFoundError(
                f"Fashion-MNIST file {stem}[.gz] not found in {root}. Install the Debian package "
                "dataset-fashion-mnist (`make data`, or apt-get install dataset-fashion-mnist), "
                "or run the image experiment with dataset=digits."
            )
        arrays[key] = read_idx(path)
    def to_x(a: np.ndarray) -> Tensor:
        return torch.from_numpy(a.astype(np.float32) / 255.0).unsqueeze(1)

    x, y = to_x(arrays["train_x"]), torch.from_numpy(arrays["train_y"].astype(np.int64))
    train, valid = _split_train_valid(x, y, valid_size, train_size, split_seed)
    tx, ty = to_x(arrays["test_x"]), torch.from_numpy(arrays["test_y"].astype(np.int64))
    if test_size:
        tx, ty = tx[:test_size], ty[:test_size]
    return ImageData({"train": train, "valid": valid, "test": (tx, ty)},
                     list(FASHION_MNIST_CLASSES), f"fashion-mnist:{root}")


def load_digits_images(*, valid_size: int = 300, test_size: int = 400,
                       split_seed: int = 0) -> ImageData:
    """scikit-learn's 1,797 8x8 digits (inside the wheel): a small fallback and smoke set."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    y = torch.tensor(y, dtype=torch.long)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(split_seed))
    test, rest = perm[:test_size], perm[test_size:]
    train, valid = _split_train_valid(x[rest], y[rest], valid_size, 0, split_seed + 1)
    return ImageData({"train": train, "valid": valid, "test": (x[test], y[test])},
                     [str(i) for i in range(10)], "sklearn:load_digits")


def _pil_to_tensor(img, size: int | None, channels: int) -> Tensor:  # type: ignore[no-untyped-def]
    img = img.convert("L" if channels == 1 else "RGB")
    if size is not None and img.size != (size, size):
        img = img.resize((size, size))
    arr = np.asarray(img, dtype=np.float32) / 255.0
    t = torch.from_numpy(arr)
    return t.unsqueeze(0) if channels == 1 else t.permute(2, 0, 1)


def _read_class_dirs(root: Path, classes: list[str] | None, size: int | None,
                     channels: int) -> tuple[Tensor, Tensor, list[str]]:
    from PIL import Image

    found = sorted(d.name for d in root.iterdir() if d.is_dir())
    classes = classes or found
    xs, ys = [], []
    for label, name in enumerate(classes):
        if not (root / name).is_dir():
            continue
        for f in sorted((root / name).iterdir()):
            if f.suffix.lower() in IMAGE_SUFFIXES:
                with Image.open(f) as img:
                    xs.append(_pil_to_tensor(img, size, channels))
                ys.append(label)
    if not xs:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in class folders "
                                f"under {root}.")
    shapes = {tuple(x.shape) for x in xs}
    if len(shapes) > 1:
        raise ValueError(f"images under {root} have different sizes {sorted(shapes)[:3]}...; "
                         "pass image_size=N to resize them.")
    return torch.stack(xs), torch.tensor(ys, dtype=torch.long), classes


def load_image_folder(
    root: str | os.PathLike[str],
    *,
    image_size: int | None = None,
    channels: int = 1,
    valid_size: int = 0,
    train_size: int = 0,
    split_seed: int = 0,
) -> ImageData:
    """An image folder: ``root/<split>/<class>/*.png`` (splits ``train``, ``valid``/``val``,
    ``test``) or ``root/<class>/*.png`` (then valid and test are seeded 10% carve-outs).

    Args:
        root: the folder.
        image_size: resize to ``image_size x image_size`` (needed when sizes differ).
        channels: 1 (grey) or 3 (RGB).
        valid_size: when there is no valid split, how many training images to hold out
            (0 = 10%).
        train_size: keep at most this many training images (0 = all).
        split_seed: seed of the carve-outs.

    Raises:
        FileNotFoundError: no images found.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist.")
    if (root / "train").is_dir():
        x, y, classes = _read_class_dirs(root / "train", None, image_size, channels)
        splits: dict[str, tuple[Tensor, Tensor]] = {}
        val_dir = next((root / n for n in ("valid", "val") if (root / n).is_dir()), None)
        if val_dir is not None:
            vx, vy, _ = _read_class_dirs(val_dir, classes, image_size, channels)
            perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(split_seed))
            keep = perm[:train_size] if train_size else perm
            splits["train"], splits["valid"] = (x[keep], y[keep]), (vx, vy)
        else:
            n_valid = valid_size or max(1, len(y) // 10)
            splits["train"], splits["valid"] = _split_train_valid(x, y, n_valid, train_size,
                                                                  split_seed)
        if (root / "test").is_dir():
            splits["test"] = _read_class_dirs(root / "test", classes, image_size, channels)[:2]
        else:
            splits["test"] = splits["valid"]
        return ImageData(splits, classes, f"folder:{root}")
    x, y, classes = _read_class_dirs(root, None, image_size, channels)
    n = len(y)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(split_seed))
    n_test = max(1, n // 10)
    test, rest = perm[:n_test], perm[n_test:]
    n_valid = valid_size or max(1, n // 10)
    train, valid = _split_train_valid(x[rest], y[rest], n_valid, train_size, split_seed + 1)
    return ImageData({"train": train, "valid": valid, "test": (x[test], y[test])}, classes,
                     f"folder:{root}")


def load_hf_image_dataset(
    path: str | os.PathLike[str],
    *,
    image_column: str | None = None,
    label_column: str | None = None,
    image_size: int | None = None,
    channels: int = 1,
    valid_size: int = 0,
    train_size: int = 0,
    split_seed: int = 0,
) -> ImageData:
    """A Hugging Face ``DatasetDict`` saved with ``save_to_disk`` (splits ``train``, and
    ``validation``/``valid`` and ``test`` if present), e.g. CIFAR-10 from the hub saved once.

    Raises:
        ImportError: the ``datasets`` package is not installed.
        ValueError: no image/label column found.
    """
    from rdrop_experiments.data.common import import_datasets

    datasets = import_datasets()
    dd = datasets.load_from_disk(str(path))
    if isinstance(dd, datasets.Dataset):
        dd = datasets.DatasetDict({"train": dd})
    train_ds = dd["train"]
    cols = train_ds.column_names
    image_column = image_column or next((c for c in ("image", "img", "pixel_values") if c in cols),
                                        None)
    label_column = label_column or next((c for c in ("label", "labels", "fine_label") if c in cols),
                                        None)
    if image_column is None or label_column is None:
        raise ValueError(f"{path}: cannot find image/label columns among {cols}; pass "
                         "image_column= and label_column=.")
    feature = train_ds.features.get(label_column)
    classes = list(getattr(feature, "names", None) or [])

    def convert(ds) -> tuple[Tensor, Tensor]:  # type: ignore[no-untyped-def]
        from PIL import Image

        xs = []
        for img in ds[image_column]:
            if not isinstance(img, Image.Image):
                img = Image.fromarray(np.asarray(img, dtype=np.uint8))
            xs.append(_pil_to_tensor(img, image_size, channels))
        return torch.stack(xs), torch.tensor(ds[label_column], dtype=torch.long)

    x, y = convert(train_ds)
    if not classes:
        classes = [str(i) for i in range(int(y.max()) + 1)]
    val_name = next((n for n in ("validation", "valid", "val") if n in dd), None)
    if val_name:
        perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(split_seed))
        keep = perm[:train_size] if train_size else perm
        train, valid = (x[keep], y[keep]), convert(dd[val_name])
    else:
        train, valid = _split_train_valid(x, y, valid_size or max(1, len(y) // 10), train_size,
                                          split_seed)
    test = convert(dd["test"]) if "test" in dd else valid
    return ImageData({"train": train, "valid": valid, "test": test}, classes, f"hf:{path}")


def load_images(
    dataset: str,
    path: str | None = None,
    *,
    train_size: int = 0,
    valid_size: int = 5000,
    test_size: int = 0,
    image_size: int | None = None,
    channels: int = 1,
    split_seed: int = 0,
) -> ImageData:
    """Dispatch on ``dataset``: ``fashion-mnist`` (``path`` = idx folder, default the Debian
    one), ``digits``, ``folder`` (``path`` = image folder), ``hf`` (``path`` = saved dataset).

    Raises:
        ValueError: unknown dataset name, or ``folder``/``hf`` without ``path``.
    """
    if dataset == "fashion-mnist":
        return load_fashion_mnist(path or FASHION_MNIST_DIR, train_size=train_size,
                                  valid_size=valid_size, test_size=test_size,
                                  split_seed=split_seed)
    if dataset == "digits":
        return load_digits_images(split_seed=split_seed)
    if dataset in ("folder", "hf"):
        if not path:
            raise ValueError(f"dataset={dataset} needs data_path=<dir>.")
        loader = load_image_folder if dataset == "folder" else load_hf_image_dataset
        data = loader(path, image_size=image_size, channels=channels, valid_size=valid_size,
                      train_size=train_size, split_seed=split_seed)
        if test_size:
            tx, ty = data.splits["test"]
            data.splits["test"] = (tx[:test_size], ty[:test_size])
        return data
    raise ValueError(f"unknown image dataset {dataset!r}; use fashion-mnist, digits, folder or hf.")
