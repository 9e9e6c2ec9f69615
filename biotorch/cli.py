"""The ``biotorch`` command line: list, info, train, eval, robustness, bench, push.

Run ``biotorch --help``; ``biotorch COMMAND --help`` for one command.

Errors are one line on stderr and exit status 2, never a traceback.

Example::

    $ biotorch list 'resnet20_*' --pretrained
    $ biotorch info resnet20_dfa
    $ biotorch train --recipe recipes/fashion_mnist/lenet.yaml --rule dfa --seed 1
    $ biotorch train --resume runs/lenet_dfa.fashion_mnist-seed1      # after a crash, continues exactly
    $ biotorch train --recipe recipes/cifar10_jpeg_gray/lenet.yaml --init-from lenet_fa.fashion_mnist
    $ torchrun --nproc-per-node 8 -m biotorch train --recipe recipes/cifar10_jpeg/resnet20.yaml
    $ biotorch eval lenet_fa.fashion_mnist --per-class
    $ biotorch push runs/lenet_fa.imagefolder-ft-fashion_mnist-seed0 --repo-id me/lenet_fa-shapes --dry-run
    $ biotorch push runs/lenet_fa.imagefolder-ft-fashion_mnist-seed0 --repo-id me/lenet_fa-shapes
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import json
import os
import sys
import textwrap
import typing
from pathlib import Path

from . import registry, robustness
from .benchmark import DEFAULT_RECIPE, benchmark
from .benchmark import table as bench_table
from .card import pct
from .convert import exact_gradients
from .data import DeviceLoader, load_samples
from .entrypoints import load_plugin
from .errors import BiotorchError, ConfigError, shorten
from .factory import data_config, model_parameters
from .files import SAMPLES
from .publish import is_run, push_to_hub, user_card_folder
from .registry import CheckpointRecord, check_repo_id, describe, get_pretrained_cfg, list_models, split_name
from .targets import open_target
from .training import datasets, evaluate
from .training.recipe import _TYPES, FIELDS, PARENT_KEYS, load_recipe, parse_set
from .training.runtime import resolve_device
from .training.trainer import Trainer, default_run_dir
from .version import __version__
from .weights import fetch, folder_source, kind


# --- list, info --------------------------------------------------------------------------------------------
def _format_table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(header, widths)).rstrip(),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)


def _printable(name: str) -> str:
    """A class name as one cell of a line: what is not printable escaped (a newline as \\n), never a line break."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in name)


def _accuracy(cfg: CheckpointRecord) -> str:
    m = cfg.metrics
    text = f"{m['test_top1']:.2f}"
    if "test_top1_std" in m and m.get("seeds", 1) > 1:
        text += f" ({m['test_top1_mean']:.2f}±{m['test_top1_std']:.2f}, {m['seeds']} seeds)"
    return text


def _cmd_list(args) -> int:
    if args.pretrained:
        rows = []
        for name in list_models(args.pattern, pretrained=True):
            cfg = registry._pretrained()[name]
            rows.append([name, cfg.rule, f"{cfg.params_forward / 1e6:.2f}M", f"{cfg.params_feedback / 1e6:.2f}M",
                         cfg.dataset, _accuracy(cfg)])
        print(_format_table(rows, ["name", "rule", "params", "feedback", "dataset", "test top-1 %"])
              if rows else "no pretrained models match")
        return 0
    rows = []
    for name in list_models(args.pattern):
        forward, feedback = model_parameters(name)
        tags = sorted(c.tag for c in registry._pretrained().values() if c.model_name == name)
        rows.append([name, split_name(name)[1], f"{forward / 1e6:.2f}M", f"{feedback / 1e6:.2f}M",
                     ", ".join(tags) or "-"])
    print(_format_table(rows, ["name", "rule", "params", "feedback", "pretrained tags"])
          if rows else "no models match")
    return 0


