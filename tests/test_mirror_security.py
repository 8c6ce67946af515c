"""The Hub mirror's hard edges: one folder per repo id and visibility on every read route, repos that
cannot be created inside others, header values a client cannot break, and connections that time out
and are capped. A real HubMirror on 127.0.0.1, raw http.client/socket requests and the real
huggingface_hub client; no mocks."""
from __future__ import annotations

import argparse
import http.client
import json
import socket
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Set, Tuple

import pytest
from huggingface_hub import HfApi, hf_hub_download
from huggingface_hub.utils import HfHubHTTPError

from sdzoo.mirror import HubMirror, add_mirror_arguments
from sdzoo.mirror.server import CONNECTION_THREAD

TOKEN = 'secret-token'
AUTH = {'Authorization': f'Bearer {TOKEN}'}
SECRET = b'PRIVATE-WEIGHTS'  # the content no answer without the token may carry


def _address(hub: HubMirror) -> Tuple[str, int]:
    host, port = hub.url.split('//', 1)[1].split(':')
    return host, int(port)


def _request(hub: HubMirror, method: str, path: str, headers: Optional[Dict[str, str]] = None,
             body: Optional[bytes] = None) -> Tuple[int, Dict[str, str], bytes]:
    conn = http.client.HTTPConnection(*_address(hub), timeout=20)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, dict(r.getheaders()), r.read()
    finally:
        conn.close()


def _raw(hub: HubMirror, data: bytes) -> bytes:
    """Send raw bytes, return everything the server sends until it closes (``Connection: close`` asked)."""
    with socket.create_connection(_address(hub), timeout=20) as s:
        s.sendall(data)
        out = b''
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return out
            out += chunk


def _wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def _connection_threads() -> List[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == CONNECTION_THREAD and t.is_alive()]


def _commit(hub: HubMirror, repo_id: str, files: Dict[str, bytes]) -> Tuple[int, bytes]:
    """A raw huggingface_hub-style commit (ndjson, base64 content inline), any path the test likes."""
    import base64
    lines = [{'key': 'header', 'value': {'summary': 'test'}}]
    lines += [{'key': 'file', 'value': {'path': p, 'encoding': 'base64', 'content': base64.b64encode(c).decode()}}
              for p, c in files.items()]
    body = '\n'.join(json.dumps(x) for x in lines).encode()
    status, _, out = _request(hub, 'POST', f'/api/models/{repo_id}/commit/main', AUTH, body)
    return status, out


def _tree_files(folder: Path) -> Set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob('*')}


@pytest.fixture()
def hub(tmp_path: Path):
    root = tmp_path / 'root'
    (root / 'public').mkdir(parents=True)
    (root / 'public' / 'config.json').write_text('{"architecture": "sd_resnet20"}')
    (root / 'public' / '.env').write_text('HIDDEN=1')  # a dotfile laid by hand: never served either
    (root / 'sd_resnet20.sd_cifar10').mkdir()
    (root / 'sd_resnet20.sd_cifar10' / 'model.safetensors').write_bytes(b'published')
    with HubMirror(root, allow_upload=True, token=TOKEN, max_upload_bytes=1 << 20) as mirror:
        api = HfApi(endpoint=mirror.url, token=TOKEN)
        for repo_id in ('acme/secret', 'sdzoo/secret'):
            api.create_repo(repo_id, private=True)
            assert _commit(mirror, repo_id, {'weights.bin': SECRET, 'sub/w.bin': SECRET})[0] == 200
        yield mirror


# ---------------------------------------------------------------------------------------- visibility

# every read route of the mirror, for a repo id
def _read_routes(repo_id: str, file: str) -> List[Tuple[str, str, Optional[bytes]]]:
    return [
        ('GET', f'/{repo_id}/resolve/main/{file}', None),
        ('HEAD', f'/{repo_id}/resolve/main/{file}', None),
        ('GET', f'/api/models/{repo_id}', None),
        ('HEAD', f'/api/models/{repo_id}', None),
        ('GET', f'/api/models/{repo_id}/revision/main', None),
        ('GET', f'/api/models/{repo_id}/tree/main', None),
        ('GET', f'/api/models/{repo_id}/tree/main?recursive=true', None),
        ('GET', f'/api/models/{repo_id}/tree/main/sub', None),
        ('POST', f'/api/models/{repo_id}/paths-info/main', f'paths={file}&paths=sub'.encode()),
    ]


