"""Parameter-free "option A" shortcut of the CIFAR ResNets (He et al. 2016; Huang et al. 2016)."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class AvgPoolPadShortcut(nn.Module):
    """``stride``x``stride`` average pooling, then zero channels appended up to ``out_chs``.

    As in the stochastic-depth paper's ResidualDrop.lua: no parameters, so a dropped transition
    block still passes a correctly shaped (non-negative, post-ReLU) tensor on.
    """

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1):
        super().__init__()
        if out_chs < in_chs:
            raise ValueError(f'option-A shortcut cannot shrink channels ({in_chs} -> {out_chs})')
        self.in_chs, self.out_chs, self.stride = in_chs, out_chs, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = F.avg_pool2d(x, self.stride, self.stride)
        if self.out_chs > self.in_chs:
            x = F.pad(x, (0, 0, 0, 0, 0, self.out_chs - self.in_chs))
        return x

    def extra_repr(self) -> str:
        return f'{self.in_chs}, {self.out_chs}, stride={self.stride}'