def _info_folder(source: str) -> int:
    """``biotorch info FOLDER`` (or ``hf-hub:``): what the checkpoint is, takes and scored, where it says."""
    found = fetch(source if kind(source) == "hub" else folder_source(source))
    config, cfg = found.config, data_config(source)
    labels = cfg.get("label_names") or ()
    print(f"{source}\n  model: {config['arch']}_{config['rule']}"
          + (f" (rule options {config['rule_options']})" if config.get("rule_options") else "")
          + f"\n  classes: {config['num_classes']}" + (f" ({', '.join(map(_printable, labels))})" if labels else "")
          + f"\n  input: {'x'.join(map(str, cfg['input_size']))}, mean {tuple(cfg['mean'])}, std {tuple(cfg['std'])}, "
          f"crop_pct {cfg['crop_pct']:.4g}, {cfg['interpolation']}\n  weights: {found.file}"
          + (f" (sha256 {found.sha256[:12]}…)" if found.sha256 else ""))
    folder = found.file.parent
    if (folder / "metrics.json").is_file():  # a training run
        metrics = json.loads((folder / "metrics.json").read_text())
        test = "none (no test split)" if metrics.get("test_top1") is None else f"{metrics['test_top1']:.2f} %"
        start = (metrics.get("init_from") or {}).get("source")
        print(f"  trained on: {metrics.get('dataset')}, {metrics.get('epochs_trained', metrics.get('epochs'))} epochs"
              + (f", from {start}" if start else "") + f"\n  val top-1: {pct(metrics.get('val_top1'))} %  "
              f"test top-1: {test}")
    print(f"  load: biotorch.from_pretrained({source!r})" if kind(source) == "hub" else
          f"  load: biotorch.from_pretrained(pathlib.Path({str(source)!r}))")
    return 0


def _cmd_info(args) -> int:
    if kind(args.name) != "name":
        return _info_folder(args.name)
    arch, rule, tag = split_name(args.name)
    name = f"{arch}_{rule}"
    forward, feedback = model_parameters(name)
    print(f"{name}\n  {describe(name)}\n  parameters: {forward:,} forward, {feedback:,} feedback "
          f"(at the default input size and classes)")
    cfgs = [c for c in registry._pretrained().values() if c.model_name == name and (tag is None or c.tag == tag)]
    if tag is not None and not cfgs:
        get_pretrained_cfg(args.name)  # raises with the available tags
    for cfg in cfgs:
        print(f"\n  {cfg.name}{'  (default)' if cfg.default else ''}\n    data: {cfg.dataset}; {cfg.split}\n"
              f"    test top-1: {_accuracy(cfg)} %  val top-1: {cfg.metrics['val_top1']:.2f} %\n"
              f"    input: {'x'.join(map(str, cfg.input_size))}, mean {cfg.mean}, std {cfg.std}\n"
              f"    hub: {cfg.hub_id}\n    load: biotorch.create_model({cfg.name!r}, pretrained=True)")
        print("".join(f"    robustness: {line}\n" for line in robustness.info_lines(cfg.metrics.get("robustness"))), end="")
    if not cfgs:
        print("  no pretrained weights yet; train with: biotorch train --model", name)
    return 0


# --- train ------------------------------------------------------------------------------------------------
_NOT_FLAGS = ("rule_options", "rule_overrides", "applied_rule_overrides", "init_from_recipe")


def _base_type(name: str):
    kind = _TYPES[name]
    if typing.get_origin(kind) is typing.Union:
        kind = next(a for a in typing.get_args(kind) if a is not type(None))
    return typing.get_origin(kind) or kind


def _overrides(args, flags: dict) -> dict:
    """The recipe keys a command line sets: its flags (``flags``, ``None`` where not given), ``--set KEY=VALUE``
    and ``--rule-option KEY=VALUE``; a key given by a flag and by --set with another value is refused."""
    overrides = {key: value for key, value in flags.items() if value is not None}
    for key, value in parse_set(args.set).items():
        if key in overrides and str(overrides[key]) != str(value):
            raise ConfigError(f"{key} is {overrides[key]} on the command line but --set {key}={value}: give one of them")
        overrides[key] = value
    if args.rule_option:
        overrides["rule_options"] = parse_set(args.rule_option)
    return overrides


def _train_overrides(args) -> dict:
    """The recipe keys a ``biotorch train`` command line sets."""
    return _overrides(args, {name: getattr(args, name, None) for name in FIELDS if name not in _NOT_FLAGS})


def _cmd_train(args) -> int:
    overrides = _train_overrides(args)
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
        run_dir = Path(args.out) if args.out else default_run_dir(recipe)  # the trainer refuses a used one
    trainer = Trainer(recipe, run_dir, resume=bool(args.resume), tensorboard=args.tensorboard,
                      progress=not args.no_progress)
    trainer.fit()
    return 0


# --- eval -------------------------------------------------------------------------------------------------



