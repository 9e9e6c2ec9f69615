"""A small MLP-Mixer (Tolstikhin et al. 2021) for 32×32 images: only linear layers, layer norm and GELU."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ._head import ClassifierMixin, architecture, check_global_pool, new_classifier

__all__ = ["MlpMixer", "mixer_s4"]


class FeedForward(nn.Module):
    """``Linear -> GELU -> Linear`` over the last dimension."""

    def __init__(self, features: int, hidden_features: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(features, hidden_features)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class MixerBlock(nn.Module):
    """Token mixing (an MLP across patches, per channel), then channel mixing (an MLP per patch)."""

    def __init__(self, num_tokens: int, embed_dim: int, token_mlp_dim: int, channel_mlp_dim: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(embed_dim)
        self.mlp_tokens = FeedForward(num_tokens, token_mlp_dim)
        self.norm2 = nn.LayerNorm(embed_dim)
        self.mlp_channels = FeedForward(embed_dim, channel_mlp_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (batch, tokens, channels); token mixing acts on the tokens axis, hence the transposes.
        x = x + self.mlp_tokens(self.norm1(x).transpose(1, 2)).transpose(1, 2)
        return x + self.mlp_channels(self.norm2(x))


class MlpMixer(ClassifierMixin, nn.Module):
    """MLP-Mixer: patch embedding, ``depth`` mixer blocks, layer norm, mean over patches, classifier.

    Every learnable layer is an ``nn.Linear``, ``nn.Conv2d`` (the patch embedding) or ``nn.LayerNorm``.
    Its features are token sequences, not spatial maps, so it has no ``feature_info`` (no ``features_only``).
    The token-mixing linear layers act on 3-D inputs ``(batch, channels, tokens)``.

    Args:
        num_classes: outputs of the classifier (0 for none).
        in_chans: image channels.
        img_size: image side, or ``(height, width)``; multiples of ``patch_size``.
        patch_size: side of the square, non-overlapping patches.
        embed_dim: channels per patch.
        depth: mixer blocks.
        token_mlp_dim: hidden width of the token-mixing MLP.
        channel_mlp_dim: hidden width of the channel-mixing MLP.
        global_pool: ``"avg"`` (mean over patches) or ``""`` (the patch tokens, for num_classes=0).
        drop_rate: dropout before the classifier.

    Example::

        >>> model = MlpMixer(num_classes=10, in_chans=3)
        >>> model(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """

    fixed_input_size = True  # token mixing is sized for the patches of img_size

    def __init__(
        self,
        num_classes: int = 10,
        in_chans: int = 3,
        img_size: int | tuple[int, int] = 32,
        patch_size: int = 4,
        embed_dim: int = 128,
        depth: int = 6,
        token_mlp_dim: int = 64,
        channel_mlp_dim: int = 512,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        height, width = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        if height % patch_size or width % patch_size:
            raise ValueError(f"img_size ({img_size}) must be a multiple of patch_size ({patch_size})")
        self.set_global_pool(global_pool, num_classes)
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.default_input_size = (in_chans, height, width)
        self.num_tokens = (height // patch_size) * (width // patch_size)

        self.patch_embed = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.blocks = nn.Sequential(
            *[MixerBlock(self.num_tokens, embed_dim, token_mlp_dim, channel_mlp_dim) for _ in range(depth)]
        )
        self.norm = nn.LayerNorm(embed_dim)
        self.num_features = self.head_hidden_size = embed_dim
        self.head = new_classifier(self.head_hidden_size, num_classes)

        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised patch embeddings, shape ``(batch, num_tokens, embed_dim)``."""
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        return self.norm(self.blocks(x))

    def set_global_pool(self, global_pool: Optional[str], num_classes: int) -> None:
        pool_type = getattr(self, "global_pool", "avg") if global_pool is None else global_pool
        if global_pool is None and pool_type == "" and num_classes > 0:  # timm: back to the default pooling
            pool_type = "avg"
        self.global_pool = check_global_pool(pool_type, ("avg", ""), num_classes, "MlpMixer")

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == "avg":
            x = x.mean(dim=1)
        if self.drop_rate > 0.0:
            x = F.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.head(x)


@architecture(MlpMixer, input_size=(3, 32, 32), default_data="cifar10_jpeg",
              first_conv="patch_embed")
def mixer_s4(**kwargs) -> MlpMixer:
    """MLP-Mixer for 32×32 images (Tolstikhin et al. 2021), 4×4 patches, 6 blocks, 0.85M parameters.

    Keyword arguments go to :class:`MlpMixer` (``num_classes``, ``in_chans``, ``depth``, ...).
    """
    return MlpMixer(**kwargs)
