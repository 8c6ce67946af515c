"""The Hub paths for real: huggingface_hub's own client against sdzoo's Hub mirror on 127.0.0.1.

The client side runs in a subprocess per test because huggingface_hub reads HF_ENDPOINT and its
cache locations when it is imported; the server (sdzoo.mirror.HubMirror) runs in this process
on an OS-chosen port and logs what the client asked for. No mocks.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sdzoo.mirror import HubMirror

from test_hub import NAME, RESULTS, corrupt, published  # noqa: F401  (module fixture)

REPO = f'sdzoo/{NAME}'
RESOLVE = f'/{REPO}/resolve/main/model.safetensors'


def client_env(tmp_path: Path, endpoint: str, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(('HF_', 'HUGGINGFACE_', 'SDZOO_'))}
    env.update(
        HF_ENDPOINT=endpoint, HF_HOME=str(tmp_path / 'hf_home'), HF_HUB_CACHE=str(tmp_path / 'hf_cache'),
        HF_HUB_DISABLE_TELEMETRY='1', HF_HUB_DISABLE_PROGRESS_BARS='1', HF_HUB_DISABLE_IMPLICIT_TOKEN='1',
        SDZOO_WEIGHTS=str(tmp_path / 'no_local_weights'), SDZOO_WEIGHTS_ONLY='1',
        OMP_NUM_THREADS='1',
    )
    env.update(extra)
    return env


def start_client(code: str, env: dict, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, '-c', textwrap.dedent(code), *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish(proc: subprocess.Popen, timeout: float = 240) -> dict:
    """The JSON the client printed last (its stdout), failing with its stderr otherwise."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f'client timed out\n{err[-3000:]}')
    assert proc.returncode == 0, f'client failed ({proc.returncode}):\n{err[-4000:]}'
    return json.loads(out.strip().splitlines()[-1])


def run_client(code: str, env: dict, *args: str) -> dict:
    return finish(start_client(code, env, *args))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


LOAD_BOTH = """
    import json, sys, timm, torch
    from safetensors.torch import save_file
    from sdzoo.hub import WeightsError
    out = {}
    for key, name in (('registry', sys.argv[1]), ('hf_hub', sys.argv[2])):
        if not name:
            continue
        try:
            m = timm.create_model(name, pretrained=True)
            save_file(m.state_dict(), sys.argv[3] + f'/{key}.safetensors')
            out[key] = dict(file=m.pretrained_cfg['file'], survival=m.survival_probs)
        except WeightsError as e:
            out[key] = dict(error=f'{type(e).__name__}: {e}')
    print(json.dumps(out))
"""


def test_download_from_the_hub_gives_exactly_the_served_weights(published, tmp_path):  # noqa: F811
    with HubMirror(published.weights) as hub:
        env = client_env(tmp_path, hub.url, SDZOO_MANIFEST=str(published.manifest))
        code = LOAD_BOTH + """
    from huggingface_hub import HfApi, snapshot_download
    info = HfApi().model_info(sys.argv[4])
    snap = snapshot_download(sys.argv[4])
    import os
    print(json.dumps(dict(out, sha=info.sha, siblings=sorted(s.rfilename for s in info.siblings),
        library=info.library_name, evals={e.metric_type: e.metric_value for e in info.card_data.eval_results},
        snapshot=sorted(os.listdir(snap)), snapshot_dir=snap)))
        """
        res = run_client(code, env, NAME, f'hf-hub:{REPO}', str(tmp_path), REPO)
        requests = list(hub.requests)
    cache = tmp_path / 'hf_cache' / f'models--sdzoo--{NAME}'
    for key in ('registry', 'hf_hub'):
        assert 'error' not in res[key], res[key]
        assert Path(res[key]['file']).is_relative_to(cache)
        assert res[key]['survival'] == published.model.survival_probs
        got = load_file(tmp_path / f'{key}.safetensors')
        assert sorted(got) == sorted(published.state_dict)
        assert all(torch.equal(got[k], v) for k, v in published.state_dict.items())
    assert ('GET', RESOLVE) in requests  # the bytes really came from the server
    assert ('GET', f'/{REPO}/resolve/main/config.json') in requests
    files = sorted(p.name for p in published.folder.iterdir())
    assert res['siblings'] == files and res['snapshot'] == files
    assert res['library'] == 'timm'
    assert res['evals'] == {'accuracy': RESULTS['top1'], 'top_5_accuracy': RESULTS['top5'], 'loss': RESULTS['loss']}
    assert Path(res['snapshot_dir']).name == res['sha'] and len(res['sha']) == 40


