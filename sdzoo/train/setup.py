"""Building a run: device, process group, model, data loaders, optimizer and loss (the trainer's set-up)."""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Dict, List, Optional

import torch
import torch.nn as nn

from ..data import create_loader, load_splits, resolution_note
from ..data.images import ImageGeometry
from ..layers import apply_stochastic_depth, sd_modules, sd_settings
from .config import TrainConfig
from .distributed import init_distributed, rank_seed, wrap_ddp
from .hardware import cpu_has_bf16

__all__ = ['autocast_for', 'create_train_model', 'SetupMixin']


def autocast_for(device: torch.device, amp: str):
    """The autocast context for a device ('auto': bf16 on CPUs with native bf16, fp16/bf16 on CUDA)."""
    import contextlib
    if amp == 'none':
        return contextlib.nullcontext(), None
    if device.type == 'cpu':
        if amp == 'fp16':
            raise ValueError('fp16 autocast is for CUDA; use --amp bf16 or none on CPU')
        if amp == 'auto' and not cpu_has_bf16():
            return contextlib.nullcontext(), None
        return torch.autocast('cpu', dtype=torch.bfloat16), torch.bfloat16
    if device.type == 'cuda':
        dtype = torch.float16 if amp == 'fp16' or (amp == 'auto' and not torch.cuda.is_bf16_supported()) \
            else torch.bfloat16
        return torch.autocast('cuda', dtype=dtype), dtype
    return contextlib.nullcontext(), None


def create_train_model(cfg: TrainConfig) -> nn.Module:
    import timm
    import sdzoo  # noqa: F401  (registers the models)
    if not timm.is_model(cfg.model):
        raise ValueError(f'unknown model {cfg.model!r}; `sdzoo list` shows the sd_* models, timm.list_models() timm\'s')
    from .timm_model import create_timm_train_model, create_with_weights
    if not cfg.model.startswith('sd_'):
        return create_timm_train_model(cfg)  # timm's own model, converted to skip dropped branches
    kwargs: Dict[str, Any] = {}
    for k in ('drop_path_rate', 'sd_mode', 'sd_scaling', 'num_classes', 'in_chans'):
        v = getattr(cfg, k)
        if v is not None:
            kwargs[k] = v
    kwargs['sd_seed'] = cfg.seed
    return create_with_weights(cfg, kwargs)