def _samples(folder: Path, dataset: str, device):
    if not (folder / "labels.csv").is_file():
        raise FileNotFoundError(f"no sample images for {dataset} in {folder}")
    images, labels = load_samples(folder, dataset)
    return images.to(device), labels.to(device)


def _cmd_eval(args) -> int:
    if args.checkpoint and args.model and kind(args.model) != "name":
        raise ValueError(f"give the checkpoint once: {args.model} or --checkpoint {args.checkpoint}")
    if args.model is None and not args.checkpoint:
        raise ValueError("name a model (e.g. lenet_fa.fashion_mnist), a checkpoint folder, or pass --checkpoint")
    device = resolve_device(args.device)
    if args.checkpoint:
        target = open_target(args.checkpoint, data=args.data, data_dir=args.data_dir, device=device,
                             name=args.model.partition(".")[0] if args.model else None)
    else:
        target = open_target(args.model, data=args.data, data_dir=args.data_dir, device=device)
    model, name, info, args.data = target.model, target.model_name, target.info, target.dataset
    source = "published weights" if target.published else target.label
    samples, split = SAMPLES / args.data, args.split
    if args.samples and (args.split != "test" or not (samples / "labels.csv").is_file()):
        raise ConfigError(f"--samples evaluates the {args.data} sample test images shipped in {samples}: "
                          + ("there are none" if args.split == "test" else f"not the {args.split} split"))
    try:
        if args.samples:
            raise FileNotFoundError("--samples")
        images, labels = datasets.load(args.data, args.split, target.data_dir, download=args.download, info=info,
                                       device=device)
    except FileNotFoundError as error:
        if args.split != "test" or not (samples / "labels.csv").is_file():
            raise
        if not args.samples:
            print(f"biotorch eval: no {args.data} test set found ({shorten(str(error), 300)}); "
                  f"evaluating on the {args.data} sample images shipped in {samples} instead")
        images, labels = _samples(samples, args.data, device)
        split = f"samples ({samples.name})"
    loader = DeviceLoader(images, labels, args.batch_size, info.mean, info.std, train=False, device=device)
    context = exact_gradients(model) if args.exact_gradients else contextlib.nullcontext()
    with context:
        result = evaluate(model, loader, info.num_classes, per_class=args.per_class)
    if args.json:
        print(json.dumps({"model": name, "dataset": args.data, "split": split, "weights": source, **result},
                         indent=2))
        return 0
    print(f"{name} on {args.data} {split} ({result['images']:,} images, {source}): "
          f"top-1 {result['top1']:.2f}%  top-5 {result['top5']:.2f}%  loss {result['loss']:.4f}")
    if args.per_class:
        names = [_printable(n) for n in info.label_names] or [str(i) for i in range(info.num_classes)]
        width = max(len(n) for n in names + ["class"])
        print(f"{'class':<{width}}  {'images':>7}  {'top-1':>7}")
        for label, row in zip(names, result["per_class"]):
            print(f"{label:<{width}}  {row['images']:>7}  {row['top1']:>6.2f}%")
    return 0


# --- bench ------------------------------------------------------------------------------------------------
def _cmd_bench(args) -> int:
    overrides = _overrides(args, {"rule": args.rule, "seed": args.seed, "data_dir": args.data_dir})
    own = DEFAULT_RECIPE.with_name(f"{DEFAULT_RECIPE.stem}_{args.rule}.yaml")  # the zoo's recipe for this rule
    recipe = load_recipe(args.recipe or (own if own.is_file() else DEFAULT_RECIPE), overrides)
    if args.budget_s is not None and not args.budget_s > 0:
        raise ValueError(f"--budget-s must be a positive number of seconds, got {args.budget_s}")
    if args.attack_images < 0:
        raise ValueError(f"--attack-images must be >= 0, got {args.attack_images}")
    run_dir = Path(args.out or f"runs/bench-{recipe.model_name}.{recipe.data}-seed{recipe.seed}")
    rows = benchmark(recipe, run_dir, budget_s=args.budget_s, attack_images=args.attack_images,
                     plot=Path(args.plot) if args.plot else run_dir / "bench.png")
    print(json.dumps(rows, indent=2) if args.json else bench_table(rows))
    return 0


