"""ResNets for 32×32 images (He et al. 2016, section 4.2): depth 6n+2, 16/32/64 channels, option A."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._head import PooledClassifierMixin, architecture, new_classifier

__all__ = ["CifarResNet", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110"]


class ZeroPadShortcut(nn.Module):
    """He et al.'s option A shortcut: subsample spatially and zero-pad the new channels; no parameters.

    Being parameter-free keeps ResNet-20 at the paper's 0.27M parameters and leaves nothing
    on the skip path for a learning rule to convert.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.pad_front = (out_channels - in_channels) // 2
        self.pad_back = out_channels - in_channels - self.pad_front

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad_front, self.pad_back))

    def extra_repr(self) -> str:
        return f"stride={self.stride}, pad_channels=({self.pad_front}, {self.pad_back})"


class BasicBlock(nn.Module):
    """Two 3×3 convolutions with batch norm, added to the (possibly zero-padded) input."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.act2 = nn.ReLU()
        if stride != 1 or in_channels != out_channels:
            self.shortcut: nn.Module = ZeroPadShortcut(in_channels, out_channels, stride)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act2(out + self.shortcut(x))


class CifarResNet(PooledClassifierMixin, nn.Module):
    """ResNet for 32×32 images: a 3×3 stem, then three stages of n basic blocks (16, 32, 64 channels).

    Args:
        depth: 6n+2 layers with weights: 20, 32, 44, 56, 110, ...
        num_classes: outputs of the classifier (0 for none).
        in_chans: image channels.
        global_pool: timm's pooling type (``"avg"``, ``"max"``, ``"avgmax"``, ``"catavgmax"``, or ``""`` for
            none with num_classes=0).
        drop_rate: dropout before the classifier.

    Example::

        >>> model = CifarResNet(depth=20, num_classes=10)
        >>> sum(p.numel() for p in model.parameters())
        269722
        >>> model(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """

    classifier_attr = "fc"

    def __init__(self, depth: int = 20, num_classes: int = 10, in_chans: int = 3, global_pool: str = "avg",
                 drop_rate: float = 0.0) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6 != 0:
            raise ValueError(f"CifarResNet depth must be 6n+2 with n >= 1 (20, 32, 44, 56, 110, ...), got {depth}")
        blocks_per_stage = (depth - 2) // 6
        self.depth = depth
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.default_input_size = (in_chans, 32, 32)

        self.conv1 = nn.Conv2d(in_chans, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.act1 = nn.ReLU()
        self.layer1 = self._make_stage(16, 16, blocks_per_stage, stride=1)
        self.layer2 = self._make_stage(16, 32, blocks_per_stage, stride=2)
        self.layer3 = self._make_stage(32, 64, blocks_per_stage, stride=2)
        self.num_features = 64
        self.set_global_pool(global_pool, num_classes)
        self.fc = new_classifier(self.head_hidden_size, num_classes)
        self.feature_info = [dict(num_chs=16, reduction=1, module="act1"),
                             *[dict(num_chs=16 * 2 ** i, reduction=2 ** i, module=f"layer{i + 1}") for i in range(3)]]

        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    @staticmethod
    def _make_stage(in_channels: int, out_channels: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [BasicBlock(in_channels, out_channels, stride)]
        layers += [BasicBlock(out_channels, out_channels) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Last stage's feature maps, shape ``(batch, 64, H/4, W/4)``."""
        x = self.act1(self.bn1(self.conv1(x)))
        return self.layer3(self.layer2(self.layer1(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)
        if self.drop_rate > 0.0:
            x = F.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.fc(x)


@architecture(CifarResNet, input_size=(3, 32, 32), default_data="cifar10_jpeg",
              pool_size=(8, 8), first_conv="conv1", feature_maps=4)
def resnet20(**kwargs) -> CifarResNet:
    """ResNet-20 for 32×32 images (He et al. 2016), 0.27M parameters.

    Keyword arguments go to :class:`CifarResNet` (``num_classes``, ``in_chans``).
    """
    return CifarResNet(depth=20, **kwargs)


@architecture(CifarResNet, input_size=(3, 32, 32), default_data="cifar10_jpeg",
              pool_size=(8, 8), first_conv="conv1", feature_maps=4)
def resnet32(**kwargs) -> CifarResNet:
    """ResNet-32 for 32×32 images (He et al. 2016), 0.46M parameters.

    Keyword arguments go to :class:`CifarResNet` (``num_classes``, ``in_chans``).
    """
    return CifarResNet(depth=32, **kwargs)


@architecture(CifarResNet, input_size=(3, 32, 32), default_data="cifar10_jpeg",
              pool_size=(8, 8), first_conv="conv1", feature_maps=4)
def resnet44(**kwargs) -> CifarResNet:
    """ResNet-44 for 32×32 images (He et al. 2016), 0.66M parameters.

    Keyword arguments go to :class:`CifarResNet` (``num_classes``, ``in_chans``).
    """
    return CifarResNet(depth=44, **kwargs)


@architecture(CifarResNet, input_size=(3, 32, 32), default_data="cifar10_jpeg",
              pool_size=(8, 8), first_conv="conv1", feature_maps=4)
def resnet56(**kwargs) -> CifarResNet:
    """ResNet-56 for 32×32 images (He et al. 2016), 0.85M parameters.

    Keyword arguments go to :class:`CifarResNet` (``num_classes``, ``in_chans``).
    """
    return CifarResNet(depth=56, **kwargs)


@architecture(CifarResNet, input_size=(3, 32, 32), default_data="cifar10_jpeg",
              pool_size=(8, 8), first_conv="conv1", feature_maps=4)
def resnet110(**kwargs) -> CifarResNet:
    """ResNet-110 for 32×32 images (He et al. 2016), 1.7M parameters.

    Keyword arguments go to :class:`CifarResNet` (``num_classes``, ``in_chans``).
    """
    return CifarResNet(depth=110, **kwargs)
