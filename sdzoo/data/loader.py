"""Resumable loaders: every batch's order and augmentation is a pure function of (seed, epoch, batch).

That makes ``--resume`` exact without saving sampler or augmentation RNG state, and makes the
DDP shards (rank r takes every world-th index of the same permutation) agree across processes.
"""
from __future__ import annotations

from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from .images import upright
from .sources import Split

__all__ = ['epoch_order', 'batch_bounds', 'channel_stats', 'TensorLoader', 'StreamLoader', 'create_loader']

Batch = Tuple[torch.Tensor, torch.Tensor]


def _gen(*keys: int) -> torch.Generator:
    g = torch.Generator()
    seed = 0
    for k in keys:  # simple mix; distinct (seed, epoch, batch) -> distinct streams
        seed = (seed * 1_000_003 + int(k) + 0x9E3779B1) % (2 ** 63 - 1)
    g.manual_seed(seed)
    return g


def _rank_key(rank: int, world: int) -> tuple:
    """Augmentation keys of a DDP rank: without the rank every rank would crop and flip its j-th sample
    alike. Empty for a single process, so its streams (and resumed single-process runs) stay as they were."""
    return (rank,) if world > 1 else ()


def batch_bounds(n: int, batch_size: int, drop_last: bool, even: bool) -> list:
    """(start, stop) of each batch of an ``n``-sample epoch. ``drop_last``: full batches only; ``even``: every
    sample in ``ceil(n / batch_size)`` batches of near-equal size (a 162-image epoch at 16 is 11 batches of
    14-15, not 10 of 16 and a 2-image tail whose BatchNorm statistics and gradient are noise); else full
    batches and a shorter last one (evaluation)."""
    if drop_last:
        return [(i * batch_size, (i + 1) * batch_size) for i in range(n // batch_size)]
    nb = -(-n // batch_size)
    if even:
        return [(i * n // nb, (i + 1) * n // nb) for i in range(nb)]
    return [(i * batch_size, min(n, (i + 1) * batch_size)) for i in range(nb)]


def epoch_order(n: int, seed: int, epoch: int, shuffle: bool = True, rank: int = 0, world: int = 1) -> torch.Tensor:
    """Sample order of one epoch for one rank (padded to a multiple of ``world`` like DistributedSampler)."""
    order = torch.randperm(n, generator=_gen(seed, epoch, 17)) if shuffle else torch.arange(n)
    if world > 1:
        pad = (-n) % world
        if pad:
            order = torch.cat([order, order[:pad]])
        order = order[rank::world]
    return order


class TensorLoader:
    """Batches from decoded uint8 images with the CIFAR recipe done on whole batches.

    Augmentation (``pad``-pixel zero padding + random crop + horizontal flip, as in the paper) runs on
    the batch tensor, which on a 2-core CPU is far cheaper than per-image PIL transforms.
    """

    def __init__(
            self,
            split: Split,
            batch_size: int,
            mean: Sequence[float],
            std: Sequence[float],
            train: bool = False,
            pad: int = 4,
            flip: bool = True,
            seed: int = 0,
            drop_last: Optional[bool] = None,
            channels_last: bool = False,
            rank: int = 0,
            world: int = 1,
    ):
        """``drop_last`` (default: ``train``): full batches only; a training loader without it makes
        near-equal batches (:func:`batch_bounds`)."""
        if split.images is None:
            raise ValueError('TensorLoader needs a split decoded into memory')
        self.split, self.batch_size, self.train = split, batch_size, train
        self.pad, self.flip, self.seed = pad, flip, seed
        self.drop_last = train if drop_last is None else drop_last
        self.channels_last = channels_last
        self.rank, self.world = rank, world
        c = split.images.shape[-1]
        mean, std = channel_stats(mean, std, c)
        self.mean = torch.tensor(mean).view(1, c, 1, 1) * 255
        self.std = torch.tensor(std).view(1, c, 1, 1) * 255

    @property
    def num_samples(self) -> int:
        n = len(self.split)
        return -(-n // self.world) if self.world > 1 else n

    def __len__(self) -> int:
        n = self.num_samples
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def bounds(self) -> list:
        return batch_bounds(self.num_samples, self.batch_size, self.drop_last, even=self.train)

    def _augment(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        b, c, h, w = x.shape
        if self.pad:
            xp = F.pad(x, (self.pad,) * 4)
            oy = torch.randint(0, 2 * self.pad + 1, (b,), generator=g)
            ox = torch.randint(0, 2 * self.pad + 1, (b,), generator=g)
            rows = (oy[:, None] + torch.arange(h))[:, None, :, None]
            cols = (ox[:, None] + torch.arange(w))[:, None, None, :]
            x = xp[torch.arange(b)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols]
        if self.flip:
            flip = torch.rand(b, generator=g) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(3), x)
        return x

    def iter_epoch(self, epoch: int, start_batch: int = 0) -> Iterator[Batch]:
        order = epoch_order(len(self.split), self.seed, epoch, self.train, self.rank, self.world)
        bounds = self.bounds()
        for i in range(start_batch, len(bounds)):
            idx = order[bounds[i][0]:bounds[i][1]]
            x = self.split.images[idx].permute(0, 3, 1, 2).float()
            if self.train:
                x = self._augment(x, _gen(self.seed, epoch, i, 101, *_rank_key(self.rank, self.world)))
            x = (x - self.mean) / self.std
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, self.split.labels[idx]

    def __iter__(self) -> Iterator[Batch]:
        return self.iter_epoch(0)


class _FileDataset(torch.utils.data.Dataset):
    def __init__(self, split: Split, transform: Callable, in_chans: int):
        self.split, self.transform, self.mode = split, transform, 'L' if in_chans == 1 else 'RGB'

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int):
        from PIL import Image
        path = self.split.files[i]
        try:
            with Image.open(path) as img:
                img = upright(img).convert(self.mode)
        except Exception as e:
            raise ValueError(f'cannot read image {path}: {e}') from e
        return self.transform(img), int(self.split.labels[i])


class _ListSampler(torch.utils.data.Sampler):
    def __init__(self, indices: torch.Tensor):
        self.indices = indices

    def __iter__(self):
        return iter(self.indices.tolist())

    def __len__(self) -> int:
        return len(self.indices)


class StreamLoader:
    """Image files through timm's transforms and a DataLoader, with the same resumable order."""

    def __init__(self, split: Split, batch_size: int, transform: Callable, in_chans: int = 3,
                 train: bool = False, seed: int = 0, workers: int = 2, channels_last: bool = False,
                 rank: int = 0, world: int = 1, drop_last: Optional[bool] = None):
        self.dataset = _FileDataset(split, transform, in_chans)
        self.split, self.batch_size, self.train, self.seed = split, batch_size, train, seed
        self.workers, self.channels_last, self.rank, self.world = workers, channels_last, rank, world
        self.drop_last = train if drop_last is None else drop_last

    def __len__(self) -> int:
        n = -(-len(self.split) // self.world)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def iter_epoch(self, epoch: int, start_batch: int = 0) -> Iterator[Batch]:
        order = epoch_order(len(self.split), self.seed, epoch, self.train, self.rank, self.world)
        bounds = batch_bounds(len(order), self.batch_size, self.drop_last, even=self.train)[start_batch:]
        batches = [order[a:b].tolist() for a, b in bounds]
        dl = torch.utils.data.DataLoader(
            self.dataset, batch_sampler=batches, num_workers=self.workers, persistent_workers=False,
            # seeds the workers' augmentation
            generator=_gen(self.seed, epoch, start_batch, 7, *_rank_key(self.rank, self.world)))
        for x, y in dl:
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, y

    def __iter__(self) -> Iterator[Batch]:
        return self.iter_epoch(0)


def channel_stats(mean: Sequence[float], std: Sequence[float], channels: int) -> Tuple[List[float], List[float]]:
    """Normalization statistics for ``channels`` input channels: as given when they match, else timm's convention
    for a first conv adapted to other channels (``in_chans=1``: the mean of the RGB statistics, repeated). Training,
    validation, export and serving all normalize through this one rule, so a 1-channel model meets at deployment
    the inputs it was trained on."""
    mean, std = [float(v) for v in mean], [float(v) for v in std]
    if len(mean) == channels and len(std) == channels:
        return mean, std
    return [sum(mean) / len(mean)] * channels, [sum(std) / len(std)] * channels


def create_loader(split: Split, batch_size: int, data_cfg: dict, train: bool, seed: int = 0,
                  cifar_aug: bool = True, workers: int = 2, channels_last: bool = False,
                  rank: int = 0, world: int = 1, in_chans: int = 3, drop_last: Optional[bool] = None):
    """In-memory loader for decoded splits, streaming loader (timm transforms) otherwise."""
    if split.images is not None:
        return TensorLoader(split, batch_size, data_cfg['mean'], data_cfg['std'], train=train,
                            pad=4 if (train and cifar_aug) else 0, flip=train, seed=seed,
                            channels_last=channels_last, rank=rank, world=world, drop_last=drop_last)
    from timm.data import create_transform
    mean, std = channel_stats(data_cfg['mean'], data_cfg['std'], in_chans)
    transform = create_transform(**dict(data_cfg, mean=tuple(mean), std=tuple(std)), is_training=train)
    return StreamLoader(split, batch_size, transform, in_chans=in_chans, train=train, seed=seed,
                        workers=workers, channels_last=channels_last, rank=rank, world=world, drop_last=drop_last)
