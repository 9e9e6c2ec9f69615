"""Evaluation preprocessing: one resize/crop for every path that brings an image to a model's input size.

Example::

    >>> from PIL import Image
    >>> t = eval_transform("fashion_mnist")
    >>> t(Image.open("samples/fashion_mnist/0000_ankle_boot.png")).shape
    torch.Size([1, 32, 32])
"""
from __future__ import annotations

import dataclasses

import torch
from PIL import Image
from torchvision.transforms import v2

from .catalog import AUGMENTS, DATASETS, DatasetInfo


class Fit:
    """Bring an image tensor (C, H, W) of any size to ``size`` as timm does with ``crop_pct``: resize the shorter
    side to size / crop_pct, then centre-crop (which zero-pads where crop_pct > 1: MNIST's 28 → 32). An image at
    size / crop_pct is left as it is (28×28 MNIST, 32×32 CIFAR), so a 64×64 copy of an image is seen as the
    image itself; where crop_pct > 1 an image already at ``size`` is taken as padded (what ``load_split``
    returns) and passes unchanged."""

    def __init__(self, size: tuple[int, int], crop_pct: float, interpolation: str) -> None:
        self.size, self.padded = tuple(size), crop_pct > 1
        self.resize = v2.Resize(int(size[0] / crop_pct + 1e-9), antialias=True,
                                interpolation=v2.InterpolationMode(interpolation))
        self.crop = v2.CenterCrop(list(size))

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        if not (self.padded and tuple(image.shape[-2:]) == self.size):
            image = self.resize(image)
        return self.crop(image)

    def __repr__(self) -> str:
        return f"Fit(resize={self.resize.size}, crop={list(self.size)}, padded_input_kept={self.padded})"


def fit(info: DatasetInfo) -> Fit:
    """:class:`Fit` for ``info.input_size``, its ``crop_pct`` and interpolation."""
    return Fit(info.input_size[1:], info.crop_pct, info.interpolation)


class ToImage:
    """torchvision's ``v2.ToImage`` for a model of ``in_chans`` channels. A PIL image of any mode is converted as the
    data loader decodes a file (``Image.convert`` to L or RGB: alpha dropped, CMYK, palettes and 16-bit converted);
    a tensor or array must hold 1 or 3 channels first, (C, H, W) or (N, C, H, W) (a 2-D one is one channel), and
    anything else is refused in one line."""

    def __init__(self, in_chans: int) -> None:
        self.mode, self.to_image = "L" if in_chans == 1 else "RGB", v2.ToImage()

    def __call__(self, image):
        if isinstance(image, Image.Image):
            return self.to_image(image.convert(self.mode))
        image = self.to_image(image)
        if image.shape[-3] not in (1, 3):
            last = f" (channels last? x.permute({'2, 0, 1' if image.ndim == 3 else '0, 3, 1, 2'}))"
            raise ValueError(f"biotorch's transforms take a PIL image, or a tensor (C, H, W) or (N, C, H, W) of 1 or 3 "
                             f"channels; got shape {tuple(image.shape)}, {image.shape[-3]} channels"
                             + (last if image.shape[-1] in (1, 3, 4) else ""))
        return image

    def __repr__(self) -> str:
        return f"ToImage(mode={self.mode!r})"


def eval_transform(info_or_name: DatasetInfo | str, training: bool = False, augment: str = "none",
                   padding: int = 4) -> v2.Compose:
    """The preprocessing of a dataset: PIL image or uint8 tensor (any size, colour or grayscale) -> normalised
    float of ``input_size``. With ``training``, ``augment`` adds what :class:`DeviceLoader` draws for that
    augmentation (``crop``: a random crop of the image zero-padded by ``padding``; ``crop_flip``: also a random
    horizontal flip), after the fit to size.

    Handles the raw inputs a user has (a 28x28 PIL image for Fashion-MNIST is padded to 32x32; a 64x64 one is
    resized to 28 first; a PIL image of any mode, RGBA, LA, CMYK, palette, is converted to the model's channels as
    the data loader converts files, :class:`ToImage`) as well as what :func:`biotorch.data.load_split` returns.
    """
    info = DATASETS[info_or_name] if isinstance(info_or_name, str) else info_or_name
    if augment not in AUGMENTS:
        raise ValueError(f"augment must be one of {', '.join(map(repr, AUGMENTS))}, not {augment!r}")
    random = []
    if training and augment != "none":
        random.append(v2.RandomCrop(list(info.input_size[1:]), padding=padding))
        if augment == "crop_flip":
            random.append(v2.RandomHorizontalFlip())
    return v2.Compose([
        ToImage(info.in_chans), v2.Grayscale(1) if info.in_chans == 1 else v2.RGB(), fit(info), *random,
        v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(info.mean), list(info.std)),
    ])


def transforms(model_or_cfg, training: bool = False) -> v2.Compose:
    """The transform a model's metadata describes: a model (its ``pretrained_cfg``, timm's dict, which every
    biotorch model carries), timm's ``PretrainedCfg`` or its dict, or a ``biotorch.CheckpointRecord``. It is
    timm's ``create_transform(**resolve_data_config(model=...))`` for the cfg's size, ``crop_pct`` and
    interpolation, with the channels converted to the model's. With ``training``: the augmentation of the
    record's recipe (``augment``; none for a cfg that names no recipe). For a name or a checkpoint folder use
    ``biotorch.transforms(...)``.

    Example::

        >>> tf = biotorch.data.transforms(biotorch.create_model("lenet_fa.fashion_mnist", pretrained=True))
    """
    if isinstance(model_or_cfg, str):
        raise TypeError(f"biotorch.data.transforms takes a model or a CheckpointRecord; for a name use "
                        f"biotorch.transforms({model_or_cfg!r})")
    cfg = getattr(model_or_cfg, "pretrained_cfg", model_or_cfg)
    if cfg is None or isinstance(cfg, torch.nn.Module):
        raise ValueError("this model carries no pretrained_cfg (build it with biotorch.create_model or "
                         "timm.create_model); use biotorch.data.eval_transform(dataset_name) instead")
    cfg = cfg if isinstance(cfg, dict) else dataclasses.asdict(cfg)
    info = DatasetInfo.from_cfg(cfg)
    augment = (cfg.get("recipe") or {}).get("augment", "none") if training else "none"
    return eval_transform(info, training, augment)
