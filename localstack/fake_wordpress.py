"""A constant-time, in-memory stand-in for the WordPress REST API that Pressline's publish stage uses.

Why: a benchmark of the job path must measure Pressline, not WordPress. The real local WordPress
(``infra/wordpress.py``: PHP's server and MariaDB) spends tens of milliseconds and most of a core
per request, which on a small machine would hide every change in Pressline's own cost per job. This
emulator answers the same calls correctly (the client upserts by reference, so a lookup must find
the post an earlier create made) from a dict, with no sleep, on a threaded stdlib HTTP server with
keep-alive. Run it with ``python -m localstack.fake_wordpress --port N``.

What it answers, exactly what ``shared/wordpress/client.py`` sends (under ``/wp-json``):

    GET  /wp/v2/posts?pressline_external_ref=REF&status=any&context=edit&orderby=id&order=asc&per_page=2
                                  the lookup by external reference (Pressline's mu-plugin adds the
                                  parameter; ``status``, ``order``, ``per_page``, ``page`` honoured)
    POST /wp/v2/posts             create (201); JSON ``{title, content, status, meta}``
    POST|PUT|PATCH /wp/v2/posts/ID   update (200)
    GET  /wp/v2/posts/ID          one post (``context=edit``: raw title and content, meta)
    GET  /                        the REST index (for a readiness probe)
    GET  /_fake/stats             (no ``/wp-json``, no auth) posts held and requests per route

Authentication is WordPress's Application Passwords over HTTP Basic auth: the password compares
with its spaces removed, as WordPress does. No credentials on a call that needs them answers 401
(``rest_cannot_create``, ``rest_forbidden_context``); wrong ones 401 ``incorrect_password`` or
``invalid_username``. Roles follow WordPress: a ``contributor`` may not set ``publish``, ``future``
or ``private`` (403 ``rest_cannot_publish``, which the publish stage falls back from); ``author``
and above may. Errors have WordPress's shape ``{"code", "message", "data": {"status"}}``.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import re
import select
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

REF_META = "pressline_external_ref"  # shared.wordpress.refs.REF_META (not imported: an emulator stands alone)
STATUSES = frozenset({"publish", "future", "draft", "pending", "private", "trash"})
PUBLISHING = frozenset({"publish", "future", "private"})
PUBLISHING_ROLES = frozenset({"administrator", "editor", "author"})
ROLES = frozenset({*PUBLISHING_ROLES, "contributor"})
#: The user the benchmark registers by default: ``login:application password:role``.
DEFAULT_USER = "pressline:fake wp00 app0 pass word 0000:author"
ROOT = Path(__file__).resolve().parent.parent
_POST_PATH = re.compile(r"^/wp-json/wp/v2/posts/(\d+)/?$")


#: WordPress's messages for the errors answered here.
MESSAGES = {
    "rest_cannot_create": "Sorry, you are not allowed to create posts as this user.",
    "rest_cannot_edit": "Sorry, you are not allowed to edit this post.",
    "rest_forbidden_context": "Sorry, you are not allowed to edit posts in this post type.",
    "rest_cannot_publish": "Sorry, you are not allowed to publish posts as this user.",
    "invalid_username": "Unknown username. Check again or try your email address.",
    "incorrect_password": "The provided password is an invalid application password.",
    "rest_post_invalid_id": "Invalid post ID.",
    "rest_invalid_json": "Invalid JSON body passed.",
    "rest_no_route": "No route was found matching the URL and request method.",
}


class WPError(Exception):
    """An error answered in WordPress's shape."""

    def __init__(self, status: int, code: str, message: str | None = None) -> None:
        super().__init__(message or MESSAGES.get(code, code))
        self.status = status
        self.code = code


@dataclass(frozen=True)
class User:
    id: int
    login: str
    password: str  # Application Password without spaces
    role: str


def parse_user(spec: str, user_id: int) -> User:
    """``login:password[:role]`` (role ``author`` by default)."""
    login, _, rest = spec.partition(":")
    password, _, role = rest.rpartition(":") if rest.count(":") else (rest, "", "author")
    role = role or "author"
    if not login or not password or role not in ROLES:
        raise ValueError(f"a user is login:password[:role] with role in {sorted(ROLES)}, not {spec!r}")
    return User(user_id, login, _squash(password), role)


def _squash(password: str) -> str:
    return re.sub(r"[^A-Za-z0-9]", "", password)


