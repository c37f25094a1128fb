"""Another local user trying to read a server's shared-memory regions: a forked child that drops to uid/gid 65534
and, until stopped, opens every region it can name (listed in /dev/shm or its subdirectories, or named on a
Python backend stub's command line, which /proc shows to everyone). It keeps what it opened, as an attacker
would, and reads it at the end. It looks only at names that start with one of `prefixes` (other servers on
this host are not its business)."""

from __future__ import annotations

import json
import os
import select
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
        self.markers = markers
        self.prefixes = prefixes
        self._stop_r, self._stop_w = os.pipe()
        self._out_r, self._out_w = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:  # the child: only os calls and modules imported already
            code = 1
            try:
                os.close(self._stop_w)  # else the stop signal (its closing) never comes
                os.close(self._out_r)
                os.setgroups([])
                os.setgid(NOBODY)
                os.setuid(NOBODY)
                result = self._probe()
                os.write(self._out_w, json.dumps(result.__dict__).encode())
                code = 0
            finally:
                os._exit(code)
        os.close(self._out_w)
        os.close(self._stop_r)

    def stop(self) -> ProbeResult:
        os.close(self._stop_w)
        chunks = []
        while chunk := os.read(self._out_r, 1 << 16):
            chunks.append(chunk)
        os.close(self._out_r)
        _, status = os.waitpid(self.pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0 and chunks, "the probe failed"
        return ProbeResult(**json.loads(b"".join(chunks)))

    def _probe(self) -> ProbeResult:
        held, opened, tries, round_ = {}, [], 0, 0
        while not select.select([self._stop_r], [], [], 0)[0]:
            candidates = list(self._listed(self.prefixes))
            if round_ % 20 == 0:  # /proc is slower to scan than /dev/shm
                candidates += self._named_by_stubs(self.prefixes)
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
            time.sleep(0.0005)
        found = []
        for path, fd in held.items():
            data = os.pread(fd, 64 << 20, 0)
            found += [m for m in self.markers if m.encode() in data]
            os.close(fd)
        return ProbeResult(opened, tries, sorted(set(found)))

    @staticmethod
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

    @staticmethod
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
