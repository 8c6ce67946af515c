"""``sdzoo publish RUN_DIR --tag TAG``: a finished training run -> ``weights/<model>.<tag>/``.

Every number in the folder comes from evaluation, not from the trainer's own log: the run's final
weights are evaluated on the test split, the folder is written, and then the *published* folder is
loaded the way users load it (``pretrained=True``) and evaluated again with ``sdzoo validate``; its
JSON is committed as ``validate.json`` and both evaluations must agree exactly.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict

__all__ = ['publish_run', 'add_parser']

_REPO_ROOT = Path(__file__).resolve().parents[2]
# how each data set is named on cards (the shared CIFAR-10 copy is JPEG re-encoded: say so)
_DATASETS = {
    'cifar10': dict(id='uoft-cs/cifar10', name='CIFAR-10 (JPEG q75 copy)', split='test'),
    'fashion_mnist': dict(id='zalando-datasets/fashion_mnist', name='Fashion-MNIST', split='test'),
}


def _validate_cmd(model: str, data: str, extra: str) -> str:
    return f'sdzoo validate {model} {extra} --data {data} --split test'


def publish_run(run_dir: Path, tag: str, weights_root: Path, data: str | None = None, overwrite: bool = False,
                ema: bool = False, update_cards: bool = True) -> Path:
    import timm
    import torch
    import sdzoo  # noqa: F401
    from ..train.checkpoint import load_state_dict_file
    from ..train.cli import _cmd_validate, add_parser as add_train_parser
    from .publish import save_weights_folder

    run_dir = Path(run_dir)
    cfg_path, summary_path = run_dir / 'config.json', run_dir / 'summary.json'
    for p in (cfg_path, summary_path, run_dir / 'model.safetensors'):
        if not p.is_file():
            raise FileNotFoundError(f'{p} missing: {run_dir} is not a finished sdzoo training run')
    cfg = json.loads(cfg_path.read_text())
    summary = json.loads(summary_path.read_text())
    data_info = json.loads((run_dir / 'data.json').read_text()) if (run_dir / 'data.json').exists() else {}
    data = data or cfg['data']
    model_name = cfg['model']
    kwargs: Dict[str, Any] = {k: cfg[k] for k in ('drop_path_rate', 'sd_mode', 'sd_scaling', 'num_classes', 'in_chans')
                              if cfg.get(k) is not None}
    # built under the target tag so that its pretrained cfg (input size, mean/std, labels) is the one saved
    tagged = f'{model_name}.{tag}'
    model = timm.create_model(tagged if timm.list_pretrained(tagged) else model_name, **kwargs)
    weights_file = run_dir / ('model_ema.safetensors' if ema else 'model.safetensors')
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
        _cmd_validate(args)
        return json.loads(out.read_text())

    pre = run_validate(['--checkpoint', str(weights_file)], run_dir / 'test_validate.json')
    labels = data_info.get('classes')
    hours = summary.get('train_hours')
    commands = [
        ' '.join(['sdzoo train', model_name, '--data', cfg['data'], '--epochs', str(cfg['epochs']),
                  '--lr', str(cfg['lr']), '--sched', cfg['sched']]
                 + (['--warmup-epochs', str(cfg['warmup_epochs'])] if cfg.get('warmup_epochs') else [])
                 + (['--pretrained'] if cfg.get('pretrained') else [])
                 + (['--in-chans', str(cfg['in_chans'])] if cfg.get('in_chans') else [])
                 + (['--num-classes', str(cfg['num_classes'])] if cfg.get('num_classes') else [])
                 + (['--drop-path-rate', str(cfg['drop_path_rate'])] if cfg.get('drop_path_rate') is not None else [])
                 + ['--out', str(run_dir)]),
        _validate_cmd(f'{model_name}.{tag}', data, '--pretrained'),
    ]
    if cfg.get('pretrained') or cfg.get('pretrained_file'):
        commands[0] = commands[0].replace('sdzoo train', 'sdzoo finetune', 1)
    recipe = {k: cfg[k] for k in ('epochs', 'batch_size', 'optimizer', 'lr', 'momentum', 'nesterov', 'weight_decay',
                                  'sched', 'milestones', 'warmup_epochs', 'label_smoothing', 'drop_path_rate',
                                  'sd_mode', 'sd_scaling', 'amp', 'seed', 'ema') if k in cfg}
    train_info = dict(epochs=cfg['epochs'], wall_clock=(hours or 0) * 3600, hardware=summary.get('hardware'),
                      recipe=recipe, commands=commands, data=data_info.get('source'),
                      data_split=f"train {data_info.get('train')} / val {data_info.get('val')} / test {data_info.get('test')}")
    folder = save_weights_folder(
        model, weights_root, model_name=model_name, tag=tag, results=pre, train_info=train_info,
        metrics_csv=run_dir / 'metrics.csv' if (run_dir / 'metrics.csv').exists() else None,
        plot_png=run_dir / 'curves.png' if (run_dir / 'curves.png').exists() else None,
        label_names=labels, overwrite=overwrite, dataset=_DATASETS.get(data_info.get('name', '')))
    tmp = folder / '.training.json.tmp'
    tmp.write_text(json.dumps(train_info, indent=2, default=str) + '\n')
    tmp.replace(folder / 'training.json')
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
    publish_run(args.run_dir, args.tag, args.weights, data=args.data, overwrite=args.overwrite, ema=args.ema)
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser('publish', help='turn a finished training run into a weights/<model>.<tag> folder')
    p.add_argument('run_dir', type=Path)
    p.add_argument('--tag', required=True, help='timm pretrained tag, e.g. sd_cifar10')
    p.add_argument('--weights', type=Path, default=_REPO_ROOT / 'weights', help='weights root (default: weights/)')
    p.add_argument('--data', default=None, help='evaluation data (default: the run\'s data set)')
    p.add_argument('--ema', action='store_true', help='publish the EMA weights')
    p.add_argument('--overwrite', action='store_true', help='replace an existing folder')
    p.set_defaults(func=_cmd_publish)
