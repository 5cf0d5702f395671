"""Who may do what: the bearer token, the dashboard's session cookie, CSRF for its forms.

- With ``http_token_file``, mutating API calls need ``Authorization: Bearer <token>``; when the
  server listens beyond loopback, every request does (pages accept the session cookie that
  ``/login`` sets, API calls only the header: a cookie must never authorize an API call, which
  would reopen CSRF).
- Without a token file (loopback only, as start-up enforces), the API is as open as the
  control endpoint on loopback.
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
    if backend.token is None:
        return True
    given = _bearer(request)
    if given is not None and hmac.compare_digest(given.encode(), backend.token.encode()):
        return True
    if cookie:
        value = request.cookies.get(SESSION_COOKIE, "")
        return hmac.compare_digest(value.encode(), session_value(backend.token).encode())
    return False


def require_token(backend: Backend, request: Request, *, cookie: bool = False) -> None:
    if not token_ok(backend, request, cookie=cookie):
        raise Problem(
            401, "unauthorized", "a valid bearer token is required",
            {"WWW-Authenticate": 'Bearer realm="actor-supervisor"'},
        )  # fmt: skip


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
