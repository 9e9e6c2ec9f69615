"""Your images, your checkpoint: fine-tuning a published model on a folder of a user's own images, end to end.

A generated folder of 48×48 RGB PNGs in 3 classes (``conftest.make_imagefolder``) stands in for "a few hundred photos
in class folders". The CLI path and the Python path (a plain ``torch.utils.data.Dataset``) each fine-tune
``lenet_fa.fashion_mnist``, evaluate the result from its folder, attack it, push it to the loopback Hub and load it
back from there.
"""
from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

import biotorch
from biotorch import cli
from biotorch.data import DATASETS, imagefolder_info, load_split
from biotorch.data.catalog import DatasetInfo
from biotorch.training.recipe import DATA_DIR, FIELDS, NOT_REPRODUCED, load_recipe
from conftest import make_imagefolder

START = "lenet_fa.fashion_mnist"
CLASSES = ["circle", "cross", "square"]


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return make_imagefolder(tmp_path_factory.mktemp("mine") / "my_images")


def outputs(model, x):
    model.eval()
    with torch.no_grad():
        return model(x)


def run_cli(capsys, *argv) -> str:
    capsys.readouterr()
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def test_fine_tune_evaluate_attack_and_push_from_the_command_line(images, tmp_path, capsys, loopback_hub):
    run = tmp_path / "runs" / "shapes"
    # lr given: the parent's (0.03 at batch 128, scaled linearly to 0.0019 at batch 8) under-trains 32 images in 10
    # epochs (36 % here, 42 % at lr 0.01); what a tiny folder's default should be is issue 48 item 1's open question
    log = run_cli(capsys, "train", "--init-from", START, "--data", "imagefolder", "--data-dir", images, "--epochs", 10,
                  "--batch-size", 8, "--lr", 0.05, "--out", run, "--no-progress")
    assert "no test number" not in log  # the folder has test/
    metrics = json.loads((run / "metrics.json").read_text())
    # The folder has no val/: a seeded tenth of train/ was held out; the images were brought to the checkpoint's input
    assert metrics["images"] == {"train": 32, "val": 4, "test": 36} and metrics["val_held_out"] is True
    config = json.loads((run / "config.json").read_text())
    assert config["input_size"] == [1, 32, 32] and config["num_classes"] == 3
    assert config["pretrained_cfg"]["label_names"] == CLASSES
    assert config["pretrained_cfg"]["mean"] == list(DATASETS["fashion_mnist"].mean)
    assert metrics["test_top1"] >= 50, metrics  # chance is 33 %: it learned the shapes

    result = json.loads(run_cli(capsys, "eval", run, "--json"))  # its own data, from the run's recipe
    assert result["dataset"] == "imagefolder" and result["images"] == 36
    assert result["top1"] == pytest.approx(metrics["test_top1"])
    info = run_cli(capsys, "info", run)
    assert "classes: 3 (circle, cross, square)" in info and "input: 1x32x32" in info

    attacked = json.loads(run_cli(capsys, "robustness", run, "--attack", "fgsm", "--eps", "0.1", "--json"))
    assert attacked["clean_top1"] == pytest.approx(metrics["test_top1"])
    # no bp model to transfer from; "all": the worst case of the two
    assert {row["gradient"] for row in attacked["robustness"]} == {"exact", "rule", "all"}
    exact = next(r for r in attacked["robustness"] if r["gradient"] == "exact")
    assert exact["top1"] < attacked["clean_top1"]

    pushed = run_cli(capsys, "push", run, "--repo-id", "me/lenet_fa-shapes")
    assert "me/lenet_fa-shapes" in pushed
    card = loopback_hub.pushed / "me" / "lenet_fa-shapes"
    assert {"model.safetensors", "config.json", "README.md", "metrics.json"} <= {p.name for p in card.iterdir()}
    record = json.loads((card / "config.json").read_text())["pretrained_cfg"]
    assert record["hub_id"] == "me/lenet_fa-shapes" and record["label_names"] == CLASSES
    assert record["init_from"]["name"] == START and "an image folder: train 32 / val 4" in record["split"]
    assert not (Path(biotorch.__file__).parent / "pretrained.json").read_text().count("lenet_fa-shapes")

    remote = biotorch.from_pretrained("hf-hub:me/lenet_fa-shapes")
    local = biotorch.from_pretrained(run)
    x = biotorch.transforms(run)(Image.open(next((images / "test" / "cross").iterdir()))).unsqueeze(0)
    assert torch.equal(outputs(remote, x), outputs(local, x))
    assert remote.pretrained_cfg["label_names"] == tuple(CLASSES)


