"""Which weights a run leaves behind: the last epoch's, the start's when the run never beat it on validation
(``--select start-or-last``, the fine-tune default), or the validation-best epoch's (``--select best``).

A fine-tune of a few hundred images often gains nothing over its start (the pretrained rows of matching classes,
or the linear probe) and can lose a little: the unbalanced CIFAR-10 cut of benchmarks/finetune.py ended 1.1 points
below its zero-shot start. Measured on that benchmark's seven folders, 3 seeds (benchmarks/results/finetune.md),
keeping the start when the last epoch is worse on validation took the gains of picking the best epoch (unbal
+1.6 / +0.4 / +1.3, f3x125 at 3 epochs +1.8, c10x50 +0.7; readme -0.6, one image) without its losses: on validation sets of a few dozen images the best of 28
epochs is often a lucky one (f3hard: -1.5 / -2.2 against the last epoch).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional

import torch.nn as nn

from .checkpoint import load_state_dict_file, save_safetensors

__all__ = ['SELECTIONS', 'BestWeights']

SELECTIONS = ('last', 'start-or-last', 'best')


class BestWeights:
    """The validation-best weights seen so far, kept in ``path`` (written atomically before the checkpoint that
    records them). Better means a higher val top-1; a tie goes to the later epoch, so an earlier one is kept only
    when every later epoch is worse on at least one image. (Ties to the lower loss picked epoch 5 of 28 on the
    Fashion-MNIST cut f3x125, where val read 100% from epoch 3 on: 97.7% test instead of the last epoch's 99.0.)"""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.record: Optional[Dict[str, Any]] = None

    def offer(self, model: nn.Module, epoch: int, val_top1: float, val_loss: float, final: bool = False) -> bool:
        """Keep ``model``'s weights if this epoch beats the best so far; True when it did. ``final``: the run's last
        epoch, whose weights are the model itself at the end: only the record changes (nothing to restore)."""
        best = self.record
        if best is not None and val_top1 < best['val_top1']:
            return False
        if not final:
            save_safetensors(model.state_dict(), self.path, {'format': 'pt', 'epoch': str(epoch)})
        self.record = dict(epoch=int(epoch), val_top1=float(val_top1), val_loss=float(val_loss))
        return True

    def restore(self, model: nn.Module) -> None:
        """Load the best weights into ``model``; refuses a file that is not the recorded epoch's."""
        from safetensors import safe_open
        with safe_open(str(self.path), framework='pt') as f:
            epoch = (f.metadata() or {}).get('epoch')
        if self.record is None or epoch != str(self.record['epoch']):
            raise ValueError(f'{self.path} holds epoch {epoch}, the checkpoint recorded '
                             f"{None if self.record is None else self.record['epoch']} as the best")
        model.load_state_dict(load_state_dict_file(self.path))
