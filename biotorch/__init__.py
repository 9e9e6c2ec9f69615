"""biotorch: learning rules beyond backprop as drop-in layers, a model registry and pretrained weights.

Example::

    >>> import torch, torchvision, biotorch
    >>> model = biotorch.convert(torchvision.models.resnet18(num_classes=10), rule="fa")
    >>> model = biotorch.create_model("resnet20_dfa", num_classes=100)
    >>> model = biotorch.create_model("lenet_fa.fashion_mnist", pretrained=True)
"""
__version__ = "0.1.0"

from . import data, hub, nn, registry, rules
from .convert import convert, exact_gradients, feedback_step, redraw_feedback, rule_layers, summary
from .hub import from_pretrained, push_to_hub, save_pretrained
from .metrics import alignment, gradient_alignment
from .registry import PretrainedCfg, create_model, get_pretrained_cfg, list_models
from .rules import RULES

registry.register_with_timm()  # timm.create_model("resnet20_fa") works after `import biotorch`

__all__ = ["RULES", "PretrainedCfg", "alignment", "convert", "create_model", "data", "exact_gradients",
           "feedback_step", "from_pretrained", "get_pretrained_cfg", "gradient_alignment", "hub", "list_models",
           "nn", "push_to_hub", "redraw_feedback", "registry", "rule_layers", "rules", "save_pretrained",
           "summary"]
