"""GPU honesty on a CPU machine: the real reason a GPU provider is not used is surfaced, require_gpu raises.

The loader check runs on a real shared library whose dependency is missing (built here with the C
compiler), the way onnxruntime-gpu's CUDA provider fails on a machine without libcublasLt.
"""
from __future__ import annotations

import shutil
import subprocess

import onnxruntime as ort
import pytest

from sdzoo.runtime import (GPU_PROVIDERS, OrtModel, ProviderUnavailableError, gpu_provider_problems,
                           library_problem, preload_gpu_libraries)

HAS_GPU_BUILD = any(p in GPU_PROVIDERS for p in ort.get_available_providers())


@pytest.mark.skipif(HAS_GPU_BUILD, reason='onnxruntime-gpu is installed here')
def test_cpu_wheel_reasons_name_the_package_and_the_fix():
    problems = gpu_provider_problems()
    assert sorted(problems) == sorted(GPU_PROVIDERS)
    for reason in problems.values():
        assert 'onnxruntime ' + ort.__version__ in reason and 'onnxruntime-gpu' in reason
    assert preload_gpu_libraries().startswith('skipped')  # nothing to preload for the CPU wheel


@pytest.mark.skipif(HAS_GPU_BUILD, reason='onnxruntime-gpu is installed here')
def test_require_gpu_raises_with_the_reason_and_fallback_runs(onnx_file):
    with pytest.raises(ProviderUnavailableError, match='onnxruntime-gpu'):
        OrtModel(onnx_file, require_gpu=True, allow_fallback=False)
    m = OrtModel(onnx_file, require_gpu=True, allow_fallback=True)
    assert m.provider == 'CPUExecutionProvider'


def test_predict_require_gpu_is_one_line_error(onnx_file, tmp_path, capsys):
    if HAS_GPU_BUILD and not gpu_provider_problems():
        pytest.skip('a working GPU is here')
    from PIL import Image
    from sdzoo.cli import main
    img = tmp_path / 'x.png'
    Image.new('RGB', (32, 32), (120, 30, 200)).save(img)
    with pytest.raises(SystemExit) as e:
        main(['predict', str(onnx_file), str(img), '--require-gpu'])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and 'GPU' in err[0]


@pytest.mark.skipif(shutil.which('cc') is None, reason='no C compiler to build the test libraries')
def test_library_problem_reports_the_missing_dependency(tmp_path):
    """A provider library linked against a library that is gone: the loader's message names it."""
    (tmp_path / 'dep.c').write_text('int dep(void) { return 1; }\n')
    (tmp_path / 'prov.c').write_text('int dep(void);\nint prov(void) { return dep(); }\n')
    subprocess.run(['cc', '-shared', '-fPIC', '-o', tmp_path / 'libfakecublas.so.13', tmp_path / 'dep.c',
                    '-Wl,-soname,libfakecublas.so.13'], check=True)
    subprocess.run(['cc', '-shared', '-fPIC', '-o', tmp_path / 'libprov.so', tmp_path / 'prov.c',
                    tmp_path / 'libfakecublas.so.13'], check=True)
    (tmp_path / 'libfakecublas.so.13').unlink()
    reason = library_problem(tmp_path / 'libprov.so')
    assert reason and 'libfakecublas.so.13' in reason
    assert 'does not exist' in library_problem(tmp_path / 'absent.so')
