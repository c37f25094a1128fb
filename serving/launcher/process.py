"""One tritonserver process: started so that it dies with the launcher, its log pumped into a bounded buffer.

Die-with-parent is PR_SET_PDEATHSIG, which must be set in the child. `preexec_fn` would run Python (ctypes) between
fork and exec in a process that has threads: unsafe, since a lock another thread held at fork time stays held in
the child for ever. Instead the child execs a fresh interpreter at once (`-I -S`, no site, a few ms) that sets the
signal, checks that the launcher did not die before it did (else nobody would ever send it), and execs the next
command. util-linux's `setpriv --pdeathsig` does the first step too, but not the check, and is not everywhere.
The signal fires when the *thread* that started the process ends, so start and restart from threads that live
as long as the server does (the caller's, the watchdog's).
"""

from __future__ import annotations

import collections
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping

DIE_WITH_PARENT = """\
import ctypes, os, signal, sys
ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
if os.getppid() != int(sys.argv[1]):
    sys.exit("nestrank: the launcher died before tritonserver started")
os.execvp(sys.argv[2], sys.argv[2:])
"""


def dying_with(parent_pid: int, command: list[str]) -> list[str]:
    """`command`, exec'd so that it gets SIGTERM when `parent_pid`'s starting thread ends (even by SIGKILL)."""
    return [sys.executable, "-I", "-S", "-c", DIE_WITH_PARENT, str(parent_pid), *command]


class ServerLog:
    """The last lines tritonserver wrote. The pump thread appends while others read: reads take a copy under
    the lock (iterating a deque that another thread appends to raises RuntimeError)."""

    def __init__(self, lines: int = 400):
        self._lines = collections.deque(maxlen=lines)
        self._lock = threading.Lock()

    def append(self, line: str) -> None:
        with self._lock:
            self._lines.append(line)

    def lines(self) -> list[str]:
        with self._lock:
            return list(self._lines)

    def tail(self, lines: int = 60) -> str:
        return "".join(self.lines()[-lines:])

    def load_failures(self) -> list[str]:
        """Model rows that Triton's model table reports as not READY."""
        return [ln.strip() for ln in self.lines() if ln.startswith("|") and "UNAVAILABLE" in ln]


def start_process(command: list[str], env: Mapping[str, str], log: ServerLog, echo: bool) -> subprocess.Popen:
    """`command` started (no Python runs in the forked child), its output copied into `log` by a daemon thread."""
    process = subprocess.Popen(command, env=dict(env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               errors="replace")  # fmt: skip
    threading.Thread(target=_pump, args=(process, log, echo), name="nestrank-log", daemon=True).start()
    return process


def stop_process(process: subprocess.Popen | None, timeout_s: float) -> None:
    """SIGTERM, then SIGKILL if it is still running after `timeout_s`; waits for it either way."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _pump(process: subprocess.Popen, log: ServerLog, echo: bool) -> None:
    for line in process.stdout:
        log.append(line)
        if echo:
            sys.stdout.write(line)
            sys.stdout.flush()
