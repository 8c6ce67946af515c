"""timm conformance: run timm's own model test suite (``tests/test_models.py``) on the sd_* models.

"timm-compatible" measured by timm's yardstick: the tests come from a timm source tree of the
installed version and run unmodified against every registered ``sd_*`` model (the pretrained tags
too, where timm's tests list them). What is not expected to pass is excluded in one place,
``EXCLUSIONS`` below, each with its reason; everything else must pass.

    pip download timm==$(python -c 'import timm; print(timm.__version__)') --no-deps --no-binary :all: -d /tmp/timm-src
    python benchmarks/timm_conformance.py /tmp/timm-src/timm-1.0.31.tar.gz
    python benchmarks/timm_conformance.py path/to/pytorch-image-models           # a source checkout
    python benchmarks/timm_conformance.py path/to/repo.git --rev v1.0.31          # a git dir (no work tree)
    python benchmarks/timm_conformance.py SRC --models 'sd_resnet20*' 'sd_vit_lite*'   # a subset

The source may be a checkout, an sdist (``timm-X.tar.gz``, it ships ``tests/``) or a git directory
(``--rev``, default the tag ``v<installed timm version>``); its ``timm/version.py`` must match the
installed timm. Prints a markdown summary (passed / failed / excluded per timm test) and writes it to
``--out`` (default ``benchmarks/results/timm_conformance.md``); exits 1 if any test failed.

The same file is the pytest plugin (``-p timm_conformance``) that selects the sd_* items, applies
the exclusions and records the outcomes. pytest-timeout is switched off: timm's per-test limits are
sized for CI runners, and sd_resnet1202 takes longer on a shared 2-core machine.
"""
from __future__ import annotations

import argparse
import datetime
import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_name  # noqa: E402  (benchmarks/machine.py)

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / 'results' / 'timm_conformance.md'
NON_STD_MODULE = 'test_sdzoo_non_std.py'


@dataclass(frozen=True)
class Exclusion:
    tests: Sequence[str]   # timm test function names (fnmatch patterns)
    models: Sequence[str]  # model names, with pretrained tag where the test lists them (fnmatch)
    reason: str


# The one place where timm tests are not expected to pass for sd_* models, and why.
EXCLUSIONS = (
    Exclusion(
        ('test_model_forward_torchscript', 'test_model_forward_fx_torchscript'), ('sd_*',),
        'TorchScript is not supported: a block hands its residual branch to the SD unit as a callable, and '
        'TorchScript is deprecated in PyTorch 2.x; torch.export, torch.jit.trace and ONNX are supported '
        '(tests/test_models.py, tests/test_export.py)'),
    Exclusion(
        ('test_model_backward', 'test_model_backward_fx'), ('sd_*',),
        'by design: with the default drop_path_rate (0.5) a train-mode step does not run dropped blocks, so '
        'their parameters get no gradient; with drop_path_rate=0 every parameter gets one '
        '(tests/test_timm_conformance.py::test_every_parameter_gets_a_gradient_without_drop_path)'),
    Exclusion(
        ('test_prune_intermediate_layers_contract',), ('sd_*',),
        'by design, as test_model_backward: after its eval-mode checks of the pruned feature taps it runs a '
        'train-mode backward at the default drop_path_rate and requires a gradient for every parameter '
        '(timm marks this test slow and leaves it out of its own CI)'),
    Exclusion(
        ('test_model_default_cfgs',), ('sd_vit_*',),
        'a ViT is a non-standard model for timm (token features, no spatial pool_size): timm checks its own '
        "vit_* with test_model_default_cfgs_non_std (selected by name, 'vit_*'), which runs here for sd_vit_*"),
)
HUB_REASON = ("timm's own weights (hf_hub_id 'timm/...'), downloaded from the Hugging Face Hub: not in the local "
              'cache and no Hub access here (--include-hub tries anyway)')
HUB_TESTS = ('test_model_load_pretrained', 'test_model_features_pretrained')


