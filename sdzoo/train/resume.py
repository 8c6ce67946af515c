"""The trainer's checkpoints: what a resumable state holds, writing it (rank 0, atomically) and loading it."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any, Dict, List

import torch

from .checkpoint import atomic_save, load_checkpoint
from .config import TrainConfig, jsonable, check_schedule_change
from .distributed import barrier, restore_rng_state, rng_states

__all__ = ['CHECKPOINT_NAME', 'CheckpointMixin']

CHECKPOINT_NAME = 'last.pt'


class CheckpointMixin:
    """Checkpoints of a :class:`~sdzoo.train.trainer.Trainer`."""

    def _state(self, torch_rngs: List[torch.Tensor]) -> Dict[str, Any]:
        return dict(
            version=1, model=self.model.state_dict(), optimizer=self.optimizer.state_dict(),
            ema=self.ema.module.state_dict() if self.ema is not None else None,
            scaler=self.scaler.state_dict() if self.scaler is not None else None,
            epoch=self.epoch, batch=self.batch, global_step=self.global_step, wall_clock=self.wall_clock,
            partial=dict(self.partial), sd_sampler=self.model.sd_sampler.state_dict(),
            torch_rng=torch_rngs[0], torch_rng_ranks=torch_rngs if self.world > 1 else None,
            config=jsonable(asdict(self.cfg)), sessions=list(self.sessions),
            best=dict(self.best.record) if getattr(self, 'best', None) is not None and self.best.record else None,
        )

    def save_checkpoint(self) -> Path:
        """Rank 0 writes every rank's state; collective under DDP (all ranks call it at the same step)."""
        path = self.out / CHECKPOINT_NAME
        torch_rngs = rng_states(self.world)
        if self.is_main:
            atomic_save(self._state(torch_rngs), path)
        barrier(self.world)  # no rank leaves (or is stopped by torchrun) while rank 0 is still writing
        return path

    def _load(self, path: Path) -> None:
        ckpt = load_checkpoint(path)
        for key in ('model', 'optimizer', 'epoch', 'batch', 'global_step', 'sd_sampler'):
            if key not in ckpt:
                raise ValueError(f'checkpoint {path} lacks {key!r}: not an sdzoo training checkpoint')
        self.model.load_state_dict(ckpt['model'])
        self.optimizer.load_state_dict(ckpt['optimizer'])
        self._match_optimizer_layout()
        if self.ema is not None and ckpt.get('ema') is not None:
            self.ema.module.load_state_dict(ckpt['ema'])
        if self.scaler is not None and ckpt.get('scaler') is not None:
            self.scaler.load_state_dict(ckpt['scaler'])
        self.epoch, self.batch = int(ckpt['epoch']), int(ckpt['batch'])
        self.global_step, self.wall_clock = int(ckpt['global_step']), float(ckpt.get('wall_clock', 0.0))
        if isinstance(ckpt.get('config'), dict):
            check_schedule_change(TrainConfig.from_dict(ckpt['config']), self.cfg, self.global_step,
                                  len(self.train_loader))
        # checkpoints from before sessions were recorded: say so rather than guess the hardware
        self.sessions = list(ckpt.get('sessions') or [dict(epoch=1, batch=0, hardware=None, amp=None,
                                                          note='not recorded (checkpoint predates session records)')])
        self.partial = dict(ckpt.get('partial') or self.partial)
        if getattr(self, 'best', None) is not None and isinstance(ckpt.get('best'), dict):
            self.best.record = dict(ckpt['best'])
            if self.best.record.get('hits') and not self.best.incumbent_last:
                self.best.incumbent_start = True  # the start was an incumbent when the run began: it stays one
        self.model.sd_sampler.load_state_dict(ckpt['sd_sampler'])
        restore_rng_state(ckpt, self.rank, self.world, self.cfg.seed)

    def _match_optimizer_layout(self) -> None:
        # a run may resume with another memory format (channels_last is a runtime knob): give the
        # momentum buffers their parameter's strides, or every update mixes layouts
        for group in self.optimizer.param_groups:
            for p in group['params']:
                for k, v in self.optimizer.state.get(p, {}).items():
                    if torch.is_tensor(v) and v.shape == p.shape and v.stride() != p.stride():
                        self.optimizer.state[p][k] = torch.empty_like(p).copy_(v)