@pytest.mark.parametrize('repo_id,file', [
    ('acme/secret', 'weights.bin'),        # the private repo itself, without the token
    ('sdzoo/acme', 'secret/weights.bin'),  # its owner's folder taken for a repo of the default owner
    ('sdzoo/secret', 'weights.bin'),       # a private repo of the default owner
    ('secret/sub', 'w.bin'),               # a subfolder of that private repo taken for another owner's repo
    ('sdzoo/sub', 'w.bin'),
    ('acme/sub', 'w.bin'),
])
def test_no_read_route_serves_a_private_repo_without_the_token(hub: HubMirror, repo_id: str, file: str):
    for method, path, body in _read_routes(repo_id, file):
        for headers in ({}, {'Authorization': 'Bearer wrong-token'}):
            status, _, out = _request(hub, method, path, headers, body)
            assert status in (401, 404), (method, path, status, out[:200])
            assert SECRET not in out and b'weights.bin' not in out and b'w.bin' not in out, (method, path)


def test_private_repos_read_with_the_token_and_each_folder_has_one_id(hub: HubMirror, tmp_path: Path):
    api = HfApi(endpoint=hub.url, token=TOKEN)
    got = hf_hub_download('acme/secret', 'sub/w.bin', endpoint=hub.url, token=TOKEN, cache_dir=tmp_path / 'c')
    assert Path(got).read_bytes() == SECRET
    assert sorted(s.rfilename for s in api.model_info('acme/secret').siblings) == ['sub/w.bin', 'weights.bin']
    assert [p.path for p in api.get_paths_info('acme/secret', ['weights.bin', 'sub', 'nothing'])] == \
        ['weights.bin', 'sub']
    # with the token too, an owner's folder is no repo and a repo's subfolder no other repo
    for path in ('/sdzoo/acme/resolve/main/secret/weights.bin', '/secret/sub/resolve/main/w.bin',
                 '/api/models/sdzoo/acme', '/api/models/secret/sub/tree/main'):
        assert _request(hub, 'GET', path, AUTH)[0] == 404, path
    listed = {m.id: m.private for m in api.list_models()}
    assert listed == {'acme/secret': True, 'sdzoo/secret': True, 'sdzoo/public': False,
                      'sdzoo/sd_resnet20.sd_cifar10': False}
    assert [m.id for m in api.list_models(author='acme')] == ['acme/secret']
    public = {m.id for m in HfApi(endpoint=hub.url, token=False).list_models()}
    assert public == {'sdzoo/public', 'sdzoo/sd_resnet20.sd_cifar10'}
    status, _, out = _request(hub, 'GET', '/api/models?search=secret')
    assert status == 200 and json.loads(out) == []


def test_dotfiles_and_the_settings_file_are_never_served_or_listed(hub: HubMirror):
    for repo_id in ('sdzoo/public', 'sdzoo/secret', 'acme/secret'):
        for name in ('.mirror.json', '%2Emirror.json', '.env', 'sub/.mirror.json', '.mirror-owner'):
            for headers in ({}, AUTH):
                status, _, out = _request(hub, 'GET', f'/{repo_id}/resolve/main/{name}', headers)
                assert status in (400, 401, 404) and b'{"private"' not in out, (repo_id, name, status)
        for route in (f'/api/models/{repo_id}', f'/api/models/{repo_id}/tree/main?recursive=true'):
            status, _, out = _request(hub, 'GET', route, AUTH)
            assert status == 200 and b'.mirror' not in out and b'.env' not in out, route
        status, _, out = _request(hub, 'POST', f'/api/models/{repo_id}/paths-info/main', AUTH,
                                  b'paths=.mirror.json&paths=.env')
        assert (status, json.loads(out)) == (200, [])
    for path in ('/.commit/x/resolve/main/a', '/api/models/sdzoo/.hidden', '/api/models/.acme/secret',
                 '/acme/.mirror-owner/resolve/main/x'):
        assert _request(hub, 'GET', path, AUTH)[0] in (400, 404), path


# ----------------------------------------------------------------------------------- path traversal

