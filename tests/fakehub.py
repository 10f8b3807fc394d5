"""A fake Hugging Face Hub on 127.0.0.1 for the download tests (tests/test_hub.py).

It answers the requests huggingface_hub's downloads make, with the headers the real Hub sends (read from
huggingface_hub's file_download.py / utils/_http.py):

- ``GET /api/models/{repo}[/revision/{rev}]`` model info: ``sha``, ``gated``, ``siblings`` (with ``size`` and
  ``blobId`` when ``?blobs=True``);
- ``GET /api/models/{repo}/auth-check``: 200, or 401/403 with ``X-Error-Code: GatedRepo`` for a gated repo;
- ``GET /api/models/{repo}/tree/{rev}`` the file listing;
- ``HEAD|GET /{repo}/resolve/{rev}/{file}``: ``X-Repo-Commit``, ``ETag``, ``Content-Length`` (+ the bytes);
- unknown repo: 404 ``X-Error-Code: RepoNotFound``; unknown revision: 404 ``RevisionNotFound``; gated repo
  without a token: 401, with a token that was not granted access: 403 (``X-Error-Code: GatedRepo``);
  a token starting ``hf_invalid``: 401 ``Invalid credentials in Authorization header`` on every route.

Every request is logged in ``FakeHub.log`` as ``(method, path, authorization header)``.
"""
from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

_REPO = r"(?P<repo>[^/]+/[^/]+)"
ROUTES = [
    ("info", re.compile(rf"^/api/models/{_REPO}(?:/revision/(?P<rev>[^/]+))?$")),
    ("auth", re.compile(rf"^/api/models/{_REPO}/auth-check$")),
    ("tree", re.compile(rf"^/api/models/{_REPO}/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?$")),
    ("file", re.compile(rf"^/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")),
]


@dataclass
class FakeRepo:
    files: dict[str, bytes]
    gated: bool = False
    tokens: set[str] = field(default_factory=set)    # tokens whose account accepted the licence

    @property
    def sha(self) -> str:
        h = hashlib.sha1()
        for name in sorted(self.files):
            h.update(name.encode() + b"\0" + self.files[name])
        return h.hexdigest()


class FakeHub:
    """``with FakeHub() as hub: hub.add(repo, {name: bytes}); ... hub.url``."""

    def __init__(self) -> None:
        self.repos: dict[str, FakeRepo] = {}
        self.log: list[tuple[str, str, str | None]] = []
        self.auth_check_route = True     # False: like a mirror that does not serve /auth-check (plain 404)
        self._server: ThreadingHTTPServer | None = None

    def add(self, repo_id: str, files: dict[str, bytes], gated: bool = False, tokens=()) -> FakeRepo:
        self.repos[repo_id] = FakeRepo(dict(files), gated, set(tokens))
        return self.repos[repo_id]

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> FakeHub:
        hub = self

        class Handler(_Handler):
            fake = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()


class _Handler(BaseHTTPRequestHandler):
    fake: FakeHub

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def _send(self, status: int, payload: bytes = b"", headers: dict | None = None, body: bool = True) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if body:
            self.wfile.write(payload)

    def _error(self, status: int, code: str | None, message: str, body: bool) -> None:
        headers = {"Content-Type": "application/json", "X-Error-Message": message}
        if code:
            headers["X-Error-Code"] = code
        self._send(status, json.dumps({"error": message}).encode(), headers, body)

    def _serve(self, body: bool) -> None:
        url = urlsplit(self.path)
        path = unquote(url.path)
        auth = self.headers.get("Authorization")
        self.fake.log.append((self.command, path, auth))
        for kind, rx in ROUTES:
            m = rx.match(path)
            if m:
                break
        else:
            return self._error(404, None, "Not Found", body)
        if kind == "auth" and not self.fake.auth_check_route:
            return self._error(404, None, "Not Found", body)
        if (auth or "").startswith("Bearer hf_invalid"):     # what the Hub answers for a revoked/typo token
            return self._error(401, None, "Invalid credentials in Authorization header", body)
        repo = self.fake.repos.get(m["repo"])
        if repo is None:
            return self._error(404, "RepoNotFound", "Repository not found", body)
        rev = m.groupdict().get("rev")
        if rev not in (None, "main", repo.sha):
            return self._error(404, "RevisionNotFound", "Invalid rev id: " + rev, body)
        if kind in ("auth", "file") and repo.gated:
            token = (auth or "").removeprefix("Bearer ").strip()
            if not token:
                return self._error(401, "GatedRepo", "Access to this model is restricted. You must be "
                                   "authenticated to access it.", body)
            if token not in repo.tokens:
                return self._error(403, "GatedRepo", "Access to this model is restricted and you are not in the "
                                   "authorized list.", body)
        if kind == "info":
            blobs = parse_qs(url.query).get("blobs", ["False"])[0].lower() == "true"
            siblings = [{"rfilename": n, **({"size": len(b), "blobId": _blob(b)} if blobs else {})}
                        for n, b in sorted(repo.files.items())]
            info = {"_id": "x", "id": m["repo"], "modelId": m["repo"], "sha": repo.sha, "private": False,
                    "gated": "manual" if repo.gated else False, "disabled": False, "siblings": siblings}
            return self._send(200, json.dumps(info).encode(), {"Content-Type": "application/json"}, body)
        if kind == "auth":
            return self._send(200, b"{}", {"Content-Type": "application/json"}, body)
        if kind == "tree":
            entries = [{"type": "file", "oid": _blob(b), "size": len(b), "path": n}
                       for n, b in sorted(repo.files.items())]
            return self._send(200, json.dumps(entries).encode(), {"Content-Type": "application/json"}, body)
        data = repo.files.get(m["path"])
        if data is None:
            return self._error(404, "EntryNotFound", f"{m['path']} does not exist on main", body)
        self._send(200, data, {"X-Repo-Commit": repo.sha, "ETag": f'"{hashlib.sha256(data).hexdigest()}"',
                               "Content-Type": "application/octet-stream"}, body)


def _blob(data: bytes) -> str:
    """The git blob id of ``data`` (what the Hub reports as ``blobId`` / ``oid``)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
