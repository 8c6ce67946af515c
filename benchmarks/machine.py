"""What every benchmark table states about the machine: the CPU with the instruction sets that set the pace,
and whether other work had the CPU while it ran.

The CPU's model name alone hides what matters here (one "AMD EPYC" has AVX-512 VNNI and native bf16, another
only AVX2; two EPYCs with the same flags, family 25 and 26, differ ~1.8x per epoch), so :func:`describe` names
the flags and the family and model numbers. :func:`cpu_busy` samples ``/proc/stat`` over a short window in
which the benchmark itself is idle: unlike the load average, which lags by a minute and counts the benchmark's
own previous phase, it says whether *other* processes had the CPU just then.
"""
from __future__ import annotations

import os
import platform
import time
from typing import List, Optional, Tuple

FLAGS = ('avx2', 'avx512f', 'avx512_vnni', 'avx512_bf16', 'amx_int8', 'amx_bf16')
BUSY = 0.15  # share of all cores used by others above which a table says its numbers are noisy


def cpu_name() -> str:
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_family_model() -> Optional[str]:
    """``family 26 model 2``: two CPUs of one name and the same flags still differ (Zen 4 and Zen 5 EPYCs)."""
    fields = {}
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                key, _, value = line.partition(':')
                if key.strip() in ('cpu family', 'model'):
                    fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return f"family {fields['cpu family']} model {fields['model']}" if len(fields) == 2 else None


def cpu_flags() -> List[str]:
    try:
        with open('/proc/cpuinfo') as f:
            flags = next(line for line in f if line.startswith('flags')).split(':', 1)[1].split()
    except (OSError, StopIteration):
        return []
    return [f for f in FLAGS if f in flags]


def describe() -> str:
    """``AMD EPYC (avx2, avx512f, avx512_vnni, avx512_bf16; family 26 model 2), 2 cores``."""
    details = '; '.join(x for x in (', '.join(cpu_flags()), cpu_family_model()) if x)
    return f'{cpu_name()}{f" ({details})" if details else ""}, {os.cpu_count()} cores'


def _jiffies() -> Optional[Tuple[int, int]]:
    try:
        with open('/proc/stat') as f:
            v = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = v[3] + (v[4] if len(v) > 4 else 0)  # idle + iowait
    return sum(v[:8]) - idle, sum(v[:8])


def cpu_busy(seconds: float = 1.0) -> Optional[float]:
    """Share of all cores busy over the next ``seconds`` (0..1); call it while the benchmark is idle."""
    a = _jiffies()
    time.sleep(seconds)
    b = _jiffies()
    if a is None or b is None or b[1] == a[1]:
        return None
    return (b[0] - a[0]) / (b[1] - a[1])


def busy_note(before: Optional[float], after: Optional[float]) -> str:
    """One sentence for a results table: how busy the machine was around the run, and whether that matters."""
    if before is None or after is None:
        return 'CPU use by other processes: unknown (no /proc/stat).'
    text = f'CPU busy with other processes just before / after the run: {before:.0%} / {after:.0%} of all cores'
    if max(before, after) > BUSY:
        return text + ': **the machine was shared, so these timings are noisy; rerun on an idle machine**.'
    return text + ' (idle).'
