"""Resumable trainer for the zoo's models: single process, or DDP under ``torchrun``.

The training loop lives here; its set-up (``setup.py``), checkpoints (``resume.py``), clean stops
(``stopping.py``), DDP plumbing (``distributed.py``) and configuration (``config.py``) have units
of their own. Every checkpoint holds everything needed to continue exactly: model, optimizer, EMA, AMP scaler,
epoch and batch position, the stochastic-depth coin generator and the global RNG state. Batch order
and augmentation are pure functions of (seed, epoch, batch), so they need no state of their own.
"""
from __future__ import annotations

import json
import shutil
import signal
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .allocator import malloc_setting
from ..files import atomic_write_json as _write_json, remove_orphaned_temp_files
from .checkpoint import save_safetensors
# the trainer's parts, one unit each; re-exported here, where they used to live
from .config import KNOWN_HEADS, TrainConfig, jsonable, check_schedule_change, lr_at, recipe  # noqa: F401
from .distributed import dist_env
from .records import append_metrics, hardware_summary, plot_curves
from .resume import CHECKPOINT_NAME, CheckpointMixin
from .selection import LAST_INCUMBENT_STEPS, BestWeights
from .hardware import hardware_string  # noqa: F401  (re-exported: tests and benchmarks read the label)
from .setup import SetupMixin, autocast_for, create_train_model  # noqa: F401
from .stopping import StopMixin, TrainingInterrupted, threading_main  # noqa: F401

__all__ = ['TrainConfig', 'Trainer', 'evaluate', 'recipe', 'lr_at', 'create_train_model', 'autocast_for',
           'TrainingInterrupted']


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device, amp: str = 'none',
             max_batches: Optional[int] = None, progress: bool = False, desc: str = 'eval',
             per_image: bool = False) -> Dict[str, Any]:
    """Top-1, top-5 (in %), mean cross-entropy and images/s of the full-depth eval network; with ``per_image``
    also each image's top-1 hit and label in loader order (``correct``, ``labels``), for paired comparisons."""
    from tqdm import tqdm
    was_training = model.training
    model.eval()
    ctx_amp, _ = autocast_for(device, amp)
    loss_sum, top1, top5, n = 0.0, 0, 0, 0
    hits, labels = [], []
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
        hit = pred[:, 0] == y
        top1 += hit.sum().item()
        if per_image:
            hits.append(hit.cpu())
            labels.append(y.cpu())
        top5 += (pred == y[:, None]).any(dim=1).sum().item()
        n += y.numel()
        bar.update(1)
    bar.close()
    seconds = time.perf_counter() - t0
    model.train(was_training)
    if n == 0:
        raise ValueError('evaluation set is empty')
    out = dict(top1=100.0 * top1 / n, top5=100.0 * top5 / n, loss=loss_sum / n, images=n,
               seconds=seconds, images_per_sec=n / seconds if seconds > 0 else float('nan'))
    if per_image:
        out.update(correct=torch.cat(hits), labels=torch.cat(labels))
    return out


