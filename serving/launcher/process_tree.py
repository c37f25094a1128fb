"""What /proc says about a tritonserver: its descendants, its Python backend stubs, their memory."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

STUB_NAME = b"triton_python_backend_stub"
_GONE = (FileNotFoundError, ProcessLookupError, PermissionError)


def descendants(pid: int) -> list[int]:
    found, pending = [], [pid]
    while pending:
        current = pending.pop()
        try:
            for task in Path(f"/proc/{current}/task").iterdir():
                children = [int(c) for c in (task / "children").read_text().split()]
                found += children
                pending += children
        except _GONE:
            continue
    return found


def _argv(pid: int | str) -> list[bytes]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except _GONE:
        return []


def stub_models(pid: int) -> dict[int, str]:
    """{stub pid: model name} for the Python backend stubs under tritonserver `pid` (their first argument is
    `<repository>/<model>/<version>/model.py`)."""
    stubs = {}
    for child in descendants(pid):
        argv = _argv(child)
        if argv and argv[0].endswith(STUB_NAME) and len(argv) > 1:
            stubs[child] = Path(argv[1].decode(errors="replace")).parent.parent.name
    return stubs


def stubs_with_prefix(shm_prefix: str) -> list[int]:
    """Python backend stubs whose shared-memory region carries `shm_prefix` (their second argument), wherever they
    are now: a stub whose tritonserver was killed is re-parented to init and keeps running."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            argv = _argv(proc.name)
            if len(argv) > 2 and argv[0].endswith(STUB_NAME) and argv[2].startswith(shm_prefix.encode()):
                found.append(int(proc.name))
    return found


def kill_and_wait(pids: list[int], timeout_s: float = 5.0) -> list[int]:
    """SIGKILL `pids` and wait until /proc no longer lists them as running (a zombie counts as gone); the pids
    still there after `timeout_s`."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout_s
    left = list(pids)
    while left and time.monotonic() < deadline:
        left = [pid for pid in left if running(pid)]
        if left:
            time.sleep(0.02)
    return left


def state(pid: int) -> str | None:
    """The process's state letter in /proc (R, S, D, T stopped, Z zombie...); None when it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except _GONE:
        return None


def running(pid: int) -> bool:
    """Alive and not a zombie."""
    return state(pid) not in (None, "Z", "X")


def process_tree_memory(pid: int) -> list[dict]:
    """RSS and PSS (MiB) of a process and its descendants (tritonserver and its Python backend stubs), from
    /proc. PSS splits shared pages among the processes mapping them, so its sum is the tree's real cost."""
    rows = []
    for current in [pid, *descendants(pid)]:
        try:
            name = Path(f"/proc/{current}/comm").read_text().strip()
            lines = Path(f"/proc/{current}/smaps_rollup").read_text().splitlines()[1:]
        except _GONE:
            continue
        fields = dict(line.split(":", 1) for line in lines)
        rss, pss = (int(fields[k].split()[0]) / 1024 for k in ("Rss", "Pss"))
        rows.append({"pid": current, "name": name, "rss_mib": rss, "pss_mib": pss})
    return rows
