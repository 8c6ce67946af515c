"""benchmarks/machine.py: what every results table says about the CPU and about other work on it."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

PATH = Path(__file__).resolve().parents[1] / 'benchmarks' / 'machine.py'


@pytest.fixture(scope='module')
def machine():
    spec = importlib.util.spec_from_file_location('bench_machine', PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(not Path('/proc/stat').exists(), reason='needs /proc/stat')
def test_cpu_busy_sees_another_process_spinning(machine):
    spinner = subprocess.Popen([sys.executable, '-c', 'import time\nt = time.time() + 5\nwhile time.time() < t: pass'])
    try:
        busy = machine.cpu_busy(1.0)
    finally:
        spinner.kill()
        spinner.wait()
    # one spinning process is one whole core: at least 1 / cores of the machine, less a margin for sampling
    import os
    assert busy is not None and busy >= 0.8 / os.cpu_count(), busy


def test_busy_note_says_shared_only_above_the_threshold(machine):
    assert machine.busy_note(0.02, 0.03).endswith('(idle).')
    assert 'shared' in machine.busy_note(0.02, 0.60) and '2% / 60%' in machine.busy_note(0.02, 0.60)
    assert 'unknown' in machine.busy_note(None, 0.1)


def test_describe_names_the_cpu_and_its_cores(machine):
    import os
    text = machine.describe()
    assert text.startswith(machine.cpu_name()) and text.endswith(f'{os.cpu_count()} cores')
    for flag in machine.cpu_flags():
        assert flag in text
    # and the family / model numbers, which tell two CPUs of one name and the same flags apart
    fm = machine.cpu_family_model()
    cpuinfo = Path('/proc/cpuinfo').read_text() if Path('/proc/cpuinfo').exists() else ''
    if 'cpu family' in cpuinfo:
        family = next(line for line in cpuinfo.splitlines() if line.startswith('cpu family')).split(':')[1].strip()
        assert fm.startswith(f'family {family} model ') and fm in text, (fm, text)
    else:
        assert fm is None
