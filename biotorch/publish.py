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

import contextlib
import dataclasses
import json
import shutil
import statistics
import tempfile
from pathlib import Path
from typing import Optional, Sequence

import torch
import yaml

from . import registry, robustness
from .card import RECIPE_PER_RUN, markdown_table, model_card, pct, seeds_text, spread
from .data import SPLIT_SEED, DatasetInfo, dataset_info
from .errors import ConfigError
from .factory import create_model
from .files import REPO_ROOT, FolderLock, load_yaml, replace_folder, sha256, write_json, write_text
from .hub import (CONFIG_NAME, HUB_ORG, MIRROR, RUN_WEIGHTS, WEIGHTS_NAME, file_record, folder_sha256,
                  load_checkpoint, read_checkpoint, read_config, recorded_sha256, save_pretrained, upload_folder,
                  verify_sha256)
from .metrics import count_parameters
from .models import DEFAULT_CFGS
from .registry import PRETRAINED_INDEX, CheckpointRecord, check_name_part, check_repo_id, finetune_tag
from .rules import RULES
from .training import records
from .training.recipe import train_command
from .weights import fetch, folder_source


RUN_METRICS = "metrics.json"
RESULTS_START, RESULTS_END = "<!-- results:start -->", "<!-- results:end -->"
CARD_FILES = ("history.csv", "curves.png", "alignment.png", "alignment.json")  # recipe.yaml: from Run.recipe

# --------------------------------------------------------------------------------------------------------
# runs


class Run:
    """One finished training run folder (written by ``biotorch train``), validated on reading."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        links = [p.name for p in self.folder.iterdir() if p.is_symlink()] if self.folder.is_dir() else []
        if links:  # a card is built from the run's files: a link could publish any file of this machine
            raise ConfigError(f"{self.folder} holds symbolic links ({', '.join(links[:5])}): a run folder "
                              "must hold its own files")
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
        if not isinstance(self.metrics, dict):
            raise ValueError(f"{self.folder / RUN_METRICS} must hold a JSON object")
        if self.metrics.get("val_top1") is None and "val_top1" in self.metrics:
            raise ValueError(f"{self.folder} has no validation top-1 (val_size 0?): a checkpoint is chosen on "
                             "validation, never on test, so this run cannot be published")
        if self.metrics.get("test_top1") is None and "test_top1" in self.metrics:
            raise ValueError(f"{self.folder} has no test top-1 (its image folder has no test/): a card reports the "
                             "test set, evaluated once; add <data_dir>/test/<class>/ images and train again, or share "
                             "the weights without a card (biotorch.save_pretrained, then push that folder)")
        for key in ("val_top1", "test_top1"):
            value = self.metrics.get(key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 100:
                raise ValueError(f"{self.folder / RUN_METRICS}: {key!r} must be a percentage, got {value!r}")
        for key in ("epochs_trained", "best_epoch"):
            value = self.metrics.get(key, 1)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{self.folder / RUN_METRICS}: {key!r} must be a positive number of epochs, "
                                 f"got {value!r}: an untrained run is not published")
        for key in ("arch", "rule", "dataset"):
            check_name_part(self.metrics.get(key), f"{self.folder / RUN_METRICS}: {key!r}")
        recipe_path = self.folder / "recipe.yaml"
        self.recipe = (load_yaml(recipe_path.read_text(), str(recipe_path)) if recipe_path.is_file()
                       else dict(self.metrics.get("recipe") or {}))
        if self.recipe.get("data_dir"):  # where the data lay on the training machine: not part of the recipe
            self.recipe["data_dir"] = None

    @property
    def key(self) -> tuple[str, str, str]:
        return self.metrics["arch"], self.metrics["rule"], self.metrics["dataset"]

    @property
    def tag(self) -> str:
        """The dataset; for a fine-tuned run, also where it started (``registry.finetune_tag``)."""
        _, rule, dataset = self.key
        started = self.metrics.get("init_from")
        tag = finetune_tag(dataset, rule, started) if started else dataset
        return check_name_part(tag, f"{self.folder}: the run's tag")  # it becomes a card folder's name

    @property
    def name(self) -> str:
        arch, rule, _ = self.key
        return f"{arch}_{rule}.{self.tag}"

    def __repr__(self) -> str:
        return f"Run({str(self.folder)!r}, seed={self.metrics['seed']})"


def find_runs(runs_root: Path) -> list[Run]:
    """Every finished run (a folder with ``best.safetensors`` and ``metrics.json``) under ``runs_root``."""
    runs_root = Path(runs_root)
    if not runs_root.is_dir():
        raise FileNotFoundError(f"no runs folder at {runs_root}")
    return [Run(p.parent) for p in sorted(runs_root.rglob(RUN_METRICS)) if (p.parent / RUN_WEIGHTS).is_file()]


def group_runs(runs: Sequence[Run]) -> dict[str, list[Run]]:
    """``{"arch_rule.tag": [runs sorted by seed]}``, bp groups first (other cards cite them)."""
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
    """The published checkpoint's numbers plus mean ± std over seeds (the ``metrics`` of CheckpointRecord)."""
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