# --- push -------------------------------------------------------------------------------------------------
def _cmd_push(args) -> int:
    folder = Path(args.folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no folder at {folder}: push takes a training run (runs/...) or a checkpoint folder "
                                "(biotorch.save_pretrained)")
    if args.dry_run:
        if not is_run(folder):
            print(f"would push {folder} as it is ({', '.join(sorted(p.name for p in folder.iterdir()))}) to "
                  f"{args.repo_id}; nothing uploaded (--dry-run)")
            return 0
        out = Path(args.out or check_repo_id(args.repo_id, "--repo-id").split("/")[1])
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise FileExistsError(f"{out} exists: --dry-run writes the folder it would push into a new one; "
                                  "remove it or give --out")
        user_card_folder(folder, args.repo_id, out)
        print(f"wrote {out} ({', '.join(sorted(p.name for p in out.iterdir()))}): what `biotorch push {folder} "
              f"--repo-id {args.repo_id}` would upload; nothing uploaded (--dry-run)")
        return 0
    if args.out:
        raise ConfigError("--out names where --dry-run writes the folder: give --dry-run, or drop --out")
    info = push_to_hub(folder, args.repo_id, token=args.token, private=args.private, revision=args.revision,
                       commit_message=args.message)
    print(f"pushed {folder} to {getattr(info, 'commit_url', None) or args.repo_id}")
    return 0