class Shapes(torch.utils.data.Dataset):
    """A user's own dataset: files and labels, PIL images through a transform."""

    def __init__(self, root: Path, transform):
        self.files = [(f, c) for c, name in enumerate(CLASSES) for f in sorted((root / name).iterdir())]
        self.transform = transform

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        path, label = self.files[i]
        return self.transform(Image.open(path)), label


def test_fine_tune_evaluate_attack_and_push_from_python(images, tmp_path, capsys, loopback_hub):
    torch.manual_seed(0)
    model = biotorch.create_model(START, pretrained=True)
    model.reset_classifier(3, label_names=CLASSES)  # a new head, learning with fa
    train = torch.utils.data.DataLoader(Shapes(images / "train", biotorch.transforms(START, training=True)),
                                        batch_size=8, shuffle=True)
    assert next(iter(train))[0].shape == (8, 1, 32, 32)  # RGB 48×48 → the checkpoint's grayscale 32×32
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    for _ in range(6):
        for x, y in train:
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
            biotorch.feedback_step(model)
    folder = biotorch.save_pretrained(model, tmp_path / "my-shapes")

    test = Shapes(images / "test", biotorch.transforms(folder))
    x = torch.stack([test[i][0] for i in range(len(test))])
    y = torch.tensor([test[i][1] for i in range(len(test))])
    top1 = 100 * (outputs(biotorch.from_pretrained(folder), x).argmax(1) == y).float().mean().item()
    assert top1 >= 50, top1

    # The CLI on the saved folder measures the same images the same way.
    result = json.loads(run_cli(capsys, "eval", folder, "--data", "imagefolder", "--data-dir", images, "--json"))
    assert result["top1"] == pytest.approx(top1, abs=1e-4)
    attacked = json.loads(run_cli(capsys, "robustness", folder, "--data", "imagefolder", "--data-dir", images,
                                  "--attack", "fgsm", "--eps", "0.1", "--gradient", "exact", "--json"))
    assert attacked["clean_top1"] == pytest.approx(top1, abs=1e-4) and attacked["robustness"][0]["top1"] < top1

    biotorch.push_to_hub(folder, "me/my-shapes")
    remote = biotorch.from_pretrained("hf-hub:me/my-shapes")
    assert torch.equal(outputs(remote, x), outputs(biotorch.from_pretrained(folder), x))
    assert biotorch.create_model("lenet_fa", checkpoint=folder).pretrained_cfg["label_names"] == tuple(CLASSES)


def card_blocks(readme: str, heading: str, language: str) -> list[str]:
    section = readme[readme.index(f"## {heading}\n"):]
    section = section[:section.find("\n## ", 1)]
    return re.findall(rf"```{language}\n(.*?)```", section, flags=re.S)


