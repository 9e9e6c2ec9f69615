"""The real huggingface_hub client against a Hub-compatible server on loopback (olah), and push_to_hub.

Nothing leaves the machine: olah serves git repositories from a temporary folder in offline mode, and the
upload calls of ``push_to_hub`` are recorded instead of sent (olah accepts no uploads).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
from huggingface_hub import HfApi, ModelCard, constants, hf_hub_download, snapshot_download
from huggingface_hub.errors import LocalEntryNotFoundError

import biotorch
from biotorch import hub, publish, registry
from biotorch.hub import CONFIG_NAME, WEIGHTS_NAME, sha256
from conftest import missing_tool, write_run
from hub_server import OlahServer, free_port

NAME = "lenet_fa.fashion_mnist"
REPO = f"biotorch/{NAME}"


def outputs(model: torch.nn.Module) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(torch.randn(4, 1, 32, 32, generator=torch.Generator().manual_seed(0)))


@pytest.fixture(scope="module")
def card(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("card")
    runs = [write_run(root / f"seed{s}", seed=s, val_top1=90.0 - s, test_top1=80.0 + s) for s in (0, 1)]
    return publish.build_card_folder(runs, root / "cards" / NAME)


@pytest.fixture(scope="module")
def server(card, tmp_path_factory):
    if not OlahServer.available():
        missing_tool("olah-cli (pip install olah==0.5.4) and git are needed for the loopback Hub server")
    server = OlahServer(tmp_path_factory.mktemp("olah"))
    server.commit = server.add_repo(REPO, card)
    with server:
        yield server


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("hf_cache")


@pytest.fixture
def endpoint(monkeypatch, cache):
    """``endpoint(url, offline=False)`` points huggingface_hub at ``url`` with the module's cache."""

    def point(url: str, offline: bool = False) -> None:
        monkeypatch.setattr(constants, "ENDPOINT", url)
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}")
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)
        monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")

    return point


def test_download_and_snapshot_give_the_published_files(server, endpoint, card):
    endpoint(server.endpoint)
    config = hf_hub_download(REPO, CONFIG_NAME)
    assert json.loads(Path(config).read_text()) == json.loads((card / CONFIG_NAME).read_text())
    weights = hf_hub_download(REPO, WEIGHTS_NAME, revision=server.commit)
    assert sha256(weights) == sha256(card / WEIGHTS_NAME)
    folder = Path(snapshot_download(REPO, revision="main"))
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in card.iterdir())
    for path in card.iterdir():
        assert (folder / path.name).read_bytes() == path.read_bytes(), path.name


def test_model_info_and_card_from_the_server(server, endpoint, card):
    endpoint(server.endpoint)
    info = HfApi(endpoint=server.endpoint).model_info(REPO, revision="main")
    assert info.sha == server.commit
    assert {s.rfilename for s in info.siblings} == {p.name for p in card.iterdir()}
    remote, local = ModelCard.load(REPO), ModelCard.load(card / "README.md")
    assert remote.data.to_dict() == local.data.to_dict() and remote.text == local.text
    metrics = json.loads((card / "metrics.json").read_text())
    assert {r.dataset_split: r.metric_value for r in remote.data.eval_results} == {
        "validation": metrics["val_top1"], "test": metrics["test_top1"]}


def test_from_pretrained_hf_hub_equals_the_local_folder(server, endpoint, card):
    endpoint(server.endpoint)
    remote = biotorch.from_pretrained(f"hf-hub:{REPO}")
    assert torch.equal(outputs(remote), outputs(biotorch.from_pretrained(card)))
    assert f"{remote.pretrained_cfg['architecture']}.{remote.pretrained_cfg['tag']}" == NAME


def test_hf_hub_downloads_go_to_cache_dir(server, endpoint, tmp_path):
    endpoint(server.endpoint)
    biotorch.from_pretrained(f"hf-hub:{REPO}", cache_dir=tmp_path / "mine")
    model = biotorch.create_model(NAME.partition(".")[0], in_chans=1)
    biotorch.init_from(model, f"hf-hub:{REPO}", cache_dir=tmp_path / "other")
    for cache in ("mine", "other"):
        assert {p.name for p in (tmp_path / cache).rglob("*") if p.is_file()} >= {CONFIG_NAME, WEIGHTS_NAME}


@pytest.fixture
def registry_without_mirror(card, tmp_path, monkeypatch):
    """The registry knows the checkpoint but the clone has no mirror folder: weights come from the Hub."""
    index = tmp_path / "pretrained.json"
    monkeypatch.setattr(registry, "PRETRAINED_INDEX", index)
    monkeypatch.setattr(hub, "MIRROR", tmp_path / "empty_mirror")
    publish.build_index(card.parent, index)
    yield
    registry._pretrained.cache_clear()


