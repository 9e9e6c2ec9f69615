"""Datasets for training and evaluating the model zoo.

Every dataset is loaded whole into memory as uint8 tensors and fed by a :class:`DeviceLoader`
that keeps the images on the training device, so an epoch of MNIST or CIFAR costs no host work.

Sources, in the order they are searched (first hit wins):

1. ``data_dir`` passed by the caller (the CLI's ``--data-dir``);
2. ``$BIOTORCH_DATA/<name>``;
3. ``~/.cache/biotorch/data/<name>`` (``$BIOTORCH_CACHE/data/<name>``), where ``download=True`` puts files;
4. system folders (Debian's ``dataset-fashion-mnist`` package: ``/usr/share/datasets/fashion-mnist``).

Validation split: MNIST/Fashion-MNIST hold out 10,000 and CIFAR 5,000 images of the official
training set. The held-out indices are the first ``val_size`` entries of
``torch.randperm(n_train, generator=torch.Generator().manual_seed(0))`` (sorted), so every run,
machine and user gets the same split; ``tests/test_data.py`` pins that permutation.

Example::

    >>> from biotorch.data import DATASETS, DeviceLoader, load_split
    >>> info = DATASETS["fashion_mnist"]
    >>> images, labels = load_split("fashion_mnist", "train", data_dir="data/fashion-mnist")
    >>> images.shape, images.dtype                      # padded to LeNet's 32x32
    (torch.Size([50000, 1, 32, 32]), torch.uint8)
    >>> loader = DeviceLoader(images, labels, batch_size=128, mean=info.mean, std=info.std,
    ...                       train=True, augment="none", seed=0, device="cuda")
    >>> for epoch in range(10):
    ...     loader.set_epoch(epoch)
    ...     for x, y in loader: ...
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import math
import os
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.io import ImageReadMode, decode_image, decode_jpeg
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

Split = Literal["train", "val", "test"]
Augment = Literal["none", "crop_flip", "crop"]
PathLike = Union[str, os.PathLike]

__all__ = [
    "DATASETS",
    "transforms",
    "DatasetInfo",
    "DeviceLoader",
    "eval_transform",
    "imagefolder_info",
    "load_samples",
    "load_split",
]

SPLIT_SEED = 0  # the validation hold-out permutation seed; changing it changes every val number


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about its data: classes, input shape and normalisation.

    ``input_size`` is (C, H, W) after :func:`eval_transform`; ``train_size`` counts the training
    images left after the validation hold-out. ``None`` means "depends on the folder"
    (``imagefolder``; see :func:`imagefolder_info`). ``val_size=None`` means the validation
    split is a folder of its own rather than held out from the training set.

    Example::

        >>> DATASETS["cifar10"].input_size
        (3, 32, 32)
    """

    name: str
    num_classes: int | None
    label_names: tuple[str, ...]
    in_chans: int
    input_size: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    train_size: int | None
    val_size: int | None
    test_size: int | None
    interpolation: str  # used only where inputs are resized (imagefolder)
    description: str


_CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                    "dog", "frog", "horse", "ship", "truck")
_CIFAR100_CLASSES = tuple("""
apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly
camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup
dinosaur dolphin elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower
leopard lion lizard lobster man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid
otter palm_tree pear pickup_truck pine_tree plain plate poppy porcupine possum rabbit raccoon ray
road rocket rose sea seal shark shrew skunk skyscraper snail snake spider squirrel streetcar
sunflower sweet_pepper table tank telephone television tiger tractor train trout tulip turtle
wardrobe whale willow_tree wolf woman worm""".split())