def test_a_users_card_describes_and_loads_their_own_repo(images, tmp_path, capsys, monkeypatch, loopback_hub):
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "runs" / "shapes"
    run_cli(capsys, "train", "--init-from", START, "--data", "imagefolder", "--data-dir", images, "--epochs", 2,
            "--batch-size", 8, "--out", run, "--no-progress")

    # The offline preview writes the folder that would be uploaded, and refuses to write over a folder.
    log = run_cli(capsys, "push", run, "--repo-id", "me/shapes", "--dry-run")
    preview = tmp_path / "shapes"
    assert f"wrote {preview.name} (" in log and "nothing uploaded" in log and not loopback_hub.pushed.exists()
    assert {"model.safetensors", "config.json", "README.md", "recipe.yaml"} <= {p.name for p in preview.iterdir()}
    assert cli.main(["push", str(run), "--repo-id", "me/shapes", "--dry-run"]) == 2
    assert "shapes exists: --dry-run writes" in capsys.readouterr().err
    text = (preview / "README.md").read_text()
    assert "scripts/publish.py" not in text and "do not edit" not in text and "Built by `biotorch push`" in text
    assert "Classes (3): circle, cross, square. Input: 1×32×32 (grayscale)" in text
    for zoo_line in ("torch.hub.load", "create_model(", "timm.", "eval_transform", "has been published yet"):
        assert zoo_line not in text, zoo_line
    recipe = yaml.safe_load((run / "recipe.yaml").read_text())
    command = re.search(r"Reproduce this checkpoint.*?```bash\n(.*?)\n```", text, re.S)[1]
    argv = shlex.split(command, comments=True)
    assert argv[argv.index("--data-dir") + 1] == DATA_DIR
    args = cli.build_parser().parse_args(argv[1:])
    again = load_recipe(args.recipe, cli._train_overrides(args)).to_dict()
    assert {k: again[k] for k in FIELDS if k not in NOT_REPRODUCED} == {
        k: recipe[k] for k in FIELDS if k not in NOT_REPRODUCED}

    # Every usage line runs, against the repo pushed.
    run_cli(capsys, "push", run, "--repo-id", "me/shapes")
    text = (loopback_hub.pushed / "me" / "shapes" / "README.md").read_text()
    (usage,), (tuning,) = card_blocks(text, "Usage", "python"), card_blocks(text, "Fine-tuning", "python")
    assert usage.count('"hf-hub:me/shapes"') == 2
    scope = {}
    exec(usage, scope)
    x = scope["transform"](Image.open(next((images / "test" / "cross").iterdir()))).unsqueeze(0)
    assert x.shape == (1, 1, 32, 32) and scope["classes"] == tuple(CLASSES)
    assert torch.equal(outputs(scope["model"], x), outputs(biotorch.from_pretrained(run), x))
    exec(tuning, scope)
    assert outputs(scope["model"], x).shape == (1, 5)
    (line,) = [line for block in card_blocks(text, "Fine-tuning", "bash") for line in block.splitlines()]
    argv = [str(images) if word == DATA_DIR else word for word in shlex.split(line, comments=True)]
    assert argv[:6] == ["biotorch", "train", "--model", "lenet_fa", "--init-from", "hf-hub:me/shapes"]
    log = run_cli(capsys, *argv[1:], "--no-progress")
    assert log.startswith("[lenet_fa] recipe of hf-hub:me/shapes: optimizer sgd, lr 0.0075 (its 0.001875 "
                          "at batch 8)"), log


# --- the pieces -------------------------------------------------------------------------------------------------


def test_an_image_folder_is_brought_to_the_checkpoint_and_overridden_by_recipe_keys(images, tmp_path):
    from biotorch.training.recipe import make_recipe
    from biotorch.training.trainer import data_info

    base = dict(data="imagefolder", data_dir=str(images))
    info = data_info(make_recipe({**base, "init_from": START}))
    assert (info.input_size, info.mean, info.crop_pct) == ((1, 32, 32), DATASETS["fashion_mnist"].mean, 32 / 28)
    assert info.label_names == tuple(CLASSES)
    scratch = data_info(make_recipe({**base, "model": "resnet20"}))  # no checkpoint: RGB, ImageNet statistics
    assert (scratch.input_size, scratch.mean) == ((3, 32, 32), DATASETS["imagefolder"].mean)
    custom = data_info(make_recipe({**base, "model": "resnet20", "img_size": 40, "in_chans": 1, "mean": [0.5],
                                    "std": [0.25], "interpolation": "bicubic"}))
    assert (custom.input_size, custom.mean, custom.std, custom.interpolation) == ((1, 40, 40), (0.5,), (0.25,),
                                                                                  "bicubic")
    x, y = load_split("imagefolder", "test", images, info=custom)
    assert x.shape == (36, 1, 40, 40) and y.tolist() == sorted(y.tolist())


@pytest.mark.parametrize("arch, in_chans", [("resnet20", None), ("lenet", 3), ("lenet", 1)])
def test_from_scratch_the_cli_and_transforms_of_the_model_bring_a_folder_to_the_same_input(images, arch, in_chans):
    from biotorch.data import eval_transform
    from biotorch.training.recipe import make_recipe
    from biotorch.training.trainer import data_info

    recipe = make_recipe({"data": "imagefolder", "data_dir": str(images), "model": f"{arch}_kp", "in_chans": in_chans})
    info = data_info(recipe)  # what `biotorch train --model resnet20_kp --data imagefolder` trains on
    model = biotorch.create_model(f"{arch}_kp", num_classes=3, in_chans=info.in_chans)  # the same model in Python
    cfg = model.pretrained_cfg
    assert (tuple(cfg["input_size"]), tuple(cfg["mean"]), tuple(cfg["std"]), cfg["crop_pct"], cfg["interpolation"]) \
        == (info.input_size, info.mean, info.std, info.crop_pct, info.interpolation)
    with Image.open(images / "test" / "cross" / "000.png") as image:
        torch.testing.assert_close(biotorch.transforms(model)(image), eval_transform(info)(image), rtol=0, atol=0)
    if in_chans is None:
        assert info.mean == DATASETS["imagefolder"].mean and info.crop_pct == DATASETS["imagefolder"].crop_pct


