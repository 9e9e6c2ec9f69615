"""biotorch: learning rules beyond backprop as drop-in layers, a model registry and pretrained weights.

Example::

    >>> import torch, torchvision, biotorch
    >>> model = biotorch.convert(torchvision.models.resnet18(num_classes=10), rule="fa")
    >>> biotorch.alignment(model)["fc"]["angle"]
"""
__version__ = "0.1.0"

from . import nn, rules
from .convert import convert, exact_gradients, feedback_step, redraw_feedback, rule_layers, summary
from .metrics import alignment, gradient_alignment
from .rules import RULES

__all__ = ["RULES", "alignment", "convert", "exact_gradients", "feedback_step", "gradient_alignment", "nn",
           "redraw_feedback", "rule_layers", "rules", "summary"]

from .registry import PretrainedCfg, create_model, get_pretrained_cfg, list_models

registry.register_with_timm()
__all__ += ["PretrainedCfg", "create_model", "get_pretrained_cfg", "list_models"]
