"""ImageNet ResNets (He et al. 2016): torchvision's ResNet with timm's fine-tuning API; no downloads."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet as tv_resnet

from ._head import PooledClassifierMixin, architecture, new_classifier

__all__ = ["ImageNetResNet", "resnet18", "resnet34", "resnet50"]


class ImageNetResNet(PooledClassifierMixin, tv_resnet.ResNet):
    """torchvision's ResNet plus ``in_chans``, ``forward_features``/``forward_head``, classifier reset.

    Parameter names match torchvision's, so its state dicts load unchanged; torchvision's ``avgpool`` is
    timm's ``global_pool``.

    Args:
        block: ``torchvision.models.resnet.BasicBlock`` or ``Bottleneck``.
        layers: blocks in each of the four stages.
        num_classes: outputs of the classifier (0 for none).
        in_chans: image channels; other than 3 replaces the stem convolution.
        global_pool: timm's pooling type (``"avg"``, ``"max"``, ``"avgmax"``, ``"catavgmax"``, or ``""`` for
            none with num_classes=0).
        drop_rate: dropout before the classifier.

    Example::

        >>> model = ImageNetResNet(tv_resnet.BasicBlock, [2, 2, 2, 2], num_classes=10)
        >>> model(torch.randn(1, 3, 224, 224)).shape
        torch.Size([1, 10])
    """

    classifier_attr = "fc"

    def __init__(
        self,
        block: type[tv_resnet.BasicBlock | tv_resnet.Bottleneck],
        layers: list[int],
        num_classes: int = 1000,
        in_chans: int = 3,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
        **kwargs,
    ) -> None:
        if num_classes < 0:
            raise ValueError(f"num_classes must be a positive integer, or 0 for no classifier; got {num_classes}")
        super().__init__(block, layers, num_classes=max(num_classes, 1), **kwargs)
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.default_input_size = (in_chans, 224, 224)
        self.num_features = self.fc.in_features
        del self.avgpool
        self.set_global_pool(global_pool, num_classes)
        if num_classes == 0 or self.head_hidden_size != self.num_features:
            self.fc = new_classifier(self.head_hidden_size, num_classes)
        expansion = block.expansion
        self.feature_info = [dict(num_chs=64, reduction=2, module="relu")] + [
            dict(num_chs=64 * 2 ** i * expansion, reduction=4 * 2 ** i, module=f"layer{i + 1}") for i in range(4)]
        if in_chans != 3:
            self.conv1 = nn.Conv2d(in_chans, 64, kernel_size=7, stride=2, padding=3, bias=False)
            nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")
        # In-place ReLUs fail when a learning rule wraps a layer's output in a custom autograd Function.
        for module in self.modules():
            if isinstance(module, nn.ReLU):
                module.inplace = False

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Last stage's feature maps, shape ``(batch, num_features, H/32, W/32)``."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)
        if self.drop_rate > 0.0:
            x = F.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.fc(x)


@architecture(ImageNetResNet, input_size=(3, 224, 224), default_data="imagefolder",
              pool_size=(7, 7), first_conv="conv1", feature_maps=5)
def resnet18(**kwargs) -> ImageNetResNet:
    """ResNet-18 for 224×224 images (He et al. 2016), 11.7M parameters with 1000 classes.

    Keyword arguments go to :class:`ImageNetResNet` (``num_classes``, ``in_chans``); no weights are loaded.
    """
    return ImageNetResNet(tv_resnet.BasicBlock, [2, 2, 2, 2], **kwargs)


@architecture(ImageNetResNet, input_size=(3, 224, 224), default_data="imagefolder",
              pool_size=(7, 7), first_conv="conv1", feature_maps=5)
def resnet34(**kwargs) -> ImageNetResNet:
    """ResNet-34 for 224×224 images (He et al. 2016), 21.8M parameters with 1000 classes.

    Keyword arguments go to :class:`ImageNetResNet` (``num_classes``, ``in_chans``); no weights are loaded.
    """
    return ImageNetResNet(tv_resnet.BasicBlock, [3, 4, 6, 3], **kwargs)


@architecture(ImageNetResNet, input_size=(3, 224, 224), default_data="imagefolder",
              pool_size=(7, 7), first_conv="conv1", feature_maps=5)
def resnet50(**kwargs) -> ImageNetResNet:
    """ResNet-50 for 224×224 images (He et al. 2016), 25.6M parameters with 1000 classes.

    Keyword arguments go to :class:`ImageNetResNet` (``num_classes``, ``in_chans``); no weights are loaded.
    """
    return ImageNetResNet(tv_resnet.Bottleneck, [3, 4, 6, 3], **kwargs)
