"""Another local user trying to read a server's shared-memory regions: a fresh interpreter that drops to uid/gid
65534 and, until its stdin closes, opens every region it can name (listed in /dev/shm or its subdirectories, or
named on a Python backend stub's command line, which /proc shows to everyone). It keeps what it opened, as an
attacker would, and reads it at the end. It looks only at names that start with one of `prefixes` (other servers
on this host are not its business).

A fresh process, not a fork of the test process: gRPC's fork handlers spin in a forked child of a process that has
channels open."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from dataclasses import dataclass

NOBODY = 65534


@dataclass
class ProbeResult:
    opened: list[str]  # paths it opened
    tries: int  # open() calls on names of regions
    found_in_opened: list[str]  # markers read back through what it opened


class OtherUserProbe:
    def __init__(self, markers: list[str], prefixes: tuple[str, ...]):
        self._process = subprocess.Popen([sys.executable, "-I", __file__, json.dumps([markers, list(prefixes)])],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
        assert self._process.stdout.readline().strip() == "probing", "the probe did not start"

    def stop(self) -> ProbeResult:
        out, _ = self._process.communicate(timeout=60)  # closing its stdin stops it
        assert self._process.returncode == 0, "the probe failed"
        return ProbeResult(**json.loads(out))


def probe(markers: list[str], prefixes: tuple[str, ...]) -> ProbeResult:
    held, opened, tries, round_ = {}, [], 0, 0
    while not select.select([sys.stdin], [], [], 0)[0]:  # readable: closed by the test
        candidates = list(_listed(prefixes))
        if round_ % 20 == 0:  # /proc is slower to scan than /dev/shm
            candidates += _named_by_stubs(prefixes)
        round_ += 1
        for path in candidates:
            if path in held:
                continue
            tries += 1
            try:
                held[path] = os.open(path, os.O_RDONLY)
                opened.append(path)
            except OSError:
                pass
        time.sleep(0.001)
    found = []
    for fd in held.values():
        data = os.pread(fd, 64 << 20, 0)
        found += [m for m in markers if m.encode() in data]
        os.close(fd)
    return ProbeResult(opened, tries, sorted(set(found)))


def _listed(prefixes):
    try:
        entries = list(os.scandir("/dev/shm"))
    except OSError:
        return
    for entry in entries:
        if not entry.name.startswith(prefixes):
            continue
        if entry.is_dir(follow_symlinks=False):
            try:
                yield from (os.path.join(entry.path, name) for name in os.listdir(entry.path))
            except OSError:
                pass
        else:
            yield entry.path


def _named_by_stubs(prefixes) -> list[str]:
    paths = []
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if len(argv) > 2 and argv[0].endswith(b"triton_python_backend_stub"):
            name = argv[2].decode(errors="replace")
            if not name.startswith(prefixes):
                continue
            paths += [f"/dev/shm/{name}", f"/proc/{pid}/root/dev/shm/{name}"]
            try:
                paths += [e.path + "/" + name for e in os.scandir("/dev/shm") if e.name.startswith(prefixes)]
            except OSError:
                pass
    return paths


if __name__ == "__main__":
    markers, prefixes = json.loads(sys.argv[1])
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)  # everything it needs is imported already
    print("probing", flush=True)
    print(json.dumps(probe(markers, tuple(prefixes)).__dict__))
