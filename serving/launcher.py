"""Starts and supervises a real `tritonserver` on a model repository.

- Finds the binary (the nvidia-pytriton wheel's, or one given), prepares its Python backend, waits for readiness,
  forwards signals and reports model-load failures readably.
- Closed by default: Triton's admin protocols (shared memory, model repository, statistics, trace, logging) need
  the admin key; with an API key, inference, model config and metadata need it too. Health stays open for
  balancers. gRPC TLS, mutual TLS optional.
- Supervised: a tritonserver that dies is restarted with backoff, and the shared-memory regions it left in
  /dev/shm are removed (they carry a prefix of this launcher's own). A Python backend stub that dies is noticed
  within a second; its model is unloaded (readiness turns false, so balancers stop sending) and loaded again.
  Triton itself keeps such a model "ready" and answers every request with INTERNAL.
"""

from __future__ import annotations

import collections
import os
import secrets
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

from nestrank.protocol.headers import ADMIN_KEY_HEADER, API_KEY_HEADER

ADMIN_PROTOCOLS = ("shared-memory", "model-repository", "statistics", "trace", "logging")
API_KEY_PROTOCOLS = ("inference", "model-config", "metadata")
SHM_DIR = Path("/dev/shm")
LOOPBACK = ("127.0.0.1", "localhost", "::1")


class ServerStartError(RuntimeError):
    """tritonserver exited or never became ready; the message carries its own explanation."""


