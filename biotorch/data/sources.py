"""Where dataset files are and how they are read: whole splits as uint8 tensors, one fixed hold-out.

Sources, in the order they are searched (first hit wins):

1. ``data_dir`` passed by the caller (the CLI's ``--data-dir``);
2. ``$BIOTORCH_DATA/<name>``;
3. ``~/.cache/biotorch/data/<name>`` (``$BIOTORCH_CACHE/data/<name>``), where ``download=True`` puts files;
4. system folders (Debian's ``dataset-fashion-mnist`` package: ``/usr/share/datasets/fashion-mnist``).

Validation split: MNIST/Fashion-MNIST hold out 10,000 and CIFAR 5,000 images of the official
training set. The held-out indices are the first ``val_size`` entries of
``torch.randperm(n_train, generator=torch.Generator().manual_seed(SPLIT_SEED))`` (sorted), so every run,
machine and user gets the same split; ``tests/test_data.py`` pins that permutation. An image folder without
``val/`` holds out a tenth of its ``train/`` by the same permutation.

``synthetic`` needs no files: ten classes, each a fixed random 32×32 pattern plus per-image noise and
jitter, generated from a fixed seed (the same images in every run). Tests and smoke runs use it offline.

Example::

    >>> images, labels = load_split("fashion_mnist", "train", data_dir="data/fashion-mnist")
    >>> images.shape, images.dtype                      # padded to LeNet's 32x32
    (torch.Size([50000, 1, 32, 32]), torch.uint8)
"""
from __future__ import annotations

import csv
import functools
import gzip
import hashlib
import io
import math
import os
import tarfile
import zlib
from dataclasses import replace
from pathlib import Path
from typing import Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torchvision.transforms.functional import pil_to_tensor

from ..files import atomic_write
from .catalog import _CIFAR10_CLASSES, DATASETS, SPLIT_SEED, SYNTHETIC, DatasetInfo, Split
from .transforms import fit

PathLike = Union[str, os.PathLike]
_SYNTHETIC_SEED = 1234

_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
HOLDOUT_FRACTION = 0.1  # of an image folder's train/ held out for validation when it has no val/
_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_TORCHVISION_FOLDER = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}
_CIFAR_FOLDER = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}
_SYSTEM_DIRS = {"fashion_mnist": (Path("/usr/share/datasets/fashion-mnist"),)}


# --------------------------------------------------------------------------------------------
# locations


def _cache_root() -> Path:
    return Path(os.environ.get("BIOTORCH_CACHE", "~/.cache/biotorch")).expanduser()


def _search_dirs(name: str, data_dir: PathLike | None) -> list[Path]:
    dirs = [Path(data_dir).expanduser()] if data_dir is not None else []
    if os.environ.get("BIOTORCH_DATA"):
        dirs.append(Path(os.environ["BIOTORCH_DATA"]).expanduser() / name)
    dirs.append(_cache_root() / "data" / name)
    dirs.extend(_SYSTEM_DIRS.get(name, ()))
    return dirs


def _download_dir(name: str, data_dir: PathLike | None) -> Path:
    return _search_dirs(name, data_dir)[0]


def _not_found(name: str, looked: list[str], hint: str) -> FileNotFoundError:
    where = "\n".join(f"  - {p}" for p in looked)
    download = (", or let torchvision download it (biotorch train and eval: --download; download=True)"
                if name in _TORCHVISION_FOLDER or name in _CIFAR_FOLDER else "")
    return FileNotFoundError(
        f"No {name} data found. Looked in:\n{where}\n{hint}\n"
        f"Pass the folder with --data-dir DIR (data_dir=DIR), or set $BIOTORCH_DATA (searched as "
        f"$BIOTORCH_DATA/{name}){download}."
    )


# --------------------------------------------------------------------------------------------
# MNIST / Fashion-MNIST: the original IDX files


