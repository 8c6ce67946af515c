"""Resumable trainer for the zoo's models: single process, or DDP under ``torchrun``.

Every checkpoint holds everything needed to continue exactly: model, optimizer, EMA, AMP scaler,
epoch and batch position, the stochastic-depth coin generator and the global RNG state. Batch order
and augmentation are pure functions of (seed, epoch, batch), so they need no state of their own.
"""
from __future__ import annotations

import json
import math
import platform
import shutil
import signal
import sys
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data import create_loader, load_splits
from ..layers import SDSampler, sd_modules, sd_settings
from .checkpoint import (atomic_save, atomic_write_json as _write_json, load_checkpoint, remove_orphaned_temp_files,
                         save_safetensors)
from .distributed import agree, barrier, dist_env, init_distributed, restore_rng_state, rng_states, wrap_ddp
from .records import append_metrics, hardware_summary, plot_curves

__all__ = ['TrainConfig', 'Trainer', 'evaluate', 'recipe', 'lr_at', 'create_train_model', 'autocast_for',
           'TrainingInterrupted']

CHECKPOINT_NAME = 'last.pt'


@dataclass
class TrainConfig:
    """Everything that defines a run; saved as ``RUN_DIR/config.json`` and inside checkpoints."""
    model: str
    data: str = 'cifar10'
    out: str = 'runs/run'
    epochs: int = 500
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 1e-4
    sched: str = 'step'                  # step | cosine
    milestones: Tuple[float, ...] = (0.5, 0.75)
    gamma: float = 0.1
    warmup_epochs: float = 0.0
    min_lr: float = 0.0
    label_smoothing: float = 0.0
    mixup: float = 0.0                   # timm Mixup: mixup alpha (0: off)
    cutmix: float = 0.0                  # timm Mixup: cutmix alpha (0: off)
    ema: bool = False
    ema_decay: float = 0.9998
    drop_path_rate: Optional[float] = None
    sd_mode: Optional[str] = None
    sd_scaling: Optional[str] = None
    pretrained: bool = False
    pretrained_file: Optional[str] = None
    num_classes: Optional[int] = None
    in_chans: Optional[int] = None
    val_size: Optional[int] = None       # None: data set default (CIFAR-10: 5,000)
    train_subset: Optional[int] = None   # use only N training images (smoke tests, quick runs)
    val_subset: Optional[int] = None
    cifar_aug: bool = True               # 4-px pad + random crop + flip on small images
    amp: str = 'auto'                    # auto | bf16 | fp16 | none
    channels_last: Optional[bool] = None  # None: on for CPU/CUDA convnets
    seed: int = 0
    workers: int = 2
    threads: Optional[int] = None
    checkpoint_minutes: float = 10.0
    log_seconds: float = 300.0           # headless runs: a progress line this often (0: every step)
    device: str = 'auto'
    deterministic: bool = False
    eval_test: bool = True
    optimizer: str = 'sgd'               # sgd | adamw
    reset_head: bool = False             # fine-tuning on new classes: a fresh classifier (timm's reset_classifier)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> 'TrainConfig':
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f'unknown training config keys: {sorted(unknown)}')
        d = dict(d)
        if 'milestones' in d and d['milestones'] is not None:
            d['milestones'] = tuple(d['milestones'])
        return cls(**d)

    def validate(self) -> None:
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ValueError(msg)
        need(self.epochs >= 1, f'--epochs must be >= 1, got {self.epochs}')
        need(self.batch_size >= 1, f'--batch-size must be >= 1, got {self.batch_size}')
        need(self.lr > 0, f'--lr must be > 0, got {self.lr}')
        need(self.sched in ('step', 'cosine'), f"--sched must be 'step' or 'cosine', got {self.sched!r}")
        need(self.amp in ('auto', 'bf16', 'fp16', 'none'), f'--amp must be auto|bf16|fp16|none, got {self.amp!r}')
        need(self.optimizer in ('sgd', 'adamw'), f'--opt must be sgd|adamw, got {self.optimizer!r}')
        need(0 <= self.label_smoothing < 1, f'--smoothing must lie in [0, 1), got {self.label_smoothing}')
        need(all(0 < m < 1 for m in self.milestones), f'milestones are fractions in (0, 1), got {self.milestones}')
        need(self.warmup_epochs >= 0, f'--warmup-epochs must be >= 0, got {self.warmup_epochs}')
        need(self.checkpoint_minutes > 0, '--checkpoint-minutes must be > 0')
        need(self.log_seconds >= 0, f'--log-seconds must be >= 0, got {self.log_seconds}')
        need(0 < self.ema_decay < 1, f'--ema-decay must lie in (0, 1), got {self.ema_decay}')
        need(self.mixup >= 0 and self.cutmix >= 0, f'--mixup/--cutmix alphas must be >= 0, got '
             f'{self.mixup}/{self.cutmix}')
        need(not (self.mixup or self.cutmix) or self.batch_size % 2 == 0,
             f'--mixup/--cutmix mix a batch with its mirror: --batch-size must be even, got {self.batch_size}')


