"""Small Vision Transformer whose attention is built from hookable modules."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..errors import XpruneError
from ..layers import Add, Concat, MatMul
from ._base import Configurable, image_hw


class Attention(nn.Module):
    """Multi-head self-attention with separate ``q``, ``k``, ``v`` projections.

    ``proj(concat_h(softmax(q_h k_hᵀ / sqrt(d)) v_h))`` for heads ``h``, where
    the products go through the :class:`~xprune.layers.MatMul` modules
    ``qk`` and ``av`` and the normalisation through the ``softmax`` module.

    Parameters
    ----------
    dim : int
        Token width (input of q/k/v, output of ``proj``).
    num_heads : int, default 4
        Number of heads; must divide ``dim``.

    Attributes
    ----------
    q, k, v : nn.Linear
        ``dim -> num_heads * head_dim`` each; the rows of head ``h`` are
        ``h * head_dim : (h + 1) * head_dim``.
    qk, av : MatMul
        Attention scores ``[B, H, N, N]`` and weighted values ``[B, H, N, d]``.
    softmax : nn.Softmax
        Softmax over the key axis (``dim=-1``).
    proj : nn.Linear
        ``num_heads * head_dim -> dim`` output projection.
    num_heads : int
        Read at every forward pass. To remove heads, slice the rows of q/k/v
        (weight and bias) and the columns of ``proj.weight`` of the removed
        heads, then set ``num_heads``; ``head_dim`` follows from the weights.

    Notes
    -----
    The ``1/sqrt(head_dim)`` scaling is an inline multiplication by a
    constant (a linear op that LRP passes through unchanged).
    """

    def __init__(self, dim: int, num_heads: int = 4):
        super().__init__()
        if num_heads < 1 or dim % num_heads:
            raise XpruneError(f"num_heads={num_heads} must be >= 1 and divide dim={dim}")
        self.num_heads = int(num_heads)
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.qk = MatMul()
        self.softmax = nn.Softmax(dim=-1)
        self.av = MatMul()
        self.proj = nn.Linear(dim, dim)

    @property
    def head_dim(self) -> int:
        """Width of one head, ``q.out_features // num_heads`` (derived from the weights)."""
        return self.q.out_features // self.num_heads

    @head_dim.setter
    def head_dim(self, value: int) -> None:
        # Kept settable for pruning tools that assign it; it must agree with the weights.
        if int(value) * self.num_heads != self.q.out_features:
            raise XpruneError(
                f"head_dim={value} with num_heads={self.num_heads} does not match q.out_features="
                f"{self.q.out_features}; head_dim is derived from the weights: slice q/k/v first "
                "and set num_heads"
            )

    def _check(self) -> tuple[int, int]:
        h = int(self.num_heads)
        inner = self.q.out_features
        if h < 1 or inner % h or self.k.out_features != inner or self.v.out_features != inner:
            raise XpruneError(
                f"inconsistent attention: num_heads={h}, q/k/v out_features="
                f"{self.q.out_features}/{self.k.out_features}/{self.v.out_features}; "
                "q, k and v must have the same width, a multiple of num_heads"
            )
        if self.proj.in_features != inner:
            raise XpruneError(f"proj.in_features={self.proj.in_features} must equal q.out_features={inner}")
        return h, inner // h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, _ = x.shape
        h, d = self._check()

        def heads(t: torch.Tensor) -> torch.Tensor:  # [B, N, h*d] -> [B, h, N, d]
            return t.reshape(B, N, h, d).transpose(1, 2)

        q = heads(self.q(x)) * (d**-0.5)
        k = heads(self.k(x))
        v = heads(self.v(x))
        attn = self.softmax(self.qk(q, k.transpose(-2, -1)))  # [B, h, N, N]
        out = self.av(attn, v)  # [B, h, N, d]
        return self.proj(out.transpose(1, 2).reshape(B, N, h * d))

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, head_dim={self.head_dim}"


