"""Checkpoint folders: save → load round trips, torch.hub from a clone, refusal of bad files."""
import dataclasses
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open

import biotorch
from biotorch import hub, registry
from biotorch.convert import feedback_fingerprint

REPO_ROOT = Path(__file__).resolve().parent.parent


def _trained(name, steps=2, **kwargs):
    torch.manual_seed(0)
    model = biotorch.create_model(name, **kwargs)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, weight_decay=1e-3)
    x = torch.randn(8, *model.default_input_size)
    y = torch.randint(0, model.num_classes, (8,))
    for _ in range(steps):
        opt.zero_grad()
        biotorch.set_targets(model, y)  # for the rules that learn from them (drtp)
        F.cross_entropy(model(x), y).backward()
        opt.step()
        biotorch.feedback_step(model)
    return model.eval(), x


def _grads(model, x):
    model.zero_grad()
    model.train()
    y = torch.arange(len(x)) % model.num_classes
    biotorch.set_targets(model, y)
    F.cross_entropy(model(x), y).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("rule", list(biotorch.RULES))
def test_save_pretrained_round_trip_keeps_outputs_and_learning(rule, tmp_path):
    model, x = _trained(f"lenet_{rule}", in_chans=1)
    folder = hub.save_pretrained(model, tmp_path / "ckpt")
    assert {p.name for p in folder.iterdir()} == {"model.safetensors", "config.json"}
    config = json.loads((folder / "config.json").read_text())
    assert config["rule"] == rule and config["files"]["model.safetensors"]["sha256"] == hub.sha256(
        folder / "model.safetensors")
    loaded = biotorch.from_pretrained(folder).eval()
    assert torch.equal(loaded(x), model(x))
    for name, grad in _grads(model, x).items():  # same feedback state → the same next update
        assert torch.equal(grad, _grads(loaded, x)[name]), name


def test_safetensors_metadata_names_arch_rule_version(tmp_path):
    from safetensors import safe_open

    model, _ = _trained("lenet_dfa", steps=1, in_chans=1)
    path = hub.save_weights(model, tmp_path / "w.safetensors")
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    assert meta["arch"] == "lenet" and meta["rule"] == "dfa" and meta["biotorch_version"] == biotorch.__version__
    assert not list(tmp_path.glob(".*tmp"))  # atomic write left nothing behind


