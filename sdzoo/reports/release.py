"""``sdzoo publish RUN_DIR --tag TAG``: a finished training run -> ``weights/<model>.<tag>/``.

Every number in the folder comes from evaluation, not from the trainer's own log: the run's final
weights are evaluated on the test split, the folder is written, and then the *published* folder is
loaded the way users load it (``pretrained=True``) and evaluated again with ``sdzoo validate``; its
JSON is committed as ``validate.json`` and both evaluations must agree exactly.

``--checkpoint FILE`` publishes an *interim* snapshot of a run that is still training (a copy of
its ``last.pt``): on a CPU a long run spans many sessions, and users get real weights before it
ends. The folder then says so everywhere (card, training.json, MODEL_CARDS.md), its records stop
at the snapshot, and the final weights replace it with ``--overwrite``.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any, Dict

from ..files import atomic_write_json
from .cards import DATASET_NAMES

__all__ = ['publish_run', 'add_parser']

_REPO_ROOT = Path(__file__).resolve().parents[2]
# published test errors (%) on the lossless data set, quoted next to ours so a card says how far off it is
_REFERENCES = {
    ('sd_resnet20', 'cifar10'): [(8.75, 'ResNet-20 without stochastic depth (He et al. 2016)')],
    ('sd_resnet56', 'cifar10'): [(6.97, 'ResNet-56 without stochastic depth (He et al. 2016)')],
    ('sd_resnet110', 'cifar10'): [(6.41, 'constant-depth ResNet-110 (Huang et al. 2016)'),
                                  (5.25, 'stochastic-depth ResNet-110, 500 epochs on a GPU (Huang et al. 2016)')],
    # the Compact Transformers README (SHI-Labs), trained with AutoAugment and a cosine schedule
    ('sd_vit_lite_patch4_32', 'cifar10'): [(8.62, 'ViT-Lite-7/4 (Hassani et al. 2021)')],
}


def _reference_note(model: str, data: str, top1: float) -> str:
    refs = _REFERENCES.get((model, data))
    if not refs:
        return ''
    quoted = '; '.join(f'{err:.2f}% {what}' for err, what in refs)
    return (f'Test error {100 - top1:.2f}% against the published {quoted}: those are on the lossless original, '
            f"this is on {DATASET_NAMES[data]['name']}.")


def _validate_cmd(model: str, data: str, extra: str) -> str:
    return f'sdzoo validate {model} {extra} --data {data} --split test'


def _run_checkpoint(run_dir: Path, cfg: Dict[str, Any], checkpoint: Path) -> Dict[str, Any]:
    """A training checkpoint of ``run_dir``, refused when it is not one (another model or data set)."""
    from ..train.checkpoint import load_checkpoint
    ckpt = load_checkpoint(checkpoint)
    missing = [k for k in ('model', 'epoch', 'batch', 'config', 'wall_clock') if k not in ckpt]
    if missing:
        raise ValueError(f'{checkpoint} lacks {missing}: not an sdzoo training checkpoint')
    ccfg = ckpt['config']
    for key in ('model', 'data'):
        if ccfg.get(key) != cfg.get(key):
            raise ValueError(f'{checkpoint} is not a checkpoint of {run_dir}: its {key} is {ccfg.get(key)!r}, '
                             f'the run\'s is {cfg.get(key)!r}')
    return ckpt


def _save_weights(ckpt: Dict[str, Any], checkpoint: Path, ema: bool, out: Path) -> None:
    from ..train.checkpoint import save_safetensors
    state = ckpt.get('ema') if ema else ckpt['model']
    if state is None:
        raise ValueError(f'{checkpoint} holds no EMA weights (the run trained without --ema)')
    save_safetensors(state, out)


def _final_weights(run_dir: Path, cfg: Dict[str, Any], ema: bool, work: Path) -> Path:
    """A finished run's weights file; on a fresh clone (weights files are not committed under runs/) it is
    rebuilt from the committed ``last.pt``, which a finished run leaves at its very end."""
    name = 'model_ema.safetensors' if ema else 'model.safetensors'
    if (run_dir / name).is_file():
        return run_dir / name
    last = run_dir / 'last.pt'
    if not last.is_file():
        raise FileNotFoundError(f'{run_dir / name} and {last} missing: nothing to publish in the finished run {run_dir} '
                                '(finished runs keep last.pt in git history only: runs/README.md says how to restore it)')
    ckpt = _run_checkpoint(run_dir, cfg, last)
    at, total = (int(ckpt['epoch']), int(ckpt['batch'])), int(cfg['epochs'])
    if at != (total, 0):
        raise ValueError(f'{run_dir / name} missing and {last} is not the end of the run (epoch {at[0]} batch '
                         f'{at[1]}, the run has {total} epochs): cannot tell its final weights')
    _save_weights(ckpt, last, ema, work / name)
    return work / name


def _snapshot(run_dir: Path, cfg: Dict[str, Any], checkpoint: Path, ema: bool, work: Path) -> Dict[str, Any]:
    """An unfinished run's checkpoint -> weights file, records cut at the snapshot, interim facts."""
    from ..train.records import hardware_summary, plot_curves, read_metrics, write_metrics
    if (run_dir / 'summary.json').exists():
        raise ValueError(f'{run_dir} has finished: publish its final weights (without --checkpoint)')
    weights = work / 'snapshot.safetensors'
    ckpt = _run_checkpoint(run_dir, cfg, checkpoint)
    done, batch, total = int(ckpt['epoch']), int(ckpt['batch']), int(ckpt['config']['epochs'])
    if done == 0:
        raise ValueError(f'{checkpoint} is from the first epoch: publish a snapshot after at least one epoch')
    _save_weights(ckpt, checkpoint, ema, weights)
    # the run's records may already be further along than the snapshot: keep the epochs it has seen
    rows = [r for r in read_metrics(run_dir / 'metrics.csv') if r['epoch'] <= done]
    metrics = plot = None
    if rows:
        metrics = work / 'metrics.csv'
        write_metrics(metrics, rows)
        plot = work / 'curves.png'
        plot_curves(metrics, plot, title=f"{cfg['model']} (interim: epoch {done} of {total})")
    at = f'{done} of {total} epochs' + (f" and {batch} batch{'es' if batch > 1 else ''} of epoch {done + 1}" if batch else '')
    note = (f'Interim weights: a snapshot of the unfinished run `{run_dir}` after {at}; its learning-rate '
            f'schedule has not finished. The run continues (`sdzoo train --resume {run_dir}`) and its final '
            'weights will replace this folder.')
    return dict(weights=weights, metrics=metrics, plot=plot, hours=float(ckpt['wall_clock']) / 3600,
                hardware=hardware_summary(ckpt.get('sessions') or [], done + (1 if batch else 0)),
                epochs=f'{done}/{total} (interim)', note=note,
                interim=dict(epoch=done, batch=batch, epochs=total, run=str(run_dir)))