class Trainer(SetupMixin, CheckpointMixin, StopMixin):
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

    # ----- training -----
    def fit(self) -> Dict[str, Any]:
        self._setup()
        cfg = self.cfg
        resume = self.resume_path
        # --select best / start-or-last: rank 0 keeps the candidate weights (it alone validates)
        self.best = self._best_weights() if cfg.select != 'last' and self.val_loader is not None and self.is_main \
            else None
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
            channels_last=self.channels_last, world=self.world, malloc=malloc_setting(),
            started=time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())))
        if self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            remove_orphaned_temp_files(self.out / CHECKPOINT_NAME)
            if src_dir is not None and src_dir.resolve() != self.out.resolve() \
                    and (src_dir / 'metrics.csv').is_file() and not (self.out / 'metrics.csv').exists():
                # a branch (e.g. a longer schedule forked from a shared prefix): its history comes along
                shutil.copyfile(src_dir / 'metrics.csv', self.out / 'metrics.csv')
            _write_json(self.out / 'sessions.json', jsonable(self.sessions))
            _write_json(self.out / 'config.json', jsonable(asdict(cfg)))
            _write_json(self.out / 'data.json', dict(
                name=self.data.name, source=self.data.source, classes=self.data.classes,
                train=len(self.train_loader.split) if hasattr(self.train_loader, 'split') else None,
                val=len(self.data.val) if self.data.val is not None else 0,
                test=len(self.data.test) if self.data.test is not None else 0, notes=self.data.notes,
                warnings=self.data.warnings, split=self.data.split_record))
            self._print_header()
            for line in self.data.warnings:
                print(f'warning: {line}', file=sys.stderr, flush=True)
            for line in self.recipe_lines:
                print(line, file=sys.stderr, flush=True)
            if self.best is not None and not resume:
                self._offer_start()
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

    def _best_weights(self) -> BestWeights:
        """--select's keeper. start-or-last: a start that already classifies these classes (KNOWN_HEADS) is the
        incumbent; so is the last epoch of another head's run of LAST_INCUMBENT_STEPS or more."""
        start_or_last = self.cfg.select == 'start-or-last'
        known = getattr(self, 'head', None) in KNOWN_HEADS
        steps = len(self.train_loader) * self.cfg.epochs
        return BestWeights(self.out / 'best.safetensors', incumbent_start=start_or_last and known,
                           incumbent_last=start_or_last and not known and steps >= LAST_INCUMBENT_STEPS)

    def _offer_start(self) -> None:
        """The start (pretrained body, matched rows or probe head) is the first candidate: a fine-tune that does not
        beat it on the validation images leaves it unchanged."""
        ev = evaluate(self.model, self.val_loader, self.device, amp=self.cfg.amp, per_image=self.best.needs_hits)
        self.best.offer(self.model, 0, ev['top1'], ev['loss'], hits=ev.get('correct'), labels=ev.get('labels'))
        print(f"epoch 0 (start): val loss {ev['loss']:.4f} top-1 {ev['top1']:.2f}%",
              file=sys.stderr if self.progress else sys.stdout, flush=True)

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
            loss_value = loss.item()  # waits for the step's queued work (backward, optimizer) on CUDA too
            dt = time.perf_counter() - t0  # so the step time is read after it, not before
            n = y.numel()
            p = self.partial
            p['loss'] += loss_value * n
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
            offer = self.best is not None and (cfg.select == 'best' or self.epoch + 1 == cfg.epochs)
            ev = evaluate(self.model, self.val_loader, self.device, amp=cfg.amp,
                          per_image=offer and self.best.needs_hits)
            row.update(val_loss=ev['loss'], val_top1=ev['top1'])
            if offer:
                # before the checkpoint records it; the last epoch's weights are the model at the end: no file
                self.best.offer(self.model, self.epoch + 1, ev['top1'], ev['loss'], final=self.epoch + 1 == cfg.epochs,
                                hits=ev.get('correct'), labels=ev.get('labels'))
            if self.model.num_classes > 5:  # top-5 of 5 or fewer classes is 100% by construction
                row['val_top5'] = ev['top5']
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
            if self.best is not None:
                summary['selected'] = self._select_best()
            meta = {'architecture': cfg.model, 'num_classes': str(self.model.num_classes),
                    'classes': json.dumps(self.data.classes)}
            save_safetensors(self.model.state_dict(), self.out / 'model.safetensors', meta)
            if self.ema is not None:
                save_safetensors(self.ema.module.state_dict(), self.out / 'model_ema.safetensors', meta)
            if cfg.eval_test and self.test_loader is not None:
                from .records import encode_per_image
                ev = evaluate(self.model, self.test_loader, self.device, amp='none', per_image=True)
                # each test image's hit, as sdzoo validate records it: sdzoo cards / compare pair runs on it
                per_image = encode_per_image(ev.pop('correct'), ev.pop('labels'))
                summary['test'] = dict(ev, per_image=per_image)
                if self.ema is not None:
                    summary['test_ema'] = evaluate(self.ema.module, self.test_loader, self.device, amp='none')
            # the run's model folder (RUN_DIR/model/, timm's Hub layout): what users load, export and serve
            from .run_model import write_run_model
            from .records import read_metrics
            folder = write_run_model(self.out, self.model, cfg=asdict(cfg), classes=self.data.classes,
                                     summary=summary, last_row=(read_metrics(self.out / 'metrics.csv') or [None])[-1])
            if folder is not None:
                summary['model_folder'] = str(folder)
            _write_json(self.out / 'summary.json', jsonable(summary))
            if 'test' in summary:
                t = summary['test']
                top5 = f"  top-5 {t['top5']:.2f}%" if self.model.num_classes > 5 else ''
                print(f"test: top-1 {t['top1']:.2f}%{top5}  loss {t['loss']:.4f}  ({t['images']} images)", flush=True)
        return summary

    def _select_best(self) -> Dict[str, Any]:
        """Load the selected weights (--select best / start-or-last) and say which epoch the run leaves behind."""
        rec = {k: v for k, v in (self.best.record or {}).items() if k != 'hits'}
        rec.update(rule=self.best.rule(self.cfg.select), select=self.cfg.select, last_epoch=self.epoch)
        duel = rec.get('challenge')
        if rec.get('epoch') is None or rec['epoch'] == self.epoch:
            if duel and duel.get('incumbent') == 'last' and duel['losses'] > duel['wins']:
                print(f"--select {self.cfg.select}: keeping the last epoch: the start won {duel['losses']} and lost "
                      f"{duel['wins']} of the validation images they disagree on, p = {duel['p']:.2f}, not beyond "
                      f"chance (p < {duel['alpha']}) after {LAST_INCUMBENT_STEPS} or more steps from a new head",
                      file=sys.stderr if self.progress else sys.stdout, flush=True)
            return rec
        try:
            self.best.restore(self.model)
        except (OSError, ValueError) as e:
            print(f'warning: --select {self.cfg.select}: cannot restore the best weights ({e}); keeping the last epoch',
                  file=sys.stderr, flush=True)
            return dict(rec, epoch=self.epoch, note=f'best weights not restorable: {e}')
        what = 'the start (no epoch beat it)' if rec['epoch'] == 0 else f"epoch {rec['epoch']}"
        if duel and duel.get('incumbent') == 'last':
            what = (f"the start: it won {duel['losses']} and lost {duel['wins']} of the validation images it and the "
                    f"last epoch disagree on, p = {duel['p']:.2g}, beyond chance (p < {duel['alpha']})")
        elif duel and rec['epoch'] == 0:
            what = (f"the start: the last epoch won {duel['wins']} and lost {duel['losses']} of the validation images "
                    f"they disagree on, p = {duel['p']:.2f}, not beyond chance (p < {duel['alpha']})")
        print(f"--select {self.cfg.select}: keeping {what}: val top-1 {rec['val_top1']:.2f}%, loss {rec['val_loss']:.4f} "
              f'(the last epoch was {self.epoch})', file=sys.stderr if self.progress else sys.stdout, flush=True)
        return rec

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
              f'data {self.data.name}: {len(self.train_loader.split)} train images/epoch in {len(self.train_loader)} '
              f'batches, '
              f'{n_val} val, {n_test} test; device {self.device}, amp={self.amp_dtype}, '
              f'channels_last={self.channels_last}, world={self.world}; {where}', file=sys.stderr, flush=True)


def _format_row(r: Dict[str, float]) -> str:
    s = (f"epoch {int(r['epoch'])}: lr {r['lr']:.3g}  train loss {r['train_loss']:.4f} top-1 {r['train_top1']:.2f}%")
    if 'val_top1' in r:
        s += f"  val loss {r['val_loss']:.4f} top-1 {r['val_top1']:.2f}%"
        if r.get('val_top5') == r.get('val_top5') and 'val_top5' in r:
            s += f" top-5 {r['val_top5']:.2f}%"
    s += f"  {r['epoch_seconds']:.0f}s ({r['images_per_sec']:.0f} img/s)"
    if r.get('blocks_run_fraction') == r.get('blocks_run_fraction'):
        s += f"  blocks run {100 * r['blocks_run_fraction']:.1f}%"
    return s
