"""The launcher's parts without a tritonserver: config, flags and environment; the log and event buffers under
concurrent use; stop() against a racing restart; the watchdog's backoff; die-with-parent with real processes and
real kills; private shared-memory directories."""

import collections
import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from nestrank.serving.launcher import process as server_process
from nestrank.serving.launcher import server as launcher
from nestrank.serving.launcher import shm
from nestrank.serving.launcher.config import ServerConfig, ServerStartError, TlsConfig
from nestrank.serving.launcher.flags import triton_command
from nestrank.serving.launcher.install import find_tritonserver, prepare_backends, server_environment
from nestrank.serving.launcher.process import ServerLog, dying_with, start_process
from nestrank.serving.launcher.process_tree import running
from nestrank.serving.launcher.server import TritonServer
from nestrank.serving.launcher.supervisor import EventLog, Supervisor


def wait_for(condition, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout_s} s"
        time.sleep(0.02)


# -- config, flags, environment ----------------------------------------------------------------------------------


def test_config_is_validated(tmp_path):
    with pytest.raises(ValueError, match="must differ"):
        ServerConfig(tmp_path, grpc_port=9000, http_port=9000)
    with pytest.raises(ValueError, match="grpc_port must be in 1..65535"):
        ServerConfig(tmp_path, grpc_port=0)
    assert ServerConfig(tmp_path).grpc_url == "127.0.0.1:8001"
    assert ServerConfig(tmp_path, http_host="10.0.0.7", http_port=9000).http_address == "10.0.0.7:9000"
    with pytest.raises(ValueError, match="http_host must be an IP address"):
        ServerConfig(tmp_path, host="localhost")  # HTTP follows host: Triton would bind 255.255.255.255
    assert ServerConfig(tmp_path, host="localhost", http_host="127.0.0.1").grpc_url == "localhost:8001"


def test_finds_the_bundled_server_and_prepares_the_python_backend(tmp_path):
    install = find_tritonserver()
    assert install.binary.name == "tritonserver" and os.access(install.binary, os.X_OK)
    backends = prepare_backends(install, tmp_path)
    python = backends / "python"
    assert (python / "libtriton_python.so").exists()
    assert (python / "triton_python_backend_stub").exists()


def test_environment_points_the_stub_at_this_interpreter():
    env = server_environment(find_tritonserver())
    assert "nvidia_pytriton.libs" in env["LD_LIBRARY_PATH"]
    assert any("site-packages" in d for d in env["NESTRANK_SITE_DIRS"].split(os.pathsep))


def test_the_configured_environment_reaches_the_server_without_breaking_the_stub(tmp_path):
    config = ServerConfig(tmp_path, environment={"HF_HOME": "/var/lib/hf", "LD_LIBRARY_PATH": "/own"})
    env = server_environment(find_tritonserver(), config.environment)
    assert env["HF_HOME"] == "/var/lib/hf"
    libs = env["LD_LIBRARY_PATH"].split(os.pathsep)
    assert "nvidia_pytriton.libs" in libs[0] and "/own" in libs  # the wheel's libraries first, the caller's kept
    with pytest.raises(TypeError):
        config.environment["OTHER"] = "1"  # frozen, like the rest of the config
    for bad in ({"": "1"}, {"A=B": "1"}, {"A": 1}, {"A": "x\0y"}):
        with pytest.raises(ValueError, match="environment"):
            ServerConfig(tmp_path, environment=bad)
    for moved in ("NESTRANK_PASSAGE_STORE", "NESTRANK_PASSAGE_CACHE_BYTES", "NESTRANK_ORT_THREADS"):
        with pytest.raises(ValueError, match=f"the models no longer read {moved}"):  # never silently ignored
            ServerConfig(tmp_path, environment={moved: "1"})


def test_command_binds_the_configured_addresses(tmp_path):
    config = ServerConfig(tmp_path, grpc_port=9101, http_port=9100, metrics_port=9102, response_cache_bytes=1024)
    cmd = triton_command(config, find_tritonserver(), tmp_path / "backends", "nestrank_1_ab_")
    for flag in ("--grpc-address=127.0.0.1", "--grpc-port=9101", "--http-port=9100", "--metrics-port=9102"):
        assert flag in cmd
    assert "--cache-config=local,size=1024" in cmd
    assert "--backend-config=python,shm-region-prefix-name=nestrank_1_ab_" in cmd


def test_missing_binary_and_repository_are_reported(tmp_path):
    from nestrank.serving.launcher.install import find_tritonserver

    with pytest.raises(ServerStartError, match="does not exist"):
        find_tritonserver(tmp_path / "nope")
    with pytest.raises(ServerStartError, match="model repository .* does not exist"):
        TritonServer(ServerConfig(tmp_path / "missing")).start()


