"""Serve one listening socket from several processes, so a burst of requests uses every core.

One Python process runs its request threads one at a time (the GIL): when 50 streams start
together, the 50th waits for the other 49 to be parsed, authorised, metered and sent upstream.
Here the parent binds the socket and forks ``workers`` children; each builds its own services
after the fork (Redis and upstream connection pools must not be shared across one) and accepts
from the same socket, so the kernel hands each new connection to whichever child is free to take
it. The parent only supervises: a child that dies is replaced, SIGTERM or SIGINT stops them all,
and each child dies with the parent (``PR_SET_PDEATHSIG``), so a killed parent leaves no server.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import logging
import os
import signal
import socketserver
import sys
import time
from collections.abc import Callable
from types import FrameType

__all__ = ["BOOT_FAILED", "Prefork"]

logger = logging.getLogger("pressline.functions.prefork")

#: A child's exit status when its boot failed: restarting it would fail the same way.
BOOT_FAILED = 3
_PR_SET_PDEATHSIG = 1


class Prefork:
    """Runs ``server.serve_forever()`` in ``workers`` forked children until stopped.

    Parameters:
      server(socketserver.BaseServer): Bound and listening (its socket is shared by the children).
      workers(int): How many children serve it.
      boot: Called in each child before it serves (builds the app's services).
      on_exit: Called in the parent with the pid of each child that ended (clean-up of its files).
      stop_s(float): How long stopped children get to finish before they are killed.
    """

    def __init__(
        self,
        server: socketserver.BaseServer,
        workers: int,
        *,
        boot: Callable[[], None],
        on_exit: Callable[[int], None] | None = None,
        stop_s: float = 10.0,
    ) -> None:
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self.server = server
        self.workers = workers
        self.boot = boot
        self.on_exit = on_exit
        self.stop_s = stop_s
        self._children: dict[int, float] = {}  # pid -> when it started
        self._stopping = False
        self._failed = False

    def run(self) -> int:
        """Serve until SIGTERM or SIGINT (0), or until a child cannot boot (1)."""
        # Every child is woken by a new connection and one wins it; the others' accept() must not
        # block until the next one, so the shared socket is non-blocking (socketserver then just
        # goes back to waiting). Accepted sockets are made blocking again (StreamingServer).
        self.server.socket.setblocking(False)  # type: ignore[attr-defined]
        parent = os.getpid()
        previous = {sig: signal.signal(sig, self._stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            for _ in range(self.workers):
                self._spawn(parent)
            while self._children:
                self._reap(*os.wait())
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return 1 if self._failed else 0

    def _spawn(self, parent: int) -> None:
        pid = os.fork()
        if pid == 0:  # the child: it never returns into the parent's code
            os._exit(self._serve_in_child(parent))
        self._children[pid] = time.monotonic()

    def _serve_in_child(self, parent: int) -> int:
        status = 0
        try:
            _die_with(parent)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.signal(signal.SIGTERM, _raise_exit)
            try:
                self.boot()
            except Exception:
                logger.exception("a server process could not start")
                return BOOT_FAILED
            with contextlib.suppress(KeyboardInterrupt, SystemExit):
                self.server.serve_forever()
        except BaseException:
            status = 1
        finally:
            with contextlib.suppress(BaseException):
                atexit._run_exitfuncs()  # the log shipper's flush, the cache's close: as at a normal exit
                sys.stdout.flush()
                sys.stderr.flush()
        return status

    def _reap(self, pid: int, wait_status: int) -> None:
        started = self._children.pop(pid, None)
        if started is None:
            return
        if self.on_exit is not None:
            self.on_exit(pid)
        code = os.waitstatus_to_exitcode(wait_status)
        if self._stopping:
            return
        if code == BOOT_FAILED:
            logger.error("server process %d could not start; stopping the server", pid)
            self._failed = True
            self._stop()
            return
        logger.warning("server process %d exited (%d); starting another", pid, code)
        if time.monotonic() - started < 1.0:
            time.sleep(1.0)  # one that dies at once is not restarted in a tight loop
        self._spawn(os.getpid())

    def _stop(self, signum: int | None = None, frame: FrameType | None = None) -> None:
        """Stop every child (SIGTERM, then SIGKILL after ``stop_s``); the wait loop reaps them."""
        if self._stopping:
            return
        self._stopping = True
        for pid in self._children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        signal.signal(signal.SIGALRM, self._kill)
        signal.setitimer(signal.ITIMER_REAL, self.stop_s)

    def _kill(self, signum: int, frame: FrameType | None) -> None:
        for pid in self._children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _raise_exit(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def _die_with(parent: int) -> None:
    """Have the kernel send this process SIGTERM when its parent dies (Linux); elsewhere, nothing."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # it died before the request took effect
        os._exit(0)
