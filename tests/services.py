"""Real Redis and PostgreSQL servers for tests: started on a free port, stopped afterwards.

They come from Debian's packages (``make test-deps``). A missing server fails the test with
what to install; it is never skipped.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from conftest import free_port


def _find(name: str, *patterns: str) -> str:
    found = shutil.which(name) or next(
        (str(p) for pattern in patterns for p in sorted(Path("/").glob(pattern.lstrip("/")))),
        None,
    )
    if found is None:
        pytest.fail(
            f"{name} is not installed; these tests need a real one. "
            "Install redis-server and postgresql from Debian: `make test-deps`.",
            pytrace=False,
        )
    return found


class Server:
    """A child process serving on ``port``: wait until it accepts, stop with terminate/kill."""

    def __init__(self, argv: list[str], port: int, log: Path) -> None:
        self.port = port
        self.log = log
        with log.open("ab") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        self._wait_ready()

    def _wait_ready(self, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.log.read_text()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"server not ready in {timeout_s}s:\n{self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class RedisServer(Server):
    def __init__(self, workdir: Path) -> None:
        exe = _find("redis-server")
        port = free_port()
        argv = [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly"]
        argv += ["no", "--dir", str(workdir)]
        super().__init__(argv, port, workdir / "redis.log")
        self.url = f"redis://127.0.0.1:{port}/0"


class PostgresServer(Server):
    """A throwaway cluster (trust auth, fsync off). As root, it runs as the ``postgres`` user."""

    def __init__(self) -> None:
        initdb = _find("initdb", "/usr/lib/postgresql/*/bin/initdb")
        postgres = str(Path(initdb).resolve().parent / "postgres")
        self.dir = Path(tempfile.mkdtemp(prefix="quantgate-pg-"))
        data = self.dir / "data"
        as_user = self._as_postgres_user()
        port = free_port()
        subprocess.run(
            [*as_user, initdb, "-D", str(data), "-U", "quantgate", "--auth=trust", "--no-sync"],
            check=True,
            capture_output=True,
        )
        argv = [*as_user, postgres, "-D", str(data), "-p", str(port), "-h", "127.0.0.1"]
        argv += ["-k", str(self.dir), "-F", "-c", "synchronous_commit=off"]
        super().__init__(argv, port, self.dir / "postgres.log")
        self.url = f"postgresql://quantgate@127.0.0.1:{port}/postgres"
        isready = str(Path(initdb).resolve().parent / "pg_isready")
        deadline = time.monotonic() + 30
        while subprocess.run([isready, "-q", "-h", "127.0.0.1", "-p", str(port)]).returncode:
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("PostgreSQL did not accept connections in 30s")
            time.sleep(0.1)

    def _as_postgres_user(self) -> list[str]:
        if os.geteuid() != 0:
            return []
        shutil.chown(self.dir, "postgres", "postgres")
        return [_find("runuser", "/usr/sbin/runuser"), "-u", "postgres", "--"]

    def stop(self) -> None:
        super().stop()
        shutil.rmtree(self.dir, ignore_errors=True)
