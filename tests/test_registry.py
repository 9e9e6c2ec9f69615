"""The registry: names, create_model, fine-tuning API, timm interop, CLI."""
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import biotorch
from biotorch import cli, factory
from biotorch.models import ARCHITECTURES


def test_every_architecture_times_rule_is_registered():
    names = biotorch.list_models()
    assert len(names) == len(ARCHITECTURES) * len(biotorch.RULES)
    assert biotorch.list_models("resnet20_*") == [f"resnet20_{r}" for r in sorted(biotorch.RULES)]
    assert "mixer_s4_dfa" in names and "resnet110_kp" in names


def test_unknown_names_suggest_close_matches():
    with pytest.raises(ValueError, match="Did you mean: .*resnet20_fa"):
        biotorch.create_model("resnet20_fb")
    with pytest.raises(ValueError, match="unknown model 'resnet21_fa'"):
        biotorch.create_model("resnet21_fa")
    with pytest.raises(ValueError, match="no pretrained weights for 'lenet_fa.imagenet'"):
        biotorch.create_model("lenet_fa.imagenet", pretrained=True)


@pytest.mark.parametrize("argv, expected", [
    (["train", "--init-from", "lenet_af.fashion_mnist"], "no learning rule 'af'. Did you mean: lenet_fa.fashion_mnist?"),
    (["train", "--init-from", "lenat_fa.fashion_mnist"], "no architecture 'lenat'. Did you mean: lenet_fa.fashion_mnist"),
    (["train", "--init-from", "lenet_fa.fashion_mnsit"], "Available tags: lenet_fa.fashion_mnist"),
    (["train", "--model", "lenet_af"], "no learning rule 'af'. Did you mean: lenet_fa?"),
    (["train", "--model", "lenat"], "Did you mean lenet"),
    (["train", "--model", "lenet", "--rule", "af"], "'rule' is 'af'. Did you mean fa?"),
    (["info", "lenet_af.fashion_mnist"], "no learning rule 'af'. Did you mean: lenet_fa.fashion_mnist?"),
    (["info", "resnet21_kp"], "no architecture 'resnet21'. Did you mean: resnet32_kp, resnet20_kp"),
])
def test_a_typo_in_any_part_of_a_name_gets_a_did_you_mean(argv, expected, capsys):
    argv = [*argv, "--data", "synthetic", "--epochs", "1"] if argv[0] == "train" else argv
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and expected in err and "'model' is required" not in err, err


@pytest.mark.parametrize("rule", list(biotorch.RULES))
def test_create_model_converts_every_layer_and_trains(rule):
    model = biotorch.create_model(f"resnet20_{rule}", num_classes=7)
    layers = dict(biotorch.rule_layers(model))
    assert len(layers) == 20 and all(l.rule.name == rule for l in layers.values())
    assert model.biotorch_config["num_classes"] == 7
    biotorch.set_targets(model, torch.tensor([0, 6]))  # for the rules that learn from them (drtp)
    out = model(torch.randn(2, 3, 32, 32))
    F.cross_entropy(out, torch.tensor([0, 6])).backward()
    assert model.conv1.weight.grad is not None


def test_resnet20_size_and_counts():
    forward, feedback = factory.model_parameters("resnet20_fa")
    assert forward == 269_722
    conv_and_fc = sum(l.weight.numel() for _, l in biotorch.rule_layers(biotorch.create_model("resnet20_fa")))
    assert feedback == conv_and_fc
    assert factory.model_parameters("resnet20_usf")[1] == 0  # sign(W)·s: nothing stored


def test_reset_classifier_keeps_rule_and_redraws_dfa():
    model = biotorch.create_model("resnet20_dfa", num_classes=10)
    assert model.layer1[0].conv1.feedback_weight.shape[0] == 10
    model.reset_classifier(5)
    head = model.get_classifier()
    assert head.out_features == 5 and head.rule.name == "dfa"
    assert model.layer1[0].conv1.feedback_weight.shape[0] == 5
    F.cross_entropy(model(torch.randn(2, 3, 32, 32)), torch.tensor([0, 4])).backward()
    features = model.forward_features(torch.randn(1, 3, 32, 32))
    assert model.forward_head(features).shape == (1, 5)


def test_in_chans_and_rule_options():
    model = biotorch.create_model("lenet_wm", in_chans=1, mirror_lr=0.2)
    assert model(torch.randn(1, 1, 32, 32)).shape == (1, 10)
    assert all(l.rule.mirror_lr == 0.2 for _, l in biotorch.rule_layers(model))
    with pytest.raises(ValueError, match="mirror_lr"):
        biotorch.create_model("lenet_fa", mirror_lr=0.2)


def test_timm_interop():
    timm = pytest.importorskip("timm")
    assert "resnet20_fa" in timm.list_models("*_fa")
    model = timm.create_model("resnet20_fa", num_classes=4)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 4)
    assert model.get_classifier().rule.name == "fa"


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "biotorch", *args], capture_output=True, text=True, timeout=120)


def test_cli_list_and_info(capsys):
    assert cli.main(["list", "resnet20_*"]) == 0
    listing = capsys.readouterr().out
    assert "resnet20_kp" in listing and "resnet20_sdfa" in listing and "0.27M" in listing
    assert cli.main(["info", "resnet20_dfa"]) == 0
    info = capsys.readouterr().out
    assert "Direct Feedback Alignment" in info and "269,722" in info
    bad = _cli("info", "resnet20_faa")  # the real entry point: one line, exit 2
    assert bad.returncode == 2 and "Did you mean" in bad.stderr and "Traceback" not in bad.stderr



def test_cli_help_is_plain_text_and_shows_the_examples(capsys):
    """argparse prints help as written: no reStructuredText markup from a docstring (``name``, ``Example::``); the
    root help ends with the examples of the CLI module's docstring."""
    commands = next(a for a in cli.build_parser()._actions if a.dest == "command").choices
    for command in ([], *([name] for name in commands)):
        with pytest.raises(SystemExit) as exit:
            cli.main([*command, "--help"])
        help_text = capsys.readouterr().out
        assert exit.value.code == 0 and help_text.startswith("usage: biotorch")
        assert "``" not in help_text and "::" not in help_text, (command, help_text)
        if not command:
            assert "\n  $ biotorch info resnet20_dfa\n" in help_text
    assert len(commands) >= 7
