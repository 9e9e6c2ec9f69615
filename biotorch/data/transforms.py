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
from torchvision.transforms import v2

from .catalog import DATASETS, DatasetInfo


def fit(info: DatasetInfo) -> v2.Compose:
    """Bring an image (C, H, W) to ``info.input_size``: resize to size / crop_pct where the dataset's
    images vary in size (imagefolder, crop_pct < 1), then centre-crop (which zero-pads smaller images:
    MNIST 28 → 32)."""
    size = list(info.input_size[1:])
    steps: list[v2.Transform] = []
    if info.crop_pct < 1:
        steps.append(v2.Resize(round(size[0] / info.crop_pct), antialias=True,
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
    """The eval transform a model's metadata describes: a model (its ``pretrained_cfg``, timm's dict, which
    every biotorch model carries), timm's ``PretrainedCfg`` or its dict, or a ``biotorch.CheckpointRecord``.
    On images of the cfg's input size it is timm's ``create_transform(**resolve_data_config(model=...))``
    (which resizes every image; this one resizes only where crop_pct < 1). For a name use
    ``biotorch.transforms("lenet_fa.fashion_mnist")``.

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
    input_size, mean, std = tuple(cfg["input_size"]), tuple(cfg["mean"]), tuple(cfg["std"])
    if "dataset" in cfg:  # a biotorch.CheckpointRecord: its dataset says how images are brought to size
        info = dataclasses.replace(DATASETS[cfg["dataset"]], mean=mean, std=std, input_size=input_size)
    else:  # timm's cfg says it with crop_pct
        info = DatasetInfo("", cfg.get("num_classes"), tuple(cfg.get("label_names") or ()), input_size[0],
                           input_size, mean, std, None, None, None, cfg["interpolation"], "", cfg["crop_pct"])
    return eval_transform(info)
