"""Real servers for system tests, on loopback and free ports: start one as its own process group,
wait until it answers, and stop the whole group (a server's children too) however a test ends."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Proc:
    """A started server: its process and the file its output goes to."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def check_alive(self) -> None:
        if self.popen.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.popen.returncode}:\n{self.tail()}")


def start(name: str, cmd: Sequence[str], env: Mapping[str, str], logs: Path, cwd: Path | None = None) -> Proc:
    """``cmd`` in a new session (so :func:`stop` can end its process group), output to a file."""
    log = logs / f"{name}.log"
    with log.open("ab") as out:
        popen = subprocess.Popen(
            list(cmd),
            env=dict(env),
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    return Proc(name, popen, log)


def stop(procs: Sequence[Proc], grace: float = 10.0) -> None:
    """SIGTERM every process group at once; SIGKILL whatever is left after ``grace`` seconds."""

    def signal_group(proc: Proc, sig: int) -> bool:
        """Send ``sig`` (0: only look); whether the group still exists."""
        proc.popen.poll()  # reap the leader, or the group never looks empty
        try:
            os.killpg(proc.popen.pid, sig)
            return True
        except ProcessLookupError:
            return False

    alive = [p for p in procs if signal_group(p, signal.SIGTERM)]
    deadline = time.monotonic() + grace
    while alive and time.monotonic() < deadline:
        time.sleep(0.2)
        alive = [p for p in alive if signal_group(p, 0)]
    for p in alive:
        signal_group(p, signal.SIGKILL)
        p.popen.wait(grace)


def wait_until(ready: Callable[[], bool], procs: Sequence[Proc], timeout: float, what: str) -> None:
    """Poll ``ready`` until it is true; fail early, with the server's output, if a server died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in procs:
            p.check_alive()
        if ready():
            return
        time.sleep(0.5)
    raise TimeoutError(f"{what} not ready after {timeout:.0f} s:\n" + "\n".join(p.tail() for p in procs))


def http_ok(url: str) -> Callable[[], bool]:
    def ready() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                return r.status < 400
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    return ready


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without a Prefect API (each server picks its own), plus
    ``extra``."""
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(extra)
    return env


class S3Server:
    """moto's S3 server in a thread of this process, so a test can take it down and bring it
    back on the same port with its buckets intact (moto keeps them in this process's memory)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
        from werkzeug.serving import make_server

        self._server = make_server(
            "127.0.0.1",
            self.port,
            DomainDispatcherApplication(create_backend_app),
            threaded=True,
            request_handler=MotoRequestHandler,
        )
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and close the socket: clients get 'connection refused' until restarted."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join()
            self._server = None


class Gate:
    """A TCP forwarder in front of a server. Closing it makes the server unreachable
    (connection refused, open connections reset) without stopping it, so a test controls
    exactly how long an outage lasts; opening it restores the route on the same port."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._listener: socket.socket | None = None
        self._conns: list[socket.socket] = []

    def open(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, args=(self._listener,), daemon=True).start()

    def close(self) -> None:
        if self._listener is not None:
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
            self._listener.close()
            self._listener = None
        for conn in self._conns:
            conn.close()
        self._conns.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(1 << 16):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