@pytest.mark.parametrize("values, expected", [
    ({"data": "fashion_mnist", "img_size": 64}, "describes an image folder's images"),
    ({"model": "lenet", "img_size": 64}, "lenet takes 32x32 images only"),
    ({"in_chans": 2}, "must be 1 (grayscale) or 3 (RGB)"),
    ({"in_chans": 1, "mean": [0.5, 0.5, 0.5]}, "one value per channel"),
    ({"std": [0.2, 0.0, 0.2]}, "must be > 0"),
    ({"interpolation": "cubic"}, "Did you mean bicubic"),
    ({"img_size": 2}, "must be in [8, 4096]"),
])
def test_bad_image_keys_fail_naming_the_key(images, values, expected, capsys):
    argv = ["train", "--data", "imagefolder", "--data-dir", str(images), "--model", "resnet20"]
    for key, value in values.items():
        argv += [f"--{key.replace('_', '-')}", *(map(str, value) if isinstance(value, list) else [str(value)])]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and expected in err, err


def test_without_val_a_seeded_tenth_is_held_out_and_without_test_the_run_says_so(tmp_path, capsys):
    folder = make_imagefolder(tmp_path / "only-train", per_class=5, splits=("train",))
    info = imagefolder_info(folder)
    train, train_y = load_split("imagefolder", "train", folder, info=info)
    val, val_y = load_split("imagefolder", "val", folder, info=info)
    assert (len(train_y), len(val_y)) == (13, 2)  # round(15 / 10)
    again = load_split("imagefolder", "val", folder, info=info)[0]
    assert torch.equal(val, again) and not any(torch.equal(v, t) for v in val for t in train)
    run = tmp_path / "run"
    log = run_cli(capsys, "train", "--model", "lenet", "--data", "imagefolder", "--data-dir", folder, "--epochs", 1,
                  "--batch-size", 4, "--out", run, "--no-progress")
    first = log.splitlines()[0]
    assert "no test/ in" in first and "no test number will be reported" in first  # said at the start
    assert "no test split" in log.splitlines()[-1]
    assert json.loads((run / "metrics.json").read_text())["test_top1"] is None
    assert cli.main(["push", str(run), "--repo-id", "me/x"]) == 2
    assert "has no test top-1" in capsys.readouterr().err


def test_a_layout_mistake_says_what_was_found_and_what_to_pass(images, tmp_path, capsys):
    flat = tmp_path / "flat"  # class folders with no train/ above them
    for name in CLASSES:
        (flat / name).mkdir(parents=True)
        (flat / name / "0.png").write_bytes((images / "train" / name / "000.png").read_bytes())
    cases = [(images / "train", f"{images / 'train'} holds class folders: pass its parent, {images}"),
             (flat, f"{flat} holds class folders (circle, cross, square) but no train/: move them into {flat / 'train'}"),
             (tmp_path / "empty", f"{tmp_path / 'empty'} holds no train/, val/ or test/ folder: expected "
                                  f"{tmp_path / 'empty'}/train/<class>/<image>"),
             (tmp_path / "missing", f"no image folder at {tmp_path / 'missing'}")]
    (tmp_path / "empty").mkdir()
    for folder, expected in cases:
        for argv in (["train", "--model", "lenet", "--data", "imagefolder", "--data-dir", folder, "--epochs", 1,
                      "--out", tmp_path / "run"], ["eval", START, "--data", "imagefolder", "--data-dir", folder]):
            assert cli.main([str(a) for a in argv]) == 2
            err = capsys.readouterr().err.strip()
            assert err.count("\n") == 0 and expected in err, err
            assert "--download" not in err and "load_split" not in err and "BIOTORCH_DATA" not in err, err
    only_train = make_imagefolder(tmp_path / "only-train", per_class=2, splits=("train",))
    with pytest.raises(FileNotFoundError, match=f"{only_train} has no test/ folder: expected "
                                                f"{only_train}/test/<class>/<image>"):
        load_split("imagefolder", "test", only_train)


