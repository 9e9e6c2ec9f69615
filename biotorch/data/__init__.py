"""Datasets for training and evaluating the model zoo.

Every dataset is loaded whole into memory as uint8 tensors and fed by a :class:`DeviceLoader` that keeps the
images on the training device, so an epoch of MNIST or CIFAR costs no host work.

Files: ``catalog.py`` (what each dataset is), ``sources.py`` (where its files are, how they are read, the
fixed validation hold-out), ``transforms.py`` (evaluation preprocessing), ``loader.py`` (``DeviceLoader``).

Example::

    >>> from biotorch.data import DATASETS, DeviceLoader, load_split
    >>> info = DATASETS["fashion_mnist"]
    >>> images, labels = load_split("fashion_mnist", "train", data_dir="data/fashion-mnist")
    >>> loader = DeviceLoader(images, labels, batch_size=128, mean=info.mean, std=info.std,
    ...                       train=True, augment="none", seed=0, device="cuda")
    >>> for epoch in range(10):
    ...     loader.set_epoch(epoch)
    ...     for x, y in loader: ...
"""
from .catalog import AUGMENTS, CROP_PCT, DATASETS, SPLIT_SEED, SYNTHETIC, DatasetInfo
from .loader import DeviceLoader
from .sources import (balanced_subset, dataset_info, default_val_size, has_split, holdout, imagefolder_info,
                      load_samples, load_split)
from .transforms import eval_transform, transforms

__all__ = ["AUGMENTS", "CROP_PCT", "DATASETS", "SPLIT_SEED", "SYNTHETIC", "DatasetInfo", "DeviceLoader",
           "balanced_subset", "dataset_info", "default_val_size", "eval_transform", "has_split", "holdout",
           "imagefolder_info", "load_samples",
           "load_split", "transforms"]
