"""biotorch: learning rules beyond backprop as drop-in layers, a model registry and pretrained weights.

The package is a ladder, each floor importing only from below: ``functional`` (the mathematics), ``models``
(architectures that know no rule), ``files``, ``errors`` → ``rules``, ``data``, ``card`` → ``nn``, ``registry``
→ ``convert`` → ``hub``, ``metrics`` → ``weights`` (where weights come from), ``factory`` (``create_model``) →
``builder`` (architecture × rule with its weights) → ``entrypoints`` (timm's names), ``pretrained`` (models from
checkpoints) → ``training``, ``targets`` (what a command measures), ``testing`` (a rule's conformance kit) →
``robustness`` → ``publish`` → ``cli``. ``register_rule`` (``entrypoints``) adds a rule defined elsewhere.

Example::

    >>> import torch, torchvision, biotorch
    >>> model = biotorch.convert(torchvision.models.resnet18(num_classes=10), rule="fa")
    >>> model = biotorch.create_model("resnet20_dfa", num_classes=100)
    >>> model = biotorch.create_model("lenet_fa.fashion_mnist", pretrained=True)
"""
from . import data, hub, nn, registry, rules, testing
from .convert import (convert, exact_gradients, feedback_step, redraw_feedback, rule_layers, set_targets, summary,
                      to_torch)
from .entrypoints import discover_rules, register_rule, register_with_timm
from .factory import create_model, transforms
from .hub import save_pretrained
from .metrics import alignment, gradient_alignment
from .pretrained import from_pretrained, init_from
from .publish import push_to_hub
from .registry import CheckpointRecord, PretrainedCfg, get_pretrained_cfg, list_models
from .rules import RULES, Rule
from .version import __version__

register_with_timm()  # timm.create_model("resnet20_fa") works after `import biotorch`

__all__ = ["RULES", "CheckpointRecord", "Rule", "discover_rules", "register_rule", "PretrainedCfg", "__version__", "alignment", "convert", "create_model", "data",
           "exact_gradients", "feedback_step", "from_pretrained", "get_pretrained_cfg", "gradient_alignment", "hub",
           "init_from",
           "list_models", "nn", "push_to_hub", "redraw_feedback", "registry", "rule_layers", "rules",
           "save_pretrained", "set_targets", "summary", "testing", "to_torch", "transforms"]
