"""Does a fine-tune without stochastic depth lose SD's tolerance to removed blocks? (issue 45 / issue 50)

The fine-tune recipe turns SD off for convnets (benchmarks/results/finetune_sd_size.md). Depth on demand relies on
a network that still works with residual blocks removed. This takes pairs of finished `sdzoo finetune` runs that
differ only in ``--drop-path-rate`` (0.5 kept / 0 off; e.g. the runs of benchmarks/finetune_sd_size.py), prunes
each with ``sdzoo.prune_depth`` at every depth (the default greedy strategy on held-out training images with
BatchNorm re-estimation, the same call ``sdzoo export --keep-blocks`` makes) and reports test top-1 on the run's
data set:

    python benchmarks/finetune_sd_depth.py /tmp/sdsize/w/n10000-s0-sd_kept /tmp/sdsize/w/n10000-s0-sd_off ... \\
        > benchmarks/results/finetune_sd_depth.md
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import List, Tuple

import numpy as np
import torch


sys.path.insert(0, str(Path(__file__).resolve().parent))
from depth import predict  # noqa: E402  benchmarks/depth.py: batched argmax


def test_images(model: torch.nn.Module, data: str) -> Tuple[np.ndarray, np.ndarray, str]:
    """All test images of ``data`` preprocessed as ``sdzoo validate`` does for ``model``, their labels, a name."""
    from sdzoo.export.quantize import load_labelled_images
    from sdzoo.models.load import data_config
    cfg = data_config(model)
    return load_labelled_images(data, 'test', cfg['input_size'], model.num_classes, cfg['mean'], cfg['std'])


def main(argv: List[str] | None = None) -> int:
    import timm
    import sdzoo
    from sdzoo.models.depth import residual_blocks
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('runs', nargs='+', type=Path, help='finished sdzoo finetune run directories')
    ap.add_argument('--threads', type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows, depths = [], None
    for run in args.runs:
        cfg = json.loads((run / 'config.json').read_text())
        model = timm.create_model(f'local-dir:{run / "model"}', pretrained=True).eval()
        n = len(residual_blocks(model))
        x, y, desc = test_images(model, cfg['data'])
        accs = {}
        for keep in range(n, 0, -1):
            try:
                pruned = sdzoo.prune_depth(model, keep=keep, data=cfg['data'], heal_steps=0)
            except ValueError:  # fewer blocks than the downsampling ones it must keep
                break
            accs[keep] = round(100 * float((predict(pruned, x) == y).mean()), 2)
        depths = sorted(set(depths or accs) & set(accs), reverse=True)
        rows.append((run.name, cfg['drop_path_rate'], accs))
        print(f'{run.name}: ' + ', '.join(f'{k}: {v:.2f}' for k, v in accs.items()), file=sys.stderr, flush=True)
    print(f'Test top-1 % on {desc}, greedy block removal with BatchNorm re-estimation (`sdzoo.prune_depth(model, keep, '
          f'data=..., heal_steps=0)`), by blocks kept:\n')
    print('| run | fine-tuned with drop_path_rate | ' + ' | '.join(str(k) for k in depths) + ' |')
    print('|---|---:|' + '---:|' * len(depths))
    for name, rate, accs in rows:
        print(f'| {name} | {rate} | ' + ' | '.join(f'{accs[k]:.2f}' for k in depths) + ' |')
    return 0


if __name__ == '__main__':
    sys.exit(main())
