"""Architectures: shapes, parameter counts, timm's head API, and layers a learning rule can convert."""
from __future__ import annotations

import inspect
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from biotorch.data import DATASETS
from biotorch.models import ARCHITECTURES, DEFAULT_CFGS, CifarResNet

NAMES = sorted(ARCHITECTURES)
IMAGENET = {"resnet18", "resnet34", "resnet50"}
# Layer types a learning rule converts (Conv2d, Linear) or leaves to backprop (norms).
CONVERTIBLE_OR_NORM = (nn.Conv2d, nn.Linear, nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def small_input(model: nn.Module, batch: int = 2) -> torch.Tensor:
    """A batch of the model's default size, except 64×64 for the ImageNet ResNets to keep CPU tests fast."""
    channels, height, width = model.default_input_size
    if height > 64:
        height = width = 64
    return torch.randn(batch, channels, height, width)


def test_registry_names_and_descriptions():
    assert set(ARCHITECTURES) == {
        "lenet", "lenet_tanh", "mlp", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110",
        "resnet18", "resnet34", "resnet50", "mixer_s4",
    }
    for name, factory in ARCHITECTURES.items():
        first_line = (factory.__doc__ or "").strip().splitlines()[0]
        assert len(first_line) > 20 and first_line.endswith("."), name


@pytest.mark.parametrize("in_chans", [1, 3])
@pytest.mark.parametrize("name", NAMES)
def test_output_shape_on_default_input_size(name, in_chans):
    model = ARCHITECTURES[name](num_classes=10, in_chans=in_chans).eval()
    assert model.num_classes == 10 and model.in_chans == in_chans
    assert model.default_input_size[0] == in_chans
    batch = 1 if name in IMAGENET else 2  # 224×224 on CPU: keep it to one image
    with torch.no_grad():
        out = model(torch.randn(batch, *model.default_input_size))
    assert out.shape == (batch, 10)


def test_lenet_tanh_is_lenet_with_tanh_units():
    relu, tanh = ARCHITECTURES["lenet"](in_chans=1), ARCHITECTURES["lenet_tanh"](in_chans=1)
    assert {k: v.shape for k, v in relu.state_dict().items()} == {k: v.shape for k, v in tanh.state_dict().items()}
    tanh.load_state_dict(relu.state_dict())
    x = torch.randn(3, 1, 32, 32)
    manual = F.max_pool2d(torch.tanh(tanh.conv2(F.max_pool2d(torch.tanh(tanh.conv1(x)), 2))), 2).flatten(1)
    manual = tanh.head(torch.tanh(tanh.fc2(torch.tanh(tanh.fc1(manual)))))
    torch.testing.assert_close(tanh.eval()(x), manual)
    assert not torch.allclose(relu.eval()(x), manual)
    assert ARCHITECTURES["lenet"](act_layer="tanh").act3.__class__ is tanh.act3.__class__


def test_default_input_sizes():
    assert ARCHITECTURES["lenet"](in_chans=1).default_input_size == (1, 32, 32)
    assert ARCHITECTURES["lenet"](in_chans=3).default_input_size == (3, 32, 32)
    assert ARCHITECTURES["mlp"]().default_input_size == (1, 32, 32)
    assert ARCHITECTURES["resnet20"]().default_input_size == (3, 32, 32)
    assert ARCHITECTURES["mixer_s4"]().default_input_size == (3, 32, 32)
    assert ARCHITECTURES["resnet18"]().default_input_size == (3, 224, 224)


def test_resnet20_has_the_papers_parameter_count():
    # He et al. 2016, table 6: 0.27M; option A shortcuts have no parameters.
    assert num_params(ARCHITECTURES["resnet20"](num_classes=10)) == 269_722


@pytest.mark.parametrize("name, millions", [("resnet32", 0.46), ("resnet44", 0.66), ("resnet56", 0.85),
                                            ("resnet110", 1.7)])
def test_cifar_resnet_parameter_counts_match_the_paper(name, millions):
    count = num_params(ARCHITECTURES[name](num_classes=10))
    assert count == pytest.approx(millions * 1e6, rel=0.03)


@pytest.mark.parametrize("name", NAMES)
def test_docstring_parameter_count_is_true(name):
    # The factory docstring is shown to users; its number must be the model's, at the factory's defaults.
    factory = ARCHITECTURES[name]
    stated = re.search(r"([\d.]+)M parameters", factory.__doc__.splitlines()[0])
    assert stated, f"{name}: first docstring line should state 'X.XXM parameters'"
    decimals = len(stated.group(1).split(".")[1]) if "." in stated.group(1) else 0
    assert round(num_params(factory()) / 1e6, decimals) == float(stated.group(1))


@pytest.mark.parametrize("name", NAMES)
def test_forward_is_forward_head_of_forward_features(name):
    torch.manual_seed(0)
    model = ARCHITECTURES[name](num_classes=10, in_chans=3).eval()
    x = small_input(model)
    with torch.no_grad():
        expected = model(x)
        features = model.forward_features(x)
        assert torch.equal(model.forward_head(features), expected)
        pre_logits = model.forward_head(features, pre_logits=True)
    assert pre_logits.shape == (2, model.get_classifier().in_features)


@pytest.mark.parametrize("name", NAMES)
def test_default_cfgs_state_what_the_architecture_is(name):
    with torch.device("meta"):
        model = ARCHITECTURES[name]()
        features = model.forward_features(torch.empty(1, *model.default_input_size))
    cfg = DEFAULT_CFGS[name]
    assert cfg["input_size"] == model.default_input_size and cfg["num_classes"] == model.num_classes
    assert cfg["fixed_input_size"] == model.fixed_input_size and cfg["classifier"] == model.classifier_attr
    assert cfg["first_conv"] == next((n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)
    assert cfg["pool_size"] == (tuple(features.shape[2:]) if features.ndim == 4 else None)
    assert cfg["feature_maps"] == len(model.feature_info)
    assert cfg["img_size"] == ("img_size" in inspect.signature(type(model).__init__).parameters)
    data = DATASETS[cfg["default_data"]]  # the untagged name's dataset, of the model's image size
    assert data.input_size[1:] == cfg["input_size"][1:] and data.num_classes in (None, cfg["num_classes"])
    for info in model.feature_info:  # timm's keys, naming modules the model has (channels: tests/test_timm.py)
        assert model.get_submodule(info["module"]) is not None and info["num_chs"] > 0 and info["reduction"] >= 1


@pytest.mark.parametrize("name", NAMES)
def test_reset_classifier(name):
    model = ARCHITECTURES[name](num_classes=10, in_chans=3).eval()
    old_head = model.get_classifier()
    assert isinstance(old_head, nn.Linear) and old_head.out_features == 10
    assert model.get_submodule(model.get_classifier(name_only=True)) is old_head  # timm's name_only
    x = small_input(model)

    model.reset_classifier(5)
    head = model.get_classifier()
    assert isinstance(head, nn.Linear) and head is not old_head
    assert head.out_features == 5 and head.in_features == old_head.in_features
    assert model.num_classes == 5
    with torch.no_grad():
        assert model(x).shape == (2, 5)

    model.reset_classifier(0)  # timm: no head, the model returns pooled features
    assert isinstance(model.get_classifier(), nn.Identity)
    with torch.no_grad():
        assert model(x).shape == (2, old_head.in_features)


def test_reset_classifier_keeps_dtype():
    model = ARCHITECTURES["lenet"](num_classes=10).double()
    model.reset_classifier(3)
    assert model.get_classifier().weight.dtype == torch.float64
    assert model(torch.randn(2, 3, 32, 32, dtype=torch.float64)).shape == (2, 3)


def test_headless_construction():
    for name in ("lenet", "resnet20", "resnet18"):
        model = ARCHITECTURES[name](num_classes=0)
        assert isinstance(model.get_classifier(), nn.Identity)


@pytest.mark.parametrize("name", NAMES)
def test_every_learnable_layer_is_convertible_or_a_norm(name):
    model = ARCHITECTURES[name](num_classes=10, in_chans=3)
    for module_name, module in model.named_modules():
        if any(True for _ in module.parameters(recurse=False)):
            assert isinstance(module, CONVERTIBLE_OR_NORM), f"{name}.{module_name}: {type(module).__name__}"
        assert not getattr(module, "inplace", False), f"{name}.{module_name} is in-place"


class _PassThrough(torch.autograd.Function):
    """Returns its input as-is, as a learning rule's custom op may; in-place ops on its output fail."""

    @staticmethod
    def forward(ctx, x):
        return x

    @staticmethod
    def backward(ctx, grad):
        return grad


@pytest.mark.parametrize("name", ["lenet", "mlp", "resnet20", "mixer_s4", "resnet18", "resnet50"])
def test_layer_outputs_can_pass_through_a_custom_autograd_function(name):
    model = ARCHITECTURES[name](num_classes=10, in_chans=3)
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            module.register_forward_hook(lambda _module, _inputs, output: _PassThrough.apply(output))
    model(small_input(model)).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_cifar_resnet_rejects_depth_not_6n_plus_2():
    with pytest.raises(ValueError, match="6n\\+2"):
        CifarResNet(depth=21)


def test_negative_num_classes_is_rejected():
    with pytest.raises(ValueError, match="num_classes"):
        ARCHITECTURES["resnet20"](num_classes=-1)
