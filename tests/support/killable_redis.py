"""A Redis that tests kill and restart on the same port, losing connections but no data."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from infra.redis_server import free_port, start_redis, stop_process


class KillableRedis:
    """A Redis whose every write is on disk before it answers (AOF, fsync always), so a SIGKILL
    and a restart on the same port lose connections, never data.

    Parameters:
      data_dir(Path): Its AOF's directory.
    """

    def __init__(self, data_dir: Path) -> None:
        self.port = free_port()
        self.data_dir = data_dir
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc = self._start()

    def _start(self) -> subprocess.Popen[bytes]:
        return start_redis(self.port, self.data_dir, durable=True, fsync="always")

    def kill_and_restart(self, down_s: float) -> None:
        self.proc.kill()
        self.proc.wait(10)
        time.sleep(down_s)
        self.proc = self._start()

    def stop(self) -> None:
        stop_process(self.proc)
