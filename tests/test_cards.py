"""Model cards and the index are generated from training runs, and every published folder is checked."""
from __future__ import annotations

import json
import re
import shlex
import statistics
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from huggingface_hub import ModelCard
from safetensors.torch import load_file

import biotorch
from biotorch import cli, hub, publish, registry
from biotorch.metrics import count_parameters
from biotorch.files import REPO_ROOT
from biotorch.hub import MIRROR, WEIGHTS_NAME, sha256
from biotorch.training.recipe import FIELDS, NOT_REPRODUCED, load_recipe, make_recipe, train_command
from conftest import load_script, write_run

NAME = "lenet_fa.fashion_mnist"


def model_index(card: ModelCard) -> dict[str, float]:
    """``{split: top-1}`` from a card's model-index (clean accuracy; attack results carry a metric_config)."""
    return {r.dataset_split: r.metric_value for r in card.data.eval_results if r.metric_config is None}


def outputs(model: torch.nn.Module) -> torch.Tensor:
    x = torch.randn(4, *model.default_input_size, generator=torch.Generator().manual_seed(0))
    model.eval()
    with torch.no_grad():
        return model(x[:, :model.biotorch_config["in_chans"]])


@pytest.fixture
def two_seeds(make_run):
    # Seed 0 validates best but tests worse than seed 1: only validation may choose the checkpoint.
    return [make_run(seed=0, val_top1=90.0, test_top1=80.0), make_run(seed=1, val_top1=85.0, test_top1=88.0)]


@pytest.fixture
def card(two_seeds, tmp_path) -> Path:
    return publish.build_card_folder(two_seeds, tmp_path / "cards" / NAME)


def test_card_folder_publishes_the_best_validation_seed(card, two_seeds):
    assert sorted(p.name for p in card.iterdir()) == sorted(
        ["model.safetensors", "config.json", "README.md", "metrics.json", "history.csv", "recipe.yaml",
         "curves.png", "alignment.png", "alignment.json"])
    metrics = json.loads((card / "metrics.json").read_text())
    assert metrics["seed"] == 0 and metrics["val_top1"] == 90.0 and metrics["test_top1"] == 80.0
    assert metrics["seeds"] == 2 and metrics["seed_list"] == [0, 1]
    assert metrics["test_top1_mean"] == pytest.approx(84.0)
    assert metrics["test_top1_std"] == pytest.approx(statistics.stdev([80.0, 88.0]))
    assert [r["seed"] for r in metrics["runs"]] == [0, 1]

    published = biotorch.from_pretrained(card)
    seed0, seed1 = (hub.load_checkpoint(biotorch.create_model("lenet_fa", in_chans=1, seed=seed),
                                        run / "best.safetensors") for seed, run in enumerate(two_seeds))
    assert torch.equal(outputs(published), outputs(seed0))
    assert not torch.equal(outputs(published), outputs(seed1))


def test_config_records_every_pretrained_field_and_the_file_hash(card):
    config = json.loads((card / "config.json").read_text())
    cfg = config["pretrained_cfg"]
    registry.CheckpointRecord(**cfg)  # every field present, none unknown
    info = biotorch.data.DATASETS["fashion_mnist"]
    assert cfg["name"] == NAME and cfg["tag"] == "fashion_mnist" and cfg["hub_id"] == f"biotorch/{NAME}"
    assert cfg["label_names"] == list(info.label_names) and cfg["num_classes"] == 10
    assert cfg["input_size"] == [1, 32, 32] and cfg["mean"] == list(info.mean) and cfg["std"] == list(info.std)
    assert "val 10,000 held out" in cfg["split"] and "test 10,000" in cfg["split"]
    assert cfg["default"] is True  # fashion_mnist is lenet's default tag
    weights = card / WEIGHTS_NAME
    expected = {WEIGHTS_NAME: {"sha256": sha256(weights), "size": weights.stat().st_size}}
    assert cfg["files"] == config["files"] == expected
    model = biotorch.create_model("lenet_fa", in_chans=1)
    assert (cfg["params_forward"], cfg["params_feedback"]) == count_parameters(model)


