"""Data sets the trainer reads: CIFAR-10 image folders, Fashion-MNIST IDX files, any image folder.

Small-image data sets (up to 64 px) are decoded once into uint8 tensors and cached, so that a
2-core CPU spends its time training instead of decoding JPEGs. Larger images stream through
torchvision's ``ImageFolder`` with timm's transforms.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..files import atomic_write, land_file
from .images import IMG_EXTENSIONS, decode_images

__all__ = [
    'DATA_ENV', 'default_data_root', 'Split', 'DataSplits', 'load_splits', 'find_fashion_mnist',
    'IMG_EXTENSIONS',
]

DATA_ENV = 'SDZOO_DATA'
FASHION_MNIST_ENV = 'SDZOO_FASHION_MNIST'
FASHION_MNIST_DIRS = ('/usr/share/datasets/fashion-mnist',)
FASHION_MNIST_CLASSES = ('T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt',
                         'Sneaker', 'Bag', 'Ankle boot')
_REPO_ROOT = Path(__file__).resolve().parents[2]


def default_data_root() -> Path:
    """``$SDZOO_DATA``, else ``../shared/datasets`` beside the project root."""
    env = os.environ.get(DATA_ENV)
    return Path(env) if env else _REPO_ROOT.parent / 'shared' / 'datasets'


def _cache_dir() -> Path:
    d = Path(os.environ.get('SDZOO_CACHE', Path.home() / '.cache' / 'sdzoo'))
    d.mkdir(parents=True, exist_ok=True)
    return d


@dataclass
class Split:
    """One split: either decoded uint8 NHWC images in memory, or a list of files to stream."""
    labels: torch.Tensor
    images: Optional[torch.Tensor] = None          # uint8 [N, H, W, C]
    files: Optional[List[str]] = None              # image paths (streamed)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, idx: Sequence[int] | torch.Tensor) -> 'Split':
        idx = torch.as_tensor(idx, dtype=torch.long)
        return Split(
            labels=self.labels[idx],
            images=self.images[idx] if self.images is not None else None,
            files=[self.files[i] for i in idx.tolist()] if self.files is not None else None,
        )


@dataclass
class DataSplits:
    name: str
    classes: List[str]
    train: Split
    val: Optional[Split]
    test: Optional[Split]
    in_chans: int
    source: str = ''
    notes: List[str] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def _scan_folder(root: Path) -> Tuple[List[str], List[str], List[int]]:
    """``class/xxx.jpg`` layout -> (classes, files, labels); classes sorted like ImageFolder."""
    if not root.is_dir():
        raise FileNotFoundError(f'image folder {root} does not exist')
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith('.'))
    if not classes:
        raise ValueError(f'image folder {root} has no class sub-folders (expected {root}/<class>/<image>)')
    files, labels = [], []
    for i, c in enumerate(classes):
        imgs = sorted(str(p) for p in (root / c).rglob('*') if p.suffix.lower() in IMG_EXTENSIONS)
        files += imgs
        labels += [i] * len(imgs)
    if not files:
        raise ValueError(f'image folder {root} has class folders {classes[:5]} but no images '
                         f'with extensions {IMG_EXTENSIONS}')
    return classes, files, labels


def _folder_split(root: Path, size: Optional[Tuple[int, int]], mode: str, in_memory: bool,
                  classes: Optional[List[str]] = None) -> Tuple[List[str], Split]:
    found, files, labels = _scan_folder(root)
    if classes is not None and found != classes:
        raise ValueError(f'class folders of {root} ({found}) differ from the training classes ({classes})')
    labels_t = torch.tensor(labels, dtype=torch.long)
    if not in_memory:
        return found, Split(labels=labels_t, files=files)
    key = hashlib.sha256('\n'.join([str(root.resolve()), mode, str(size), str(len(files)),
                                    files[0], files[-1], str(os.path.getsize(files[-1]))]).encode())
    cache = _cache_dir() / f'{root.name}-{key.hexdigest()[:16]}.npz'
    if cache.exists():
        try:
            with np.load(cache) as z:
                return found, Split(labels=torch.from_numpy(z['labels']), images=torch.from_numpy(z['images']))
        except Exception:
            cache.unlink(missing_ok=True)
    images = torch.from_numpy(decode_images(files, size, mode, desc=f'decoding {root}'))
    _write_cache(cache, images=images.numpy(), labels=labels_t.numpy())
    return found, Split(labels=labels_t, images=images)


def _gunzip(src: Path, dst: str) -> None:
    with gzip.open(src, 'rb') as fi, open(dst, 'wb') as fo:
        shutil.copyfileobj(fi, fo)


def _write_cache(cache: Path, **arrays: np.ndarray) -> None:
    """Write an .npz cache atomically under a temp name of its own: DDP ranks decode the same folder at
    the same time (a shared temp name let one rank rename the other's file away, and the second rename failed)."""

    def write(tmp: str) -> None:
        with open(tmp, 'wb') as f:  # a file object: np.savez would append .npz to a path
            np.savez(f, **arrays)
    atomic_write(cache, write)


def _stratified_holdout(labels: torch.Tensor, n_val: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Indices (train, val): the last ``n_val / num_classes`` images of every class go to val.

    Deterministic and class-balanced, so a CIFAR-10 run always validates on the same 5,000 images.
    """
    classes = labels.unique()
    per = n_val // len(classes)
    if per < 1 or per * len(classes) != n_val:
        raise ValueError(f'validation size {n_val} must be a positive multiple of the {len(classes)} classes')
    val = []
    for c in classes.tolist():
        idx = (labels == c).nonzero().squeeze(1)
        if len(idx) <= per:
            raise ValueError(f'class {c} has only {len(idx)} images, cannot hold out {per} for validation')
        val.append(idx[-per:])
    val_idx = torch.cat(val).sort().values
    mask = torch.ones(len(labels), dtype=torch.bool)
    mask[val_idx] = False
    return mask.nonzero().squeeze(1), val_idx


def find_fashion_mnist(path: Optional[str | os.PathLike] = None) -> Path:
    """Folder with the original Fashion-MNIST IDX files (Debian ``dataset-fashion-mnist``)."""
    candidates = [Path(path)] if path else []
    if os.environ.get(FASHION_MNIST_ENV):
        candidates.append(Path(os.environ[FASHION_MNIST_ENV]))
    candidates += [Path(p) for p in FASHION_MNIST_DIRS]
    for c in candidates:
        if (c / 'train-images-idx3-ubyte.gz').exists() or (c / 'train-images-idx3-ubyte').exists():
            return c
    raise FileNotFoundError(
        'Fashion-MNIST IDX files (train-images-idx3-ubyte[.gz] …) not found; looked in '
        + ', '.join(map(str, candidates)) + '. Install them with `apt-get install dataset-fashion-mnist` '
        f'or point {FASHION_MNIST_ENV} at the folder.')


def _fashion_mnist(path: Optional[str], size: Tuple[int, int]) -> Tuple[Split, Split]:
    """Read with torchvision's FashionMNIST from a cache folder laid out as it expects (no download)."""
    from torchvision.datasets import FashionMNIST
    src = find_fashion_mnist(path)
    root = _cache_dir() / 'fashion_mnist'
    raw = root / 'FashionMNIST' / 'raw'
    raw.mkdir(parents=True, exist_ok=True)
    for stem in ('train-images-idx3-ubyte', 't10k-images-idx3-ubyte', 'train-labels-idx1-ubyte',
                 't10k-labels-idx1-ubyte'):
        dst = raw / stem
        if dst.exists():
            continue
        if (src / stem).exists():
            land_file(src / stem, dst)
        elif (src / (stem + '.gz')).exists():
            atomic_write(dst, lambda tmp: _gunzip(src / (stem + '.gz'), tmp))
        else:
            raise FileNotFoundError(f'Fashion-MNIST file {stem}[.gz] missing in {src}')
    splits = []
    for train in (True, False):
        ds = FashionMNIST(str(root), train=train, download=False)
        imgs = ds.data.unsqueeze(-1)  # uint8 [N, 28, 28, 1]
        if tuple(imgs.shape[1:3]) != tuple(size):
            imgs = torch.nn.functional.interpolate(
                imgs.permute(0, 3, 1, 2).float(), size=size, mode='bilinear', align_corners=False,
                antialias=True).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()
        splits.append(Split(labels=ds.targets.clone(), images=imgs))
    return splits[0], splits[1]


def load_splits(
        data: str,
        input_size: Tuple[int, int, int],
        val_size: Optional[int] = None,
        in_memory: Optional[bool] = None,
        only: Optional[str] = None,
) -> DataSplits:
    """Resolve a data spec: ``cifar10``, ``fashion_mnist``, or a path to an image folder.

    An image folder may hold ``train/`` plus ``val/`` and/or ``test/``; a folder of class folders
    only is split into train and a held-out validation set. ``val_size`` holds out that many
    training images (class-balanced); CIFAR-10 defaults to the paper's 45,000/5,000 split.
    ``only='test'`` (or ``'val'``, ``'train'``) decodes just that split: the others stay file lists, so
    evaluating the test set does not decode the whole training set first.
    """
    c, h, w = input_size
    size = (h, w)
    if in_memory is None:
        in_memory = max(h, w) <= 64
    mode = 'L' if c == 1 else 'RGB'
    key = data.lower().replace('-', '_')
    notes: List[str] = []
    if key in ('fashion_mnist', 'fashionmnist') or key.startswith('fashion_mnist:'):
        path = data.split(':', 1)[1] if ':' in data else None
        train, test = _fashion_mnist(path, size)
        if c == 3:
            train.images = train.images.expand(-1, -1, -1, 3).contiguous()
            test.images = test.images.expand(-1, -1, -1, 3).contiguous()
        name, classes, val, in_chans = 'fashion_mnist', list(FASHION_MNIST_CLASSES), None, c
        source = str(find_fashion_mnist(path))
        if val_size is None:
            val_size = 5000
    else:
        if key == 'cifar10':
            root = default_data_root() / 'cifar10'
            if not root.is_dir():
                raise FileNotFoundError(
                    f'CIFAR-10 image folders not found at {root} (set {DATA_ENV} to the folder that '
                    'contains cifar10/, or pass --data PATH)')
            name = 'cifar10'
            if val_size is None:
                val_size = 5000
        else:
            root = Path(data).expanduser()
            if not root.exists():
                raise FileNotFoundError(f'data set {data!r} not found: it is neither a known name '
                                        f'(cifar10, fashion_mnist) nor an existing folder ({root.resolve()})')
            name = root.name
        train_dir = root / 'train' if (root / 'train').is_dir() else root
        def mem(split: str) -> bool:
            return bool(in_memory) and only in (None, split)
        # the held-out validation images come out of train/ when there is no val/ folder
        has_val = train_dir != root and any((root / sub).is_dir() for sub in ('val', 'validation'))
        classes, train = _folder_split(train_dir, size, mode, mem('train') or (mem('val') and not has_val))
        val = test = None
        if train_dir != root:
            for sub in ('val', 'validation'):
                if (root / sub).is_dir():
                    _, val = _folder_split(root / sub, size, mode, mem('val'), classes)
                    break
            if (root / 'test').is_dir():
                _, test = _folder_split(root / 'test', size, mode, mem('test'), classes)
        in_chans, source = c, str(root)
    if val is None:
        if val_size is None:
            val_size = max(len(classes), (len(train) // 10) // len(classes) * len(classes))
        if val_size > 0:
            tr_idx, va_idx = _stratified_holdout(train.labels, val_size)
            val = train.subset(va_idx)
            train = train.subset(tr_idx)
            notes.append(f'validation: last {val_size // len(classes)} training images of each class '
                         f'({val_size} in all) held out')
    return DataSplits(name=name, classes=classes, train=train, val=val, test=test, in_chans=in_chans,
                      source=source, notes=notes)
