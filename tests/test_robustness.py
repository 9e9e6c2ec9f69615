"""Adversarial robustness: attacks crafted with the exact, the rule's or the bp model's gradient, Square with no
gradient, the worst case per image, and the card."""
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
    assert len(block) == 6 + 1 and {r["top1"] for r in block} == {round(clean, 4)}  # and the worst case's
    assert {(r["images"], r["seed"], r["split"]) for r in block} == {(24, 0, "test")}
    assert block[-1]["attack"] == "worst" and len(block[-1]["over"]) == 6


def test_for_bp_the_three_gradient_sources_agree():
    _, model = tiny("bp")
    _, other_copy = tiny("bp")  # the same weights in another object: transfer is crafted independently
    images, labels = data()
    block = robustness.evaluate_robustness(model, images, labels, mean=MEAN, std=STD, transfer_model=other_copy,
                                           eps=[0.05, 0.2], progress=False)
    for attack in robustness.GRADIENT_ATTACKS:
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
    assert [r["gradient"] for r in block] == ["exact", "rule", "all"]  # and the worst of the two


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
    assert len(result["robustness"]) == 2 * 2 * 3 + 2  # and a worst case per eps
    assert {r["gradient"] for r in result["robustness"]} == {"exact", "rule", "transfer", "all"}
    assert all(0 <= r["top1"] <= 100 for r in result["robustness"])