def test_card_front_matter_parses_and_matches_metrics(card):
    parsed = ModelCard.load(card / "README.md")
    metrics = json.loads((card / "metrics.json").read_text())
    data = parsed.data
    assert data.library_name == "biotorch" and data.license == "mit"
    assert data.pipeline_tag == "image-classification" and data.metrics == ["accuracy"]
    assert {"biologically-plausible", "fa", "image-classification", "lenet", "fashion_mnist"} <= set(data.tags)
    assert data.datasets == ["fashion_mnist"] and data.base_model is None
    assert model_index(parsed) == {"validation": metrics["val_top1"], "test": metrics["test_top1"]}
    text = parsed.text
    # the reproduce command names the run's own recipe (recipes/<data>/<arch>_<rule>.yaml) or the rule
    assert re.search(r"biotorch train --recipe \S*(lenet_fa\.yaml|\S+ --rule fa) --seed 0", text)
    for needle in ("Feedback Alignment", "torch.hub.load(",
                   'biotorch.create_model("lenet_fa.fashion_mnist", pretrained=True)',
                   'timm.create_model("lenet_fa", pretrained=True)', "reset_classifier", "num_classes=",
                   "alignment.png", "2 seeds", "@article{lillicrap2016random", "84.00 ± 5.66"):
        assert needle in text, needle


