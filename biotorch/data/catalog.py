"""The datasets biotorch knows: classes, input shape, normalisation, split sizes.

Pure data, no file access: where the files are and how they are read is :mod:`biotorch.data.sources`.

Example::

    >>> DATASETS["fashion_mnist"].input_size
    (1, 32, 32)
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal, get_args

Split = Literal["train", "val", "test"]
Augment = Literal["none", "crop_flip", "crop"]
AUGMENTS: tuple[str, ...] = get_args(Augment)  # the training augmentations: DeviceLoader's, a recipe's

SYNTHETIC = "synthetic"  # a tiny generated dataset for tests and smoke runs (no files)
CROP_PCT = 0.875  # images that are resized are resized to size / CROP_PCT, then centre-cropped to size
SPLIT_SEED = 0  # the validation hold-out permutation seed; changing it changes every val number


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about its data: classes, input shape and normalisation.

    ``input_size`` is (C, H, W) after :func:`eval_transform`; ``train_size`` counts the training
    images left after the validation hold-out. ``crop_pct`` says it as timm does: evaluation resizes the
    shorter side to size / crop_pct, then centre-crops; below 1 the images are resized (imagefolder), 1
    means they come at the input size, above 1 that they are zero-padded up to it (28 → 32 for the MNISTs:
    the resize to 28 leaves them as they are). ``None`` means "depends on the folder"
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
    crop_pct: float = 1.0

    @classmethod
    def from_cfg(cls, cfg: dict) -> "DatasetInfo":
        """The data a model's cfg describes: timm's ``pretrained_cfg`` (a dict: ``input_size``, ``mean``, ``std``,
        ``interpolation``, ``crop_pct``, optionally ``label_names``) or a ``biotorch.CheckpointRecord``'s dict, whose
        ``dataset`` says how its images come to size (MNIST's padding, not timm's ``crop_pct``).

        Example::

            >>> DatasetInfo.from_cfg(biotorch.create_model("lenet_fa.fashion_mnist").pretrained_cfg).crop_pct
            1.1428571428571428
        """
        input_size, mean, std = tuple(cfg["input_size"]), tuple(cfg["mean"]), tuple(cfg["std"])
        if cfg.get("dataset") in DATASETS:
            return dataclasses.replace(DATASETS[cfg["dataset"]], mean=mean, std=std, input_size=input_size,
                                       in_chans=input_size[0])
        labels = tuple(cfg.get("label_names") or ())
        return cls("", cfg.get("num_classes") or len(labels) or None, labels, input_size[0], input_size, mean, std,
                   None, None, None, cfg.get("interpolation") or "bilinear", "", cfg.get("crop_pct") or 1.0)


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
# cifar10_jpeg_gray's are measured on its own 50,000 training images (there is no customary value).
DATASETS: dict[str, DatasetInfo] = {
    info.name: info
    for info in (
        DatasetInfo(
            "mnist", 10, tuple(str(d) for d in range(10)), 1, (1, 32, 32),
            (0.1307,), (0.3081,), 50_000, 10_000, 10_000, "bilinear",
            "MNIST handwritten digits, 28x28 grayscale zero-padded to 32x32.", crop_pct=32 / 28,
        ),
        DatasetInfo(
            "fashion_mnist", 10,
            ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
             "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
            1, (1, 32, 32), (0.2860,), (0.3530,), 50_000, 10_000, 10_000, "bilinear",
            "Fashion-MNIST (Zalando), 28x28 grayscale zero-padded to 32x32.", crop_pct=32 / 28,
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
            "cifar10_jpeg_gray", 10, _CIFAR10_CLASSES, 1, (1, 32, 32),
            (0.4808,), (0.2391,), 45_000, 5_000, 10_000, "bilinear",
            "cifar10_jpeg decoded to grayscale: the JPEG's own luma plane (Y = 0.299 R + 0.587 G + "
            "0.114 B), 32x32, one channel, the same files, labels and split.",
        ),
        DatasetInfo(
            "imagefolder", None, (), 3, (3, 224, 224),
            (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), None, None, None, "bilinear",
            "Any ImageNet-style folder {train,val,test}/<class>/<image>; classes are the sorted "
            "folder names. Resized (shorter side 256) and centre-cropped to 224.", crop_pct=CROP_PCT,
        ),
        DatasetInfo(
            SYNTHETIC, 10, tuple(f"class_{i}" for i in range(10)), 1, (1, 32, 32), (0.5,), (0.25,),
            1024, 256, 512, "bilinear", "Tiny generated dataset (10 noisy patterns) for tests and smoke runs.",
        ),
    )
}