def _dataset_info(run: Run):
    """The data of a run as its card describes it: a catalogued dataset's; an image folder's as the run saw it (its
    config.json: classes, size, normalisation; the folder itself may be on another machine)."""
    dataset = run.metrics["dataset"]
    if dataset == "imagefolder":
        config = read_config(run.folder) if (run.folder / CONFIG_NAME).is_file() else {}
        data = config.get("pretrained_cfg") or {}
        if not data.get("mean") or not data.get("label_names"):
            raise ValueError(f"{run.folder}: an image-folder run's config.json must record its images' normalisation "
                             "and class names (runs of biotorch 0.1's trainer do); this one does not")
        info = DatasetInfo.from_cfg({**data, "input_size": config["input_size"]})
        return dataclasses.replace(info, name="imagefolder", description="the image folder the run was trained on")
    try:
        return dataset_info(dataset)
    except (KeyError, FileNotFoundError, ValueError) as error:
        raise ValueError(f"cannot describe dataset {dataset!r} of the run: {error}") from None


def _split_text(info, run: Run) -> str:
    recipe, images = run.recipe, run.metrics.get("images") or {}
    if info.name == "imagefolder" and images:
        val = f"held out of train/ with seed {SPLIT_SEED}" if run.metrics.get("val_held_out") else "its val/"
        return (f"an image folder: train {images['train']:,} / val {images['val']:,} ({val}; model selection) / "
                f"test {images['test']:,} evaluated once")
    if info.val_size is None:
        return "train / val / test are separate folders; val chose the checkpoint, test evaluated once"
    val = recipe.get("val_size") or info.val_size
    train = info.train_size + info.val_size - val
    if recipe.get("limit_train"):
        train = min(train, recipe["limit_train"])
    return (f"train {train:,} / val {val:,} held out from the training set with seed {SPLIT_SEED} "
            f"(model selection); test {info.test_size:,} evaluated once")


def default_dataset(arch: str) -> str:
    """The tag a name without one resolves to: declared with the architecture (``@architecture(default_data=)``),
    so every folder knows whether it is the default without looking at the others."""
    return DEFAULT_CFGS[arch]["default_data"]


# --------------------------------------------------------------------------------------------------------
# the card folder


def _baseline(arch: str, tag: str, baseline_runs, out_dir: Path) -> Optional[dict]:
    if baseline_runs:
        return aggregate([Run(Path(p)) if not isinstance(p, Run) else p for p in baseline_runs])
    for cards_dir in dict.fromkeys((out_dir.parent, MIRROR)):
        path = cards_dir / f"{arch}_bp.{tag}" / "metrics.json"
        if path.is_file():
            return json.loads(path.read_text())
    return None


