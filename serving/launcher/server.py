"""Starts and supervises a real `tritonserver` on a model repository: `TritonServer(config).start()`.

The parts, one concern each:
- `server_config`: what to start (addresses, keys, TLS, extra environment), validated;
- `triton_install`: finding the binary and the Python backend stub for this interpreter;
- `triton_flags`: the command line, closed by default (admin protocols behind the admin key, inference behind
  the API key when one is set; health stays open for balancers);
- `server_process`: one process that dies with the launcher, and its log;
- `shm`: a private /dev/shm for the Python backend's regions, and removing them;
- `supervisor`: the watchdog (restart with backoff, reload a model whose stub died or whose scheduler stalled);
- `triton_admin`: health and admin calls; `process_tree`: stubs and memory from /proc.

This module joins them and owns the lifecycle: a stop and a (re)start never interleave.
"""

from __future__ import annotations

import collections
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from nestrank.protocol.reranking import STORE_PASSWORD_VARIABLE
from nestrank.serving.launcher.admin import TritonAdmin
from nestrank.serving.launcher.config import ServerConfig, ServerStartError, TlsConfig, free_ports
from nestrank.serving.launcher.flags import triton_command
from nestrank.serving.launcher.install import find_tritonserver, prepare_backends, server_environment
from nestrank.serving.launcher.process import ServerLog, dying_with, start_process, stop_process
from nestrank.serving.launcher.process_tree import (
    kill_and_wait,
    process_tree_memory,
    state,
    stub_models,
    stubs_with_prefix,
)
from nestrank.serving.launcher.served import Override, served_repository, split_password
from nestrank.serving.launcher.shm import SHM_DIR, Regions, new_regions, private_shm_unavailable, remove_leftovers
from nestrank.serving.launcher.supervisor import RESTART_BACKOFF_S, RESTART_STABLE_S, EventLog, Supervisor

PROGRESS_DEADLINE = "_progress_deadline_seconds"  # serving/triton/metrics.py's SchedulerMetrics gauge
# (a family's name as prometheus_client parses it: gauges keep their whole name)


