"""Publishing: training runs → Hub-ready card folders → ``biotorch/pretrained.json`` → the README table.

One source of truth: a run writes its metrics once (``metrics.json``); the checkpoint's ``config.json``, the
model card, the registry index and the README results table are all generated from them, never edited.

A card folder is one Hub repo, built from the seeds of one (arch, rule, dataset)::

    model.safetensors  config.json  README.md  metrics.json  recipe.yaml  history.csv  curves.png  alignment.png

The published seed is the one with the best *validation* top-1 (the test set never chooses anything); the
card reports that checkpoint's test top-1 and the mean ± std of test top-1 over all seeds.

Example::

    >>> from biotorch.publish import build_card_folder, build_index, publish
    >>> build_card_folder(sorted(Path("runs").glob("lenet_fa.fashion_mnist-seed*")),
    ...                   Path("model_cards/lenet_fa.fashion_mnist"))
    >>> build_index()                            # model_cards/*/config.json → biotorch/pretrained.json
    >>> publish("runs", dry_run=True)            # the plan: what would be built and pushed
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import statistics
from pathlib import Path
from typing import Optional, Sequence

import yaml

from . import __version__, robustness
from .data import SPLIT_SEED
from .hub import (CONFIG_NAME, HUB_ORG, MIRROR, REPO_ROOT, WEIGHTS_NAME, atomic_write, load_checkpoint,
                  push_to_hub, save_pretrained, sha256)
from .registry import PRETRAINED_INDEX, PretrainedCfg, count_parameters, create_model

RUN_WEIGHTS = "best.safetensors"
RUN_METRICS = "metrics.json"
RESULTS_START, RESULTS_END = "<!-- results:start -->", "<!-- results:end -->"
CARD_FILES = ("history.csv", "curves.png", "alignment.png")  # recipe.yaml is written from Run.recipe

# The tag a name without one resolves to: decided by the architecture alone, so every folder knows
# whether it is the default without looking at the others. Small MLP/LeNet → Fashion-MNIST, CIFAR-sized
# models → cifar10_jpeg, ImageNet-sized models → an ImageNet-style folder.
DEFAULT_DATASETS = {"lenet": "fashion_mnist", "mlp": "fashion_mnist", "resnet18": "imagefolder",
                    "resnet34": "imagefolder", "resnet50": "imagefolder"}
DEFAULT_DATASET = "cifar10_jpeg"  # resnet20..110, mixer_s4 and any architecture not listed above

# Hub dataset ids for the card's `datasets:` (cifar10_jpeg is derived from CIFAR-10; its own tag says so).
HUB_DATASETS = {"mnist": "mnist", "fashion_mnist": "fashion_mnist", "cifar10": "cifar10",
                "cifar100": "cifar100", "cifar10_jpeg": "cifar10"}
DATASET_TITLES = {"mnist": "MNIST", "fashion_mnist": "Fashion-MNIST", "cifar10": "CIFAR-10",
                  "cifar100": "CIFAR-100", "cifar10_jpeg": "CIFAR-10 JPEG (q75, 4:2:0)",
                  "imagefolder": "ImageNet-style image folder", "synthetic": "synthetic (tests only)"}

# What each rule does, in two sentences, and the paper to cite.
RULE_SUMMARIES = {
    "bp": "Backpropagation sends each layer's error backwards through the transpose of its own forward "
          "weights, so every update is the exact gradient of the loss. It needs weight transport, which "
          "brains are not known to do, and is the control every other rule is compared with.",
    "fa": "Feedback Alignment sends errors backwards through a fixed random matrix B of each layer's shape "
          "instead of the transpose of the forward weights. The forward weights come to align with B during "
          "training, so the updates approximate the gradient without weight transport.",
    "dfa": "Direct Feedback Alignment projects the output error straight to every layer through a fixed random "
           "matrix, with no layer-by-layer backward pass. Each hidden layer receives (e·B) ⊙ f′(a), so all "
           "layers can be updated as soon as the output error is known.",
    "usf": "Uniform Sign-concordant Feedback sends errors backwards through sign(W) times a constant (the scale "
           "of W's initialisation). Only the signs of the forward weights are transported, never their "
           "magnitudes.",
    "frsf": "Fixed Random-magnitude Sign-concordant Feedback sends errors backwards through |R| ∘ sign(W), with "
            "a random magnitude matrix R drawn once. The feedback shares the forward weights' signs but not "
            "their magnitudes.",
    "brsf": "Batch Random-magnitude Sign-concordant Feedback sends errors backwards through |R| ∘ sign(W), with "
            "R redrawn at every optimizer step. The feedback shares the forward weights' signs while its "
            "magnitudes are fresh noise every batch.",
    "kp": "Kolen-Pollack learning gives the feedback matrix B exactly the forward weights' update and weight "
          "decay. The difference W − B then decays to zero, so the feedback converges to the forward weights "
          "without being copied from them.",
    "wm": "Weight Mirrors learn the feedback matrix by driving noise through the forward weights after each "
          "step: with y = Wx, B ← (1 − η)B + η·mean(y xᵀ). Because the noise is white, B tracks W and the "
          "backward pass approaches backprop without weight transport.",
}

_BIOTORCH_BIBTEX = """@misc{sanfiz2021benchmarking,
  title         = {Benchmarking the Accuracy and Robustness of Feedback Alignment Algorithms},
  author        = {Sanfiz, Albert Jim{\\'e}nez and Akrout, Mohamed},
  year          = {2021},
  eprint        = {2108.13446},
  archivePrefix = {arXiv}
}

@software{biotorch,
  title   = {biotorch: learning rules beyond backprop as drop-in layers, a model registry and pretrained weights},
  version = {%s},
  url     = {https://huggingface.co/biotorch}
}""" % __version__

_AKROUT_2019 = """@inproceedings{akrout2019deep,
  title     = {Deep Learning without Weight Transport},
  author    = {Akrout, Mohamed and Wilson, Collin and Humphreys, Peter C. and Lillicrap, Timothy and Tweed, Douglas},
  booktitle = {Advances in Neural Information Processing Systems},
  volume    = {32},
  year      = {2019}
}"""
_MOSKOVITZ_2018 = """@misc{moskovitz2018feedback,
  title         = {Feedback alignment in deep convolutional networks},
  author        = {Moskovitz, Theodore H. and Litwin-Kumar, Ashok and Abbott, L. F.},
  year          = {2018},
  eprint        = {1812.06488},
  archivePrefix = {arXiv}
}"""
RULE_BIBTEX = {
    "bp": """@article{rumelhart1986learning,
  title   = {Learning representations by back-propagating errors},
  author  = {Rumelhart, David E. and Hinton, Geoffrey E. and Williams, Ronald J.},
  journal = {Nature},
  volume  = {323},
  pages   = {533--536},
  year    = {1986}
}""",
    "fa": """@article{lillicrap2016random,
  title   = {Random synaptic feedback weights support error backpropagation for deep learning},
  author  = {Lillicrap, Timothy P. and Cownden, Daniel and Tweed, Douglas B. and Akerman, Colin J.},
  journal = {Nature Communications},
  volume  = {7},
  pages   = {13276},
  year    = {2016}
}""",
    "dfa": """@inproceedings{nokland2016direct,
  title     = {Direct Feedback Alignment Provides Learning in Deep Neural Networks},
  author    = {N{\\o}kland, Arild},
  booktitle = {Advances in Neural Information Processing Systems},
  volume    = {29},
  year      = {2016}
}""",
    "usf": """@inproceedings{liao2016important,
  title     = {How Important Is Weight Symmetry in Backpropagation?},
  author    = {Liao, Qianli and Leibo, Joel Z. and Poggio, Tomaso},
  booktitle = {Proceedings of the AAAI Conference on Artificial Intelligence},
  volume    = {30},
  year      = {2016}
}""",
    "frsf": _MOSKOVITZ_2018,
    "brsf": _MOSKOVITZ_2018,
    "kp": """@inproceedings{kolen1994backpropagation,
  title     = {Backpropagation without weight transport},
  author    = {Kolen, John F. and Pollack, Jordan B.},
  booktitle = {Proceedings of the IEEE International Conference on Neural Networks},
  year      = {1994}
}

""" + _AKROUT_2019,
    "wm": _AKROUT_2019,
}


# --------------------------------------------------------------------------------------------------------
# runs


class Run:
    """One finished training run folder (written by ``biotorch train``), validated on reading."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        for name in (RUN_WEIGHTS, RUN_METRICS):
            if not (self.folder / name).is_file():
                raise FileNotFoundError(f"{self.folder} is not a finished training run: {name} is missing "
                                        "(runs are written by `biotorch train`)")
        try:
            self.metrics = json.loads((self.folder / RUN_METRICS).read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{self.folder / RUN_METRICS} is not valid JSON: {error}") from None
        missing = [k for k in ("arch", "rule", "dataset", "seed", "val_top1", "test_top1") if k not in self.metrics]
        if missing:
            raise ValueError(f"{self.folder / RUN_METRICS} lacks {', '.join(missing)}")
        if self.metrics["val_top1"] is None:
            raise ValueError(f"{self.folder} has no validation top-1 (val_size 0?): a checkpoint is chosen on "
                             "validation, never on test, so this run cannot be published")
        recipe_path = self.folder / "recipe.yaml"
        self.recipe = (yaml.safe_load(recipe_path.read_text()) if recipe_path.is_file()
                       else dict(self.metrics.get("recipe") or {}))
        if self.recipe.get("data_dir"):  # where the data lay on the training machine: not part of the recipe
            self.recipe["data_dir"] = None

    @property
    def key(self) -> tuple[str, str, str]:
        return self.metrics["arch"], self.metrics["rule"], self.metrics["dataset"]

    @property
    def name(self) -> str:
        arch, rule, dataset = self.key
        return f"{arch}_{rule}.{dataset}"

    def __repr__(self) -> str:
        return f"Run({str(self.folder)!r}, seed={self.metrics['seed']})"


def find_runs(runs_root: Path) -> list[Run]:
    """Every finished run (a folder with ``best.safetensors`` and ``metrics.json``) under ``runs_root``."""
    runs_root = Path(runs_root)
    if not runs_root.is_dir():
        raise FileNotFoundError(f"no runs folder at {runs_root}")
    return [Run(p.parent) for p in sorted(runs_root.rglob(RUN_METRICS)) if (p.parent / RUN_WEIGHTS).is_file()]


def group_runs(runs: Sequence[Run]) -> dict[str, list[Run]]:
    """``{"arch_rule.dataset": [runs sorted by seed]}``, bp groups first (other cards cite them)."""
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(run.name, []).append(run)
    for name, members in groups.items():
        seeds = [r.metrics["seed"] for r in members]
        duplicates = sorted({s for s in seeds if seeds.count(s) > 1})
        if duplicates:
            folders = ", ".join(str(r.folder) for r in members if r.metrics["seed"] in duplicates)
            raise ValueError(f"{name}: seed(s) {duplicates} were trained more than once ({folders}); "
                             "keep one run per seed")
        members.sort(key=lambda r: r.metrics["seed"])
    return dict(sorted(groups.items(), key=lambda item: (item[1][0].metrics["rule"] != "bp", item[0])))


def select_best(runs: Sequence[Run]) -> Run:
    """The run with the best validation top-1 (ties: the lowest seed). Test accuracy is never consulted."""
    return max(runs, key=lambda r: (r.metrics["val_top1"], -r.metrics["seed"]))


def _mean_std(values: list[float]) -> tuple[float, float]:
    # The sample standard deviation (n − 1); a single seed has no spread to report.
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def aggregate(runs: Sequence[Run]) -> dict:
    """The published checkpoint's numbers plus mean ± std over seeds (the ``metrics`` of PretrainedCfg)."""
    best = select_best(runs).metrics
    out = {"val_top1": best["val_top1"], "test_top1": best["test_top1"], "test_top5": best.get("test_top5"),
           "seed": best["seed"], "best_epoch": best.get("best_epoch"), "epochs": best.get("epochs"),
           "seeds": len(runs), "seed_list": [r.metrics["seed"] for r in runs],
           "selection": "the seed with the best val_top1; test evaluated once per seed"}
    for key in ("test_top1", "val_top1", "test_top5"):
        values = [r.metrics[key] for r in runs if r.metrics.get(key) is not None]
        if values:
            out[f"{key}_mean"], out[f"{key}_std"] = _mean_std(values)
    out.update({k: best[k] for k in ("train_time_s", "images_per_s", "device", "world_size", "biotorch_version")
                if best.get(k) is not None})
    return out


def _dataset_info(dataset: str, recipe: dict):
    from .training.datasets import dataset_info

    try:
        return dataset_info(dataset, recipe.get("data_dir"))
    except (KeyError, FileNotFoundError, ValueError) as error:
        raise ValueError(f"cannot describe dataset {dataset!r} of the run: {error}") from None


def _split_text(info, recipe: dict) -> str:
    if info.val_size is None:
        return "train / val / test are separate folders; val chose the checkpoint, test evaluated once"
    val = recipe.get("val_size") or info.val_size
    train = info.train_size + info.val_size - val
    if recipe.get("limit_train"):
        train = min(train, recipe["limit_train"])
    return (f"train {train:,} / val {val:,} held out from the training set with seed {SPLIT_SEED} "
            f"(model selection); test {info.test_size:,} evaluated once")


def default_dataset(arch: str) -> str:
    return DEFAULT_DATASETS.get(arch, DEFAULT_DATASET)


# --------------------------------------------------------------------------------------------------------
# the card folder


def _baseline(arch: str, dataset: str, baseline_runs, out_dir: Path) -> Optional[dict]:
    if baseline_runs:
        return aggregate([Run(Path(p)) if not isinstance(p, Run) else p for p in baseline_runs])
    for cards_dir in dict.fromkeys((out_dir.parent, MIRROR)):
        path = cards_dir / f"{arch}_bp.{dataset}" / "metrics.json"
        if path.is_file():
            return json.loads(path.read_text())
    return None


def _reproduce_command(run: Run) -> str:
    arch, rule, dataset = run.key
    seed = run.metrics["seed"]
    own = Path("recipes") / dataset / f"{arch}_{rule}.yaml"  # the published run's own recipe
    if (REPO_ROOT / own).is_file():
        return f"biotorch train --recipe {own.as_posix()} --seed {seed}"
    recipe_file = Path("recipes") / dataset / f"{arch}.yaml"
    if (REPO_ROOT / recipe_file).is_file():
        return f"biotorch train --recipe {recipe_file.as_posix()} --rule {rule} --seed {seed}"
    return f"biotorch train --recipe recipe.yaml --rule {rule} --seed {seed}   # recipe.yaml of this repo"


def _card_data(cfg: dict, recipe: dict, org: str):
    from huggingface_hub import EvalResult, ModelCardData

    dataset, metrics = cfg["dataset"], cfg["metrics"]
    title = DATASET_TITLES.get(dataset, dataset)
    results = [EvalResult(task_type="image-classification", task_name="Image Classification",
                          dataset_type=HUB_DATASETS.get(dataset, dataset), dataset_name=title,
                          dataset_config=dataset, dataset_split=split, metric_type="accuracy",
                          metric_name=f"top-1 accuracy ({split}, %)", metric_value=metrics[key])
               for split, key in (("validation", "val_top1"), ("test", "test_top1"))]
    results += [EvalResult(task_type="image-classification", task_name="Image Classification",
                           dataset_type=HUB_DATASETS.get(dataset, dataset), dataset_name=title, dataset_config=dataset,
                           **entry) for entry in robustness.model_index(metrics.get("robustness"))]
    init_from = recipe.get("init_from")
    base_model = None
    if init_from:
        base_model = str(init_from).removeprefix("hf-hub:")
        if "/" not in base_model:
            base_model = f"{org}/{base_model}"
    return ModelCardData(
        library_name="biotorch", license="mit", model_name=cfg["name"], pipeline_tag="image-classification",
        tags=list(dict.fromkeys(["biologically-plausible", cfg["rule"], "image-classification", cfg["arch"],
                                 dataset])),
        datasets=[HUB_DATASETS[dataset]] if dataset in HUB_DATASETS else None, metrics=["accuracy"],
        base_model=base_model, eval_results=results)


def _pct(value) -> str:
    return "–" if value is None else f"{value:.2f}"


def _spread(metrics: dict, key: str) -> str:
    if f"{key}_mean" not in metrics:
        return "–"
    return f"{metrics[f'{key}_mean']:.2f} ± {metrics[f'{key}_std']:.2f} ({_seeds(metrics['seeds'])})"


def _seeds(count: int) -> str:
    return f"{count} seed{'s' if count != 1 else ''}"


def _markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# Recipe keys that say nothing about how the model learned (where files are, how fast it ran).
_RECIPE_HIDDEN = {"data_dir", "download", "device", "rule_overrides", "applied_rule_overrides", "compile",
                  "cuda_graph", "channels_last", "eval_batch_size", "val_every", "alignment_every"}
_SGD_ONLY = {"momentum", "nesterov"}
# Recipe keys that may differ between the seeds of one card: where and how fast, not what was learned.
_RECIPE_PER_RUN = {"seed", "data_dir", "download", "device", "compile", "cuda_graph", "channels_last",
                   "eval_batch_size"}


def _card_body(cfg: dict, run: Run, baseline: Optional[dict], has_alignment: bool, owner: str,
               robustness_section: str = "") -> str:
    arch, rule, dataset, name, m = cfg["arch"], cfg["rule"], cfg["dataset"], cfg["name"], cfg["metrics"]
    model_name = f"{arch}_{rule}"
    title = DATASET_TITLES.get(dataset, dataset)
    hidden = _RECIPE_HIDDEN | (_SGD_ONLY if run.recipe.get("optimizer") != "sgd" else {"betas"})
    recipe_rows = [[f"`{k}`", f"`{v}`"] for k, v in run.recipe.items()
                   if k not in hidden and v not in (None, [], {})]
    result_rows = [[f"**{model_name}** (this model)", rule, _pct(m["test_top1"]), _spread(m, "test_top1"),
                    _pct(m["val_top1"]), _pct(m.get("test_top5"))]]
    if rule == "bp":
        baseline_text = "This model *is* the backprop baseline of the other rules on this architecture and data."
    elif baseline is None:
        baseline_text = f"No backprop baseline ({arch}_bp.{dataset}) has been published yet."
    else:
        result_rows.append([f"{arch}_bp (baseline)", "bp", _pct(baseline["test_top1"]),
                            _spread(baseline, "test_top1"), _pct(baseline["val_top1"]),
                            _pct(baseline.get("test_top5"))])
        gap = m["test_top1"] - baseline["test_top1"]
        baseline_text = f"Against backprop on the same architecture and data (each rule with the recipe tuned for it under the same search budget): {gap:+.2f} points test top-1."
    hardware = m.get("device") or "unrecorded hardware"
    world = f" × {m['world_size']}" if m.get("world_size", 1) > 1 else ""
    limitations = [
        f"The numbers come from {_seeds(m['seeds'])} ({', '.join(map(str, m['seed_list']))}) of one recipe, trained "
        f"on {hardware}{world}; the published checkpoint is seed {m['seed']}, chosen on validation top-1.",
        f"Trained on {title} only ({cfg['split']}); inputs must be {'×'.join(map(str, cfg['input_size']))}, "
        f"normalised with mean {tuple(cfg['mean'])} and std {tuple(cfg['std'])}.",
    ]
    if dataset == "cifar10_jpeg":
        limitations.insert(0, "The data is a JPEG q75 4:2:0 re-encoding of CIFAR-10, not CIFAR-10; accuracies are "
                              "not comparable to CIFAR-10 numbers.")
    if dataset == "synthetic":
        limitations.insert(0, "Trained on a tiny synthetic dataset for tests: the weights are meaningless.")
    citation = _BIOTORCH_BIBTEX + ("\n\n" + RULE_BIBTEX[rule] if rule in RULE_BIBTEX else "")
    alignment = ("![alignment: angle between forward weights and feedback, and cosine of the rule's update with "
                 "the true gradient, per layer and epoch](alignment.png)" if has_alignment
                 else "No alignment record was kept for this run.")
    return f"""
# {name}

`{model_name}`: the `{arch}` architecture trained with the **{rule}** learning rule on {title}.
Generated by `scripts/publish.py` from the training run; do not edit by hand.

## The learning rule

{RULE_SUMMARIES.get(rule, f"The {rule} rule (see biotorch.rules).")}

## Results

{_markdown_table(["model", "rule", "test top-1 % (this checkpoint)", "test top-1 % mean ± std",
                  "val top-1 %", "test top-5 %"], result_rows)}

{baseline_text} Every number is in `metrics.json`; per-epoch history is in `history.csv`.

![training curves](curves.png)

## Alignment

{alignment}
{robustness_section}
## Training recipe

{_markdown_table(["key", "value"], recipe_rows)}

Reproduce this checkpoint (the full resolved recipe is `recipe.yaml`):

```bash
{_reproduce_command(run)}
```

## Usage

```python
import torch
model = torch.hub.load("{owner}/biotorch", "{model_name}")          # pretrained, on CPU; device="cuda" for GPU

import biotorch
model = biotorch.create_model("{name}", pretrained=True)
model = biotorch.from_pretrained("hf-hub:{cfg['hub_id']}")

import timm, biotorch                                                 # `import biotorch` registers the models
model = timm.create_model("{model_name}", pretrained=True)
```

Preprocessing: `biotorch.data.eval_transform("{dataset}")` (mean {tuple(cfg['mean'])}, std {tuple(cfg['std'])}).

## Fine-tuning

```python
model = biotorch.create_model("{name}", pretrained=True, num_classes=100)  # new head, still learns with {rule}
model.reset_classifier(5)                                                   # or swap the head later
```

The checkpoint holds the feedback state as well as the forward weights, so training continues with the
same rule.

## Limitations

{chr(10).join(f"- {line}" for line in limitations)}

## Citation

```bibtex
{citation}
```
"""


def _write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def _history_rows(run: Run) -> list[dict]:
    path = run.folder / "history.json"
    return json.loads(path.read_text()) if path.is_file() else []


def _copy_records(run: Run, out: Path) -> bool:
    """Copy (or, where missing, regenerate) the training record; returns whether there is an alignment plot."""
    from .training import records

    title = f"{run.metrics['arch']}_{run.metrics['rule']} on {run.metrics['dataset']}, seed {run.metrics['seed']}"
    for name in CARD_FILES:
        if (run.folder / name).is_file():
            shutil.copyfile(run.folder / name, out / name)
    if not (out / "recipe.yaml").is_file() and run.recipe:
        _write_text(out / "recipe.yaml", yaml.safe_dump(run.recipe, sort_keys=False))
    history = _history_rows(run)
    if not (out / "history.csv").is_file() and history:
        records.write_history(out, history)
        (out / "history.json").unlink()
    if not (out / "curves.png").is_file() and history:
        records.plot_curves(out / "curves.png", history, title)
    alignment = run.folder / "alignment.json"
    if not (out / "alignment.png").is_file() and alignment.is_file():
        data = json.loads(alignment.read_text())
        records.plot_alignment(out / "alignment.png", data if isinstance(data, list) else data["records"], title)
    return (out / "alignment.png").is_file()


def build_card_folder(run_dirs: Sequence[Path], out_dir: Path, baseline_runs: Optional[Sequence[Path]] = None,
                      hub_org: str = HUB_ORG, owner: str = HUB_ORG) -> Path:
    """Build one Hub repo folder from the seeds of one (arch, rule, dataset); returns ``out_dir``.

    The seed with the best validation top-1 is published. ``baseline_runs`` are the bp runs of the same
    architecture and data (default: ``{arch}_bp.{dataset}/metrics.json`` beside ``out_dir`` or in the mirror).
    The folder is built aside and swapped in, so a failure leaves the previous folder untouched.

    Example::

        >>> build_card_folder([Path("runs/lenet_fa.fashion_mnist-seed0"), Path("runs/lenet_fa.fashion_mnist-seed1")],
        ...                   Path("model_cards/lenet_fa.fashion_mnist"))
    """
    runs = [r if isinstance(r, Run) else Run(Path(r)) for r in run_dirs]
    if not runs:
        raise ValueError("build_card_folder needs at least one run folder")
    keys = {r.key for r in runs}
    if len(keys) != 1:
        raise ValueError(f"the runs of one card must share arch, rule and dataset; got {sorted(keys)}")
    differ = sorted({k for r in runs for k in r.recipe.keys() | runs[0].recipe.keys()
                     if k not in _RECIPE_PER_RUN and r.recipe.get(k) != runs[0].recipe.get(k)})
    if differ:
        raise ValueError(f"the seeds of {runs[0].name} were trained with different recipes ({', '.join(differ)} "
                         "differ): mean ± std over seeds needs one recipe")
    (arch, rule, dataset), best = runs[0].key, select_best(runs)
    out_dir = Path(out_dir)
    rule_options = dict(best.recipe.get("rule_options") or {})
    info = _dataset_info(dataset, best.recipe)

    model = create_model(f"{arch}_{rule}", num_classes=info.num_classes, in_chans=info.in_chans,
                         seed=best.metrics["seed"], **rule_options)
    load_checkpoint(model, best.folder / RUN_WEIGHTS)
    params_forward, params_feedback = count_parameters(model)
    name = f"{arch}_{rule}.{dataset}"
    cfg = dict(name=name, arch=arch, rule=rule, tag=dataset, dataset=dataset, split=_split_text(info, best.recipe),
               num_classes=info.num_classes, label_names=list(info.label_names), input_size=list(info.input_size),
               mean=list(info.mean), std=list(info.std), interpolation=info.interpolation, recipe=best.recipe,
               metrics=aggregate(runs), params_forward=params_forward, params_feedback=params_feedback,
               files={}, hub_id=f"{hub_org}/{name}", rule_options=rule_options,
               default=dataset == default_dataset(arch))
    missing = {f.name for f in dataclasses.fields(PretrainedCfg)} - cfg.keys()
    assert not missing, missing  # every PretrainedCfg field, so the index loads into the dataclass

    staging = out_dir.with_name(f".{out_dir.name}.building")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        # Weights first; then the config is rewritten with the hash of the file actually written.
        save_pretrained(model, staging, pretrained_cfg=cfg)
        weights = staging / WEIGHTS_NAME
        cfg["files"] = {WEIGHTS_NAME: {"sha256": sha256(weights), "size": weights.stat().st_size}}
        config = json.loads((staging / CONFIG_NAME).read_text())
        cfg["metrics"].update(robustness.carried_over(out_dir, cfg["files"][WEIGHTS_NAME]["sha256"]))  # same weights
        config["files"], config["pretrained_cfg"] = cfg["files"], cfg
        _write_text(staging / CONFIG_NAME, json.dumps(config, indent=2) + "\n")

        has_alignment = _copy_records(best, staging)
        metrics_file = {"name": name, "arch": arch, "rule": rule, "dataset": dataset, **cfg["metrics"],
                        "runs": [r.metrics for r in runs]}
        _write_text(staging / "metrics.json", json.dumps(metrics_file, indent=2) + "\n")
        baseline = None if rule == "bp" else _baseline(arch, dataset, baseline_runs, out_dir)
        card = _card_data(cfg, best.recipe, hub_org).to_yaml()
        section = robustness.card_section(cfg, staging, cards_dirs=(out_dir.parent, MIRROR))  # draws robustness.png
        _write_text(staging / "README.md", f"---\n{card}\n---\n"
                    + _card_body(cfg, best, baseline, has_alignment, owner, section))
        for path in staging.iterdir():
            path.chmod(0o644)  # atomic writes create private temporary files; a published repo is readable
        old = out_dir.with_name(f".{out_dir.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        if out_dir.exists():
            os.replace(out_dir, old)
        os.replace(staging, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir


# --------------------------------------------------------------------------------------------------------
# the index and the README table


def build_index(cards_dir: Path = MIRROR, index_path: Path = PRETRAINED_INDEX) -> list[dict]:
    """Write ``index_path`` (a JSON list of pretrained_cfg, sorted by name) from ``cards_dir/*/config.json``.

    Each folder's weights are checked against the sha256 its config records, so the index never points at a
    file that would then be refused.
    """
    from . import registry

    records = []
    for config_path in sorted(Path(cards_dir).glob(f"*/{CONFIG_NAME}")):
        folder = config_path.parent
        cfg = json.loads(config_path.read_text()).get("pretrained_cfg")
        if cfg is None:
            raise ValueError(f"{config_path} has no pretrained_cfg: rebuild the folder with scripts/publish.py")
        if cfg["name"] != folder.name:
            raise ValueError(f"{folder} holds {cfg['name']}: folder and checkpoint names must match")
        expected = cfg["files"][WEIGHTS_NAME]["sha256"]
        if sha256(folder / WEIGHTS_NAME) != expected:
            raise ValueError(f"{folder / WEIGHTS_NAME} does not match the sha256 in its config.json: rebuild it")
        records.append(cfg)
    records.sort(key=lambda c: c["name"])
    _write_text(Path(index_path), json.dumps(records, indent=2) + "\n")
    registry._pretrained.cache_clear()
    return records


def results_table(records: Sequence[dict]) -> str:
    """The README's results table (markdown) from pretrained_cfg records."""
    rows = []
    for cfg in sorted(records, key=lambda c: (c["dataset"], c["arch"], c["rule"] != "bp", c["rule"])):
        m = cfg["metrics"]
        rows.append([f"`{cfg['name']}`", cfg["rule"], cfg["dataset"], _pct(m["test_top1"]),
                     _spread(m, "test_top1"), _pct(m["val_top1"]), f"{cfg['params_forward'] / 1e6:.2f}M",
                     f"{cfg['params_feedback'] / 1e6:.2f}M"])
    if not rows:
        return "No pretrained checkpoints have been published yet."
    return _markdown_table(["model", "rule", "dataset", "test top-1 %", "test top-1 % mean ± std", "val top-1 %",
                            "params", "feedback"], rows)


def update_readme_table(readme: Path = REPO_ROOT / "README.md", index_path: Path = PRETRAINED_INDEX) -> str:
    """Regenerate the table between the ``<!-- results:start -->`` / ``<!-- results:end -->`` markers."""
    readme = Path(readme)
    text = readme.read_text()
    start, end = text.find(RESULTS_START), text.find(RESULTS_END)
    if start < 0 or end < start:
        raise ValueError(f"{readme} has no results section: add a line {RESULTS_START} followed by a line "
                         f"{RESULTS_END} where the generated table belongs")
    index_path = Path(index_path)
    records = json.loads(index_path.read_text()) if index_path.is_file() else []
    table = (f"{RESULTS_START}\n<!-- generated by scripts/publish.py from biotorch/pretrained.json; "
             f"do not edit -->\n{results_table(records)}\n")
    new = text[:start] + table + text[end:]
    if new != text:
        _write_text(readme, new)
    return new


# --------------------------------------------------------------------------------------------------------
# publish


def _published_sha(folder: Path) -> Optional[str]:
    config = folder / CONFIG_NAME
    if not config.is_file():
        return None
    return json.loads(config.read_text()).get("files", {}).get(WEIGHTS_NAME, {}).get("sha256")


def _same_weights(run: Run, folder: Path) -> bool:
    """Whether ``folder``'s published weights hold exactly the run's tensors (the dry run cannot hash a new file)."""
    from safetensors.torch import load_file
    import torch

    if not (folder / WEIGHTS_NAME).is_file():
        return False
    new, old = load_file(str(run.folder / RUN_WEIGHTS)), load_file(str(folder / WEIGHTS_NAME))
    return new.keys() == old.keys() and all(torch.equal(new[k], old[k]) for k in new)


def publish(runs_root: Path, cards_dir: Path = MIRROR, dry_run: bool = False, push: bool = True,
            org: str = HUB_ORG, token: Optional[str] = None, readme: Optional[Path] = REPO_ROOT / "README.md",
            index_path: Path = PRETRAINED_INDEX, log=print) -> list[dict]:
    """Build every card folder from the runs under ``runs_root``, rebuild the index and README table, and
    push the folders whose weights changed when a Hub token is available. Returns the plan (one dict per card).

    ``dry_run`` only prints the plan and writes nothing.
    """
    from huggingface_hub import get_token

    cards_dir = Path(cards_dir)
    groups = group_runs(find_runs(runs_root))
    token = token or get_token()
    plan = []
    for name, runs in groups.items():
        folder, best = cards_dir / name, select_best(runs)
        arch, _, dataset = runs[0].key
        if dry_run:
            changed = not _same_weights(best, folder)
        else:
            before = _published_sha(folder)
            baseline = groups.get(f"{arch}_bp.{dataset}")
            build_card_folder(runs, folder, baseline_runs=baseline, hub_org=org)
            changed = _published_sha(folder) != before
        plan.append({"name": name, "folder": folder, "repo_id": f"{org}/{name}", "seeds": len(runs),
                     "seed": best.metrics["seed"], "changed": changed, "push": bool(push and token and changed)})
    for item in plan:
        verb = "would build" if dry_run else "built"
        action = ("push" if item["push"] else "no push: " + ("weights unchanged" if not item["changed"]
                                                            else "no token" if push else "--no-push"))
        log(f"{verb} {item['folder']} from {_seeds(item['seeds'])}, publishing seed {item['seed']} "
            f"({'weights changed' if item['changed'] else 'weights unchanged'}) → {item['repo_id']}: {action}")
    if not groups:
        log(f"no finished runs (folders with {RUN_WEIGHTS} and {RUN_METRICS}) under {runs_root}")
    if dry_run:
        log(f"would rebuild {index_path} and the results table of {readme}; nothing written (--dry-run)")
        return plan
    build_index(cards_dir, index_path)
    if readme is not None and Path(readme).is_file():
        update_readme_table(readme, index_path)
    elif readme is not None:
        log(f"no README at {readme}: results table not written")
    for item in plan:
        if item["push"]:
            push_to_hub(item["folder"], item["repo_id"], token=token,
                        commit_message=f"Publish {item['name']} (seed {item['seed']} of {item['seeds']})")
            log(f"pushed {item['folder']} → {item['repo_id']}")
    return plan


# --------------------------------------------------------------------------------------------------------
# command line: `biotorch push` and scripts/publish.py


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("runs", nargs="?", default="runs", help="folder holding training runs (default: runs)")
    parser.add_argument("--cards-dir", default=str(MIRROR), help="where card folders go (default: model_cards/)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan; write and push nothing")
    parser.add_argument("--no-push", dest="push", action="store_false", help="build only, never push")
    parser.add_argument("--org", default=HUB_ORG, help=f"Hub organisation of the repos (default: {HUB_ORG})")
    parser.add_argument("--token", default=None, help="Hub token (default: huggingface_hub.get_token())")
    parser.add_argument("--index", default=str(PRETRAINED_INDEX), help="the registry index to regenerate "
                        "(default: biotorch/pretrained.json)")
    parser.add_argument("--readme", default=str(REPO_ROOT / "README.md"), help="README whose table is regenerated")
    parser.set_defaults(handler=run_publish)
    return parser


def run_publish(args) -> int:
    publish(Path(args.runs), cards_dir=Path(args.cards_dir), dry_run=args.dry_run, push=args.push, org=args.org,
            token=args.token, readme=Path(args.readme), index_path=Path(args.index))
    return 0


def add_commands(subparsers) -> None:
    """Register ``biotorch push`` on the ``biotorch`` command line."""
    add_arguments(subparsers.add_parser(
        "push", help="build model cards from training runs and push the changed ones to the Hub",
        description=__doc__.splitlines()[0]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/publish.py", description=__doc__.splitlines()[0])
    return run_publish(add_arguments(parser).parse_args(argv))
