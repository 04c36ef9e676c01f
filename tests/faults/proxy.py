"""A small TCP proxy for fault injection: forwards, refuses, drops or stalls connections.

It sits between a client (the relay) and a server (the broker or the database). Modes:

* ``forward``: bytes flow both ways.
* ``refuse``: nothing listens on the port (connects fail with "connection refused") and
  existing connections are reset.
* ``stall``: new connections are accepted but never answered, existing ones stop forwarding
  (a black hole: the client waits for its own timeouts).

`drop()` cuts every live connection once (a reset), whatever the mode.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import struct
import threading
from typing import Literal

Mode = Literal["forward", "refuse", "stall"]


def _reset(sock: socket.socket) -> None:
    # SO_LINGER 0: close() sends RST, so the peer notices at once instead of on its next write.
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


class TcpProxy:
    """Listens on 127.0.0.1:`port` (0: a free one) and forwards to `target_host`:`target_port`."""

    def __init__(self, target_host: str, target_port: int, port: int = 0) -> None:
        self.target = (target_host, target_port)
        self._selector = selectors.DefaultSelector()
        self._listener: socket.socket | None = None
        self.port = port
        self._listen()
        self.mode: Mode = "forward"
        self._pairs: dict[socket.socket, socket.socket] = {}
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = socket.socketpair()
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._closed = False
        self.accepted = 0
        self._thread = threading.Thread(target=self._loop, name="tcp-proxy", daemon=True)
        self._thread.start()

    def _listen(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(128)
        listener.setblocking(False)
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._selector.register(listener, selectors.EVENT_READ)

    def _stop_listening(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(listener)
            listener.close()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    # -- control ---------------------------------------------------------------------------

    def set_mode(self, mode: Mode) -> None:
        """Switch modes. Leaving ``stall`` resets the stalled connections (clients reconnect);
        entering ``refuse`` resets every connection."""
        with self._lock:
            previous, self.mode = self.mode, mode
        if mode == "refuse" or (previous == "stall" and mode != "stall"):
            self.drop()
        if mode == "refuse":
            # Nothing listens on the port: connects fail with ECONNREFUSED, as with a dead host.
            self._stop_listening()
        elif self._listener is None:
            self._listen()
        self._wake()

    def drop(self) -> None:
        """Reset every live connection."""
        with self._lock:
            socks = list(self._pairs)
            self._pairs.clear()
        for sock in socks:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(sock)
            _reset(sock)
        self._wake()

    def close(self) -> None:
        self._closed = True
        self._wake()
        self._thread.join(5)
        self.drop()
        self._stop_listening()
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the loop ------------------------------------------------------------------------------

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    def _loop(self) -> None:
        while not self._closed:
            for key, _ in self._selector.select(timeout=0.2):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if sock is self._listener:
                    self._accept()
                elif sock is self._wake_r:
                    with contextlib.suppress(OSError):
                        self._wake_r.recv(4096)
                else:
                    self._forward(sock)

    def _accept(self) -> None:
        listener = self._listener
        if listener is None:
            return
        try:
            client, _ = listener.accept()
        except OSError:
            return
        self.accepted += 1
        mode = self.mode
        if mode == "refuse":
            _reset(client)
            return
        if mode == "stall":
            # Accepted but never answered: kept open (and unread) until the next drop().
            with self._lock:
                self._pairs[client] = client
            return
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            _reset(client)
            return
        for s in (client, upstream):
            s.setblocking(False)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._lock:
            self._pairs[client] = upstream
            self._pairs[upstream] = client
        self._selector.register(client, selectors.EVENT_READ)
        self._selector.register(upstream, selectors.EVENT_READ)

    def _forward(self, sock: socket.socket) -> None:
        if self.mode == "stall":
            # Leave the bytes unread (the peer sees no answer) and stop watching the socket,
            # which would otherwise be reported readable again at once.
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(sock)
            return
        with self._lock:
            peer = self._pairs.get(sock)
        if peer is None:
            return
        try:
            data = sock.recv(65536)
            if data:
                peer.setblocking(True)
                peer.sendall(data)
                peer.setblocking(False)
                return
        except OSError:
            pass
        self._close_pair(sock, peer)

    def _close_pair(self, sock: socket.socket, peer: socket.socket) -> None:
        with self._lock:
            self._pairs.pop(sock, None)
            self._pairs.pop(peer, None)
        for s in (sock, peer):
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(s)
            with contextlib.suppress(OSError):
                s.close()
