"""llama-server as a managed child process of `serve --engine llamacpp`.

Why a supervisor thread: the child is started on a free 127.0.0.1 port, polled on GET /health until it has loaded the
model (a timeout, and the tail of its log in the error), restarted when it dies, and stopped with the server. The
thread that starts the child also waits on it, so its exit is seen at once; on Linux the child also gets
PR_SET_PDEATHSIG (SIGKILL when that thread, or the whole server, dies without cleaning up), so no llama-server is
left orphaned even after a `kill -9` of the server. A random API key (passed in the child's environment, not on its
command line) keeps other local users off the child's port.
"""

from __future__ import annotations

import atexit
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from domain_expert.serve.llamacpp_setup import LlamaCppUnavailableError

START_TIMEOUT_S = 180.0  # loading a GGUF from a cold disk; SmolLM2 f32 is ready in ~1 s when cached
MAX_RESTARTS = 5  # within RESTART_WINDOW_S; beyond that the child stays down and requests get 503
RESTART_WINDOW_S = 300.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pdeathsig():  # pragma: no cover - runs in the child between fork and exec
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def log_tail(path: Path, lines: int = 12) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:])[-1500:]


class LlamaServerProcess:
    """Starts, health-checks, supervises and stops one llama-server. `ready` is set while it answers requests."""

    def __init__(self, binary: Path, args: list[str], log_path: Path, *, start_timeout: float = START_TIMEOUT_S):
        self.binary, self.args, self.log_path = binary, args, log_path
        self.start_timeout = start_timeout
        self.api_key = secrets.token_hex(16)
        self.ready = threading.Event()
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.starts = 0  # how many children were started (1 + restarts)
        self.error: Exception | None = None  # why the child is down for good
        self._closing = False
        self._first = threading.Event()
        self._thread: threading.Thread | None = None
        self._restart_times: list[float] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self) -> None:
        """Start the supervisor; return once the first child is ready, or raise why it is not."""
        self._thread = threading.Thread(target=self._supervise, name="llama-server-supervisor", daemon=True)
        self._thread.start()
        atexit.register(self.stop)
        self._first.wait()
        if not self.ready.is_set():
            self.stop()
            raise self.error or LlamaCppUnavailableError("llama-server did not start", where=str(self.binary))

    def _supervise(self) -> None:
        while not self._closing:
            try:
                self._spawn()
            except LlamaCppUnavailableError as e:
                self.error = e
                if not self._first.is_set() or not self._may_restart():
                    self._first.set()
                    print(f"[domain-expert] llama-server: {e}", file=sys.stderr, flush=True)
                    return
                time.sleep(1.0)
                continue
            self._first.set()
            code = self.proc.wait()
            self.ready.clear()
            if self._closing:
                return
            print(f"[domain-expert] llama-server (pid {self.proc.pid}) exited with code {code}; restarting: "
                  f"{log_tail(self.log_path, 4)}", file=sys.stderr, flush=True)  # fmt: skip
            if not self._may_restart():
                self.error = LlamaCppUnavailableError(
                    f"llama-server died {MAX_RESTARTS} times within {RESTART_WINDOW_S:.0f} s; not restarting",
                    where=str(self.log_path),
                    fix="read its log; restart domain-expert serve",
                )
                print(f"[domain-expert] {self.error}", file=sys.stderr, flush=True)
                return

    def _may_restart(self) -> bool:
        now = time.monotonic()
        self._restart_times = [t for t in self._restart_times if now - t < RESTART_WINDOW_S] + [now]
        return len(self._restart_times) <= MAX_RESTARTS

    def _spawn(self) -> None:
        import httpx

        self.port = free_port()
        cmd = [str(self.binary), *self.args, "--host", "127.0.0.1", "--port", str(self.port)]
        env = {**os.environ, "LLAMA_API_KEY": self.api_key}
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                preexec_fn=_pdeathsig if sys.platform.startswith("linux") else None,  # noqa: PLW1509
            )
        self.starts += 1
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline and not self._closing:
            code = self.proc.poll()
            if code is not None:
                raise LlamaCppUnavailableError(
                    f"llama-server exited with code {code} while starting: {log_tail(self.log_path)}",
                    where=" ".join(cmd),
                    fix="read the log above (a GGUF this llama.cpp cannot load, or a port in use); full log: "
                    + str(self.log_path),
                )
            try:
                if httpx.get(self.url + "/health", timeout=2.0).status_code == 200:
                    self.ready.set()
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self._kill()
        raise LlamaCppUnavailableError(
            f"llama-server was not healthy within {self.start_timeout:.0f} s: {log_tail(self.log_path)}",
            where=" ".join(cmd),
            fix=f"read its log ({self.log_path})",
        )

    def _kill(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def stop(self) -> None:
        """Stop the child and the supervisor (idempotent; also registered with atexit)."""
        self._closing = True
        self.ready.clear()
        self._kill()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)
        atexit.unregister(self.stop)