def test_offline_mode_loads_from_the_cache(server, endpoint, card, registry_without_mirror):
    endpoint(server.endpoint)
    expected = outputs(biotorch.from_pretrained(card))
    assert torch.equal(outputs(biotorch.create_model(NAME, pretrained=True)), expected)  # downloads (sha-checked)
    assert torch.equal(outputs(timm.create_model(NAME, pretrained=True)), expected)      # timm's way in: the same
    biotorch.from_pretrained(f"hf-hub:{REPO}")  # fills the cache

    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there: any request would fail
    endpoint(dead, offline=True)  # HF_HUB_OFFLINE=1
    assert torch.equal(outputs(biotorch.from_pretrained(f"hf-hub:{REPO}")), expected)
    assert torch.equal(outputs(biotorch.create_model(NAME, pretrained=True)), expected)
    endpoint(dead)  # online mode, but local_files_only
    assert torch.equal(outputs(biotorch.from_pretrained(f"hf-hub:{REPO}", local_files_only=True)), expected)
    with pytest.raises(LocalEntryNotFoundError):
        biotorch.from_pretrained("hf-hub:biotorch/never_downloaded", local_files_only=True)


# --- push_to_hub: the HfApi calls are recorded ---------------------------------------------------------------
@pytest.fixture
def recorded(monkeypatch):
    calls = []

    def create_repo(self, repo_id, **kwargs):
        calls.append(("create_repo", repo_id, kwargs))

    def upload_folder(self, *, folder_path, repo_id, **kwargs):
        folder = Path(folder_path)  # what would be uploaded, read now: a staging folder may not outlive the call
        files = sorted(p.name for p in folder.iterdir())
        config = json.loads((folder / CONFIG_NAME).read_text()) if (folder / CONFIG_NAME).is_file() else None
        calls.append(("upload_folder", repo_id, dict(kwargs, folder_path=folder_path, files=files, config=config)))
        return "commit-info"

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    return calls


def test_push_a_card_folder_in_one_commit(card, recorded):
    assert biotorch.push_to_hub(card, "me/lenet_fa.fashion_mnist", token="hf_test") == "commit-info"
    (create, repo_id, create_kwargs), (upload, upload_repo, upload_kwargs) = recorded
    assert (create, repo_id, upload, upload_repo) == ("create_repo", "me/lenet_fa.fashion_mnist",
                                                      "upload_folder", "me/lenet_fa.fashion_mnist")
    assert create_kwargs["exist_ok"] is True and create_kwargs.get("repo_type", "model") == "model"
    assert Path(upload_kwargs["folder_path"]) == card
    assert upload_kwargs["files"] == sorted(p.name for p in card.iterdir())


def test_push_a_training_run_builds_its_card_first(make_run, recorded):
    run = make_run(seed=3, val_top1=70.0, test_top1=69.0)
    biotorch.push_to_hub(run, "me/lenet_fa.fashion_mnist", token="hf_test")
    assert [c[0] for c in recorded] == ["create_repo", "upload_folder"]
    assert recorded[0][2]["exist_ok"] is True
    _, repo_id, upload = recorded[1]
    folder = Path(upload["folder_path"])
    assert repo_id == "me/lenet_fa.fashion_mnist" and folder.name == "lenet_fa.fashion_mnist"
    assert {WEIGHTS_NAME, CONFIG_NAME, "README.md", "metrics.json", "alignment.png"} <= set(upload["files"])
    assert "best.safetensors" not in upload["files"]
    assert upload["config"]["pretrained_cfg"]["metrics"]["seed"] == 3


def test_olah_is_found_beside_the_interpreter_of_a_virtualenv_that_is_not_activated(tmp_path, monkeypatch):
    import os
    import shutil
    import sys

    import hub_server

    bin_dir = tmp_path / "venv" / "bin"  # `venv/bin/python -m pytest`: bin/ is on no PATH
    bin_dir.mkdir(parents=True)
    olah = bin_dir / "olah-cli"
    olah.write_text("#!/bin/sh\n")
    olah.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(bin_dir / "python"))
    monkeypatch.setenv("PATH", os.pathsep.join([str(tmp_path / "elsewhere"), os.path.dirname(shutil.which("git"))]))
    assert hub_server.tool("olah-cli") == str(olah) and OlahServer.available()
    monkeypatch.setenv("CI", "true")  # and where it is missing, CI fails rather than skips
    olah.unlink()
    assert not OlahServer.available()
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        missing_tool("olah-cli is needed")