class SetupMixin:
    """The trainer's set-up, run once per process before the first (or resumed) step."""

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
        torch.manual_seed(rank_seed(cfg.seed, self.rank))  # per-rank streams that overlap no other seed's

        self.model = create_train_model(cfg)
        self.model_name = cfg.model
        # record what the network was built with, not just what was asked: a fine-tune inherits its weights'
        # drop_path_rate (a ViT's 0.1), a recipe without one the model default; with the paper's scaling the
        # eval network depends on it, and publishing rebuilds the model from config.json
        self.cfg = replace(cfg, **{k: v for k, v in sd_settings(self.model).items()
                                   if getattr(cfg, k) is None and v is not None})
        train_split, val_split = self._setup_data()
        self._setup_recipe(train_split)
        self._setup_loaders(train_split, val_split)
        self.model.to(self.device)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.recipe_lines = self._init_head()  # before the optimizer and the EMA copy see the head
        self._setup_optimizer()

    def _setup_data(self):
        cfg = self.cfg
        from timm.data import resolve_data_config
        self.data_cfg = resolve_data_config(model=self.model)
        in_chans = cfg.in_chans or self.data_cfg['input_size'][0]
        self.input_size = (in_chans,) + tuple(self.data_cfg['input_size'][1:])
        self.data = load_splits(cfg.data, self.input_size, cfg.val_size, holdout=cfg.holdout,
                                geometry=ImageGeometry.from_config(self.data_cfg),
                                split_seed=cfg.split_seed)
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
        return train_split, val_split

    def _setup_recipe(self, train_split) -> None:
        """The fine-tuning recipe's data-dependent defaults (a resumed run has them in its config already)."""
        from .finetune import resolve_head, resolve_recipe
        self.head, self.head_pairs = resolve_head(self.cfg, self.model, self.data.classes) \
            if (self.cfg.pretrained or self.cfg.pretrained_file) else ('n/a', [])
        self.head_note: Optional[str] = None
        if self.head in ('probe', 'predicted') and self.cfg.head_init in ('auto', 'predicted') and not self.resume_path \
                and (getattr(self.model, 'sd_old_head', None) is not None or self.cfg.head_init == 'predicted'):
            self._head_by_prediction(train_split)
        if None in (self.cfg.batch_size, self.cfg.lr, self.cfg.epochs, self.cfg.warmup_epochs) \
                or self.cfg.head_init == 'auto':
            self.cfg = resolve_recipe(self.cfg, len(train_split), self.head, self.world)
            self._apply_recipe_drop_path_rate()
        self.cfg.validate()

    def _head_by_prediction(self, train_split) -> None:
        """Classes the pretrained head knows under other names (kitty/ for cat) start from its rows, like classes
        matched by name: decided on what it predicts for the first training images of each class."""
        from .finetune import PREDICTED_IMAGES_PER_CLASS, predicted_pairs
        labels = train_split.labels
        idx = torch.cat([(labels == c).nonzero().squeeze(1)[:PREDICTED_IMAGES_PER_CLASS]
                         for c in range(len(self.data.classes))])
        loader = create_loader(train_split.subset(idx), 256, train=False, workers=self.cfg.workers,
                               data_cfg=dict(self.data_cfg, input_size=self.input_size), cifar_aug=False,
                               in_chans=self.input_size[0])
        self.model.to(self.device)
        pairs, why = predicted_pairs(self.model, loader, self.device)  # features without grad; the probe needs it
        if pairs:
            self.head, self.head_pairs = 'predicted', pairs
        elif self.cfg.head_init == 'predicted':
            raise ValueError(f'--head predicted: {why}; use --head probe or fresh')
        self.head_note = f"head by prediction: {why}"

    def _apply_recipe_drop_path_rate(self) -> None:
        """A rate the recipe chose from the data (the model was built with its weights' own): re-assign the survival
        schedule and move the trained p_l into the weights, so that the run starts from the trained network."""
        rate = self.cfg.drop_path_rate
        if rate is None or sd_settings(self.model).get('drop_path_rate') in (None, rate):
            return
        from ..models.branches import rebase_survival
        trained = dict(getattr(self.model, 'pretrained_model_args', None) or sd_settings(self.model))
        apply_stochastic_depth(self.model, rate, trained.get('sd_schedule') or 'linear')
        rebase_survival(self.model, trained)

    def _setup_loaders(self, train_split, val_split) -> None:
        cfg = self.cfg
        in_chans = self.input_size[0]
        # channels_last helps convnets on CUDA and on CPU: a ResNet-110 fp32 step measured 1.28x faster
        # on these AVX2-only CPUs (it is bf16 autocast without native bf16 that is slow, see autocast_for)
        is_conv = getattr(self.model, 'is_convnet', True)
        self.channels_last = (is_conv and self.device.type in ('cuda', 'cpu')) \
            if cfg.channels_last is None else cfg.channels_last
        if self.world > 1 and cfg.batch_size % self.world:
            raise ValueError(f'--batch-size {cfg.batch_size} must divide by the {self.world} processes')
        per_rank = cfg.batch_size // self.world
        if (cfg.mixup or cfg.cutmix) and per_rank % 2:
            raise ValueError(f'--mixup/--cutmix mix a batch with its mirror: the per-process batch '
                             f'{cfg.batch_size}/{self.world} = {per_rank} must be even')
        mk = dict(data_cfg=dict(self.data_cfg, input_size=self.input_size), cifar_aug=cfg.cifar_aug,
                  workers=cfg.workers, channels_last=self.channels_last, in_chans=in_chans)
        self.train_loader = create_loader(train_split, per_rank, train=True, seed=cfg.seed,
                                          rank=self.rank, world=self.world, drop_last=cfg.drop_last, **mk)
        if len(self.train_loader) == 0:
            raise ValueError(f'training set has {len(train_split)} images, fewer than one batch of {per_rank}')
        self.val_loader = create_loader(val_split, 256, train=False, **mk) if val_split is not None else None
        self.test_loader = create_loader(self.data.test, 256, train=False, **mk) \
            if self.data.test is not None else None
        self.train_split = train_split
        self._loader_kwargs = mk

    def _setup_optimizer(self) -> None:
        cfg = self.cfg
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
        weight = None
        if cfg.class_weights == 'balanced':
            from .finetune import class_weights
            weight = class_weights(self.train_split.labels, self.model.num_classes).to(self.device)
        self.criterion = nn.CrossEntropyLoss(weight=weight, label_smoothing=cfg.label_smoothing)
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
        if cfg.compile:  # the coins are drawn outside the graph: one graph per block shape, kept or skipped
            self.net = torch.compile(self.net, backend=cfg.compile)

        self.epoch, self.batch, self.global_step, self.wall_clock = 0, 0, 0, 0.0
        self.partial = dict(loss=0.0, correct=0, seen=0, seconds=0.0, kept=0, units=0)
        self.history: List[Dict[str, float]] = []
        self.sessions: List[Dict[str, Any]] = []  # one entry per start/resume: where, on what, how

    def _init_head(self) -> List[str]:
        """A fresh run's head (matched rows / linear probe) and the recipe lines to print; nothing on resume."""
        from .finetune import init_head, recipe_lines
        lines: List[str] = []
        if self.cfg.pretrained or self.cfg.pretrained_file:
            lines = recipe_lines(self.cfg, self.head, self.head_pairs, self.data.classes, len(self.train_split),
                                 len(self.train_loader), getattr(self.model, 'sd_rebased_from', None))
            if getattr(self, 'head_note', None):
                lines.append('  ' + self.head_note)
        if not self.resume_path:
            loader = create_loader(self.train_split, 256, train=False, **self._loader_kwargs)
            done = init_head(self.model, self.head, self.head_pairs, loader, self.device)
            if done:
                lines.append('  ' + done)
        elif hasattr(self.model, 'sd_old_head'):
            del self.model.sd_old_head
        n_val = len(self.val_loader.split) if self.val_loader is not None else 0
        note = resolution_note(n_val)
        if note and (self.cfg.pretrained or self.cfg.pretrained_file):
            lines.append(f'warning: {note}')
        elif not n_val and (self.cfg.pretrained or self.cfg.pretrained_file):
            lines.append('note: no validation set (--val-size 0): nothing checks the run against held-out images')
        return lines
