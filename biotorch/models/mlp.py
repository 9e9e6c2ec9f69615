"""A multilayer perceptron on flattened images, and the classifier helper every architecture shares."""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["MLP", "mlp", "new_classifier"]


def new_classifier(in_features: int, num_classes: int, like: nn.Module | None = None) -> nn.Module:
    """A freshly initialised ``nn.Linear(in_features, num_classes)``, or ``nn.Identity`` for 0 classes.

    ``like`` places the new layer on the device and dtype of that module's parameters, so
    ``reset_classifier`` works on a model already moved to a GPU or to half precision.

    Example::

        >>> new_classifier(84, 5)
        Linear(in_features=84, out_features=5, bias=True)
    """
    if num_classes < 0:
        raise ValueError(f"num_classes must be a positive integer, or 0 for no classifier; got {num_classes}")
    if num_classes == 0:
        return nn.Identity()  # timm's convention: a model without a head returns pooled features
    reference = next(like.parameters(), None) if like is not None else None
    device = reference.device if reference is not None else None
    dtype = reference.dtype if reference is not None else None
    return nn.Linear(in_features, num_classes, device=device, dtype=dtype)


class MLP(nn.Module):
    """Fully connected network: flatten, ``Linear -> activation`` per hidden layer, then a linear classifier.

    Args:
        num_classes: outputs of the classifier (0 for none).
        in_chans: image channels.
        img_size: image side, or ``(height, width)``; fixes the first layer's width.
        hidden_features: width of each hidden layer.
        act_layer: activation module class placed after each hidden layer.

    Example::

        >>> model = MLP(num_classes=10, in_chans=1)
        >>> model(torch.randn(2, *model.default_input_size)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_chans: int = 1,
        img_size: int | tuple[int, int] = 32,
        hidden_features: Sequence[int] = (512, 256),
        act_layer: type[nn.Module] = nn.ReLU,
    ) -> None:
        super().__init__()
        height, width = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.default_input_size = (in_chans, height, width)

        layers: OrderedDict[str, nn.Module] = OrderedDict(flatten=nn.Flatten(1))
        width_in = in_chans * height * width
        for index, width_out in enumerate(hidden_features, start=1):
            layers[f"fc{index}"] = nn.Linear(width_in, width_out)
            layers[f"act{index}"] = act_layer()
            width_in = width_out
        self.features = nn.Sequential(layers)
        self.num_features = width_in
        self.head = new_classifier(self.num_features, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.head = new_classifier(self.num_features, num_classes, like=self)


def mlp(**kwargs) -> MLP:
    """MLP on flattened 32×32 images, hidden layers of 512 and 256 units, 0.66M parameters for one channel.

    Keyword arguments go to :class:`MLP` (``num_classes``, ``in_chans``, ``img_size``, ...).
    """
    return MLP(**kwargs)