def test_corrupt_file_on_the_hub_is_a_clear_error(published, tmp_path):  # noqa: F811
    served = tmp_path / 'served'
    shutil.copytree(published.folder, served / NAME)
    corrupt(served / NAME / 'model.safetensors')
    with HubMirror(served) as hub:
        env = client_env(tmp_path, hub.url, SDZOO_MANIFEST=str(published.manifest))
        res = run_client(LOAD_BOTH, env, NAME, f'hf-hub:{REPO}', str(tmp_path))
        downloads = hub.requests.count(('GET', RESOLVE))
    for key in ('registry', 'hf_hub'):
        err = res[key].get('error', '')
        assert err.startswith('WeightsIntegrityError'), res[key]
        assert f'models--sdzoo--{NAME}' in err and 'model.safetensors' in err and 'sha256' in err
    assert downloads >= 2  # a mismatching cache copy is downloaded again once before giving up


@pytest.fixture(scope='module', autouse=True)
def unreachable_client(published, tmp_path_factory):  # noqa: F811
    """A client asking an endpoint nobody listens on, started first: huggingface_hub retries a refused
    connection with backoff (~25 s), which then overlaps the other tests instead of adding to them."""
    tmp = tmp_path_factory.mktemp('unreachable')
    dead = f'http://127.0.0.1:{free_port()}'
    proc = start_client(LOAD_BOTH, client_env(tmp, dead, SDZOO_MANIFEST=str(published.manifest)), NAME, '', str(tmp))
    yield proc, dead, tmp
    if proc.poll() is None:
        proc.kill()
        proc.communicate()


def test_unreachable_hub_and_unknown_repo_are_clear_errors(published, tmp_path, unreachable_client):  # noqa: F811
    empty = tmp_path / 'empty_hub'
    empty.mkdir()
    with HubMirror(empty) as hub:
        env = client_env(tmp_path, hub.url, SDZOO_MANIFEST=str(published.manifest))
        missing = run_client(LOAD_BOTH, env, NAME, '', str(tmp_path))['registry']['error']
    assert missing.startswith('WeightsNotFoundError: no pretrained weights for sd_resnet20.sd_cifar10')
    assert f'{hub.url}/{REPO}' in missing and 'RepositoryNotFoundError' in missing
    assert str(tmp_path / 'no_local_weights' / NAME) in missing  # where it looked locally

    proc, dead, tmp = unreachable_client
    unreachable = finish(proc)['registry']['error']
    assert unreachable.startswith('WeightsNotFoundError: no pretrained weights for sd_resnet20.sd_cifar10')
    assert f'{dead}/{REPO}' in unreachable and str(tmp / 'no_local_weights' / NAME) in unreachable
    assert 'SDZOO_WEIGHTS' in unreachable  # how to load it offline


PUSH_AND_LOAD = """
    import json, sys, timm
    from safetensors.torch import save_file
    from sdzoo.cli import main
    folder, manifest, repo, out = sys.argv[1:5]
    codes = {}
    for token in ('wrong-token', 'secret-token'):
        try:
            codes[token] = main(['push', folder, '--repo-id', repo, '--token', token,
                                 '--manifest', manifest])
        except SystemExit as e:
            codes[token] = e.code
    m = timm.create_model('hf-hub:' + repo, pretrained=True)
    save_file(m.state_dict(), out + '/pushed.safetensors')
    print(json.dumps(dict(codes=codes, file=m.pretrained_cfg['file'])))
"""


def test_push_to_the_hub_and_download_again(published, tmp_path):  # noqa: F811
    root = tmp_path / 'hub_root'
    root.mkdir()
    with HubMirror(root, allow_upload=True, token='secret-token') as hub:
        env = client_env(tmp_path, hub.url, SDZOO_MANIFEST=str(published.manifest))
        proc = start_client(PUSH_AND_LOAD, env, str(published.folder), str(published.manifest), REPO, str(tmp_path))
        out, err = proc.communicate(timeout=240)
        requests = list(hub.requests)
    assert proc.returncode == 0, err[-4000:]
    res = json.loads(out.strip().splitlines()[-1])
    assert res['codes'] == {'wrong-token': 2, 'secret-token': 0}
    assert 'sdzoo push: error: uploading' in err and '401' in err  # the wrong token, one clean line
    assert f'uploaded 5 files' in out and f'{hub.url}/{REPO}' in out
    assert ('POST', '/api/repos/create') in requests
    assert ('POST', f'/api/models/{REPO}/commit/main') in requests

    pushed = root / NAME
    assert sorted(p.name for p in pushed.iterdir() if not p.name.startswith('.')) == sorted(
        p.name for p in published.folder.iterdir())
    for f in published.folder.iterdir():
        assert (pushed / f.name).read_bytes() == f.read_bytes(), f.name
    # public (a private repo is readable only with the token: tests/test_hub_mirror.py)
    assert json.loads((pushed / '.mirror.json').read_text()) == {'private': False}
    got = load_file(tmp_path / 'pushed.safetensors')
    assert all(torch.equal(got[k], v) for k, v in published.state_dict.items())
    assert Path(res['file']).is_relative_to(tmp_path / 'hf_cache')
