"""A multilayer perceptron on flattened images, and the classifier helper every architecture shares."""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ._head import ClassifierMixin, architecture, new_classifier

__all__ = ["MLP", "mlp"]


class MLP(ClassifierMixin, nn.Module):
    """Fully connected network: flatten, ``Linear -> activation`` per hidden layer, then a linear classifier.

    ``forward_features`` returns the last hidden layer: an MLP has no spatial feature maps.

    Args:
        num_classes: outputs of the classifier (0 for none).
        in_chans: image channels.
        img_size: image side, or ``(height, width)``; fixes the first layer's width.
        hidden_features: width of each hidden layer.
        act_layer: activation module class placed after each hidden layer.
        global_pool: only ``""`` (no pooling), for timm's interface.
        drop_rate: dropout before the classifier.

    Example::

        >>> model = MLP(num_classes=10, in_chans=1)
        >>> model(torch.randn(2, *model.default_input_size)).shape
        torch.Size([2, 10])
    """

    fixed_input_size = True  # the first layer reads the flattened image

    def __init__(
        self,
        num_classes: int = 10,
        in_chans: int = 1,
        img_size: int | tuple[int, int] = 32,
        hidden_features: Sequence[int] = (512, 256),
        act_layer: type[nn.Module] = nn.ReLU,
        global_pool: str = "",
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.set_global_pool(global_pool, num_classes)
        height, width = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.default_input_size = (in_chans, height, width)

        layers: OrderedDict[str, nn.Module] = OrderedDict(flatten=nn.Flatten(1))
        width_in = in_chans * height * width
        for index, width_out in enumerate(hidden_features, start=1):
            layers[f"fc{index}"] = nn.Linear(width_in, width_out)
            layers[f"act{index}"] = act_layer()
            width_in = width_out
        self.features = nn.Sequential(layers)
        self.num_features = self.head_hidden_size = width_in
        self.head = new_classifier(self.head_hidden_size, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.drop_rate > 0.0:
            x = F.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.head(x)


@architecture(MLP, input_size=(1, 32, 32), default_data="fashion_mnist")
def mlp(**kwargs) -> MLP:
    """MLP on flattened 32×32 images, hidden layers of 512 and 256 units, 0.66M parameters for one channel.

    Keyword arguments go to :class:`MLP` (``num_classes``, ``in_chans``, ``img_size``, ...).
    """
    return MLP(**kwargs)