class Posts:
    """The site's posts, indexed by external reference; every method is thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._posts: dict[int, dict[str, Any]] = {}
        self._by_ref: dict[str, list[int]] = {}
        self._next_id = 1
        self.requests: Counter[str] = Counter()

    def count(self, route: str) -> None:
        with self._lock:
            self.requests[route] += 1

    def stats(self) -> dict[str, Any]:
        with self._lock:
            by_status = Counter(str(p["status"]) for p in self._posts.values())
            return {"posts": len(self._posts), "by_status": dict(by_status), "requests": dict(self.requests)}

    def create(self, fields: dict[str, Any], author: int) -> dict[str, Any]:
        with self._lock:
            post_id = self._next_id
            self._next_id += 1
            post: dict[str, Any] = {"id": post_id, "author": author, "status": "draft", "title": "",
                                    "content": "", "meta": {}, "date": _now()}  # fmt: skip
            self._apply(post, fields)
            self._posts[post_id] = post
            return dict(post)

    def update(self, post_id: int, fields: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            post = self._posts.get(post_id)
            if post is None:
                raise WPError(404, "rest_post_invalid_id")
            self._apply(post, fields)
            return dict(post)

    def get(self, post_id: int) -> dict[str, Any]:
        with self._lock:
            post = self._posts.get(post_id)
            if post is None:
                raise WPError(404, "rest_post_invalid_id")
            return dict(post)

    def query(self, ref: str | None, statuses: frozenset[str], descending: bool) -> list[dict[str, Any]]:
        with self._lock:
            ids = list(self._by_ref.get(ref, ())) if ref is not None else list(self._posts)
            posts = [dict(self._posts[i]) for i in sorted(ids, reverse=descending)]
        return [p for p in posts if p["status"] in statuses]

    def _apply(self, post: dict[str, Any], fields: dict[str, Any]) -> None:
        """Set the given fields; called with the lock held. The reference index follows the meta."""
        old_ref = post["meta"].get(REF_META)
        for name in ("title", "content", "status"):
            if name in fields:
                post[name] = fields[name]
        post["meta"] = {**post["meta"], **fields.get("meta", {})}
        post["modified"] = _now()
        new_ref = post["meta"].get(REF_META)
        if new_ref != old_ref:
            if old_ref:
                self._by_ref[old_ref].remove(post["id"])
            if new_ref:
                self._by_ref.setdefault(new_ref, []).append(post["id"])


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())


def _text(value: Any, name: str) -> str:
    if isinstance(value, dict):  # {"raw": ...} is accepted too
        value = value.get("raw", "")
    if not isinstance(value, str):
        raise WPError(400, "rest_invalid_param", f"Invalid parameter(s): {name}")
    return value


def post_fields(body: Any) -> dict[str, Any]:
    """The writable fields of a create or update body, checked as WordPress checks them."""
    if not isinstance(body, dict):
        raise WPError(400, "rest_invalid_json")
    fields: dict[str, Any] = {}
    for name in ("title", "content"):
        if name in body:
            fields[name] = _text(body[name], name)
    if "status" in body:
        if body["status"] not in STATUSES:
            raise WPError(400, "rest_invalid_param", "Invalid parameter(s): status")
        fields["status"] = body["status"]
    meta = body.get("meta", {})
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise WPError(400, "rest_invalid_param", "Invalid parameter(s): meta")
    fields["meta"] = {str(k): v for k, v in meta.items()}
    return fields


def render(post: dict[str, Any], base_url: str, edit: bool) -> dict[str, Any]:
    """A post as the REST API shows it (``edit``: with the raw title, content and meta)."""
    title = {"rendered": post["title"], **({"raw": post["title"]} if edit else {})}
    content = {"rendered": post["content"], "protected": False, **({"raw": post["content"]} if edit else {})}
    shown: dict[str, Any] = {
        "id": post["id"], "date": post["date"], "modified": post["modified"], "slug": f"post-{post['id']}",
        "status": post["status"], "type": "post", "link": f"{base_url}/?p={post['id']}",
        "title": title, "content": content, "author": post["author"],
    }  # fmt: skip
    if edit:
        shown["meta"] = dict(post["meta"])
    return shown


class FakeWordPress(ThreadingHTTPServer):
    """The server: its users and its posts."""

    daemon_threads = True
    request_queue_size = 256  # every publish thread may connect at once

    def __init__(self, address: tuple[str, int], users: list[User]) -> None:
        super().__init__(address, Handler)
        self.users = {u.login: u for u in users}
        self.posts = Posts()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as httpx's pool expects
    disable_nagle_algorithm = True  # headers and body leave at once, no delayed-ACK stall
    server: FakeWordPress

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: a benchmark sends thousands of requests."""

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_PATCH(self) -> None:
        self._serve("PATCH")

    def _serve(self, method: str) -> None:
        parts = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            if parts.path == "/_fake/stats" and method == "GET":
                self._reply(200, self.server.posts.stats())
                return
            status, body, extra = self._route(method, parts.path, query, raw)
        except WPError as error:
            status, body, extra = error.status, _error(error), {}
        self._reply(status, body, extra)

    def _route(
        self, method: str, path: str, query: dict[str, str], raw: bytes
    ) -> tuple[int, Any, dict[str, str]]:
        posts = self.server.posts
        user = self._user()
        edit = query.get("context") == "edit"
        base = f"http://{self.headers.get('Host', 'localhost')}"
        if path in ("/wp-json", "/wp-json/"):
            posts.count("GET /")
            return 200, {"name": "Pressline fake WordPress", "url": base, "namespaces": ["wp/v2"]}, {}
        if path.rstrip("/") == "/wp-json/wp/v2/posts":
            if method == "GET":
                posts.count("GET /wp/v2/posts")
                return self._list(query, user, edit, base)
            if method == "POST":
                posts.count("POST /wp/v2/posts")
                if user is None:
                    raise WPError(401, "rest_cannot_create")
                fields = post_fields(_json(raw))
                _check_status(user, fields)
                return 201, render(posts.create(fields, user.id), base, edit=True), {}
        elif match := _POST_PATH.match(path):
            post_id = int(match.group(1))
            if method == "GET":
                posts.count("GET /wp/v2/posts/{id}")
                if edit and user is None:
                    raise WPError(401, "rest_forbidden_context")
                return 200, render(posts.get(post_id), base, edit), {}
            if method in ("POST", "PUT", "PATCH"):
                posts.count("POST /wp/v2/posts/{id}")
                if user is None:
                    raise WPError(401, "rest_cannot_edit")
                fields = post_fields(_json(raw))
                _check_status(user, fields)
                return 200, render(posts.update(post_id, fields), base, edit=True), {}
        posts.count("other")
        raise WPError(404, "rest_no_route")

    def _list(
        self, query: dict[str, str], user: User | None, edit: bool, base: str
    ) -> tuple[int, Any, dict[str, str]]:
        wanted = query.get("status", "publish")
        if (edit or wanted != "publish") and user is None:
            raise WPError(401, "rest_forbidden_context")
        if wanted == "any":
            statuses = STATUSES - {"trash"}
        else:
            statuses = frozenset(wanted.split(","))
            if not statuses <= STATUSES:
                raise WPError(400, "rest_invalid_param", "Invalid parameter(s): status")
        try:
            per_page = int(query.get("per_page", "10"))
            page = int(query.get("page", "1"))
        except ValueError:
            raise WPError(400, "rest_invalid_param", "Invalid parameter(s): per_page, page") from None
        if not 1 <= per_page <= 100 or page < 1:
            raise WPError(400, "rest_invalid_param", "Invalid parameter(s): per_page, page")
        found = self.server.posts.query(query.get(REF_META), statuses, query.get("order", "desc") == "desc")
        shown = [render(p, base, edit) for p in found[(page - 1) * per_page : page * per_page]]
        pages = max(1, -(-len(found) // per_page))
        return 200, shown, {"X-WP-Total": str(len(found)), "X-WP-TotalPages": str(pages)}

    def _user(self) -> User | None:
        """The Basic-auth user, None without credentials; 401 for wrong ones."""
        header = self.headers.get("Authorization", "")
        if not header.startswith("Basic "):
            return None
        try:
            login, _, password = base64.b64decode(header[6:], validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            raise WPError(401, "invalid_username") from None
        user = self.server.users.get(login)
        if user is None:
            raise WPError(401, "invalid_username")
        if _squash(password) != user.password:
            raise WPError(401, "incorrect_password")
        return user

    def _reply(self, status: int, body: Any, extra: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw or b"{}")
    except ValueError:
        raise WPError(400, "rest_invalid_json") from None


def _check_status(user: User, fields: dict[str, Any]) -> None:
    if fields.get("status") in PUBLISHING and user.role not in PUBLISHING_ROLES:
        raise WPError(403, "rest_cannot_publish")


def _error(error: WPError) -> dict[str, Any]:
    return {"code": error.code, "message": str(error), "data": {"status": error.status}}


def start_fake_wordpress(
    port: int, user: str = DEFAULT_USER, *, timeout_s: float = 15.0
) -> subprocess.Popen[bytes]:
    """Start the emulator in a subprocess (its own session) on 127.0.0.1:``port``; returns once it
    listens. The caller stops it (``infra.redis_server.stop_process``)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "localstack.fake_wordpress", "--port", str(port), "--user", user],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout_s)
    line = proc.stdout.readline().decode() if ready else ""
    if "listening on" not in line:
        proc.kill()
        proc.wait()
        raise RuntimeError(f"fake WordPress did not start (exit {proc.poll()}): {line!r}")
    return proc


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8089)
    parser.add_argument(
        "--user",
        action="append",
        help=f"login:application password[:role], repeatable (default {DEFAULT_USER!r})",
    )
    args = parser.parse_args(argv)
    users = [parse_user(spec, index + 1) for index, spec in enumerate(args.user or [DEFAULT_USER])]
    server = FakeWordPress((args.host, args.port), users)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"fake wordpress listening on http://{args.host}:{args.port}", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
