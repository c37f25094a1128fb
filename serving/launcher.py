"""Starts a real `tritonserver` on a model repository: finds the binary, prepares the Python backend,
waits for readiness, forwards signals and reports model-load failures readably."""

from __future__ import annotations

import collections
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path


class ServerStartError(RuntimeError):
    """tritonserver exited or never became ready; the message carries its own explanation."""


@dataclass(frozen=True)
class ServerConfig:
    model_repository: Path
    host: str = "127.0.0.1"
    grpc_port: int = 8001
    http_port: int = 8000
    metrics_port: int = 8002
    tritonserver: Path | None = None  # None: the binary bundled in the nvidia-pytriton wheel
    response_cache_bytes: int = 0
    startup_timeout_s: float = 300.0
    extra_args: tuple[str, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "model_repository", Path(self.model_repository).resolve())
        for name in ("grpc_port", "http_port", "metrics_port"):
            port = getattr(self, name)
            if not 0 < port < 65536:
                raise ValueError(f"{name} must be in 1..65535, got {port}")
        if len({self.grpc_port, self.http_port, self.metrics_port}) != 3:
            raise ValueError("grpc_port, http_port and metrics_port must differ")
        if self.response_cache_bytes < 0:
            raise ValueError("response_cache_bytes must be >= 0")

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"


@dataclass(frozen=True)
class TritonInstall:
    binary: Path
    library_dirs: tuple[Path, ...] = ()
    # Set for the pytriton wheel, whose Python backend needs the stub for this interpreter copied in.
    python_backend: Path | None = None
    stub: Path | None = None
    caches: Path | None = None


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """Ports the OS says are free now (for tests and benchmarks that start their own server)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind((host, 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def process_tree_memory(pid: int) -> list[dict]:
    """RSS and PSS (MiB) of a process and its descendants (tritonserver and its Python backend stubs), from
    /proc. PSS splits shared pages among the processes mapping them, so its sum is the tree's real cost."""
    rows, pending = [], [pid]
    while pending:
        current = pending.pop()
        try:
            name = Path(f"/proc/{current}/comm").read_text().strip()
            fields = dict(
                line.split(":", 1) for line in Path(f"/proc/{current}/smaps_rollup").read_text().splitlines()[1:]
            )
            for task in Path(f"/proc/{current}/task").iterdir():
                pending += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        rss, pss = (int(fields[k].split()[0]) / 1024 for k in ("Rss", "Pss"))
        rows.append({"pid": current, "name": name, "rss_mib": rss, "pss_mib": pss})
    return rows


def find_tritonserver(explicit: Path | None = None) -> TritonInstall:
    if explicit is not None:
        binary = Path(explicit)
        if not binary.exists():
            raise ServerStartError(f"--tritonserver {binary} does not exist")
        root = binary.resolve().parent.parent  # <root>/bin/tritonserver, as in the NGC container
        return TritonInstall(binary=binary, caches=root / "caches")
    try:
        import pytriton
    except ImportError:
        raise ServerStartError(
            "no tritonserver: install the serving extra (`pip install nestrank[serve]`) "
            "or pass --tritonserver /path/to/bin/tritonserver"
        ) from None
    dist = Path(pytriton.__file__).parent / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = dist / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.exists():
        raise ServerStartError(f"nvidia-pytriton ships no Python backend stub for Python {version}")
    return TritonInstall(
        binary=dist / "bin" / "tritonserver",
        library_dirs=(Path(pytriton.__file__).parent.parent / "nvidia_pytriton.libs",),
        python_backend=dist / "backends" / "python",
        stub=stub,
        caches=dist / "caches",
    )


def prepare_backends(install: TritonInstall, workdir: Path) -> Path | None:
    """A backend directory whose Python backend has the stub for the running interpreter."""
    if install.python_backend is None:
        return None
    target = workdir / "backends" / "python"
    shutil.copytree(install.python_backend, target, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(install.stub, target / "triton_python_backend_stub")
    return target.parent


def server_environment(install: TritonInstall) -> dict[str, str]:
    env = dict(os.environ)
    libs = [str(d) for d in install.library_dirs]
    if env.get("LD_LIBRARY_PATH"):
        libs.append(env["LD_LIBRARY_PATH"])
    if libs:
        env["LD_LIBRARY_PATH"] = os.pathsep.join(libs)
    # The stub embeds the system's libpython: tell the model glue where this environment's packages are.
    site_dirs = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    env["NESTRANK_SITE_DIRS"] = os.pathsep.join(site_dirs)
    return env


@dataclass
class TritonServer:
    """A running tritonserver; use as a context manager or start()/stop()."""

    config: ServerConfig
    echo: bool = False  # copy the server's log to stdout
    _process: subprocess.Popen | None = field(default=None, init=False)
    _log: collections.deque = field(default_factory=lambda: collections.deque(maxlen=400), init=False)
    _workdir: Path | None = field(default=None, init=False)

    def command(self, install: TritonInstall, backend_dir: Path | None) -> list[str]:
        c = self.config
        cmd = [
            str(install.binary),
            f"--model-repository={c.model_repository}",
            f"--grpc-address={c.host}", f"--grpc-port={c.grpc_port}",
            f"--http-address={c.host}", f"--http-port={c.http_port}",
            f"--metrics-address={c.host}", f"--metrics-port={c.metrics_port}",
            "--exit-on-error=true",
            "--strict-readiness=true",
        ]  # fmt: skip
        if backend_dir is not None:
            cmd.append(f"--backend-directory={backend_dir}")
        if c.response_cache_bytes:
            cmd += [f"--cache-directory={install.caches}", f"--cache-config=local,size={c.response_cache_bytes}"]
        return cmd + list(c.extra_args)

    def start(self) -> TritonServer:
        if not self.config.model_repository.is_dir():
            raise ServerStartError(f"model repository {self.config.model_repository} does not exist")
        install = find_tritonserver(self.config.tritonserver)
        self._workdir = Path(tempfile.mkdtemp(prefix="nestrank-triton-"))
        backend_dir = prepare_backends(install, self._workdir)
        self._process = subprocess.Popen(
            self.command(install, backend_dir),
            env=server_environment(install),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
        )
        threading.Thread(target=self._pump_log, daemon=True).start()
        self.wait_ready()
        return self

    def _pump_log(self) -> None:
        for line in self._process.stdout:
            self._log.append(line)
            if self.echo:
                sys.stdout.write(line)
                sys.stdout.flush()

    def log_tail(self, lines: int = 60) -> str:
        return "".join(list(self._log)[-lines:])

    def load_failures(self) -> list[str]:
        """Model rows that Triton's model table reports as not READY."""
        return [ln.strip() for ln in self._log if ln.startswith("|") and "UNAVAILABLE" in ln]

    def is_ready(self) -> bool:
        url = f"http://{self.config.host}:{self.config.http_port}/v2/health/ready"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.config.startup_timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                time.sleep(0.2)  # let the log pump drain
                failures = self.load_failures()
                detail = "\n".join(failures) if failures else self.log_tail()
                self.stop()
                raise ServerStartError(f"tritonserver exited with code {self._process.returncode}:\n{detail}")
            if self.is_ready():
                return
            time.sleep(0.25)
        tail = self.log_tail()
        self.stop()
        raise ServerStartError(f"tritonserver not ready after {self.config.startup_timeout_s:.0f}s:\n{tail}")

    def memory(self) -> list[dict]:
        return process_tree_memory(self._process.pid) if self._process is not None else []

    def send_signal(self, signum: int) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signum)

    def wait(self) -> int:
        return self._process.wait()

    def stop(self, timeout_s: float = 30.0) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