@pytest.mark.parametrize('path', [
    '../escape.bin', '../../escape.bin', 'sub/../../escape.bin', '/abs.bin', '//abs.bin',
    '..\\escape.bin', 'sub\\..\\..\\escape.bin', 'C:\\escape.bin', '.mirror.json', 'sub/.hidden', 'a//b.bin',
    './a.bin', 'a/./b.bin', 'sub/', '', 'a\x00b.bin', 'a\rb.bin', 'a\nb.bin',
])
def test_upload_paths_cannot_leave_the_repo(hub: HubMirror, path: str):
    before = _tree_files(hub.root.parent)
    status, out = _commit(hub, 'sdzoo/public', {path: b'evil'})
    assert status == 400 and b'invalid path in repo' in out, (status, out)
    assert _tree_files(hub.root.parent) == before


def test_percent_encoded_paths_stay_literal_and_inside(hub: HubMirror):
    before = _tree_files(hub.root.parent)
    status, _ = _commit(hub, 'sdzoo/public', {'%2e%2e/%2e%2e/pct.bin': b'literal'})
    assert status == 200  # a name with '%' in it, nothing decoded: inside the repo
    assert _tree_files(hub.root.parent) - before == {'root/public/%2e%2e', 'root/public/%2e%2e/%2e%2e',
                                                      'root/public/%2e%2e/%2e%2e/pct.bin'}
    assert _request(hub, 'GET', '/sdzoo/public/resolve/main/%252e%252e/%252e%252e/pct.bin')[2] == b'literal'
    # decoded once by the URL, a traversal is refused on every read route
    for path in ('/sdzoo/public/resolve/main/..%2F..%2Fsecret%2Fweights.bin', '/sdzoo/public/resolve/main/%2E%2E/x',
                 '/sdzoo/public/resolve/main/..%5Csecret%5Cweights.bin', '/sdzoo/public/resolve/main/%2Fetc%2Fpasswd',
                 '/api/models/sdzoo/public/tree/main/..%2Fsecret', '/sdzoo%2Fpublic/resolve/main/config.json',
                 '/sdzoo/public%2F..%2Fsecret/resolve/main/weights.bin'):
        status, _, out = _request(hub, 'GET', path)
        assert status in (400, 404) and SECRET not in out, (path, status)


# ------------------------------------------------------------------------------------ repo creation

def test_a_repo_cannot_be_created_inside_or_over_another(hub: HubMirror):
    api = HfApi(endpoint=hub.url, token=TOKEN)
    published = hub.root / 'sd_resnet20.sd_cifar10'
    before = _tree_files(hub.root)
    for exist_ok in (False, True):  # exist_ok swallows 409 only: the refusal still surfaces
        with pytest.raises(HfHubHTTPError, match="'sd_resnet20.sd_cifar10' is not an owner") as e:
            api.create_repo('sd_resnet20.sd_cifar10/inj', exist_ok=exist_ok)
        assert e.value.response.status_code == 400
        with pytest.raises(HfHubHTTPError, match="'acme' is an owner on this mirror"):
            api.create_repo('sdzoo/acme', exist_ok=exist_ok)
        with pytest.raises(HfHubHTTPError, match="'secret' is not an owner"):  # a private repo holds no repo
            api.create_repo('secret/inner', exist_ok=exist_ok)
    assert _commit(hub, 'sd_resnet20.sd_cifar10/inj', {'model.safetensors': b'inj'})[0] == 404
    assert _tree_files(hub.root) == before
    assert _tree_files(published) == {'model.safetensors'}
    with pytest.raises(HfHubHTTPError) as e:
        api.create_repo('sdzoo/public')
    assert e.value.response.status_code == 409
    api.create_repo('acme/second')  # an owner gets more repos, its folder stays no repo
    assert {m.id for m in api.list_models(author='acme')} == {'acme/secret', 'acme/second'}


def test_a_nested_repo_left_by_the_old_mirror_is_not_served_by_its_parent(hub: HubMirror):
    """What ``organization='public'`` wrote before the fix: a private repo folder inside a public repo."""
    inner = hub.root / 'public' / 'inj'
    inner.mkdir()
    (inner / '.mirror.json').write_text('{"private": true}')
    (inner / 'model.safetensors').write_bytes(SECRET)
    status, _, out = _request(hub, 'GET', '/api/models/sdzoo/public')
    assert status == 200 and [s['rfilename'] for s in json.loads(out)['siblings']] == ['config.json']
    for path in ('/sdzoo/public/resolve/main/inj/model.safetensors', '/public/inj/resolve/main/model.safetensors'):
        assert _request(hub, 'GET', path)[0] == 404, path


