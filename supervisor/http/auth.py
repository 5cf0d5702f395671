"""Who may do what: the bearer token, the dashboard's session cookie, CSRF for its forms.

Scripts run on the supervisor's host and have its loopback, so a listener on 127.0.0.1 is no
boundary: the HTTP server always has a token (``http_token_file``, or one generated into the
state folder at first start, readable by the supervisor's user only, see
``process.generated_token``) and every request needs it:

- API calls the ``Authorization: Bearer <token>`` header; dashboard pages the session cookie
  that ``/login`` sets (a cookie never authorizes an API call, which would reopen CSRF).
- Open to all: ``/login`` and ``/static/...``; on a loopback listener only, also ``/health``,
  ``/ready`` and ``/metrics`` (probes and scrapers; they carry no run data). Beyond loopback
  those need the token too.
- Dashboard forms carry a signed double-submit CSRF token and must come from our own origin.

The token is compared in constant time and never logged or echoed.
"""

import hashlib
import hmac
import secrets
from urllib.parse import urlsplit

from starlette.requests import Request

from supervisor.http.context import Backend
from supervisor.http.problems import Problem

SESSION_COOKIE = "as_session"
CSRF_COOKIE = "as_csrf"
OPEN_PATHS = ("/login", "/static/")  # the sign-in page and what it needs
PROBE_PATHS = ("/health", "/ready", "/metrics")  # open on a loopback listener only


def _under(path: str, prefixes: tuple[str, ...]) -> bool:
    """``path`` is one of ``prefixes`` or below it (``/login`` and ``/login/x``, not
    ``/loginx``); a prefix ending in ``/`` matches what is below it only."""
    return any(path == p or path.startswith(p if p.endswith("/") else p + "/") for p in prefixes)


def is_api(path: str) -> bool:
    return _under(path, ("/api", *PROBE_PATHS))


def is_open(backend: Backend, path: str) -> bool:
    """Whether ``path`` is served without the token."""
    if _under(path, OPEN_PATHS):
        return True
    return backend.loopback and path in PROBE_PATHS


def session_value(token: str) -> str:
    """The cookie that stands for the token (never the token itself)."""
    return hmac.new(
        token.encode(), b"actor-supervisor dashboard session", hashlib.sha256
    ).hexdigest()


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def token_ok(backend: Backend, request: Request, *, cookie: bool) -> bool:
    given = _bearer(request)
    if given is not None and hmac.compare_digest(given.encode(), backend.token.encode()):
        return True
    if cookie:
        value = request.cookies.get(SESSION_COOKIE, "")
        expected = session_value(backend.token)
        return bool(value) and hmac.compare_digest(value.encode(), expected.encode())
    return False


UNAUTHORIZED = (401, "unauthorized", "a valid bearer token is required")
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="actor-supervisor"'}


def given_token_ok(backend: Backend, given: str) -> bool:
    """The token typed into the login form, compared in constant time."""
    return bool(given) and hmac.compare_digest(given.encode(), backend.token.encode())


def require_token(backend: Backend, request: Request, *, cookie: bool = False) -> None:
    if not token_ok(backend, request, cookie=cookie):
        raise Problem(*UNAUTHORIZED, dict(CHALLENGE))


class Csrf:
    """Signed double-submit tokens: the cookie and the form field must match and be ours."""

    def __init__(self) -> None:
        self._key = secrets.token_bytes(32)

    def _sign(self, nonce: str) -> str:
        return hmac.new(self._key, nonce.encode(), hashlib.sha256).hexdigest()[:32]

    def new(self) -> str:
        nonce = secrets.token_hex(16)
        return f"{nonce}.{self._sign(nonce)}"

    def valid(self, value: str) -> bool:
        nonce, _, signature = value.partition(".")
        return bool(nonce) and hmac.compare_digest(signature.encode(), self._sign(nonce).encode())

    def check(self, request: Request, field: str) -> None:
        cookie = request.cookies.get(CSRF_COOKIE, "")
        if not (cookie and self.valid(cookie) and hmac.compare_digest(cookie, field)):
            raise Problem(403, "csrf_failed", "the form is stale or not ours; reload the page")
        origin = request.headers.get("origin") or request.headers.get("referer")
        if origin and origin != "null" and urlsplit(origin).netloc != request.headers.get("host"):
            raise Problem(403, "csrf_failed", "the form was posted from another site")
