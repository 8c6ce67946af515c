"""A small Hugging Face Hub-compatible server for weight folders: an offline mirror and a test Hub.

Serves ``<root>/<name>/`` as the model repo ``<owner>/<name>`` (``--owner``, default ``sdzoo``;
other owners live in ``<root>/<owner>/<name>/``) with the endpoints ``huggingface_hub`` uses for
``hf_hub_download`` / ``snapshot_download`` / ``model_info``, so that with
``HF_ENDPOINT=http://127.0.0.1:8080`` timm and sdzoo download from it unchanged::

    python -m sdzoo.mirror.server weights/ --port 8080          # or: sdzoo mirror weights/
    HF_ENDPOINT=http://127.0.0.1:8080 python -c "import timm; timm.create_model('sd_resnet110', pretrained=True)"

With ``--allow-upload`` it also accepts ``huggingface_hub``'s upload API (``create_repo``, then
``upload_folder``: preupload answers ``regular`` for every file so the content arrives inline in
the commit), so ``sdzoo push`` can publish to it; ``--token`` then requires that bearer token.
Each repo has a single revision, ``main``, whose commit id is a hash of its files. A repo pushed
as private is readable only with the token. Request bodies are checked before they are read: a
write without permission, an unknown endpoint or a body over the limit (``--max-upload-mb``) is
refused at once, so a client cannot make the mirror buffer what it will reject anyway.

This module is the server, its repo storage and its command line; the HTTP endpoints are
:mod:`sdzoo.mirror.endpoints`.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import threading
from collections import deque
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any, Deque, Dict, List, Optional, Tuple

from .endpoints import CHUNK_BYTES, META_FILE, NAME_PATTERN, MirrorHandler, HubError

__all__ = ['HubMirror', 'main']

DEFAULT_MAX_UPLOAD = 2 << 30  # a commit carries whole files, base64-encoded, in its body


class HubMirror:
    """The mirror: ``with HubMirror(root) as hub: ... hub.url ...`` runs it in a background thread."""

    def __init__(
            self,
            root: os.PathLike | str,
            *,
            owner: str = 'sdzoo',
            host: str = '127.0.0.1',
            port: int = 0,
            allow_upload: bool = False,
            token: Optional[str] = None,
            verbose: bool = False,
            max_upload_bytes: int = DEFAULT_MAX_UPLOAD,
    ):
        self.root = Path(root).resolve()
        if not self.root.is_dir():
            raise FileNotFoundError(f'mirror root {self.root} is not a directory')
        self.owner = owner
        self.allow_upload = allow_upload
        self.token = token
        self.verbose = verbose
        self.max_upload_bytes = int(max_upload_bytes)
        self.requests: Deque[Tuple[str, str]] = deque(maxlen=10000)  # (method, path): the latest requests
        self.write_lock = threading.Lock()  # one repo write (create, commit) at a time
        self._hashes: Dict[Tuple[str, int, int], Tuple[str, str]] = {}
        self._server = ThreadingHTTPServer((host, port), MirrorHandler)
        self._server.daemon_threads = True
        self._server.mirror = self  # type: ignore[attr-defined]
        self._thread: Optional[threading.Thread] = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f'http://{host}:{port}'

    def start(self) -> 'HubMirror':
        self._thread = threading.Thread(target=self._server.serve_forever, name='sdzoo-hub-mirror', daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._server.serve_forever()

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=10)
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> 'HubMirror':
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------------------------ repos

    def repo_dir(self, repo_id: str) -> Path:
        owner, _, name = repo_id.partition('/')
        if not (NAME_PATTERN.match(owner) and NAME_PATTERN.match(name)) or '..' in repo_id:
            raise HubError(400, f'invalid repo id {repo_id!r}')
        return self.root / name if owner == self.owner else self.root / owner / name

    def existing_repo(self, repo_id: str) -> Path:
        d = self.repo_dir(repo_id)
        if not d.is_dir():
            raise HubError(404, f'Repository {repo_id} not found', 'RepoNotFound')
        return d

    def files(self, repo: Path) -> List[str]:
        out = []
        for p in sorted(repo.rglob('*')):
            rel = p.relative_to(repo)
            if p.is_file() and not any(part.startswith('.') for part in rel.parts):
                out.append(rel.as_posix())
        return out

    def hashes(self, path: Path) -> Tuple[str, str]:
        """(sha256, git blob sha1) of a file, cached by size and mtime."""
        st = path.stat()
        key = (str(path), st.st_size, st.st_mtime_ns)
        if key not in self._hashes:
            sha256, sha1 = hashlib.sha256(), hashlib.sha1(b'blob %d\0' % st.st_size)
            with open(path, 'rb') as f:
                for block in iter(lambda: f.read(CHUNK_BYTES), b''):
                    sha256.update(block)
                    sha1.update(block)
            self._hashes[key] = (sha256.hexdigest(), sha1.hexdigest())
        return self._hashes[key]

    def commit(self, repo: Path) -> str:
        h = hashlib.sha1()
        for f in self.files(repo):
            h.update(f'{f}\0{self.hashes(repo / f)[0]}\n'.encode())
        return h.hexdigest()

    def check_revision(self, repo: Path, repo_id: str, revision: str) -> str:
        commit = self.commit(repo)
        if revision not in ('main', commit):
            raise HubError(404, f'Revision {revision} not found in {repo_id} (this mirror has main = {commit})',
                            'RevisionNotFound')
        return commit

    def meta(self, repo: Path) -> Dict[str, Any]:
        try:
            return json.loads((repo / META_FILE).read_text(encoding='utf-8'))
        except (OSError, ValueError):
            return {}


def add_mirror_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('root', help='folder holding <model>.<tag>/ weight folders (e.g. weights/)')
    parser.add_argument('--host', default='127.0.0.1', help='address to bind (default: 127.0.0.1, loopback only)')
    parser.add_argument('--port', type=int, default=8080, help='port (default: 8080; 0 picks a free one)')
    parser.add_argument('--owner', default='sdzoo', help='owner whose repos are the folders in ROOT (default: sdzoo)')
    parser.add_argument('--allow-upload', action='store_true', help='accept huggingface_hub uploads (sdzoo push)')
    parser.add_argument('--token', default=None,
                        help='with --allow-upload: require this bearer token for uploads and for reading private repos '
                             '(default: none)')
    parser.add_argument('--max-upload-mb', type=float, default=DEFAULT_MAX_UPLOAD / 2 ** 20,
                        help='largest commit body accepted, in MiB (default: %(default).0f); larger ones get 413 unread')
    parser.add_argument('-q', '--quiet', action='store_true', help='do not log requests')


def run_mirror(args: argparse.Namespace) -> int:
    mirror = HubMirror(args.root, owner=args.owner, host=args.host, port=args.port,
                       allow_upload=args.allow_upload, token=args.token, verbose=not args.quiet,
                       max_upload_bytes=int(args.max_upload_mb * 2 ** 20))
    repos = [f'{args.owner}/{p.name}' for p in sorted(mirror.root.iterdir())
             if p.is_dir() and not p.name.startswith('.')]
    print(f'serving {mirror.root} as a Hugging Face Hub mirror at {mirror.url}\n'
          f'  use it with: HF_ENDPOINT={mirror.url}\n'
          f'  repos: {", ".join(repos) or "(none yet)"}'
          + ('\n  uploads: allowed' + (' (token required)' if args.token else '') if args.allow_upload else ''),
          flush=True)
    try:
        mirror.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        mirror.stop()
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog='python -m sdzoo.mirror.server', description=__doc__.split('\n\n')[0])
    add_mirror_arguments(parser)
    return run_mirror(parser.parse_args(argv))


if __name__ == '__main__':
    sys.exit(main())
