"""A TCP relay that can stop a client's traffic at an exact command, for crash tests.

Put it between a real process and its Redis; :meth:`TcpGate.hold_at` names bytes (a RESP command
such as ``b"XADD"``, or a script's SHA-1): the first chunk the client sends that contains them is
never forwarded, nor is anything after it on that connection. The process is then stuck just
before that command, where a test can kill it: the state Redis keeps is exactly the state a crash
at that point leaves.
"""

from __future__ import annotations

import contextlib
import socket
import threading


class TcpGate:
    """Relays ``127.0.0.1:<port>`` to ``upstream_port`` on localhost.

    Parameters:
      upstream_port(int): The real server's port.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.held = threading.Event()
        self._pattern: bytes | None = None
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, name="tcp-gate", daemon=True).start()

    def hold_at(self, pattern: bytes) -> None:
        """Hold the first client chunk containing ``pattern`` (and what follows on its connection)."""
        with self._lock:
            self._pattern = pattern
            self.held.clear()

    def pass_all(self) -> None:
        """Forward everything from now on (connections already held stay held)."""
        with self._lock:
            self._pattern = None

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            with self._lock:
                self._sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, from_client: bool) -> None:
        try:
            while chunk := source.recv(65536):
                if from_client and self._holds(chunk):
                    return  # the command never reaches the server; the client waits forever
                sink.sendall(chunk)
        except OSError:
            pass

    def _holds(self, chunk: bytes) -> bool:
        with self._lock:
            if self._pattern is None or self._pattern not in chunk or self.held.is_set():
                return False
            self.held.set()
            return True