# Normalisation constants are the customary per-channel values of each official training set
# (for the MNISTs measured on the unpadded 28x28 images, as LeNet-5 ports do).
# cifar10_jpeg reuses CIFAR-10's (its own train set measures mean 0.4911 0.4819 0.4466,
# std 0.2453 0.2428 0.2607), so cifar10 and cifar10_jpeg checkpoints share one preprocessing.
DATASETS: dict[str, DatasetInfo] = {
    info.name: info
    for info in (
        DatasetInfo(
            "mnist", 10, tuple(str(d) for d in range(10)), 1, (1, 32, 32),
            (0.1307,), (0.3081,), 50_000, 10_000, 10_000, "bilinear",
            "MNIST handwritten digits, 28x28 grayscale zero-padded to 32x32.",
        ),
        DatasetInfo(
            "fashion_mnist", 10,
            ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
             "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
            1, (1, 32, 32), (0.2860,), (0.3530,), 50_000, 10_000, 10_000, "bilinear",
            "Fashion-MNIST (Zalando), 28x28 grayscale zero-padded to 32x32.",
        ),
        DatasetInfo(
            "cifar10", 10, _CIFAR10_CLASSES, 3, (3, 32, 32),
            (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), 45_000, 5_000, 10_000, "bilinear",
            "CIFAR-10, 32x32 RGB, original pixels (torchvision's python pickles).",
        ),
        DatasetInfo(
            "cifar100", 100, _CIFAR100_CLASSES, 3, (3, 32, 32),
            (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), 45_000, 5_000, 10_000, "bilinear",
            "CIFAR-100 with its 100 fine labels, 32x32 RGB.",
        ),
        DatasetInfo(
            "cifar10_jpeg", 10, _CIFAR10_CLASSES, 3, (3, 32, 32),
            (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), 45_000, 5_000, 10_000, "bilinear",
            "CIFAR-10 re-encoded as JPEG (quality 75, 4:2:0), folder layout "
            "{train,test}/<class>/*.jpg. Lossy: its accuracies are not CIFAR-10 accuracies.",
        ),
        DatasetInfo(
            "imagefolder", None, (), 3, (3, 224, 224),
            (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), None, None, None, "bilinear",
            "Any ImageNet-style folder {train,val,test}/<class>/<image>; classes are the sorted "
            "folder names. Resized (shorter side 256) and centre-cropped to 224.",
        ),
    )
}

_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
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
    return FileNotFoundError(
        f"No {name} data found. Looked in:\n{where}\n{hint}\n"
        f"Pass the folder with --data-dir DIR (load_split(..., data_dir=DIR)), set $BIOTORCH_DATA "
        f"(searched as $BIOTORCH_DATA/{name}), or use download=True (--download)."
    )


# --------------------------------------------------------------------------------------------
# MNIST / Fashion-MNIST: the original IDX files


def _read_idx(path: Path) -> Tensor:
    """Parse an IDX file (optionally gzipped) holding unsigned bytes, e.g. MNIST's."""
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
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
# Image folders (cifar10_jpeg, imagefolder)


def _decode_all(blobs: list[bytes], mode: ImageReadMode) -> list[Tensor]:
    """Decode encoded images; JPEGs go through torchvision's batched decoder."""
    tensors = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs]
    jpeg = [i for i, b in enumerate(blobs) if b[:2] == b"\xff\xd8"]
    out: list[Tensor | None] = [None] * len(blobs)
    for start in range(0, len(jpeg), 4096):
        chunk = jpeg[start:start + 4096]
        for i, image in zip(chunk, decode_jpeg([tensors[i] for i in chunk], mode=mode)):
            out[i] = image
    for i, image in enumerate(out):
        if image is None:
            out[i] = decode_image(tensors[i], mode=mode)
    return out  # type: ignore[return-value]


def _fit(image: Tensor, info: DatasetInfo) -> Tensor:
    """Bring one decoded image (C, H, W) to ``info.input_size`` the way eval_transform does."""
    size = list(info.input_size[1:])
    if image.shape[-2:] == tuple(size):
        return image
    if info.name == "imagefolder":
        image = TF.resize(image, [round(size[0] / 0.875)], antialias=True)
    return TF.center_crop(image, size)  # pads with zeros where the image is smaller (MNIST 28->32)


def _list_class_folder(root: Path) -> list[tuple[str, Path]]:
    """(class name, file) pairs of an ImageFolder split, classes and files sorted by name."""
    return [
        (c.name, f)
        for c in sorted(p for p in root.iterdir() if p.is_dir())
        for f in sorted(c.iterdir())
        if f.suffix.lower() in _IMAGE_SUFFIXES
    ]


def _stack(info: DatasetInfo, classes: tuple[str, ...], items: list[tuple[str, bytes]], where: str):
    unknown = sorted({c for c, _ in items} - set(classes))
    if unknown:
        raise ValueError(f"{where}: unexpected class folders {unknown}; expected {list(classes)}")
    if not items:
        raise ValueError(f"{where}: no images ({', '.join(_IMAGE_SUFFIXES)}) in class folders")
    mode = ImageReadMode.GRAY if info.in_chans == 1 else ImageReadMode.RGB
    images = [_fit(x, info) for x in _decode_all([b for _, b in items], mode)]
    index = {c: i for i, c in enumerate(classes)}
    return torch.stack(images), torch.tensor([index[c] for c, _ in items], dtype=torch.int64)


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