def stalled_in_metrics(text: str, waiting_before: dict[str, float | None],
                       now: float) -> tuple[set[str], dict[str, float | None]]:  # fmt: skip
    """(stalled models, the models with requests waiting now and their executions) from Triton's metrics text: a
    scheduler whose worker ran past its progress deadline (`nestrank_*_progress_deadline_seconds`: a worker stuck
    inside a live stub), or requests waiting in Triton's queue both now and at the last look (`waiting_before`)
    with no execution started between (`nv_inference_pending_request_count`, `nv_inference_exec_count`: a stub
    whose `execute` never returns)."""
    found, pending, executions = set(), set(), {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            model = sample.labels.get("model", "")
            if family.name.startswith("nestrank_") and family.name.endswith(PROGRESS_DEADLINE):
                if 0 < sample.value < now:
                    found.add(model)
            elif family.name == "nv_inference_pending_request_count" and sample.value > 0:
                pending.add(model)
            elif family.name == "nv_inference_exec_count":  # its samples are named with _total by the parser
                executions[model] = sample.value
    waiting = {model: executions.get(model) for model in pending}
    found.update(m for m, runs in waiting.items() if m in waiting_before and waiting_before[m] == runs)
    return found - {""}, waiting


__all__ = [  # what callers import from here
    "SHM_DIR", "ServerConfig", "ServerStartError", "TlsConfig", "TritonServer", "free_ports", "find_tritonserver",
    "process_tree_memory", "stub_models", "stubs_with_prefix",
]  # fmt: skip


class TritonServer:
    """A running, supervised tritonserver; use as a context manager or start()/stop()."""

    def __init__(self, config: ServerConfig, echo: bool = False,
                 restart_backoff_s: tuple[float, ...] = RESTART_BACKOFF_S,
                 restart_stable_s: float = RESTART_STABLE_S):  # fmt: skip
        self.config = config
        self.echo = echo  # copy the server's log to stdout
        self.restart_backoff_s = restart_backoff_s
        self.restart_stable_s = restart_stable_s  # up this long, and the next crash backs off from the start again
        self.stopping = threading.Event()
        self.events = EventLog()
        self.log = ServerLog()
        self.api = TritonAdmin(config.http_url, config.admin_key)
        # Held while a process is launched, and while a stop takes the current one: a restart cannot slip in after
        # stop() has looked. Reentrant: a signal handler on the thread that is launching takes it too.
        self._lock = threading.RLock()
        self._process: subprocess.Popen | None = None
        self._regions: Regions | None = None
        self._supervisor: Supervisor | None = None
        self._workdir: Path | None = None
        self._repository = config.model_repository  # what tritonserver serves: the served copy, with overrides
        self._waiting: dict[str, float | None] = {}  # models with queued requests at the last look: their executions

    # -- lifecycle -------------------------------------------------------------------------------------------

    def prepare(self) -> None:
        """Everything before the first launch: the binary, its backend directory, environment, shm isolation."""
        if not self.config.model_repository.is_dir():
            raise ServerStartError(f"model repository {self.config.model_repository} does not exist")
        self._install = find_tritonserver(self.config.tritonserver)
        reason = "turned off (private_shm=False)" if self.config.private_shm is False else private_shm_unavailable()
        if reason and self.config.private_shm:
            raise ServerStartError(f"private_shm: this host cannot give tritonserver a private /dev/shm: {reason}")
        if reason and self.config.private_shm is None:
            self.events.add(f"WARNING: no private /dev/shm for tritonserver ({reason}): other local users can open "
                            "its shared-memory regions for a moment after they appear; run as root, or allow "
                            "unprivileged user namespaces (a container's own /dev/shm is not shared)")  # fmt: skip
        self._private_shm = reason is None
        remove_leftovers()
        self._workdir = Path(tempfile.mkdtemp(prefix="nestrank-triton-"))
        self._backend_dir = prepare_backends(self._install, self._workdir)
        self._env = server_environment(self._install, self.config.environment)
        overrides = self.config.overrides
        if self.config.passage_store is not None:
            overrides += (Override.passage_store(self.config.passage_store),)
            password = split_password(self.config.passage_store)[1]
            if password:
                self._env[STORE_PASSWORD_VARIABLE] = password
        if overrides:
            try:
                self._repository = served_repository(self.config.model_repository, self._workdir / "repository",
                                                     overrides)  # fmt: skip
            except ValueError as err:
                shutil.rmtree(self._workdir, ignore_errors=True)
                self._workdir = None
                raise ServerStartError(f"cannot serve with these settings: {err}") from None

    def start(self) -> TritonServer:
        self.prepare()
        with self._lock:
            if not self._launch():
                raise ServerStartError("stopped before tritonserver started")
        self._wait_ready(self.config.startup_timeout_s, fail=self._fail_start)
        if self.config.supervise:
            self._supervisor = Supervisor(self, self.restart_backoff_s, self.restart_stable_s).start()
        return self

    def _launch(self) -> bool:
        """A new tritonserver, unless a stop was asked for (the caller holds the lock)."""
        if self.stopping.is_set():
            return False
        self._regions = new_regions(self._private_shm)
        command = triton_command(self.config, self._install, self._backend_dir, self._regions.prefix,
                                 self._repository)  # fmt: skip
        self._process = start_process(self._regions.wrapper() + dying_with(os.getpid(), command), self._env,
                                      self.log, self.echo)  # fmt: skip
        return True

    def _wait_ready(self, timeout_s: float, fail) -> None:
        deadline = time.monotonic() + timeout_s
        process = self._process
        while time.monotonic() < deadline and not self.stopping.is_set():
            if process.poll() is not None:
                fail(f"tritonserver exited with code {process.returncode}")
            self.narrow_regions()
            if self.api.is_ready():
                return
            time.sleep(0.25)
        fail(f"tritonserver not ready after {timeout_s:.0f}s" if not self.stopping.is_set() else "stopped")

    def _fail_start(self, what: str) -> None:
        time.sleep(0.2)  # let the log pump drain
        failures = self.log.load_failures()
        detail = "\n".join(failures) if failures else self.log.tail()
        self.stop()
        raise ServerStartError(f"{what}:\n{detail}")

    def restart(self) -> bool:
        """A successor for a dead server (the watchdog calls this after clean_up_dead): True once it is ready."""
        with self._lock:
            if not self._launch():
                return False

        def failed(what: str) -> None:
            raise ServerStartError(what)

        try:
            self._wait_ready(self.config.startup_timeout_s, fail=failed)
            return True
        except ServerStartError as err:
            if not self.stopping.is_set():
                self.events.add(f"restart failed: {err}")
            return False

    def stop(self, timeout_s: float = 30.0) -> None:
        with self._lock:
            self.stopping.set()
            process, regions = self._process, self._regions
        stop_process(process, timeout_s)
        if self._supervisor is not None:
            self._supervisor.join(timeout_s=5)
        if regions is not None:
            self._clean_up(regions)
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- what the watchdog uses ------------------------------------------------------------------------------

    def exit_code(self) -> int | None:
        with self._lock:
            return self._process.poll()

    def clean_up_dead(self) -> None:
        """A tritonserver killed outright leaves its stubs running (re-parented to init) and its shared memory
        behind: both go before a successor starts."""
        with self._lock:
            regions = self._regions
        self._clean_up(regions)

    def _clean_up(self, regions: Regions) -> None:
        stubs = stubs_with_prefix(regions.prefix)
        left = kill_and_wait(stubs)
        paths = regions.paths()
        regions.remove()
        if stubs or paths:
            self.events.add(f"removed {len(stubs) - len(left)} stubs and {len(paths)} shared-memory regions "
                            f"of a stopped tritonserver{f'; {left} would not die' if left else ''}")  # fmt: skip

    def stub_counts(self) -> collections.Counter:
        with self._lock:
            pid = self._process.pid
        return collections.Counter(stub_models(pid).values())

    def reload(self, model: str) -> None:
        """A stub of `model` died: unload it (not ready from now on), then load it again; restart the server if
        that fails."""
        self.events.add(f"a Python backend stub of {model} died; reloading the model")
        unloaded, loaded = self.api.reload(model)
        if unloaded == loaded == 200 and self.model_ready(model):
            self.events.add(f"{model} reloaded and ready")
        else:
            self.events.add(f"reloading {model} failed (unload {unloaded}, load {loaded}); restarting tritonserver")
            with self._lock:
                self._process.kill()

    def stalled(self) -> list[str]:
        """Models that stopped making progress: a stub stopped (SIGSTOP, a debugger: Triton answers "not healthy"
        and never replaces it), or what Triton's metrics say (`stalled_in_metrics`)."""
        with self._lock:
            pid = self._process.pid
        found = {model for stub, model in stub_models(pid).items() if state(stub) in ("T", "t")}
        try:
            with urllib.request.urlopen(self.config.metrics_url, timeout=2.0) as response:
                text = response.read().decode()
        except (OSError, ValueError):
            return sorted(found)
        in_metrics, self._waiting = stalled_in_metrics(text, self._waiting, time.time())
        return sorted(found | in_metrics)

    def kill_stubs(self, model: str) -> None:
        """A stalled model's stubs go (the watchdog then reloads it as for any stub that died)."""
        with self._lock:
            pid = self._process.pid
        stubs = [stub for stub, name in stub_models(pid).items() if name == model]
        self.events.add(f"{model} stopped making progress; killing its {len(stubs)} stub(s) so that it is "
                        "reloaded")  # fmt: skip
        kill_and_wait(stubs)

    def narrow_regions(self) -> None:
        with self._lock:
            regions = self._regions
        if regions is not None:
            regions.narrow()

    # -- control and inspection ------------------------------------------------------------------------------

    @property
    def process(self) -> subprocess.Popen | None:
        with self._lock:
            return self._process

    @property
    def served_repository(self) -> Path:
        """What tritonserver serves: the repository, or its served copy when overrides apply (a model added to
        the repository after start must be added here to be loaded)."""
        return self._repository

    @property
    def regions(self) -> Regions | None:
        """Where the current tritonserver's shared-memory regions are."""
        with self._lock:
            return self._regions

    def is_ready(self) -> bool:
        return self.api.is_ready()

    def model_ready(self, model: str) -> bool:
        return self.api.model_ready(model)

    def admin(self, method: str, path: str, timeout_s: float = 300.0) -> int:
        """A call to Triton's HTTP API with the admin key (model repository, statistics, logging)."""
        return self.api.admin(method, path, timeout_s)

    def log_tail(self, lines: int = 60) -> str:
        return self.log.tail(lines)

    def load_failures(self) -> list[str]:
        return self.log.load_failures()

    def memory(self) -> list[dict]:
        process = self.process
        return process_tree_memory(process.pid) if process is not None else []

    def send_signal(self, signum: int) -> None:
        with self._lock:
            if signum in (signal.SIGINT, signal.SIGTERM):
                self.stopping.set()
            process = self._process
        if process is not None and process.poll() is None:
            process.send_signal(signum)

    def wait(self) -> int:
        """Until a stop is asked for (a crashed server is restarted meanwhile); tritonserver's exit code."""
        while True:
            code = self.process.wait()
            if self.stopping.is_set() or not self.config.supervise:
                return code
            time.sleep(0.5)  # the watchdog is restarting it