def publish_run(run_dir: Path, tag: str, weights_root: Path, data: str | None = None, overwrite: bool = False,
                ema: bool = False, update_cards: bool = True, checkpoint: Path | None = None,
                note: str | None = None) -> Path:
    """Publish a finished run, or with ``checkpoint`` an interim snapshot of one still training.

    ``note`` (the reviewer's words: what limited the run, what to expect) goes on the card and into
    MODEL_CARDS.md, after the measured comparison with the published reference errors.
    """
    with tempfile.TemporaryDirectory(prefix='sdzoo-publish-') as work:
        return _publish_run(Path(run_dir), tag, Path(weights_root), data, overwrite, ema, update_cards,
                            Path(checkpoint) if checkpoint is not None else None, Path(work), note)


def _publish_run(run_dir: Path, tag: str, weights_root: Path, data: str | None, overwrite: bool, ema: bool,
                 update_cards: bool, checkpoint: Path | None, work: Path, note: str | None) -> Path:
    import timm
    import sdzoo  # noqa: F401
    from ..train.checkpoint import load_state_dict_file
    from ..train.cli import add_parser as add_train_parser, train_command, validate_command
    from ..hub.publish import save_weights_folder

    cfg_path, summary_path = run_dir / 'config.json', run_dir / 'summary.json'
    if not cfg_path.is_file():
        raise FileNotFoundError(f'{cfg_path} missing: {run_dir} is not an sdzoo training run')
    cfg = json.loads(cfg_path.read_text())
    if checkpoint is None:
        if not summary_path.is_file():
            raise FileNotFoundError(f'{summary_path} missing: {run_dir} is not a finished sdzoo training run '
                                    '(--checkpoint publishes an interim snapshot of one still training)')
        summary = json.loads(summary_path.read_text())
        weights_file = _final_weights(run_dir, cfg, ema, work)
        snap: Dict[str, Any] = dict(
            weights=weights_file, hours=summary.get('train_hours'), hardware=summary.get('hardware'),
            epochs=cfg['epochs'], metrics=run_dir / 'metrics.csv' if (run_dir / 'metrics.csv').exists() else None,
            plot=run_dir / 'curves.png' if (run_dir / 'curves.png').exists() else None,
            check=run_dir / 'test_validate.json')
    else:
        snap = dict(_snapshot(run_dir, cfg, checkpoint, ema, work), check=work / 'test_validate.json')
    data_info = json.loads((run_dir / 'data.json').read_text()) if (run_dir / 'data.json').exists() else {}
    data = data or cfg['data']
    model_name = cfg['model']
    kwargs: Dict[str, Any] = {k: cfg[k] for k in ('drop_path_rate', 'sd_mode', 'sd_scaling', 'num_classes', 'in_chans')
                              if cfg.get(k) is not None}
    # built under the target tag so that its pretrained cfg (input size, mean/std, labels) is the one saved
    tagged = f'{model_name}.{tag}'
    model = timm.create_model(tagged if timm.list_pretrained(tagged) else model_name, **kwargs)
    weights_file = snap['weights']
    model.load_state_dict(load_state_dict_file(weights_file))
    model.eval()

    def run_validate(extra: list, out: Path, name: str = model_name) -> Dict[str, Any]:
        parser = argparse.ArgumentParser()
        add_train_parser(parser.add_subparsers(dest='command'))
        argv = ['validate', name, '--data', data, '--split', 'test', '--out', str(out)] + extra
        if cfg.get('num_classes'):
            argv += ['--num-classes', str(cfg['num_classes'])]
        if cfg.get('in_chans'):
            argv += ['--in-chans', str(cfg['in_chans'])]
        args = parser.parse_args(argv)
        validate_command(args)
        return json.loads(out.read_text())

    # the run's survival settings: a bare weights file does not record them (the folder's config.json will)
    trained = [a for k in ('drop_path_rate', 'sd_scaling') if cfg.get(k) is not None
               for a in (f"--{k.replace('_', '-')}", str(cfg[k]))]
    pre = run_validate(['--checkpoint', str(weights_file)] + trained, snap['check'])
    labels = data_info.get('classes')
    hours = snap['hours']
    commands = [
        train_command(dict(cfg, model=model_name, out=str(run_dir))),
        _validate_cmd(f'{model_name}.{tag}', data, '--pretrained'),
    ]
    recipe = {k: cfg[k] for k in ('epochs', 'batch_size', 'optimizer', 'lr', 'momentum', 'nesterov', 'weight_decay',
                                  'sched', 'milestones', 'warmup_epochs', 'label_smoothing', 'mixup', 'cutmix',
                                  'drop_path_rate', 'sd_mode', 'sd_scaling', 'amp', 'seed', 'ema') if k in cfg}
    train_info = dict(epochs=snap['epochs'], wall_clock=(hours or 0) * 3600, hardware=snap['hardware'],
                      recipe=recipe, commands=commands, data=data_info.get('source'),
                      data_split=f"train {data_info.get('train')} / val {data_info.get('val')} / test {data_info.get('test')}")
    if 'interim' in snap:
        train_info.update(interim=snap['interim'])
    notes = [snap.get('note'), _reference_note(model_name, data_info.get('name', ''), pre['top1']), note]
    if any(notes):
        train_info['note'] = ' '.join(n.strip() for n in notes if n and n.strip())
    folder = save_weights_folder(
        model, weights_root, model_name=model_name, tag=tag, results=pre, train_info=train_info,
        metrics_csv=snap['metrics'], plot_png=snap['plot'],
        label_names=labels, overwrite=overwrite, dataset=DATASET_NAMES.get(data_info.get('name', '')))
    atomic_write_json(folder / 'training.json', train_info, default=str)
    post = run_validate(['--pretrained'], folder / 'validate.json', name=f'{model_name}.{tag}')
    if abs(post['top1'] - pre['top1']) > 1e-9 or abs(post['loss'] - pre['loss']) > 1e-6:
        raise RuntimeError(f'published weights evaluate differently ({post["top1"]} vs {pre["top1"]} top-1): '
                           f'check {folder}')
    if update_cards:
        from .cards import write_cards
        write_cards()
    print(f'published {folder}: test top-1 {post["top1"]:.2f}%, top-5 {post["top5"]:.2f}% '
          f'(validate.json written; commit the folder and sdzoo/hub/manifest.json)')
    return folder


