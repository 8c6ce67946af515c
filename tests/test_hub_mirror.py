"""The Hub mirror's guards: request bodies are refused before they are read, private repos need the token.
A real HubMirror on 127.0.0.1, raw sockets and the real huggingface_hub client."""
from __future__ import annotations

import socket
from pathlib import Path

import pytest
from huggingface_hub import HfApi, hf_hub_download
from huggingface_hub.utils import RepositoryNotFoundError

from sdzoo.mirror import HubMirror

TOKEN = 'secret-token'


def _raw_post(url: str, path: str, length: int, headers: str = '', timeout: float = 20) -> str:
    """Send only the headers of a POST announcing ``length`` body bytes; return the response head.
    A server that first reads the body never answers (socket timeout)."""
    host, port = url.split('//', 1)[1].split(':')
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(f'POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {length}\r\n{headers}\r\n'.encode())
        data = b''
        while b'\r\n\r\n' not in data:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    return data.decode('latin-1')


@pytest.fixture()
def mirror(tmp_path: Path):
    root = tmp_path / 'root'
    (root / 'public').mkdir(parents=True)
    (root / 'public' / 'config.json').write_text('{"architecture": "sd_resnet20"}')
    with HubMirror(root, allow_upload=True, token=TOKEN, max_upload_bytes=1 << 20) as hub:
        yield hub


def test_oversized_or_unauthorized_posts_are_refused_unread(mirror: HubMirror, tmp_path: Path):
    big = 300 << 20  # announced, never sent
    commit = '/api/models/sdzoo/public/commit/main'
    auth = f'Authorization: Bearer {TOKEN}\r\n'
    head = _raw_post(mirror.url, commit, big, auth)
    assert head.startswith('HTTP/1.1 413'), head
    assert 'Connection: close' in head and 'over the limit of 1048576 bytes' in head
    assert _raw_post(mirror.url, commit, big).startswith('HTTP/1.1 401')          # no token: not read
    assert _raw_post(mirror.url, '/api/nothing', big, auth).startswith('HTTP/1.1 404')
    assert _raw_post(mirror.url, '/api/validate-yaml', 2 << 20).startswith('HTTP/1.1 413')  # small JSON endpoint
    with HubMirror(tmp_path / 'root') as read_only:  # uploads off: every write refused at once
        assert _raw_post(read_only.url, commit, big, auth).startswith('HTTP/1.1 403')
    # the mirror still serves, and a body within the limit still works
    api = HfApi(endpoint=mirror.url, token=TOKEN)
    assert api.model_info('sdzoo/public').siblings[0].rfilename == 'config.json'
    api.upload_file(path_or_fileobj=b'x' * 1000, path_in_repo='small.bin', repo_id='sdzoo/public')
    assert (tmp_path / 'root' / 'public' / 'small.bin').read_bytes() == b'x' * 1000


def test_private_repo_is_readable_only_with_the_token(mirror: HubMirror, tmp_path: Path):
    api = HfApi(endpoint=mirror.url, token=TOKEN)
    api.create_repo('sdzoo/secret', private=True)
    api.upload_file(path_or_fileobj=b'weights', path_in_repo='model.safetensors', repo_id='sdzoo/secret')
    assert api.model_info('sdzoo/secret').private is True
    for token in (False, 'wrong-token'):
        with pytest.raises(RepositoryNotFoundError):
            hf_hub_download('sdzoo/secret', 'model.safetensors', endpoint=mirror.url, token=token,
                            cache_dir=tmp_path / 'cache')
        with pytest.raises(RepositoryNotFoundError):
            HfApi(endpoint=mirror.url, token=token).model_info('sdzoo/secret')
    got = hf_hub_download('sdzoo/secret', 'model.safetensors', endpoint=mirror.url, token=TOKEN,
                          cache_dir=tmp_path / 'cache')
    assert Path(got).read_bytes() == b'weights'
    # public repos stay readable by anyone
    assert HfApi(endpoint=mirror.url, token=False).model_info('sdzoo/public').private is False


def test_private_repo_needs_a_mirror_with_a_token(tmp_path: Path):
    (tmp_path / 'root').mkdir()
    with HubMirror(tmp_path / 'root', allow_upload=True) as hub:
        with pytest.raises(Exception, match='needs a mirror started with --token'):
            HfApi(endpoint=hub.url, token=False).create_repo('sdzoo/secret', private=True)
        assert not (tmp_path / 'root' / 'secret').exists()