def test_admin_protocols_shared_memory_included_are_closed_by_default_behind_a_random_key(tmp_path):
    config = ServerConfig(tmp_path)
    cmd = triton_command(config, find_tritonserver(), None, "p_")
    admin = "shared-memory,model-repository,trace,logging"  # statistics and model config stay readable
    assert f"--grpc-restricted-protocol={admin}:nestrank-admin-key={config.admin_key}" in cmd
    assert f"--http-restricted-api={admin}:nestrank-admin-key={config.admin_key}" in cmd
    assert len(config.admin_key) >= 32 and ServerConfig(tmp_path).admin_key != config.admin_key
    assert not any("inference" in flag for flag in cmd)  # no API key: inference stays open (on 127.0.0.1)
    assert "--model-control-mode=explicit" in cmd and "--load-model=*" in cmd


def test_api_key_and_tls_flags(tmp_path):
    for name in ("cert.pem", "key.pem", "ca.pem"):
        (tmp_path / name).write_text("pem")
    tls = TlsConfig(tmp_path / "cert.pem", tmp_path / "key.pem", client_ca=tmp_path / "ca.pem")
    config = ServerConfig(tmp_path, api_key="k" * 20, tls=tls, extra_args=("--log-info=0",))
    cmd = triton_command(config, find_tritonserver(), None, "p_")
    readers = "inference,model-config,metadata,statistics"  # one key for everything a load tester calls
    assert f"--grpc-restricted-protocol={readers}:nestrank-api-key={'k' * 20}" in cmd
    assert "--grpc-use-ssl-mutual=true" in cmd and f"--grpc-root-cert={tmp_path / 'ca.pem'}" in cmd
    assert cmd[-1] == "--log-info=0"


def test_keys_and_tls_files_are_checked(tmp_path):
    with pytest.raises(ValueError, match="api_key must be at least 16"):
        ServerConfig(tmp_path, api_key="short")
    with pytest.raises(ValueError, match="admin_key must be .* without commas"):
        ServerConfig(tmp_path, admin_key="a,b" * 10)
    with pytest.raises(ValueError, match="TLS cert: .* is not a file"):
        TlsConfig(tmp_path / "missing.pem", tmp_path / "key.pem")


def test_listening_beyond_loopback_without_a_key_warns(tmp_path, capsys):
    from nestrank.serve import main

    assert main(["--repository", str(tmp_path / "missing"), "--host", "0.0.0.0", "--no-default-models"]) == 1
    assert "WARNING: listening on 0.0.0.0 without --api-key" in capsys.readouterr().err
    assert main(["--repository", str(tmp_path / "missing"), "--no-default-models"]) == 1
    assert "WARNING" not in capsys.readouterr().err


def test_allow_shared_memory_is_refused_with_the_reason(tmp_path, capsys):
    """It let any local client register the backend's own regions and crash the server."""
    from nestrank.serve import main

    assert main(["--repository", str(tmp_path / "repo"), "--allow-shared-memory"]) == 2  # before exporting anything
    assert "--allow-shared-memory was removed" in capsys.readouterr().err
    assert not (tmp_path / "repo").exists()


# -- buffers read while other threads write ------------------------------------------------------------------------


def test_load_failures_can_be_read_while_the_log_pump_appends():
    log = ServerLog(lines=400)
    for i in range(400):
        log.append(f"| model{i} | 1 | UNAVAILABLE: not loaded |\n")
    done = threading.Event()

    def pump():
        while not done.is_set():
            log.append("| model | 1 | UNAVAILABLE: not loaded |\n")

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    thread = threading.Thread(target=pump)
    thread.start()
    try:
        for _ in range(200):
            assert len(log.load_failures()) == 400  # no "deque mutated during iteration"
    finally:
        done.set()
        thread.join()
        sys.setswitchinterval(interval)


def test_events_keep_the_latest_and_stay_bounded(tmp_path):
    server = TritonServer(ServerConfig(tmp_path))
    for i in range(10_000):
        server.events.add(f"event {i}")
    events = list(server.events)
    assert len(events) <= 1000 and events[-1][1] == "event 9999"


# -- stop() against a restart ---------------------------------------------------------------------------------------


