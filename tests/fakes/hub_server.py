"""A local Hugging Face Hub for tests: a real HTTP server on 127.0.0.1 serving repositories
from a folder, speaking the part of the Hub's API that huggingface_hub 1.33 uses to resolve a
revision (``HfApi.model_info``) and download files (``hf_hub_download``, ``http_get``).

Why not olah (PyPI, a self-hosted Hub mirror): it is a caching proxy of huggingface.co. It can
serve local repositories ("mirrors_path"), but only as git checkouts (GitPython, LFS objects
under ``.git/lfs``), it ignores ``Range`` (a resumed download cannot be observed), it has no
private or gated repositories (``private: False`` always), and it needs a dozen packages that
no Quantgate environment has (GitPython, peewee, portalocker, fastapi-utils, brotli, ...).

Layout under ``root`` (``add_repo`` writes it)::

    root/<org>/<name>/refs.json        {"main": "<commit>"}: branch -> commit
    root/<org>/<name>/access.json      {"token": "...", "gated": false}  (absent: public)
    root/<org>/<name>/<commit>/...     the files of each commit

What it answers, as the Hub does:

- ``GET /api/models/<repo>[/revision/<rev>][?blobs=true]``: the repo's info, ``sha`` = the
  commit, ``siblings`` with ``size``/``blobId``/``lfs`` when ``blobs`` is asked.
- ``GET /api/models/<repo>/tree/<rev>[/<folder>][?recursive=true]``: the files (``oid``,
  ``size``, ``lfs``) and folders, in one page (what ``snapshot_download`` lists).
- ``HEAD|GET /<repo>/resolve/<rev>/<file>``: a git file answers 200 with ``X-Repo-Commit``,
  ``ETag`` (its git blob id) and the body; an LFS file (weights, or over 10 MiB) answers 302 to
  the "CDN" with ``X-Repo-Commit``, ``X-Linked-Etag`` (its sha256) and ``X-Linked-Size``.
- ``HEAD|GET /cdn/<repo>/<commit>/<file>?sig=...``: the CDN, on the host name ``localhost``
  instead of ``127.0.0.1`` so that the client treats it as another host (as it treats the
  Hub's real CDN); like S3 with a signed URL it refuses a request that carries an
  ``Authorization`` header (400), so a client that leaks the token there fails.
- Bodies honour ``Range: bytes=N-`` / ``bytes=N-M`` (206, ``Content-Range``; 416 past the end).
- Errors carry ``X-Error-Code``: ``RepoNotFound`` (404; 401 for a private repo asked without a
  token), ``GatedRepo`` (401 without a token), ``RevisionNotFound`` (404), ``EntryNotFound``
  (404). A token the repo does not accept gets 401 "Invalid credentials in Authorization
  header", the Hub's answer to a token it does not know.

``HubServer.requests`` records every request; ``HubServer.stall`` holds a file's body after N
bytes until released, so that a test can interrupt a download midway.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import hmac
import json
import secrets
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote

LFS_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.model", "*.gguf")
LFS_MIN_SIZE = 10 * 1024 * 1024
CHUNK = 64 * 1024


@dataclass(frozen=True)
class HubRequest:
    method: str
    path: str  # decoded, without the query
    range: str | None
    authorization: str | None


@dataclass
class Stall:
    """A body held after ``after`` bytes: ``reached`` once it is held, sent no further (the
    connection drops) once ``release`` is set."""

    after: int
    reached: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)


@dataclass(frozen=True)
class Blob:
    path: Path
    size: int
    git_sha1: str
    sha256: str
    lfs: bool


def read_blob(path: Path, name: str) -> Blob:
    data = path.read_bytes()
    git = hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()
    lfs = len(data) > LFS_MIN_SIZE or any(fnmatch.fnmatch(name, p) for p in LFS_PATTERNS)
    return Blob(path, len(data), git, hashlib.sha256(data).hexdigest(), lfs)


def add_repo(
    root: Path,
    repo: str,
    folder: Path,
    branch: str = "main",
    token: str | None = None,
    gated: bool = False,
) -> str:
    """Commit ``folder``'s files to ``repo`` on ``branch`` (created if new); the commit id."""
    repo_dir = root / repo
    repo_dir.mkdir(parents=True, exist_ok=True)
    refs_file = repo_dir / "refs.json"
    refs: dict[str, str] = json.loads(refs_file.read_text()) if refs_file.exists() else {}
    digest = hashlib.sha1(refs.get(branch, "").encode(), usedforsecurity=False)
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(folder).as_posix()}\n".encode() + path.read_bytes())
    commit = digest.hexdigest()
    shutil.copytree(folder, repo_dir / commit, dirs_exist_ok=True)
    refs_file.write_text(json.dumps({**refs, branch: commit}))
    if token is not None:
        (repo_dir / "access.json").write_text(json.dumps({"token": token, "gated": gated}))
    return commit


