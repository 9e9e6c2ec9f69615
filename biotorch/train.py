"""``biotorch train`` and ``biotorch eval``; the trainer itself lives in ``biotorch.training``.

Example::

    $ biotorch train --model resnet20_fa --data cifar10 --epochs 200 --out runs/r20_fa
    $ biotorch train --recipe recipes/fashion_mnist/lenet.yaml --rule dfa --seed 1
    $ biotorch train --resume runs/r20_fa                  # after a crash, continues exactly
    $ torchrun --nproc-per-node 8 -m biotorch train --recipe recipes/cifar10_jpeg/resnet20.yaml
    $ biotorch eval resnet20_fa.cifar10_jpeg --data cifar10_jpeg --per-class
"""
from __future__ import annotations

import argparse
import typing
from pathlib import Path

from .training.evaluate import add_eval_command
from .training.recipe import FIELDS, _TYPES, load_recipe, parse_set

_NOT_FLAGS = ("rule_options", "rule_overrides", "applied_rule_overrides")


def _base_type(name: str):
    kind = _TYPES[name]
    if typing.get_origin(kind) is typing.Union:
        kind = next(a for a in typing.get_args(kind) if a is not type(None))
    return typing.get_origin(kind) or kind


def run_train(args) -> int:
    from .training.checkpoint import find_checkpoint
    from .training.trainer import Trainer, default_run_dir

    overrides = {name: getattr(args, name) for name in FIELDS
                 if name not in _NOT_FLAGS and getattr(args, name, None) is not None}
    overrides.update(parse_set(args.set))
    if args.rule_option:
        overrides["rule_options"] = parse_set(args.rule_option)
    if args.resume:
        run_dir = Path(args.resume)
        extra = sorted(set(overrides) - {"device"}) + (["--recipe"] if args.recipe else [])
        if extra or args.out:
            raise ValueError(f"--resume continues {run_dir} with its saved recipe; drop "
                             f"{', '.join(extra + (['--out'] if args.out else []))}")
        saved = run_dir / "recipe.yaml"
        if not saved.is_file():
            raise FileNotFoundError(f"{saved} not found: --resume takes the folder of a run started by "
                                    "`biotorch train`")
        recipe = load_recipe(saved, overrides, resolved=True)
    else:
        recipe = load_recipe(args.recipe, overrides)
        run_dir = Path(args.out) if args.out else default_run_dir(recipe)
        if find_checkpoint(run_dir) or (run_dir / "metrics.json").exists():
            raise ValueError(f"{run_dir} already holds a run: continue it with --resume {run_dir}, "
                             "or choose another --out")
    trainer = Trainer(recipe, run_dir, resume=bool(args.resume), tensorboard=args.tensorboard,
                      progress=not args.no_progress)
    trainer.fit()
    return 0


def add_commands(subparsers) -> None:
    """Register ``train`` and ``eval`` on the ``biotorch`` command line."""
    parser = subparsers.add_parser(
        "train", help="train a model with a learning rule (recipes, resume, torchrun)",
        description="Train a model. Values come from --recipe (YAML), then the recipe's rule_overrides for "
                    "the chosen rule, then the flags below. The resolved recipe is saved in the run folder.")
    parser.add_argument("--recipe", help="YAML recipe, e.g. recipes/fashion_mnist/lenet.yaml")
    parser.add_argument("--out", help="run folder (default runs/<model>_<rule>.<data>-seed<seed>)")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run exactly")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="set any recipe key (value read as YAML), e.g. --set milestones=[100,150]")
    parser.add_argument("--rule-option", action="append", default=[], metavar="KEY=VALUE",
                        help="an option of the rule, e.g. --rule-option mirror_lr=0.1")
    parser.add_argument("--tensorboard", action="store_true", help="also log to TensorBoard when installed")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    keys = parser.add_argument_group("recipe keys (override the recipe file)")
    for name in FIELDS:
        if name in _NOT_FLAGS:
            continue
        flag, kind = "--" + name.replace("_", "-"), _base_type(name)
        if kind is bool:
            keys.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None)
        elif kind is list:
            keys.add_argument(flag, dest=name, nargs="+", default=None, metavar="V")
        else:
            keys.add_argument(flag, dest=name, default=None, metavar=name.upper())
    parser.set_defaults(handler=run_train)
    add_eval_command(subparsers)