def recipe(model_name: str, finetune: bool = False) -> Dict[str, Any]:
    """Default hyper-parameters: the paper's CIFAR recipe, or a short fine-tuning recipe."""
    if finetune:
        return dict(epochs=10, lr=0.01, sched='cosine', warmup_epochs=0.5, weight_decay=1e-4)
    if 'vit' in model_name:
        return dict(epochs=200, lr=5e-4, optimizer='adamw', weight_decay=0.05, sched='cosine',
                    warmup_epochs=5, label_smoothing=0.1, drop_path_rate=0.1)
    return dict(epochs=500, lr=0.1, sched='step', milestones=(0.5, 0.75), weight_decay=1e-4)


def lr_at(step: int, steps_per_epoch: int, cfg: TrainConfig) -> float:
    """Learning rate of global step ``step`` (stateless, so resume needs no scheduler state)."""
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    if cfg.sched == 'step':
        epoch = step // steps_per_epoch + 1  # 1-based like the paper's main.lua
        return cfg.lr * cfg.gamma ** sum(epoch >= m * cfg.epochs for m in cfg.milestones)
    total = cfg.epochs * steps_per_epoch
    t = (step - warmup) / max(1, total - warmup)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * min(1.0, t)))


def autocast_for(device: torch.device, amp: str):
    """The autocast context for a device ('auto': bf16 on CPUs with native bf16, fp16/bf16 on CUDA)."""
    import contextlib
    if amp == 'none':
        return contextlib.nullcontext(), None
    if device.type == 'cpu':
        if amp == 'fp16':
            raise ValueError('fp16 autocast is for CUDA; use --amp bf16 or none on CPU')
        if amp == 'auto' and not _cpu_has_bf16():
            return contextlib.nullcontext(), None
        return torch.autocast('cpu', dtype=torch.bfloat16), torch.bfloat16
    if device.type == 'cuda':
        dtype = torch.float16 if amp == 'fp16' or (amp == 'auto' and not torch.cuda.is_bf16_supported()) \
            else torch.bfloat16
        return torch.autocast('cuda', dtype=dtype), dtype
    return contextlib.nullcontext(), None


def _cpu_has_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:
        return False