def test_stop_during_a_restart_leaves_no_server_running(tmp_path, monkeypatch):
    """The watchdog decided to restart and is launching when stop() comes: nothing it launches may outlive stop()."""
    server = TritonServer(ServerConfig.on_free_ports(tmp_path, private_shm=False))
    server.prepare()
    launching, spawned = threading.Event(), []

    def slow_start(command, env, log, echo):
        launching.set()
        time.sleep(0.5)  # stop() is called meanwhile
        spawned.append(subprocess.Popen(["sleep", "60"]))
        return spawned[-1]

    monkeypatch.setattr(launcher, "start_process", slow_start)
    restarting = threading.Thread(target=server.restart)
    restarting.start()
    try:
        assert launching.wait(10)
        server.stop()
        assert spawned and all(p.poll() is not None for p in spawned)  # what the restart launched is stopped
        restarting.join(30)
        assert server.restart() is False and len(spawned) == 1  # and nothing launches after stop()
    finally:
        for process in spawned:
            process.kill()


# -- the watchdog ---------------------------------------------------------------------------------------------------


class CrashingServer:
    """Stands in for TritonServer under the watchdog: real processes, really killed. A restart starts `true` (it
    exits at once: a crash loop) while `crashing`, else a long-lived `sleep`."""

    def __init__(self):
        self.stopping = threading.Event()
        self.events = EventLog(echo=False)
        self.process = subprocess.Popen(["sleep", "60"])
        self.crashing = True

    def exit_code(self):
        return self.process.poll()

    def restart(self):
        self.process = subprocess.Popen(["true"] if self.crashing else ["sleep", "60"])
        return True

    def pauses(self) -> list[float]:
        return [float(what.split(" in ")[1].split()[0]) for _, what in self.events if "restarting in" in what]

    def stub_counts(self):
        return collections.Counter()  # no stubs to watch

    def clean_up_dead(self): ...

    def reload(self, model): ...

    def narrow_regions(self): ...


def test_the_restart_backoff_starts_again_after_a_stable_period():
    server = CrashingServer()
    supervisor = Supervisor(server, backoff_s=(0.01, 0.02, 0.04), stable_s=2.0, poll_s=0.01).start()
    try:
        server.process.kill()
        wait_for(lambda: len(server.pauses()) >= 6)
        server.crashing = False  # the next restart stays up
        wait_for(lambda: server.process.args == ["sleep", "60"] and server.process.poll() is None)
        time.sleep(2.5)  # longer than stable_s
        crashes = len(server.pauses())
        server.process.kill()
        wait_for(lambda: len(server.pauses()) > crashes)
        pauses = server.pauses()
        assert pauses[:6] == [0.01, 0.02, 0.04, 0.04, 0.04, 0.04]  # crashes in a row back off
        assert pauses[crashes] == 0.01  # a crash after a stable period starts from the first step again
    finally:
        server.stopping.set()
        supervisor.join(5)
        server.process.kill()


# -- die with the launcher -----------------------------------------------------------------------------------------

LAUNCHER = """
import os, sys, threading, time
from nestrank.serving.launcher.process import ServerLog, dying_with, start_process
threading.Thread(target=time.sleep, args=(60,), daemon=True).start()  # a launcher has threads
process = start_process(dying_with(os.getpid(), ["sleep", "60"]), os.environ, ServerLog(), echo=False)
print(process.pid, flush=True)
time.sleep(60)
"""


def test_a_server_dies_with_its_launcher_even_on_sigkill():
    parent = subprocess.Popen([sys.executable, "-c", textwrap.dedent(LAUNCHER)], stdout=subprocess.PIPE, text=True)
    try:
        child = int(parent.stdout.readline())
        wait_for(lambda: open(f"/proc/{child}/comm").read().strip() == "sleep")  # exec'd through the helper
        parent.kill()
        parent.wait()
        wait_for(lambda: not running(child), 10)
    finally:
        parent.kill()


def test_no_python_runs_between_fork_and_exec(monkeypatch):
    """preexec_fn runs Python in the forked child of a threaded process, which can deadlock."""
    seen = {}

    class Recorder:
        def __init__(self, args, **kwargs):
            seen.update(kwargs, args=args)
            raise RuntimeError("recorded")

    monkeypatch.setattr(server_process.subprocess, "Popen", Recorder)
    with pytest.raises(RuntimeError, match="recorded"):
        start_process(dying_with(os.getpid(), ["tritonserver"]), {}, ServerLog(), echo=False)
    assert seen.get("preexec_fn") is None
    assert seen["args"][:3] == [sys.executable, "-I", "-S"] and seen["args"][-1] == "tritonserver"


def test_a_server_whose_launcher_died_before_it_started_does_not_start(tmp_path):
    marker = tmp_path / "ran"
    result = subprocess.run(dying_with(1, ["touch", str(marker)]), capture_output=True, text=True)  # 1: not our parent
    assert result.returncode == 1 and "launcher died" in result.stderr and not marker.exists()