def _read_jpeg_source(source: Path) -> dict[str, list[tuple[str, bytes]]]:
    """(class, encoded bytes) per split, in ImageFolder order (class, then file name)."""
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
    return {part: [(c, b) for c, _, b in sorted(items, key=lambda t: (t[0], t[1]))]
            for part, items in parts.items()}


def _load_cifar10_jpeg(part: str, data_dir: PathLike | None, download: bool):
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
    cache = _cache_root() / "decoded" / f"cifar10_jpeg-{_source_key(source)}"
    files = {p: (cache / f"{p}_images.npy", cache / f"{p}_labels.npy") for p in ("train", "test")}
    if not all(f.is_file() for pair in files.values() for f in pair):
        info = DATASETS["cifar10_jpeg"]
        decoded = {p: _stack(info, _CIFAR10_CLASSES, items, f"{source} {p}")
                   for p, items in _read_jpeg_source(source).items()}
        cache.mkdir(parents=True, exist_ok=True)
        for p, (images, labels) in decoded.items():
            for path, array in zip(files[p], (images, labels)):
                tmp = path.with_suffix(f".{os.getpid()}.tmp")
                with open(tmp, "wb") as f:
                    np.save(f, array.numpy())
                os.replace(tmp, path)  # atomic, so concurrent ranks never read half a file
        return decoded[part]
    images, labels = (torch.from_numpy(np.load(f)) for f in files[part])
    return images, labels


def _load_imagefolder(part: str, data_dir: PathLike | None):
    if data_dir is None:
        raise ValueError("imagefolder needs data_dir: a folder holding train/, val/ or test/")
    root = Path(data_dir).expanduser() / part
    if not root.is_dir():
        raise _not_found("imagefolder", [str(root)], "Expected <data_dir>/{train,val,test}/<class>/<image>.")
    info = imagefolder_info(data_dir)
    items = [(c, f.read_bytes()) for c, f in _list_class_folder(root)]
    return _stack(info, info.label_names, items, str(root))


def imagefolder_info(data_dir: PathLike) -> DatasetInfo:
    """``DATASETS["imagefolder"]`` with classes read from ``<data_dir>/train`` (or the first split found).

    Example::

        >>> imagefolder_info("~/imagenet").num_classes
        1000
    """
    root = Path(data_dir).expanduser()
    for part in ("train", "val", "test"):
        if (root / part).is_dir():
            classes = tuple(sorted(p.name for p in (root / part).iterdir() if p.is_dir()))
            return replace(DATASETS["imagefolder"], num_classes=len(classes), label_names=classes)
    raise _not_found("imagefolder", [str(root / p) for p in ("train", "val", "test")],
                     "Expected <data_dir>/{train,val,test}/<class>/<image>.")


# --------------------------------------------------------------------------------------------
# public loading API


def _holdout(n: int, val_size: int) -> tuple[Tensor, Tensor]:
    """(train indices, val indices) of the fixed validation hold-out, both sorted."""
    if not 0 <= val_size <= n:
        raise ValueError(f"val_size={val_size} must lie in [0, {n}] (the training set has {n} images)")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(SPLIT_SEED))
    return perm[val_size:].sort().values, perm[:val_size].sort().values


def load_split(
    name: str,
    split: Split,
    data_dir: PathLike | None = None,
    download: bool = False,
    val_size: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Load a whole split as ``(uint8 images (N, C, H, W), int64 labels (N,))``.

    Images come at ``DATASETS[name].input_size`` (MNISTs zero-padded to 32x32) but are not
    normalised: pass ``info.mean``/``info.std`` to :class:`DeviceLoader`. ``"val"`` is held out
    from the official training set with a fixed permutation (see the module docstring);
    ``val_size`` overrides its size (``0`` trains on everything; small numbers suit tiny data).

    Example::

        >>> x, y = load_split("mnist", "val", data_dir="~/data/mnist", download=True)
        >>> x.shape, y.dtype
        (torch.Size([10000, 1, 32, 32]), torch.int64)
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS)}")
    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be 'train', 'val' or 'test', not {split!r}")
    info = DATASETS[name]
    val_size = info.val_size if val_size is None else val_size
    if name == "imagefolder" and (split == "test" or val_size is None):
        return _load_imagefolder(split, data_dir)
    part = "test" if split == "test" else "train"
    if name in _TORCHVISION_FOLDER:
        images, labels = _load_mnist(name, part, data_dir, download)
    elif name in _CIFAR_FOLDER:
        images, labels = _load_cifar(name, part, data_dir, download)
    elif name == "cifar10_jpeg":
        images, labels = _load_cifar10_jpeg(part, data_dir, download)
    else:
        images, labels = _load_imagefolder("train", data_dir)
    if part == "test":
        return images, labels
    train_idx, val_idx = _holdout(len(images), val_size)
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
    mode = ImageReadMode.GRAY if info.in_chans == 1 else ImageReadMode.RGB
    images = _decode_all([(folder / r["file"]).read_bytes() for r in rows], mode)
    return torch.stack([_fit(x, info) for x in images]), labels


