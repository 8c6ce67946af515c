"""Which machine a stretch of training ran on, in words precise enough to compare epoch times by.

The CPU's model name alone hides what sets the pace. One "AMD EPYC" has only AVX2, another AVX-512 with native
bf16; and two with the same name and the same flags differ again: the same sd_resnet110 constant-depth epochs
took 330-350 s on a family 25 EPYC (Zen 4) and about 185 s on a family 26 one (Zen 5, full-width AVX-512;
runs/sd_resnet110-cifar10-nosd/metrics.csv). So the label names the kernels that ran and the CPU's
family and model numbers from ``/proc/cpuinfo``.
"""
from __future__ import annotations

import platform
from typing import Dict

import torch

__all__ = ['cpu_info', 'cpu_has_bf16', 'cpu_has_vnni', 'hardware_string']


def cpu_info() -> Dict[str, str]:
    """The first processor's ``/proc/cpuinfo`` fields ('model name', 'cpu family', 'model', …); empty where absent."""
    info: Dict[str, str] = {}
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if not line.strip():
                    break  # end of the first processor's block
                key, _, value = line.partition(':')
                info.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return info


def cpu_has_vnni() -> bool:
    """x86 8-bit dot products without intermediate saturation (AVX512-VNNI or AVX-VNNI); True off x86, where the
    question does not arise. AVX2-only x86 CPUs saturate u8 x s8 products in 16 bits (onnxruntime's and OpenVINO's
    documentation): INT8 weights must then use 7 bits (``reduce_range``)."""
    flags = set(cpu_info().get('flags', '').split())
    if not flags or not ({'avx2', 'sse4_2'} & flags):
        return True
    return bool({'avx512_vnni', 'avx_vnni', 'amx_int8'} & flags)


def cpu_has_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:
        return False


def hardware_string(device: torch.device) -> str:
    """``AMD EPYC (AVX512, native bf16; family 26 model 2), 2 threads``: a ``sessions.json`` label."""
    if device.type == 'cuda':
        return torch.cuda.get_device_name(device)
    info = cpu_info()
    cpu = info.get('model name') or platform.processor() or platform.machine()
    details = [torch.backends.cpu.get_cpu_capability() + (', native bf16' if cpu_has_bf16() else '')]
    if 'cpu family' in info and 'model' in info:
        details.append(f"family {info['cpu family']} model {info['model']}")
    n = torch.get_num_threads()
    return f'{cpu} ({"; ".join(details)}), {n} thread{"s" if n != 1 else ""}'
