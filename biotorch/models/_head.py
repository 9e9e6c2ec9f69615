"""timm's model interface, shared by every architecture: ``forward`` = ``forward_head(forward_features(x))``,
``get_classifier``, ``reset_classifier(num_classes, global_pool)``, ``num_features`` (channels of
``forward_features``), ``head_hidden_size`` (width of ``forward_head(x, pre_logits=True)``) and, for CNNs,
``feature_info`` (the feature maps ``features_only`` returns)."""
from __future__ import annotations

import functools
import inspect
from typing import Callable, Optional

import torch
from timm.layers import SelectAdaptivePool2d
from torch import nn

# timm's global pooling types for a feature map ("" = none: the map itself, for num_classes=0)
POOL_TYPES = ("avg", "max", "avgmax", "catavgmax", "")


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


def check_global_pool(global_pool: str, allowed: tuple[str, ...], num_classes: int, arch: str) -> str:
    """``global_pool`` if the architecture offers it. Where "" is one choice among poolings it leaves the map
    unpooled, which only a model without a classifier takes; where it is the only one (no global pooling:
    the head reads the whole map) any head does."""
    if global_pool not in allowed:
        raise ValueError(f"{arch}: global_pool must be one of {', '.join(map(repr, allowed))}; got {global_pool!r}")
    if global_pool == "" and num_classes > 0 and allowed != ("",):
        raise ValueError(f"{arch}: global_pool='' leaves the feature map unpooled, which only num_classes=0 "
                         "(no classifier) accepts: pass global_pool='avg' with a classifier")
    return global_pool


def pool_layer(global_pool: str, num_classes: int, arch: str) -> SelectAdaptivePool2d:
    """timm's global pooling of a feature map (flattened, unless there is no pooling)."""
    check_global_pool(global_pool, POOL_TYPES, num_classes, arch)
    return SelectAdaptivePool2d(pool_type=global_pool, flatten=bool(global_pool))


def architecture(model_class: type, *, input_size: tuple[int, int, int], default_data: str,
                 pool_size: Optional[tuple[int, int]] = None, first_conv: Optional[str] = None, feature_maps: int = 0):
    """Declare an architecture's factory (``resnet20``) beside its model, with what timm's ``pretrained_cfg`` says of
    it at its defaults (timm's ``_cfg``): the factory gets ``default_cfg``, and the models it builds carry its name
    as ``arch_name``, which their messages use.

    ``input_size``, ``pool_size`` (the last feature map's size), ``first_conv``, ``feature_maps`` (how many
    ``feature_info`` lists) and ``default_data`` (the dataset of the tag its untagged name resolves to, as timm's
    first listed tag) are stated; the classifier, ``fixed_input_size``, the default ``num_classes`` and whether it
    takes an ``img_size`` are read from ``model_class``. tests/test_models.py checks each against an instance.
    """
    params = inspect.signature(model_class).parameters

    def declare(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        @functools.wraps(factory)
        def build(**kwargs) -> nn.Module:
            model = factory(**kwargs)
            model.arch_name = factory.__name__
            return model

        build.default_cfg = dict(input_size=input_size, num_classes=params["num_classes"].default,
                                 fixed_input_size=model_class.fixed_input_size, first_conv=first_conv,
                                 classifier=model_class.classifier_attr, pool_size=pool_size,
                                 feature_maps=feature_maps, img_size="img_size" in params, default_data=default_data)
        return build

    return declare


class ClassifierMixin:
    """timm's classifier API for a model whose final layer is the attribute named ``classifier_attr`` and
    whose ``forward_head(x, pre_logits=True)`` returns ``head_hidden_size`` features.

    Architectures without global pooling accept only ``global_pool=""`` (their head reads the whole map);
    those with pooling override :meth:`set_global_pool`.
    """

    classifier_attr = "head"
    fixed_input_size = False  # True when the layers fix the image size (timm's ``fixed_input_size``)
    feature_info = ()         # CNNs list their feature maps (timm's dicts: num_chs, reduction, module)

    def forward(self, x):
        if not torch.jit.is_scripting():  # TorchScript compiles no check
            self.check_input(x)
        return self.forward_head(self.forward_features(x))

    @torch.jit.unused
    def check_input(self, x) -> None:
        """A wrong input shape is named here, rather than as a matrix-multiply error deep inside the model."""
        channels, height, width = self.default_input_size
        if isinstance(x, torch.Tensor) and (x.dim() != 4 or x.shape[1] != channels or (
                self.fixed_input_size and tuple(x.shape[2:]) != (height, width))):
            size = f"{height}, {width}" if self.fixed_input_size else "H, W"
            name = getattr(self, "arch_name", type(self).__name__)
            raise ValueError(f"{name} takes images of shape (N, {channels}, {size}), got {tuple(x.shape)}")

    def get_classifier(self, name_only: bool = False) -> nn.Module | str:
        """The final layer, or with ``name_only`` its attribute name (timm's)."""
        return self.classifier_attr if name_only else getattr(self, self.classifier_attr)

    def set_global_pool(self, global_pool: Optional[str], num_classes: int) -> None:
        """Set the pooling before a head for ``num_classes`` (``None`` keeps the current one, checked)."""
        check_global_pool("" if global_pool is None else global_pool, ("",), num_classes, type(self).__name__)

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """A new, freshly initialised head for ``num_classes`` (0: none), in the model's train/eval mode;
        ``global_pool`` changes the pooling before it (``None`` keeps it)."""
        self.set_global_pool(global_pool, num_classes)
        head = new_classifier(self.head_hidden_size, num_classes, like=self)
        self.num_classes = num_classes
        setattr(self, self.classifier_attr, head.train(self.training))


class PooledClassifierMixin(ClassifierMixin):
    """:class:`ClassifierMixin` for a CNN whose head pools its ``num_features``-channel map with timm's
    ``SelectAdaptivePool2d`` (the attribute ``global_pool``): any of timm's pooling types."""

    default_pool = "avg"

    def set_global_pool(self, global_pool: Optional[str], num_classes: int) -> None:
        """``None`` keeps the current pooling, or returns to :attr:`default_pool` for a head after none (timm)."""
        pool_type = self.global_pool.pool_type if global_pool is None else global_pool
        if global_pool is None and pool_type == "" and num_classes > 0:
            pool_type = self.default_pool
        self.global_pool = pool_layer(pool_type, num_classes, type(self).__name__).train(self.training)
        self.head_hidden_size = self.num_features * self.global_pool.feat_mult()
