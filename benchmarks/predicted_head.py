"""The evidence behind matching a folder's classes to pretrained labels by prediction (issue 45; `--head auto` ->
'predicted', ``sdzoo.train.finetune.PREDICTED_MARGIN``).

First, per class, how much of it the pretrained head calls by one label (why a share bar cannot decide).

For each shipped CIFAR-10 model: the first 100 training images of each Fashion-MNIST class (28 px resized to 32,
grey to RGB, as benchmarks/finetune.py's folders) and the first 100 *test* images of each CIFAR-10 class
($SDZOO_DATA/cifar10, JPEG q75 copy; pictures the model never trained on, as a user's would be), the pretrained
label most of them get and its share.

Then the rule itself on benchmarks/finetune.py's folders (built there; `--folders`): on the first 100 training images
of each class, the pretrained rows of the labels each class gets most (restricted to those labels) against a linear
probe under 5-fold cross-validation (``sdzoo.train.finetune.match_by_prediction`` and ``probe_cv_top1``).

    python benchmarks/predicted_head.py [--per-class 100] [--folders /tmp/sdzoo-ftbench/data]
"""
from __future__ import annotations

import argparse
import gzip
import sys

import numpy as np
from pathlib import Path


def _idx(path) -> np.ndarray:
    b = gzip.open(path).read()
    if b[2:4] == b'\x08\x03':
        return np.frombuffer(b, np.uint8, offset=16).reshape(-1, 28, 28)
    return np.frombuffer(b, np.uint8, offset=8)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--per-class', type=int, default=100)
    p.add_argument('--folders', default='/tmp/sdzoo-ftbench/data', help="benchmarks/finetune.py's built folders")
    args = p.parse_args(argv)
    import timm
    import torch
    import torch.nn.functional as F
    from PIL import Image
    import sdzoo  # noqa: F401  (registers the sd_* models)
    from sdzoo.data import default_data_root, find_fashion_mnist
    torch.set_num_threads(1)
    d = find_fashion_mnist()
    fx, fy = _idx(d / 'train-images-idx3-ubyte.gz'), _idx(d / 'train-labels-idx1-ubyte.gz')
    fm_names = ['tshirt', 'trouser', 'pullover', 'dress', 'coat', 'sandal', 'shirt', 'sneaker', 'bag', 'boot']
    cifar = default_data_root() / 'cifar10' / 'test'
    for name in ('sd_resnet20', 'sd_resnet110', 'sd_vit_lite_patch4_32'):
        net = timm.create_model(name + '.sd_cifar10', pretrained=True).eval()
        cfg = net.pretrained_cfg
        labels = cfg['label_names']
        mean, std = torch.tensor(cfg['mean']).view(1, 3, 1, 1), torch.tensor(cfg['std']).view(1, 3, 1, 1)

        def share(x: torch.Tensor):
            with torch.no_grad():
                pred = net((x - mean) / std).argmax(1)
            j = int(torch.bincount(pred).argmax())
            return labels[j], 100.0 * float((pred == j).float().mean())
        rows = {}
        for c, cname in enumerate(fm_names):
            x = torch.from_numpy(fx[fy == c][:args.per_class].astype(np.float32) / 255).unsqueeze(1)
            rows['fashion_mnist/' + cname] = share(F.interpolate(x, size=32, mode='bilinear',
                                                                 align_corners=False).repeat(1, 3, 1, 1))
        for cname in labels:
            files = sorted((cifar / cname).iterdir())[:args.per_class]
            x = torch.stack([torch.from_numpy(np.asarray(Image.open(f).convert('RGB'), np.float32) / 255)
                             .permute(2, 0, 1) for f in files])
            rows['cifar10/' + cname] = share(x)
        for group in ('fashion_mnist', 'cifar10'):
            mine = {k: v for k, v in rows.items() if k.startswith(group)}
            print(f"{name} {group}: {min(s for _, s in mine.values()):.0f}-{max(s for _, s in mine.values()):.0f}%: "
                  + '; '.join(f"{k.split('/')[1]}->{lab} {s:.0f}%" for k, (lab, s) in mine.items()), flush=True)
        folder_rule(net, Path(args.folders), args.per_class)
    return 0


def folder_rule(net, root: Path, per_class: int) -> None:
    import torch
    from timm.data import resolve_data_config
    from sdzoo.data import TensorLoader, load_splits
    from sdzoo.train.finetune import PREDICTED_MARGIN, match_by_prediction, probe_cv_top1
    dc = resolve_data_config(model=net)
    fc = net.get_classifier()
    for folder in sorted(p for p in root.iterdir() if (p / 'train').is_dir()):
        train = load_splits(str(folder), (3, 32, 32), val_size=0).train
        idx = torch.cat([(train.labels == c).nonzero().squeeze(1)[:per_class] for c in range(int(train.labels.max()) + 1)])
        fs, ys = [], []
        with torch.no_grad():
            for x, y in TensorLoader(train.subset(idx), 256, dc['mean'], dc['std']).iter_epoch(0):
                fs.append(net.forward_head(net.forward_features(x), pre_logits=True))
                ys.append(y)
            f, y = torch.cat(fs), torch.cat(ys)
            logits = fc(f)
        k = int(y.max()) + 1
        found = match_by_prediction(logits.argmax(1), y, k)
        if not found:
            print(f'  {folder.name}: two classes get the same label', flush=True)
            continue
        rows = [j for _, j, _ in found]
        rows_top1 = 100.0 * float((logits[:, rows].argmax(1) == y).float().mean())
        probe = probe_cv_top1(f, y, k)
        verdict = 'predicted' if rows_top1 >= probe - PREDICTED_MARGIN else 'probe'
        print(f'  {folder.name}: lowest share {100 * min(s for *_, s in found):.0f}%, rows {rows_top1:.1f}% vs probe '
              f'{probe:.1f}% ({rows_top1 - probe:+.1f}) -> {verdict}', flush=True)


if __name__ == '__main__':
    sys.exit(main())
