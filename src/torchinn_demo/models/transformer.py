"""A small vision transformer for the 28x28 MNIST digits of :func:`torchinn_demo.data.load_digits`.

The image (normalised by a fixed mean and std, buffers) is cut into 4x4 patches (49 tokens), each
embedded by a linear layer (a stride-4 convolution) plus a learned position embedding; then
``depth`` pre-norm encoder blocks (LayerNorm, multi-head self-attention with a fused ``qkv``
projection and ``F.scaled_dot_product_attention``, residual; LayerNorm, GELU MLP, residual), a
final LayerNorm, the mean over the tokens and a linear classifier.

>>> net = DigitsTransformer()
>>> net(torch.rand(2, 1, 28, 28)).shape
torch.Size([2, 10])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["Attention", "Block", "DigitsTransformer"]


class Attention(nn.Module):
    """Multi-head self-attention: fused ``qkv`` linear, ``heads`` heads, output projection."""

    def __init__(self, dim: int, heads: int, head_dim: int) -> None:
        super().__init__()
        self.num_heads, self.head_dim = heads, head_dim  # names torchinn.to_discrete follows
        self.scale = head_dim ** -0.5  # of the full width: integral models keep it at every width
        self.qkv = nn.Linear(dim, 3 * heads * head_dim)
        self.proj = nn.Linear(heads * head_dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        return self.proj(out.transpose(1, 2).reshape(b, n, -1))


class Block(nn.Module):
    """Pre-norm encoder block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``."""

    def __init__(self, dim: int, heads: int, head_dim: int, hidden: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, head_dim)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class DigitsTransformer(nn.Module):
    """ViT for ``(N, 1, 28, 28)`` digits in [0, 1]: 4x4 patches, ``dim``-wide tokens, ``depth``
    blocks of ``heads`` heads of ``head_dim`` and a ``hidden``-wide MLP, mean pooling."""

    def __init__(self, dim: int = 64, depth: int = 2, heads: int = 4, head_dim: int = 16,
                 hidden: int = 128, patch: int = 4, classes: int = 10, mean: float = 0.1307,
                 std: float = 0.3081) -> None:
        super().__init__()
        if 28 % patch:
            raise ValueError(f"patch must divide 28, got {patch}")
        self.register_buffer("mean", torch.tensor(float(mean)))
        self.register_buffer("std", torch.tensor(float(std)))
        self.embed = nn.Conv2d(1, dim, patch, patch)
        self.pos = nn.Parameter(torch.randn(1, (28 // patch) ** 2, dim) * 0.02)
        self.blocks = nn.Sequential(*(Block(dim, heads, head_dim, hidden) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.embed((x - self.mean) / self.std).flatten(2).transpose(1, 2) + self.pos
        return self.head(self.norm(self.blocks(x)).mean(1))