def eval_transform(info_or_name: DatasetInfo | str) -> v2.Compose:
    """The evaluation preprocessing of a dataset: PIL image or uint8 tensor -> normalised float.

    Handles the raw inputs a user has (a 28x28 PIL image for Fashion-MNIST is padded to 32x32;
    colour and grayscale are converted to the model's channel count) as well as what
    :func:`load_split` returns.

    Example::

        >>> from PIL import Image
        >>> t = eval_transform("fashion_mnist")
        >>> t(Image.open("samples/fashion_mnist/0000_ankle_boot.png")).shape
        torch.Size([1, 32, 32])
    """
    info = DATASETS[info_or_name] if isinstance(info_or_name, str) else info_or_name
    steps: list[v2.Transform] = [v2.ToImage(), v2.Grayscale(1) if info.in_chans == 1 else v2.RGB()]
    size = list(info.input_size[1:])
    if info.name == "imagefolder":
        steps.append(v2.Resize(round(size[0] / 0.875), antialias=True,
                               interpolation=v2.InterpolationMode(info.interpolation)))
    steps += [
        v2.CenterCrop(size),  # zero-pads smaller images: the MNISTs' 28 -> 32
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(list(info.mean), list(info.std)),
    ]
    return v2.Compose(steps)


def transforms(model_or_name) -> v2.Compose:
    """The eval transform matching a pretrained checkpoint (a name like ``"lenet_fa.fashion_mnist"`` or a
    model created with a tag), from its metadata.

    Example::

        >>> tf = biotorch.data.transforms(biotorch.create_model("lenet_fa.fashion_mnist", pretrained=True))
    """
    if isinstance(model_or_name, str):
        from .registry import get_pretrained_cfg

        cfg = get_pretrained_cfg(model_or_name)
        dataset, mean, std, size = cfg.dataset, cfg.mean, cfg.std, cfg.input_size
    else:
        cfg = getattr(model_or_name, "pretrained_cfg", None)
        if cfg is None:
            raise ValueError("this model has no pretrained metadata (create it with a tag, e.g. "
                             "'lenet_fa.fashion_mnist'); use biotorch.data.eval_transform(dataset_name) instead")
        dataset, mean, std, size = cfg["dataset"], cfg["mean"], cfg["std"], cfg["input_size"]
    info = replace(DATASETS[dataset], mean=tuple(mean), std=tuple(std), input_size=tuple(size))
    return eval_transform(info)


# --------------------------------------------------------------------------------------------
# DeviceLoader