def test_missing_data_names_no_internal_function_and_no_downloader_that_does_not_exist(tmp_path, monkeypatch):
    monkeypatch.setenv("BIOTORCH_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("BIOTORCH_CACHE", str(tmp_path / "cache"))
    messages = {}
    for name in ("fashion_mnist", "cifar10_jpeg"):
        with pytest.raises(FileNotFoundError) as error:
            load_split(name, "test", data_dir=tmp_path / "nothing")
        messages[name] = str(error.value)
    assert not any("load_split" in m for m in messages.values()), messages
    assert "--download" in messages["fashion_mnist"] and "--download" not in messages["cifar10_jpeg"], messages


@pytest.mark.parametrize("repo_id", ["me", "me/..", "../x", "me/a/b", "me/ x", ""])
def test_push_refuses_a_repo_id_that_is_not_owner_slash_name(repo_id, tmp_path, capsys, make_run):
    run = make_run()
    assert cli.main(["push", str(run), "--repo-id", repo_id]) == 2
    assert "Hub repo id" in capsys.readouterr().err


# --- papercuts ----------------------------------------------------------------------------------------------------


def test_epoch_lines_arrive_while_training_when_stdout_is_a_pipe(tmp_path):
    import os
    import subprocess
    import sys

    process = subprocess.Popen([sys.executable, "-m", "biotorch", "train", "--model", "lenet", "--data", "synthetic",
                                "--epochs", "40", "--out", str(tmp_path / "run"), "--alignment-every", "0"],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        for line in process.stdout:  # without a flush the lines would come only when the process ends
            if "epoch 1/40" in line:
                assert process.poll() is None, "the first epoch's line came only after the run ended"
                break
        else:
            pytest.fail("no epoch line")
    finally:
        process.kill()
        process.wait()


def test_an_unreachable_hub_falls_back_to_the_clones_copy_of_our_repos(tmp_path, monkeypatch):
    from huggingface_hub import constants
    from huggingface_hub.errors import LocalEntryNotFoundError

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # as unreachable, without the client's retries
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    x = torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    with pytest.warns(UserWarning, match="the Hub could not be reached .* loaded this clone's copy"):
        model = biotorch.from_pretrained(f"hf-hub:biotorch/{START}")
    assert torch.equal(outputs(model, x), outputs(biotorch.create_model(START, pretrained=True), x))
    with pytest.raises(LocalEntryNotFoundError):  # a revision asked for: only the Hub has it
        biotorch.from_pretrained(f"hf-hub:biotorch/{START}", revision="v0")
    with pytest.raises(LocalEntryNotFoundError):  # not ours: nothing to fall back to
        biotorch.from_pretrained("hf-hub:someone/else")


def test_an_unreachable_hub_or_offline_mode_fails_at_once_in_one_line_naming_the_cache(tmp_path, monkeypatch, capsys):
    import time

    from huggingface_hub import constants
    from huggingface_hub.errors import LocalEntryNotFoundError
    from hub_server import free_port

    url = f"http://127.0.0.1:{free_port()}"  # nothing listens: refused at once (the client retried 5 times, 23 s)
    monkeypatch.setattr(constants, "ENDPOINT", url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    for offline, why in ((False, f"the Hub ({url}) could not be reached"), (True, "HF_HUB_OFFLINE=1")):
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)
        start = time.monotonic()
        assert cli.main(["info", "hf-hub:me/my-shapes"]) == 2
        err = capsys.readouterr().err.strip()
        assert time.monotonic() - start < 5, "retried before failing"
        assert err.count("\n") == 0 and why in err and f"not in the local HF cache ({tmp_path / 'hf-cache'})" in err, err
        with pytest.raises(LocalEntryNotFoundError, match="hf-hub:me/my-shapes@v1 is not in the local HF cache"):
            biotorch.from_pretrained("hf-hub:me/my-shapes", revision="v1")


def test_a_long_reason_is_shortened_at_a_word(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("BIOTORCH_DATA", str(tmp_path / ("a-rather-long-folder-name-" * 6)))
    monkeypatch.setenv("BIOTORCH_CACHE", str(tmp_path / "cache"))  # not the staged data of this machine
    with pytest.raises(FileNotFoundError) as error:
        load_split("fashion_mnist", "test", data_dir=tmp_path / "nothing")
    words = str(error.value).split()
    assert cli.main(["eval", START, "--data-dir", str(tmp_path / "nothing")]) == 0
    notice = capsys.readouterr().out.splitlines()[0]
    reason = notice.partition(" found (")[2].rpartition("); evaluating")[0].split()
    assert reason[-1] == "…" and reason[:-1] == words[:len(reason) - 1], notice
