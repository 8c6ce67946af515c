"""A small Hugging Face Hub-compatible server for weight folders: an offline mirror and a test Hub.

Serves ``<root>/<name>/`` as the model repo ``<owner>/<name>`` (``--owner``, default ``sdzoo``;
other owners live in ``<root>/<owner>/<name>/``) with the endpoints ``huggingface_hub`` uses for
``hf_hub_download`` / ``snapshot_download`` / ``model_info`` / ``list_models``, so that with
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

A repo id maps to exactly one folder and a folder to at most one repo id: an owner's folder
(``<root>/<owner>/``, marked by ``.mirror-owner``, or laid out by hand with folders only) is never
a repo, a repo never holds another (a nested folder with repo settings is left out of it), and a
repo that would lie inside another repo, or where an owner's folder is, cannot be created.
Connections are bounded: each gets a socket timeout (``--timeout``, an idle or stalled client is
dropped) and at most ``--max-connections`` are served at once (one thread each; beyond that the
mirror answers 503 and closes).

This module is the server, its repo storage and its command line; the HTTP endpoints are
:mod:`sdzoo.mirror.endpoints`.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import socket
import sys
import threading
from collections import deque
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any, Deque, Dict, List, Optional, Set, Tuple

from .endpoints import CHUNK_BYTES, META_FILE, NAME_PATTERN, MirrorHandler, HubError

__all__ = ['HubMirror', 'main']

DEFAULT_MAX_UPLOAD = 2 << 30  # a commit carries whole files, base64-encoded, in its body
DEFAULT_TIMEOUT = 30.0  # seconds a connection may sit idle or stall mid-request before it is dropped
DEFAULT_MAX_CONNECTIONS = 32  # connections served at once (one thread each); more get 503
OWNER_FILE = '.mirror-owner'  # marks <root>/<owner>/ as an owner's folder: never a repo itself
CONNECTION_THREAD = 'sdzoo-hub-mirror-connection'
_BUSY_BODY = b'{"error": "too many connections to this mirror, retry shortly"}'
_BUSY = (b'HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: %d\r\n'
         b'Retry-After: 1\r\nConnection: close\r\nX-Error-Message: too many connections to this mirror\r\n\r\n%s'
         % (len(_BUSY_BODY), _BUSY_BODY))


class _MirrorServer(ThreadingHTTPServer):
    """ThreadingHTTPServer with a cap on connections served at once: a thread per connection, so without
    a cap idle clients could pile up threads without end. Beyond the cap a connection gets 503 and is closed."""

    daemon_threads = True

    def __init__(self, address: Tuple[str, int], max_connections: int):
        if max_connections < 1:
            raise ValueError(f'max_connections must be at least 1, not {max_connections}')
        self.slots = threading.BoundedSemaphore(max_connections)
        self.open: Set[socket.socket] = set()  # connections being served, shut down by stop()
        self.open_lock = threading.Lock()
        super().__init__(address, MirrorHandler)

    def process_request(self, request: socket.socket, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            self._refuse(request)
            return
        with self.open_lock:
            self.open.add(request)
        try:
            threading.Thread(target=self.process_request_thread, args=(request, client_address),
                             name=CONNECTION_THREAD, daemon=True).start()
        except RuntimeError:  # no thread to be had: refuse this one instead of failing the server
            self._release(request)
            self.shutdown_request(request)

    def process_request_thread(self, request: socket.socket, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._release(request)

    def _release(self, request: socket.socket) -> None:
        with self.open_lock:
            self.open.discard(request)
        self.slots.release()

    def _refuse(self, request: socket.socket) -> None:
        """503 without blocking the accepting thread (the answer fits the socket buffer), then close."""
        try:
            request.setblocking(False)
            try:
                request.recv(65536)  # what the client already sent: unread data would make close() a reset
            except OSError:
                pass
            request.send(_BUSY)
        except OSError:
            pass
        self.shutdown_request(request)

    @property
    def active(self) -> int:
        with self.open_lock:
            return len(self.open)

    def close_connections(self) -> None:
        """Wake every connection thread (a blocked read returns end-of-file), so that stop() leaves none idle."""
        with self.open_lock:
            conns = list(self.open)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


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
            timeout: Optional[float] = DEFAULT_TIMEOUT,
            max_connections: int = DEFAULT_MAX_CONNECTIONS,
    ):
        self.root = Path(root).resolve()
        if not self.root.is_dir():
            raise FileNotFoundError(f'mirror root {self.root} is not a directory')
        self.owner = owner
        self.allow_upload = allow_upload
        self.token = token
        self.verbose = verbose
        self.max_upload_bytes = int(max_upload_bytes)
        self.timeout = timeout  # per socket operation, for each connection (None: wait for ever)
        self.requests: Deque[Tuple[str, str]] = deque(maxlen=10000)  # (method, path): the latest requests
        self.write_lock = threading.Lock()  # one repo write (create, commit) at a time
        self._hashes: Dict[Tuple[str, int, int], Tuple[str, str]] = {}
        self._server = _MirrorServer((host, port), max_connections)
        self._server.mirror = self  # type: ignore[attr-defined]
        self._thread: Optional[threading.Thread] = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f'http://{host}:{port}'

    def start(self) -> 'HubMirror':
        # a short poll: stop() waits for it (the default 0.5 s made every test's mirror slow to stop)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs=dict(poll_interval=0.05),
                                        name='sdzoo-hub-mirror', daemon=True)
        self._thread.start()
        return self

    @property
    def active_connections(self) -> int:
        """Connections being served now (each holds a thread until it closes or times out)."""
        return self._server.active

    def serve_forever(self) -> None:
        self._server.serve_forever()

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=10)
            self._thread = None
        self._server.server_close()
        self._server.close_connections()

    def __enter__(self) -> 'HubMirror':
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------------------------ repos

    def repo_dir(self, repo_id: str) -> Path:
        """The one folder of a repo id (``owner/name``, nothing else), whether or not it exists."""
        owner, sep, name = repo_id.partition('/')
        if not (sep and NAME_PATTERN.match(owner) and NAME_PATTERN.match(name)) or '..' in repo_id:
            raise HubError(400, f'invalid repo id {repo_id!r}')
        return self.root / name if owner == self.owner else self.root / owner / name

    def is_owner_folder(self, folder: Path) -> bool:
        """Whether a folder of the root holds other owners' repos instead of being a repo: marked so when
        created here, or laid out by hand with folders only. Repo settings (META_FILE) make it a repo."""
        if not folder.is_dir() or (folder / META_FILE).exists():
            return False
        if (folder / OWNER_FILE).exists():
            return True
        entries = [e for e in folder.iterdir() if not e.name.startswith('.')]
        return bool(entries) and all(e.is_dir() for e in entries)

    def existing_repo(self, repo_id: str) -> Path:
        """The folder of an existing repo; an owner's folder, or a folder inside a repo, is none."""
        d = self.repo_dir(repo_id)
        if d.parent == self.root:  # the default owner's repo: not an owner's folder
            found = d.is_dir() and not self.is_owner_folder(d)
        else:  # another owner's: in that owner's folder, not in a repo
            found = d.is_dir() and self.is_owner_folder(d.parent)
        if not found:
            raise HubError(404, f'Repository {repo_id} not found', 'RepoNotFound')
        return d

    def repos(self) -> List[Tuple[str, Path]]:
        """Every (repo id, folder) of the mirror, each folder once, as existing_repo() maps them."""
        out = []
        for top in sorted(self.root.iterdir()):
            if not (top.is_dir() and NAME_PATTERN.match(top.name)):
                continue
            if not self.is_owner_folder(top):
                out.append((f'{self.owner}/{top.name}', top))
            elif top.name != self.owner:  # <root>/<default owner>/x would be reachable as no id
                out += [(f'{top.name}/{d.name}', d) for d in sorted(top.iterdir())
                        if d.is_dir() and NAME_PATTERN.match(d.name)]
        return out

    def create_repo(self, repo_id: str, private: bool) -> Path:
        """A new empty repo. Refused where its folder is, or would be inside, another repo or an owner's
        folder: a repo created there would change what another repo id serves."""
        d = self.repo_dir(repo_id)
        owner, name = repo_id.split('/')
        with self.write_lock:
            if owner != self.owner and d.parent.exists() and not self.is_owner_folder(d.parent):
                raise HubError(400, f'cannot create {repo_id}: {owner!r} is not an owner on this mirror but the repo '
                                    f'{self.owner}/{owner}, and a repo cannot hold another')
            if owner == self.owner and self.is_owner_folder(d):
                raise HubError(400, f'cannot create {repo_id}: {name!r} is an owner on this mirror (its repos are '
                                    f'{name}/<name>), so it cannot also be a repo of {self.owner}')
            if d.exists():
                raise HubError(409, 'You already created this model repo')
            if owner != self.owner:
                d.parent.mkdir(exist_ok=True)
                (d.parent / OWNER_FILE).touch()
            d.mkdir()
            (d / META_FILE).write_text(json.dumps({'private': private}), encoding='utf-8')
        return d

    def files(self, repo: Path) -> List[str]:
        """The repo's files: no dotfile (META_FILE), nothing inside a dot folder or a nested repo's folder."""
        out = []
        for top, dirs, names in os.walk(repo):
            dirs[:] = [d for d in dirs if not d.startswith('.') and not os.path.exists(os.path.join(top, d, META_FILE))]
            rel = Path(top).relative_to(repo)
            out += [(rel / n).as_posix() for n in names
                    if not n.startswith('.') and os.path.isfile(os.path.join(top, n))]
        return sorted(out)

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
    parser.add_argument('--timeout', type=float, default=DEFAULT_TIMEOUT,
                        help='seconds a connection may sit idle or stall mid-request before it is dropped '
                             '(default: %(default).0f)')
    parser.add_argument('--max-connections', type=int, default=DEFAULT_MAX_CONNECTIONS,
                        help='connections served at once, one thread each; more get 503 (default: %(default)d)')
    parser.add_argument('-q', '--quiet', action='store_true', help='do not log requests')


def run_mirror(args: argparse.Namespace) -> int:
    mirror = HubMirror(args.root, owner=args.owner, host=args.host, port=args.port,
                       allow_upload=args.allow_upload, token=args.token, verbose=not args.quiet,
                       max_upload_bytes=int(args.max_upload_mb * 2 ** 20), timeout=args.timeout,
                       max_connections=args.max_connections)
    repos = [repo_id for repo_id, _ in mirror.repos()]
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
