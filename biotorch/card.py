"""Model cards: the Hub front matter (``ModelCardData`` with a model-index) and the card's text.

Example::

    >>> text = f"---\\n{card_data(cfg, recipe, 'biotorch').to_yaml()}\\n---\\n" + card_body(cfg, recipe, None, True, "biotorch")
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .version import __version__

# Hub dataset ids for the card's `datasets:` (cifar10_jpeg is derived from CIFAR-10; its own tag says so).
HUB_DATASETS = {"mnist": "mnist", "fashion_mnist": "fashion_mnist", "cifar10": "cifar10",
                "cifar100": "cifar100", "cifar10_jpeg": "cifar10", "cifar10_jpeg_gray": "cifar10"}
DATASET_TITLES = {"mnist": "MNIST", "fashion_mnist": "Fashion-MNIST", "cifar10": "CIFAR-10",
                  "cifar100": "CIFAR-100", "cifar10_jpeg": "CIFAR-10 JPEG (q75, 4:2:0)",
                  "cifar10_jpeg_gray": "CIFAR-10 JPEG (q75, 4:2:0) in grayscale",
                  "imagefolder": "ImageNet-style image folder", "synthetic": "synthetic (tests only)"}

# What each rule does, in two sentences, and the paper to cite.
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


TEMPLATE = Path(__file__).with_name("model_card_template.md")  # the card's text, rendered by huggingface_hub


def describe_start(started: dict, rule: str, rule_options: dict, data: str) -> str:
    """One line: the checkpoint a fine-tuning run started from (``biotorch.init_from``'s record), and what it
    took from it. The trainer logs it; the card prints it."""
    def named(name: str, options: dict) -> str:
        return name + "".join(f" {k}={v}" for k, v in options.items())

    sha = f" (sha256 {started['sha256'][:12]}…)" if started.get("sha256") else ""
    head = "head kept (the same classes)" if started["head"] == "kept" else f"new head for {data}'s classes"
    adapted = (f"{', '.join(started['adapted'])} adapted from {started['in_chans']} input channels"
               if started["adapted"] else "input layer kept")
    mine = named(rule, rule_options)
    feedback = (f"feedback state kept (the same rule, {mine})" if started["feedback"] == "kept" else
                f"feedback state fresh: the checkpoint learned with "
                f"{named(started['rule'], started['rule_options'])}, this run with {mine}")
    return f"init_from {started['name'] or started['source']}{sha}: {head}; {adapted}; {feedback}"


def card_data(cfg: dict, recipe: dict, org: str, extra_results: Sequence[dict] = ()):
    """The card's front matter (huggingface_hub's ``ModelCardData``, with the model-index); ``extra_results``
    are more model-index entries (EvalResult keywords beyond the task and dataset), e.g. accuracy under attack."""
    dataset, metrics = cfg["dataset"], cfg["metrics"]
    title = DATASET_TITLES.get(dataset, dataset)
    results = [EvalResult(task_type="image-classification", task_name="Image Classification",
                          dataset_type=HUB_DATASETS.get(dataset, dataset), dataset_name=title,
                          dataset_config=dataset, dataset_split=split, metric_type="accuracy",
                          metric_name=f"top-1 accuracy ({split}, %)", metric_value=metrics[key])
               for split, key in (("validation", "val_top1"), ("test", "test_top1"))]
    results += [EvalResult(task_type="image-classification", task_name="Image Classification",
                           dataset_type=HUB_DATASETS.get(dataset, dataset), dataset_name=title, dataset_config=dataset,
                           **entry) for entry in extra_results]
    # A fine-tuned checkpoint names its parent the Hub's way (a local parent has no Hub id to name).
    base_model = (cfg.get("init_from") or {}).get("hub_id")
    relation = {"base_model_relation": "finetune"} if base_model else {}
    return ModelCardData(
        library_name="biotorch", license="mit", model_name=cfg["name"], pipeline_tag="image-classification",
        tags=list(dict.fromkeys(["biologically-plausible", cfg["rule"], "image-classification", cfg["arch"],
                                 dataset])),
        datasets=[HUB_DATASETS[dataset]] if dataset in HUB_DATASETS else None, metrics=["accuracy"],
        base_model=base_model, eval_results=results, **relation)


def pct(value) -> str:
    return "–" if value is None else f"{value:.2f}"


def spread(metrics: dict, key: str) -> str:
    if f"{key}_mean" not in metrics:
        return "–"
    if metrics.get("seeds") == 1:  # one seed has no spread to show
        return seeds_text(1)
    return f"{metrics[f'{key}_mean']:.2f} ± {metrics[f'{key}_std']:.2f} ({seeds_text(metrics['seeds'])})"


def seeds_text(count: int) -> str:
    return f"{count} seed{'s' if count != 1 else ''}"


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# Recipe keys that say nothing about how the model learned (where files are, how fast it ran).
_RECIPE_HIDDEN = {"data_dir", "download", "device", "rule_overrides", "applied_rule_overrides", "init_from_recipe",
                  "compile",
                  "cuda_graph", "channels_last", "eval_batch_size", "val_every", "alignment_every"}
_SGD_ONLY = {"momentum", "nesterov"}
# Fine-tuning keys are shown when they are not at their defaults.
_FINETUNE_DEFAULTS = {"backbone_lr_scale": 1.0, "freeze_backbone": False, "freeze_backbone_epochs": 0}
# Recipe keys that may differ between the seeds of one card: where and how fast, not what was learned.
RECIPE_PER_RUN = {"seed", "data_dir", "download", "device", "compile", "cuda_graph", "channels_last",
                   "eval_batch_size"}


def model_card(cfg: dict, recipe: dict, baseline: Optional[dict], has_alignment: bool, owner: str, org: str,
               robustness_section: str = "", extra_results: Sequence[dict] = (), rule_summary: str = "",
               rule_citation: str = "", reproduce: str = "", zoo: bool = True):
    """The model card (huggingface_hub's ``ModelCard``, rendered from ``model_card_template.md``): the front matter
    of :func:`card_data` and the text; ``baseline`` is the bp card's metrics of the same data; ``rule_summary`` and
    ``rule_citation`` the rule's own words (its class's ``summary`` and ``citation``); ``reproduce`` the command that
    trains the checkpoint again (``biotorch.training.recipe.train_command``). ``zoo``: a card of biotorch's zoo
    (published by ``scripts/publish.py``, loaded by name); else a user's (``biotorch push``), loaded from its repo."""
    arch, rule, dataset, name, m = cfg["arch"], cfg["rule"], cfg["dataset"], cfg["name"], cfg["metrics"]
    model_name = f"{arch}_{rule}"
    title = DATASET_TITLES.get(dataset, dataset)
    hidden = _RECIPE_HIDDEN | (_SGD_ONLY if recipe.get("optimizer") != "sgd" else {"betas"})
    recipe_rows = [[f"`{k}`", f"`{v}`"] for k, v in recipe.items()
                   if k not in hidden and v not in (None, [], {}) and not (k in _FINETUNE_DEFAULTS
                                                                         and v == _FINETUNE_DEFAULTS[k])]
    started = cfg.get("init_from")
    parent, origin = "", ""
    if started:
        parent = f"`{started['name'] or started['source']}`"
        if started.get("hub_id"):
            parent = f"[{parent}](https://huggingface.co/{started['hub_id']})"
        origin = (f"\n\nFine-tuned from {parent}: "
                  + describe_start(started, rule, cfg.get("rule_options") or {}, dataset).partition(": ")[2] + ".")
    result_rows = [[f"**{model_name}** (this model)", rule, pct(m["test_top1"]), spread(m, "test_top1"),
                    pct(m["val_top1"]), pct(m.get("test_top5"))]]
    if rule == "bp":
        baseline_text = "This model *is* the backprop baseline of the other rules on this architecture and data."
    elif baseline is None:
        baseline_text = f"No backprop baseline ({arch}_bp.{cfg['tag']}) has been published yet." if zoo else ""
    else:
        result_rows.append([f"{arch}_bp (baseline)", "bp", pct(baseline["test_top1"]),
                            spread(baseline, "test_top1"), pct(baseline["val_top1"]),
                            pct(baseline.get("test_top5"))])
        gap = m["test_top1"] - baseline["test_top1"]
        how = "fine-tuned the same way" if started else "each with its own recipe.yaml"
        baseline_text = f"Against backprop on the same architecture and data ({how}): {gap:+.2f} points test top-1."
    hardware = m.get("device") or "unrecorded hardware"
    world = f" × {m['world_size']}" if m.get("world_size", 1) > 1 else ""
    amp = recipe.get("amp") or "none"
    how = f" in {'fp32' if amp == 'none' else amp + ' autocast'}"
    if m.get("train_time_s"):
        speed = f" at {m['images_per_s']:,.0f} images/s" if m.get("images_per_s") else ""
        how += f", {m['train_time_s'] / 60:.0f} min of training{speed}"
    limitations = [
        f"The numbers come from {seeds_text(m['seeds'])} ({', '.join(map(str, m['seed_list']))}) of one recipe, trained "
        f"on {hardware}{world}{how}; the published checkpoint is seed {m['seed']}, chosen on validation top-1.",
        (f"Started from {parent}, trained on {started.get('dataset') or 'its own data'}; then fine-tuned on {title}"
         if started else f"Trained on {title} only") + f" ({cfg['split']}); inputs must be "
        f"{'×'.join(map(str, cfg['input_size']))}, normalised with mean {tuple(cfg['mean'])} and std "
        f"{tuple(cfg['std'])}.",
    ]
    if dataset.startswith("cifar10_jpeg"):
        limitations.insert(0, "The data is a JPEG q75 4:2:0 re-encoding of CIFAR-10, not CIFAR-10; accuracies are "
                              "not comparable to CIFAR-10 numbers.")
    if dataset == "synthetic":
        limitations.insert(0, "Trained on a tiny synthetic dataset for tests: the weights are meaningless.")
    citation = _BIOTORCH_BIBTEX + ("\n\n" + rule_citation if rule_citation else "")
    alignment = ("![alignment: angle between forward weights and feedback, and cosine of the rule's update with "
                 "the true gradient, per layer and epoch](alignment.png)" if has_alignment
                 else "No alignment record was kept for this run.")
    channels, *size = cfg["input_size"]
    shape = f"{channels}×{'×'.join(map(str, size))} ({'grayscale' if channels == 1 else 'RGB'})"
    labels = cfg.get("label_names") or []
    classes_text = (f"Classes ({cfg['num_classes']}): {', '.join(labels) or 'unnamed'}. Input: {shape}, normalised "
                    f"with mean {tuple(cfg['mean'])} and std {tuple(cfg['std'])}.")
    preprocessing = (f"a PIL image or uint8 tensor of any size, colour or grayscale, brought to {shape} and "
                     f"normalised as in training")
    return ModelCard.from_template(
        card_data(cfg, recipe, org, extra_results), template_path=str(TEMPLATE), name=name, model_name=model_name,
        arch=arch, rule=rule, title=title, origin=origin, dataset=dataset, owner=owner, hub_id=cfg["hub_id"],
        rule_summary=rule_summary or f"The {rule} rule (see biotorch.rules).",
        results_table=markdown_table(["model", "rule", "test top-1 % (this checkpoint)", "test top-1 % mean ± std",
                                      "val top-1 %", "test top-5 %"], result_rows),
        baseline_text=baseline_text, alignment=alignment, robustness_section=robustness_section,
        recipe_table=markdown_table(["key", "value"], recipe_rows),
        reproduce=reproduce, zoo=zoo, classes_text=classes_text, preprocessing=preprocessing,
        load=name if zoo else f"hf-hub:{cfg['hub_id']}",
        limitations="\n".join(f"- {line}" for line in limitations),
        citation=citation)