def exclusion_reason(test: str, model: str, include_hub: bool = False) -> Optional[str]:
    """Why ``test`` is not run for ``model`` (None: it must pass)."""
    for ex in EXCLUSIONS:
        if any(fnmatch.fnmatch(test, t) for t in ex.tests) and any(fnmatch.fnmatch(model, m) for m in ex.models):
            return ex.reason
    if test in HUB_TESTS and not include_hub and _hub_only(model):
        return HUB_REASON
    return None


def _hub_only(model: str) -> bool:
    """A pretrained tag whose weights are timm's, on the Hub only, and not in the local HF cache."""
    from huggingface_hub import try_to_load_from_cache
    from timm.models import get_pretrained_cfg
    cfg = get_pretrained_cfg(model)
    hub_id = getattr(cfg, 'hf_hub_id', None) or ''
    if not hub_id.startswith('timm/'):
        return False
    return not any(isinstance(try_to_load_from_cache(hub_id, f), str)
                   for f in ('model.safetensors', 'pytorch_model.bin'))


# ---------------------------------------------------------------------------------------------- plugin

def pytest_addoption(parser) -> None:
    group = parser.getgroup('sdzoo timm conformance')
    group.addoption('--sdzoo-models', nargs='+', default=['sd_*'], help='model name patterns to test')
    group.addoption('--sdzoo-report', default=None, help='write the outcomes as JSON here')
    group.addoption('--sdzoo-include-hub', action='store_true', help='do not exclude Hub-only pretrained tags')


def _model_of(item) -> Optional[str]:
    callspec = getattr(item, 'callspec', None)
    name = callspec.params.get('model_name') if callspec else None
    return name if isinstance(name, str) else None


def pytest_collection_modifyitems(config, items) -> None:
    patterns = config.getoption('--sdzoo-models')
    include_hub = config.getoption('--sdzoo-include-hub')
    keep, drop = [], []
    for item in items:
        model = _model_of(item)
        if model is None or not any(fnmatch.fnmatch(model.split('.')[0], p) for p in patterns):
            drop.append(item)
            continue
        reason = exclusion_reason(item.originalname, model, include_hub)
        if reason:
            item.add_marker(pytest.mark.skip(reason=f'excluded: {reason}'))
        keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
    items[:] = keep


def pytest_collection_finish(session) -> None:
    # after every deselection (ours and -k): the items that will run
    session.config._sdzoo_outcomes = {
        item.nodeid: dict(test=item.originalname, model=_model_of(item)) for item in session.items}


def pytest_runtest_logreport(report) -> None:
    outcomes = getattr(_CONFIG, '_sdzoo_outcomes', None) if _CONFIG else None
    if outcomes is None or report.nodeid not in outcomes:
        return
    rec = outcomes[report.nodeid]
    if report.skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        reason = reason.removeprefix('Skipped: ')
        rec.update(outcome='excluded' if reason.startswith('excluded: ') else 'skipped', message=reason)
    elif report.failed:
        rec.update(outcome='failed', message=_first_line(report))
    elif report.when == 'call' and rec.get('outcome') is None:
        rec.update(outcome='passed')


_CONFIG = None


def pytest_configure(config) -> None:
    global _CONFIG
    _CONFIG = config


def pytest_sessionfinish(session) -> None:
    path = session.config.getoption('--sdzoo-report')
    if path:
        Path(path).write_text(json.dumps(getattr(session.config, '_sdzoo_outcomes', {}), indent=1))


def _first_line(report) -> str:
    crash = getattr(report.longrepr, 'reprcrash', None)
    text = crash.message if crash is not None else str(report.longrepr)
    return text.strip().splitlines()[0][:200] if text.strip() else 'failed'


# ------------------------------------------------------------------------------------- test sources

NON_STD_SOURCE = '''"""Generated by sdzoo's benchmarks/timm_conformance.py: timm's own non-standard cfg test, applied to
sd_vit_* as timm applies it to its vit_* models (NON_STD_FILTERS selects them by name)."""
import pytest
from timm import list_models

from . import test_models as _timm

cfg_device = _timm.cfg_device


@pytest.mark.parametrize('model_name', list_models('sd_vit_*', include_tags=True))
@pytest.mark.parametrize('batch_size', [1])
def test_model_default_cfgs_non_std(model_name, batch_size, cfg_device):
    _timm.test_model_default_cfgs_non_std(model_name, batch_size, cfg_device)
'''


