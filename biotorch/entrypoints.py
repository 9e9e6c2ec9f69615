"""Every biotorch name as a timm model: an entry point and a ``DefaultCfg`` registered with timm, so that
``timm.list_models``, ``timm.list_pretrained`` and ``timm.create_model("resnet20_fa")`` know it.

Each entry point checks its arguments as timm's own do and builds through :func:`biotorch.builder.build_model`.
"""
from __future__ import annotations

from typing import Any

from timm.layers import register_notrace_module
from timm.models import register_model
from torch import nn

from .builder import RULE_OPTIONS, build_model
from .nn import LAYERS
from .registry import describe, model_names, split_name, timm_default_cfgs
from .rules import RULES

__all__ = ["register_with_timm"]

# timm's factory arguments every name takes (timm drops those given as None), then biotorch's own. Options of
# a learning rule go to the rule, which refuses another rule's with a ValueError; anything else is a
# TypeError, as in timm.
TIMM_ARGUMENTS = ("pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "cache_dir", "num_classes", "in_chans",
                  "img_size", "global_pool", "drop_rate", "features_only", "out_indices", "feature_cls", "device",
                  "dtype")
BIOTORCH_ARGUMENTS = ("seed", "checkpoint")

default_cfgs: dict = {}  # timm's register_model reads each name's DefaultCfg from its module's default_cfgs


def _entrypoint(model_name: str):
    _, rule, _ = split_name(model_name)

    def entrypoint(pretrained: bool = False, **kwargs: Any) -> nn.Module:
        unknown = sorted(set(kwargs) - {*TIMM_ARGUMENTS, *BIOTORCH_ARGUMENTS, *RULE_OPTIONS})
        if unknown:
            raise TypeError(f"{model_name} got unexpected argument(s) {', '.join(unknown)}; it takes "
                            f"{', '.join((*TIMM_ARGUMENTS, *BIOTORCH_ARGUMENTS))} and the options of its rule "
                            f"{rule}: {', '.join(RULES[rule].options) or 'none'}")
        return build_model(model_name, pretrained, **kwargs)

    entrypoint.__name__ = entrypoint.__qualname__ = model_name
    entrypoint.__module__ = __name__
    entrypoint.__doc__ = describe(model_name)
    return entrypoint


def register_with_timm() -> None:
    """Register every name with timm (entry point and ``DefaultCfg``: ``timm.list_models``,
    ``timm.list_pretrained``, ``timm.create_model``) and the rule layers as fx leaf modules (timm's feature
    extraction keeps them whole). ``import biotorch`` does it."""
    if default_cfgs:
        return
    default_cfgs.update(timm_default_cfgs())
    for name in model_names():
        globals()[name] = register_model(_entrypoint(name))  # timm lists it in this module's __all__
    for layer in set(LAYERS.values()):
        register_notrace_module(layer)
