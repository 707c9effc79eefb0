"""A TCP proxy a test can cut: the database (or anything) becomes unreachable on demand.

``TcpProxy`` listens on a free loopback port and relays every connection to
``target``. ``cut()`` refuses new connections (the listening socket closes,
so connecting gets ECONNREFUSED at once) and resets the open ones, as a
database that went away does. ``restore()`` listens again on the same port.
It runs its own thread; nothing here is async, so it works beside any event
loop the test uses. ``intercept``, when set, sees each chunk a client sends
before it is relayed, and may drop it (return False): a test can count the
statements of a request, or kill a process just before its n-th one.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class TcpProxy:
    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = int(probe.getsockname()[1])
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._listener: socket.socket | None = None
        self._stopped = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()
        self.intercept: Callable[[bytes], bool] | None = None
        self._thread = threading.Thread(target=self._run, name="tcp-proxy", daemon=True)
        self._listen()
        self._thread.start()

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    def cut(self) -> None:
        """Refuse new connections and reset the open ones."""
        with self._lock:
            if self._listener is not None:
                self._listener.close()
                self._listener = None
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            for sock in pair:
                _reset(sock)
        self._wake()

    def restore(self) -> None:
        self._listen()
        self._wake()

    def close(self) -> None:
        self._stopped.set()
        self.cut()
        self._thread.join(timeout=5)

    def _listen(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        listener.setblocking(False)
        with self._lock:
            self._listener = listener

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    def _run(self) -> None:
        while not self._stopped.is_set():
            selector = selectors.DefaultSelector()
            selector.register(self._wake_r, selectors.EVENT_READ, None)
            with self._lock:
                listener = self._listener
                pairs = list(self._pairs)
            if listener is not None:
                selector.register(listener, selectors.EVENT_READ, "accept")
            for client, server in pairs:
                with contextlib.suppress(ValueError, OSError):
                    selector.register(client, selectors.EVENT_READ, (client, server))
                    selector.register(server, selectors.EVENT_READ, (server, client))
            try:
                events = selector.select(timeout=0.5)
            except (OSError, ValueError):
                events = []
            for key, _ in events:
                if key.fileobj is self._wake_r:
                    with contextlib.suppress(OSError):
                        self._wake_r.recv(4096)
                elif key.data == "accept":
                    self._accept(listener)
                else:
                    self._relay(*key.data, upstream=key.data[1] in self._servers())
            selector.close()

    def _accept(self, listener: socket.socket | None) -> None:
        if listener is None:
            return
        try:
            client, _ = listener.accept()
        except OSError:
            return
        try:
            server = socket.create_connection(self.target, timeout=5)
        except OSError:
            _reset(client)
            return
        client.setblocking(False)
        server.setblocking(False)
        with self._lock:
            self._pairs.append((client, server))

    def _servers(self) -> set[socket.socket]:
        with self._lock:
            return {server for _, server in self._pairs}

    def _relay(self, source: socket.socket, sink: socket.socket, *, upstream: bool) -> None:
        try:
            data = source.recv(65536)
            intercept = self.intercept
            if data and upstream and intercept is not None and not intercept(data):
                return
            if data:
                sink.setblocking(True)
                sink.sendall(data)
                sink.setblocking(False)
                return
        except OSError:
            pass
        with self._lock:
            self._pairs = [p for p in self._pairs if source not in p]
        _reset(source)
        _reset(sink)


def _reset(sock: socket.socket) -> None:
    """Close with RST (SO_LINGER 0), as a peer that vanished does."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


@contextmanager
def tcp_proxy(target: tuple[str, int]) -> Iterator[TcpProxy]:
    proxy = TcpProxy(target)
    try:
        yield proxy
    finally:
        proxy.close()
