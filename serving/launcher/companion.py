"""A process that runs beside tritonserver under the same launcher (the HTTP front): started so that it dies with the
launcher, restarted with backoff when it exits, stopped with the server. The launcher knows it only as a command
line, so serving imports nothing of what it runs."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence

from nestrank.serving.launcher.config import ServerStartError
from nestrank.serving.launcher.process import ServerLog, dying_with, start_process, stop_process
from nestrank.serving.launcher.supervisor import RESTART_BACKOFF_S, RESTART_STABLE_S, Backoff, EventLog


class Companion:
    """`command` supervised on a thread of its own (the die-with-launcher signal follows the thread that started the
    process, so start and restarts happen on that one thread). Ready once it accepts connections at `address`."""

    def __init__(self, name: str, command: Sequence[str], address: tuple[str, int], env: Mapping[str, str],
                 events: EventLog,
                 backoff_s: Sequence[float] = RESTART_BACKOFF_S, stable_s: float = RESTART_STABLE_S,
                 echo: bool = True, url: str | None = None):  # fmt: skip
        host, port = address
        host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)  # where it listens for all
        self.name, self.command, self.address, self.env = name, list(command), (host, port), dict(env)
        self.events, self.backoff, self.echo = events, Backoff(backoff_s, stable_s), echo
        self.url = url  # what to tell users, if it serves one
        self.log = ServerLog()
        self.stopping = threading.Event()
        self._ready = threading.Event()
        self._process: subprocess.Popen | None = None
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=f"nestrank-{name}", daemon=True)

    @property
    def process(self) -> subprocess.Popen | None:
        with self._lock:
            return self._process

    def start(self, timeout_s: float = 60.0) -> Companion:
        """Returns once it is ready; a ServerStartError with its log if it exits or stays unready first."""
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._ready.wait(0.05):
            process = self.process
            if (process is not None and process.poll() is not None) or time.monotonic() > deadline:
                self.stop()
                raise ServerStartError(f"the {self.name} did not start:\n{self.log.tail(30)}")
        return self

    def _launch(self) -> subprocess.Popen | None:
        with self._lock:
            if self.stopping.is_set():
                return None
            self._process = start_process(dying_with(os.getpid(), self.command), self.env, self.log, self.echo)
            return self._process

    def _accepts(self) -> bool:
        try:
            with socket.create_connection(self.address, timeout=0.5):
                return True
        except OSError:
            return False

    def _run(self) -> None:
        first = True
        while not self.stopping.is_set():
            process = self._launch()
            if process is None:
                return
            started = time.monotonic()
            while process.poll() is None and not self._ready.is_set() and not self.stopping.is_set():
                if self._accepts():
                    self._ready.set()
                else:
                    time.sleep(0.05)
            code = process.wait()
            if self.stopping.is_set() or (first and not self._ready.is_set()):
                return  # stopped, or it never came up at all: start() reports that
            first = False
            pause = self.backoff.pause_after(time.monotonic() - started)
            self.events.add(f"the {self.name} exited with code {code}; restarting in {pause:g} s")
            if self.stopping.wait(pause):
                return
            self._ready.clear()

    def stop(self, timeout_s: float = 15.0) -> None:
        with self._lock:
            self.stopping.set()
            process = self._process
        stop_process(process, timeout_s)
        if self._thread.ident is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout_s)