# --- the parser -------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    examples = [line.strip() for line in __doc__.split("Example::")[1].splitlines() if line.strip()]
    root = argparse.ArgumentParser(
        prog="biotorch", formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.fill("Models that learn without exact backpropagation: list, describe, train, "
                                  "evaluate, attack, benchmark and push them. Errors are one line on stderr and "
                                  "exit status 2.", 79),
        epilog="examples:\n" + "\n".join(f"  {line}" for line in examples) + "\n\n"
               "`biotorch COMMAND --help` for one command.")
    root.add_argument("--version", action="version", version=f"biotorch {__version__}")
    root.add_argument("--plugin", "-p", action="append", default=[], metavar="MODULE",
                      help="import MODULE (a module name or a .py file) first, so that the rules it registers "
                           "(biotorch.register_rule) can be used; repeatable")
    subparsers = commands = root.add_subparsers(dest="command", required=True, metavar="COMMAND")

    listing = commands.add_parser("list", help="list models (or pretrained checkpoints)")
    listing.add_argument("pattern", nargs="?", default=None, help="glob, e.g. 'resnet20_*'")
    listing.add_argument("--pretrained", action="store_true", help="list pretrained checkpoints")
    listing.set_defaults(handler=_cmd_list)
    info = commands.add_parser("info", help="describe a model and its pretrained checkpoints, or a checkpoint folder")
    info.add_argument("name", help="a model (resnet20_fa), a pretrained name, a checkpoint folder or hf-hub:<org>/<repo>")
    info.set_defaults(handler=_cmd_info)

    parser = subparsers.add_parser(
        "train", help="train a model with a learning rule (recipes, resume, torchrun)",
        description="Train a model. Values come from --recipe (YAML), then the recipe's rule_overrides for "
                    "the chosen rule, then the flags below. With --init-from, a key none of them gives that says how "
                    "the checkpoint learned (marked 'from --init-from' below) is the checkpoint's recipe's: lr scaled "
                    "to --batch-size, milestones and warmup to --epochs. The resolved recipe is saved in the run "
                    "folder.")
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
    from_parent = {key for head, members in PARENT_KEYS.items() for key in (head, *itertools.chain(*members.values()))}
    for name, spec in FIELDS.items():
        if name in _NOT_FLAGS:
            continue
        flag, kind = "--" + name.replace("_", "-"), _base_type(name)
        default = spec.default_factory() if spec.default is dataclasses.MISSING else spec.default
        text = f"default {default}" + (", or from --init-from" if name in from_parent else "")
        if kind is bool:
            keys.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=text)
        elif kind is list:
            keys.add_argument(flag, dest=name, nargs="+", default=None, metavar="V", help=text)
        else:
            keys.add_argument(flag, dest=name, default=None, metavar=name.upper(), help=text)
    parser.set_defaults(handler=_cmd_train)

    parser = subparsers.add_parser(
        "eval", help="top-1/top-5 of a published model or a checkpoint on a dataset split",
        description="Evaluate a model: `biotorch eval lenet_fa.fashion_mnist --data fashion_mnist` (published "
                    "weights) or `biotorch eval --checkpoint runs/x --data fashion_mnist`.")
    parser.add_argument("model", nargs="?", help="registry name, e.g. lenet_fa.fashion_mnist (optional with "
                        "--checkpoint, whose metadata names the model)")
    parser.add_argument("--data", help="dataset name, e.g. fashion_mnist (default: the checkpoint's own)")
    parser.add_argument("--samples", action="store_true",
                        help="evaluate on the sample images shipped in samples/<data> (used automatically "
                             "when the test set is not found)")
    parser.add_argument("--data-dir", help="folder holding the dataset files")
    parser.add_argument("--download", action="store_true", help="download the dataset when missing")
    parser.add_argument("--split", default="test", choices=("train", "val", "test"))
    parser.add_argument("--checkpoint", help="a .safetensors file, or a run folder (its best.safetensors)")
    parser.add_argument("--per-class", action="store_true", help="print top-1 per class")
    parser.add_argument("--exact-gradients", action="store_true",
                        help="evaluate inside biotorch.exact_gradients (exact backward for probes)")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(handler=_cmd_eval)

    robustness.add_commands(commands)
    parser = subparsers.add_parser(
        "bench", help="train a rule on a zoo recipe and compare it with the published cards",
        description="Train RULE (built in, or registered by an installed package) on one of the zoo's recipes, "
                    "selected on validation and tested once, then print it beside every published card of the same "
                    "architecture and data: test and val top-1, the W-B angle, top-1 under FGSM.")
    parser.add_argument("rule", help="the learning rule, e.g. drtp")
    parser.add_argument("--recipe", help="a recipe (default: LeNet on Fashion-MNIST, the zoo's recipe for the rule, "
                        "recipes/fashion_mnist/lenet_<rule>.yaml, else recipes/fashion_mnist/lenet.yaml)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="set a recipe key")
    parser.add_argument("--rule-option", action="append", default=[], metavar="KEY=VALUE", help="an option of the rule")
    parser.add_argument("--data-dir", help="folder holding the dataset files")
    parser.add_argument("--budget-s", type=float, help="stop before an epoch that would end past this many seconds "
                        "(e.g. ResNet-20 on the CPU); the run then says it is not a full recipe")
    parser.add_argument("--attack-images", type=int, default=1000, help="test images FGSM attacks (0: none)")
    parser.add_argument("--out", help="run folder (default runs/bench-<model>.<data>-seed<seed>; resumed if there)")
    parser.add_argument("--plot", help="bar chart PNG (default <out>/bench.png)")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    parser.set_defaults(handler=_cmd_bench)
    parser = subparsers.add_parser(
        "push", help="push your model (a training run, with a model card, or a checkpoint folder) to the Hub",
        description="Push a training run (a model card is built from it: results, recipe, provenance) or a "
                    "checkpoint folder (biotorch.save_pretrained) to a Hub repo of yours. The zoo's own cards are "
                    "published with scripts/publish.py.")
    parser.add_argument("folder", help="a finished run (runs/...) or a checkpoint folder")
    parser.add_argument("--repo-id", required=True, help="the Hub repo, <owner>/<name>, e.g. me/lenet_fa-shapes")
    parser.add_argument("--token", default=None, help="Hub token (default: huggingface_hub's login)")
    parser.add_argument("--private", action="store_true", help="create the repo private")
    parser.add_argument("--revision", default=None, help="branch to push to (default: main)")
    parser.add_argument("--message", default=None, help="commit message")
    parser.add_argument("--dry-run", action="store_true",
                        help="push nothing: write the folder that would be uploaded (a run's card and weights) to --out")
    parser.add_argument("--out", default=None, help="where --dry-run writes it (default: the repo's name, here)")
    parser.set_defaults(handler=_cmd_push)
    return root


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)

    def command(args):
        for plugin in args.plugin:
            load_plugin(plugin)
        return args.handler(args)
    return run_command(f"biotorch {args.command}", command, args)


def run_command(command: str, handler, args) -> int:
    """``handler(args)``, its errors as one line on stderr and exit status 2 (every biotorch command, and the
    maintainer's scripts)."""
    try:
        return handler(args) or 0
    except BrokenPipeError:  # `biotorch list | head`: the reader has gone, nothing is wrong
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (BiotorchError, ValueError, OSError, KeyError, RuntimeError, ImportError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"{command}: error: {' '.join(str(message).split())}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
