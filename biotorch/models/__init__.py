"""Architectures as plain ``nn.Module``s that know nothing about learning rules.

Every model takes ``num_classes``, ``in_chans``, ``global_pool`` and ``drop_rate``, has
``default_input_size`` (C, H, W), and offers timm's ``forward_features`` / ``forward_head`` /
``get_classifier`` / ``reset_classifier``, ``num_features`` and ``head_hidden_size``; CNNs list their
feature maps in ``feature_info``. Its learnable layers are only ``nn.Conv2d``, ``nn.Linear`` and norm
layers, so a learning rule converts any of them. ``DEFAULT_CFGS`` states what timm's ``pretrained_cfg``
says about each architecture at its defaults.

Example::

    >>> from biotorch.models import ARCHITECTURES
    >>> model = ARCHITECTURES["resnet20"](num_classes=10, in_chans=3)
    >>> model(torch.randn(2, *model.default_input_size)).shape
    torch.Size([2, 10])
"""
from __future__ import annotations

from collections.abc import Callable

from torch import nn

from .lenet import LeNet, lenet, lenet_tanh
from .mixer import MlpMixer, mixer_s4
from .mlp import MLP, mlp
from .resnet_cifar import CifarResNet, resnet20, resnet32, resnet44, resnet56, resnet110
from .resnet_imagenet import ImageNetResNet, resnet18, resnet34, resnet50

__all__ = [
    "ARCHITECTURES",
    "DEFAULT_CFGS",
    "CifarResNet",
    "ImageNetResNet",
    "LeNet",
    "MLP",
    "MlpMixer",
    "lenet",
    "lenet_tanh",
    "mixer_s4",
    "mlp",
    "resnet18",
    "resnet20",
    "resnet32",
    "resnet34",
    "resnet44",
    "resnet50",
    "resnet56",
    "resnet110",
]

# Name -> factory taking ``num_classes=``, ``in_chans=`` and architecture-specific keyword arguments.
# The first line of each factory's docstring is the one-line description users see.
ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    factory.__name__: factory
    for factory in (lenet, lenet_tanh, mlp, resnet20, resnet32, resnet44, resnet56, resnet110,
                    resnet18, resnet34, resnet50, mixer_s4)
}

# timm's cfg fields of each architecture at its defaults, plus how many feature maps ``feature_info`` lists
# and whether it takes an ``img_size`` (the image size is built into its layers: mlp, mixer): each declared
# beside its model (``@architecture``).
DEFAULT_CFGS: dict[str, dict] = {name: factory.default_cfg for name, factory in ARCHITECTURES.items()}