def _read_idx(path: Path) -> Tensor:
    """Parse an IDX file (optionally gzipped) holding unsigned bytes, e.g. MNIST's."""
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as error:
            raise ValueError(f"{path} is a damaged or truncated gzip file ({error}): download it again") from None
    if len(raw) < 4 or raw[0:2] != b"\x00\x00" or raw[2] != 0x08:
        raise ValueError(f"{path} is not an IDX file of unsigned bytes (magic {raw[:4].hex()})")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    if len(raw) - offset != math.prod(shape):
        raise ValueError(f"{path}: header says {shape} but holds {len(raw) - offset} bytes")
    return torch.frombuffer(bytearray(raw[offset:]), dtype=torch.uint8).reshape(shape)


def _find_idx(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate
    return None


def _load_idx_split(name: str, part: str, data_dir: PathLike | None, download: bool):
    image_stem, label_stem = _IDX_FILES[part]
    looked: list[str] = []
    for folder in _search_dirs(name, data_dir):
        # Flat layout (the four .gz files) or torchvision's <root>/FashionMNIST/raw layout.
        for sub in (folder, folder / _TORCHVISION_FOLDER[name] / "raw"):
            images, labels = _find_idx(sub, image_stem), _find_idx(sub, label_stem)
            if images and labels:
                return _read_idx(images), _read_idx(labels)
            looked.append(str(sub))
    if download:
        import torchvision.datasets as tvd

        root = _download_dir(name, data_dir)
        dataset_class = tvd.FashionMNIST if name == "fashion_mnist" else tvd.MNIST
        dataset_class(root=str(root), train=part == "train", download=True)
        return _load_idx_split(name, part, root, download=False)
    hint = f"Expected {image_stem}.gz and {label_stem}.gz (the original IDX files)."
    if name == "fashion_mnist":
        hint += " On Debian: apt-get install dataset-fashion-mnist."
    raise _not_found(name, looked, hint)


def _load_mnist(name: str, part: str, data_dir: PathLike | None, download: bool):
    images, labels = _load_idx_split(name, part, data_dir, download)
    if images.ndim != 3 or images.shape[1:] != (28, 28) or len(images) != len(labels):
        raise ValueError(f"{name} {part}: expected N 28x28 images and N labels, "
                         f"got images {tuple(images.shape)} and labels {tuple(labels.shape)}")
    return F.pad(images.unsqueeze(1), (2, 2, 2, 2)), labels.long()


# --------------------------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100: torchvision's python pickles


def _load_cifar(name: str, part: str, data_dir: PathLike | None, download: bool):
    import torchvision.datasets as tvd

    dataset_class = tvd.CIFAR10 if name == "cifar10" else tvd.CIFAR100
    folder = _CIFAR_FOLDER[name]
    roots = _search_dirs(name, data_dir)
    if data_dir is not None and Path(data_dir).name == folder:  # pointed at the folder itself
        roots.insert(1, Path(data_dir).parent)
    root = next((r for r in roots if (r / folder).is_dir()), None)
    if root is None and not download:
        raise _not_found(name, [str(r / folder) for r in roots],
                         f"Expected torchvision's layout: <dir>/{folder}/.")
    dataset = dataset_class(root=str(root or _download_dir(name, data_dir)),
                            train=part == "train", download=download and root is None)
    images = torch.from_numpy(np.ascontiguousarray(dataset.data.transpose(0, 3, 1, 2)))
    return images, torch.tensor(dataset.targets, dtype=torch.int64)


# --------------------------------------------------------------------------------------------
# Image folders (cifar10_jpeg and its grayscale variant, imagefolder)


def _decode(blob: bytes, gray: bool, where: str) -> Tensor:
    """One encoded image (JPEG, PNG, WebP) as a uint8 (C, H, W) tensor, RGB or gray, decoded by Pillow. A JPEG's gray
    is its own Y plane as libjpeg-turbo outputs it, not a conversion of its RGB: the pixels torchvision.io decoded
    before it was deprecated, bit for bit (``tests/test_data.py`` pins them)."""
    try:
        with Image.open(io.BytesIO(blob)) as image:
            if gray and image.format == "JPEG":
                image.draft("L", image.size)  # libjpeg's grayscale output: no scaling at the same size
            if image.mode.startswith("I"):  # 16-bit gray (a PNG's): convert() would clip it at 255, not scale it
                image = Image.fromarray((np.asarray(image).astype(np.int64).clip(0, 65535) >> 8).astype(np.uint8))
            return pil_to_tensor(image.convert("L" if gray else "RGB"))  # 16-bit RGB: Pillow keeps the high byte
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:  # Pillow's "cannot read it"
        raise ValueError(f"{where}: cannot decode an image ({error})") from None


def _images(folder: Path):
    """A class folder's image files: regular files only (a named pipe would be waited on forever), hidden ones
    (``._x.png``, ``.x.png``) aside."""
    return (f for f in folder.iterdir()
            if f.suffix.lower() in _IMAGE_SUFFIXES and not f.name.startswith(".") and f.is_file())


def _class_folders(root: Path) -> list[Path]:
    """An ImageFolder split's class folders, sorted by name: a hidden folder (``.ipynb_checkpoints``) is no class,
    and a class without images is refused by name, as torchvision's ``ImageFolder`` does."""
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise ValueError(f"{root}: no class folders (expected {root}/<class>/<image>)")
    for folder in folders:
        if next(_images(folder), None) is None:
            raise ValueError(f"{folder}: a class folder without images ({', '.join(_IMAGE_SUFFIXES)}): add its "
                             "images or remove it")
    return folders


def _list_class_folder(root: Path) -> list[tuple[str, Path]]:
    """(class name, file) pairs of an ImageFolder split, classes and files sorted by name."""
    return [(c.name, f) for c in _class_folders(root) for f in sorted(_images(c))]


def _stack(info: DatasetInfo, classes: tuple[str, ...], items: list[tuple[str, str, bytes]], where: str):
    """Decode (class, file name, encoded bytes) items into (images, labels)."""
    unknown = sorted({c for c, _, _ in items} - set(classes))
    if unknown:
        raise ValueError(f"{where}: unexpected class folders {unknown}; expected {list(classes)}")
    if not items:
        raise ValueError(f"{where}: no images ({', '.join(_IMAGE_SUFFIXES)}) in class folders")
    images = [fit(info)(_decode(b, info.in_chans == 1, f"{where}/{c}/{n}")) for c, n, b in items]
    index = {c: i for i, c in enumerate(classes)}
    return torch.stack(images), torch.tensor([index[c] for c, _, _ in items], dtype=torch.int64)


def _find_jpeg_source(data_dir: PathLike | None) -> tuple[Path | None, list[str]]:
    looked: list[str] = []
    for folder in _search_dirs("cifar10_jpeg", data_dir):
        if folder.is_file() and folder.name.endswith((".tar.gz", ".tgz")):
            return folder, looked
        for candidate in (folder, folder / "cifar10-jpeg"):
            looked.append(str(candidate))
            if (candidate / "train").is_dir() and (candidate / "test").is_dir():
                return candidate, looked
        tarball = folder / "cifar10-jpeg.tar.gz"
        looked.append(str(tarball))
        if tarball.is_file():
            return tarball, looked
    return None, looked


def _source_key(source: Path) -> str:
    """Identify a source (folder or tarball) by path, names, sizes and mtimes, to key its cache."""
    h = hashlib.sha256(str(source.resolve()).encode())
    stats = [source.stat()] if source.is_file() else [
        p.stat() for part in ("train", "test") for _, p in _list_class_folder(source / part)
    ]
    h.update(str([(s.st_size, s.st_mtime_ns) for s in stats]).encode())
    return h.hexdigest()[:16]


def _read_jpeg_source(source: Path) -> dict[str, list[tuple[str, str, bytes]]]:
    """(class, file name, encoded bytes) per split, in ImageFolder order (class, then file name)."""
    parts: dict[str, list[tuple[str, str, bytes]]] = {"train": [], "test": []}
    if source.is_file():
        with tarfile.open(source, "r:*") as tar:
            for member in tar:  # streamed: no extraction, no temporary files
                bits = member.name.split("/")
                if (member.isfile() and len(bits) >= 3 and bits[-3] in parts
                        and bits[-1].lower().endswith(_IMAGE_SUFFIXES)):
                    parts[bits[-3]].append((bits[-2], bits[-1], tar.extractfile(member).read()))
    else:
        for part in parts:
            parts[part] = [(c, f.name, f.read_bytes()) for c, f in _list_class_folder(source / part)]
    return {part: sorted(items, key=lambda t: (t[0], t[1])) for part, items in parts.items()}


def _save_npy(array: np.ndarray, path: str) -> None:
    with open(path, "wb") as f:  # a file object: np.save would add ".npy" to a name
        np.save(f, array)


def _load_cifar10_jpeg(name: str, part: str, data_dir: PathLike | None, download: bool):
    """cifar10_jpeg, or cifar10_jpeg_gray: the same files decoded to their luma plane (one channel)."""
    source, looked = _find_jpeg_source(data_dir)
    if source is None:
        raise _not_found(
            "cifar10_jpeg", looked,
            "Expected cifar10-jpeg.tar.gz or its extracted {train,test}/<class>/*.jpg folders. "
            "torchvision has no downloader for this JPEG re-encoding" + (
                " (download=True cannot fetch it); use cifar10 for the original pixels."
                if download else "."),
        )
    # Decoding 60,000 JPEGs takes seconds; later loads read the uint8 arrays back.
    cache = _cache_root() / "decoded" / f"{name}-{_source_key(source)}"
    files = {p: (cache / f"{p}_images.npy", cache / f"{p}_labels.npy") for p in ("train", "test")}
    if not all(f.is_file() for pair in files.values() for f in pair):
        info = DATASETS[name]
        decoded = {p: _stack(info, _CIFAR10_CLASSES, items, f"{source}/{p}")
                   for p, items in _read_jpeg_source(source).items()}
        cache.mkdir(parents=True, exist_ok=True)
        for p, (images, labels) in decoded.items():
            for path, array in zip(files[p], (images, labels)):
                atomic_write(path, functools.partial(_save_npy, array.numpy()))  # ranks never read half a file
        return decoded[part]
    images, labels = (torch.from_numpy(np.load(f)) for f in files[part])
    return images, labels


def _imagefolder_root(data_dir: PathLike | None) -> Path:
    if data_dir is None:
        raise ValueError("imagefolder needs data_dir (--data-dir): the folder holding train/, val/ and test/")
    return Path(data_dir).expanduser()


def _layout_error(root: Path) -> FileNotFoundError:
    """What ``root``, given as an image folder without train/, val/ or test/, holds, and what to pass instead."""
    expected = f"expected {root}/train/<class>/<image>, and test/ (val/ optional) beside train/"
    if not root.is_dir():
        return FileNotFoundError(f"no image folder at {root}: {expected}")
    classes = sorted(c.name for c in root.iterdir()
                     if c.is_dir() and not c.name.startswith(".") and next(_images(c), None) is not None)
    if classes and root.name in ("train", "val", "test"):
        return FileNotFoundError(f"{root} holds class folders: pass its parent, {root.parent} (the folder holding "
                                 "train/, val/ and test/)")
    if classes:
        shown = ", ".join(classes[:5]) + (", ..." if len(classes) > 5 else "")
        return FileNotFoundError(f"{root} holds class folders ({shown}) but no train/: move them into {root / 'train'} "
                                 f"(and test images into {root / 'test'}/<class>/)")
    return FileNotFoundError(f"{root} holds no train/, val/ or test/ folder: {expected}")


def _load_imagefolder(part: str, data_dir: PathLike | None, info: DatasetInfo | None):
    root = _imagefolder_root(data_dir) / part
    if not root.is_dir():
        if not any((root.parent / p).is_dir() for p in ("train", "val", "test")):
            raise _layout_error(root.parent)
        raise FileNotFoundError(f"{root.parent} has no {part}/ folder: expected {root}/<class>/<image>")
    info = info or imagefolder_info(data_dir)
    items = [(c, f.name, f.read_bytes()) for c, f in _list_class_folder(root)]
    return _stack(info, info.label_names, items, str(root))


def imagefolder_info(data_dir: PathLike, like: DatasetInfo | None = None) -> DatasetInfo:
    """``DATASETS["imagefolder"]`` with classes read from ``<data_dir>/train`` (or the first split found); with
    ``like``, its input size, channels, normalisation, interpolation and ``crop_pct`` instead (a checkpoint's,
    :meth:`DatasetInfo.from_cfg`: fine-tuning brings a folder's images to what the model was trained on).

    Example::

        >>> imagefolder_info("~/imagenet").num_classes
        1000
        >>> imagefolder_info("my_images", DatasetInfo.from_cfg(model.pretrained_cfg)).input_size
        (1, 32, 32)
    """
    root = _imagefolder_root(data_dir)
    splits = [root / part for part in ("train", "val", "test") if (root / part).is_dir()]
    if not splits:
        raise _layout_error(root)
    classes = tuple(c.name for c in _class_folders(splits[0]))
    for split in splits[1:]:  # every split's classes, before anything trains (test/ is read after training)
        unknown = sorted({c.name for c in _class_folders(split)} - set(classes))
        if unknown:
            raise ValueError(f"{split}: unexpected class folders {unknown}; expected {list(classes)}")
    size = "x".join(map(str, (like or DATASETS["imagefolder"]).input_size))
    return replace(like or DATASETS["imagefolder"], name="imagefolder", num_classes=len(classes),
                   label_names=classes, train_size=None, val_size=None, test_size=None,
                   description=f"the image folder {root}, {len(classes)} classes, brought to {size}")


def has_split(name: str, data_dir: PathLike | None, split: Split) -> bool:
    """Whether ``name`` has ``split`` as files of its own: a catalogued dataset has train and test (its val is
    held out of train); an image folder the ones it has folders for."""
    if name != "imagefolder":
        return split != "val"
    return (_imagefolder_root(data_dir) / split).is_dir()


def default_val_size(n: int) -> int:
    """Images held out for validation from an image folder without ``val/``: a tenth, at least one (of two)."""
    return max(round(n * HOLDOUT_FRACTION), 1 if n > 1 else 0)


# --------------------------------------------------------------------------------------------
# public loading API


def holdout(n: int, val_size: int) -> tuple[Tensor, Tensor]:
    """(train indices, val indices) of the fixed validation hold-out, both sorted."""
    if not 0 <= val_size <= n:
        raise ValueError(f"val_size={val_size} must lie in [0, {n}] (the training set has {n} images)")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(SPLIT_SEED))
    return perm[val_size:].sort().values, perm[:val_size].sort().values


