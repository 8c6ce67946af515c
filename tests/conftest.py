"""Shared pytest setup: modest torch threading and the CIFAR-10 image folders from ../shared."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]

# One intra-op thread: the suite is many small ops (where threading costs more than it gains) and
# it shares 2 cores with whatever else runs (a background training job, the other pytest worker).
torch.set_num_threads(int(os.environ.get('SDZOO_TEST_THREADS', '1')))


def _cifar10_dir() -> Path:
    base = os.environ.get('SDZOO_DATA')
    base = Path(base) if base else REPO_ROOT.parent / 'shared' / 'datasets'
    return base / 'cifar10'


@pytest.fixture(scope='session')
def repo_root() -> Path:
    """The repository checkout the tests run from."""
    return REPO_ROOT


@pytest.fixture(scope='session')
def cifar_root() -> Path:
    """CIFAR-10 image folders (``train/<class>/*.jpg``, ``test/<class>/*.jpg``).

    ``$SDZOO_DATA/cifar10`` if ``SDZOO_DATA`` is set, else ``<repo>/../shared/datasets/cifar10``;
    the test is skipped when neither is there.
    """
    root = _cifar10_dir()
    if not ((root / 'train').is_dir() and (root / 'test').is_dir()):
        pytest.skip(f'CIFAR-10 image folders not found at {root} (set SDZOO_DATA to a folder containing cifar10/)')
    return root


@pytest.fixture(scope='session')
def fashion_mnist_root() -> Path:
    """The Fashion-MNIST IDX files (Debian ``dataset-fashion-mnist``, or ``$SDZOO_FASHION_MNIST``); the test is
    skipped when they are not installed."""
    from sdzoo.data import find_fashion_mnist
    try:
        return find_fashion_mnist()
    except FileNotFoundError as e:
        pytest.skip(str(e).splitlines()[0])


@pytest.fixture(scope='session')
def onnx_file(tmp_path_factory):
    """A real sd_resnet20 ONNX export (random init) with CIFAR-10 labels, shared by the serving tests."""
    from serve_support import CIFAR10_LABELS, export_onnx
    return export_onnx(tmp_path_factory.mktemp('onnx') / 'r20.onnx', labels=CIFAR10_LABELS)


@pytest.fixture(scope='session')
def shipped_r110_repository(tmp_path_factory, cifar_root) -> Path:
    """The README demo's first step on the shipped weights: `sdzoo export sd_resnet110 --pretrained
    --repository DIR` (validated against PyTorch on held-out CIFAR-10 images). Skipped where not shipped."""
    from sdzoo.cli import main
    from sdzoo.hub.weights import find_weights_folder
    if find_weights_folder('sd_resnet110.sd_cifar10') is None:
        pytest.skip('sd_resnet110.sd_cifar10 is not shipped in this checkout')
    root = tmp_path_factory.mktemp('shipped-repository')
    assert main(['export', 'sd_resnet110', '--pretrained', '--repository', str(root),
                 '--data', str(cifar_root), '--val-images', '20']) == 0
    return root


@pytest.fixture(scope='session')
def cifar_subset(cifar_root, tmp_path_factory) -> Callable[[int, int], Path]:
    """Copies the first N train / M test CIFAR-10 JPEGs of each class into a fresh ``<tmp>/cifar10`` (named like
    the real one: cards name data sets by folder name); each call makes a new copy."""
    import shutil

    def copy(train: int, test: int) -> Path:
        root = tmp_path_factory.mktemp('cifar-subset') / 'cifar10'
        for split, n in (('train', train), ('test', test)):
            for cls_dir in sorted((cifar_root / split).iterdir()):
                dst = root / split / cls_dir.name
                dst.mkdir(parents=True)
                for f in sorted(cls_dir.glob('*.jpg'))[:n]:
                    shutil.copy(f, dst / f.name)
        return root
    return copy


@pytest.fixture(scope='session')
def tiny_cifar(cifar_subset) -> Path:
    """A real image-folder copy of CIFAR-10 (JPEG q75): 24 train / 6 test images per class."""
    return cifar_subset(24, 6)


def make_photo_folder(cifar_root: Path, root: Path, classes=('cat', 'dog', 'ship'), train: int = 16,
                      test: int = 10) -> Path:
    """A folder as a user's camera fills it, from real CIFAR-10 JPEGs, made as benchmarks/photo_folder.py makes its
    folders: each picture on a non-square canvas of one of four sizes (landscape and portrait), saved as .JPG, RGBA
    .png, grayscale .jpeg or CMYK .jpg in turn, a .DS_Store beside them, and two .HEIC pictures and a .MOV
    clip (which sdzoo cannot read) in the first class's train/ folder."""
    import importlib.util
    spec = importlib.util.spec_from_file_location('bench_photo_folder', REPO_ROOT / 'benchmarks' / 'photo_folder.py')
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    for split, n in (('train', train), ('test', test)):
        for c in classes:
            d = root / split / c
            d.mkdir(parents=True)
            for i, f in enumerate(sorted((cifar_root / split / c).glob('*.jpg'))[:n]):
                bench.photograph(f, d, i + len(c))
            (d / '.DS_Store').write_bytes(b'\x00\x01not an image')
    for name in ('IMG_0100.HEIC', 'IMG_0101.HEIC', 'IMG_0102.MOV'):  # an iPhone's defaults: sdzoo cannot read them
        (root / 'train' / classes[0] / name).write_bytes(b'\x00\x00\x00\x18ftyp')
    return root


@pytest.fixture(scope='session')
def photo_folder(cifar_root, tmp_path_factory) -> Path:
    """``make_photo_folder``: cat / dog / ship, 16 train and 10 test pictures each."""
    return make_photo_folder(cifar_root, tmp_path_factory.mktemp('photos') / 'photos')


@pytest.fixture(scope='session')
def sdzoo_script() -> str:
    """The installed ``sdzoo`` console script (tests that need how users start it, not ``main()``)."""
    import shutil
    import sys
    script = Path(sys.executable).with_name('sdzoo')
    found = str(script) if script.exists() else shutil.which('sdzoo')
    if found is None:
        pytest.fail('the sdzoo console script is not installed (pip install -e .)')
    return found
