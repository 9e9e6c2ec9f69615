"""What ``biotorch eval``, ``robustness`` and ``info`` measure: a model from a published name, a checkpoint folder
(a training run, ``save_pretrained``'s, a card) or ``hf-hub:<org>/<repo>``, and the data it is measured on.

The data is the checkpoint's own unless named: a published record's dataset, or the dataset (and ``data_dir``) of
the run that trained the folder. An image folder's images are brought to what the model was trained on (its
size, channels, normalisation and crop, from its ``pretrained_cfg``).

Example::

    >>> target = open_target("runs/lenet_fa.imagefolder-ft-fashion_mnist-seed0")
    >>> target.dataset, target.info.label_names
    ('imagefolder', ('circle', 'cross', 'square'))
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

from torch import nn

from .data import DATASETS, DatasetInfo, dataset_info, imagefolder_info
from .errors import ConfigError
from .factory import create_model
from .files import load_yaml
from .pretrained import from_checkpoint, from_pretrained
from .registry import CheckpointRecord, get_pretrained_cfg
from .weights import fetch, folder_source, kind

__all__ = ["Target", "open_target"]

_RUN_RECIPE = "recipe.yaml"  # beside a training run's weights: the data it was trained on


@dataclasses.dataclass
class Target:
    """A model with weights and the data it is measured on."""

    label: str                         # as the user named it
    model: nn.Module
    model_name: str                    # arch_rule
    dataset: str
    data_dir: Optional[str]
    info: DatasetInfo
    record: Optional[CheckpointRecord]  # the published record (a name, a card folder), else None

    @property
    def published(self) -> bool:
        return self.record is not None and kind(self.label) == "name"


def _own_data(source, record: Optional[CheckpointRecord]) -> tuple[Optional[str], Optional[str]]:
    """(dataset, data_dir) the checkpoint was trained on, where it says: its record, or its run's recipe."""
    if record is not None:
        return record.dataset, None
    folder = Path(source)
    recipe = (folder if folder.is_dir() else folder.parent) / _RUN_RECIPE
    if kind(source) == "folder" and recipe.is_file():
        values = load_yaml(recipe.read_text(), "a run's recipe") or {}
        if isinstance(values, dict) and values.get("data") in DATASETS:
            data_dir = values.get("data_dir")
            return values["data"], str(data_dir) if isinstance(data_dir, str) else None
    return None, None


def open_target(source, *, data: Optional[str] = None, data_dir: Optional[str] = None, name: Optional[str] = None,
                device=None) -> Target:
    """The model ``source`` names (with its weights, checked as every load is) and its data: ``data`` and
    ``data_dir`` when given, else the checkpoint's own. ``name`` (``arch_rule``) fills in what a bare
    ``.safetensors`` file does not say."""
    how = kind(source)
    if how == "name":
        record = get_pretrained_cfg(str(source))
        model = create_model(record.name, pretrained=True, device=device)
        label = record.name
    else:
        record = fetch(source if how == "hub" else folder_source(source), config_required=False).record
        label = str(source)
    own, own_dir = _own_data(source, record)
    if data is None:
        if own is None:
            raise ConfigError(f"{label} does not say which data it was trained on: name it with --data (and "
                              "--data-dir for an image folder)")
        data, data_dir = own, data_dir or own_dir
    if data not in DATASETS:
        raise ConfigError(f"--data {data!r} is not a dataset; choose one of {', '.join(DATASETS)}")
    if how != "name":
        fill = dataset_info(data, data_dir) if data != "imagefolder" else None
        model = (from_pretrained(source, device=device) if how == "hub" else
                 from_checkpoint(source, name=name, num_classes=fill and fill.num_classes,
                                 in_chans=fill and fill.in_chans, device=device))
    config = model.biotorch_config
    info = (imagefolder_info(data_dir, DatasetInfo.from_cfg(model.pretrained_cfg)) if data == "imagefolder" and
            data_dir else dataset_info(data, data_dir))
    if config["num_classes"] != info.num_classes:
        raise ConfigError(f"{label} has {config['num_classes']} outputs but {data} has {info.num_classes} classes")
    return Target(label, model, f"{config['arch']}_{config['rule']}", data, data_dir, info, record)