class SourceError(Exception):
    pass


def materialize(source: Path, rev: Optional[str], dest: Path) -> str:
    """Copy timm's tests/ (and pyproject.toml, for the pytest markers) into ``dest``; return its version."""
    if source.is_dir() and (source / 'tests' / 'test_models.py').is_file():
        shutil.copytree(source / 'tests', dest / 'tests')
        _copy_if(source / 'pyproject.toml', dest / 'pyproject.toml')
        version_py = (source / 'timm' / 'version.py').read_text() if (source / 'timm' / 'version.py').is_file() else ''
    elif source.is_file() and source.name.endswith(('.tar.gz', '.tgz')):
        version_py = _extract_sdist(source, dest)
    elif source.is_dir() and _is_git_dir(source):
        version_py = _extract_git(source, rev, dest)
    else:
        raise SourceError(f'{source} is not a timm source checkout (tests/test_models.py), sdist (.tar.gz) or git dir')
    if not (dest / 'tests' / 'test_models.py').is_file():
        raise SourceError(f'{source} has no tests/test_models.py')
    match = re.search(r"__version__\s*=\s*['\"]([^'\"]+)['\"]", version_py)
    if not match:
        raise SourceError(f'{source} has no timm/version.py with a __version__')
    (dest / 'tests' / NON_STD_MODULE).write_text(NON_STD_SOURCE)
    return match.group(1)


def _copy_if(src: Path, dst: Path) -> None:
    if src.is_file():
        shutil.copy(src, dst)


def _extract_sdist(archive: Path, dest: Path) -> str:
    version_py = ''
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            parts = Path(member.name).parts
            rel = Path(*parts[1:]) if len(parts) > 1 else None
            if rel is None or not member.isfile():
                continue
            if rel.parts[0] == 'tests' or rel == Path('pyproject.toml'):
                target = dest / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(tar.extractfile(member).read())
            elif rel == Path('timm/version.py'):
                version_py = tar.extractfile(member).read().decode()
    return version_py


def _is_git_dir(path: Path) -> bool:
    return subprocess.run(['git', '--git-dir', str(path), 'rev-parse', '--git-dir'],
                          capture_output=True).returncode == 0


def _extract_git(git_dir: Path, rev: Optional[str], dest: Path) -> str:
    import timm
    rev = rev or f'v{timm.__version__}'
    git = ['git', '--git-dir', str(git_dir)]
    if subprocess.run(git + ['rev-parse', '--verify', '--quiet', f'{rev}^{{commit}}'], capture_output=True).returncode:
        raise SourceError(f'{git_dir} has no commit {rev!r} (give --rev; the installed timm is {timm.__version__})')
    archive = subprocess.run(git + ['archive', '--format=tar', rev, 'tests', 'pyproject.toml', 'timm/version.py'],
                             capture_output=True, check=True).stdout
    tmp_tar = dest / '_src.tar'
    tmp_tar.write_bytes(archive)
    with tarfile.open(tmp_tar) as tar:
        tar.extractall(dest, filter='data')
    tmp_tar.unlink()
    version_py = (dest / 'timm' / 'version.py').read_text()
    shutil.rmtree(dest / 'timm')
    return version_py


# --------------------------------------------------------------------------------------------- report

def summarize(outcomes: Dict[str, dict]) -> List[dict]:
    """One row per timm test: counts of passed / failed / excluded / skipped (by timm's own size limits)."""
    rows: Dict[str, dict] = {}
    for rec in outcomes.values():
        row = rows.setdefault(rec['test'], dict(test=rec['test'], passed=0, failed=0, excluded=0, skipped=0))
        row[rec.get('outcome') or 'failed'] += 1
    return sorted(rows.values(), key=lambda r: r['test'])


