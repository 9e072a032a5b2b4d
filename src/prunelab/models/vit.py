"""A small Vision Transformer for 28x28 and 32x32 inputs, with prunable attention heads.

The architecture of Dosovitskiy et al. 2021 ("An Image is Worth 16x16 Words") at a size that
trains on a CPU: non-overlapping patches embedded by a strided convolution, learned position
embeddings, pre-norm encoder blocks (``x + attn(LN(x))``, ``x + mlp(LN(x))``), a final
LayerNorm and the mean over tokens into the classifier (no class token).

:class:`Attention` declares ``prunable_heads``: structured pruning removes whole heads (their
query, key and value rows and output-projection columns; :mod:`prunelab.graph`) and whole MLP
neurons; compaction makes the model physically smaller. The embedding width is left whole: it
runs through every block's residual stream and LayerNorms.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from prunelab.models.base import PrunelabModel
from prunelab.models.registry import register_model

__all__ = ["Attention", "ViTTiny"]


class Attention(nn.Module):
    """Multi-head self-attention over ``(batch, tokens, dim)`` whose heads can be removed.

    ``qkv`` maps ``dim`` to the query, key and value of every head (rows ordered
    ``[q heads | k heads | v heads]``, ``head_dim`` rows per head), ``proj`` maps the heads'
    concatenated outputs back to ``dim``. ``num_heads`` is read at every forward, so a compacted
    module with fewer heads (and smaller ``qkv``/``proj``) runs unchanged."""

    prunable_heads = True

    def __init__(self, dim: int, num_heads: int, head_dim: int | None = None) -> None:
        super().__init__()
        if head_dim is None:
            if dim % num_heads:
                raise ValueError(f"dim={dim} is not a multiple of num_heads={num_heads}")
            head_dim = dim // num_heads
        self.num_heads = int(num_heads)
        self.head_dim = int(head_dim)
        self.qkv = nn.Linear(dim, 3 * self.num_heads * self.head_dim)
        self.proj = nn.Linear(self.num_heads * self.head_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.proj(out.transpose(1, 2).reshape(b, n, self.num_heads * self.head_dim))

    def extra_repr(self) -> str:  # noqa: D102
        return f"num_heads={self.num_heads}, head_dim={self.head_dim}"


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_dim), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(mlp_dim, dim), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


@register_model("vit_tiny")
class ViTTiny(PrunelabModel):
    """A ViT for small images (about 0.2M parameters at the defaults).

    Args:
        input_shape: ``(C, H, W)``; H and W multiples of ``patch_size``.
        num_classes: number of output logits.
        patch_size: side of the square patches; ``None``: 4 when H and W are multiples of 4
            (32x32: 64 tokens, 28x28: 49 tokens), else 7.
        dim, depth, num_heads, mlp_dim: embedding width, blocks, heads per block, MLP width.
        dropout: dropout in the MLPs and after the position embedding.
    """

    def __init__(self, input_shape: Sequence[int], num_classes: int,
                 patch_size: int | None = None, dim: int = 64, depth: int = 4,
                 num_heads: int = 4, mlp_dim: int = 128, dropout: float = 0.0) -> None:
        super().__init__(input_shape, num_classes)
        if len(self.input_shape) != 3:
            raise ValueError(f"vit_tiny needs (C, H, W) inputs, got {self.input_shape}")
        c, h, w = self.input_shape
        if patch_size is None:
            patch_size = 4 if h % 4 == 0 and w % 4 == 0 else 7
        self.patch_size = int(patch_size)
        if h % self.patch_size or w % self.patch_size:
            self.input_fit_error = (f"H={h} and W={w} must be multiples of "
                                    f"patch_size={self.patch_size}")
        tokens = max(1, (h // self.patch_size) * (w // self.patch_size))
        self.patch_embed = nn.Conv2d(c, dim, self.patch_size, stride=self.patch_size)
        self.pos_embed = nn.Parameter(torch.zeros(1, tokens, dim))
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.Sequential(*[Block(dim, num_heads, mlp_dim, dropout)
                                      for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, self.num_classes)
        self._output_layer = "head"
        self._init()

    def _init(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # (batch, tokens, dim)
        x = self.blocks(self.drop(x + self.pos_embed))
        return self.head(self.norm(x).mean(1))
