"""A TCP proxy the tests can cut and restore, to take a database away for real.

``cut()`` closes every proxied connection with a reset (as a crashed server or a dead link
would) and stops listening, so new connections are refused; ``restore()`` listens again on the
same port. One selector thread does all the work. ``connections`` counts accepted connections
and ``round_trips`` the times a server answered after its client had sent something: a client
that waits for an answer to each statement shows one round trip per statement.
"""

import contextlib
import selectors
import socket
import struct
import threading
from collections.abc import Callable


class Proxy:
    def __init__(self, upstream: tuple[str, int], host: str = "127.0.0.1", port: int = 0) -> None:
        self.upstream = upstream
        self.host = host
        self.port = port
        self.connections = 0
        self.round_trips = 0
        self._client_spoke: set[socket.socket] = set()  # clients whose data the server owes
        self._lock = threading.Lock()
        self._selector = selectors.DefaultSelector()
        self._listener: socket.socket | None = None
        self._peers: dict[socket.socket, socket.socket] = {}
        self._clients: set[socket.socket] = set()
        self._stop = False
        self._pending: tuple[Callable[[], None], threading.Event] | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._listen()
        self._thread = threading.Thread(target=self._loop, name="tcp-proxy", daemon=True)
        self._thread.start()

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    def cut(self) -> None:
        """Reset every connection and refuse new ones until ``restore``."""
        self._call(self._cut)

    def restore(self) -> None:
        self._call(self._listen)

    def close(self) -> None:
        self._call(self._cut)
        self._stop = True
        self._wake_w.send(b"x")
        self._thread.join(5)
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()

    # -- the loop thread -----------------------------------------------------------------------

    def _call(self, action: Callable[[], None]) -> None:
        """Run ``action`` on the loop thread and wait for it (sockets have one owner)."""
        done = threading.Event()
        with self._lock:
            self._pending = (action, done)
        self._wake_w.send(b"x")
        if not done.wait(5):
            raise RuntimeError("proxy loop did not respond")

    def _listen(self) -> None:
        if self._listener is not None:
            return
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, self.port))
        listener.listen(64)
        listener.setblocking(False)
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._selector.register(listener, selectors.EVENT_READ, "accept")

    def _cut(self) -> None:
        if self._listener is not None:
            self._selector.unregister(self._listener)
            self._listener.close()
            self._listener = None
        for sock in list(self._peers):
            self._drop(sock)

    def _drop(self, sock: socket.socket) -> None:
        other = self._peers.pop(sock, None)
        for s in (sock, other):
            if s is None:
                continue
            self._peers.pop(s, None)
            self._clients.discard(s)
            self._client_spoke.discard(s)
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(s)
            with contextlib.suppress(OSError):  # linger 0: close sends a reset, not a FIN
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()

    def _loop(self) -> None:
        while not self._stop:
            for key, _ in self._selector.select(timeout=0.5):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if sock is self._wake_r:
                    self._wake_r.recv(64)
                    with self._lock:
                        pending, self._pending = self._pending, None
                    if pending is not None:
                        action, done = pending
                        action()
                        done.set()
                elif key.data == "accept":
                    self._accept(sock)
                elif sock in self._peers:
                    self._pump(sock)

    def _accept(self, listener: socket.socket) -> None:
        try:
            client, _ = listener.accept()
        except OSError:
            return
        try:
            server = socket.create_connection(self.upstream, timeout=5)
        except OSError:
            client.close()
            return
        self.connections += 1
        for s in (client, server):
            s.setblocking(True)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._selector.register(s, selectors.EVENT_READ, "pump")
        self._peers[client] = server
        self._peers[server] = client
        self._clients.add(client)

    def _pump(self, sock: socket.socket) -> None:
        try:
            data = sock.recv(65536)
        except OSError:
            data = b""
        other = self._peers.get(sock)
        if sock in self._clients:
            self._client_spoke.add(sock)
        elif other in self._client_spoke:
            self._client_spoke.discard(other)
            self.round_trips += 1
        if not data or other is None:
            self._drop(sock)
            return
        try:
            other.sendall(data)
        except OSError:
            self._drop(sock)
