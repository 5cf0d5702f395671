"""Store URLs: which backend a URL names, where its file is, and how to show it safely.

The URL comes from the configuration file or ``--database``; a relative SQLite path is relative
to the configuration file's folder so that a checkout behaves the same from any working
directory. ``redact_url`` is the only way a URL may reach a log line or a ``status`` reply.
"""

import re
from dataclasses import dataclass
from pathlib import Path

from supervisor.errors import ConfigError

SQLITE_SCHEMES = frozenset({"sqlite"})
POSTGRES_SCHEMES = frozenset({"postgresql", "postgres"})

_SCHEME = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*):")
# key=value passwords: URL query parameters and libpq conninfo strings ("password='a b'").
_PASSWORD_PARAM = re.compile(
    r"(?i)(?P<key>\b(?:password|passwd|pwd|sslpassword)\s*=\s*)(?P<value>'(?:[^'\\]|\\.)*'|[^&\s#]*)"
)
REDACTED = "***"


@dataclass(frozen=True, slots=True)
class StoreUrl:
    """A parsed store URL: its scheme (lower case), and for SQLite the absolute file path."""

    scheme: str
    url: str
    path: Path | None = None

    @property
    def description(self) -> str:
        """What logs and ``status`` show: the absolute file for SQLite, else the redacted URL."""
        if self.path is not None:
            return f"sqlite:{self.path}"
        return redact_url(self.url)


def parse_store_url(url: str, *, base_dir: Path) -> StoreUrl:
    """Split ``url`` into scheme and location; SQLite paths become absolute.

    Accepted SQLite forms: ``sqlite:relative/path.db`` (relative to ``base_dir``),
    ``sqlite:/abs/path.db`` and ``sqlite:///abs/path.db``. :raises ConfigError: the URL has no
    scheme, an empty path, or an ambiguous ``sqlite://host/...`` form.
    """
    match = _SCHEME.match(url)
    if match is None:
        raise ConfigError(
            f"store URL {redact_url(url)!r} has no scheme: "
            "expected sqlite:PATH or postgresql://USER@HOST/DB"
        )
    scheme = match["scheme"].lower()
    if scheme not in SQLITE_SCHEMES:
        return StoreUrl(scheme=scheme, url=url)
    rest = url[match.end() :]
    if rest.startswith("//"):
        rest = rest[2:]
        if not rest.startswith("/"):
            raise ConfigError(
                f"store URL {url!r}: a SQLite URL has no host; write sqlite:relative/path.db "
                "or sqlite:///absolute/path.db"
            )
    if not rest.strip():
        raise ConfigError(f"store URL {url!r}: the SQLite file path is empty")
    path = Path(rest).expanduser()
    if not path.is_absolute():
        path = base_dir / path
    return StoreUrl(scheme=scheme, url=url, path=path.resolve())


def has_password(url: str) -> bool:
    """Whether ``url`` carries a password in any form :func:`redact_url` hides."""
    return redact_url(url) != url


def redact_url(url: str) -> str:
    """``url`` with every password replaced by ``***``: user info, query and conninfo forms.

    Errs on the side of hiding: with an unencoded ``@`` in the query, the host is hidden too.
    """
    redacted = url
    scheme_end = redacted.find("://")
    if scheme_end >= 0:
        start = scheme_end + 3
        at = redacted.rfind("@", start)
        if at >= 0:
            userinfo = redacted[start:at]
            user, colon, _password = userinfo.partition(":")
            if colon:
                redacted = f"{redacted[:start]}{user}:{REDACTED}{redacted[at:]}"
    return _PASSWORD_PARAM.sub(lambda m: f"{m['key']}{REDACTED}", redacted)
