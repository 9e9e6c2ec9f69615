"""Evaluation preprocessing: one resize/crop for every path that brings an image to a model's input size.

Example::

    >>> from PIL import Image
    >>> t = eval_transform("fashion_mnist")
    >>> t(Image.open("samples/fashion_mnist/0000_ankle_boot.png")).shape
    torch.Size([1, 32, 32])
"""
from __future__ import annotations

from dataclasses import replace

import torch
from torchvision.transforms import v2

from .catalog import CROP_PCT, DATASETS, DatasetInfo


def fit(info: DatasetInfo) -> v2.Compose:
    """Bring an image (C, H, W) to ``info.input_size``: resize to size / CROP_PCT where the dataset's
    images vary in size (imagefolder), then centre-crop (which zero-pads smaller images: MNIST 28 → 32)."""
    size = list(info.input_size[1:])
    steps: list[v2.Transform] = []
    if info.name == "imagefolder":
        steps.append(v2.Resize(round(size[0] / CROP_PCT), antialias=True,
                               interpolation=v2.InterpolationMode(info.interpolation)))
    return v2.Compose([*steps, v2.CenterCrop(size)])


def eval_transform(info_or_name: DatasetInfo | str) -> v2.Compose:
    """The evaluation preprocessing of a dataset: PIL image or uint8 tensor -> normalised float.

    Handles the raw inputs a user has (a 28x28 PIL image for Fashion-MNIST is padded to 32x32;
    colour and grayscale are converted to the model's channel count) as well as what
    :func:`biotorch.data.load_split` returns.
    """
    info = DATASETS[info_or_name] if isinstance(info_or_name, str) else info_or_name
    return v2.Compose([
        v2.ToImage(), v2.Grayscale(1) if info.in_chans == 1 else v2.RGB(), fit(info),
        v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(info.mean), list(info.std)),
    ])


def transforms(model_or_cfg) -> v2.Compose:
    """The eval transform of a pretrained checkpoint, from its metadata: a model created with a tag (its
    ``pretrained_cfg``) or a ``PretrainedCfg``. For a name use ``biotorch.transforms("lenet_fa.fashion_mnist")``.

    Example::

        >>> tf = biotorch.data.transforms(biotorch.create_model("lenet_fa.fashion_mnist", pretrained=True))
    """
    if isinstance(model_or_cfg, str):
        raise TypeError(f"biotorch.data.transforms takes a model or a PretrainedCfg; for a name use "
                        f"biotorch.transforms({model_or_cfg!r})")
    cfg = getattr(model_or_cfg, "pretrained_cfg", model_or_cfg)
    if cfg is None or isinstance(cfg, torch.nn.Module):
        raise ValueError("this model has no pretrained metadata (create it with a tag, e.g. "
                         "'lenet_fa.fashion_mnist'); use biotorch.data.eval_transform(dataset_name) instead")
    get = cfg.get if isinstance(cfg, dict) else lambda key: getattr(cfg, key)
    info = replace(DATASETS[get("dataset")], mean=tuple(get("mean")), std=tuple(get("std")),
                   input_size=tuple(get("input_size")))
    return eval_transform(info)