def create_train_model(cfg: TrainConfig) -> nn.Module:
    import timm
    import sdzoo  # noqa: F401  (registers the models)
    if not timm.is_model(cfg.model):
        raise ValueError(f'unknown model {cfg.model!r}; `sdzoo list` shows the registered sd_* models')
    kwargs: Dict[str, Any] = {}
    for k in ('drop_path_rate', 'sd_mode', 'sd_scaling', 'num_classes', 'in_chans'):
        v = getattr(cfg, k)
        if v is not None:
            kwargs[k] = v
    kwargs['sd_seed'] = cfg.seed
    if cfg.pretrained_file:
        if not Path(cfg.pretrained_file).is_file():
            raise FileNotFoundError(f'--pretrained-file {cfg.pretrained_file} does not exist')
        kwargs['pretrained_cfg_overlay'] = dict(file=str(cfg.pretrained_file))
    model = timm.create_model(cfg.model, pretrained=cfg.pretrained or bool(cfg.pretrained_file), **kwargs)
    if cfg.reset_head:
        model.reset_classifier(model.num_classes)
    return model


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device, amp: str = 'none',
             max_batches: Optional[int] = None, progress: bool = False, desc: str = 'eval') -> Dict[str, float]:
    """Top-1, top-5 (in %), mean cross-entropy and images/s of the full-depth eval network."""
    from tqdm import tqdm
    was_training = model.training
    model.eval()
    ctx_amp, _ = autocast_for(device, amp)
    loss_sum, top1, top5, n = 0.0, 0, 0, 0
    t0 = time.perf_counter()
    total = len(loader) if max_batches is None else min(len(loader), max_batches)
    it = loader.iter_epoch(0)
    bar = tqdm(total=total, desc=desc, unit='batch', disable=not progress, leave=False, dynamic_ncols=True)
    for i, (x, y) in enumerate(it):
        if max_batches is not None and i >= max_batches:
            break
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with ctx_amp:
            logits = model(x)
        logits = logits.float()
        loss_sum += F.cross_entropy(logits, y, reduction='sum').item()
        k = min(5, logits.shape[1])
        pred = logits.topk(k, dim=1).indices
        top1 += (pred[:, 0] == y).sum().item()
        top5 += (pred == y[:, None]).any(dim=1).sum().item()
        n += y.numel()
        bar.update(1)
    bar.close()
    seconds = time.perf_counter() - t0
    model.train(was_training)
    if n == 0:
        raise ValueError('evaluation set is empty')
    return dict(top1=100.0 * top1 / n, top5=100.0 * top5 / n, loss=loss_sum / n, images=n,
                seconds=seconds, images_per_sec=n / seconds if seconds > 0 else float('nan'))


class TrainingInterrupted(Exception):
    """SIGTERM/SIGINT arrived (at this or, under DDP, another rank): rank 0 wrote a checkpoint at the
    current position, which every rank reached. ``written`` is False on the other ranks."""

    def __init__(self, signum: int, checkpoint: Path, written: bool = True):
        super().__init__(f'interrupted by signal {signum}; checkpoint '
                         f'{"written to" if written else "written by rank 0 to"} {checkpoint}')
        self.signum, self.checkpoint, self.written = signum, checkpoint, written