def balanced_subset(labels: Tensor, n: int) -> Tensor:
    """The indices (sorted) of ``n`` samples taken class by class in turn, each class in its own order: the
    first of every class, then the second of every class, ... (``--limit-train``: every class is seen)."""
    order = torch.argsort(labels, stable=True)
    grouped = labels[order]
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(labels), device=labels.device) - torch.searchsorted(grouped, grouped)
    return torch.argsort(rank * (int(labels.max()) + 1 if len(labels) else 1) + labels, stable=True)[:n].sort().values


def load_split(
    name: str,
    split: Split,
    data_dir: PathLike | None = None,
    download: bool = False,
    val_size: int | None = None,
    info: DatasetInfo | None = None,
) -> tuple[Tensor, Tensor]:
    """Load a whole split as ``(uint8 images (N, C, H, W), int64 labels (N,))``.

    Images come at ``DATASETS[name].input_size`` (MNISTs zero-padded to 32x32) but are not
    normalised: pass ``info.mean``/``info.std`` to :class:`DeviceLoader`. ``"val"`` is held out
    from the official training set with a fixed permutation (see the module docstring);
    ``val_size`` overrides its size (``0`` trains on everything; small numbers suit tiny data).

    An ``imagefolder`` reads ``<data_dir>/<split>/<class>/<image>``; without ``val/`` (or with ``val_size``) its
    validation images are held out of ``train/`` the same way (a tenth by default: :func:`default_val_size`).
    ``info`` (imagefolder only) says what its images are brought to (:func:`imagefolder_info`'s ``like``).

    Example::

        >>> x, y = load_split("mnist", "val", data_dir="~/data/mnist", download=True)
        >>> x.shape, y.dtype
        (torch.Size([10000, 1, 32, 32]), torch.int64)
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS)}")
    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be 'train', 'val' or 'test', not {split!r}")
    val_size = DATASETS[name].val_size if val_size is None else val_size
    if name == SYNTHETIC:
        images, labels = _synthetic(split == "test")
        if split == "test":
            return images, labels
        train_idx, val_idx = holdout(len(images), val_size)
        keep = train_idx if split == "train" else val_idx
        return images[keep], labels[keep]
    if name == "imagefolder":
        if split == "test" or (val_size is None and (_imagefolder_root(data_dir) / "val").is_dir()):
            return _load_imagefolder(split, data_dir, info)
        images, labels = _load_imagefolder("train", data_dir, info)
        val_size = default_val_size(len(labels)) if val_size is None else val_size
    else:
        part = "test" if split == "test" else "train"
        if name in _TORCHVISION_FOLDER:
            images, labels = _load_mnist(name, part, data_dir, download)
        elif name in _CIFAR_FOLDER:
            images, labels = _load_cifar(name, part, data_dir, download)
        else:
            images, labels = _load_cifar10_jpeg(name, part, data_dir, download)
        if part == "test":
            return images, labels
    train_idx, val_idx = holdout(len(images), val_size)
    keep = train_idx if split == "train" else val_idx
    return images[keep], labels[keep]


def load_samples(folder: PathLike, dataset: str | None = None) -> tuple[Tensor, Tensor]:
    """Load a sample folder (images + ``labels.csv`` with columns ``file,label``).

    Images are brought to the dataset's input size as :func:`load_split` does (Fashion-MNIST's
    28x28 PNGs are padded to 32x32). ``dataset`` defaults to the folder's name, so the folders
    shipped in ``samples/`` need no argument.

    Example::

        >>> x, y = load_samples("samples/fashion_mnist")
        >>> x.shape
        torch.Size([100, 1, 32, 32])
    """
    folder = Path(folder).expanduser()
    dataset = dataset or folder.name
    if dataset not in DATASETS:
        raise ValueError(f"cannot tell the dataset of {folder}; pass dataset= one of {sorted(DATASETS)}")
    info = DATASETS[dataset]
    table = folder / "labels.csv"
    if not table.is_file():
        raise FileNotFoundError(f"{table} not found: a sample folder needs labels.csv (file,label)")
    with open(table, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"file", "label"} <= set(rows[0]):
        raise ValueError(f"{table} must have a header 'file,label' and at least one row")
    labels = torch.tensor([int(r["label"]) for r in rows], dtype=torch.int64)
    if info.num_classes is not None and not bool(((labels >= 0) & (labels < info.num_classes)).all()):
        raise ValueError(f"{table}: labels must lie in [0, {info.num_classes})")
    images = [fit(info)(_decode((folder / r["file"]).read_bytes(), info.in_chans == 1, str(folder / r["file"])))
              for r in rows]
    return torch.stack(images), labels


def _synthetic(test: bool) -> tuple[Tensor, Tensor]:
    info = DATASETS[SYNTHETIC]
    g = torch.Generator().manual_seed(_SYNTHETIC_SEED)
    prototypes = F.interpolate(torch.rand(info.num_classes, 1, 8, 8, generator=g), size=32, mode="bilinear")
    count = info.test_size if test else info.train_size + info.val_size
    g.manual_seed(_SYNTHETIC_SEED + test)
    labels = torch.randint(0, info.num_classes, (count,), generator=g)
    shifts = torch.randint(-2, 3, (count, 2), generator=g)
    images = prototypes[labels] + 0.35 * torch.randn(count, 1, 32, 32, generator=g)
    images = torch.stack([img.roll(tuple(s.tolist()), dims=(1, 2)) for img, s in zip(images, shifts)])
    return (images.clamp(0, 1) * 255).round().to(torch.uint8), labels


def dataset_info(name: str, data_dir: PathLike | None = None) -> DatasetInfo:
    """``DATASETS[name]``; for ``imagefolder`` with the classes of ``data_dir``."""
    if name == "imagefolder":
        if data_dir is None:
            raise ValueError("imagefolder needs data_dir (--data-dir): the folder holding train/, val/ and test/")
        return imagefolder_info(data_dir)
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return DATASETS[name]
