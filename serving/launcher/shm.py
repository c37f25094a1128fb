"""Shared-memory hygiene: where one tritonserver's Python backend regions live, who can open them, removing them.

The Python backend creates each region with mode 0644 and then fchmod()s it to 0644 itself (Boost.Interprocess), so
a umask cannot narrow it, and a chmod afterwards cannot revoke a descriptor another user opened in between (the
regions carry request texts and results). What works: tritonserver runs in a mount namespace of its own in which
/dev/shm is a directory of the host's /dev/shm with mode 0700. Inside, the backend sees an ordinary /dev/shm; outside,
no other user can even look up a region's name. That needs CAP_SYS_ADMIN (root) or unprivileged user namespaces,
plus util-linux's unshare and mount; without them the launcher narrows regions as soon as it sees them.
"""

from __future__ import annotations

import functools
import os
import secrets
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

SHM_DIR = Path("/dev/shm")
_BIND = 'mount --bind "$0" /dev/shm && exec "$@"'  # $0: the private directory; "$@": the server's command


@dataclass(frozen=True)
class Regions:
    """Where one tritonserver's Python backend regions are: names start with `prefix`, and on this host they are in
    `directory` (a private directory of /dev/shm, or /dev/shm itself)."""

    prefix: str
    directory: Path
    private: bool

    def paths(self) -> list[Path]:
        try:
            return sorted(self.directory.glob(f"{self.prefix}*"))
        except OSError:
            return []

    def wrapper(self) -> list[str]:
        """The exec wrapper that puts tritonserver into its namespace: prepended to its command line."""
        if not self.private:
            return []
        return [*_unshare(), "sh", "-c", _BIND, str(self.directory)]

    def narrow(self) -> None:
        """Without a private directory: make regions private to this user as soon as they are seen."""
        if self.private:
            return
        for path in self.paths():
            try:
                if path.stat().st_mode & 0o077:
                    path.chmod(0o600)
            except FileNotFoundError:
                pass

    def remove(self) -> None:
        if self.private:
            shutil.rmtree(self.directory, ignore_errors=True)
        else:
            for path in self.paths():
                path.unlink(missing_ok=True)


def new_regions(private: bool) -> Regions:
    """Regions for one tritonserver launch; the names carry this launcher's pid and pid namespace (see
    `remove_leftovers`)."""
    token = f"{os.getpid()}_{pid_namespace()}_{secrets.token_hex(4)}"
    if not private:
        return Regions(f"nestrank_{token}_", SHM_DIR, False)
    directory = SHM_DIR / f"nestrank-{token}"
    directory.mkdir(mode=0o700)  # a umask can only narrow it
    return Regions(f"nestrank_{token}_", directory, True)


def _unshare() -> list[str]:
    # root has CAP_SYS_ADMIN for a mount namespace; anyone else needs a user namespace, mapped to root inside so
    # that `mount` may run (the files it creates belong to the real user outside).
    user = [] if os.geteuid() == 0 else ["--map-root-user"]
    return ["unshare", "--mount", "--propagation", "private", *user, "--"]


@functools.cache
def private_shm_unavailable() -> str | None:
    """Why this host cannot give tritonserver a private /dev/shm (None: it can), found by trying it once."""
    missing = [tool for tool in ("unshare", "mount", "sh") if shutil.which(tool) is None]
    if missing:
        return f"{', '.join(missing)} not found (util-linux)"
    if not SHM_DIR.is_dir():
        return f"{SHM_DIR} does not exist"
    with tempfile.TemporaryDirectory(dir=SHM_DIR, prefix="nestrank-probe-") as directory:
        try:
            result = subprocess.run([*_unshare(), "sh", "-c", _BIND, directory, "true"],
                                    capture_output=True, text=True, timeout=10)  # fmt: skip
        except (OSError, subprocess.TimeoutExpired) as err:
            return str(err)
    if result.returncode != 0:
        return (result.stderr.strip() or f"exit code {result.returncode}").splitlines()[-1]
    return None


def pid_namespace() -> str:
    """This process's pid namespace: a pid in a name means something only there (containers may share /dev/shm)."""
    try:
        return format(os.stat("/proc/self/ns/pid").st_ino, "x")
    except OSError:
        return "0"


def remove_leftovers() -> list[Path]:
    """Regions and private directories of this user whose launcher is gone (its pid, in this pid namespace, is in
    their names): a launcher killed with SIGKILL cannot clean up after itself."""
    removed, namespace = [], pid_namespace()
    for path in SHM_DIR.glob("nestrank[-_]*") if SHM_DIR.is_dir() else ():
        fields = path.name.replace("-", "_").split("_")  # nestrank, pid, namespace, ...
        try:
            if len(fields) < 4 or not fields[1].isdigit() or fields[2] != namespace:
                continue
            if path.stat().st_uid != os.geteuid() or _alive(int(fields[1])):
                continue
        except FileNotFoundError:
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True