class Trainer:
    """Trains ``cfg.model`` on ``cfg.data`` into ``cfg.out`` (resumable, DDP-aware)."""

    def __init__(self, cfg: TrainConfig, resume: Optional[str] = None, progress: Optional[bool] = None,
                 max_steps: Optional[int] = None):
        cfg.validate()
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.resume_path = resume
        self.max_steps = max_steps  # stop (with a checkpoint) after this many steps in this process
        self.rank, self.world, self.local_rank = dist_env()
        self.is_main = self.rank == 0
        self.progress = (sys.stderr.isatty() if progress is None else progress) and self.is_main
        self._stop_signal: Optional[int] = None

    # ----- setup -----
    def _setup(self) -> None:
        cfg = self.cfg
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        if cfg.device == 'auto':
            dev = f'cuda:{self.local_rank}' if torch.cuda.is_available() else 'cpu'
        else:
            dev = cfg.device
        self.device = torch.device(dev)
        if self.device.type == 'cuda':
            torch.cuda.set_device(self.device)
        init_distributed(self.device, self.world)
        torch.manual_seed(cfg.seed + self.rank)

        self.model = create_train_model(cfg)
        self.model_name = cfg.model
        # record what the network was built with, not just what was asked: a fine-tune inherits its weights'
        # drop_path_rate (a ViT's 0.1), a recipe without one the model default; with the paper's scaling the
        # eval network depends on it, and publishing rebuilds the model from config.json
        cfg = self.cfg = replace(cfg, **{k: v for k, v in sd_settings(self.model).items()
                                         if getattr(cfg, k) is None and v is not None})
        from timm.data import resolve_data_config
        self.data_cfg = resolve_data_config(model=self.model)
        in_chans = cfg.in_chans or self.data_cfg['input_size'][0]
        input_size = (in_chans,) + tuple(self.data_cfg['input_size'][1:])
        self.data = load_splits(cfg.data, input_size, cfg.val_size)
        if self.model.num_classes != self.data.num_classes:
            raise ValueError(
                f'{cfg.model} has {self.model.num_classes} classes but data set {cfg.data!r} has '
                f'{self.data.num_classes} ({", ".join(self.data.classes[:5])}…); pass --num-classes '
                f'{self.data.num_classes}')
        train_split = self.data.train
        if cfg.train_subset:
            g = torch.Generator().manual_seed(1234)
            train_split = train_split.subset(torch.randperm(len(train_split), generator=g)[:cfg.train_subset])
        val_split = self.data.val
        if val_split is not None and cfg.val_subset:
            g = torch.Generator().manual_seed(4321)
            val_split = val_split.subset(torch.randperm(len(val_split), generator=g)[:cfg.val_subset])
        # channels_last helps convnets on CUDA and on CPU: a ResNet-110 fp32 step measured 1.28x faster
        # on these AVX2-only CPUs (it is bf16 autocast without native bf16 that is slow, see autocast_for)
        is_conv = 'vit' not in cfg.model
        self.channels_last = (is_conv and self.device.type in ('cuda', 'cpu')) \
            if cfg.channels_last is None else cfg.channels_last
        if self.world > 1 and cfg.batch_size % self.world:
            raise ValueError(f'--batch-size {cfg.batch_size} must divide by the {self.world} processes')
        per_rank = cfg.batch_size // self.world
        if (cfg.mixup or cfg.cutmix) and per_rank % 2:
            raise ValueError(f'--mixup/--cutmix mix a batch with its mirror: the per-process batch '
                             f'{cfg.batch_size}/{self.world} = {per_rank} must be even')
        mk = dict(data_cfg=dict(self.data_cfg, input_size=input_size), cifar_aug=cfg.cifar_aug,
                  workers=cfg.workers, channels_last=self.channels_last, in_chans=in_chans)
        self.train_loader = create_loader(train_split, per_rank, train=True, seed=cfg.seed,
                                          rank=self.rank, world=self.world, **mk)
        if len(self.train_loader) == 0:
            raise ValueError(f'training set has {len(train_split)} images, fewer than one batch of {per_rank}')
        self.val_loader = create_loader(val_split, 256, train=False, **mk) if val_split is not None else None
        self.test_loader = create_loader(self.data.test, 256, train=False, **mk) \
            if self.data.test is not None else None

        self.model.to(self.device)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        params = [p for p in self.model.parameters() if p.requires_grad]
        if cfg.optimizer == 'sgd':
            self.optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                                             weight_decay=cfg.weight_decay)
        else:
            self.optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.ema = None
        if cfg.ema:
            from timm.utils import ModelEmaV3
            self.ema = ModelEmaV3(self.model, decay=cfg.ema_decay)
        self.autocast, self.amp_dtype = autocast_for(self.device, cfg.amp)
        self.scaler = torch.amp.GradScaler('cuda') if self.amp_dtype == torch.float16 else None
        self.criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
        self.mixup = None
        if cfg.mixup or cfg.cutmix:
            from timm.data import Mixup
            from timm.loss import SoftTargetCrossEntropy
            # Mixup folds the label smoothing into its soft targets
            self.mixup = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, label_smoothing=cfg.label_smoothing,
                               num_classes=self.model.num_classes)
            self.criterion = SoftTargetCrossEntropy()
        # gradients exist (as zeros) from the start: a block skipped on the first step after a resume
        # must get the same weight decay and momentum update as in an uninterrupted run
        for prm in params:
            prm.grad = torch.zeros_like(prm)
        self.sd_units = sd_modules(self.model)
        self.net = self.model
        if self.world > 1:
            self.net = wrap_ddp(self.model, self.device)

        self.epoch, self.batch, self.global_step, self.wall_clock = 0, 0, 0, 0.0
        self.partial = dict(loss=0.0, correct=0, seen=0, seconds=0.0, kept=0, units=0)
        self.history: List[Dict[str, float]] = []
        self.sessions: List[Dict[str, Any]] = []  # one entry per start/resume: where, on what, how

    # ----- checkpoints -----
    def _state(self, torch_rngs: List[torch.Tensor]) -> Dict[str, Any]:
        return dict(
            version=1, model=self.model.state_dict(), optimizer=self.optimizer.state_dict(),
            ema=self.ema.module.state_dict() if self.ema is not None else None,
            scaler=self.scaler.state_dict() if self.scaler is not None else None,
            epoch=self.epoch, batch=self.batch, global_step=self.global_step, wall_clock=self.wall_clock,
            partial=dict(self.partial), sd_sampler=self.model.sd_sampler.state_dict(),
            torch_rng=torch_rngs[0], torch_rng_ranks=torch_rngs if self.world > 1 else None,
            config=_jsonable(asdict(self.cfg)), sessions=list(self.sessions),
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

    # ----- signals -----
    def _on_signal(self, signum, frame) -> None:
        if self._stop_signal is not None:  # second Ctrl-C: give up at once
            raise KeyboardInterrupt
        self._stop_signal = signum
        where = '' if self.world == 1 else f' (rank {self.rank})'
        print(f'\nsignal {signum}{where}: finishing this step, then {"rank 0 writes" if self.world > 1 else "writing"} '
              'a checkpoint…', file=sys.stderr, flush=True)

    def _install_signals(self):
        old = {}
        if threading_main():
            for s in (signal.SIGTERM, signal.SIGINT):
                old[s] = signal.signal(s, self._on_signal)
        return old

    # ----- training -----
    def fit(self) -> Dict[str, Any]:
        self._setup()
        cfg = self.cfg
        resume = self.resume_path
        src_dir: Optional[Path] = None
        if resume:
            path = Path(resume)
            if path.is_dir():
                path = path / CHECKPOINT_NAME
            self._load(path)
            src_dir = path.parent
        self.sessions.append(dict(
            epoch=self.epoch + 1, batch=self.batch, hardware=hardware_string(self.device),
            amp=str(self.amp_dtype).replace('torch.', '') if self.amp_dtype is not None else 'fp32',
            channels_last=self.channels_last, world=self.world,
            started=time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())))
        if self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            remove_orphaned_temp_files(self.out / CHECKPOINT_NAME)
            if src_dir is not None and src_dir.resolve() != self.out.resolve() \
                    and (src_dir / 'metrics.csv').is_file() and not (self.out / 'metrics.csv').exists():
                # a branch (e.g. a longer schedule forked from a shared prefix): its history comes along
                shutil.copyfile(src_dir / 'metrics.csv', self.out / 'metrics.csv')
            _write_json(self.out / 'sessions.json', _jsonable(self.sessions))
            _write_json(self.out / 'config.json', _jsonable(asdict(cfg)))
            _write_json(self.out / 'data.json', dict(
                name=self.data.name, source=self.data.source, classes=self.data.classes,
                train=len(self.train_loader.split) if hasattr(self.train_loader, 'split') else None,
                val=len(self.data.val) if self.data.val is not None else 0,
                test=len(self.data.test) if self.data.test is not None else 0, notes=self.data.notes))
            self._print_header()
        old = self._install_signals()
        try:
            while self.epoch < cfg.epochs:
                self._train_epoch()
                if self._stopping or self._agree_to_stop() or self._hit_max_steps():
                    break
            if self._stopping:
                ckpt = self.save_checkpoint()
                raise TrainingInterrupted(self._stopping, ckpt, written=self.is_main)
            if self.epoch < cfg.epochs:  # max_steps reached
                return dict(status='paused', epoch=self.epoch, batch=self.batch, checkpoint=str(self.save_checkpoint()))
            return self._finish()
        finally:
            for s, h in old.items():
                signal.signal(s, h)

    _stopping = 0  # signal number every rank agreed to stop on (0: keep going)
    _checkpoint_due = False

    def _agree_to_stop(self, checkpoint_due: bool = False) -> int:
        """Decide, on every rank alike (one all-reduce under DDP), whether to stop here and whether a periodic
        checkpoint is due: a signal to one rank stops all of them at the same step, and a checkpoint is
        written when any rank's clock says so. Decisions use only the agreed values, never the live flag."""
        signum, due = agree([float(self._stop_signal or 0), float(checkpoint_due)], self.world, self.device)
        self._stopping, self._checkpoint_due = int(signum), bool(due)
        return self._stopping

    def _hit_max_steps(self) -> bool:
        return self.max_steps is not None and self._steps_this_process >= self.max_steps

    _steps_this_process = 0

    def _train_epoch(self) -> None:
        from tqdm import tqdm
        cfg = self.cfg
        loader = self.train_loader
        steps = len(loader)
        self.net.train()
        bar = tqdm(total=steps, initial=self.batch, desc=f'epoch {self.epoch + 1}/{cfg.epochs}', unit='batch',
                   disable=not self.progress, dynamic_ncols=True, leave=True)
        last_ckpt = last_log = time.monotonic()
        start_batch = self.batch
        t_epoch = time.perf_counter()
        for x, y in loader.iter_epoch(self.epoch, self.batch):
            t0 = time.perf_counter()
            lr = lr_at(self.global_step, steps, cfg)
            for group in self.optimizer.param_groups:
                group['lr'] = lr
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            if self.mixup is not None:
                x, target = self._mix(x, y)
            else:
                target = y
            with self.autocast:
                logits = self.net(x)
                loss = self.criterion(logits.float(), target)
            if not torch.isfinite(loss):
                raise RuntimeError(f'loss is {loss.item()} at epoch {self.epoch + 1} batch {self.batch}; '
                                   'lower --lr or check the data')
            # keep gradients of skipped blocks at zero (not None) so weight decay and momentum still
            # apply to them, as in the paper's Torch7 optim.sgd
            self.optimizer.zero_grad(set_to_none=False)
            if self.scaler is not None:
                self.scaler.scale(loss).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                loss.backward()
                self.optimizer.step()
            if self.ema is not None:
                self.ema.update(self.model, step=self.global_step)
            dt = time.perf_counter() - t0
            n = y.numel()
            p = self.partial
            p['loss'] += loss.item() * n
            p['correct'] += (logits.argmax(1) == y).sum().item()
            p['seen'] += n
            p['seconds'] += dt
            kept = [u.last_kept for u in self.sd_units if u.mode == 'batch' and u.survival_prob < 1]
            p['kept'] += sum(bool(k) for k in kept)
            p['units'] += len(kept)
            self.batch += 1
            self.global_step += 1
            self._steps_this_process += 1
            self.wall_clock += dt
            if self.progress:
                bar.update(1)
                bar.set_postfix(loss=f"{p['loss'] / p['seen']:.3f}", acc=f"{100 * p['correct'] / p['seen']:.1f}",
                                ips=f"{p['seen'] * self.world / max(p['seconds'], 1e-9):.0f}", lr=f'{lr:.3g}')
            if not self.progress and self.is_main and time.monotonic() - last_log >= cfg.log_seconds:
                # headless runs (nohup, torchrun): a progress line every few minutes instead of a bar
                last_log = time.monotonic()
                eta = (steps - self.batch) * p['seconds'] / max(1, self.batch - start_batch) / 60
                print(f"epoch {self.epoch + 1} batch {self.batch}/{steps}: loss {p['loss'] / p['seen']:.4f} "
                      f"acc {100 * p['correct'] / p['seen']:.2f}% {p['seen'] * self.world / max(p['seconds'], 1e-9):.0f} "
                      f"img/s, epoch ETA {eta:.1f} min", flush=True)
            if self._agree_to_stop(time.monotonic() - last_ckpt > cfg.checkpoint_minutes * 60) \
                    or self._hit_max_steps():
                bar.close()
                return
            if self._checkpoint_due:
                self.save_checkpoint()
                last_ckpt = time.monotonic()
        bar.close()
        self._end_epoch(steps, time.perf_counter() - t_epoch)

    def _mix(self, x: torch.Tensor, y: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """timm Mixup/CutMix -> (mixed images, soft targets); its numpy draws are a function of
        (seed, rank, epoch, batch) so a resumed run mixes exactly as an uninterrupted one."""
        import numpy as np
        saved = np.random.get_state()
        np.random.seed([self.cfg.seed, self.rank, self.epoch, self.batch])
        try:
            return self.mixup(x, y)
        finally:
            np.random.set_state(saved)

    def _end_epoch(self, steps: int, epoch_seconds: float) -> None:
        cfg = self.cfg
        p = self.partial
        row = dict(epoch=self.epoch + 1, lr=lr_at(self.global_step - 1, steps, cfg),
                   train_loss=p['loss'] / max(p['seen'], 1), train_top1=100 * p['correct'] / max(p['seen'], 1),
                   epoch_seconds=p['seconds'], images_per_sec=p['seen'] * self.world / max(p['seconds'], 1e-9),
                   wall_clock_hours=self.wall_clock / 3600,
                   blocks_run_fraction=p['kept'] / p['units'] if p['units'] else float('nan'))
        if self.is_main and self.val_loader is not None:
            ev = evaluate(self.model, self.val_loader, self.device, amp=cfg.amp)
            row.update(val_loss=ev['loss'], val_top1=ev['top1'], val_top5=ev['top5'])
        self.epoch += 1
        self.batch = 0
        self.partial = dict(loss=0.0, correct=0, seen=0, seconds=0.0, kept=0, units=0)
        if self.is_main:
            append_metrics(self.out / 'metrics.csv', row)
            try:
                plot_curves(self.out / 'metrics.csv', self.out / 'curves.png', title=f'{cfg.model} on {cfg.data}')
            except Exception as e:  # a plotting problem must not stop a long run
                print(f'warning: could not plot curves: {e}', file=sys.stderr)
            print(_format_row(row), file=sys.stderr if self.progress else sys.stdout, flush=True)
        self.save_checkpoint()

    def _finish(self) -> Dict[str, Any]:
        cfg = self.cfg
        summary: Dict[str, Any] = dict(status='finished', model=cfg.model, data=cfg.data, epochs=cfg.epochs,
                                       steps=self.global_step, train_hours=self.wall_clock / 3600,
                                       hardware=hardware_summary(self.sessions, cfg.epochs),
                                       sessions=self.sessions, run_dir=str(self.out))
        if self.is_main:
            meta = {'architecture': cfg.model, 'num_classes': str(self.model.num_classes),
                    'classes': json.dumps(self.data.classes)}
            save_safetensors(self.model.state_dict(), self.out / 'model.safetensors', meta)
            if self.ema is not None:
                save_safetensors(self.ema.module.state_dict(), self.out / 'model_ema.safetensors', meta)
            if cfg.eval_test and self.test_loader is not None:
                ev = evaluate(self.model, self.test_loader, self.device, amp='none')
                summary['test'] = ev
                if self.ema is not None:
                    summary['test_ema'] = evaluate(self.ema.module, self.test_loader, self.device, amp='none')
            _write_json(self.out / 'summary.json', _jsonable(summary))
            if 'test' in summary:
                t = summary['test']
                print(f"test: top-1 {t['top1']:.2f}%  top-5 {t['top5']:.2f}%  loss {t['loss']:.4f}  "
                      f"({t['images']} images)", flush=True)
        return summary

    def _print_header(self) -> None:
        cfg = self.cfg
        units = self.sd_units
        probs = [u.survival_prob for u in units]
        sd = (f'{len(units)} SD units (p_L={min(probs):.3f}, mode={units[0].mode}, scaling={units[0].scaling})'
              if units else 'no SD units')
        where = (f'resuming at epoch {self.epoch + 1} batch {self.batch}' if self.global_step
                 else f'starting, output {self.out}')
        n_val = len(self.val_loader.split) if self.val_loader is not None else 0
        n_test = len(self.data.test) if self.data.test is not None else 0
        print(f'{cfg.model}: {sum(p.numel() for p in self.model.parameters()):,} params, {sd}; '
              f'data {self.data.name}: {len(self.train_loader) * cfg.batch_size} train images/epoch, '
              f'{n_val} val, {n_test} test; device {self.device}, amp={self.amp_dtype}, '
              f'channels_last={self.channels_last}, world={self.world}; {where}', file=sys.stderr, flush=True)


def threading_main() -> bool:
    import threading
    return threading.current_thread() is threading.main_thread()


def hardware_string(device: torch.device) -> str:
    if device.type == 'cuda':
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    cpu = line.split(':', 1)[1].strip()
                    break
    except OSError:
        pass
    # the model name alone hides what sets the pace: one "AMD EPYC" has AVX-512 and native bf16, another
    # only AVX2 (sd_resnet110 epochs: ~3 min in bf16 on an AVX-512 Xeon, 8.5-12 min in fp32 on AVX2 EPYCs,
    # runs/sd_resnet110-cifar10/metrics.csv), so say which kernels ran
    isa = torch.backends.cpu.get_cpu_capability()
    n = torch.get_num_threads()
    return f'{cpu} ({isa}{", native bf16" if _cpu_has_bf16() else ""}), {n} thread{"s" if n != 1 else ""}'


def check_schedule_change(old: TrainConfig, new: TrainConfig, done_steps: int, steps_per_epoch: int) -> None:
    """A resumed run may change its length (``--epochs``) only while the learning rates of every step it
    already took stay the same: then the new run is exactly one that had that length from the start."""
    if old.epochs == new.epochs:
        return
    if new.epochs * steps_per_epoch < done_steps:
        raise ValueError(f'--epochs {new.epochs}: the run already took {done_steps} steps '
                         f'({done_steps / steps_per_epoch:.1f} epochs)')
    for step in range(done_steps):
        a, b = lr_at(step, steps_per_epoch, old), lr_at(step, steps_per_epoch, new)
        if not math.isclose(a, b, rel_tol=1e-12, abs_tol=0.0):
            raise ValueError(
                f'--epochs {new.epochs} (was {old.epochs}) changes the learning rate of a step already taken '
                f'(step {step}, epoch {step // steps_per_epoch + 1}: {a:.4g} -> {b:.4g}); a run can change its '
                f'length only before its schedule diverges')


def _format_row(r: Dict[str, float]) -> str:
    s = (f"epoch {int(r['epoch'])}: lr {r['lr']:.3g}  train loss {r['train_loss']:.4f} top-1 {r['train_top1']:.2f}%")
    if 'val_top1' in r:
        s += f"  val loss {r['val_loss']:.4f} top-1 {r['val_top1']:.2f}% top-5 {r['val_top5']:.2f}%"
    s += f"  {r['epoch_seconds']:.0f}s ({r['images_per_sec']:.0f} img/s)"
    if r.get('blocks_run_fraction') == r.get('blocks_run_fraction'):
        s += f"  blocks run {100 * r['blocks_run_fraction']:.1f}%"
    return s


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj
