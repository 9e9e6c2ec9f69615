"""Training recipes: a YAML file plus command-line overrides, validated into one typed ``Recipe``.

Example::

    >>> recipe = load_recipe("recipes/fashion_mnist/lenet.yaml", overrides={"rule": "dfa", "seed": 1})
    >>> recipe.rule, recipe.lr          # rule_overrides: {dfa: {lr: ...}} of the file applied
    ('dfa', 0.01)
    >>> save_recipe(recipe, "runs/x/recipe.yaml")   # the resolved recipe, kept beside the run

Precedence, lowest first: the dataclass defaults, the file, the file's ``rule_overrides`` for the chosen
rule, the command line. The saved recipe is resolved (every value final) and loads back unchanged.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import reprlib
import shlex
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
import yaml

from ..data import AUGMENTS, DATASETS
from ..errors import ConfigError, close_matches
from ..factory import data_config
from ..files import REPO_ROOT, load_yaml, write_text
from ..models import ARCHITECTURES, DEFAULT_CFGS
from ..registry import get_pretrained_cfg, split_name
from ..rules import RULES, make_rule
from ..weights import kind, resolve

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("step", "cosine", "onecycle", "constant")
AMP = ("none", "bf16", "fp16", "auto")
WEIGHT_INITS = ("default", "xavier")
COMPILE = ("none", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "nearest-exact")  # what resizes a uint8 tensor
IMAGE_KEYS = ("img_size", "in_chans", "mean", "std", "interpolation")  # an image folder's, only


@dataclass
class Recipe:
    """Everything that determines a training run. Field comments say what is allowed."""

    model: str = ""                     # architecture (resnet20) or architecture_rule (resnet20_fa)
    data: str = ""                      # a biotorch.data.DATASETS name, or "synthetic"
    data_dir: Optional[str] = None      # where the dataset files are (default: biotorch.data's search)
    download: bool = False              # let torchvision download the dataset when it is not found
    val_size: Optional[int] = None      # images held out of train for validation (default: the dataset's)
    limit_train: Optional[int] = None   # train on N training images only, every class in turn (smoke runs)
    # An image folder's images (data: imagefolder), by default as the init_from checkpoint was trained (size,
    # channels, normalisation, interpolation, crop), else RGB with ImageNet statistics at the architecture's size:
    img_size: Optional[int] = None      # the side images are brought to (resized by crop_pct, centre-cropped)
    in_chans: Optional[int] = None      # 1 (grayscale) or 3 (RGB)
    mean: Optional[list[float]] = None  # normalisation, one value per channel
    std: Optional[list[float]] = None
    interpolation: Optional[str] = None  # bilinear | bicubic | nearest | nearest-exact
    epochs: int = 10
    batch_size: int = 128               # global batch: split across torchrun ranks
    eval_batch_size: int = 1024
    optimizer: str = "sgd"              # sgd | adam | adamw
    lr: float = 0.1
    momentum: float = 0.9               # sgd momentum
    nesterov: bool = False              # sgd only (momentum, nesterov are ignored by adam/adamw)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # adam / adamw
    weight_decay: float = 5e-4
    schedule: str = "cosine"            # step | cosine | onecycle | constant, stepped every batch
    milestones: list[float] = field(default_factory=list)  # step: epochs where lr is multiplied by gamma
    gamma: float = 0.1
    warmup_epochs: float = 0.0          # linear warmup from 0 (not for onecycle, which has its own)
    augment: str = "none"               # none | crop | crop_flip
    label_smoothing: float = 0.0
    weight_init: str = "default"        # default (each layer's own) | xavier: Glorot-uniform Conv/Linear weights, as
    #                                     BioTorch initialises (with rule option feedback_init: xavier for B)
    rule: Optional[str] = None          # overrides the model name's rule; default bp
    rule_options: dict = field(default_factory=dict)
    rule_overrides: dict = field(default_factory=dict)  # {rule: {key: value}} applied when that rule runs
    applied_rule_overrides: dict = field(default_factory=dict)  # set on resolving: what was applied
    # fine-tuning: start from a checkpoint (biotorch.init_from): a pretrained name (lenet_fa.fashion_mnist,
    # which also sets model and rule when they are not given), a checkpoint folder, or hf-hub:<org>/<repo>
    init_from: Optional[str] = None
    # Set on resolving: what a fine-tuning run took from init_from's recipe where neither the file nor the command
    # line said (PARENT_KEYS), as that recipe had it, with its batch_size and epochs; lr is then scaled to this
    # run's batch size (linearly for sgd, by the square root for adam/adamw), milestones and warmup_epochs to its
    # epochs.
    init_from_recipe: dict = field(default_factory=dict)
    backbone_lr_scale: float = 1.0      # everything but the head learns at lr × this (the head at lr)
    freeze_backbone: bool = False       # linear probing: only the head learns; the backbone's norm statistics stay
    freeze_backbone_epochs: int = 0     # the backbone is frozen (as above) for the first N epochs, then learns
    seed: int = 0
    deterministic: bool = False         # deterministic kernels (bitwise-reproducible resume on CPU)
    val_every: int = 1                  # validate every N epochs (and always at the last)
    alignment_every: int = 5            # record alignment every N epochs (0: never)
    amp: str = "none"                   # none | bf16 | fp16 autocast | auto (the fastest the device has)
    channels_last: bool = False
    compile: str = "none"               # torch.compile mode, or none
    cuda_graph: bool = False            # capture the whole training step in one CUDA graph
    device: str = "auto"                # auto | cpu | cuda | cuda:N

    @property
    def model_name(self) -> str:
        """The registry name of the model trained, e.g. ``resnet20_fa``."""
        return f"{self.model}_{self.rule}"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


FIELDS = {f.name: f for f in dataclasses.fields(Recipe)}
_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxdict, _REPR.maxstring, _REPR.maxother = 2, 4, 4, 40, 40
_TYPES = typing.get_type_hints(Recipe)
# Keys a rule override may not change: they decide which run this is.
_IDENTITY = ("model", "data", "rule", "rule_overrides", "applied_rule_overrides", "init_from_recipe", "seed")
# What a fine-tuning run takes from its checkpoint's recipe unless told otherwise: how the checkpoint learned, not
# what or how long. Each key brings the keys that go with its value ("*": with any); a key given with another value
# than the checkpoint's brings none of them (an sgd lr is no adam lr).
PARENT_KEYS = {"optimizer": {"*": ("lr", "weight_decay"), "sgd": ("momentum", "nesterov"), "adam": ("betas",),
                             "adamw": ("betas",)},
               "schedule": {"*": ("warmup_epochs",), "step": ("milestones", "gamma")},
               "augment": {}, "label_smoothing": {}}


def _unknown_key(key: str, where: str) -> ConfigError:
    close = difflib.get_close_matches(key, FIELDS, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    return ConfigError(f"{where}: unknown recipe key {key!r}.{hint} Known keys: {', '.join(FIELDS)}")


def _short(value: Any) -> str:
    """A bounded repr for messages: a recipe value can be huge (or a YAML alias bomb)."""
    return _REPR.repr(value)


def _coerce(key: str, value: Any) -> Any:
    """``value`` as the type of field ``key``; raises ValueError naming the key."""
    kind = _TYPES[key]
    optional = typing.get_origin(kind) is typing.Union and type(None) in typing.get_args(kind)
    if optional:
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        kind = next(a for a in typing.get_args(kind) if a is not type(None))
    base = typing.get_origin(kind) or kind
    bad = ConfigError(f"recipe key {key!r} must be {getattr(kind, '__name__', kind)}"
                      f"{' or null' if optional else ''}, got {_short(value)}")
    if base is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise bad
    if base is int:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise bad
    if base is float:
        if isinstance(value, bool):
            raise bad
        try:
            number = float(value)  # YAML reads 1e-3 as a string
        except (TypeError, ValueError):
            raise bad from None
        if not math.isfinite(number):
            raise ConfigError(f"recipe key {key!r} must be a finite number, got {_short(value)}")
        return number
    if base is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise bad
    if base is list:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise bad
        (item,) = typing.get_args(kind) or (float,)
        try:
            items = [item(v) for v in value]
        except (TypeError, ValueError):
            raise bad from None
        if not all(math.isfinite(v) for v in items if isinstance(v, float)):
            raise ConfigError(f"recipe key {key!r} must hold finite numbers, got {_short(value)}")
        return items
    if base is dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise bad
        return dict(value)
    raise AssertionError(f"no coercion for {key}: {kind}")


def _choice(key: str, value: str, allowed) -> None:
    if value not in allowed:
        close = close_matches(value, allowed, n=2)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"recipe key {key!r} is {_short(value)}.{hint} Allowed: {', '.join(allowed)}")


def _split_model(name: str) -> tuple[str, Optional[str]]:
    """``"resnet20_fa"`` → ``("resnet20", "fa")``; ``"resnet20"`` → ``("resnet20", None)``; a name that is
    not a model is kept as given, for _validate to report with the architectures."""
    try:
        arch, rule, tag = split_name(name, rule_required=False)
    except (TypeError, ValueError):
        return name, None
    return (f"{arch}.{tag}", rule) if tag else (arch, rule)


def _pretrained_name(init_from: Optional[str]) -> Optional[str]:
    """``init_from`` when it reads as a published name (not a folder or a Hub id: :func:`biotorch.weights.kind`)."""
    return init_from if init_from is not None and kind(init_from) == "name" else None


def _not_a_source(value: str, error: Exception) -> ConfigError:
    return ConfigError(f"recipe key 'init_from' is {value!r}: not a folder, not hf-hub:<org>/<repo>, and as a "
                       f"pretrained name: {error}")


def _validate_init_from(recipe: Recipe) -> None:
    value = recipe.init_from
    if value is None:
        return
    how = kind(value)
    if how == "folder" and not (Path(value) / "config.json").is_file():
        raise ConfigError(f"recipe key 'init_from' is {value!r}, a folder without config.json: give a checkpoint "
                          "folder (biotorch.save_pretrained, model_cards/<name>)")
    try:
        source = resolve(value)
    except (TypeError, ValueError) as error:
        if how == "hub":
            raise ConfigError(f"recipe key 'init_from' is {value!r}: a Hub id is hf-hub:<org>/<repo>") from None
        raise _not_a_source(value, error) from None
    if source.kind == "name":
        cfg = get_pretrained_cfg(source.name)
        if cfg.arch != recipe.model:
            raise ConfigError(f"recipe key 'init_from' names a {cfg.arch} checkpoint ({cfg.name}) but 'model' is "
                              f"{recipe.model!r}: fine-tuning keeps the architecture")


def _validate_images(recipe: Recipe) -> None:
    given = [k for k in IMAGE_KEYS if getattr(recipe, k) is not None]
    if given and recipe.data != "imagefolder":
        size = "x".join(map(str, DATASETS[recipe.data].input_size))
        raise ConfigError(f"recipe key {given[0]!r} describes an image folder's images (data: imagefolder); "
                          f"{recipe.data}'s come at {size} with their own normalisation")
    if recipe.img_size is not None and not 8 <= recipe.img_size <= 4096:
        raise ConfigError(f"recipe key 'img_size' must be in [8, 4096], got {recipe.img_size}")
    default = DEFAULT_CFGS[recipe.model]
    if (recipe.img_size is not None and default["fixed_input_size"] and not default["img_size"]
            and recipe.img_size != default["input_size"][1]):
        raise ConfigError(f"recipe key 'img_size' is {recipe.img_size}, but {recipe.model} takes "
                          f"{default['input_size'][1]}x{default['input_size'][2]} images only")
    if recipe.in_chans not in (None, 1, 3):
        raise ConfigError(f"recipe key 'in_chans' must be 1 (grayscale) or 3 (RGB), got {recipe.in_chans}")
    for key in ("mean", "std"):
        values = getattr(recipe, key)
        if values is not None and len(values) not in ({recipe.in_chans} if recipe.in_chans else {1, 3}):
            raise ConfigError(f"recipe key {key!r} needs one value per channel ({recipe.in_chans or '1 or 3'}), "
                              f"got {values}")
    if recipe.mean is not None and recipe.std is not None and len(recipe.mean) != len(recipe.std):
        raise ConfigError(f"recipe keys 'mean' {recipe.mean} and 'std' {recipe.std} need as many values")
    if recipe.std is not None and not all(v > 0 for v in recipe.std):
        raise ConfigError(f"recipe key 'std' must be > 0 for every channel, got {recipe.std}")
    if recipe.interpolation is not None:
        _choice("interpolation", recipe.interpolation, INTERPOLATIONS)


def _validate(recipe: Recipe) -> None:
    if not recipe.model:
        raise ConfigError("recipe key 'model' is required, e.g. model: resnet20 (or --model resnet20_fa)")
    if not recipe.data:
        raise ConfigError(f"recipe key 'data' is required: one of {', '.join(DATASETS)}")
    if "." in recipe.model:
        arch, _, tag = recipe.model.partition(".")
        raise ConfigError(f"recipe key 'model' is {recipe.model!r}: give an architecture (resnet20) or "
                         "architecture_rule (resnet20_fa); a '.tag' names published weights: start from them "
                         f"with init_from (--init-from {arch}_{recipe.rule}.{tag})")
    arch, _, rule = recipe.model.rpartition("_")
    if recipe.model not in ARCHITECTURES and (arch in ARCHITECTURES or rule in RULES):
        try:  # architecture_rule with a typo in one part (_split_model kept it whole): the part that is wrong
            split_name(recipe.model)
        except ValueError as error:
            raise ConfigError(f"recipe key 'model' is {_short(recipe.model)}: {error}") from None
    _choice("model", recipe.model, list(ARCHITECTURES))
    _choice("data", recipe.data, list(DATASETS))
    if recipe.data == "imagefolder" and not recipe.data_dir:
        raise ConfigError("recipe key 'data: imagefolder' needs data_dir (--data-dir): the folder holding "
                          "train/, val/ and test/")
    _validate_images(recipe)
    _choice("rule", recipe.rule, list(RULES))
    try:
        make_rule(recipe.rule, **recipe.rule_options)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"recipe key 'rule_options': {error}") from None
    _validate_init_from(recipe)
    _choice("optimizer", recipe.optimizer, OPTIMIZERS)
    _choice("schedule", recipe.schedule, SCHEDULES)
    _choice("augment", recipe.augment, AUGMENTS)
    _choice("amp", recipe.amp, AMP)
    _choice("weight_init", recipe.weight_init, WEIGHT_INITS)
    _choice("compile", recipe.compile, COMPILE)
    device = recipe.device
    if not (device in ("auto", "cpu", "cuda") or (device.startswith("cuda:") and device[5:].isdigit())):
        raise ConfigError(f"recipe key 'device' is {device!r}. Allowed: auto, cpu, cuda, cuda:N")
    positive = {"epochs": recipe.epochs, "batch_size": recipe.batch_size,
                "eval_batch_size": recipe.eval_batch_size, "val_every": recipe.val_every, "lr": recipe.lr,
                "backbone_lr_scale": recipe.backbone_lr_scale}
    for key, value in positive.items():
        if not value > 0:
            raise ConfigError(f"recipe key {key!r} must be > 0, got {value!r}")
    nonnegative = {"weight_decay": recipe.weight_decay, "momentum": recipe.momentum,
                   "warmup_epochs": recipe.warmup_epochs, "alignment_every": recipe.alignment_every,
                   "gamma": recipe.gamma, "val_size": recipe.val_size or 0,
                   "freeze_backbone_epochs": recipe.freeze_backbone_epochs,
                   "limit_train": recipe.limit_train if recipe.limit_train is not None else 1}
    for key, value in nonnegative.items():
        if value < 0:
            raise ConfigError(f"recipe key {key!r} must be >= 0, got {value!r}")
    if recipe.warmup_epochs > recipe.epochs:
        raise ConfigError(f"recipe key 'warmup_epochs' ({recipe.warmup_epochs}) must be at most 'epochs' "
                          f"({recipe.epochs})")
    largest = float(torch.finfo(torch.float32).max)  # learning rates and decays live in float32 tensors too
    for key in ("lr", "weight_decay", "momentum", "gamma", "backbone_lr_scale"):
        if abs(getattr(recipe, key)) >= largest:
            raise ConfigError(f"recipe key {key!r} is {getattr(recipe, key)!r}: beyond float32's range")
    if not 0 <= recipe.seed < 2 ** 32:  # as numpy; feedback seeds (seed * 10007 + i) stay in int64
        raise ConfigError(f"recipe key 'seed' must be in [0, 2**32), got {recipe.seed}")
    if recipe.freeze_backbone_epochs >= recipe.epochs:
        raise ConfigError(f"recipe key 'freeze_backbone_epochs' ({recipe.freeze_backbone_epochs}) must be less than "
                         f"'epochs' ({recipe.epochs}); to freeze the whole run use freeze_backbone: true")
    if recipe.freeze_backbone and recipe.freeze_backbone_epochs:
        raise ConfigError("recipe keys 'freeze_backbone' (the whole run) and 'freeze_backbone_epochs' (the first "
                         "epochs) contradict each other: use one")
    if recipe.freeze_backbone and recipe.backbone_lr_scale != 1:
        raise ConfigError("recipe key 'backbone_lr_scale' does nothing with freeze_backbone: true (the backbone "
                         "never learns): drop one")
    if recipe.limit_train == 0:
        raise ConfigError("recipe key 'limit_train' must be a positive number of images or null")
    if not 0 <= recipe.label_smoothing < 1:
        raise ConfigError(f"recipe key 'label_smoothing' must be in [0, 1), got {recipe.label_smoothing}")
    if len(recipe.betas) != 2 or not all(0 <= b < 1 for b in recipe.betas):
        raise ConfigError(f"recipe key 'betas' must be two numbers in [0, 1), got {recipe.betas}")
    if recipe.nesterov and recipe.optimizer == "sgd" and recipe.momentum == 0:
        raise ConfigError("recipe key 'nesterov' needs momentum > 0")
    if recipe.schedule == "step" and not recipe.milestones:
        raise ConfigError("recipe key 'milestones' is needed by schedule: step, e.g. milestones: [100, 150]")
    if recipe.cuda_graph and recipe.compile not in ("none", "max-autotune-no-cudagraphs", "default"):
        raise ConfigError(f"recipe keys 'cuda_graph' and 'compile: {recipe.compile}' both capture CUDA "
                         "graphs: use one (compile: default or max-autotune-no-cudagraphs with cuda_graph)")
    if recipe.cuda_graph and recipe.amp == "fp16":
        raise ConfigError("recipe key 'amp: fp16' needs a loss scaler that syncs the host, which a CUDA "
                         "graph cannot hold: use amp: bf16 with cuda_graph")
    for rule, values in recipe.rule_overrides.items():
        _choice("rule_overrides", rule, list(RULES))
        if not isinstance(values, dict):
            raise ConfigError(f"recipe key 'rule_overrides.{rule}' must map recipe keys to values, "
                             f"got {values!r}")
        for key in values:
            if key not in FIELDS:
                raise _unknown_key(key, f"rule_overrides.{rule}")
            if key in _IDENTITY:
                raise ConfigError(f"rule_overrides.{rule} may not set {key!r}")


def make_recipe(values: dict, *, overrides: Optional[dict] = None, resolved: bool = False,
                where: str = "recipe") -> Recipe:
    """Build and validate a Recipe from a mapping and command-line ``overrides``.

    ``resolved=True`` for a saved recipe: its ``rule_overrides`` were applied already.
    """
    overrides = dict(overrides or {})
    for source, mapping in ((where, values), ("command line", overrides)):
        for key in mapping:
            if key not in FIELDS:
                raise _unknown_key(key, source)
    merged = {k: _coerce(k, v) for k, v in values.items()}
    overrides = {k: _coerce(k, v) for k, v in overrides.items()}
    # The rule: --rule, else the rule in --model's name, else the file's rule, else its model name's, else
    # init_from's when it is a pretrained name; bp.
    arch, file_name_rule = _split_model(merged.get("model", ""))
    if "model" in overrides:
        arch, cli_name_rule = _split_model(overrides["model"])
    else:
        cli_name_rule = None
    if overrides.get("rule") and cli_name_rule and overrides["rule"] != cli_name_rule:
        raise ConfigError(f"--model {overrides['model']} names rule {cli_name_rule!r} but --rule is "
                          f"{overrides['rule']!r}: give one of them")
    rule = overrides.get("rule") or cli_name_rule or merged.get("rule") or file_name_rule
    init_from = overrides.get("init_from", merged.get("init_from"))
    if not rule and init_from and _pretrained_name(init_from) is None:
        raise ConfigError(f"recipe key 'rule' is needed with init_from {init_from!r} (a folder or Hub id): name the "
                         "rule to fine-tune with, e.g. --rule fa (the checkpoint's own rule keeps its feedback)")
    if _pretrained_name(init_from):  # a pretrained name also gives the architecture and rule not given
        try:
            start_arch, start_rule, _ = split_name(init_from)
        except ValueError as error:
            raise _not_a_source(init_from, error) from None
        arch, rule = arch or start_arch, rule or start_rule
    rule = rule or "bp"
    recipe = Recipe(**merged)
    if not resolved:
        if not isinstance(recipe.rule_overrides, dict):
            raise ConfigError("recipe key 'rule_overrides' must map rule names to {key: value}")
        applied = recipe.rule_overrides.get(rule) or {}
        if isinstance(applied, dict):
            for key, value in applied.items():
                if key in FIELDS and key not in _IDENTITY:
                    setattr(recipe, key, _coerce(key, value))
            recipe.applied_rule_overrides = dict(applied)
    for key, value in overrides.items():
        setattr(recipe, key, value)
    recipe.model, recipe.rule = arch, rule
    if not resolved and recipe.init_from:
        _start_from_parent_recipe(recipe, set(merged) | set(recipe.applied_rule_overrides) | set(overrides))
    _validate(recipe)
    return recipe


def parent_recipe(init_from: str) -> dict:
    """The recipe the checkpoint ``init_from`` was trained with, ``{}`` where none is recorded: a published
    record's, a card folder's or Hub repo's (``config.json``), or a training run's (its ``recipe.yaml``)."""
    recipe = data_config(init_from).get("recipe")
    path = Path(init_from)
    folder = path if path.is_dir() else path.parent
    if not recipe and kind(init_from) == "folder" and (folder / "recipe.yaml").is_file():
        recipe = load_yaml((folder / "recipe.yaml").read_text(), str(folder / "recipe.yaml"))
    return dict(recipe) if isinstance(recipe, dict) else {}


def _start_from_parent_recipe(recipe: Recipe, given: set) -> None:
    """Take :data:`PARENT_KEYS` from ``recipe.init_from``'s recipe where not ``given``, scaled to this run."""
    try:
        parent = parent_recipe(recipe.init_from)
    except (ValueError, OSError, TypeError, KeyError):
        return  # not a checkpoint that can be read: _validate (or init_from) says why
    taken = {}
    for head, members in PARENT_KEYS.items():
        if head not in parent or (head in given and getattr(recipe, head) != _coerce(head, parent[head])):
            continue
        if head not in given:
            taken[head] = _coerce(head, parent[head])
        value = taken.get(head, getattr(recipe, head))
        for key in members.get("*", ()) + members.get(value, ()):
            if key in parent and key not in given:
                taken[key] = _coerce(key, parent[key])
    for key, value in taken.items():
        setattr(recipe, key, value)
    batch, epochs = parent.get("batch_size"), parent.get("epochs")
    if "lr" in taken and batch and recipe.batch_size != batch:
        ratio = recipe.batch_size / batch
        recipe.lr = taken["lr"] * (ratio if recipe.optimizer == "sgd" else math.sqrt(ratio))
    if epochs and recipe.epochs != epochs:
        if "milestones" in taken:
            recipe.milestones = [m * recipe.epochs / epochs for m in taken["milestones"]]
        if "warmup_epochs" in taken:
            recipe.warmup_epochs = taken["warmup_epochs"] * recipe.epochs / epochs
    recipe.init_from_recipe = {**taken, "batch_size": batch, "epochs": epochs} if taken else {}


def describe_parent_recipe(recipe: Recipe) -> str:
    """One line: what a fine-tuning run took from its checkpoint's recipe (the trainer's first line says it)."""
    taken = {k: v for k, v in recipe.init_from_recipe.items() if k not in ("batch_size", "epochs")}
    if not taken:
        return (f"recipe as given: optimizer {recipe.optimizer}, lr {recipe.lr:g}, schedule {recipe.schedule} (nothing "
                f"from {recipe.init_from}'s recipe: none is recorded, or each of its values was given)")
    parent = recipe.init_from_recipe
    scaled = {"lr": f"its {parent.get('lr')} at batch {parent['batch_size']}",
              "milestones": f"its {parent.get('milestones')} of {parent['epochs']} epochs",
              "warmup_epochs": f"its {parent.get('warmup_epochs')} of {parent['epochs']} epochs"}
    values = [f"{key} {getattr(recipe, key):.4g}" if isinstance(getattr(recipe, key), float)
              else f"{key} {getattr(recipe, key)}" for key in taken]
    values = [text + (f" ({scaled[key]})" if key in scaled and getattr(recipe, key) != value else "")
              for text, (key, value) in zip(values, taken.items())]
    return (f"recipe of {recipe.init_from}: {', '.join(values)} (a flag or --set gives another; "
            f"--epochs and --batch-size rescale them)")


def load_recipe(path=None, overrides: Optional[dict] = None, *, resolved: bool = False) -> Recipe:
    """A validated Recipe from a YAML file (or none) and ``overrides``; see the module docstring."""
    values = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"recipe file {path} not found")
        try:
            values = load_yaml(path.read_text(), "a recipe") or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"{path} is not valid YAML: {error}") from None
        if not isinstance(values, dict):
            raise ConfigError(f"{path} must hold a mapping of recipe keys, got {type(values).__name__}")
    return make_recipe(values, overrides=overrides, resolved=resolved, where=str(path or "recipe"))


def _saved_values(recipe: Recipe) -> dict:
    """The recipe as a run folder keeps it: ``data_dir`` made absolute, so that the run's folder finds its data
    (``--resume``, ``biotorch eval RUN``) from any working directory."""
    values = recipe.to_dict()
    if values.get("data_dir"):
        values["data_dir"] = str(Path(values["data_dir"]).expanduser().resolve())
    return values


def save_recipe(recipe: Recipe, path) -> None:
    """Write the resolved recipe (``data_dir`` absolute)."""
    write_text(path, "# Resolved recipe of this run: `biotorch train --recipe` reproduces it.\n"
               + yaml.safe_dump(_saved_values(recipe), sort_keys=False))