def test_missing_plots_are_drawn_from_the_records(make_run, tmp_path):
    run = make_run(plots=False)
    folder = publish.build_card_folder([run], tmp_path / "cards" / NAME)
    for plot in ("curves.png", "alignment.png"):
        assert (folder / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_baseline_and_cifar10_jpeg_limitations(make_run, tmp_path):
    cards = tmp_path / "cards"
    bp = make_run(rule="bp", dataset="cifar10_jpeg", val_top1=70.0, test_top1=68.5)
    publish.build_card_folder([bp], cards / "lenet_bp.cifar10_jpeg")
    fa = make_run(dataset="cifar10_jpeg", val_top1=60.0, test_top1=58.0)
    folder = publish.build_card_folder([fa], cards / "lenet_fa.cifar10_jpeg")
    parsed = ModelCard.load(folder / "README.md")
    assert parsed.data.datasets == ["cifar10"] and "cifar10_jpeg" in parsed.data.tags
    assert parsed.data.base_model is None
    assert "not CIFAR-10; accuracies are not comparable to CIFAR-10 numbers" in parsed.text
    assert "lenet_bp (baseline)" in parsed.text and "68.50" in parsed.text and "-10.50 points" in parsed.text
    assert json.loads((folder / "config.json").read_text())["pretrained_cfg"]["default"] is False
    # Baseline runs given explicitly win over the published folder.
    other_bp = make_run(rule="bp", dataset="cifar10_jpeg", seed=3, val_top1=71.0, test_top1=66.25)
    folder = publish.build_card_folder([fa], cards / "lenet_fa.cifar10_jpeg", baseline_runs=[other_bp])
    assert "66.25" in ModelCard.load(folder / "README.md").text


def started(source: str, rule: str = "fa", tag: str = "fashion_mnist", hub_id: str | None = None) -> dict:
    """A fine-tuned run's start, as ``biotorch.init_from`` records it."""
    return {"source": source, "name": source if hub_id else None, "hub_id": hub_id, "arch": "lenet", "rule": rule,
            "rule_options": {}, "tag": tag, "dataset": "fashion_mnist", "num_classes": 10, "in_chans": 1,
            "sha256": "ab" * 32, "head": "new", "adapted": [], "feedback": "kept"}


def test_fine_tuned_card_names_its_parent_the_hub_way(make_run, tmp_path):
    cards, data = tmp_path / "cards", "cifar10_jpeg_gray"
    parent = {rule: started(f"lenet_{rule}.fashion_mnist", rule, hub_id=f"biotorch/lenet_{rule}.fashion_mnist")
              for rule in ("bp", "fa")}
    runs = [make_run("bp-ft", rule="bp", dataset=data, val_top1=50.0, test_top1=49.0, started_from=parent["bp"]),
            make_run("fa-ft", dataset=data, val_top1=40.0, test_top1=39.5, started_from=parent["fa"]),
            make_run("fa", dataset=data, val_top1=30.0, test_top1=29.0)]  # the same data from scratch: its own card
    groups = publish.group_runs([publish.Run(r) for r in runs])
    assert list(groups) == ["lenet_bp.cifar10_jpeg_gray-ft-fashion_mnist", "lenet_fa.cifar10_jpeg_gray",
                            "lenet_fa.cifar10_jpeg_gray-ft-fashion_mnist"]
    name = "lenet_fa.cifar10_jpeg_gray-ft-fashion_mnist"
    publish.build_card_folder([runs[0]], cards / "lenet_bp.cifar10_jpeg_gray-ft-fashion_mnist")
    folder = publish.build_card_folder([runs[1]], cards / name)
    parsed = ModelCard.load(folder / "README.md")
    assert parsed.data.base_model == "biotorch/lenet_fa.fashion_mnist"
    assert parsed.data.to_dict()["base_model_relation"] == "finetune"
    assert parsed.data.datasets == ["cifar10"] and parsed.data.model_name == name
    cfg = registry.CheckpointRecord(**json.loads((folder / "config.json").read_text())["pretrained_cfg"])
    assert (cfg.name, cfg.tag, cfg.dataset, cfg.default) == (name, "cifar10_jpeg_gray-ft-fashion_mnist", data, False)
    assert cfg.init_from == parent["fa"] and cfg.input_size == [1, 32, 32]
    text = parsed.text
    for needle in ("Fine-tuned from [`lenet_fa.fashion_mnist`](https://huggingface.co/biotorch/lenet_fa.fashion_mnist):"
                   " new head for cifar10_jpeg_gray's classes; input layer kept; feedback state kept (the same rule, fa)",
                   "| `init_from` | `lenet_fa.fashion_mnist` |", "--init-from lenet_fa.fashion_mnist",
                   "trained on fashion_mnist; then fine-tuned on CIFAR-10 JPEG (q75, 4:2:0) in grayscale (train",
                   "lenet_bp (baseline)", "(fine-tuned the same way): -9.50 points"):
        assert needle in text, needle
    assert "freeze_backbone" not in text  # fine-tuning keys at their defaults are not listed

    local = make_run("local", rule="kp", dataset=data, started_from=started("out/my_fa", "fa", tag="my_fa"))
    assert publish.Run(local).name == "lenet_kp.cifar10_jpeg_gray-ft-fa-my_fa"  # another rule: named in the tag
    parsed = ModelCard.load(publish.build_card_folder([local], cards / "local") / "README.md")
    assert parsed.data.base_model is None and "base_model_relation" not in parsed.data.to_dict()
    assert "Fine-tuned from `out/my_fa`: new head" in parsed.text
    assert "feedback state kept" in parsed.text


def reproduce_command(card: Path) -> str:
    """The command under the card's "Reproduce this checkpoint"."""
    return re.search(r"Reproduce this checkpoint.*?```bash\n(.*?)\n```", (card / "README.md").read_text(), re.S)[1]


def recipe_of(command: str) -> dict:
    """The recipe ``command`` (``biotorch train ...``, run in a clone) trains, resolved as the CLI resolves it."""
    argv = shlex.split(command, comments=True)
    assert argv[:2] == ["biotorch", "train"], command
    args = cli.build_parser().parse_args(argv[1:])
    return load_recipe(args.recipe and REPO_ROOT / args.recipe, cli._train_overrides(args)).to_dict()


def reproduced(recipe: dict) -> dict:
    return {k: v for k, v in recipe.items() if k in FIELDS and k not in NOT_REPRODUCED}


def test_the_reproduce_command_trains_this_checkpoint(make_run, tmp_path):
    # A card trained longer, with another optimizer and batch than its zoo recipe (issue 44, item 5), from a
    # folder whose name is shell code (issue 47, item 13).
    parent = hub.save_pretrained(biotorch.create_model("lenet_dfa", in_chans=1), tmp_path / "a b$(touch X)'\"")
    recipe = make_recipe({"model": "lenet", "data": "fashion_mnist", "rule": "dfa", "epochs": 100, "batch_size": 64,
                          "optimizer": "adamw", "lr": 3e-4, "betas": [0.8, 0.99], "label_smoothing": 0.1,
                          "milestones": [30, 60.5], "schedule": "step", "amp": "bf16", "seed": 7,
                          "warmup_epochs": 2, "val_size": 5000, "init_from": str(parent)}).to_dict()
    run = make_run(rule="dfa", seed=7, **{k: v for k, v in recipe.items() if k not in ("rule", "seed")})
    card = publish.build_card_folder([run], tmp_path / "cards" / "x")
    command = reproduce_command(card)
    assert command.startswith("biotorch train --recipe recipes/fashion_mnist/lenet_dfa.yaml --seed 7 --init-from '")
    assert reproduced(recipe_of(command)) == reproduced(recipe)
    # The shell reads the same words, and runs nothing of them.
    words = subprocess.run(["bash", "-c", f"printf '%s\\0' {command}"], cwd=tmp_path, capture_output=True,
                           check=True).stdout.decode().split("\0")[:-1]
    assert words == shlex.split(command) and not (tmp_path / "X").exists()


@pytest.mark.parametrize("folder", sorted(MIRROR.glob("*/recipe.yaml")), ids=lambda p: p.parent.name)
def test_every_published_card_is_reproduced_by_its_command(folder, monkeypatch):
    monkeypatch.chdir(REPO_ROOT)
    recipe = yaml.safe_load(folder.read_text())
    command = train_command(recipe)
    assert reproduced(recipe_of(command)) == reproduced(make_recipe(recipe, resolved=True).to_dict()), command


def test_one_seed_has_no_spread(make_run, tmp_path):
    text = (publish.build_card_folder([make_run()], tmp_path / "cards" / NAME) / "README.md").read_text()
    assert "| 79.00 | 1 seed |" in text and "± 0.00" not in text
    record = json.loads((tmp_path / "cards" / NAME / "config.json").read_text())["pretrained_cfg"]
    assert "| 1 seed |" in publish.results_table([record])


def test_runs_are_validated(make_run, tmp_path):
    with pytest.raises(ValueError, match="share arch, rule and dataset"):
        publish.build_card_folder([make_run(seed=0), make_run(rule="bp", seed=1)], tmp_path / "x")
    with pytest.raises(ValueError, match=r"different recipes \(lr differ"):
        publish.build_card_folder([make_run(seed=0), make_run(seed=1, lr=0.5)], tmp_path / "x")
    with pytest.raises(ValueError, match="trained more than once"):
        publish.group_runs([publish.Run(make_run(seed=0)), publish.Run(make_run("again", seed=0))])
    no_val = make_run("no_val", val_top1=None)
    with pytest.raises(ValueError, match="never on test"):
        publish.Run(no_val)
    with pytest.raises(FileNotFoundError, match="not a finished training run"):
        publish.Run(tmp_path)


@pytest.fixture
def temp_index(tmp_path, monkeypatch):
    """The registry reads a temporary index and mirror; restored (and its cache cleared) afterwards."""
    index, cards = tmp_path / "pretrained.json", tmp_path / "cards"
    monkeypatch.setattr(registry, "PRETRAINED_INDEX", index)
    monkeypatch.setattr(hub, "MIRROR", cards)
    registry._pretrained.cache_clear()
    yield index, cards
    registry._pretrained.cache_clear()


def test_index_and_readme_table_round_trip(two_seeds, temp_index, tmp_path):
    index, cards = temp_index
    publish.build_card_folder(two_seeds, cards / NAME)
    records = publish.build_index(cards, index)
    assert [r["name"] for r in records] == [NAME] == [r["name"] for r in json.loads(index.read_text())]
    assert biotorch.list_models(pretrained=True) == [NAME]  # the registry's cache was cleared
    model = biotorch.create_model("lenet_fa", pretrained=True)  # the default tag, from the mirror
    assert torch.equal(outputs(model), outputs(biotorch.from_pretrained(cards / NAME)))

    readme = tmp_path / "README.md"
    before, after = "# biotorch\n\nintro\n\n", "\n\n## Next section\nkept as is\n"
    readme.write_text(f"{before}{publish.RESULTS_START}\nold table\n{publish.RESULTS_END}{after}")
    text = publish.update_readme_table(readme, index)
    assert text.startswith(before) and text.endswith(f"{publish.RESULTS_END}{after}")
    assert "old table" not in text and f"`{NAME}`" in text and "84.00 ± 5.66 (2 seeds)" in text
    assert publish.update_readme_table(readme, index) == text == readme.read_text()  # idempotent
    readme.write_text("# no markers here\n")
    with pytest.raises(ValueError, match="results:start"):
        publish.update_readme_table(readme, index)


def test_index_refuses_a_folder_whose_weights_changed(card, tmp_path):
    with open(card / WEIGHTS_NAME, "r+b") as f:
        f.seek(-4, 2)
        f.write(b"\0\0\0\0")
    with pytest.raises(ValueError, match="does not match the sha256"):
        publish.build_index(card.parent, tmp_path / "index.json")


def test_publish_plans_builds_and_pushes_only_changed_weights(two_seeds, tmp_path, monkeypatch, capsys):
    runs, cards, index = tmp_path / "runs", tmp_path / "cards", tmp_path / "pretrained.json"
    pushed = []
    monkeypatch.setattr(publish, "upload_folder", lambda folder, repo_id, **kw: pushed.append((folder, repo_id)))
    monkeypatch.setattr(registry, "PRETRAINED_INDEX", index)
    try:
        plan = publish.publish(runs, cards, dry_run=True, org="me", token="hf_test", readme=None, index_path=index)
        assert [(p["name"], p["seed"], p["changed"], p["push"]) for p in plan] == [(NAME, 0, True, True)]
        assert not cards.exists() and not index.exists() and not pushed  # a dry run writes nothing
        assert "would build" in capsys.readouterr().out

        publish.publish(runs, cards, org="me", token="hf_test", readme=None, index_path=index)
        assert pushed == [(cards / NAME, f"me/{NAME}")]
        assert json.loads(index.read_text())[0]["hub_id"] == f"me/{NAME}"
        plan = publish.publish(runs, cards, org="me", token="hf_test", readme=None, index_path=index)
        assert plan[0]["changed"] is False and len(pushed) == 1  # same weights: nothing to push
        plan = publish.publish(runs, cards, dry_run=True, org="me", token="hf_test", readme=None, index_path=index)
        assert plan[0]["changed"] is False
        capsys.readouterr()
        publish_script = load_script("publish")
        assert publish_script.main([str(runs), "--dry-run", "--cards-dir", str(cards), "--index", str(index)]) == 0
        assert "weights unchanged" in capsys.readouterr().out
    finally:
        registry._pretrained.cache_clear()


def test_card_from_real_training_runs(tmp_path):
    """The trainer's own output (two seeds on the synthetic data) publishes, parses and loads back."""
    from biotorch.training import Trainer, make_recipe

    runs = []
    for seed in (0, 1):
        recipe = make_recipe({"model": "lenet", "rule": "dfa", "data": "synthetic", "epochs": 1, "batch_size": 32,
                              "limit_train": 64, "alignment_every": 1, "lr": 0.05, "seed": seed, "device": "cpu"})
        runs.append(tmp_path / "runs" / f"seed{seed}")
        Trainer(recipe, runs[-1], log=None, progress=False).fit()
    folder = publish.build_card_folder(runs, tmp_path / "cards" / "lenet_dfa.synthetic")
    metrics = json.loads((folder / "metrics.json").read_text())
    best = max(metrics["runs"], key=lambda m: (m["val_top1"], -m["seed"]))
    assert metrics["seed"] == best["seed"] and metrics["test_top1"] == best["test_top1"]
    assert model_index(ModelCard.load(folder / "README.md")) == {"validation": best["val_top1"],
                                                                 "test": best["test_top1"]}
    trained = hub.load_checkpoint(biotorch.create_model("lenet_dfa", in_chans=1, seed=best["seed"]),
                                  tmp_path / "runs" / f"seed{best['seed']}" / "best.safetensors")
    assert torch.equal(outputs(biotorch.from_pretrained(folder)), outputs(trained))


# --- every published folder in this repository ------------------------------------------------------------
FOLDERS = sorted(p.parent for p in MIRROR.glob("*/config.json"))


def test_index_lists_exactly_the_published_folders():
    listed = [c["name"] for c in json.loads(registry.PRETRAINED_INDEX.read_text())] \
        if registry.PRETRAINED_INDEX.is_file() else []
    assert listed == sorted(f.name for f in FOLDERS), "rebuild with scripts/publish.py (or publish.build_index())"


@pytest.mark.parametrize("folder", FOLDERS, ids=[f.name for f in FOLDERS])
def test_published_folder(folder):
    cfg = registry._pretrained()[folder.name]
    metrics = json.loads((folder / "metrics.json").read_text())
    parsed = ModelCard.load(folder / "README.md")
    assert model_index(parsed) == {"validation": metrics["val_top1"], "test": metrics["test_top1"]}
    assert cfg.metrics["test_top1"] == metrics["test_top1"] and cfg.metrics["val_top1"] == metrics["val_top1"]
    assert {"biologically-plausible", cfg.rule} <= set(parsed.data.tags)
    assert sha256(folder / WEIGHTS_NAME) == cfg.files[WEIGHTS_NAME]["sha256"]
    assert (folder / WEIGHTS_NAME).stat().st_size == cfg.files[WEIGHTS_NAME]["size"]
    model = biotorch.create_model(folder.name, pretrained=True)  # strict, sha-checked
    assert count_parameters(model) == (cfg.params_forward, cfg.params_feedback)


def test_a_published_resnet20_card_loads_through_torch_hub_offline_on_the_cpu(monkeypatch):
    """The design card's own example: ``torch.hub.load(<clone>, "resnet20_<rule>", source="local")`` gives the
    published weights, which classify the shipped CIFAR-10 JPEG sample images as the card's test top-1 says."""
    cards = [f for f in FOLDERS if f.name.startswith("resnet20_") and f.name.endswith(".cifar10_jpeg")]
    assert cards, "no published resnet20_*.cifar10_jpeg card in model_cards/"
    folder = max(cards, key=lambda f: registry._pretrained()[f.name].metrics["test_top1"])
    cfg = registry._pretrained()[folder.name]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    root = Path(__file__).resolve().parent.parent
    model = torch.hub.load(str(root), cfg.model_name, source="local", tag=cfg.tag, device="cpu")
    assert (model.biotorch_config["arch"], model.biotorch_config["rule"]) == (cfg.arch, cfg.rule)
    state, weights = model.state_dict(), load_file(folder / WEIGHTS_NAME)
    assert weights and all(torch.equal(state[k], v) for k, v in weights.items())
    images, labels = biotorch.data.load_samples(root / "samples" / "cifar10_jpeg", "cifar10_jpeg")
    info = biotorch.data.DATASETS["cifar10_jpeg"]
    x = (images.float() / 255 - torch.tensor(info.mean).view(1, 3, 1, 1)) / torch.tensor(info.std).view(1, 3, 1, 1)
    with torch.no_grad():
        top1 = 100.0 * (model.eval()(x).argmax(1) == labels).float().mean().item()
    # 101 images: within 4 binomial standard deviations of the card's test top-1
    p = cfg.metrics["test_top1"] / 100
    assert abs(top1 / 100 - p) <= 4 * (p * (1 - p) / len(labels)) ** 0.5 + 0.01, (top1, cfg.metrics["test_top1"])


def test_publish_checks_before_it_writes_and_retries_a_failed_push(make_run, tmp_path, monkeypatch):
    runs, cards, index = tmp_path / "runs", tmp_path / "cards", tmp_path / "pretrained.json"
    monkeypatch.setattr(registry, "PRETRAINED_INDEX", index)
    options = dict(org="me", token="hf_test", readme=None, index_path=index)
    try:
        for seed in (0, 1, 2):
            make_run(seed=seed, val_top1=80.0 + seed, epochs=10)
        monkeypatch.setattr(publish, "upload_folder", lambda *a, **k: (_ for _ in ()).throw(OSError("offline")))
        with pytest.raises(OSError, match="offline"):
            publish.publish(runs, cards, **options)
        assert json.loads((cards / publish.TO_PUSH).read_text()) == [NAME]  # the failed push is remembered
        pushed = []
        monkeypatch.setattr(publish, "upload_folder", lambda folder, repo_id, **kw: pushed.append(repo_id))
        plan = publish.publish(runs, cards, **options)  # same weights, but the last push failed: pushed now
        assert plan[0]["push"] and pushed == [f"me/{NAME}"] and not (cards / publish.TO_PUSH).exists()
        published = (cards / NAME / "config.json").read_bytes()

        # a worse run (a 2-epoch smoke run of one seed) never replaces the 3-seed card silently
        smoke = tmp_path / "smoke"
        write_run(smoke / f"{NAME}-seed0", seed=0, val_top1=10.0)
        with pytest.raises(ValueError, match=r"better published card \(validation top-1 10.0 < 82.0; seeds 1 < 3"):
            publish.publish(smoke, cards, **options)
        assert (cards / NAME / "config.json").read_bytes() == published and len(pushed) == 1
        publish.publish(smoke, cards, force=True, **options)  # asked for: done, and the card says so
        metrics = json.loads((cards / NAME / "metrics.json").read_text())
        assert metrics["seeds"] == 1 and "validation top-1 10.0 < 82.0" in metrics["forced_over"]

        # a run whose weights were swapped after training is refused before anything is built
        swapped = tmp_path / "swapped"
        run = write_run(swapped / f"{NAME}-seed0", seed=0, val_top1=99.0, epochs=10)
        hub.save_weights(biotorch.create_model("lenet_fa", in_chans=1), run / "best.safetensors")
        before = (cards / NAME / "config.json").read_bytes()
        with pytest.raises(biotorch.errors.CheckpointError, match="sha256"):
            publish.publish(swapped, cards, **options)
        assert (cards / NAME / "config.json").read_bytes() == before
    finally:
        registry._pretrained.cache_clear()


def test_an_offline_push_is_one_line_and_is_retried_later(make_run, tmp_path, monkeypatch, capsys):
    import huggingface_hub.constants

    make_run()
    runs, cards, index = tmp_path / "runs", tmp_path / "cards", tmp_path / "pretrained.json"
    monkeypatch.setattr(registry, "PRETRAINED_INDEX", index)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    try:
        argv = [str(runs), "--cards-dir", str(cards), "--index", str(index), "--token", "hf_test",
                "--readme", str(tmp_path / "no-readme.md")]
        assert load_script("publish").main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "could not reach the Hub at http://127.0.0.1:9" in err, err
        assert json.loads((cards / publish.TO_PUSH).read_text()) == [NAME]  # built, not pushed: retried next time
    finally:
        registry._pretrained.cache_clear()


def test_publish_waits_for_the_cards_lock_and_a_robustness_write_checks_the_weights(make_run, tmp_path):
    """Card, index and README are written by one process at a time (the cards folder's lock, held here by another
    process); a robustness block is refused by a card republished with other weights meanwhile."""
    import subprocess
    import sys
    import threading

    make_run()
    runs, cards, index = tmp_path / "runs", tmp_path / "cards", tmp_path / "pretrained.json"
    release = tmp_path / "release"
    holder = subprocess.Popen([sys.executable, "-c", f"""
import pathlib, time
from biotorch.files import FolderLock
with FolderLock({str(cards)!r}):
    print("held", flush=True)
    while not pathlib.Path({str(release)!r}).exists():
        time.sleep(0.05)
"""], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        worker = threading.Thread(target=publish.publish, args=(runs, cards),
                                  kwargs=dict(push=False, readme=None, index_path=index, log=lambda line: None))
        worker.start()
        worker.join(timeout=3)
        assert worker.is_alive() and not (cards / NAME).exists() and not index.exists()  # waiting, nothing written
        release.touch()
        worker.join(timeout=120)
        assert not worker.is_alive() and (cards / NAME / "config.json").is_file() and index.is_file()
    finally:
        release.touch()
        holder.wait(timeout=30)
        registry._pretrained.cache_clear()
    attacked = biotorch.hub.folder_sha256(cards / NAME)
    with pytest.raises(ValueError, match="republished with other weights"):
        biotorch.robustness.write_block(cards / NAME, [], weights_sha256="0" * 64)
    assert biotorch.robustness.write_block(cards / NAME, [], weights_sha256=attacked).is_file()
