"""torch.hub entrypoints: one per registered model (``torch.hub.list``), pretrained by default.

    >>> model = torch.hub.load("<owner>/biotorch", "resnet20_dfa")                  # pretrained, CPU
    >>> model = torch.hub.load("path/to/clone", "lenet_fa", source="local", device="cuda")
    >>> tf = torch.hub.load("path/to/clone", "transforms", "lenet_fa", source="local")

Weights come from the clone's ``model_cards/`` mirror (no network needed), else the Hugging Face Hub.
Importing this file only builds small Python functions: no model, file or network is touched.
"""
dependencies = ["torch", "torchvision", "safetensors", "huggingface_hub", "timm"]

from biotorch import factory as _factory  # noqa: E402
from biotorch import registry as _registry  # noqa: E402


def _entrypoint(name: str):
    def entrypoint(pretrained: bool = True, device=None, tag=None, **kwargs):
        full = f"{name}.{tag}" if tag else name
        return _factory.create_model(full, pretrained=pretrained, device=device, **kwargs)

    tags = sorted(c.tag for c in _registry._pretrained().values() if c.model_name == name)
    entrypoint.__name__ = entrypoint.__qualname__ = name
    entrypoint.__doc__ = f"""{_registry.describe(name)}

    Pretrained tags: {', '.join(tags) if tags else 'none yet (use pretrained=False)'}.

    Args:
        pretrained (bool): load published weights (default True); the default tag when ``tag`` is None.
        device: where to put the model, e.g. "cuda".
        tag (str): training data of the checkpoint, e.g. "fashion_mnist".
        **kwargs: ``num_classes``, ``in_chans`` or rule options, as in ``biotorch.create_model``.
    """
    return entrypoint


for _name in _registry.model_names():
    globals()[_name] = _entrypoint(_name)


def transforms(name: str):
    """The eval transform (PIL image or uint8 tensor → normalised tensor) matching a pretrained model."""
    return _factory.transforms(name)
