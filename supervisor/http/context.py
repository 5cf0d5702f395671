"""What every handler of the HTTP process shares: control clients, the read-only store, the
token. Handlers run in a thread pool; a ``Client`` (one ZeroMQ socket) is kept per thread."""

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from protocol.client import Client, ClientError
from protocol.curve import ClientKeys
from supervisor.http.problems import Problem, from_client_error
from supervisor.http.process import is_loopback_host, read_token
from supervisor.http.settings import HttpSettings
from supervisor.store import open_store
from supervisor.store.base import Store, StoreError

T = TypeVar("T")
STATUS_TTL_S = 0.25  # health probes within this window share one status request
CLIENT_TIMEOUT_S = 5.0


class Backend:
    def __init__(self, settings: HttpSettings) -> None:
        self.settings = settings
        self.token_file = settings.token_file  # shown on the login page: its path, never it
        self.token: str = read_token(settings.token_file)
        # every request needs the token, but on loopback the probes and the scraper (they
        # carry no run data); beyond loopback, they need it too
        self.loopback = is_loopback_host(settings.address[0])
        self._curve = None
        if settings.curve_server_key and settings.curve_client_key:
            self._curve = ClientKeys.load(settings.curve_server_key, settings.curve_client_key)
        self._local = threading.local()
        self._store: Store | None = None
        self._store_lock = threading.Lock()
        self._cache: dict[str, tuple[float, dict[str, Any]]] = {}
        self._cache_lock = threading.Lock()

    # --- the supervisor ------------------------------------------------------------------------

    def client(self) -> Client:
        client: Client | None = getattr(self._local, "client", None)
        if client is None:
            client = Client(self.settings.control, timeout_s=CLIENT_TIMEOUT_S, curve=self._curve)
            self._local.client = client
        return client

    def call(self, action: Callable[[Client], T]) -> T:
        """``action(client)``, with a refusal or silence turned into a :class:`Problem`."""
        client = self.client()
        try:
            return action(client)
        except ClientError as exc:
            if exc.code == "timeout":  # the socket may hold a late reply: start afresh
                client.close()
                self._local.client = None
            raise from_client_error(exc) from exc

    def cached(self, kind: str, max_age_s: float = STATUS_TTL_S) -> dict[str, Any]:
        """The ``status`` or ``metrics`` reply, shared by requests within ``max_age_s``: health
        probes at any rate cost the supervisor a few requests a second."""
        cached = self._cache.get(kind)
        if cached is not None and time.monotonic() - cached[0] <= max_age_s:
            return cached[1]
        with self._cache_lock:
            cached = self._cache.get(kind)
            if cached is not None and time.monotonic() - cached[0] <= max_age_s:
                return cached[1]
            data = self.call(lambda c: c.status() if kind == "status" else c.metrics())
            self._cache[kind] = (time.monotonic(), data)
            return data

    def invalidate(self) -> None:
        """After a change (pause, resume, a new run), the next read asks the supervisor."""
        self._cache.clear()

    # --- the store -----------------------------------------------------------------------------

    def store(self) -> Store:
        with self._store_lock:
            if self._store is None:
                try:
                    self._store = open_store(
                        self.settings.database, base_dir=Path(self.settings.base_dir),
                        read_only=True,
                    )  # fmt: skip
                except StoreError as exc:
                    raise Problem(503, "store_unavailable", str(exc)) from exc
            return self._store

    def write(self, action: Callable[[Store], T]) -> T:
        """``action`` on a writable store opened for it and closed after, as a CLI command
        opens one: the HTTP process's own connection stays read-only. Only a rollback writes
        from here (the supervisor's writer owns every other write)."""
        try:
            store = open_store(self.settings.database, base_dir=Path(self.settings.base_dir))
        except StoreError as exc:
            raise Problem(503, "store_unavailable", str(exc)) from exc
        try:
            return action(store)
        except StoreError as exc:
            raise Problem(503, "store_unavailable", str(exc)) from exc
        finally:
            store.close()

    def read(self, action: Callable[[Store], T]) -> T:
        try:
            return action(self.store())
        except StoreError as exc:
            raise Problem(503, "store_unavailable", str(exc)) from exc
