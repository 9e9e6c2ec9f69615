"""LeNet-5 for 32×32 images, as in the BioTorch benchmarks (Sanfiz & Akrout 2021)."""
from __future__ import annotations

from typing import Union

import torch
import torch.nn.functional as F
from timm.layers import get_act_layer
from torch import nn

from ._head import ClassifierMixin, architecture, new_classifier

__all__ = ["LeNet", "lenet", "lenet_tanh"]


class LeNet(ClassifierMixin, nn.Module):
    """LeNet-5 with max pooling: two 5×5 convolutions, then three fully connected layers; ReLU units by default.

    Expects 32×32 images; 28×28 MNIST-style images are padded to 32×32 by the data transform.
    The upstream benchmark writes the 120-unit layer as a 5×5 convolution over the 5×5 map,
    which is the same function and parameter count as the ``fc1`` linear layer here.

    It has no global pooling: the head flattens the 16×5×5 map (``forward_features``) and passes it through
    two hidden layers (``forward_head(x, pre_logits=True)``: 84 features) before the classifier.

    Args:
        num_classes: outputs of the classifier (0 for none).
        in_chans: image channels, 1 for (Fashion-)MNIST, 3 for CIFAR.
        global_pool: only ``""`` (no pooling), for timm's interface.
        drop_rate: dropout before the classifier.
        act_layer: the hidden units' activation, a name timm knows (``"relu"``, ``"tanh"``, ...) or a module class.

    Example::

        >>> model = LeNet(num_classes=10, in_chans=1)
        >>> model(torch.randn(2, 1, 32, 32)).shape
        torch.Size([2, 10])
    """

    fixed_input_size = True  # fc1 reads a 16×5×5 map: 32×32 images only

    def __init__(self, num_classes: int = 10, in_chans: int = 3, global_pool: str = "", drop_rate: float = 0.0,
                 act_layer: Union[str, type[nn.Module]] = "relu") -> None:
        super().__init__()
        self.set_global_pool(global_pool, num_classes)
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.default_input_size = (in_chans, 32, 32)
        act_layer = get_act_layer(act_layer)

        self.conv1 = nn.Conv2d(in_chans, 6, kernel_size=5)
        self.act1 = act_layer()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(6, 16, kernel_size=5)
        self.act2 = act_layer()
        self.pool2 = nn.MaxPool2d(2)
        self.flatten = nn.Flatten(1)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.act3 = act_layer()
        self.fc2 = nn.Linear(120, 84)
        self.act4 = act_layer()
        self.num_features = 16
        self.head_hidden_size = 84
        self.head = new_classifier(self.head_hidden_size, num_classes)
        self.feature_info = [dict(num_chs=6, reduction=2, module="pool1"),
                             dict(num_chs=16, reduction=4, module="pool2")]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Convolutional feature maps, shape ``(batch, 16, 5, 5)``."""
        x = self.pool1(self.act1(self.conv1(x)))
        return self.pool2(self.act2(self.conv2(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.act3(self.fc1(self.flatten(x)))
        x = self.act4(self.fc2(x))
        if self.drop_rate > 0.0:
            x = F.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.head(x)


@architecture(LeNet, input_size=(3, 32, 32), default_data="fashion_mnist",
              pool_size=(5, 5), first_conv="conv1", feature_maps=2)
def lenet(**kwargs) -> LeNet:
    """LeNet-5 for 32×32 images, as in the BioTorch benchmarks (Sanfiz & Akrout 2021), 0.06M parameters.

    Keyword arguments go to :class:`LeNet` (``num_classes``, ``in_chans``, ``drop_rate``).
    """
    return LeNet(**kwargs)


@architecture(LeNet, input_size=(3, 32, 32), default_data="fashion_mnist",
              pool_size=(5, 5), first_conv="conv1", feature_maps=2)
def lenet_tanh(**kwargs) -> LeNet:
    """LeNet-5 with tanh units, 0.06M parameters: the setting of DRTP (Frenkel et al. 2021), whose signal never shrinks.

    A rule that sends a layer the targets instead of an error keeps pushing its units as the model learns;
    tanh units saturate, which ends the push, and ReLU units do not (LeNet's activity grows without bound).

    Keyword arguments go to :class:`LeNet` (``num_classes``, ``in_chans``, ``drop_rate``).
    """
    return LeNet(act_layer="tanh", **kwargs)
