"""Adversarial robustness: attacks crafted with the exact, the rule's or the bp model's gradient, and the card."""
from __future__ import annotations

import copy
import json
import shutil

import pytest
import torch
import torch.nn.functional as F
from huggingface_hub import ModelCard
from torch import nn

import biotorch
from biotorch import cli, publish, registry, robustness
from biotorch.training import datasets
from biotorch.hub import MIRROR

MEAN, STD = (0.5,), (0.25,)


def tiny(rule: str, seed: int = 0) -> tuple[nn.Module, nn.Module]:
    """(a small plain torch model, the same weights converted to ``rule``)."""
    torch.manual_seed(seed)
    plain = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 3 * 3, 16),
                          nn.ReLU(), nn.Linear(16, 10))
    return plain, biotorch.convert(copy.deepcopy(plain), rule, seed=seed)


def data(n: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


def test_fgsm_with_the_exact_gradient_is_one_signed_step_of_the_true_gradient():
    plain, model = tiny("fa")
    images, labels = data()
    x = images.clone().requires_grad_()
    loss = F.cross_entropy(plain((x - MEAN[0]) / STD[0]), labels)
    (gradient,) = torch.autograd.grad(loss, x)
    expected = (images + 0.1 * gradient.sign()).clamp(0, 1)

    crafted = robustness.craft(model, images, labels, "fgsm", 0.1, mean=MEAN, std=STD, gradient="exact")
    assert torch.allclose(crafted, expected, atol=1e-6)
    assert (crafted - images).abs().max() <= 0.1 + 1e-6
    assert model.training  # restored after the attack ran it in eval mode

    rule = robustness.craft(model, images, labels, "fgsm", 0.1, mean=MEAN, std=STD, gradient="rule")
    assert not torch.allclose(rule, crafted)  # fa's input signal goes through B, not W


def test_pgd_stays_in_the_ball_and_in_pixel_range_and_is_seeded():
    _, model = tiny("fa")
    images, labels = data()
    first = robustness.craft(model, images, labels, "pgd", 0.05, mean=MEAN, std=STD, seed=3)
    assert (first - images).abs().max() <= 0.05 + 1e-6 and first.min() >= 0 and first.max() <= 1
    assert torch.equal(first, robustness.craft(model, images, labels, "pgd", 0.05, mean=MEAN, std=STD, seed=3))
    assert not torch.equal(first, robustness.craft(model, images, labels, "pgd", 0.05, mean=MEAN, std=STD, seed=4))


def test_eps_zero_gives_the_clean_accuracy():
    _, model = tiny("fa")
    _, bp = tiny("bp")
    images, labels = data()
    clean = robustness.accuracy(model, images, labels, mean=MEAN, std=STD)
    block = robustness.evaluate_robustness(model, images, labels, mean=MEAN, std=STD, transfer_model=bp, eps=[0],
                                           progress=False)
    assert len(block) == 6 and {r["top1"] for r in block} == {round(clean, 4)}
    assert {(r["images"], r["seed"], r["split"]) for r in block} == {(24, 0, "test")}


def test_for_bp_the_three_gradient_sources_agree():
    _, model = tiny("bp")
    _, other_copy = tiny("bp")  # the same weights in another object: transfer is crafted independently
    images, labels = data()
    block = robustness.evaluate_robustness(model, images, labels, mean=MEAN, std=STD, transfer_model=other_copy,
                                           eps=[0.05, 0.2], progress=False)
    for attack in robustness.ATTACKS:
        for eps in (0.05, 0.2):
            assert len({r["top1"] for r in block if r["attack"] == attack and r["eps"] == eps}) == 1
    assert min(r["top1"] for r in block) < robustness.accuracy(model, images, labels, mean=MEAN, std=STD)


def test_for_fa_the_rule_gradient_is_not_the_exact_one():
    _, model = tiny("fa")
    images, labels = data(64)
    block = robustness.evaluate_robustness(model, images, labels, mean=MEAN, std=STD, gradients=["exact", "rule"],
                                           attacks=["pgd"], eps=[0.3], progress=False)
    exact, rule = (robustness.craft(model, images, labels, "pgd", 0.3, mean=MEAN, std=STD, gradient=g)
                   for g in ("exact", "rule"))
    assert not torch.equal(exact, rule)
    assert [r["gradient"] for r in block] == ["exact", "rule"]


def test_dfa_rule_gradient_at_the_input_is_the_output_error_projected_by_the_first_layers_feedback():
    _, model = tiny("dfa")
    images, labels = data()
    x = images.clone().requires_grad_()
    logits = model((x - MEAN[0]) / STD[0])
    F.cross_entropy(logits, labels).backward()
    error = (logits.detach().softmax(1) - F.one_hot(labels, 10)) / len(labels)  # dL/dlogits
    direct = (error @ model[0].feedback_weight.flatten(1)).view_as(x) / STD[0]  # e·B₁, through the normalisation
    assert torch.allclose(x.grad, direct, atol=1e-7)
    with biotorch.exact_gradients(model):
        x.grad = None
        F.cross_entropy(model((x - MEAN[0]) / STD[0]), labels).backward()
    assert not torch.allclose(x.grad, direct, atol=1e-7)


def test_drtp_rule_gradient_at_the_input_is_the_targets_projected_by_the_first_layers_feedback():
    _, model = tiny("drtp")
    images, labels = data()
    crafted = robustness.craft(model, images, labels, "fgsm", 0.1, mean=MEAN, std=STD, gradient="rule")
    targets = F.one_hot(labels, 10).float() / len(labels)  # y*, divided by the batch size as a mean loss's error
    direct = (targets @ model[0].feedback_weight.flatten(1)).view_as(images) / STD[0]  # y*·B₁: no image in it
    assert torch.equal(crafted, (images + 0.1 * direct.sign()).clamp(0, 1))
    exact = robustness.craft(model, images, labels, "fgsm", 0.1, mean=MEAN, std=STD, gradient="exact")
    assert not torch.equal(exact, crafted)


def test_transfer_crafts_on_the_bp_model_and_never_uses_the_targets_gradient():
    _, target = tiny("fa")
    _, bp = tiny("bp", seed=1)
    images, labels = data()
    seen = {"target": [], "bp": []}
    target.register_forward_pre_hook(lambda m, args: seen["target"].append(args[0].requires_grad
                                                                           or torch.is_grad_enabled()))
    bp.register_forward_pre_hook(lambda m, args: seen["bp"].append(args[0].requires_grad))
    for p in target.parameters():
        p.register_hook(lambda grad: pytest.fail("the target's backward ran"))

    block = robustness.evaluate_robustness(target, images, labels, mean=MEAN, std=STD, transfer_model=bp,
                                           gradients=["transfer"], attacks=["fgsm"], eps=[0.1], progress=False)
    assert seen["target"] and not any(seen["target"])  # only evaluated, never differentiated
    assert any(seen["bp"])  # the examples came from the bp model's gradient
    crafted = robustness.craft(bp, images, labels, "fgsm", 0.1, mean=MEAN, std=STD, gradient="exact")
    assert block[0]["top1"] == round(robustness.accuracy(target, crafted, labels, mean=MEAN, std=STD), 4)


def test_bad_user_input_is_named():
    with pytest.raises(ValueError, match="Did you mean pgd"):
        robustness.check_attacks("pdg")
    with pytest.raises(ValueError, match="outside"):
        robustness.check_eps("0.05,2")
    assert robustness.check_eps("8/255,0.1") == [8 / 255, 0.1]
    with pytest.raises(ValueError, match="transfer_model"):
        robustness.evaluate_robustness(tiny("fa")[1], *data(), mean=MEAN, std=STD, progress=False)


@pytest.fixture
def no_dataset(monkeypatch, tmp_path):
    """No test set in the search path (unless the machine has it in a system folder): samples/ is used."""
    monkeypatch.setenv("BIOTORCH_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("BIOTORCH_CACHE", str(tmp_path / "cache"))
    datasets.clear_cache()


def test_cli_on_a_committed_card_prints_json(no_dataset, capsys):
    assert cli.main(["robustness", "lenet_fa.fashion_mnist", "--limit", "6", "--eps", "0.02,0.1", "--json",
                     "--device", "cpu"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["model"] == "lenet_fa.fashion_mnist" and result["images"] == 6
    assert result["split"] in ("samples", "test")
    assert len(result["robustness"]) == 2 * 2 * 3
    assert {r["gradient"] for r in result["robustness"]} == {"exact", "rule", "transfer"}
    assert all(0 <= r["top1"] <= 100 for r in result["robustness"])


@pytest.mark.parametrize("flags, message", [(["--eps", "0.05,big"], "is not a number"),
                                            (["--eps", "-0.1"], "outside [0, 1]"),
                                            (["--attack", "cw"], "unknown attack 'cw'"),
                                            (["--gradient", "exact,rules"], "Did you mean rule")])
def test_cli_errors_are_one_line_and_exit_2(flags, message, capsys):
    assert cli.main(["robustness", "lenet_fa.fashion_mnist", "--limit", "2", *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and err.startswith("biotorch robustness: error:")


BLOCK = [{"attack": a, "eps": e, "gradient": g, "top1": t, "images": 10000, "seed": 0, "split": "test"}
         for a in ("fgsm", "pgd") for e in (0.01, 0.05) for g, t in (("exact", 30.0), ("rule", 60.0),
                                                                       ("transfer", 50.0))]


def test_the_block_is_carried_into_the_card_when_the_weights_are_unchanged(make_run, tmp_path):
    cards = tmp_path / "cards"
    bp_runs, fa_runs = [make_run(rule="bp")], [make_run(rule="fa")]
    bp_card = publish.build_card_folder(bp_runs, cards / "lenet_bp.fashion_mnist")
    card = publish.build_card_folder(fa_runs, cards / "lenet_fa.fashion_mnist")
    robustness.write_block(bp_card, [dict(r, top1=r["top1"] - 20) for r in BLOCK])
    robustness.write_block(card, BLOCK)
    publish.build_card_folder(bp_runs, bp_card)
    publish.build_card_folder(fa_runs, card)  # rebuilt from the same run: the same weights

    assert json.loads((card / "metrics.json").read_text())["robustness"] == BLOCK
    config = json.loads((card / "config.json").read_text())
    assert config["pretrained_cfg"]["metrics"]["robustness"] == BLOCK  # → pretrained.json → `biotorch info`
    assert (card / "robustness.png").stat().st_size > 1000
    readme = (card / "README.md").read_text()
    assert "## Adversarial robustness" in readme and "| PGD-10 | 0.05 | 30.00 | 60.00 | 50.00 | 10.00 |" in readme
    entries = {r.metric_config: r.metric_value for r in ModelCard.load(card / "README.md").data.eval_results
               if r.metric_config}
    assert entries == {"fgsm-linf-eps0.05": 30.0, "pgd-linf-eps0.05": 30.0}

    other = make_run("other-seed", rule="fa", seed=5)  # different weights: the old block no longer applies
    publish.build_card_folder([other], card)
    assert "robustness" not in json.loads((card / "metrics.json").read_text())
    assert not (card / "robustness.png").exists() and "Adversarial robustness" not in (card / "README.md").read_text()


def test_info_shows_one_line_per_attack(monkeypatch, capsys):
    cfg = registry.get_pretrained_cfg("lenet_fa.fashion_mnist")
    cfg = registry.CheckpointRecord(**{**cfg.__dict__, "metrics": {**cfg.metrics, "robustness": BLOCK}})
    monkeypatch.setattr(registry, "_pretrained", lambda: {cfg.name: cfg})
    assert cli.main(["info", "lenet_fa.fashion_mnist"]) == 0
    lines = [l.strip() for l in capsys.readouterr().out.splitlines() if "robustness:" in l]
    assert lines == ["robustness: FGSM ε=0.05 top-1 %: exact 30.00, rule 60.00, transfer 50.00 (10,000 test images)",
                     "robustness: PGD-10 ε=0.05 top-1 %: exact 30.00, rule 60.00, transfer 50.00 (10,000 test images)"]


def test_write_refuses_a_card_with_other_weights(no_dataset, tmp_path):
    cards = tmp_path / "cards"
    shutil.copytree(MIRROR / "lenet_fa.fashion_mnist", cards / "lenet_fa.fashion_mnist")
    config = cards / "lenet_fa.fashion_mnist" / "config.json"
    config.write_text(config.read_text().replace('"sha256": "', '"sha256": "0'))
    with pytest.raises(ValueError, match="does not hold the published weights"):
        robustness.run_robustness(cli.build_parser().parse_args(
            ["robustness", "lenet_fa.fashion_mnist", "--limit", "2", "--write", str(cards)]))


def test_each_block_is_written_when_its_model_is_done(no_dataset, tmp_path, monkeypatch):
    """A run cut short (the GPU lease's timeout) keeps the blocks of the models it finished."""
    cards = tmp_path / "cards"
    names = ["lenet_bp.fashion_mnist", "lenet_fa.fashion_mnist"]
    for name in names:
        shutil.copytree(MIRROR / name, cards / name)
    first = json.loads((cards / names[0] / "metrics.json").read_text())
    first.pop("robustness", None)  # a card without a block, so that the one written is the run's own
    (cards / names[0] / "metrics.json").write_text(json.dumps(first))
    attack = robustness.evaluate_robustness

    def cut_after_the_first(model, *args, **kwargs):
        if model.biotorch_config["rule"] == "fa":
            raise KeyboardInterrupt  # the timeout's signal, as it reaches the second model
        return attack(model, *args, **kwargs)

    monkeypatch.setattr(robustness.cli, "evaluate_robustness", cut_after_the_first)  # what the command calls
    with pytest.raises(KeyboardInterrupt):
        robustness.run_robustness(cli.build_parser().parse_args(
            ["robustness", *names, "--limit", "2", "--eps", "0.05", "--write", str(cards), "--json"]))
    assert len(json.loads((cards / names[0] / "metrics.json").read_text())["robustness"]) == 2 * 3
    assert json.loads((cards / names[1] / "metrics.json").read_text())["robustness"] == \
        json.loads((MIRROR / names[1] / "metrics.json").read_text())["robustness"]  # untouched


def test_limit_attacks_a_fixed_sample_of_every_class_not_the_first_files():
    images, labels, _ = robustness.load_images("cifar10_jpeg", limit=30, samples=True)  # files sorted by class
    every, every_labels, _ = robustness.load_images("cifar10_jpeg", samples=True)
    assert every_labels[:30].unique().numel() <= 3 and labels.unique().numel() >= 8
    again, _, _ = robustness.load_images("cifar10_jpeg", limit=30, samples=True)
    assert torch.equal(images, again)  # the same images for every model and run
    rows = [next(i for i in range(len(every)) if torch.equal(every[i], image)) for image in images]
    assert rows == sorted(rows) and torch.equal(every_labels[rows], labels)  # a subset, in file order


def test_a_narrower_run_merges_into_a_wider_block_and_bad_numbers_are_refused(no_dataset, tmp_path, capsys):
    card = tmp_path / "cards" / "lenet_fa.fashion_mnist"
    shutil.copytree(MIRROR / card.name, card)
    wide = json.loads((card / "metrics.json").read_text())["robustness"]
    narrow = [dict(row, top1=1.0, images=20) for row in wide if row["attack"] == "fgsm" and row["eps"] == 0.05]
    robustness.write_block(card, narrow)
    assert json.loads((card / "metrics.json").read_text())["robustness"] == wide  # fewer images: nothing replaced
    new_cell = dict(wide[0], eps=0.3, top1=2.0)  # a radius not measured before: added, in order
    more = [dict(row, top1=3.0, images=row["images"]) for row in wide[:2]]  # as many images: replaced
    robustness.write_block(card, [new_cell, *more])
    merged = json.loads((card / "metrics.json").read_text())["robustness"]
    assert len(merged) == len(wide) + 1 and merged[:2] == more and new_cell in merged
    for flag in (["--batch-size", "-5"], ["--limit", "0"]):
        assert cli.main(["robustness", card.name, "--write", str(card.parent), *flag]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "must be a positive number" in err, err
    assert json.loads((card / "metrics.json").read_text())["robustness"] == merged



# --- gradient masking: a gradient that vanishes is not robustness ------------------------------------------------


def dead(rule: str = "fa") -> nn.Module:
    """The tiny model with every first-layer unit dead (ReLU of a large negative bias): a constant output, so no
    gradient reaches the input, whatever the source."""
    _, model = tiny(rule)
    with torch.no_grad():
        model[0].bias.fill_(-1e4)
    return model


def test_images_whose_gradient_vanishes_are_counted_per_source():
    images, labels = data()
    _, bp = tiny("bp")
    block = robustness.evaluate_robustness(dead(), images, labels, mean=MEAN, std=STD, transfer_model=bp,
                                           attacks=["fgsm"], eps=[0.1], progress=False)
    assert {r["gradient"]: r["vanished"] for r in block} == {"exact": 24, "rule": 24, "transfer": 0}
    healthy = robustness.evaluate_robustness(tiny("fa")[1], images, labels, mean=MEAN, std=STD,
                                             gradients=["exact", "rule"], attacks=["fgsm"], eps=[0.1], progress=False)
    assert [r["vanished"] for r in healthy] == [0, 0]
    assert robustness.vanished_lines(block) == ["the exact gradient vanished on 24 of 24 images: these numbers are "
                                                "upper bounds", "the rule's gradient vanished on 24 of 24 images: "
                                                "these numbers are upper bounds"]


def test_the_command_warns_and_records_a_vanished_gradient(tmp_path, capsys):
    model = biotorch.create_model("lenet_fa", num_classes=10, in_chans=1)
    with torch.no_grad():
        model.conv1.bias.fill_(-1e4)
    folder = biotorch.save_pretrained(model, tmp_path / "dead")
    assert cli.main(["robustness", str(folder), "--data", "synthetic", "--limit", "8", "--attack", "fgsm",
                     "--eps", "0.1", "--gradient", "exact", "--json", "--device", "cpu"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["robustness"][0]["vanished"] == 8
    assert "warning: " in err and "the exact gradient vanished on 8 of 8 images: these numbers are upper bounds" in err


def test_the_card_says_when_a_gradient_vanished(tmp_path):
    block = [dict(row, vanished=63 if row["gradient"] == "exact" else 0, images=80) for row in BLOCK]
    cfg = {"metrics": {"robustness": block}, "rule": "fa", "arch": "lenet", "tag": "fashion_mnist",
           "name": "lenet_fa.fashion_mnist", "dataset": "fashion_mnist"}
    section = robustness.card_section(cfg, tmp_path, cards_dirs=())
    assert "the exact gradient vanished on 63 of 80 images: these numbers are upper bounds" in section
    assert "rule's gradient vanished" not in section
    assert "vanished" not in robustness.card_section({**cfg, "metrics": {"robustness": BLOCK}}, tmp_path, cards_dirs=())
