"""timm's fine-tuning API, shared by every architecture: ``forward`` = ``forward_head(forward_features(x))``,
``get_classifier`` and ``reset_classifier``."""
from __future__ import annotations

from torch import nn


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


class ClassifierMixin:
    """``forward``, ``get_classifier`` and ``reset_classifier`` for a model whose final layer is the
    attribute named ``classifier_attr`` and whose pooled features have ``num_features`` channels."""

    classifier_attr = "head"
    fixed_input_size = False  # True where flattening ties the layers to default_input_size's height and width

    def forward(self, x):
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return getattr(self, self.classifier_attr)

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        setattr(self, self.classifier_attr, new_classifier(self.num_features, num_classes, like=self))
