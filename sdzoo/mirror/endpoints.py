"""The Hub mirror's HTTP endpoints: the reads huggingface_hub downloads with (resolve, model info, tree,
paths-info, list models) and the writes it uploads with (create repo, preupload, commit), behind one
request handler. Every read checks the repo's visibility (:meth:`MirrorHandler._readable_repo`) and
every header value sent is ASCII without control characters (:meth:`MirrorHandler.send_header`).

The server, its repo storage and its command line are :mod:`sdzoo.mirror.server`.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import shutil
import sys
import tempfile
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Dict, List, Optional, Tuple
from urllib.parse import parse_qs, unquote, urlsplit

NAME_PATTERN = re.compile(r'^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$')
META_FILE = '.mirror.json'  # repo settings (private flag); dotfiles are never served
CHUNK_BYTES = 1 << 20
_SMALL_BODY = 1 << 20  # validate-yaml, create, preupload: a few KiB of JSON


class HubError(Exception):
    def __init__(self, status: int, message: str, code: Optional[str] = None, headers: Optional[dict] = None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}


_UNSAFE_PATH_CHARS = re.compile(r'[\\\x00-\x1f\x7f]')  # a backslash is a separator elsewhere; controls: no names
_HEADER_UNSAFE = re.compile(r'[\x00-\x1f\x7f]')
_QUOTED_UNSAFE = re.compile(r'[^ -~]|["\\]')  # in a quoted header parameter: printable ASCII but " and \


def _safe_relpath(path: str) -> str:
    """A file path inside a repo, as uploaded or asked for: refused (400), never cleaned up, unless it is
    relative, without ``..``, ``.`` or empty parts, dotfiles (META_FILE), backslashes or control characters.
    Nothing is percent-decoded here: ``%2e%2e`` is a literal name inside the repo."""
    if (not isinstance(path, str) or not path or path.startswith('/') or _UNSAFE_PATH_CHARS.search(path)
            or any(part in ('', '.', '..') or part.startswith('.') for part in path.split('/'))):
        raise HubError(400, f'invalid path in repo: {path!r}')
    return path


def _header_value(text: str) -> str:
    """ASCII without control characters: send_header encodes latin-1 (a '€' raised, so no answer at all)
    and a CR or LF would end the header early."""
    text = text.encode('ascii', 'backslashreplace').decode('ascii')
    return _HEADER_UNSAFE.sub(lambda m: f'\\x{ord(m.group()):02x}', text)


def _front_matter(text: str) -> Dict[str, Any]:
    import yaml
    m = re.match(r'^---\s*\n(.*?)\n---\s*(\n|$)', text, re.S)
    if not m:
        return {}
    data = yaml.safe_load(m.group(1)) or {}
    if not isinstance(data, dict):
        raise ValueError('the README.md metadata must be a YAML mapping')
    return data


class _ReadEndpoints:
    """GET/HEAD: file downloads (with ranges), model info and file trees of a repo."""

    def _get(self, parts: List[str], head: bool) -> None:
        if len(parts) >= 5 and parts[2] == 'resolve':
            return self._resolve(f'{parts[0]}/{parts[1]}', parts[3], '/'.join(parts[4:]), head)
        if parts == ['api', 'models']:
            return self._list_models(head)
        if len(parts) >= 4 and parts[:2] == ['api', 'models']:
            repo_id = f'{parts[2]}/{parts[3]}'
            rest = parts[4:]
            if not rest:
                return self._model_info(repo_id, 'main', head)
            if len(rest) == 2 and rest[0] == 'revision':
                return self._model_info(repo_id, rest[1], head)
            if len(rest) >= 2 and rest[0] == 'tree':
                return self._tree(repo_id, rest[1], '/'.join(rest[2:]).rstrip('/'), head)
        raise HubError(404, f'{"/".join(parts)}: not an endpoint of this mirror')

    def _resolve(self, repo_id: str, revision: str, filename: str, head: bool) -> None:
        hub = self.hub
        repo = self._readable_repo(repo_id)
        commit = hub.check_revision(repo, repo_id, revision)
        rel = _safe_relpath(filename)
        path = repo / rel
        if rel not in hub.files(repo):  # the repo's files only: not a nested repo's, not a folder
            raise HubError(404, f'Entry {rel} not found in {repo_id}', 'EntryNotFound',
                            {'X-Repo-Commit': commit})
        sha256, _ = hub.hashes(path)
        size = path.stat().st_size
        start, end = 0, size - 1
        rng = self.headers.get('Range')
        m = re.fullmatch(r'bytes=(\d+)-(\d*)', rng.strip()) if rng else None
        partial = m is not None and not head and size > 0
        if partial:
            start, end = int(m.group(1)), min(int(m.group(2) or size - 1), size - 1)
            if start > end:
                raise HubError(416, f'range {rng} outside {size} bytes', headers={'Content-Range': f'bytes */{size}'})
        self.send_response(206 if partial else 200)
        self.send_header('Content-Type', 'application/octet-stream')
        self.send_header('Content-Length', str(end - start + 1 if size else 0))
        self.send_header('Accept-Ranges', 'bytes')
        self.send_header('ETag', f'"{sha256}"')
        self.send_header('X-Linked-Etag', f'"{sha256}"')
        self.send_header('X-Linked-Size', str(size))
        self.send_header('X-Repo-Commit', commit)
        shown = _QUOTED_UNSAFE.sub('_', PurePosixPath(rel).name)
        self.send_header('Content-Disposition', f'inline; filename="{shown}"')
        if partial:
            self.send_header('Content-Range', f'bytes {start}-{end}/{size}')
        self.end_headers()
        if head or size == 0:
            return
        with open(path, 'rb') as f:
            f.seek(start)
            remaining = end - start + 1
            while remaining > 0:
                block = f.read(min(CHUNK_BYTES, remaining))
                if not block:
                    break
                self.wfile.write(block)
                remaining -= len(block)

    def _model_info(self, repo_id: str, revision: str, head: bool) -> None:
        hub = self.hub
        repo = self._readable_repo(repo_id)
        commit = hub.check_revision(repo, repo_id, revision)
        files = hub.files(repo)
        siblings = []
        for f in files:
            sha256, sha1 = hub.hashes(repo / f)
            size = (repo / f).stat().st_size
            siblings.append(dict(rfilename=f, size=size, blobId=sha1,
                                 lfs=dict(sha256=sha256, size=size, pointerSize=0)))
        card: Dict[str, Any] = {}
        if (repo / 'README.md').is_file():
            try:
                card = _front_matter((repo / 'README.md').read_text(encoding='utf-8'))
            except Exception:
                card = {}
        mtime = max([(repo / f).stat().st_mtime for f in files] or [repo.stat().st_mtime])
        info = {
            '_id': commit, 'id': repo_id, 'modelId': repo_id, 'author': repo_id.split('/')[0], 'sha': commit,
            'lastModified': datetime.fromtimestamp(mtime, timezone.utc).strftime('%Y-%m-%dT%H:%M:%S.000Z'),
            'private': bool(hub.meta(repo).get('private', False)), 'disabled': False, 'gated': False,
            'downloads': 0, 'likes': 0, 'library_name': card.get('library_name'), 'tags': card.get('tags', []),
            'pipeline_tag': card.get('pipeline_tag'), 'cardData': card, 'siblings': siblings,
        }
        if 'model-index' in card:
            info['model-index'] = card['model-index']
        self._send_json(info, head=head)

    def _tree(self, repo_id: str, revision: str, path_in_repo: str, head: bool) -> None:
        hub = self.hub
        repo = self._readable_repo(repo_id)
        hub.check_revision(repo, repo_id, revision)
        recursive = 'recursive=true' in (urlsplit(self.path).query or '').lower()
        prefix = _safe_relpath(path_in_repo) + '/' if path_in_repo else ''
        entries, folders = [], set()
        for f in hub.files(repo):
            if not f.startswith(prefix):
                continue
            rest = f[len(prefix):]
            if '/' in rest and not recursive:
                folders.add(prefix + rest.split('/', 1)[0])
                continue
            if recursive:
                parents = PurePosixPath(rest).parents
                folders.update(prefix + p.as_posix() for p in parents if p.as_posix() != '.')
            entries.append(self._file_entry(repo, f))
        entries += [self._folder_entry(d) for d in sorted(folders)]
        self._send_json(entries, head=head)

    def _paths_info(self, repo_id: str, revision: str, body: bytes) -> None:
        """POST paths-info: the entries of the asked paths that exist (form or JSON ``paths``)."""
        hub = self.hub
        repo = self._readable_repo(repo_id)
        hub.check_revision(repo, repo_id, revision)
        try:
            paths = json.loads(body).get('paths', []) if body.lstrip().startswith(b'{') else \
                parse_qs(body.decode('utf-8')).get('paths', [])
        except (ValueError, AttributeError) as e:
            raise HubError(400, f'paths-info body is neither a form nor JSON with "paths": {e}')
        files, entries = hub.files(repo), []
        for path in paths if isinstance(paths, list) else []:
            try:
                rel = _safe_relpath(str(path).rstrip('/'))
            except HubError:
                continue  # a dotfile or a path outside the repo: not there
            if rel in files:
                entries.append(self._file_entry(repo, rel))
            elif any(f.startswith(rel + '/') for f in files):
                entries.append(self._folder_entry(rel))
        self._send_json(entries)

    def _list_models(self, head: bool) -> None:
        """GET /api/models: the repos this request may see (``author``, ``search``, ``limit``); no private
        repo without the token."""
        query = parse_qs(urlsplit(self.path).query)
        author, search = query.get('author', [''])[0], query.get('search', [''])[0].lower()
        out = []
        for repo_id, repo in self.hub.repos():
            if not self._may_read(repo) or (author and repo_id.split('/')[0] != author) \
                    or search not in repo_id.lower():
                continue
            private = bool(self.hub.meta(repo).get('private', False))
            out.append({'_id': repo_id, 'id': repo_id, 'modelId': repo_id, 'author': repo_id.split('/')[0],
                        'private': private, 'gated': False, 'disabled': False, 'downloads': 0, 'likes': 0,
                        'tags': []})
        limit = query.get('limit', [''])[0]
        self._send_json(out[:int(limit)] if limit.isdigit() else out, head=head)

    def _file_entry(self, repo: Path, f: str) -> Dict[str, Any]:
        sha256, sha1 = self.hub.hashes(repo / f)
        size = (repo / f).stat().st_size
        return dict(type='file', path=f, size=size, oid=sha1, lfs=dict(oid=sha256, size=size, pointerSize=0))

    @staticmethod
    def _folder_entry(d: str) -> Dict[str, Any]:
        return dict(type='directory', path=d, oid=hashlib.sha1(d.encode()).hexdigest(), size=0)


class _WriteEndpoints:
    """POST: YAML validation, repo creation, preupload and commits (``--allow-upload`` only)."""

    def _post_route(self, parts: List[str], query: Dict[str, List[str]]) -> Tuple[Callable[[bytes], None], int]:
        """(handler, body limit) of a POST, decided before its body is read; writes are authorized here."""
        if parts == ['api', 'validate-yaml']:
            return self._validate_yaml, _SMALL_BODY
        if parts == ['api', 'repos', 'create']:
            self._require_write()
            return self._create_repo, _SMALL_BODY
        if len(parts) == 6 and parts[:2] == ['api', 'models'] and parts[4] == 'paths-info':  # a read
            repo_id = f'{parts[2]}/{parts[3]}'
            self._readable_repo(repo_id)
            return (lambda body: self._paths_info(repo_id, parts[5], body)), _SMALL_BODY
        if len(parts) == 6 and parts[:2] == ['api', 'models'] and parts[4] in ('preupload', 'commit'):
            repo_id = f'{parts[2]}/{parts[3]}'
            if query.get('create_pr'):
                raise HubError(400, 'this mirror does not support pull requests')
            self._require_write()
            if parts[4] == 'preupload':
                return (lambda body: self._preupload(repo_id, parts[5], body)), _SMALL_BODY
            return (lambda body: self._commit(repo_id, parts[5], body)), self.hub.max_upload_bytes
        raise HubError(404, f'{"/".join(parts)}: not an endpoint of this mirror')

    def _json_body(self, body: bytes) -> Any:
        try:
            return json.loads(body or b'{}')
        except ValueError as e:
            raise HubError(400, f'request body is not JSON: {e}')

    def _validate_yaml(self, body: bytes) -> None:
        content = self._json_body(body).get('content', '')
        try:
            _front_matter(content)
        except Exception as e:
            return self._send_json({'errors': [{'message': f'invalid YAML metadata: {e}'}], 'warnings': []}, 400)
        self._send_json({'errors': [], 'warnings': []})

    def _create_repo(self, body: bytes) -> None:
        self._require_write()
        payload = self._json_body(body)
        if payload.get('type') not in (None, 'model'):
            raise HubError(400, f'this mirror only holds model repos, not {payload.get("type")!r}')
        name, org = payload.get('name'), payload.get('organization')
        repo_id = f'{org or self.hub.owner}/{name}'
        self.hub.repo_dir(repo_id)  # a valid id, before anything else is said about it
        private = payload.get('visibility') == 'private' or bool(payload.get('private'))
        if private and self.hub.token is None:
            raise HubError(400, 'a private repo needs a mirror started with --token (only the token may read it)')
        self.hub.create_repo(repo_id, private)
        self._send_json({'url': f'{self._base()}/{repo_id}', 'name': repo_id, 'id': repo_id})

    def _preupload(self, repo_id: str, revision: str, body: bytes) -> None:
        self._require_write()
        repo = self.hub.existing_repo(repo_id)
        self.hub.check_revision(repo, repo_id, unquote(revision))
        files = self._json_body(body).get('files', [])
        # everything "regular": the content comes inline (base64) in the commit, no LFS/Xet storage
        self._send_json({'files': [dict(path=f['path'], uploadMode='regular', shouldIgnore=False, oid=None)
                                   for f in files], 'commitOid': self.hub.commit(repo)})

    def _commit(self, repo_id: str, revision: str, body: bytes) -> None:
        self._require_write()
        hub = self.hub
        with hub.write_lock:
            repo = hub.existing_repo(repo_id)
            hub.check_revision(repo, repo_id, unquote(revision))
            ops = []
            for line in body.splitlines():
                if line.strip():
                    try:
                        ops.append(json.loads(line))
                    except ValueError as e:
                        raise HubError(400, f'commit payload is not ndjson: {e}')
            staging = Path(tempfile.mkdtemp(prefix=f'.{repo.name}.', suffix='.commit.tmp', dir=repo.parent))
            try:
                new = staging / repo.name
                shutil.copytree(repo, new)
                for op in ops:
                    self._apply(new, op)
                old = staging / 'old'
                os.replace(repo, old)
                os.replace(new, repo)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
            commit = hub.commit(repo)
        self._send_json({'success': True, 'commitOid': commit, 'commitUrl': f'{self._base()}/{repo_id}/commit/{commit}',
                         'hookOutput': ''})

    @staticmethod
    def _apply(repo: Path, op: Dict[str, Any]) -> None:
        key, value = op.get('key'), op.get('value') or {}
        if key == 'header':
            return
        if key == 'file':
            rel = _safe_relpath(value.get('path', ''))
            if value.get('encoding') != 'base64':
                raise HubError(400, f'{rel}: only base64 file content is supported')
            try:
                data = base64.b64decode(value.get('content', ''), validate=True)
            except ValueError as e:
                raise HubError(400, f'{rel}: content is not valid base64: {e}')
            target = repo / rel
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
            except OSError as e:  # e.g. a part of the path is a file, or a name too long
                raise HubError(400, f'{rel}: cannot be written in the repo: {e.strerror}')
        elif key == 'deletedFile':
            target = repo / _safe_relpath(value.get('path', ''))
            if not target.is_file():
                raise HubError(404, f'A file with this name doesn\'t exist: {value.get("path")}', 'EntryNotFound')
            target.unlink()
        elif key == 'deletedFolder':
            target = repo / _safe_relpath(value.get('path', '').rstrip('/'))
            shutil.rmtree(target, ignore_errors=True)
        elif key == 'lfsFile':
            raise HubError(400, 'this mirror takes no LFS uploads (preupload answers "regular" for every file)')
        else:
            raise HubError(400, f'unsupported commit operation {key!r}')


class MirrorHandler(_ReadEndpoints, _WriteEndpoints, BaseHTTPRequestHandler):
    """One HTTP request: routing, bodies, authorization and JSON answers; the endpoints are the mixins."""

    protocol_version = 'HTTP/1.1'
    server_version = 'sdzoo-hub-mirror'

    @property
    def hub(self) -> 'HubMirror':  # noqa: F821  (sdzoo.mirror.server, which imports this module)
        return self.server.mirror  # type: ignore[attr-defined]

    def setup(self) -> None:
        self.timeout = self.hub.timeout  # the socket's: an idle or stalled client cannot hold its thread
        super().setup()

    def log_message(self, format: str, *args) -> None:
        if self.hub.verbose:
            sys.stderr.write(f'{self.address_string()} - {_header_value(format % args)}\n')

    def send_header(self, keyword: str, value: str) -> None:
        """Every header value goes out ASCII, without CR/LF: paths and messages come from the client."""
        super().send_header(keyword, _header_value(str(value)))

    # ---------------------------------------------------------------------------------- plumbing

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        self.hub.requests.append((method, unquote(url.path)))
        parts = [unquote(p) for p in url.path.split('/')[1:]]
        body_pending = method == 'POST'
        try:
            if method == 'POST':
                # route and check permission first, then read at most the route's limit
                handler, limit = self._post_route(parts, parse_qs(url.query))
                body = self._read_body(limit)
                body_pending = False
                handler(body)
            else:
                self._get(parts, head=method == 'HEAD')
        except HubError as e:
            extra = dict(e.headers)
            if body_pending:  # an unread body would be taken for the next request: close instead
                self.close_connection = True
                extra['Connection'] = 'close'
            self._send_json({'error': e.message}, e.status, code=e.code, message=e.message, extra=extra,
                            head=method == 'HEAD')
        except (BrokenPipeError, ConnectionResetError):
            pass

    def do_GET(self) -> None:
        self._dispatch('GET')

    def do_HEAD(self) -> None:
        self._dispatch('HEAD')

    def do_POST(self) -> None:
        self._dispatch('POST')

    def _read_body(self, limit: int) -> bytes:
        length = self.headers.get('Content-Length')
        if length is None:
            raise HubError(411, 'Content-Length required')
        try:
            n = int(length)
        except ValueError:
            raise HubError(400, f'invalid Content-Length {length!r}')
        if n < 0:
            raise HubError(400, f'invalid Content-Length {length!r}')
        if n > limit:
            raise HubError(413, f'request body of {n} bytes is over the limit of {limit} bytes for this endpoint'
                                 + (' (raise it with --max-upload-mb)' if limit == self.hub.max_upload_bytes else ''))
        body = self.rfile.read(n)
        if len(body) < n:  # the client closed mid-body: never act on a truncated commit
            raise HubError(400, f'request body ended after {len(body)} of {n} bytes')
        return body

    def _base(self) -> str:
        return f'http://{self.headers.get("Host") or self.hub.url.split("//", 1)[1]}'

    def _send_json(self, obj: Any, status: int = 200, *, code: Optional[str] = None, message: Optional[str] = None,
                   extra: Optional[dict] = None, head: bool = False) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header('Content-Type', 'application/json')
        self.send_header('Content-Length', str(len(data)))
        if code:
            self.send_header('X-Error-Code', code)
        if message:
            self.send_header('X-Error-Message', message.replace('\n', ' '))  # other controls: send_header
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if not head:
            self.wfile.write(data)

    def _authorized(self) -> bool:
        if self.hub.token is None:
            return False
        got, want = self.headers.get('Authorization', ''), f'Bearer {self.hub.token}'
        return hmac.compare_digest(got.encode('utf-8', 'surrogatepass'), want.encode('utf-8', 'surrogatepass'))

    def _require_write(self) -> None:
        if not self.hub.allow_upload:
            raise HubError(403, 'this mirror is read-only (start it with --allow-upload to accept uploads)')
        if self.hub.token is not None and not self._authorized():
            raise HubError(401, 'Invalid credentials in Authorization header')

    def _readable_repo(self, repo_id: str) -> Path:
        """An existing repo this request may read: a private one only with the mirror's token (the Hub
        answers 401 RepoNotFound, which huggingface_hub reports as RepositoryNotFoundError). Every read
        route comes here; the folder is the repo id's one folder (HubMirror.existing_repo)."""
        repo = self.hub.existing_repo(repo_id)
        if not self._may_read(repo):
            raise HubError(401, f'Repository {repo_id} not found (a private repo: it needs the mirror\'s token)',
                            'RepoNotFound')
        return repo

    def _may_read(self, repo: Path) -> bool:
        """The one visibility rule, for single repos and lists alike: public, or the mirror's token."""
        return not self.hub.meta(repo).get('private') or self._authorized()