def _history_rows(run: Run) -> list[dict]:
    path = run.folder / "history.json"
    return json.loads(path.read_text()) if path.is_file() else []


def _copy_records(run: Run, out: Path) -> bool:
    """Copy (or, where missing, regenerate) the training record; returns whether there is an alignment plot."""
    title = f"{run.metrics['arch']}_{run.metrics['rule']} on {run.metrics['dataset']}, seed {run.metrics['seed']}"
    for name in CARD_FILES:
        if (run.folder / name).is_file():
            shutil.copyfile(run.folder / name, out / name)
    if not (out / "recipe.yaml").is_file() and run.recipe:
        write_text(out / "recipe.yaml", yaml.safe_dump(run.recipe, sort_keys=False))
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
                      hub_org: str = HUB_ORG, owner: str = HUB_ORG, forced_over: Optional[str] = None,
                      repo_id: Optional[str] = None) -> Path:
    """Build one Hub repo folder from the seeds of one (arch, rule, dataset); returns ``out_dir``.

    The seed with the best validation top-1 is published. ``baseline_runs`` are the bp runs of the same
    architecture and data (default: ``{arch}_bp.{dataset}/metrics.json`` beside ``out_dir`` or in the mirror).
    ``repo_id``: the Hub repo of a user's card (:func:`user_card_folder`); default ``<hub_org>/<name>``, the zoo's.
    The folder is built aside and swapped in, so a failure leaves the previous folder untouched.

    Example::

        >>> build_card_folder([Path("runs/lenet_fa.fashion_mnist-seed0"), Path("runs/lenet_fa.fashion_mnist-seed1")],
        ...                   Path("model_cards/lenet_fa.fashion_mnist"))
    """
    runs = [r if isinstance(r, Run) else Run(Path(r)) for r in run_dirs]
    if not runs:
        raise ValueError("build_card_folder needs at least one run folder")
    names = {r.name for r in runs}
    if len(names) != 1:
        raise ValueError(f"the runs of one card must share arch, rule and dataset (and where they started); "
                         f"got {sorted(names)}")
    differ = sorted({k for r in runs for k in r.recipe.keys() | runs[0].recipe.keys()
                     if k not in RECIPE_PER_RUN and r.recipe.get(k) != runs[0].recipe.get(k)})
    if differ:
        raise ValueError(f"the seeds of {runs[0].name} were trained with different recipes ({', '.join(differ)} "
                         "differ): mean ± std over seeds needs one recipe")
    (arch, rule, dataset), tag, best = runs[0].key, runs[0].tag, select_best(runs)
    out_dir = Path(out_dir)
    rule_options = dict(best.recipe.get("rule_options") or {})
    info = _dataset_info(best)

    model = create_model(f"{arch}_{rule}", num_classes=info.num_classes, in_chans=info.in_chans,
                         seed=best.metrics["seed"], **rule_options)
    found = fetch(folder_source(best.folder / RUN_WEIGHTS), require_model=False, config_required=False)
    load_checkpoint(model, found.file, found.sha256)  # the weights published: checked against the run's record
    params_forward, params_feedback = count_parameters(model)
    name = f"{arch}_{rule}.{tag}"
    cfg = dict(name=name, arch=arch, rule=rule, tag=tag, dataset=dataset, split=_split_text(info, best),
               num_classes=info.num_classes, label_names=list(info.label_names), input_size=list(info.input_size),
               mean=list(info.mean), std=list(info.std), interpolation=info.interpolation, recipe=best.recipe,
               metrics=dict(aggregate(runs), **({"forced_over": forced_over} if forced_over else {})),
               params_forward=params_forward, params_feedback=params_feedback,
               files={}, hub_id=repo_id or f"{hub_org}/{name}", rule_options=rule_options,
               default=tag == default_dataset(arch), init_from=best.metrics.get("init_from"))
    missing = {f.name for f in dataclasses.fields(CheckpointRecord)} - cfg.keys()
    assert not missing, missing  # every CheckpointRecord field, so the index loads into the dataclass

    staging = out_dir.with_name(f".{out_dir.name}.building")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        # Weights first; then the config is rewritten with the hash of the file actually written.
        save_pretrained(model, staging, pretrained_cfg=cfg)
        weights = staging / WEIGHTS_NAME
        cfg["files"] = {WEIGHTS_NAME: file_record(weights)}
        config = json.loads((staging / CONFIG_NAME).read_text())
        kept = robustness.carried_over(out_dir, recorded_sha256(cfg))  # same weights
        # the config and the index carry the numbers; only metrics.json the per-image outcomes (worst-case joins)
        cfg["metrics"].update({key: robustness.without_outcomes(block) for key, block in kept.items()})
        config["files"], config["pretrained_cfg"] = cfg["files"], cfg
        write_json(staging / CONFIG_NAME, config)  # JSON without NaN

        has_alignment = _copy_records(best, staging)
        metrics_file = {"name": name, "arch": arch, "rule": rule, "dataset": dataset, **cfg["metrics"], **kept,
                        "runs": [r.metrics for r in runs]}
        write_json(staging / "metrics.json", metrics_file)
        baseline = None if rule == "bp" else _baseline(arch, tag, baseline_runs, out_dir)
        attacks = robustness.model_index(cfg["metrics"].get("robustness"))
        section = robustness.card_section(cfg, staging, cards_dirs=(out_dir.parent, MIRROR))  # draws robustness.png
        learning = RULES[rule]
        card = model_card(cfg, best.recipe, baseline, has_alignment, owner, hub_org, section, extra_results=attacks,
                          rule_summary=learning.summary or (learning.__doc__ or "").strip(),
                          rule_citation=learning.citation, reproduce=train_command(best.recipe),
                          zoo=repo_id is None)
        write_text(staging / "README.md", str(card))
        for path in staging.iterdir():
            path.chmod(0o644)  # atomic writes create private temporary files; a published repo is readable
        replace_folder(staging, out_dir)
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
    cfgs = []
    for config_path in sorted(Path(cards_dir).glob(f"*/{CONFIG_NAME}")):
        folder = config_path.parent
        cfg = json.loads(config_path.read_text()).get("pretrained_cfg")
        if cfg is None:
            raise ValueError(f"{config_path} has no pretrained_cfg: rebuild the folder with scripts/publish.py")
        if cfg["name"] != folder.name:
            raise ValueError(f"{folder} holds {cfg['name']}: folder and checkpoint names must match")
        expected = recorded_sha256(cfg)
        if sha256(folder / WEIGHTS_NAME) != expected:
            raise ValueError(f"{folder / WEIGHTS_NAME} does not match the sha256 in its config.json: rebuild it")
        cfgs.append(cfg)
    cfgs.sort(key=lambda c: c["name"])
    write_json(Path(index_path), cfgs)
    registry._pretrained.cache_clear()
    return cfgs


