"""biotorch.weights: one place tells a published name, a folder and a Hub repo apart; each file is read and
hashed once on the way to a model."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

import biotorch
from biotorch import hub, weights
from biotorch.errors import ConfigError
from biotorch.training.recipe import make_recipe
from biotorch.training.trainer import default_run_dir

NAME = "lenet_fa.fashion_mnist"  # a committed card


def test_resolve_tells_names_folders_and_hub_repos_apart(tmp_path, monkeypatch):
    assert weights.resolve(NAME) == weights.Source("name", NAME, name=NAME)
    assert weights.resolve("lenet_fa").name == NAME  # the default tag
    hub_source = weights.resolve("hf-hub:me/lenet_fa.mine")
    assert (hub_source.kind, hub_source.repo_id, hub_source.label()) == ("hub", "me/lenet_fa.mine", "lenet_fa.mine")
    assert hub_source.label(keep_dots=False) == "lenet_fa_mine"
    folder = tmp_path / NAME
    folder.mkdir()
    monkeypatch.chdir(tmp_path)
    # a registered name means the published weights even beside a folder of that name; ./name is the folder
    assert weights.resolve(NAME).kind == "name" and weights.kind(NAME) == "name"
    assert weights.resolve(f".{os.sep}{NAME}").kind == "folder"
    assert weights.resolve(folder) == weights.Source("folder", str(folder), path=folder)
    with pytest.raises(FileNotFoundError, match="no checkpoint folder at no/such"):
        weights.resolve(Path("no/such"))
    with pytest.raises(ConfigError, match="a Hub id is hf-hub:<org>/<repo>"):
        weights.resolve("hf-hub:lenet_fa")
    with pytest.raises(ValueError, match="lenet_fa"):  # an unknown name: its close matches
        weights.resolve("lenet_fx.fashion_mnist")
    assert weights.kind("lenet_fx.fashion_mnist") == "name"  # kind never raises


def test_the_recipe_and_the_loader_read_a_source_the_same_way(tmp_path, monkeypatch):
    # a folder named like a published checkpoint: from_pretrained and the recipe both take the published one
    (tmp_path / NAME).mkdir()
    monkeypatch.chdir(tmp_path)
    recipe = make_recipe({"data": "synthetic", "init_from": NAME})
    assert (recipe.model, recipe.rule) == ("lenet", "fa")  # read as the name, not as the (empty) folder
    assert default_run_dir(recipe) == Path(f"runs/lenet_fa.synthetic-ft-{NAME}-seed0")
    model = biotorch.from_pretrained(NAME)
    assert model.biotorch_config["seed"] == biotorch.get_pretrained_cfg(NAME).seed


def test_fetch_gives_file_record_and_config_of_each_kind(tmp_path):
    published = weights.fetch(NAME)
    record = biotorch.get_pretrained_cfg(NAME)
    assert published.file == hub.MIRROR / NAME / hub.WEIGHTS_NAME and published.record == record
    assert published.sha256 == record.files[hub.WEIGHTS_NAME]["sha256"] == hub.sha256(published.file)
    folder = hub.save_pretrained(biotorch.create_model("lenet_kp", in_chans=1, seed=4), tmp_path / "mine")
    mine = weights.fetch(folder)
    assert (mine.file, mine.sha256) == (folder / hub.WEIGHTS_NAME, hub.folder_sha256(folder))
    assert mine.config["rule"] == "kp" and mine.record is None and mine.record_dict == mine.config["pretrained_cfg"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        weights.fetch(tmp_path / "empty")


def test_a_checkpoint_folder_is_read_and_hashed_once_on_its_way_to_a_model(tmp_path, monkeypatch):
    saved = biotorch.create_model("lenet_fa", in_chans=1, seed=2)
    folder = hub.save_pretrained(saved, tmp_path / "ckpt")
    hashed, configs = [], []
    sha256, read_config = hub.sha256, hub.read_config
    monkeypatch.setattr(hub, "sha256", lambda path: hashed.append(Path(path).name) or sha256(path))
    counting = lambda folder, *a, **k: configs.append(folder) or read_config(folder, *a, **k)  # noqa: E731
    monkeypatch.setattr(hub, "read_config", counting)
    monkeypatch.setattr(weights, "read_config", counting)
    for load in (lambda: biotorch.from_pretrained(folder), lambda: biotorch.pretrained.from_checkpoint(folder)):
        hashed.clear(), configs.clear()
        model = load()
        assert hashed == [hub.WEIGHTS_NAME] and len(configs) == 1, (hashed, configs)
        assert all(torch.equal(v, saved.state_dict()[k]) for k, v in model.state_dict().items())