@dataclass(frozen=True)
class TlsConfig:
    """gRPC TLS: the server's certificate and key (PEM files); `client_ca` turns on mutual TLS, checking client
    certificates against that CA."""

    cert: Path
    key: Path
    client_ca: Path | None = None

    def __post_init__(self):
        for name in ("cert", "key", "client_ca"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise ValueError(f"TLS {name}: {path} is not a file")


@dataclass(frozen=True)
class ServerConfig:
    model_repository: Path
    host: str = "127.0.0.1"
    grpc_port: int = 8001
    http_port: int = 8000
    metrics_port: int = 8002
    http_host: str | None = None  # default: host (HTTP has no TLS; keep it on loopback behind a TLS proxy)
    tritonserver: Path | None = None  # None: the binary bundled in the nvidia-pytriton wheel
    response_cache_bytes: int = 0
    startup_timeout_s: float = 300.0
    api_key: str | None = None  # when set, inference / model config / metadata need it (header nestrank-api-key)
    admin_key: str | None = None  # opens the admin protocols; None: a random key only this launcher knows
    allow_shared_memory: bool = False  # same-host clients that pass tensors through shared memory
    tls: TlsConfig | None = None
    supervise: bool = True  # restart a crashed server, reload models whose stub died
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
        for name in ("api_key", "admin_key"):
            key = getattr(self, name)
            if key is not None and (len(key) < 16 or not key.isascii() or not key.isprintable() or "," in key):
                raise ValueError(f"{name} must be at least 16 printable ASCII characters without commas")
        if self.admin_key is None:
            object.__setattr__(self, "admin_key", secrets.token_urlsafe(32))

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @classmethod
    def on_free_ports(cls, model_repository: str | Path, **settings) -> ServerConfig:
        """On loopback ports the OS says are free now (tests and benchmarks that start their own server)."""
        grpc_port, http_port, metrics_port = free_ports(3)
        return cls(Path(model_repository), grpc_port=grpc_port, http_port=http_port, metrics_port=metrics_port,
                   **settings)  # fmt: skip

    @property
    def http_url(self) -> str:
        return f"http://{self.http_host or self.host}:{self.http_port}"

    @property
    def exposed_without_key(self) -> bool:
        return self.api_key is None and (self.host not in LOOPBACK or (self.http_host or self.host) not in LOOPBACK)


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
    rows = []
    for current in [pid, *descendants(pid)]:
        try:
            name = Path(f"/proc/{current}/comm").read_text().strip()
            lines = Path(f"/proc/{current}/smaps_rollup").read_text().splitlines()[1:]
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        fields = dict(line.split(":", 1) for line in lines)
        rss, pss = (int(fields[k].split()[0]) / 1024 for k in ("Rss", "Pss"))
        rows.append({"pid": current, "name": name, "rss_mib": rss, "pss_mib": pss})
    return rows


def descendants(pid: int) -> list[int]:
    found, pending = [], [pid]
    while pending:
        current = pending.pop()
        try:
            for task in Path(f"/proc/{current}/task").iterdir():
                children = [int(c) for c in (task / "children").read_text().split()]
                found += children
                pending += children
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return found


def stub_models(pid: int) -> dict[int, str]:
    """{stub pid: model name} for the Python backend stubs under tritonserver `pid` (their first argument is
    `<repository>/<model>/<version>/model.py`)."""
    stubs = {}
    for child in descendants(pid):
        try:
            argv = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        if argv and argv[0].endswith(b"triton_python_backend_stub") and len(argv) > 1:
            stubs[child] = Path(argv[1].decode(errors="replace")).parent.parent.name
    return stubs


def stubs_with_prefix(shm_prefix: str) -> list[int]:
    """Python backend stubs whose shared-memory region carries `shm_prefix` (their second argument), wherever they
    are now: a stub whose tritonserver was killed is re-parented to init and keeps running."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        if (
            len(argv) > 2
            and argv[0].endswith(b"triton_python_backend_stub")
            and argv[2].startswith(shm_prefix.encode())
        ):
            found.append(int(proc.name))
    return found


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


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the launcher dies, even by SIGKILL (else tritonserver is orphaned,
    holding its ports and shared memory)."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def restriction_flags(config: ServerConfig) -> list[str]:
    """Triton's own restricted-API flags: the admin protocols behind the admin key, and (with an API key)
    inference behind the API key. Triton takes the keys on its command line only."""
    admin = [p for p in ADMIN_PROTOCOLS if not (config.allow_shared_memory and p == "shared-memory")]
    groups = [(admin, ADMIN_KEY_HEADER, config.admin_key)]
    if config.api_key:
        groups.append((API_KEY_PROTOCOLS, API_KEY_HEADER, config.api_key))
    flags = []
    for protocols, header, key in groups:
        value = f"{','.join(protocols)}:{header}={key}"
        flags += [f"--grpc-restricted-protocol={value}", f"--http-restricted-api={value}"]
    return flags


def tls_flags(tls: TlsConfig | None) -> list[str]:
    if tls is None:
        return []
    flags = [f"--grpc-server-cert={tls.cert}", f"--grpc-server-key={tls.key}"]
    if tls.client_ca is not None:
        return flags + ["--grpc-use-ssl-mutual=true", f"--grpc-root-cert={tls.client_ca}"]
    return flags + ["--grpc-use-ssl=true"]


@dataclass
class TritonServer:
    """A running, supervised tritonserver; use as a context manager or start()/stop()."""

    config: ServerConfig
    echo: bool = False  # copy the server's log to stdout
    restart_backoff_s: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0, 16.0, 30.0)
    events: list = field(default_factory=list, init=False)  # (monotonic time, what happened), for operators and tests
    _process: subprocess.Popen | None = field(default=None, init=False)
    _log: collections.deque = field(default_factory=lambda: collections.deque(maxlen=400), init=False)
    _workdir: Path | None = field(default=None, init=False)
    _stopping: threading.Event = field(default_factory=threading.Event, init=False)
    _watchdog: threading.Thread | None = field(default=None, init=False)
    _shm_prefix: str = field(default_factory=lambda: f"nestrank_{os.getpid()}_{secrets.token_hex(4)}_", init=False)

    def command(self, install: TritonInstall, backend_dir: Path | None) -> list[str]:
        c = self.config
        http_host = c.http_host or c.host
        cmd = [
            str(install.binary),
            f"--model-repository={c.model_repository}",
            f"--grpc-address={c.host}", f"--grpc-port={c.grpc_port}",
            f"--http-address={http_host}", f"--http-port={c.http_port}",
            f"--metrics-address={http_host}", f"--metrics-port={c.metrics_port}",
            "--exit-on-error=true",
            "--strict-readiness=true",
            "--model-control-mode=explicit", "--load-model=*",  # lets the watchdog reload one model
            f"--backend-config=python,shm-region-prefix-name={self._shm_prefix}",
        ]  # fmt: skip
        if backend_dir is not None:
            cmd.append(f"--backend-directory={backend_dir}")
        if c.response_cache_bytes:
            cmd += [f"--cache-directory={install.caches}", f"--cache-config=local,size={c.response_cache_bytes}"]
        return cmd + restriction_flags(c) + tls_flags(c.tls) + list(c.extra_args)

    # -- lifecycle -------------------------------------------------------------------------------------------

    def start(self) -> TritonServer:
        if not self.config.model_repository.is_dir():
            raise ServerStartError(f"model repository {self.config.model_repository} does not exist")
        install = find_tritonserver(self.config.tritonserver)
        self._workdir = Path(tempfile.mkdtemp(prefix="nestrank-triton-"))
        self._command = self.command(install, prepare_backends(install, self._workdir))
        self._env = server_environment(install)
        self._stopping.clear()
        self._launch()
        self.wait_ready()
        if self.config.supervise:
            self._watchdog = threading.Thread(target=self._supervise, name="nestrank-watchdog", daemon=True)
            self._watchdog.start()
        return self

    def _launch(self) -> None:
        self._process = subprocess.Popen(
            self._command, env=self._env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            errors="replace", preexec_fn=_die_with_parent,
        )  # fmt: skip
        threading.Thread(target=self._pump_log, args=(self._process,), daemon=True).start()

    def _pump_log(self, process: subprocess.Popen) -> None:
        for line in process.stdout:
            self._log.append(line)
            if self.echo:
                sys.stdout.write(line)
                sys.stdout.flush()

    def _event(self, what: str) -> None:
        self.events.append((time.monotonic(), what))
        print(f"nestrank: {what}", file=sys.stderr, flush=True)

    def log_tail(self, lines: int = 60) -> str:
        return "".join(list(self._log)[-lines:])

    def load_failures(self) -> list[str]:
        """Model rows that Triton's model table reports as not READY."""
        return [ln.strip() for ln in self._log if ln.startswith("|") and "UNAVAILABLE" in ln]

    def _http(self, path: str, method: str = "GET", headers: dict | None = None, timeout_s: float = 2.0) -> int:
        """The status of a call to Triton's HTTP API (0: no answer)."""
        request = urllib.request.Request(self.config.http_url + path, method=method,
                                         data=b"" if method == "POST" else None, headers=headers or {})  # fmt: skip
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                return response.status
        except urllib.error.HTTPError as err:
            return err.code
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return 0

    def is_ready(self) -> bool:
        return self._http("/v2/health/ready") == 200

    def model_ready(self, model: str) -> bool:
        return self._http(f"/v2/models/{model}/ready") == 200

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.config.startup_timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                time.sleep(0.2)  # let the log pump drain
                failures = self.load_failures()
                detail = "\n".join(failures) if failures else self.log_tail()
                code = self._process.returncode
                self.stop()
                raise ServerStartError(f"tritonserver exited with code {code}:\n{detail}")
            self.protect_shared_memory()
            if self.is_ready():
                return
            time.sleep(0.25)
        tail = self.log_tail()
        self.stop()
        raise ServerStartError(f"tritonserver not ready after {self.config.startup_timeout_s:.0f}s:\n{tail}")

    def admin(self, method: str, path: str, timeout_s: float = 300.0) -> int:
        """A call to Triton's HTTP API with the admin key (model repository, statistics, logging)."""
        return self._http(path, method, {ADMIN_KEY_HEADER: self.config.admin_key}, timeout_s)

    # -- supervision -----------------------------------------------------------------------------------------

    def _supervise(self) -> None:
        expected = collections.Counter(stub_models(self._process.pid).values())
        restarts = 0
        while not self._stopping.wait(0.5):
            if self._process.poll() is not None:
                if self._stopping.is_set():
                    return
                self.clean_up_after_a_dead_server()
                pause = self.restart_backoff_s[min(restarts, len(self.restart_backoff_s) - 1)]
                self._event(f"tritonserver exited with code {self._process.returncode}; restarting in {pause:g} s")
                if self._stopping.wait(pause):
                    return
                restarts += 1
                self._launch()
                try:
                    self._wait_ready_quietly()
                except ServerStartError as err:
                    if not self._stopping.is_set():
                        self._event(f"restart failed: {err}")
                    continue
                expected = collections.Counter(stub_models(self._process.pid).values())
                self._event("tritonserver restarted and ready")
                continue
            self.protect_shared_memory()
            running = collections.Counter(stub_models(self._process.pid).values())
            for model, count in expected.items():
                if running[model] < count and not self._stopping.is_set():
                    self._reload(model)

    def _wait_ready_quietly(self) -> None:
        deadline = time.monotonic() + self.config.startup_timeout_s
        while time.monotonic() < deadline and not self._stopping.is_set():
            if self._process.poll() is not None:
                raise ServerStartError(f"exited with code {self._process.returncode}")
            if self.is_ready():
                return
            time.sleep(0.25)
        raise ServerStartError("not ready in time")

    def _reload(self, model: str) -> None:
        """A stub of `model` died: unload it (not ready from now on), then load it again; restart the server if
        that fails."""
        self._event(f"a Python backend stub of {model} died; reloading the model")
        unloaded = self.admin("POST", f"/v2/repository/models/{model}/unload")
        loaded = self.admin("POST", f"/v2/repository/models/{model}/load")
        if unloaded == loaded == 200 and self.model_ready(model):
            self._event(f"{model} reloaded and ready")
        else:
            self._event(f"reloading {model} failed (unload {unloaded}, load {loaded}); restarting tritonserver")
            self._process.kill()

    def protect_shared_memory(self) -> None:
        """The Python backend creates its regions readable by every local user (it sets the mode itself, so a
        umask does not help): make this server's own regions private as soon as they appear."""
        for path in SHM_DIR.glob(f"{self._shm_prefix}*") if SHM_DIR.is_dir() else ():
            try:
                if path.stat().st_mode & 0o077:
                    path.chmod(0o600)
            except FileNotFoundError:
                pass

    def clean_up_after_a_dead_server(self) -> None:
        """A tritonserver killed outright leaves its stubs running (orphans) and their shared memory behind."""
        for pid in stubs_with_prefix(self._shm_prefix):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.remove_stale_shared_memory()

    def remove_stale_shared_memory(self) -> list[Path]:
        """Regions this launcher's servers created (its own prefix) and a dead server left behind."""
        stale = list(SHM_DIR.glob(f"{self._shm_prefix}*")) if SHM_DIR.is_dir() else []
        for path in stale:
            path.unlink(missing_ok=True)
        return stale

    # -- control ---------------------------------------------------------------------------------------------

    def memory(self) -> list[dict]:
        return process_tree_memory(self._process.pid) if self._process is not None else []

    def send_signal(self, signum: int) -> None:
        if signum in (signal.SIGINT, signal.SIGTERM):
            self._stopping.set()
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signum)

    def wait(self) -> int:
        """Until a stop is asked for (a crashed server is restarted meanwhile); tritonserver's exit code."""
        while True:
            code = self._process.wait()
            if self._stopping.is_set() or not self.config.supervise:
                return code
            time.sleep(0.5)  # the watchdog is restarting it

    def stop(self, timeout_s: float = 30.0) -> None:
        self._stopping.set()
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        if self._watchdog is not None and self._watchdog is not threading.current_thread():
            self._watchdog.join(timeout=5)
        self.clean_up_after_a_dead_server()
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
