"""Small reference models used by the demo, the docs and the tests.

:class:`Vgg16Net` is the tutorials' VGG-16 with batch normalisation for 1x32x32
inputs (10 classes), kept exactly as the tutorial writes it, including its
quirk: the five blocks are attributes of the model *and* children of
``self.conv``, so every block is registered under two names. torchsummary
counts those parameters twice (29,840,522); the model really has 15,118,538.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["Vgg16Net"]


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
