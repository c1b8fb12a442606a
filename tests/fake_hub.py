"""A loopback stand-in for the Hugging Face Hub: just the endpoints `huggingface_hub` calls to push a dataset.

Served from a thread on 127.0.0.1; point huggingface_hub at it with `HF_ENDPOINT=http://127.0.0.1:PORT` (read
when huggingface_hub is imported, so a test runs the CLI in a subprocess with that environment, as a user would).
Implemented, in the shapes huggingface_hub 2.x sends and parses:

- POST /api/repos/create (409 when the repo exists), GET /api/datasets/{repo}[/revision/{rev}],
  POST /api/datasets/{repo}/branch/{branch}, GET /api/datasets/{repo}/tree/{rev} (one page), POST /api/validate-yaml
- POST /api/datasets/{repo}/preupload/{rev}: `lfs` for names ending in one of `lfs_suffixes`, else `regular`
- POST /datasets/{repo}.git/info/lfs/objects/batch (basic transfer), PUT /lfs/{oid} (the bytes must hash to
  the oid), POST /lfs-verify
- POST /api/datasets/{repo}/commit/{rev}: the ndjson commit, applied to the branch's files (file, lfsFile,
  deletedFile, deletedFolder)

Not implemented: the Xet storage protocol (hf_xet talks to a CAS server with its own binary formats). With hf_xet
installed, a file the Hub marks `lfs` goes through Xet, so tests either set HF_HUB_DISABLE_XET=1 (LFS over HTTP)
or keep `lfs_suffixes` empty (every file inline in the commit, through the streamed multi-commit path).

Every request is recorded (method, path, headers, body). `fault` answers every /api request with a status and
a JSON error that echoes the request's Authorization header, as a careless server might.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

REPO = r"(?P<repo>[^/]+/[^/]+)"


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes


@dataclass
class Repo:
    private: bool
    branches: dict[str, dict[str, bytes]] = field(default_factory=lambda: {"main": {".gitattributes": b"*.parquet filter=lfs\n"}})
    commits: list[dict[str, Any]] = field(default_factory=list)


class FakeHub:
    def __init__(self, lfs_suffixes: tuple[str, ...] = (".parquet",)) -> None:
        self.lfs_suffixes = lfs_suffixes
        self.repos: dict[str, Repo] = {}
        self.lfs: dict[str, bytes] = {}
        self.requests: list[Request] = []
        self.fault: int | None = None
        self.card_errors: list[str] = []  # what /api/validate-yaml finds wrong with a README.md
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> FakeHub:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def files(self, repo_id: str, branch: str = "main") -> dict[str, bytes]:
        return self.repos[repo_id].branches[branch]

    # ------------------------------------------------------------------------------------------ routes

    def answer(self, request: Request) -> tuple[int, Any, dict[str, str]]:
        with self._lock:
            self.requests.append(request)
            if self.fault is not None and request.path.startswith("/api/"):
                echoed = request.headers.get("authorization", "")
                return self.fault, {"error": f"refused the request made with '{echoed}'"}, {}
            for method, pattern, route in self._routes():
                match = re.fullmatch(pattern, request.path)
                if method == request.method and match:
                    return route(request, **match.groupdict())
            return 404, {"error": f"no route for {request.method} {request.path}"}, {}

    def _routes(self) -> list[tuple[str, str, Any]]:
        return [
            ("POST", "/api/repos/create", self._create),
            ("GET", f"/api/datasets/{REPO}(?:/revision/(?P<revision>[^/]+))?", self._info),
            ("POST", f"/api/datasets/{REPO}/branch/(?P<branch>[^/]+)", self._branch),
            ("GET", f"/api/datasets/{REPO}/tree/(?P<revision>[^/]+)", self._tree),
            ("POST", "/api/validate-yaml", self._validate_yaml),
            ("POST", f"/api/datasets/{REPO}/preupload/(?P<revision>[^/]+)", self._preupload),
            ("POST", f"/datasets/{REPO}\\.git/info/lfs/objects/batch", self._lfs_batch),
            ("PUT", "/lfs/(?P<oid>[0-9a-f]{64})", self._lfs_put),
            ("POST", "/lfs-verify", lambda request: (200, {}, {})),
            ("POST", f"/api/datasets/{REPO}/commit/(?P<revision>[^/]+)", self._commit),
        ]

    def _repo(self, repo: str, revision: str = "main") -> tuple[Repo | None, tuple[int, Any, dict[str, str]] | None]:
        if repo not in self.repos:
            return None, (404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
        if unquote(revision) not in self.repos[repo].branches:
            return None, (404, {"error": "Invalid rev id"}, {"X-Error-Code": "RevisionNotFound"})
        return self.repos[repo], None

    def _create(self, request: Request) -> tuple[int, Any, dict[str, str]]:
        payload = json.loads(request.body)
        repo_id = f"{payload['organization']}/{payload['name']}"
        if repo_id in self.repos:
            # The Hub names the existing repo too; huggingface_hub reads its url.
            return 409, {"error": "You already created this dataset repo", "url": f"{self.endpoint}/datasets/{repo_id}"}, {}
        self.repos[repo_id] = Repo(private=payload.get("visibility", "public") == "private")
        return 200, {"url": f"{self.endpoint}/datasets/{repo_id}"}, {}

    def _info(self, request: Request, repo: str, revision: str | None) -> tuple[int, Any, dict[str, str]]:
        found, error = self._repo(repo, revision or "main")
        if error:
            return error
        return 200, {"id": repo, "private": found.private, "sha": "0" * 40, "siblings": []}, {}

    def _branch(self, request: Request, repo: str, branch: str) -> tuple[int, Any, dict[str, str]]:
        found, error = self._repo(repo)
        if error:
            return error
        if unquote(branch) in found.branches:
            return 409, {"error": "Reference already exists"}, {}
        found.branches[unquote(branch)] = dict(found.branches["main"])
        return 200, {}, {}

    def _tree(self, request: Request, repo: str, revision: str) -> tuple[int, Any, dict[str, str]]:
        found, error = self._repo(repo, revision)
        if error:
            return error
        files = found.branches[unquote(revision)]
        return 200, [{"type": "file", "path": path, "size": len(data), "oid": _git_oid(data)} for path, data in sorted(files.items())], {}

    def _validate_yaml(self, request: Request) -> tuple[int, Any, dict[str, str]]:
        errors = [{"message": message} for message in self.card_errors]
        return (400 if errors else 200), {"errors": errors, "warnings": []}, {}

    def _preupload(self, request: Request, repo: str, revision: str) -> tuple[int, Any, dict[str, str]]:
        found, error = self._repo(repo, revision)
        if error:
            return error
        files = json.loads(request.body)["files"]
        modes = ["lfs" if f["path"].endswith(self.lfs_suffixes) else "regular" for f in files]
        return 200, {"files": [{"path": f["path"], "uploadMode": mode, "shouldIgnore": False} for f, mode in zip(files, modes)]}, {}

    def _lfs_batch(self, request: Request, repo: str) -> tuple[int, Any, dict[str, str]]:
        objects = []
        for item in json.loads(request.body)["objects"]:
            entry: dict[str, Any] = {"oid": item["oid"], "size": item["size"]}
            if item["oid"] not in self.lfs:
                entry["actions"] = {"upload": {"href": f"{self.endpoint}/lfs/{item['oid']}"}, "verify": {"href": f"{self.endpoint}/lfs-verify"}}
            objects.append(entry)
        return 200, {"transfer": "basic", "objects": objects}, {}

    def _lfs_put(self, request: Request, oid: str) -> tuple[int, Any, dict[str, str]]:
        if hashlib.sha256(request.body).hexdigest() != oid:
            return 400, {"error": "content does not match its oid"}, {}
        self.lfs[oid] = request.body
        return 200, {}, {}

    def _commit(self, request: Request, repo: str, revision: str) -> tuple[int, Any, dict[str, str]]:
        found, error = self._repo(repo, revision)
        if error:
            return error
        files = dict(found.branches[unquote(revision)])
        lines = [json.loads(line) for line in request.body.splitlines() if line.strip()]
        for line in lines[1:]:
            key, value = line["key"], line["value"]
            if key == "file":
                files[value["path"]] = base64.b64decode(value["content"])
            elif key == "lfsFile":
                if value["oid"] not in self.lfs or len(self.lfs[value["oid"]]) != value["size"]:
                    return 400, {"error": f"LFS object {value['oid']} was not uploaded"}, {}
                files[value["path"]] = self.lfs[value["oid"]]
            elif key == "deletedFile":
                if files.pop(value["path"], None) is None:
                    return 404, {"error": "A file with this name doesn't exist"}, {"X-Error-Code": "EntryNotFound"}
            elif key == "deletedFolder":
                files = {path: data for path, data in files.items() if not path.startswith(value["path"].rstrip("/") + "/")}
        found.branches[unquote(revision)] = files
        found.commits.append({"revision": unquote(revision), **lines[0]["value"]})
        oid = hashlib.sha1(request.body).hexdigest()
        return 200, {"commitUrl": f"{self.endpoint}/datasets/{repo}/commit/{oid}", "commitOid": oid}, {}


def _git_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _read_body(handler: BaseHTTPRequestHandler) -> bytes:
    if handler.headers.get("Transfer-Encoding", "").lower() == "chunked":
        chunks = []
        while True:
            size = int(handler.rfile.readline().split(b";")[0].strip(), 16)
            if size == 0:
                handler.rfile.readline()
                return b"".join(chunks)
            chunks.append(handler.rfile.read(size))
            handler.rfile.readline()
    return handler.rfile.read(int(handler.headers.get("Content-Length") or 0))


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _serve(self) -> None:
            url = urlsplit(self.path)
            headers = {key.lower(): value for key, value in self.headers.items()}
            request = Request(self.command, url.path, parse_qs(url.query), headers, _read_body(self))
            status, payload, extra = hub.answer(request)
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for key, value in extra.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PUT = _serve

        def log_message(self, *args: object) -> None:  # the test reads hub.requests instead
            pass

    return Handler
