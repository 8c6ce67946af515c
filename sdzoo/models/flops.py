"""FLOPs of a model's full-depth eval network (what a deployment pays per image, whatever was dropped in training)."""
from __future__ import annotations

import torch

__all__ = ['count_flops']


def count_flops(model: torch.nn.Module, input_size) -> int:
    """Forward FLOPs (multiply-add = 2) of the full-depth eval network for one image."""
    from torch.utils.flop_counter import FlopCounterMode
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, *input_size))
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())