# -- shared memory -------------------------------------------------------------------------------------------------

needs_private_shm = pytest.mark.skipif(
    shm.private_shm_unavailable() is not None, reason=f"no private /dev/shm here: {shm.private_shm_unavailable()}"
)


@needs_private_shm
def test_regions_are_created_inside_a_directory_only_their_owner_can_enter():
    regions = shm.new_regions(private=True)
    try:
        assert regions.directory.parent == shm.SHM_DIR and regions.directory.stat().st_mode & 0o777 == 0o700
        name = f"{regions.prefix}region"
        # Inside the namespace the command sees an ordinary /dev/shm, and creates the region as the backend does.
        script = f"echo secret > /dev/shm/{name} && chmod 644 /dev/shm/{name} && ls /dev/shm"
        listing = subprocess.run([*regions.wrapper(), "sh", "-c", script], capture_output=True, text=True, check=True)
        assert listing.stdout.split() == [name]  # the host's other regions are out of sight
        assert not (shm.SHM_DIR / name).exists() and regions.paths() == [regions.directory / name]
    finally:
        regions.remove()
    assert not regions.directory.exists()


def test_leftovers_of_dead_launchers_are_removed_and_live_ones_kept():
    """Only those of this pid namespace: elsewhere the same pid is another process."""
    dead = subprocess.Popen(["true"])
    dead.wait()
    here, elsewhere = shm.pid_namespace(), "f00d"
    mine = [shm.SHM_DIR / f"nestrank-{os.getpid()}_{here}_aa", shm.SHM_DIR / f"nestrank_{os.getpid()}_{here}_aa_r"]
    gone = [shm.SHM_DIR / f"nestrank-{dead.pid}_{here}_bb", shm.SHM_DIR / f"nestrank_{dead.pid}_{here}_bb_r"]
    other = [shm.SHM_DIR / f"nestrank-{dead.pid}_{elsewhere}_cc", shm.SHM_DIR / f"nestrank_{dead.pid}_{elsewhere}_cc_r"]
    for directory, region in (mine, gone, other):
        directory.mkdir(mode=0o700)
        (directory / "region").write_bytes(b"x")
        region.write_bytes(b"x")
    try:
        removed = shm.remove_leftovers()
        assert set(gone) <= set(removed) and not any(p.exists() for p in gone)
        assert all(p.exists() for p in mine + other)
    finally:
        for path in mine + gone + other:
            subprocess.run(["rm", "-rf", str(path)], check=True)


def test_one_backoff_for_the_server_and_its_companions():
    from nestrank.serving.launcher.supervisor import Backoff

    backoff = Backoff((1.0, 2.0, 4.0), stable_s=10.0)
    assert [backoff.pause_after(0.5) for _ in range(4)] == [1.0, 2.0, 4.0, 4.0]  # crashes in a row, capped
    assert backoff.pause_after(None) == 4.0  # a restart that never came up is a crash in the row
    assert backoff.pause_after(10.0) == 1.0  # up for the stable period: from the first step again


def test_a_model_is_stalled_past_its_progress_deadline_or_when_its_queue_holds_requests_and_nothing_runs():
    from nestrank.serving.launcher.server import stalled_in_metrics

    def page(deadline: float, pending: int, executions: int) -> str:
        return "\n".join([
            "# TYPE nestrank_rerank_encode_progress_deadline_seconds gauge",
            f'nestrank_rerank_encode_progress_deadline_seconds{{instance="m_encode_0_0",model="m_encode"}} {deadline}',
            "# TYPE nv_inference_pending_request_count gauge",
            f'nv_inference_pending_request_count{{model="m_score",version="1"}} {pending}',
            "# TYPE nv_inference_exec_count counter",
            f'nv_inference_exec_count{{model="m_score",version="1"}} {executions}',
            "",
        ])  # fmt: skip

    now = 1_000_000.0
    assert stalled_in_metrics(page(0, 0, 5), {}, now) == (set(), {})  # idle
    assert stalled_in_metrics(page(now + 30, 0, 5), {}, now)[0] == set()  # running, within its deadline
    assert stalled_in_metrics(page(now - 1, 0, 5), {}, now)[0] == {"m_encode"}  # past it
    found, waiting = stalled_in_metrics(page(0, 3, 5), {}, now)  # requests wait: stalled only if nothing runs
    assert found == set() and waiting == {"m_score": 5.0}
    assert stalled_in_metrics(page(0, 3, 6), waiting, now)[0] == set()  # an execution started meanwhile
    assert stalled_in_metrics(page(0, 1, 5), waiting, now)[0] == {"m_score"}  # none did