class DeviceLoader:
    """Batches of normalised (optionally augmented) images from uint8 tensors kept on ``device``.

    Everything after construction runs on the device: gathering a batch, random crop (zero
    padding 4) and horizontal flip, and the float conversion and normalisation. Each epoch's
    order and augmentation draws come from a CPU ``torch.Generator`` seeded by ``(seed, epoch)``
    and are copied to the device once when iteration starts, so iterating never syncs the
    host and gives the same batches on CPU and CUDA. Call :meth:`set_epoch` before each epoch
    (as with ``DistributedSampler``); otherwise every epoch repeats epoch 0.

    With ``world_size > 1`` every rank draws the same permutation and takes its own contiguous
    slice of ``N // world_size`` samples (training), or every ``world_size``-th sample
    (evaluation, so that the ranks together cover each sample exactly once).

    Example::

        >>> loader = DeviceLoader(images, labels, batch_size=128, mean=(0.5,), std=(0.5,),
        ...                       train=True, augment="crop_flip", seed=0, device="cuda")
        >>> loader.set_epoch(3)
        >>> x, y = next(iter(loader))      # float32 (128, C, H, W) and int64 (128,) on cuda
    """

    def __init__(
        self,
        images_u8: Tensor,
        labels: Tensor,
        batch_size: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        train: bool,
        augment: Augment = "none",
        seed: int = 0,
        drop_last: bool = False,
        device: torch.device | str = "cpu",
        rank: int = 0,
        world_size: int = 1,
        channels_last: bool = False,
        padding: int = 4,
    ) -> None:
        if images_u8.dtype != torch.uint8 or images_u8.ndim != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {images_u8.dtype} {tuple(images_u8.shape)}")
        if labels.shape != (len(images_u8),):
            raise ValueError(f"labels must have shape ({len(images_u8)},), got {tuple(labels.shape)}")
        channels = images_u8.shape[1]
        if len(mean) != channels or len(std) != channels:
            raise ValueError(f"mean and std need {channels} values, got {len(mean)} and {len(std)}")
        if augment not in ("none", "crop_flip", "crop"):
            raise ValueError(f"augment must be 'none', 'crop_flip' or 'crop', not {augment!r}")
        if augment != "none" and not train:
            raise ValueError("augmentation is for training: pass augment='none' when train=False")
        if batch_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need batch_size >= 1 and 0 <= rank < world_size, got "
                             f"{batch_size}, {rank}, {world_size}")
        self.device = torch.device(device)
        self.batch_size, self.train, self.augment = batch_size, train, augment
        self.seed, self.drop_last, self.channels_last = seed, drop_last, channels_last
        self.rank, self.world_size, self.padding = rank, world_size, padding
        self.epoch = 0
        self.dataset_size = len(images_u8)
        self.images = images_u8.to(self.device)
        self.labels = labels.to(self.device, torch.int64)
        if augment != "none":  # padded once; crops are then plain index arithmetic
            self.padded = F.pad(self.images, (padding,) * 4)
        std_t = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        mean_t = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self.scale, self.shift = 1.0 / (255.0 * std_t), mean_t / std_t  # (x/255 - m)/s = x*scale - shift
        n, ws = self.dataset_size, world_size
        self.num_samples = n // ws if train else len(range(rank, n, ws))

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose shuffle and augmentation the next iteration uses."""
        self.epoch = epoch

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_samples // self.batch_size
        return math.ceil(self.num_samples / self.batch_size)

    def _epoch_plan(self) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """This rank's sample order and crop offsets (dy, dx, flip) for the current epoch."""
        n = self.dataset_size
        if not self.train:
            return torch.arange(self.rank, n, self.world_size, device=self.device), None, None
        # torch's CPU generator keeps only 32 bits of a seed, so (seed, epoch) is hashed into 32.
        # Draws cover all n positions before sharding: augmentation does not depend on world_size.
        key = hashlib.blake2b(f"{self.seed},{self.epoch}".encode(), digest_size=4).digest()
        g = torch.Generator().manual_seed(int.from_bytes(key, "little"))
        order = torch.randperm(n, generator=g)
        offsets = flips = None
        if self.augment != "none":
            offsets = torch.randint(0, 2 * self.padding + 1, (n, 2), generator=g)
            flips = torch.rand(n, generator=g) < 0.5
            if self.augment == "crop":
                flips.zero_()
        shard = slice(self.rank * self.num_samples, (self.rank + 1) * self.num_samples)
        order = order[shard].to(self.device)
        if offsets is not None:
            offsets, flips = offsets[shard].to(self.device), flips[shard].to(self.device)
        return order, offsets, flips

    def _crop(self, index: Tensor, offsets: Tensor, flips: Tensor) -> Tensor:
        _, c, h, w = self.images.shape
        rows = offsets[:, :1] + torch.arange(h, device=self.device)  # (B, H)
        cols = offsets[:, 1:] + torch.arange(w, device=self.device)  # (B, W)
        cols = torch.where(flips[:, None], cols.flip(1), cols)  # a flip reads the window backwards
        channels = torch.arange(c, device=self.device)
        return self.padded[index[:, None, None, None], channels[None, :, None, None],
                           rows[:, None, :, None], cols[:, None, None, :]]

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        order, offsets, flips = self._epoch_plan()
        for b in range(len(self)):
            s = slice(b * self.batch_size, (b + 1) * self.batch_size)
            index = order[s]
            x = self.images[index] if offsets is None else self._crop(index, offsets[s], flips[s])
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x.to(torch.float32).mul_(self.scale).sub_(self.shift), self.labels[index]