def _corrupt(path: Path, how: str):
    data = bytearray(path.read_bytes())
    if how == "truncated":
        path.write_bytes(bytes(data[: len(data) // 2]))
    elif how == "header":
        path.write_bytes(b"\xff" * 16 + bytes(data[16:]))
    else:  # flipped bytes in the tensor data: only the checksum notices
        data[-20:-10] = bytes(10)
        path.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["truncated", "header", "flipped"])
def test_corrupt_weights_are_refused_and_nothing_is_loaded(how, tmp_path):
    model, x = _trained("lenet_fa", in_chans=1)
    folder = hub.save_pretrained(model, tmp_path / "ckpt")
    _corrupt(folder / "model.safetensors", how)
    with pytest.raises(ValueError, match="corrupt|truncated|sha256"):
        biotorch.from_pretrained(folder)
    target = biotorch.create_model("lenet_fa", in_chans=1)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    if how != "flipped":  # without a checksum, safetensors itself must refuse the file
        with pytest.raises(ValueError, match="corrupt, truncated"):
            hub.load_checkpoint(target, folder / "model.safetensors")
    assert all(torch.equal(v, target.state_dict()[k]) for k, v in before.items())


def test_wrong_architecture_or_shape_loads_nothing(tmp_path):
    model, _ = _trained("lenet_fa", in_chans=1)
    path = hub.save_weights(model, tmp_path / "w.safetensors")
    other = biotorch.create_model("lenet_bp", in_chans=1)
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(ValueError, match="lenet_fa checkpoint, not lenet_bp"):
        hub.load_checkpoint(other, path)
    wider = biotorch.create_model("lenet_fa", in_chans=1, num_classes=7)
    with pytest.raises(ValueError, match="shape"):
        hub.load_checkpoint(wider, path)
    assert all(torch.equal(v, other.state_dict()[k]) for k, v in before.items())


@pytest.fixture
def published(tmp_path, monkeypatch):
    """A published checkpoint in a temporary model_cards mirror, with its registry metadata."""
    model, x = _trained("lenet_fa", in_chans=1)
    name = "lenet_fa.tiny"
    cfg_fields = dict(name=name, arch="lenet", rule="fa", tag="tiny", dataset="fashion_mnist",
                      split="synthetic", num_classes=10, label_names=tuple(map(str, range(10))),
                      input_size=(1, 32, 32), mean=(0.5,), std=(0.25,), interpolation="bilinear", recipe={},
                      metrics={"val_top1": 50.0, "test_top1": 49.0}, params_forward=1, params_feedback=1,
                      files={}, hub_id="biotorch/lenet_fa.tiny", default=True)
    folder = hub.save_pretrained(model, tmp_path / "model_cards" / name)
    files = json.loads((folder / "config.json").read_text())["files"]
    cfg = registry.CheckpointRecord(**{**cfg_fields, "files": files})
    monkeypatch.setattr(hub, "MIRROR", tmp_path / "model_cards")
    monkeypatch.setattr(registry, "_pretrained", lambda: {name: cfg})
    return model, x, folder


def test_create_model_pretrained_from_mirror_and_head_reset(published, capsys):
    model, x, folder = published
    assert biotorch.list_models(pretrained=True) == ["lenet_fa.tiny"]
    loaded = biotorch.create_model("lenet_fa", pretrained=True).eval()  # the default tag
    assert torch.equal(loaded(x), model(x))
    # timm's pretrained_cfg: the checkpoint's tag, Hub repo and data
    assert loaded.pretrained_cfg["tag"] == "tiny" and loaded.pretrained_cfg["hf_hub_id"] == "biotorch/lenet_fa.tiny"
    assert loaded.pretrained_cfg["mean"] == (0.5,) and loaded.default_cfg is loaded.pretrained_cfg
    tf = biotorch.data.transforms(loaded)
    assert tf(torch.zeros(1, 28, 28, dtype=torch.uint8)).shape == (1, 32, 32)
    five = biotorch.create_model("lenet_fa.tiny", pretrained=True, num_classes=5)
    assert five(x).shape == (len(x), 5) and "re-initialised" in capsys.readouterr().err
    assert five.get_classifier().rule.name == "fa"
    with pytest.raises(ValueError, match="Available tags: lenet_fa.tiny"):
        biotorch.create_model("lenet_fa.imagenet", pretrained=True)


def test_published_sha_mismatch_refused(published):
    _, _, folder = published
    _corrupt(folder / "model.safetensors", "flipped")
    with pytest.raises(ValueError, match="sha256"):
        biotorch.create_model("lenet_fa.tiny", pretrained=True)


def test_torch_hub_load_local_clone(published):
    model, x, _ = published
    loaded = torch.hub.load(str(REPO_ROOT), "lenet_fa", source="local", trust_repo=True).eval()
    assert torch.equal(loaded(x), model(x))
    fresh = torch.hub.load(str(REPO_ROOT), "resnet20_kp", source="local", pretrained=False, num_classes=3)
    assert fresh(torch.randn(1, 3, 32, 32)).shape == (1, 3)
    tf = torch.hub.load(str(REPO_ROOT), "transforms", "lenet_fa.tiny", source="local")
    assert tf(torch.zeros(1, 28, 28, dtype=torch.uint8)).shape == (1, 32, 32)


def test_hubconf_has_one_documented_entrypoint_per_model():
    import importlib.util

    spec = importlib.util.spec_from_file_location("hubconf_under_test", REPO_ROOT / "hubconf.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for name in biotorch.list_models():
        entry = getattr(module, name)
        assert "Learning rule" in entry.__doc__ and "pretrained" in entry.__doc__
    assert set(module.dependencies) >= {"torch", "safetensors", "huggingface_hub"}


def test_from_pretrained_bad_folder_messages(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        biotorch.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json is not valid JSON"):
        biotorch.from_pretrained(tmp_path)


def test_pretrained_cfg_is_typed_and_complete():
    fields = {f.name for f in dataclasses.fields(registry.CheckpointRecord)}
    assert {"dataset", "split", "num_classes", "label_names", "input_size", "mean", "std", "interpolation",
            "recipe", "metrics", "params_forward", "params_feedback", "files", "hub_id"} <= fields


# --- checkpoints hold only what cannot be re-derived ------------------------------------------------------

def _saved_size(name, tmp_path, **kwargs):
    model = biotorch.create_model(name, **kwargs)
    return hub.save_weights(model, tmp_path / f"{name}.safetensors").stat().st_size


def test_checkpoints_store_only_learned_feedback(tmp_path):
    bp = _saved_size("resnet20_bp", tmp_path)
    for rule in ("fa", "dfa", "usf", "brsf", "frsf"):  # feedback is a function of (seed, step)
        assert _saved_size(f"resnet20_{rule}", tmp_path) <= 1.05 * bp, rule
    for rule in ("wm", "kp"):  # learned feedback: B is stored beside W
        assert _saved_size(f"resnet20_{rule}", tmp_path) > 1.9 * bp, rule
    assert bp < 1.2e6  # ResNet-20: 0.27 M float32 numbers


@pytest.mark.parametrize("rule", ["fa", "frsf", "brsf", "dfa"])
def test_derived_feedback_is_regenerated_at_load_and_fingerprinted(rule, tmp_path):
    model, x = _trained(f"lenet_{rule}", in_chans=1, seed=3)
    path = hub.save_weights(model, tmp_path / "w.safetensors")
    with safe_open(str(path), "pt") as f:
        assert not [k for k in f.keys() if k.endswith(("feedback_weight", "feedback_magnitude"))]
        assert f.metadata()["feedback_fingerprint"] == feedback_fingerprint(model)
    other = biotorch.create_model(f"lenet_{rule}", in_chans=1, seed=11)  # different feedback before loading
    hub.load_checkpoint(other, path)
    for (name, a), (_, b) in zip(model.named_buffers(), other.named_buffers()):
        assert torch.equal(a, b), name
    for name, grad in _grads(model, x).items():
        assert torch.equal(grad, _grads(other, x)[name]), name


def test_changed_feedback_generator_fails_loudly_and_leaves_the_model_untouched(tmp_path, monkeypatch):
    model, _ = _trained("lenet_fa", in_chans=1)
    path = hub.save_weights(model, tmp_path / "w.safetensors")
    # the same checkpoint read by a biotorch whose fa draws B differently (here: the other init)
    other = biotorch.create_model("lenet_fa", in_chans=1, feedback_init="xavier")
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(ValueError, match="fingerprint"):
        hub.load_checkpoint(other, path)
    assert all(torch.equal(before[k], v) for k, v in other.state_dict().items())
    monkeypatch.setattr(biotorch.rules, "counter_uniform", lambda shape, key, device=None: torch.zeros(shape))
    with pytest.raises(ValueError, match="generator"):
        hub.load_checkpoint(biotorch.create_model("lenet_fa", in_chans=1), path)