def render(outcomes: Dict[str, dict], header: str) -> str:
    rows = summarize(outcomes)
    cols = ('passed', 'failed', 'excluded', 'skipped')
    lines = [header, '', '| timm test | ' + ' | '.join(cols) + ' |', '|---|' + '---:|' * len(cols)]
    for r in rows:
        lines.append(f"| `{r['test']}` | " + ' | '.join(str(r[c]) for c in cols) + ' |')
    lines.append('| **total** | ' + ' | '.join(f'**{sum(r[c] for r in rows)}**' for c in cols) + ' |')
    failed = [(k, v) for k, v in outcomes.items() if v.get('outcome', 'failed') == 'failed']
    if failed:
        lines += ['', 'Failures:', '']
        lines += [f"- `{v['test']}[{v['model']}]`: {v.get('message', '')}" for _, v in sorted(failed)]
    reasons: Dict[str, List[str]] = {}
    for v in outcomes.values():
        if v.get('outcome') in ('excluded', 'skipped'):
            reasons.setdefault(v['message'].removeprefix('excluded: '), []).append(f"{v['test']}[{v['model']}]")
    if reasons:
        lines += ['', 'Excluded or skipped (count: reason):', '']
        lines += [f'- {len(ids)}: {reason}' for reason, ids in sorted(reasons.items(), key=lambda kv: -len(kv[1]))]
    return '\n'.join(lines) + '\n'


def run(args: argparse.Namespace) -> int:
    import timm
    with tempfile.TemporaryDirectory(prefix='sdzoo-timm-tests-') as tmp:
        work = Path(tmp)
        version = materialize(Path(args.source), args.rev, work)
        if version != timm.__version__ and not args.allow_version_mismatch:
            raise SourceError(f'the tests are from timm {version}, the installed timm is {timm.__version__} '
                              '(use the matching source, or --allow-version-mismatch)')
        report = work / 'outcomes.json'
        cmd = [sys.executable, '-m', 'pytest', 'tests/test_models.py', f'tests/{NON_STD_MODULE}',
               '-p', 'timm_conformance', '-p', 'no:cacheprovider', '-p', 'no:timeout', '-q', '-rN',
               '-W', 'ignore::pytest.PytestUnknownMarkWarning',  # timm's timeout marks, plugin off
               '--rootdir', str(work), '--sdzoo-report', str(report), '--sdzoo-models', *args.models]
        if args.include_hub:
            cmd.append('--sdzoo-include-hub')
        if args.k:
            cmd += ['-k', args.k]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(HERE), os.environ.get('PYTHONPATH')])))
        print(' '.join(cmd[1:]), flush=True)
        subprocess.run(cmd, cwd=work, env=env)
        if not report.is_file():
            raise SourceError('pytest did not run (see its output above)')
        outcomes = json.loads(report.read_text())
    import torch
    header = (f"timm {timm.__version__} `tests/test_models.py` on sdzoo's models {' '.join(args.models)}; "
              f"torch {torch.__version__}, {cpu_name()}, {datetime.date.today()}.\n\n"
              f"`python benchmarks/timm_conformance.py {' '.join(args.argv)}`")
    text = render(outcomes, header)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    return 1 if any(v.get('outcome', 'failed') == 'failed' for v in outcomes.values()) else 0


def main(argv: Optional[Iterable[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('source', help='timm source: checkout dir, sdist .tar.gz, or git dir (with --rev)')
    p.add_argument('--rev', help='git revision when SOURCE is a git dir (default v<installed timm version>)')
    p.add_argument('--models', nargs='+', default=['sd_*'], help="model name patterns (default 'sd_*')")
    p.add_argument('-k', help="pytest -k expression on top (e.g. 'forward and not fx')")
    p.add_argument('--include-hub', action='store_true', help='also run Hub-only pretrained tags')
    p.add_argument('--allow-version-mismatch', action='store_true')
    p.add_argument('--out', default=str(DEFAULT_OUT), help='markdown summary file ("" for none)')
    args = p.parse_args(argv)
    args.argv = argv
    try:
        return run(args)
    except SourceError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2


if __name__ == '__main__':
    sys.exit(main())
