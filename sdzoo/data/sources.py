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
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..files import atomic_write, land_file
from .images import DECODER_VERSION, IMG_EXTENSIONS, ImageGeometry, decode_images

__all__ = [
    'DATA_ENV', 'default_data_root', 'Split', 'DataSplits', 'load_splits', 'find_fashion_mnist',
    'IMG_EXTENSIONS', 'resolution_note', 'named_data_set', 'split_pixels', 'normalized',
]

DATA_ENV = 'SDZOO_DATA'
FASHION_MNIST_ENV = 'SDZOO_FASHION_MNIST'
FASHION_MNIST_DIRS = ('/usr/share/datasets/fashion-mnist',)
FASHION_MNIST_CLASSES = ('T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt',
                         'Sneaker', 'Bag', 'Ankle boot')
_REPO_ROOT = Path(__file__).resolve().parents[2]


def named_data_set(data: str) -> Optional[str]:
    """``'cifar10'`` / ``'fashion_mnist'`` when ``data`` names a built-in data set (any case, ``-`` or ``_``,
    ``fashionmnist``, ``fashion_mnist:PATH``), else None: then it is a folder."""
    key = str(data).lower().replace('-', '_')
    if key in ('fashion_mnist', 'fashionmnist') or key.startswith('fashion_mnist:'):
        return 'fashion_mnist'
    return 'cifar10' if key == 'cifar10' else None


def split_pixels(split: 'Split', idx: Sequence[int], input_size: Sequence[int], what: str = '') -> np.ndarray:
    """uint8 NHWC pixels of the images ``idx`` of ``split``, decoded from their files when the split streams."""
    c, h, w = (int(v) for v in input_size)
    idx = [int(i) for i in idx]
    if split.images is not None:
        return split.images.numpy()[idx]
    return decode_images([split.files[i] for i in idx], (h, w), 'L' if c == 1 else 'RGB', what, split.geometry)


