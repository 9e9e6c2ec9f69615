"""A multilayer perceptron on flattened images, and the classifier helper every architecture shares."""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from ._head import ClassifierMixin, new_classifier

__all__ = ["MLP", "mlp"]


class MLP(ClassifierMixin, nn.Module):
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

    fixed_input_size = True

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



def mlp(**kwargs) -> MLP:
    """MLP on flattened 32×32 images, hidden layers of 512 and 256 units, 0.66M parameters for one channel.

    Keyword arguments go to :class:`MLP` (``num_classes``, ``in_chans``, ``img_size``, ...).
    """
    return MLP(**kwargs)
