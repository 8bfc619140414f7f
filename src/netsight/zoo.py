"""Small reference models used by the demo, the docs and the tests.

:class:`Vgg16Net` is the tutorials' VGG-16 with batch normalisation for 1x32x32
inputs (10 classes), kept exactly as the tutorial writes it, including its
quirk: the five blocks are attributes of the model *and* children of
``self.conv``, so every block is registered under two names. torchsummary
counts those parameters twice (29,840,522); the model really has 15,118,538.

:class:`CanvasNet` is a small classifier for
:func:`netsight.datasets.digit_canvases`, built so class activation maps can be
judged: its last convolutional map is 16 x 16 on a 64 x 64 canvas, and global
average pooling into one linear layer lets the original CAM apply.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["CanvasNet", "LlamaDecoder", "NestedChain", "Vgg16Net", "wide_model"]


def _block(in_ch: int, out_ch: int, convs: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(convs):
        layers += [
            nn.Conv2d(in_ch if i == 0 else out_ch, out_ch, kernel_size=3, stride=1, padding=1),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=True),
        ]
    layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
    return nn.Sequential(*layers)


class Vgg16Net(nn.Module):
    """The tutorials' ``Vgg16_net``: 13 conv layers with BatchNorm, 3 linear layers.

    Args:
        in_channels: 1 for MNIST-like digits (the tutorial), 3 for colour images.
        num_classes: size of the output layer.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10) -> None:
        super().__init__()
        self.layer1 = _block(in_channels, 64, 2)
        self.layer2 = _block(64, 128, 2)
        self.layer3 = _block(128, 256, 3)
        self.layer4 = _block(256, 512, 3)
        self.layer5 = _block(512, 512, 3)
        # As in the tutorial: the same five blocks again, under a second name.
        self.conv = nn.Sequential(self.layer1, self.layer2, self.layer3, self.layer4, self.layer5)
        self.fc = nn.Sequential(
            nn.Linear(512, 512),
            nn.ReLU(inplace=True),
            nn.Dropout(0.5),
            nn.Linear(512, 256),
            nn.ReLU(inplace=True),
            nn.Dropout(0.5),
            nn.Linear(256, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        x = x.view(-1, 512)
        x = self.fc(x)
        return x


class CanvasNet(nn.Module):
    """Four 3 x 3 convolutions with batch norm and ReLU, two 2 x 2 average pools,
    global average pooling and one linear layer.

    On a 64 x 64 canvas the last map (``features.10``, the last ReLU) is 16 x 16, a
    stride of 4 px, fine enough for a map to land on a 20 px digit; its receptive
    field (26 px) covers one.

    Args:
        width: channels of the last two convolutions (the first two have a quarter
            and a half of it).
        in_channels: 1 for the digit canvases.
        num_classes: size of the output layer.
    """

    def __init__(self, width: int = 32, in_channels: int = 1, num_classes: int = 10) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

        self.features = nn.Sequential(
            *block(in_channels, width // 4),
            nn.AvgPool2d(2),
            *block(width // 4, width // 2),
            nn.AvgPool2d(2),
            *block(width // 2, width),
            *block(width, width),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.fc(self.pool(self.features(x)).flatten(1))
        return logits


class RMSNorm(nn.Module):
    """Root-mean-square layer norm (LLaMA)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return x * scale * self.weight


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


class LlamaAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.q_proj = nn.Linear(dim, dim, bias=False)
        self.k_proj = nn.Linear(dim, dim, bias=False)
        self.v_proj = nn.Linear(dim, dim, bias=False)
        self.o_proj = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = (
            p(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)
            for p in (self.q_proj, self.k_proj, self.v_proj)
        )
        # Rotary position embedding, computed on the input's device (meta works).
        inv = 1.0 / (10000 ** (torch.arange(0, self.head_dim, 2, device=x.device) / self.head_dim))
        angles = torch.outer(torch.arange(t, device=x.device, dtype=inv.dtype), inv)
        angles = torch.cat((angles, angles), dim=-1)
        cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
        q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
        out = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        result: torch.Tensor = self.o_proj(out.transpose(1, 2).reshape(b, t, d))
        return result


class LlamaMLP(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=False)
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result: torch.Tensor = self.down_proj(
            nn.functional.silu(self.gate_proj(x)) * self.up_proj(x)
        )
        return result


class LlamaBlock(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(dim)
        self.self_attn = LlamaAttention(dim, heads)
        self.post_attention_layernorm = RMSNorm(dim)
        self.mlp = LlamaMLP(dim, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x))
        result: torch.Tensor = x + self.mlp(self.post_attention_layernorm(x))
        return result


class LlamaDecoder(nn.Module):
    """A LLaMA-shaped decoder-only transformer (defaults: the 7B shape).

    Build it on the meta device to summarise it without allocating weights::

        with torch.device("meta"):
            model = LlamaDecoder()
    """

    def __init__(
        self,
        vocab: int = 32000,
        dim: int = 4096,
        layers: int = 32,
        heads: int = 32,
        hidden: int = 11008,
    ) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(vocab, dim)
        self.layers = nn.ModuleList(LlamaBlock(dim, heads, hidden) for _ in range(layers))
        self.norm = RMSNorm(dim)
        self.lm_head = nn.Linear(dim, vocab, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed_tokens(tokens)
        for layer in self.layers:
            x = layer(x)
        result: torch.Tensor = self.lm_head(self.norm(x))
        return result


class NestedChain(nn.Module):
    """``depth`` modules, each wrapping the next, around one Linear: a stress test
    for tools whose cost grows with nesting."""

    def __init__(self, depth: int, features: int = 8) -> None:
        super().__init__()
        self.inner: nn.Module = (
            NestedChain(depth - 1, features) if depth > 1 else nn.Linear(features, features)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result: torch.Tensor = self.inner(x)
        return result


def wide_model(leaves: int, features: int = 8) -> nn.Sequential:
    """A flat stack of ``leaves`` small modules (Linear and ReLU alternating)."""
    layers: list[nn.Module] = []
    for i in range(leaves):
        layers.append(nn.Linear(features, features) if i % 2 == 0 else nn.ReLU())
    return nn.Sequential(*layers)