def test_an_owner_folder_laid_out_by_hand_is_its_repos_only(tmp_path: Path):
    root = tmp_path / 'root'
    (root / 'vendor' / 'model').mkdir(parents=True)
    (root / 'vendor' / 'model' / 'config.json').write_text('{}')
    with HubMirror(root) as hub:
        assert _request(hub, 'GET', '/vendor/model/resolve/main/config.json')[0] == 200
        assert _request(hub, 'GET', '/sdzoo/vendor/resolve/main/model/config.json')[0] == 404
        assert _request(hub, 'GET', '/api/models/sdzoo/vendor')[0] == 404
        assert [m.id for m in HfApi(endpoint=hub.url, token=False).list_models()] == ['vendor/model']


# ------------------------------------------------------------------------------------------ headers

def _head_lines(response: bytes) -> List[bytes]:
    head = response.split(b'\r\n\r\n', 1)[0]
    return head.split(b'\r\n')


@pytest.mark.parametrize('path', [
    '/x/%E2%82%AC', '/x/a%0Db', '/x/a%0Ab', '/x/a%0D%0AX-Injected:%201', '/x/a%00b', '/x/%FF%FE',
    '/sdzoo/public/resolve/main/%E2%82%AC.bin', '/sdzoo/public/resolve/main/a%0Db.bin',
    '/api/models/sdzoo/public/revision/%E2%82%AC%0D', '/api/models/acme%0D/%E2%82%AC',
])
def test_every_header_value_is_ascii_without_cr_or_lf(hub: HubMirror, path: str):
    for method in ('GET', 'HEAD'):
        response = _raw(hub, f'{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n'.encode())
        lines = _head_lines(response)
        assert lines[0].startswith(b'HTTP/1.1 4'), (path, response[:300])
        for line in lines:
            assert all(32 <= b < 127 for b in line), (path, line)  # no bare CR/LF/NUL, nothing outside ASCII
        assert not any(line.lower().startswith(b'x-injected') for line in lines)


def test_a_served_file_with_a_non_ascii_name_has_safe_headers(hub: HubMirror):
    assert _commit(hub, 'sdzoo/public', {'€ "x".bin': b'euro'})[0] == 200
    response = _raw(hub, b'GET /sdzoo/public/resolve/main/%E2%82%AC%20%22x%22.bin HTTP/1.1\r\nHost: x\r\n'
                         b'Connection: close\r\n\r\n')
    lines = _head_lines(response)
    assert lines[0] == b'HTTP/1.1 200 OK' and response.endswith(b'\r\n\r\neuro')
    assert all(32 <= b < 127 for line in lines for b in line)
    assert b'Content-Disposition: inline; filename="_ _x_.bin"' in lines
    status, out = _commit(hub, 'sdzoo/public', {'bad\r\nX-Injected: 1': b''})  # the message echoes the path
    assert status == 400 and b'invalid path' in out


# -------------------------------------------------------------------------------------- connections

@pytest.fixture()
def small_hub(tmp_path: Path):
    root = tmp_path / 'root'
    (root / 'public').mkdir(parents=True)
    (root / 'public' / 'config.json').write_text('{}')
    with HubMirror(root, allow_upload=True, token=TOKEN, timeout=0.5, max_connections=4) as mirror:
        yield mirror


def _closed_by_server(s: socket.socket, start: float) -> Tuple[bool, float]:
    """(whether the server closed the connection with nothing sent, seconds since ``start``, taken before
    connecting: the server's timeout cannot have begun earlier); waits at most 10 s."""
    s.settimeout(10)
    try:
        data = s.recv(65536)
    except ConnectionResetError:
        data = b''
    except socket.timeout:
        return False, time.monotonic() - start
    return data == b'', time.monotonic() - start


@pytest.mark.parametrize('sent', [
    b'GET /api/models/sdzoo/public HTTP/1.1\r\nHost: x\r\n',                        # the head, half sent
    b'GET /api/models/sdzoo/pub',                                                    # the request line, half
    b'POST /api/models/sdzoo/public/commit/main HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n'
    b'Authorization: Bearer ' + TOKEN.encode() + b'\r\n\r\n{"key": "hea',           # the body, 12 of 1000 bytes
    b'',                                                                             # nothing at all
])
def test_a_half_sent_request_is_dropped_after_the_timeout(small_hub: HubMirror, sent: bytes):
    start = time.monotonic()
    with socket.create_connection(_address(small_hub)) as s:
        s.sendall(sent)
        assert _wait_until(lambda: small_hub.active_connections == 1)
        closed, took = _closed_by_server(s, start)
    assert closed and 0.45 < took < 5, (closed, took)  # the timeout is 0.5 s
    assert _wait_until(lambda: small_hub.active_connections == 0 and not _connection_threads())
    assert _request(small_hub, 'GET', '/api/models/sdzoo/public')[0] == 200  # still serving


