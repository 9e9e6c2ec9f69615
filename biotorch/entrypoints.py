"""Every biotorch name as a timm model: an entry point and a ``DefaultCfg`` registered with timm, so that
``timm.list_models``, ``timm.list_pretrained`` and ``timm.create_model("resnet20_fa")`` know it; and the way a
rule defined outside biotorch joins them (:func:`register_rule`, or an installed package's ``biotorch.rules``
entry point).

Each entry point checks its arguments as timm's own do and builds through :func:`biotorch.builder.build_model`.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
import warnings
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from timm.layers import register_notrace_module
from timm.models import register_model
from torch import nn

from .builder import build_model, rule_options
from .models import ARCHITECTURES
from .nn import LAYERS
from .registry import describe, model_names, split_name, timm_default_cfgs
from .rules import RULES, Rule, add_rule

__all__ = ["discover_rules", "load_plugin", "register_rule", "register_with_timm"]

ENTRY_POINT_GROUP = "biotorch.rules"  # an installed package's rules: [project.entry-points."biotorch.rules"]

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
        unknown = sorted(set(kwargs) - {*TIMM_ARGUMENTS, *BIOTORCH_ARGUMENTS, *rule_options()})
        if unknown:
            raise TypeError(f"{model_name} got unexpected argument(s) {', '.join(unknown)}; it takes "
                            f"{', '.join((*TIMM_ARGUMENTS, *BIOTORCH_ARGUMENTS))} and the options of its rule "
                            f"{rule}: {', '.join(RULES[rule].options) or 'none'}")
        return build_model(model_name, pretrained, **kwargs)

    entrypoint.__name__ = entrypoint.__qualname__ = model_name
    entrypoint.__module__ = __name__
    entrypoint.__doc__ = describe(model_name)
    return entrypoint


def _register_names(names) -> None:
    cfgs = timm_default_cfgs()
    for name in names:
        default_cfgs[name] = cfgs[name]
        globals()[name] = register_model(_entrypoint(name))  # timm lists it in this module's __all__


def register_with_timm() -> None:
    """Register every name with timm (entry point and ``DefaultCfg``: ``timm.list_models``,
    ``timm.list_pretrained``, ``timm.create_model``) and the rule layers as fx leaf modules (timm's feature
    extraction keeps them whole), after the rules of installed packages (:func:`discover_rules`). ``import
    biotorch`` does it."""
    if default_cfgs:
        return
    _register_names(model_names())
    for layer in set(LAYERS.values()):
        register_notrace_module(layer)
    discover_rules()


def register_rule(cls: type[Rule]) -> type[Rule]:
    """Make ``cls`` (a :class:`biotorch.Rule` subclass defined anywhere) a learning rule of biotorch, as the built-in
    ones are: ``create_model("resnet20_<name>")`` and the timm names, ``convert(model, rule=<name>)``,
    ``biotorch.nn``, ``biotorch list``, recipes and ``--rule``, checkpoints (their config.json names the module
    that defines the rule). Usable as a decorator; registering the same class again does nothing.

    Example::

        >>> @biotorch.register_rule
        ... class SignFA(biotorch.rules.FA):
        ...     \"\"\"fa with sign(B): ...\"\"\"
        ...     name = "signfa"
        >>> biotorch.create_model("lenet_signfa")
    """
    name = cls.__dict__.get("name") if isinstance(cls, type) else None
    if isinstance(name, str) and name not in RULES:  # add_rule checks the rest
        taken = {*ARCHITECTURES, *model_names()}
        for arch in ARCHITECTURES:
            if f"{arch}_{name}" in taken:
                raise ValueError(f"rule name {name!r}: {arch}_{name} would name two models ({arch} with this rule, "
                                 f"and the {arch}_{name} there is); choose another name")
    if add_rule(cls) and default_cfgs:
        _register_names(f"{arch}_{cls.name}" for arch in ARCHITECTURES)
    return cls


def discover_rules() -> list[str]:
    """Register the rules that installed packages declare in the ``biotorch.rules`` entry-point group (each entry
    a Rule subclass); returns their names. A rule's name is its class's ``name``: the entry point's own name is only
    a label. A broken plug-in is skipped with a warning naming it, never breaking ``import biotorch``; one whose
    module registered its rules itself (``@register_rule``) while the entry point names nothing is told so."""
    found = []
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        try:
            cls = entry.load()
            register_rule(cls)
            found.append(cls.name)
        except KeyboardInterrupt:
            raise
        except BaseException as error:  # a plug-in's own bug, even a sys.exit at import, must not stop biotorch
            itself = [name for name, rule in RULES.items() if rule.__module__ == entry.module]
            if itself:  # the module imported and registered its rules (@register_rule): only the entry point is wrong
                warnings.warn(f"biotorch: the {ENTRY_POINT_GROUP} entry point {entry.name!r} = {entry.value} names no "
                              f"rule ({type(error).__name__}: {error}); its module registered {', '.join(itself)} "
                              "itself, which can be used: fix the entry point", stacklevel=2)
            else:
                warnings.warn(f"biotorch: the rule {entry.name!r} of {entry.value} ({ENTRY_POINT_GROUP} entry point) "
                              f"was not registered: {type(error).__name__}: {error}", stacklevel=2)
    return found


def load_plugin(plugin: str):
    """Import ``plugin``, a module that registers rules (:func:`register_rule`) and is not an installed package's
    entry point: a module name (``my_rules``, ``lab.rules``; the working directory is searched last, as
    ``python -m`` does first) or a ``.py`` file, imported under its file name (refused when that name is another
    module's: ``json.py``, a second ``myrules.py``). ``biotorch --plugin`` does it
    before a command; a checkpoint of its rule then records that module name. Returns the module."""
    try:
        if plugin.endswith(".py"):
            path = Path(plugin)
            if not path.is_file():
                raise FileNotFoundError(f"no file at {path}")
            name = path.stem
            taken = sys.modules.get(name)
            found = importlib.util.find_spec(name) if taken is None and name.isidentifier() else None
            where = getattr(taken, "__file__", None) if taken is not None else found and found.origin
            if (taken or found) and (not where or Path(where).resolve() != path.resolve()):
                raise ImportError(f"its module name {name!r} is taken by {where or 'a module'}: rename the file")
            if taken is not None:  # this very file, imported already
                return taken
            spec = importlib.util.spec_from_file_location(name, path)
            module = sys.modules[name] = importlib.util.module_from_spec(spec)
            try:
                spec.loader.exec_module(module)
            except BaseException:
                del sys.modules[name]
                raise
            return module
        if "" not in sys.path and str(Path.cwd()) not in sys.path:
            sys.path.append(str(Path.cwd()))
        return importlib.import_module(plugin)
    except KeyboardInterrupt:
        raise
    except BaseException as error:  # the plug-in's own code (a sys.exit too): one line naming it, whatever went wrong
        raise ImportError(f"the plug-in {plugin!r} could not be imported: {type(error).__name__}: {error}") from None