@pytest.mark.parametrize("flags, message", [(["--eps", "0.05,big"], "is not a number"),
                                            (["--eps", "-0.1"], "outside [0, 1]"),
                                            (["--attack", "cw"], "unknown attack 'cw'"),
                                            (["--attack", "square", "--queries", "0"], "--queries must be a positive"),
                                            (["--precision", "fp16"], "unknown precision 'fp16'"),
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


def test_the_per_image_outcomes_stay_in_metrics_json_not_in_the_config_or_the_index(make_run, tmp_path):
    card = publish.build_card_folder([make_run(rule="fa")], tmp_path / "cards" / "lenet_fa.fashion_mnist")
    fooled = robustness.attacks.pack_bits(torch.arange(10000) % 3 == 0)
    robustness.write_block(card, [dict(row, fooled=fooled) for row in BLOCK[:2]])
    publish.build_card_folder([make_run(rule="fa")], card)  # the same run again: the block is carried over
    metrics = json.loads((card / "metrics.json").read_text())["robustness"]
    config = json.loads((card / "config.json").read_text())["pretrained_cfg"]["metrics"]["robustness"]
    assert [r["fooled"] for r in metrics] == [fooled] * 3 and metrics[-1]["attack"] == "worst"
    assert config == robustness.without_outcomes(metrics) and "| worst case | 0.01 |" in (card / "README.md").read_text()


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
    assert len(json.loads((cards / names[0] / "metrics.json").read_text())["robustness"]) == 2 * 3 + 1
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



# --------------------------------------------------------------------------------------------------------
# Square (no gradient) and the worst case per image


class Quantised(nn.Module):
    """``model`` on its input rounded to halves: the same classifier, but its input gradient is zero everywhere
    (no straight-through estimator), so every gradient attack is blind."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(torch.round(x * 2) / 2)


def prototypes(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` 16×16 grey images: one of 10 fixed random prototypes each (its label), under noise."""
    means = torch.rand(10, 1, 16, 16, generator=torch.Generator().manual_seed(0)) * 0.5 + 0.25
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (n,), generator=g)
    return (means[labels] + 0.3 * torch.randn(n, 1, 16, 16, generator=g)).clamp(0, 1), labels


@pytest.fixture(scope="module")
def one_thread():
    """Square's thousands of tiny queries on one thread: a second gains nothing at this size and, where the cores
    are shared, waits on the other for each (70x slower measured on 2 busy cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def trained_bp(one_thread) -> nn.Module:
    """A small bp model that classifies :func:`prototypes` (trained in half a second)."""
    torch.manual_seed(0)
    model = biotorch.convert(nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                                           nn.Linear(8 * 7 * 7, 32), nn.ReLU(), nn.Linear(32, 10)), "bp")
    images, labels = prototypes(2000, seed=1)
    optimizer = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(150):
        batch = torch.randint(0, len(labels), (128,))
        loss = F.cross_entropy(model((images[batch] - MEAN[0]) / STD[0]), labels[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def correct(model, images, labels) -> int:
    return int((robustness.predict(model, images, mean=MEAN, std=STD) == labels).sum())


def test_square_with_enough_queries_fools_as_many_images_as_pgd(trained_bp):
    images, labels = prototypes(32, seed=2)
    pgd = robustness.craft(trained_bp, images, labels, "pgd", 0.04, mean=MEAN, std=STD)
    square = robustness.craft(trained_bp, images, labels, "square", 0.04, mean=MEAN, std=STD, queries=2000)
    assert (square - images).abs().max() <= 0.04 + 1e-6 and square.min() >= 0 and square.max() <= 1
    clean, after_pgd, after_square = (correct(trained_bp, x, labels) for x in (images, pgd, square))
    assert clean >= 28 and after_pgd <= clean - 10  # a model worth attacking, and a radius that matters
    assert after_square <= after_pgd + 2  # no gradient, yet as strong: 13 and 13 of 32 (torch 2.14, ART 1.20)
    assert torch.equal(square, robustness.craft(trained_bp, images, labels, "square", 0.04, mean=MEAN, std=STD,
                                                queries=2000))  # seeded


def test_a_masked_gradient_stops_pgd_but_not_square(trained_bp):
    masked = Quantised(trained_bp)
    images, labels = prototypes(32, seed=2)
    clean = correct(masked, images, labels)
    after_pgd = correct(masked, robustness.craft(masked, images, labels, "pgd", 0.15, mean=MEAN, std=STD), labels)
    after_square = correct(masked, robustness.craft(masked, images, labels, "square", 0.15, mean=MEAN, std=STD,
                                                    queries=300), labels)
    unmasked = correct(trained_bp, robustness.craft(trained_bp, images, labels, "pgd", 0.15, mean=MEAN, std=STD),
                       labels)
    assert clean >= 24 and unmasked <= 2  # the same weights fall to PGD when their gradient is there
    assert after_pgd >= clean - 3  # blind: only PGD's random start moves the images
    assert after_square <= clean // 4


def test_square_stops_querying_an_image_once_it_is_fooled(one_thread):
    """Images the model already gets wrong are asked once; the others once an iteration, not three times as
    ART's Square asks (every image, then the current and the candidate squares)."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(16 * 16, 10))
    nn.init.zeros_(model[1].weight)
    with torch.no_grad():
        model[1].bias.copy_(torch.arange(10.0))  # class 9 whatever the image: never fooled, nor fooled more
    images, _ = prototypes(8, seed=3)
    labels = torch.tensor([9] * 4 + [0] * 4)  # 4 right (robust), 4 wrong from the start
    seen = []
    model.register_forward_pre_hook(lambda module, args: seen.append(len(args[0])))
    crafted = robustness.craft(model, images, labels, "square", 0.1, mean=MEAN, std=STD, queries=50)
    assert torch.equal(crafted[4:], images[4:])  # the fooled are left as they were
    assert 4 * 50 // 2 < sum(seen) - 8 <= 4 * 50  # the clean check, then ≤ one query an iteration for 4 images


def test_the_worst_case_counts_an_image_only_if_no_attack_fooled_it(trained_bp):
    masked = Quantised(trained_bp)
    images, labels = prototypes(24, seed=4)
    block = robustness.evaluate_robustness(masked, images, labels, mean=MEAN, std=STD, attacks=["pgd", "square"],
                                           eps=[0.15], gradients=["exact"], queries=200, precision="fp32",
                                           progress=False)
    pgd, square, worst = block
    assert (pgd["gradient"], square["gradient"], square["queries"], worst["attack"], worst["gradient"]) == \
        ("exact", "queries", 200, "worst", "all")
    fooled = {r["attack"]: robustness.unpack_bits(r["fooled"], 24) for r in block}
    assert fooled["worst"].tolist() == (fooled["pgd"] | fooled["square"]).tolist()
    for row in block:  # each row's bits are its top-1
        assert row["top1"] == round(100 * (1 - fooled[row["attack"]].mean()), 4)
    assert worst["top1"] <= min(pgd["top1"], square["top1"]) and worst["over"] == ["pgd/exact", "square/queries"]
    assert pgd["vanished"] == 24 and "vanished" not in square and "vanished" not in worst  # only gradient rows

    # Square added later joins the worst case of the rows measured before; rows without bits (cards written
    # before the bits were kept) join none; a worst row is only ever recomputed
    old = dict(pgd, gradient="rule", top1=0.0)
    del old["fooled"]
    merged = robustness.merge_blocks([pgd, old, dict(worst, top1=99.0)], [square])
    assert merged[-1] == worst and [r["attack"] for r in merged] == ["pgd", "pgd", "square", "worst"]
    assert robustness.merge_blocks([old], [])[-1] == old  # no row with bits: no worst case
    summary = robustness.without_outcomes(merged)
    assert all("fooled" not in r for r in summary) and summary[-1]["over"] == worst["over"]


def test_the_card_shows_square_and_the_worst_case(tmp_path):
    bits = [robustness.attacks.pack_bits(torch.tensor([True, False] * 5))] * 3
    block = robustness.merge_blocks(BLOCK, [
        {"attack": "pgd", "eps": 0.05, "gradient": "exact", "top1": 50.0, "images": 10, "seed": 0, "split": "test",
         "fooled": bits[0]}])  # 10 images: the 10,000-image row stays, so no bits at 0.05 for pgd...
    assert [r for r in block if r["attack"] == "worst"] == []
    square = [{"attack": "square", "eps": e, "gradient": "queries", "top1": 50.0, "images": 10000, "seed": 0,
               "split": "test", "queries": 5000, "precision": "fp32",
               "fooled": robustness.attacks.pack_bits(torch.arange(10000) % 2 == 0)} for e in (8 / 255, 0.05)]
    block = robustness.merge_blocks(BLOCK, square)
    cfg = {"name": "lenet_fa.fashion_mnist", "arch": "lenet", "tag": "fashion_mnist", "rule": "fa",
           "dataset": "fashion_mnist", "metrics": {"robustness": robustness.without_outcomes(block)}}
    section = robustness.card_section(cfg, tmp_path, cards_dirs=())
    assert "| Square | 8/255 | – | – | – | 50.00 | – |" in section
    assert "| worst case | 0.05 | – | – | – | – | 50.00 |" in section  # over Square only: the others have no bits
    assert "Square (Andriushchenko et al. 2020" in section and "--attack fgsm,pgd,square --eps 8/255,0.05" in section
    assert (tmp_path / "robustness.png").stat().st_size > 1000
    index = {r["metric_config"]: r["metric_value"] for r in robustness.model_index(block)}
    assert index == {"square-linf-eps8-255": 50.0, "worst-linf-eps8-255": 50.0, "fgsm-linf-eps0.05": 30.0,
                     "pgd-linf-eps0.05": 30.0, "square-linf-eps0.05": 50.0, "worst-linf-eps0.05": 50.0}
    assert robustness.info_lines(block)[2:] == [
        "Square ε=0.05 top-1 %: queries 50.00 (10,000 test images)",
        "worst case ε=0.05 top-1 %: all 50.00 (10,000 test images)"]


def test_write_refuses_a_folder_that_is_not_a_cards_folder(tmp_path, capsys):
    (tmp_path / "notes").mkdir()
    assert cli.main(["robustness", "lenet_fa.fashion_mnist", "--attack", "square", "--limit", "2",
                     "--write", str(tmp_path / "notes")]) == 2
    err = capsys.readouterr().err.strip()
    assert "does not hold the published weights" in err and "\n" not in err
    assert list((tmp_path / "notes").iterdir()) == []


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
    assert {r["gradient"]: r.get("vanished") for r in block} == {"exact": 24, "rule": 24, "transfer": 0,
                                                                 "all": None}  # the worst row has no gradient
    healthy = robustness.evaluate_robustness(tiny("fa")[1], images, labels, mean=MEAN, std=STD,
                                             gradients=["exact", "rule"], attacks=["fgsm"], eps=[0.1], progress=False)
    assert [r.get("vanished") for r in healthy] == [0, 0, None]
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