def results_table(records: Sequence[dict]) -> str:
    """The README's results table (markdown) from pretrained_cfg records."""
    rows = []
    for cfg in sorted(records, key=lambda c: (c["dataset"], c["arch"], c["rule"] != "bp", c["rule"])):
        m = cfg["metrics"]
        rows.append([f"`{cfg['name']}`", cfg["rule"], cfg["dataset"], pct(m["test_top1"]),
                     spread(m, "test_top1"), pct(m["val_top1"]), f"{cfg['params_forward'] / 1e6:.2f}M",
                     f"{cfg['params_feedback'] / 1e6:.2f}M"])
    if not rows:
        return "No pretrained checkpoints have been published yet."
    return markdown_table(["model", "rule", "dataset", "test top-1 %", "test top-1 % mean ± std", "val top-1 %",
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
        write_text(readme, new)
    return new


# --------------------------------------------------------------------------------------------------------
# publish


def _same_weights(run: Run, folder: Path) -> bool:
    """Whether ``folder``'s published weights hold exactly the run's tensors (the dry run cannot hash a new file)."""
    if not (folder / WEIGHTS_NAME).is_file():
        return False
    (new, _), (old, _) = read_checkpoint(run.folder / RUN_WEIGHTS), read_checkpoint(folder / WEIGHTS_NAME)
    return new.keys() == old.keys() and all(torch.equal(new[k], old[k]) for k in new)


def _verify_runs(runs: Sequence[Run]) -> None:
    """Each run's ``best.safetensors`` against the sha256 its ``config.json`` records (the trainer writes it at the
    end of a run): a swapped or damaged file is refused before anything is built."""
    for run in runs:
        found = fetch(folder_source(run.folder / RUN_WEIGHTS), require_model=False, config_required=False)
        if found.sha256 is None:
            raise ValueError(f"{run.folder}: its config.json records no sha256 for {RUN_WEIGHTS}: not a finished run "
                             "of biotorch train; nothing published")
        verify_sha256(found.file, found.sha256)


def _worse_than_published(runs: Sequence[Run], folder: Path) -> Optional[str]:
    """Why ``runs`` would be a worse card than the one published in ``folder`` (lower validation top-1, fewer
    seeds or fewer epochs), or None."""
    if not (folder / CONFIG_NAME).is_file():
        return None
    old = (read_config(folder, require_model=False).get("pretrained_cfg") or {}).get("metrics") or {}
    new = aggregate(runs)
    reasons = [f"{what} {new[key]} < {old[key]}" for key, what in (("val_top1", "validation top-1"),
                                                                   ("seeds", "seeds"), ("epochs", "epochs"))
               if isinstance(old.get(key), (int, float)) and isinstance(new.get(key), (int, float))
               and new[key] < old[key]]
    return "; ".join(reasons) or None


def _pending_pushes(cards_dir: Path) -> set:
    """The cards whose push has not succeeded yet (``cards_dir/.to_push.json``, on this machine only)."""
    path = cards_dir / TO_PUSH
    return set(json.loads(path.read_text())) if path.is_file() else set()


def _remember_pushes(cards_dir: Path, names: set) -> set:
    """Write the cards still to push (none: the file goes); returns ``names``."""
    if names:
        write_text(cards_dir / TO_PUSH, json.dumps(sorted(names)) + "\n")
    else:
        (cards_dir / TO_PUSH).unlink(missing_ok=True)
    return names


TO_PUSH = ".to_push.json"


def publish(runs_root: Path, cards_dir: Path = MIRROR, dry_run: bool = False, push: bool = True,
            org: str = HUB_ORG, token: Optional[str] = None, readme: Optional[Path] = REPO_ROOT / "README.md",
            index_path: Path = PRETRAINED_INDEX, log=print, force: bool = False) -> list[dict]:
    """Build every card folder from the runs under ``runs_root``, rebuild the index and README table, and
    push the folders whose weights changed (or whose last push failed) when a Hub token is available. Returns
    the plan (one dict per card).

    Checked first, for every card, before anything is written: each run's weights against their sha256, and
    that no published card is replaced by a worse one (lower validation top-1, fewer seeds or epochs) unless
    ``force`` (the card then records what it replaced). ``dry_run`` only prints the plan and writes nothing.
    """
    from huggingface_hub import get_token

    cards_dir = Path(cards_dir)
    groups = group_runs(find_runs(runs_root))
    token = token or get_token()
    # One writer of the cards, the index and the README table at a time (a dry run writes nothing).
    with contextlib.nullcontext() if dry_run else FolderLock(cards_dir, wait=True):
        replaced = {}
        for name, runs in groups.items():
            _verify_runs(runs)
            worse = _worse_than_published(runs, cards_dir / name)
            if worse and not force:
                raise ValueError(f"{name}: the runs would replace a better published card ({worse}); nothing "
                                 "published (--force replaces it, and the card records it)")
            if worse:
                replaced[name] = worse
        pending = _pending_pushes(cards_dir)
        plan = []
        for name, runs in groups.items():
            folder, best = cards_dir / name, select_best(runs)
            arch, tag = runs[0].key[0], runs[0].tag
            if dry_run:
                changed = not _same_weights(best, folder)
            else:
                before = folder_sha256(folder)
                baseline = groups.get(f"{arch}_bp.{tag}")
                build_card_folder(runs, folder, baseline_runs=baseline, hub_org=org, forced_over=replaced.get(name))
                changed = folder_sha256(folder) != before or name in pending  # a failed push is retried
            plan.append({"name": name, "folder": folder, "repo_id": f"{org}/{name}", "seeds": len(runs),
                         "seed": best.metrics["seed"], "changed": changed, "push": bool(push and token and changed)})
        for item in plan:
            verb = "would build" if dry_run else "built"
            action = ("push" if item["push"] else "no push: " + ("weights unchanged" if not item["changed"]
                                                                else "no token" if push else "--no-push"))
            log(f"{verb} {item['folder']} from {seeds_text(item['seeds'])}, publishing seed {item['seed']} "
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
        pending = _remember_pushes(cards_dir, pending | {item["name"] for item in plan if item["push"]})
        for item in plan:
            if item["push"]:
                upload_folder(item["folder"], item["repo_id"], token=token,
                              commit_message=f"Publish {item['name']} (seed {item['seed']} of {item['seeds']})")
                pending = _remember_pushes(cards_dir, pending - {item["name"]})
                log(f"pushed {item['folder']} → {item['repo_id']}")
        return plan


def user_card_folder(run_dir: Path, repo_id: str, out_dir: Path) -> Path:
    """The folder that :func:`push_to_hub` uploads for a finished training run: the run's weights and its card,
    which loads the model from ``repo_id`` (not the zoo's name), lists its classes and input, and says how to
    train it again. ``biotorch push RUN --repo-id ID --dry-run`` writes it for a look before pushing."""
    owner = check_repo_id(repo_id, "the Hub repo id").split("/")[0]
    return build_card_folder([run_dir], out_dir, hub_org=owner, owner=owner, repo_id=repo_id)


def is_run(folder: Path) -> bool:
    """Whether ``folder`` is a finished training run (``best.safetensors`` and ``metrics.json``)."""
    return (Path(folder) / RUN_WEIGHTS).is_file() and (Path(folder) / RUN_METRICS).is_file()


def push_to_hub(folder: Path, repo_id: str, token: Optional[str] = None, private: bool = False,
                commit_message: Optional[str] = None, revision: Optional[str] = None,
                endpoint: Optional[str] = None):
    """Publish a checkpoint folder, or a finished training run (its card folder is built first), in one commit.

    Returns huggingface_hub's ``CommitInfo``.

    Example::

        >>> biotorch.push_to_hub("runs/lenet_fa.fashion_mnist-seed0", "me/lenet_fa.fashion_mnist")
    """
    folder, (owner, repo) = Path(folder), check_repo_id(repo_id, "the Hub repo id").split("/")
    if is_run(folder):
        with tempfile.TemporaryDirectory(prefix="biotorch-push-") as staging:
            card = user_card_folder(folder, repo_id, Path(staging) / repo)
            return upload_folder(card, repo_id, token, private, commit_message, revision, endpoint)
    if not (folder / WEIGHTS_NAME).is_file() or not (folder / CONFIG_NAME).is_file():
        raise FileNotFoundError(f"{folder} is neither a checkpoint folder ({WEIGHTS_NAME}, {CONFIG_NAME}) nor a "
                                f"finished training run ({RUN_WEIGHTS}, {RUN_METRICS})")
    return upload_folder(folder, repo_id, token, private, commit_message, revision, endpoint)