def recipe_changes(saved: Recipe, recipe: Recipe) -> list[str]:
    """Where ``recipe`` differs from ``saved`` (a run's own), as ``"lr 0.03 there, 0.001 here"``; the device and
    ``cuda_graph`` aside: they say where a run goes on, not what it trains."""
    there, here = _saved_values(saved), _saved_values(recipe)
    return [f"{key} {_short(there[key])} there, {_short(value)} here" for key, value in here.items()
            if key not in ("device", "cuda_graph") and there[key] != value]


# What a command that trains a recipe again leaves to its reader (where the data is, which machine) and how the values
# were reached (not what they are).
NOT_REPRODUCED = ("data_dir", "download", "device", "rule_overrides", "applied_rule_overrides", "init_from_recipe")
DATA_DIR = "DATA_DIR"  # stands for the reader's image folder in such a command


def _yaml_text(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=math.inf).removesuffix("\n...\n").strip()


def train_command(recipe: dict) -> str:
    """The ``biotorch train`` command that trains ``recipe`` (a run's resolved recipe) again: the zoo's recipe file
    for its model, rule and data where there is one (else ``--model`` and ``--data``), its seed and start, then a
    ``--set`` for every key whose value would still differ (:data:`NOT_REPRODUCED` aside); every value quoted
    for the shell. ``load_recipe`` on the command's flags gives ``recipe`` back.

    Example::

        >>> train_command(load_yaml(Path("model_cards/resnet20_dfa.cifar10_jpeg/recipe.yaml").read_text()))
        'biotorch train --recipe recipes/cifar10_jpeg/resnet20.yaml --rule dfa --seed 0 --set epochs=100 ...'
    """
    arch, rule, data = recipe["model"], recipe["rule"], recipe["data"]
    own, shared = Path("recipes", data, f"{arch}_{rule}.yaml"), Path("recipes", data, f"{arch}.yaml")
    if (REPO_ROOT / own).is_file():
        flags = {"recipe": own.as_posix()}
    elif (REPO_ROOT / shared).is_file():
        flags = {"recipe": shared.as_posix(), "rule": rule}
    else:
        flags = {"model": f"{arch}_{rule}", "data": data}
    flags.update({"seed": recipe["seed"], "init_from": recipe.get("init_from"),
                  "data_dir": DATA_DIR if data == "imagefolder" else None})
    flags = {key: str(value) for key, value in flags.items() if value is not None}
    file = REPO_ROOT / flags["recipe"] if "recipe" in flags else None
    wanted = {key: _coerce(key, recipe[key]) for key in FIELDS if key in recipe and key not in NOT_REPRODUCED}
    texts: dict = {}
    try:  # each pass sets the first key that still differs (epochs and batch_size before what scales with them)
        while True:
            overrides = {**{k: v for k, v in flags.items() if k != "recipe"},
                         **parse_set(f"{k}={v}" for k, v in texts.items())}
            got = load_recipe(file, overrides)
            key = next((key for key, value in wanted.items() if getattr(got, key) != value), None)
            if key is None:
                break
            assert key not in texts, f"--set {key}={texts[key]} does not give {wanted[key]!r}"
            texts[key] = _yaml_text(wanted[key])
    except (ConfigError, ValueError, OSError):  # its start cannot be read here: say every value, taken from none
        # what the command's recipe file sets, else the defaults: a value the file sets otherwise is said too
        base = {**Recipe().to_dict(), **(load_yaml(file.read_text(), str(file)) or {} if file else {})}
        inherited = {key for head, members in PARENT_KEYS.items() for values in members.values()
                     for key in (head, *values)}
        texts = {key: _yaml_text(value) for key, value in wanted.items()
                 if key not in flags and (key in inherited or value != base.get(key))}
    words = ["biotorch", "train"] + [f"--{key.replace('_', '-')} {shlex.quote(value)}" for key, value in flags.items()]
    words += [f"--set {shlex.quote(f'{key}={texts[key]}')}" for key in FIELDS if key in texts]
    tail = f"   # {DATA_DIR}: your image folder (train/, val/, test/)" if data == "imagefolder" else ""
    return " ".join(words) + tail


def parse_set(pairs) -> dict:
    """``["lr=0.1", "milestones=[10, 20]"]`` → ``{"lr": 0.1, "milestones": [10, 20]}`` (values read as YAML)."""
    out = {}
    for pair in pairs or ():
        key, sep, text = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set takes key=value, got {pair!r}")
        try:
            out[key.strip()] = load_yaml(text, "a recipe") if text.strip() else None
        except yaml.YAMLError:
            out[key.strip()] = text
    return out