def _cmd_publish(args: argparse.Namespace) -> int:
    publish_run(args.run_dir, args.tag, args.weights, data=args.data, overwrite=args.overwrite, ema=args.ema,
                checkpoint=args.checkpoint, note=args.note)
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser('publish', help='turn a finished training run (or, with --checkpoint, an interim snapshot of one) into a weights/<model>.<tag> folder')
    p.add_argument('run_dir', type=Path, help='a finished training run directory')
    p.add_argument('--tag', required=True, help='timm pretrained tag, e.g. sd_cifar10 (required)')
    p.add_argument('--weights', type=Path, default=_REPO_ROOT / 'weights', help='weights root (default: weights/)')
    p.add_argument('--data', default=None, help='evaluation data (default: the run\'s data set)')
    p.add_argument('--ema', action='store_true', help='publish the EMA weights')
    p.add_argument('--overwrite', action='store_true', help='replace an existing folder')
    p.add_argument('--checkpoint', type=Path, default=None,
                   help='publish an interim snapshot of a run still training: a copy of its last.pt '
                        '(copy it, the trainer rewrites last.pt; default: the finished run)')
    p.add_argument('--note', default=None,
                   help='a reviewer\'s note for the card and MODEL_CARDS.md (what limited the run, what to expect; default: none)')
    p.set_defaults(func=_cmd_publish)