class FeedForward(nn.Module):
    """Transformer MLP ``fc2(act(fc1(x)))`` with a ``GELU`` module ``act``."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-LN transformer block.

    ``x = add1(x, attn(norm1(x)))`` then ``x = add2(x, mlp(norm2(x)))``.

    Attributes
    ----------
    norm1, norm2 : nn.LayerNorm
    attn : Attention
    mlp : FeedForward
        ``fc1``, ``act`` (GELU), ``fc2``.
    add1, add2 : Add
        Residual sums as modules.
    """

    def __init__(self, dim: int, heads: int, mlp_dim: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.add1 = Add()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = FeedForward(dim, mlp_dim)
        self.add2 = Add()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.add1(x, self.attn(self.norm1(x)))
        return self.add2(x, self.mlp(self.norm2(x)))


class ViT(Configurable):
    """Vision Transformer for small images.

    ``Conv2d(patch, stride=patch)`` patch embedding, a learned class token
    (prepended with the :class:`Concat` module ``cat``), learned position
    embedding (added with the :class:`Add` module ``pos_add``), ``depth`` pre-LN
    :class:`Block` s, a final ``LayerNorm`` and a ``Linear`` head on the class
    token.

    Parameters
    ----------
    image_size : int or (int, int), default 28
        Input height and width.
    patch_size : int, optional
        Side of the square patches; must divide the image size. Default:
        ``image_size // 4`` (a 4x4 grid of patches: 2 for 8x8, 7 for 28x28).
    in_channels : int, default 1
        Input channels.
    num_classes : int, default 10
        Number of outputs.
    dim : int, default 64
        Token width.
    depth : int, default 4
        Number of transformer blocks.
    heads : int, default 4
        Attention heads per block (must divide ``dim``).
    mlp_dim : int, default 128
        Hidden width of each block's MLP.

    Attributes
    ----------
    patch_embed : nn.Conv2d
    flatten : nn.Flatten
        ``[B, dim, h, w] -> [B, dim, h*w]`` (then transposed to tokens).
    cls_token : nn.Parameter
        ``[1, 1, dim]``.
    pos_embed : nn.Parameter
        ``[1, num_patches + 1, dim]``.
    blocks : nn.Sequential
        The :class:`Block` s.
    norm : nn.LayerNorm
    head : nn.Linear
        Output layer applied to the class token.

    Notes
    -----
    Input ``float32 [B, in_channels, H, W]``; output logits ``float32 [B, num_classes]``.
    """

    arch = "vit"

    def __init__(
        self,
        image_size: int | Sequence[int] = 28,
        patch_size: int | None = None,
        in_channels: int = 1,
        num_classes: int = 10,
        dim: int = 64,
        depth: int = 4,
        heads: int = 4,
        mlp_dim: int = 128,
    ):
        super().__init__()
        H, W = image_hw(image_size)
        if patch_size is None:
            if H % 4 or W % 4:
                raise XpruneError(
                    f"cannot pick a default patch_size for image_size={image_size}; pass patch_size= "
                    "(a divisor of height and width)"
                )
            patch_size = min(H, W) // 4
        if H % patch_size or W % patch_size:
            raise XpruneError(f"patch_size={patch_size} must divide the image size {H}x{W}")
        self._remember(
            image_size=image_size,
            patch_size=patch_size,
            in_channels=in_channels,
            num_classes=num_classes,
            dim=dim,
            depth=depth,
            heads=heads,
            mlp_dim=mlp_dim,
        )
        self.num_patches = (H // patch_size) * (W // patch_size)
        self.patch_embed = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size)
        self.flatten = nn.Flatten(2)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_patches + 1, dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.cat = Concat(dim=1)
        self.pos_add = Add()
        self.blocks = nn.Sequential(*[Block(dim, heads, mlp_dim) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.flatten(self.patch_embed(x)).transpose(1, 2)  # [B, P, dim]
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        x = self.pos_add(self.cat(cls, tokens), self.pos_embed)
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])
