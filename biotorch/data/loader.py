"""``DeviceLoader``: batches straight from uint8 tensors kept on the training device."""
from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from .catalog import AUGMENTS, Augment

class DeviceLoader:
    """Batches of normalised (optionally augmented) images from uint8 tensors kept on ``device``.

    Everything after construction runs on the device: gathering a batch, random crop (zero
    padding 4) and horizontal flip, and the float conversion and normalisation. Each epoch's
    order and augmentation draws come from a CPU ``torch.Generator`` seeded by ``(seed, epoch)``
    and are copied to the device once when iteration starts, so iterating never syncs the
    host and gives the same batches on CPU and CUDA. Call :meth:`set_epoch` before each epoch
    (as with ``DistributedSampler``); otherwise every epoch repeats epoch 0.

    With ``world_size > 1`` every rank draws the same permutation and takes its own contiguous
    slice of ``N // world_size`` samples (training), or every ``world_size``-th sample
    (evaluation, so that the ranks together cover each sample exactly once).

    Example::

        >>> loader = DeviceLoader(images, labels, batch_size=128, mean=(0.5,), std=(0.5,),
        ...                       train=True, augment="crop_flip", seed=0, device="cuda")
        >>> loader.set_epoch(3)
        >>> x, y = next(iter(loader))      # float32 (128, C, H, W) and int64 (128,) on cuda
    """

    def __init__(
        self,
        images_u8: Tensor,
        labels: Tensor,
        batch_size: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        train: bool,
        augment: Augment = "none",
        seed: int = 0,
        drop_last: bool = False,
        device: torch.device | str = "cpu",
        rank: int = 0,
        world_size: int = 1,
        channels_last: bool = False,
        padding: int = 4,
    ) -> None:
        if images_u8.dtype != torch.uint8 or images_u8.ndim != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {images_u8.dtype} {tuple(images_u8.shape)}")
        if labels.shape != (len(images_u8),):
            raise ValueError(f"labels must have shape ({len(images_u8)},), got {tuple(labels.shape)}")
        channels = images_u8.shape[1]
        if len(mean) != channels or len(std) != channels:
            raise ValueError(f"mean and std need {channels} values, got {len(mean)} and {len(std)}")
        if augment not in AUGMENTS:
            raise ValueError(f"augment must be one of {', '.join(map(repr, AUGMENTS))}, not {augment!r}")
        if augment != "none" and not train:
            raise ValueError("augmentation is for training: pass augment='none' when train=False")
        if batch_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need batch_size >= 1 and 0 <= rank < world_size, got "
                             f"{batch_size}, {rank}, {world_size}")
        self.device = torch.device(device)
        self.batch_size, self.train, self.augment = batch_size, train, augment
        self.seed, self.drop_last, self.channels_last = seed, drop_last, channels_last
        self.rank, self.world_size, self.padding = rank, world_size, padding
        self.epoch = 0
        self.dataset_size = len(images_u8)
        self.images = images_u8.to(self.device)
        self.labels = labels.to(self.device, torch.int64)
        if augment != "none":  # padded once; crops are then plain index arithmetic
            self.padded = F.pad(self.images, (padding,) * 4)
        std_t = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        mean_t = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self.scale, self.shift = 1.0 / (255.0 * std_t), mean_t / std_t  # (x/255 - m)/s = x*scale - shift
        n, ws = self.dataset_size, world_size
        self.num_samples = n // ws if train else len(range(rank, n, ws))

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose shuffle and augmentation the next iteration uses."""
        self.epoch = epoch

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_samples // self.batch_size
        return math.ceil(self.num_samples / self.batch_size)

    def _epoch_plan(self) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """This rank's sample order and crop offsets (dy, dx, flip) for the current epoch."""
        n = self.dataset_size
        if not self.train:
            return torch.arange(self.rank, n, self.world_size, device=self.device), None, None
        # torch's CPU generator keeps only 32 bits of a seed, so (seed, epoch) is hashed into 32.
        # Draws cover all n positions before sharding: augmentation does not depend on world_size.
        key = hashlib.blake2b(f"{self.seed},{self.epoch}".encode(), digest_size=4).digest()
        g = torch.Generator().manual_seed(int.from_bytes(key, "little"))
        order = torch.randperm(n, generator=g)
        offsets = flips = None
        if self.augment != "none":
            offsets = torch.randint(0, 2 * self.padding + 1, (n, 2), generator=g)
            flips = torch.rand(n, generator=g) < 0.5
            if self.augment == "crop":
                flips.zero_()
        shard = slice(self.rank * self.num_samples, (self.rank + 1) * self.num_samples)
        order = order[shard].to(self.device)
        if offsets is not None:
            offsets, flips = offsets[shard].to(self.device), flips[shard].to(self.device)
        return order, offsets, flips

    def _crop(self, index: Tensor, offsets: Tensor, flips: Tensor) -> Tensor:
        _, c, h, w = self.images.shape
        rows = offsets[:, :1] + torch.arange(h, device=self.device)  # (B, H)
        cols = offsets[:, 1:] + torch.arange(w, device=self.device)  # (B, W)
        cols = torch.where(flips[:, None], cols.flip(1), cols)  # a flip reads the window backwards
        channels = torch.arange(c, device=self.device)
        return self.padded[index[:, None, None, None], channels[None, :, None, None],
                           rows[:, None, :, None], cols[:, None, None, :]]

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        order, offsets, flips = self._epoch_plan()
        for b in range(len(self)):
            s = slice(b * self.batch_size, (b + 1) * self.batch_size)
            index = order[s]
            x = self.images[index] if offsets is None else self._crop(index, offsets[s], flips[s])
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x.to(torch.float32).mul_(self.scale).sub_(self.shift), self.labels[index]
