"""Keep freed memory in the process: glibc's defaults make CPU training of 224-px models fault every step.

glibc serves every block above its mmap threshold (at most 32 MiB) with a fresh ``mmap`` and unmaps it on
``free``, and trims freed memory at the top of the heap back to the OS. A training step frees and re-allocates
the same activations every step, so the kernel faults in and zeroes them again each time. Measured on a 2-core
AMD EPYC (family 26 model 2), bf16 channels-last, batch 32, 224x224 (``python benchmarks/malloc.py``,
benchmarks/results/malloc.md): timm's ConvNeXt-T took 479,016 page faults per step and 4231 ms with the
defaults, 50,488 and 2559 ms (1.65x) with ``reuse``; ResNet-50 257k -> 19k faults, 1.04x (converted: 1.23x);
ViT-S barely allocates above the threshold (0.95-0.98x, within the noise of two rounds). CIFAR-size runs
allocate below the threshold and barely fault either way. ``reuse`` turns large-block mmap off and trims only
above 2 GiB, as tcmalloc or jemalloc would keep memory, without an LD_PRELOAD: resident memory stays near the
step's peak instead of dropping between steps.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import platform
from typing import Optional

__all__ = ['MALLOC_MODES', 'configure_malloc', 'malloc_setting']

MALLOC_MODES = ('reuse', 'system')
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc <malloc.h>
_TRIM_ABOVE = (1 << 31) - 1  # 2 GiB, the largest value mallopt's int takes
_setting = 'system defaults'


def _glibc() -> Optional[ctypes.CDLL]:
    if platform.system() != 'Linux' or platform.libc_ver()[0] != 'glibc':
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6')
    except OSError:
        return None
    return libc if hasattr(libc, 'mallopt') else None


def configure_malloc(mode: str = 'reuse') -> str:
    """Apply ``mode`` to this process's C allocator (before the first large allocations) and say what it set."""
    global _setting
    if mode not in MALLOC_MODES:
        raise ValueError(f'unknown malloc mode {mode!r}; expected one of {MALLOC_MODES}')
    if mode == 'system':
        _setting = 'system defaults'
        return _setting
    libc = _glibc()
    if libc is None:
        _setting = 'system defaults (reuse needs glibc)'
    elif all(libc.mallopt(k, v) == 1 for k, v in ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _TRIM_ABOVE))):
        _setting = 'reuse (glibc: no mmap for large blocks, trim above 2 GiB)'
    else:
        _setting = 'system defaults (glibc refused mallopt)'
    return _setting


def malloc_setting() -> str:
    """What :func:`configure_malloc` last set in this process (a ``sessions.json`` field)."""
    return _setting