class HubServer:
    """The running fake: ``url`` is its ``HF_ENDPOINT``."""

    def __init__(self, root: Path, port: int) -> None:
        self.root = root
        self.url = f"http://127.0.0.1:{port}"
        self.cdn_url = f"http://localhost:{port}/cdn"
        self._secret = secrets.token_bytes(16)
        self._lock = threading.Lock()
        self._requests: list[HubRequest] = []
        self._stalls: dict[str, Stall] = {}  # not yet taken by a body
        self._every_stall: list[Stall] = []

    @property
    def requests(self) -> list[HubRequest]:
        """Every request so far, in order (a copy)."""
        with self._lock:
            return list(self._requests)

    def stall(self, file: str, after: int) -> Stall:
        """Hold the next body of the repository file ``file`` after ``after`` bytes."""
        stall = Stall(after)
        with self._lock:
            self._stalls[file] = stall
            self._every_stall.append(stall)
        return stall

    def record(self, request: HubRequest) -> None:
        with self._lock:
            self._requests.append(request)

    def take_stall(self, file: str) -> Stall | None:
        with self._lock:
            return self._stalls.pop(file, None)

    def release_all(self) -> None:
        with self._lock:
            for stall in self._every_stall:
                stall.release.set()

    def sign(self, path: str) -> str:
        return hmac.new(self._secret, path.encode(), "sha256").hexdigest()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    hub: HubServer


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self._dispatch(send_body=True)

    def do_HEAD(self) -> None:
        self._dispatch(send_body=False)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the test reads ``HubServer.requests``."""

    def _dispatch(self, send_body: bool) -> None:
        path, _, query = self.path.partition("?")
        parts = [unquote(p) for p in path.split("/")[1:]]
        hub = self.server.hub
        hub.record(
            HubRequest(
                self.command, unquote(path), self.headers["Range"], self.headers["Authorization"]
            )
        )
        self._send_body = send_body
        if parts[:2] == ["api", "models"] and len(parts) >= 4:
            self._api("/".join(parts[2:4]), parts[4:], parse_qs(query))
        elif len(parts) >= 5 and parts[2] == "resolve":
            self._resolve("/".join(parts[:2]), parts[3], "/".join(parts[4:]))
        elif len(parts) >= 5 and parts[0] == "cdn":
            self._cdn("/".join(parts[1:]), parse_qs(query))
        else:
            self._error(404, None, "Not Found")

    # --- the repository, its access, its revisions ---------------------------------------

    def _repo_dir(self, repo: str) -> Path | None:
        repo_dir = self.server.hub.root / repo
        return repo_dir if (repo_dir / "refs.json").is_file() else None

    def _allowed(self, repo: str, repo_dir: Path) -> bool:
        """True if the request may read the repo; else the Hub's refusal is sent."""
        access_file = repo_dir / "access.json"
        if not access_file.is_file():
            return True
        access = json.loads(access_file.read_text())
        authorization = self.headers["Authorization"]
        if authorization == f"Bearer {access['token']}":
            return True
        if authorization is not None:
            self._error(401, None, "Invalid credentials in Authorization header")
        elif access["gated"]:
            self._error(401, "GatedRepo", f"Access to model {repo} is restricted.")
        else:
            self._error(401, "RepoNotFound", "Repository not found")
        return False

    def _commit(self, repo_dir: Path, revision: str) -> str | None:
        refs: dict[str, str] = json.loads((repo_dir / "refs.json").read_text())
        if revision in refs:
            return refs[revision]
        is_commit = len(revision) == 40 and all(c in "0123456789abcdef" for c in revision)
        return revision if is_commit and (repo_dir / revision).is_dir() else None

    def _open(self, repo: str, revision: str) -> tuple[Path, str] | None:
        """The repo folder and the commit, or None once the error is sent."""
        repo_dir = self._repo_dir(repo)
        if repo_dir is None:
            self._error(404, "RepoNotFound", "Repository not found")
            return None
        if not self._allowed(repo, repo_dir):
            return None
        commit = self._commit(repo_dir, revision)
        if commit is None:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            return None
        return repo_dir, commit

    # --- the three endpoints ---------------------------------------------------------------

    def _api(self, repo: str, rest: list[str], query: dict[str, list[str]]) -> None:
        if not rest:
            self._model_info(repo, None, query)
        elif len(rest) == 2 and rest[0] == "revision":
            self._model_info(repo, rest[1], query)
        elif len(rest) >= 2 and rest[0] == "tree":
            recursive = query.get("recursive", ["false"])[0].lower() in ("true", "1")
            self._tree(repo, rest[1], "/".join(rest[2:]), recursive)
        else:
            self._error(404, None, "Not Found")

    def _model_info(self, repo: str, revision: str | None, query: dict[str, list[str]]) -> None:
        opened = self._open(repo, revision or "main")
        if opened is None:
            return
        repo_dir, commit = opened
        blobs = query.get("blobs", ["false"])[0].lower() in ("true", "1")
        files = sorted(p for p in (repo_dir / commit).rglob("*") if p.is_file())
        siblings = [self._sibling(repo_dir / commit, path, blobs) for path in files]
        access = repo_dir / "access.json"
        gated = access.is_file() and json.loads(access.read_text())["gated"]
        info = {
            "_id": hashlib.sha1(repo.encode(), usedforsecurity=False).hexdigest()[:24],
            "id": repo,
            "modelId": repo,
            "author": repo.split("/")[0],
            "sha": commit,
            "lastModified": "2026-01-01T00:00:00.000Z",
            "createdAt": "2026-01-01T00:00:00.000Z",
            "private": access.is_file() and not gated,
            "gated": "manual" if gated else False,
            "disabled": False,
            "tags": [],
            "siblings": siblings,
        }
        self._send(200, {"Content-Type": "application/json"}, json.dumps(info).encode())

    def _sibling(self, commit_dir: Path, path: Path, blobs: bool) -> dict[str, object]:
        name = path.relative_to(commit_dir).as_posix()
        if not blobs:
            return {"rfilename": name}
        blob = read_blob(path, name)
        sibling: dict[str, object] = {"rfilename": name, "size": blob.size}
        sibling["blobId"] = blob.git_sha1
        if blob.lfs:
            sibling["lfs"] = {"size": blob.size, "sha256": blob.sha256, "pointerSize": 134}
        return sibling

    def _tree(self, repo: str, revision: str, folder: str, recursive: bool) -> None:
        opened = self._open(repo, revision)
        if opened is None:
            return
        commit_dir = opened[0] / opened[1]
        base = commit_dir / folder
        if not base.is_dir():
            self._error(404, "EntryNotFound", f"{folder} does not exist")
            return
        entries: list[dict[str, object]] = []
        for path in sorted(base.rglob("*") if recursive else base.iterdir()):
            name = path.relative_to(commit_dir).as_posix()
            if path.is_dir():
                oid = hashlib.sha1(name.encode(), usedforsecurity=False).hexdigest()
                entries.append({"type": "directory", "oid": oid, "size": 0, "path": name})
                continue
            blob = read_blob(path, name)
            entry: dict[str, object] = {"type": "file", "oid": blob.git_sha1, "size": blob.size}
            if blob.lfs:
                entry["lfs"] = {"oid": blob.sha256, "size": blob.size, "pointerSize": 134}
            entries.append(entry | {"path": name})
        self._send(200, {"Content-Type": "application/json"}, json.dumps(entries).encode())

    def _resolve(self, repo: str, revision: str, file: str) -> None:
        opened = self._open(repo, revision)
        if opened is None:
            return
        repo_dir, commit = opened
        path = self._file(repo_dir / commit, file)
        if path is None:
            self._error(404, "EntryNotFound", f"{file} does not exist", {"X-Repo-Commit": commit})
            return
        blob = read_blob(path, file)
        headers = {"X-Repo-Commit": commit}
        if not blob.lfs:
            self._serve_blob(blob, file, {**headers, "ETag": f'"{blob.git_sha1}"'})
            return
        cdn_path = f"{repo}/{commit}/{file}"
        location = (
            f"{self.server.hub.cdn_url}/{quote(cdn_path)}?sig={self.server.hub.sign(cdn_path)}"
        )
        headers |= {"Location": location, "ETag": f'"{blob.sha256}"'}
        headers |= {"X-Linked-Etag": f'"{blob.sha256}"', "X-Linked-Size": str(blob.size)}
        self._send(302, headers, b"")

    def _cdn(self, cdn_path: str, query: dict[str, list[str]]) -> None:
        if self.headers["Authorization"] is not None:
            self._error(400, None, "Only one auth mechanism allowed")
            return
        if not hmac.compare_digest(query.get("sig", [""])[0], self.server.hub.sign(cdn_path)):
            self._error(403, None, "Request has expired or signature does not match")
            return
        repo_org, repo_name, commit, file = cdn_path.split("/", 3)
        path = self._file(self.server.hub.root / repo_org / repo_name / commit, file)
        if path is None:
            self._error(404, None, "NoSuchKey")
            return
        blob = read_blob(path, file)
        self._serve_blob(blob, file, {"ETag": f'"{blob.sha256}"'})

    @staticmethod
    def _file(commit_dir: Path, file: str) -> Path | None:
        path = (commit_dir / file).resolve()
        inside = path.is_relative_to(commit_dir.resolve())
        return path if inside and path.is_file() else None

    # --- bodies and errors -----------------------------------------------------------------

    def _serve_blob(self, blob: Blob, file: str, headers: dict[str, str]) -> None:
        start, end = 0, blob.size - 1
        status = 200
        requested = self.headers["Range"]
        if requested is not None:
            first, _, last = requested.removeprefix("bytes=").partition("-")
            start, end = int(first), int(last) if last else blob.size - 1
            if start >= blob.size:
                self._error(
                    416, None, "Range Not Satisfiable", {"Content-Range": f"bytes */{blob.size}"}
                )
                return
            status, end = 206, min(end, blob.size - 1)
            headers = {**headers, "Content-Range": f"bytes {start}-{end}/{blob.size}"}
        headers = {**headers, "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
        body = blob.path.read_bytes()[start : end + 1]
        self._send_head(status, headers, len(body))
        if self._send_body:
            self._write(body, self.server.hub.take_stall(file))

    def _write(self, body: bytes, stall: Stall | None) -> None:
        sent = 0
        while sent < len(body):
            if stall is not None and sent >= stall.after:
                stall.reached.set()
                stall.release.wait(60)
                self.close_connection = True
                return
            limit = len(body) if stall is None else stall.after
            chunk = body[sent : min(sent + CHUNK, limit)]
            self.wfile.write(chunk)
            sent += len(chunk)

    def _error(
        self, status: int, code: str | None, message: str, headers: dict[str, str] | None = None
    ) -> None:
        extra = {"X-Error-Message": message, "Content-Type": "application/json"}
        if code is not None:
            extra["X-Error-Code"] = code
        self._send(status, {**(headers or {}), **extra}, json.dumps({"error": message}).encode())

    def _send(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self._send_head(status, headers, len(body))
        if self._send_body:
            self.wfile.write(body)

    def _send_head(self, status: int, headers: dict[str, str], length: int) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(length))
        self.end_headers()


@contextlib.contextmanager
def serve_hub(root: Path) -> Iterator[HubServer]:
    """A fake Hub serving the repositories under ``root`` on a free port of 127.0.0.1."""
    server = _Server(("127.0.0.1", 0), _Handler)
    server.hub = HubServer(root, server.server_address[1])
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.hub
    finally:
        server.hub.release_all()
        server.shutdown()
        server.server_close()
        thread.join(10)