def test_a_body_cut_short_by_the_client_is_not_committed(small_hub: HubMirror):
    line = json.dumps({'key': 'file', 'value': {'path': 'cut.bin', 'encoding': 'base64', 'content': 'Y3V0'}})
    with socket.create_connection(_address(small_hub), timeout=10) as s:
        s.sendall(b'POST /api/models/sdzoo/public/commit/main HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n'
                  b'Authorization: Bearer ' + TOKEN.encode() + b'\r\n\r\n' + line.encode() + b'\n')
        s.shutdown(socket.SHUT_WR)  # the client is done: 1000 bytes announced, fewer sent
        response = s.recv(65536)
    assert response.startswith(b'HTTP/1.1 400') and b'request body ended after' in response, response
    assert not (small_hub.root / 'public' / 'cut.bin').exists()


def test_an_idle_keep_alive_connection_is_closed_after_the_timeout(small_hub: HubMirror):
    with socket.create_connection(_address(small_hub)) as s:
        s.settimeout(10)
        for _ in range(2):  # kept alive between requests sent at once
            s.sendall(b'GET /sdzoo/public/resolve/main/config.json HTTP/1.1\r\nHost: x\r\n\r\n')
            response = b''
            while not response.endswith(b'\r\n\r\n{}'):
                chunk = s.recv(65536)
                assert chunk, response
                response += chunk
            assert response.startswith(b'HTTP/1.1 200')
        start = time.monotonic()  # after the answer: the server's wait for the next request began before
        closed, took = _closed_by_server(s, start)
    assert closed and took < 5, (closed, took)
    assert _wait_until(lambda: not _connection_threads())


def test_connections_beyond_the_cap_get_503_and_threads_stay_bounded(tmp_path: Path):
    (tmp_path / 'root' / 'public').mkdir(parents=True)
    (tmp_path / 'root' / 'public' / 'config.json').write_text('{}')
    baseline = threading.active_count()
    idle: List[socket.socket] = []
    try:
        with HubMirror(tmp_path / 'root', timeout=60, max_connections=4) as hub:
            for _ in range(4):
                idle.append(socket.create_connection(_address(hub)))
            assert _wait_until(lambda: hub.active_connections == 4)
            for _ in range(46):  # 50 idle connections held 52 threads before the cap
                with socket.create_connection(_address(hub), timeout=10) as extra:
                    answer = extra.recv(65536)
                    assert answer.startswith(b'HTTP/1.1 503 ') and b'Connection: close' in answer, answer
                    assert extra.recv(65536) == b''  # and closed
            assert hub.active_connections == 4 and len(_connection_threads()) == 4
            assert threading.active_count() <= baseline + 4 + 2  # the connections' and the server's thread
            idle.pop().close()  # a slot frees up: served again
            assert _wait_until(lambda: hub.active_connections == 3)
            assert _request(hub, 'GET', '/sdzoo/public/resolve/main/config.json')[0] == 200
        # stop() ends the idle connections' threads at once, not after their 60 s timeout
        assert _wait_until(lambda: not _connection_threads(), timeout=5)
    finally:
        for s in idle:
            s.close()


def test_timeout_and_connection_cap_are_command_line_options(tmp_path: Path):
    parser = argparse.ArgumentParser()
    add_mirror_arguments(parser)
    args = parser.parse_args([str(tmp_path), '--timeout', '2.5', '--max-connections', '7'])
    assert (args.timeout, args.max_connections) == (2.5, 7)
    defaults = parser.parse_args([str(tmp_path)])
    assert (defaults.timeout, defaults.max_connections) == (30.0, 32)
    with HubMirror(tmp_path, timeout=args.timeout, max_connections=args.max_connections) as hub:
        assert hub.timeout == 2.5
    with pytest.raises(ValueError, match='max_connections'):
        HubMirror(tmp_path, max_connections=0)
