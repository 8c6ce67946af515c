"""The model a finished training run leaves behind: ``RUN_DIR/model/``, a folder in timm's Hub layout.

The run directory keeps its own ``config.json`` (the training configuration ``--resume`` reads), so the
loadable model lives one level down: ``config.json`` (architecture, num_classes, in_chans, the stochastic-depth
arguments it was trained with, ``label_names`` from the data set's classes, ``pretrained_cfg`` with mean/std and
input size), ``model.safetensors`` and a short card with the measured metrics. It loads with
``timm.create_model('local-dir:RUN_DIR/model', pretrained=True)``, and every ``sdzoo`` command that takes a
model accepts the folder or the run directory.
"""
from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence

from ..hub.model_folder import MODEL_DIR

__all__ = ['run_tag', 'write_run_model']


def run_tag(cfg: Mapping[str, Any]) -> str:
    """``<model>.<tag>`` tag of a run's model: ``ft_<data>`` for a fine-tune, ``<data>`` otherwise.

    Never an ``sd_*`` tag, so a user's folder is never mistaken for (and checked against) a shipped weight.
    """
    data = Path(str(cfg.get('data') or 'data')).name or 'data'
    data = re.sub(r'[^a-z0-9_]+', '_', data.lower()).strip('_') or 'data'
    finetune = bool(cfg.get('pretrained') or cfg.get('pretrained_file'))
    return f"{'ft_' if finetune else 'run_'}{data}"


def _results(summary: Mapping[str, Any], last_row: Optional[Mapping[str, float]],
             num_classes: int) -> Optional[Dict[str, Any]]:
    """The held-out result the card reports: the test split, else the last epoch's validation."""
    test = summary.get('test')
    if test:
        res = dict(top1=test['top1'], top5=test.get('top5'), loss=test['loss'], images=test.get('images'),
                   split='test')
    elif last_row and last_row.get('val_top1') == last_row.get('val_top1') and 'val_top1' in last_row:
        res = dict(top1=last_row['val_top1'], top5=last_row.get('val_top5'), loss=last_row.get('val_loss'),
                   split='validation')
    else:
        return None
    if num_classes <= 5:  # top-5 of 5 or fewer classes is 100% by construction
        res.pop('top5', None)
    return {k: v for k, v in res.items() if v is not None}


def write_run_model(
        run_dir: Path,
        model,
        *,
        cfg: Mapping[str, Any],
        classes: Sequence[str],
        summary: Mapping[str, Any],
        last_row: Optional[Mapping[str, float]] = None,
) -> Optional[Path]:
    """Write ``run_dir/model/`` from the trained ``model``; ``None`` (and a note) without a held-out result."""
    import sys
    import torch
    from ..models.load import data_config
    from ..hub.publish import METRICS_FILE, PLOT_FILE, write_model_folder
    run_dir = Path(run_dir)
    num_classes = int(model.num_classes)
    results = _results(summary, last_row, num_classes)
    if results is None:
        print(f'note: no test or validation result, so {run_dir / MODEL_DIR} was not written '
              '(its card reports a held-out accuracy)', file=sys.stderr)
        return None
    split = results.pop('split')
    # a contiguous CPU copy: the trained network may be channels_last or on a GPU
    net = copy.deepcopy(model).to('cpu', memory_format=torch.contiguous_format).eval()
    dcfg = data_config(net)  # the first conv's channels (in_chans=1: grey mean/std), input size, crop
    net.pretrained_cfg = dict(net.pretrained_cfg, **{k: tuple(v) if isinstance(v, list) else v for k, v in dcfg.items()})
    folder = run_dir / MODEL_DIR
    # data.json: the split the model trained on, so an INT8 gate never judges it on its own training images
    extras = {dst: run_dir / src for src, dst in (('metrics.csv', METRICS_FILE), ('curves.png', PLOT_FILE),
                                                  ('data.json', 'data.json'))
              if (run_dir / src).is_file()}
    recipe = {k: cfg[k] for k in ('epochs', 'batch_size', 'optimizer', 'lr', 'sched', 'weight_decay',
                                  'drop_path_rate', 'sd_mode', 'sd_scaling', 'seed') if cfg.get(k) is not None}
    train_info = dict(epochs=cfg.get('epochs'), wall_clock=float(summary.get('train_hours') or 0) * 3600,
                      hardware=summary.get('hardware'), recipe=recipe, run=str(run_dir),
                      note=f'Trained by `sdzoo {"finetune" if cfg.get("pretrained") or cfg.get("pretrained_file") else "train"}`'
                           f' on {cfg.get("data")} ({len(classes)} classes); {split} result below.')
    data_name = Path(str(cfg.get('data'))).name or str(cfg.get('data'))
    return write_model_folder(
        net, folder, model_name=cfg['model'], tag=run_tag(cfg), results=results, train_info=train_info,
        dataset=dict(id=data_name, name=data_name, split=split), extras=extras, label_names=list(classes),
        usage=[f"model = timm.create_model('local-dir:{folder}', pretrained=True).eval()",
               "print(model.pretrained_cfg['label_names'])"])
