"""A real ``redis-server`` for the tests: started on a free loopback port,
with no persistence, in a temporary directory; stopped (and restartable on
the same port) by the tests themselves. Readiness is the server's own "Ready
to accept connections" log line, not a sleep."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import threading
from pathlib import Path

__all__ = ["REDIS_SERVER", "RedisServer"]

REDIS_SERVER = shutil.which("redis-server")
"""Path of the ``redis-server`` binary, or ``None`` when it is not installed."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """One ``redis-server`` process on 127.0.0.1."""

    def __init__(self) -> None:
        assert REDIS_SERVER is not None
        self.port = _free_port()
        self.directory = Path(tempfile.mkdtemp(prefix="trio-chatruns-redis-"))
        self.process: subprocess.Popen[str] | None = None
        self._watcher: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 20.0) -> None:
        assert REDIS_SERVER is not None and self.process is None
        # No persistence (no RDB snapshots, no AOF), log to stdout.
        options = {
            "port": str(self.port),
            "bind": "127.0.0.1",
            "save": "",
            "appendonly": "no",
            "dir": str(self.directory),
            "loglevel": "notice",
            "logfile": "",
        }
        argv = [REDIS_SERVER]
        for name, value in options.items():
            argv += [f"--{name}", value]
        self.process = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        ready = threading.Event()
        lines: list[str] = []

        def watch(process: subprocess.Popen[str]) -> None:
            assert process.stdout is not None
            for line in process.stdout:  # drained until the server exits
                if len(lines) < 200:
                    lines.append(line)
                if "Ready to accept connections" in line:
                    ready.set()

        self._watcher = threading.Thread(target=watch, args=(self.process,), daemon=True)
        self._watcher.start()
        if not ready.wait(timeout):
            self.stop()
            raise RuntimeError("redis-server did not become ready:\n" + "".join(lines))

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:  # pragma: no cover
            process.kill()
            process.wait()
        if self._watcher is not None:
            self._watcher.join(10)  # it reads until EOF, which the exit gives
            self._watcher = None
        if process.stdout is not None:
            process.stdout.close()

    def restart(self) -> None:
        """Stop and start again on the same port (all data is lost: no persistence)."""
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)