def normalized(pixels: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """float32 NCHW from uint8 NHWC, normalized as ``sdzoo validate`` does (``mean``/``std`` in [0, 1] units)."""
    m = np.asarray(mean, dtype=np.float32).reshape(1, -1, 1, 1) * 255
    s = np.asarray(std, dtype=np.float32).reshape(1, -1, 1, 1) * 255
    return np.ascontiguousarray(((pixels.transpose(0, 3, 1, 2).astype(np.float32) - m) / s).astype(np.float32))


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
    paths: Optional[List[str]] = None              # where each image came from (image folders; also when decoded)
    geometry: Optional[ImageGeometry] = None       # how its files become the input size (streamed image folders)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, idx: Sequence[int] | torch.Tensor) -> 'Split':
        idx = torch.as_tensor(idx, dtype=torch.long)
        return Split(
            labels=self.labels[idx],
            images=self.images[idx] if self.images is not None else None,
            files=[self.files[i] for i in idx.tolist()] if self.files is not None else None,
            paths=[self.paths[i] for i in idx.tolist()] if self.paths is not None else None,
            geometry=self.geometry,
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
    warnings: List[str] = field(default_factory=list)   # what a user should know: files left out (skipped_note)
    split_record: Optional[dict] = None   # how val/ was drawn from train/ (holdout='stratified'): seed, counts, hashes

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def _scan_folder(root: Path) -> Tuple[List[str], List[str], List[int], Dict[str, int]]:
    """``class/xxx.jpg`` layout -> (classes, files, labels, skipped); classes sorted like ImageFolder; ``skipped``
    counts the other files by extension (hidden ones aside): a phone's .HEIC pictures, videos, sidecar files."""
    if not root.is_dir():
        raise FileNotFoundError(f'image folder {root} does not exist')
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith('.'))
    if not classes:
        raise ValueError(f'image folder {root} has no class sub-folders (expected {root}/<class>/<image>)')
    files, labels, empty, skipped = [], [], [], {}
    for i, c in enumerate(classes):
        imgs = []
        for p in (root / c).rglob('*'):
            if p.suffix.lower() in IMG_EXTENSIONS:
                imgs.append(str(p))
            elif not p.name.startswith('.') and p.is_file():
                kind = p.suffix.lower() or 'no extension'
                skipped[kind] = skipped.get(kind, 0) + 1
        imgs.sort()
        files += imgs
        labels += [i] * len(imgs)
        if not imgs:
            empty.append(c)
    if not files:
        raise ValueError(f'image folder {root} has class folders {classes[:5]} but no images '
                         f'with extensions {IMG_EXTENSIONS}')
    if empty:
        raise ValueError(f"class folder {root / empty[0]} has no images ({', '.join(IMG_EXTENSIONS)})"
                         + (f' (nor have {len(empty) - 1} more: {", ".join(empty[1:4])})' if len(empty) > 1 else '')
                         + '; add images or remove the folder')
    return classes, files, labels, skipped


def skipped_note(root: Path, skipped: Dict[str, int]) -> Optional[str]:
    """One line naming the files of ``root``'s class folders that were not read, or None."""
    if not skipped:
        return None
    kinds = ', '.join(f'{k} {ext}' for ext, k in sorted(skipped.items(), key=lambda kv: (-kv[1], kv[0])))
    n = sum(skipped.values())
    return (f"{root}: {n} {'file' if n == 1 else 'files'} that sdzoo does not read as images "
            f"{'was' if n == 1 else 'were'} left out ({kinds}); convert {'it' if n == 1 else 'them'} to one of "
            f"{' '.join(IMG_EXTENSIONS)} to use {'it' if n == 1 else 'them'}")


def _check_same_classes(root: Path, found: List[str], classes: List[str], train_dir: Path) -> None:
    """One line naming the folder whose class names differ from train/'s."""
    if found == classes:
        return
    extra, missing = sorted(set(found) - set(classes)), sorted(set(classes) - set(found))
    parts = ([f"has {', '.join(map(repr, extra))} that {train_dir} lacks"] if extra else []) \
        + ([f"lacks {', '.join(map(repr, missing))} that {train_dir} has"] if missing else [])
    raise ValueError(f"class folders of {root} differ from the training classes: {root} {'; '.join(parts)} "
                     '(class names must match folder for folder)')


def _folder_split(root: Path, size: Optional[Tuple[int, int]], mode: str, in_memory: bool,
                  classes: Optional[List[str]] = None, train_dir: Optional[Path] = None,
                  scanned: Optional[Tuple[List[str], List[str], List[int], Dict[str, int]]] = None,
                  geometry: Optional[ImageGeometry] = None) -> Tuple[List[str], Split]:
    found, files, labels, _ = scanned or _scan_folder(root)
    if classes is not None:
        _check_same_classes(root, found, classes, train_dir or root)
    labels_t = torch.tensor(labels, dtype=torch.long)
    if not in_memory:
        return found, Split(labels=labels_t, files=files, paths=files, geometry=geometry)
    key = hashlib.sha256('\n'.join([str(root.resolve()), mode, str(size), repr(geometry or ImageGeometry()),
                                    f'decoder {DECODER_VERSION}', str(len(files)),
                                    files[0], files[-1], str(os.path.getsize(files[-1]))]).encode())
    cache = _cache_dir() / f'{root.name}-{key.hexdigest()[:16]}.npz'
    if cache.exists():
        try:
            with np.load(cache) as z:
                return found, Split(labels=torch.from_numpy(z['labels']), images=torch.from_numpy(z['images']),
                                    paths=files, geometry=geometry)
        except Exception:
            cache.unlink(missing_ok=True)
    images = torch.from_numpy(decode_images(files, size, mode, desc=f'decoding {root}', geometry=geometry))
    _write_cache(cache, images=images.numpy(), labels=labels_t.numpy())
    return found, Split(labels=labels_t, images=images, paths=files, geometry=geometry)


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


def _proportional_counts(counts: List[int], n_val: int, classes: Sequence[str]) -> List[int]:
    """Validation images per class: proportional to the class sizes (largest remainder), at least one each,
    and at least one training image left in every class."""
    k, n = len(counts), sum(counts)
    if n_val < k:
        raise ValueError(f'--val-size {n_val} is smaller than the {k} classes: a stratified holdout needs '
                         f'at least one image of each class (use --val-size 0 for no holdout)')
    small = [(c, m) for c, m in zip(classes, counts) if m < 2]
    if small:
        c, m = small[0]
        raise ValueError(f"class {c!r} has {m} training image{'s' if m != 1 else ''}: the validation holdout needs "
                         f'at least 2 per class (1 to validate, 1 to train); add images, give a val/ folder, '
                         f'or pass --val-size 0')
    exact = [n_val * m / n for m in counts]
    per = [max(1, int(e)) for e in exact]
    order = sorted(range(k), key=lambda i: exact[i] - int(exact[i]), reverse=True)
    i = 0
    while sum(per) < n_val and i < 10 * k:
        j = order[i % k]
        if per[j] < counts[j] - 1:
            per[j] += 1
        i += 1
    per = [min(p, m - 1) for p, m in zip(per, counts)]
    if sum(per) < n_val:
        raise ValueError(f'--val-size {n_val} leaves too few training images ({n} in all, at least one per class '
                         'must stay in training)')
    return per


def _random_holdout(split: Split, n_val: int, seed: int, classes: Sequence[str]) -> Tuple[torch.Tensor, torch.Tensor, dict]:
    """Indices (train, val) of a stratified random holdout and its record (seed, counts, file-list hashes)."""
    labels = split.labels
    counts = [int((labels == c).sum()) for c in range(len(classes))]
    per = _proportional_counts(counts, n_val, classes)
    g = torch.Generator().manual_seed(int(seed))
    val = []
    for c, k in enumerate(per):
        idx = (labels == c).nonzero().squeeze(1)
        val.append(idx[torch.randperm(len(idx), generator=g)[:k]])
    val_idx = torch.cat(val).sort().values
    mask = torch.ones(len(labels), dtype=torch.bool)
    mask[val_idx] = False
    tr_idx = mask.nonzero().squeeze(1)
    paths = split.paths or []

    def digest(idx: torch.Tensor) -> str:
        names = sorted(os.path.relpath(paths[i], os.path.dirname(os.path.dirname(paths[i]))) for i in idx.tolist()) \
            if paths else [str(i) for i in idx.tolist()]
        return hashlib.sha256('\n'.join(names).encode()).hexdigest()
    record = dict(holdout='stratified random', seed=int(seed), val_size=int(val_idx.numel()),
                  val_per_class={c: k for c, k in zip(classes, per)},
                  train_per_class={c: m - k for c, m, k in zip(classes, counts, per)},
                  train_sha256=digest(tr_idx), val_sha256=digest(val_idx),
                  val_files=sorted(os.path.relpath(paths[i], os.path.dirname(os.path.dirname(paths[i])))
                                   for i in val_idx.tolist()) if paths and len(val_idx) <= 5000 else None)
    return tr_idx, val_idx, record


def resolution_note(n: int, what: str = 'validation') -> Optional[str]:
    """A warning when ``n`` images cannot resolve a 1-point top-1 difference (95% interval at 90% accuracy)."""
    if n <= 0:
        return None
    half = 196 * (0.09 / n) ** 0.5  # points
    if half <= 1.0:
        return None
    need = int(-(-1.96 ** 2 * 0.09 // 0.0001))
    return (f'{what} set of {n} images: one image is {100 / n:.1f} points and the 95% interval of a 90% accuracy is '
            f'+-{half:.1f} points, too coarse to tell a 1-point difference (that needs about {need:,} images)')


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


def _image_folder(root: Path, size: Tuple[int, int], mode: str, in_memory: bool, only: Optional[str],
                  geometry: Optional[ImageGeometry]
                  ) -> Tuple[List[str], Split, Optional[Split], Optional[Split], List[str]]:
    """``(classes, train, val, test, warnings)``: ``train/`` (or the folder itself) and its ``val/`` / ``test/``;
    ``warnings`` names the files that are not images sdzoo reads, per folder."""
    train_dir = root / 'train' if (root / 'train').is_dir() else root
    def mem(split: str) -> bool:
        return bool(in_memory) and only in (None, split)
    # the held-out validation images come out of train/ when there is no val/ folder
    has_val = train_dir != root and any((root / sub).is_dir() for sub in ('val', 'validation'))
    # scan every split before decoding any: a bad folder fails at once, with nothing decoded or written
    scans = {'train': _scan_folder(train_dir)}
    classes = scans['train'][0]
    subs = [s for s in ('val', 'validation') if (root / s).is_dir()][:1] + ['test'] if train_dir != root else []
    for sub in subs:
        if (root / sub).is_dir():
            scans[sub] = _scan_folder(root / sub)
            _check_same_classes(root / sub, scans[sub][0], classes, train_dir)
    _, train = _folder_split(train_dir, size, mode, mem('train') or (mem('val') and not has_val),
                             scanned=scans['train'], geometry=geometry)
    val = test = None
    for sub in subs:
        if sub in scans:
            split_name = 'test' if sub == 'test' else 'val'
            _, part = _folder_split(root / sub, size, mode, mem(split_name), classes, train_dir, scans[sub],
                                    geometry)
            if sub == 'test':
                test = part
            else:
                val = part
    notes = (skipped_note(train_dir if k == 'train' else root / k, scan[3]) for k, scan in scans.items())
    warnings = [n for n in notes if n]
    return classes, train, val, test, warnings


def load_splits(
        data: str,
        input_size: Tuple[int, int, int],
        val_size: Optional[int] = None,
        in_memory: Optional[bool] = None,
        only: Optional[str] = None,
        holdout: str = 'last',
        split_seed: int = 0,
        geometry: Optional[ImageGeometry] = None,
) -> DataSplits:
    """Resolve a data spec: ``cifar10``, ``fashion_mnist``, or a path to an image folder.

    An image folder may hold ``train/`` plus ``val/`` and/or ``test/``; a folder of class folders
    only is split into train and a held-out validation set. ``val_size`` holds out that many
    training images (class-balanced); CIFAR-10 defaults to the paper's 45,000/5,000 split.
    ``only='test'`` (or ``'val'``, ``'train'``) decodes just that split: the others stay file lists, so
    evaluating the test set does not decode the whole training set first.
    ``holdout='stratified'`` (fine-tuning on image folders) draws the held-out images at random with
    ``split_seed``, proportionally per class and at least one per class, and records the draw in
    ``DataSplits.split_record``; ``'last'`` (the named data sets' fixed split) holds out the last
    ``val_size / num_classes`` images of every class. ``geometry`` (the model's crop, from its data config:
    ``ImageGeometry.from_config``) turns folder images of another size into the input size as serving does.
    """
    c, h, w = input_size
    size = (h, w)
    if in_memory is None:
        in_memory = max(h, w) <= 64
    mode = 'L' if c == 1 else 'RGB'
    named = named_data_set(data)
    notes: List[str] = []
    warnings: List[str] = []
    if named == 'fashion_mnist':
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
        if named == 'cifar10':
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
        classes, train, val, test, warnings = _image_folder(root, size, mode, in_memory, only, geometry)
        in_chans, source = c, str(root)
    split_record = None
    if val is None and holdout == 'stratified':
        if val_size is None:
            val_size = max(len(classes), round(len(train) / 10))
        if val_size > 0:
            tr_idx, va_idx, split_record = _random_holdout(train, val_size, split_seed, classes)
            val, train = train.subset(va_idx), train.subset(tr_idx)
            notes.append(f'validation: {len(val)} training images held out at random (stratified, at least one '
                         f'per class, split seed {split_seed}): '
                         + ', '.join(f'{c} {k}' for c, k in split_record['val_per_class'].items()))
    elif val is None:
        if val_size is None:
            val_size = max(len(classes), (len(train) // 10) // len(classes) * len(classes))
        if val_size > 0:
            tr_idx, va_idx = _stratified_holdout(train.labels, val_size)
            val = train.subset(va_idx)
            train = train.subset(tr_idx)
            notes.append(f'validation: last {val_size // len(classes)} training images of each class '
                         f'({val_size} in all) held out')
    return DataSplits(name=name, classes=classes, train=train, val=val, test=test, in_chans=in_chans,
                      source=source, notes=notes, split_record=split_record, warnings=warnings)
