"""Closed by default, against the real server: every restricted protocol refused without its key and granted
with it, over gRPC (TLS) and HTTP; without an API key, what only reads open and what changes the server closed;
health open for balancers; gRPC TLS and mutual TLS with certificates made
here; the clients' api_key= and TLS options; shared memory: a client cannot register the backend's own regions,
and another local user cannot open them, at start-up, across a stub reload or after a restart."""

from __future__ import annotations

import os
import shutil
import signal
import time

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from nestrank.clients.embed import EmbedClient
from nestrank.clients.transport import NO_RETRIES, RetryPolicy
from nestrank.protocol.errors import UnauthenticatedError, UnavailableError
from nestrank.protocol.headers import ADMIN_KEY_HEADER, API_KEY_HEADER, grpc_header
from nestrank.serving.launcher.server import ServerConfig, TlsConfig, TritonServer, stub_models
from nestrank.serving.launcher.shm import SHM_DIR, private_shm_unavailable
from tests.certificates import make_certificates
from tests.names import TINY_DECODER
from tests.shm_probe import OtherUserProbe

pytestmark = pytest.mark.slow

API_KEY = "api-key-for-the-tests-0123456789"
ADMIN_KEY = "admin-key-for-the-tests-0123456789"


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_certificates(tmp_path_factory.mktemp("certs"))


def start(repository, tmp_path, **settings) -> TritonServer:
    shutil.copytree(repository / TINY_DECODER, tmp_path / "repo" / TINY_DECODER)
    config = ServerConfig.on_free_ports(tmp_path / "repo", **settings)
    return TritonServer(config).start()


def wait_for(condition, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout_s} s"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def locked(small_repository, tmp_path_factory, certs):
    """API key, admin key, gRPC over TLS."""
    server = start(small_repository, tmp_path_factory.mktemp("locked"), api_key=API_KEY, admin_key=ADMIN_KEY,
                   tls=TlsConfig(certs.server_cert, certs.server_key))  # fmt: skip
    yield server
    server.stop()


@pytest.fixture(scope="module")
def mutual(small_repository, tmp_path_factory, certs):
    """Mutual TLS, no API key."""
    server = start(small_repository, tmp_path_factory.mktemp("mutual"),
                   tls=TlsConfig(certs.server_cert, certs.server_key, client_ca=certs.ca))  # fmt: skip
    yield server
    server.stop()


def text_input(module):
    tensor = module.InferInput("text", [1, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[b"hello"]], dtype=object))
    return tensor


# protocol: (the key that opens it, the call; tritonclient's gRPC and HTTP clients share these method names)
PROTOCOLS = {
    "metadata": (API_KEY, lambda c, h: c.get_server_metadata(headers=h)),
    "model-config": (API_KEY, lambda c, h: c.get_model_config(TINY_DECODER, headers=h)),
    "inference": (API_KEY, lambda c, h: c.infer(TINY_DECODER, [text_input(_module(c))], headers=h)),
    "statistics": (API_KEY, lambda c, h: c.get_inference_statistics(TINY_DECODER, headers=h)),
    "model-repository": (ADMIN_KEY, lambda c, h: c.get_model_repository_index(headers=h)),
    "shared-memory": (ADMIN_KEY, lambda c, h: c.get_system_shared_memory_status(headers=h)),
    "trace": (ADMIN_KEY, lambda c, h: c.get_trace_settings(headers=h)),
    "logging": (ADMIN_KEY, lambda c, h: c.get_log_settings(headers=h)),
}  # fmt: skip


def _module(client):
    return grpcclient if isinstance(client, grpcclient.InferenceServerClient) else httpclient


def headers(key: str | None, grpc: bool) -> dict | None:
    if key is None:
        return None
    name = API_KEY_HEADER if key == API_KEY else ADMIN_KEY_HEADER
    return {grpc_header(name) if grpc else name: key}


def refused(call) -> str:
    with pytest.raises(InferenceServerException) as err:
        call()
    assert "restricted" in err.value.message()
    return err.value.message()


@pytest.fixture(scope="module")
def grpc_tls(locked, certs):
    client = grpcclient.InferenceServerClient(locked.config.grpc_url, ssl=True, root_certificates=str(certs.ca))
    yield client
    client.close()


@pytest.fixture(scope="module")
def http(locked):
    client = httpclient.InferenceServerClient(f"127.0.0.1:{locked.config.http_port}")
    yield client
    client.close()


@pytest.mark.parametrize("protocol", list(PROTOCOLS))
@pytest.mark.parametrize("transport", ["grpc", "http"])
def test_each_restricted_protocol_needs_its_key(grpc_tls, http, transport, protocol):
    key, call = PROTOCOLS[protocol]
    client, grpc = (grpc_tls, True) if transport == "grpc" else (http, False)
    other = ADMIN_KEY if key == API_KEY else API_KEY
    refused(lambda: call(client, headers(None, grpc)))
    refused(lambda: call(client, headers(other, grpc)))  # one key does not open the other's protocols
    wrong = {k: v[:-1] + "x" for k, v in headers(key, grpc).items()}
    refused(lambda: call(client, wrong))
    call(client, headers(key, grpc))  # granted


def test_without_an_api_key_what_only_reads_is_open_and_what_changes_the_server_is_closed(mutual, certs):
    """What load testers read (statistics, model config) is open like metrics on a server without --api-key."""
    client = grpcclient.InferenceServerClient(mutual.config.grpc_url, ssl=True, root_certificates=str(certs.ca),
                                              private_key=str(certs.client_key),
                                              certificate_chain=str(certs.client_cert))  # fmt: skip
    try:
        for protocol in ("statistics", "model-config", "metadata"):
            PROTOCOLS[protocol][1](client, None)
        for protocol in ("model-repository", "shared-memory", "trace", "logging"):
            refused(lambda: PROTOCOLS[protocol][1](client, None))
    finally:
        client.close()


def test_health_stays_open_for_balancers(grpc_tls, http):
    assert grpc_tls.is_server_live() and grpc_tls.is_server_ready()
    assert http.is_server_live() and http.is_server_ready()


def test_grpc_without_tls_is_refused(locked):
    with EmbedClient(locked.config.grpc_url, TINY_DECODER, api_key=API_KEY, retry=NO_RETRIES, timeout_s=5) as c:
        with pytest.raises(UnavailableError):
            c.embed(["hello"])


def test_the_client_sends_its_api_key_over_tls(locked, certs, monkeypatch):
    url, ca = locked.config.grpc_url, str(certs.ca)
    with EmbedClient(url, TINY_DECODER, api_key=API_KEY, ssl=True, root_certificates=ca) as c:
        assert c.embed(["hello", "world"]).shape == (2, 64)
    monkeypatch.setenv("NESTRANK_API_KEY", API_KEY)
    with EmbedClient(url, TINY_DECODER, ssl=True, root_certificates=ca) as c:
        assert c.embed(["from the environment"]).shape == (1, 64)
    monkeypatch.delenv("NESTRANK_API_KEY")
    # A refusal is final, not retried as if the endpoint were down: a retry would first sleep at least half of
    # this backoff, so a refusal that came back sooner was not retried.
    patient = RetryPolicy(attempts=4, initial_backoff_s=20.0, max_backoff_s=20.0)
    with EmbedClient(url, TINY_DECODER, ssl=True, root_certificates=ca, retry=patient) as c:
        started = time.monotonic()
        with pytest.raises(UnauthenticatedError, match="restricted"):
            c.embed(["no key"])
        assert time.monotonic() - started < patient.initial_backoff_s / 2


def test_mutual_tls_needs_a_client_certificate(mutual, certs):
    url, ca = mutual.config.grpc_url, str(certs.ca)
    with EmbedClient(url, TINY_DECODER, ssl=True, root_certificates=ca, retry=NO_RETRIES, timeout_s=5) as c:
        with pytest.raises(UnavailableError):
            c.embed(["no client certificate"])
    with EmbedClient(url, TINY_DECODER, ssl=True, root_certificates=ca, private_key=str(certs.client_key),
                     certificate_chain=str(certs.client_cert)) as c:  # fmt: skip
        assert c.embed(["with one"]).shape == (1, 64)


def test_the_backends_own_region_cannot_be_registered_without_the_admin_key(mutual, certs):
    """A client that registers the Python backend's region and has an output written into it crashes the server;
    without the admin key the registration is refused before Triton touches the region."""
    process = mutual.process
    (stub,) = stub_models(process.pid)
    region = open(f"/proc/{stub}/cmdline", "rb").read().split(b"\0")[2].decode()  # visible to every local user
    client = grpcclient.InferenceServerClient(mutual.config.grpc_url, ssl=True, root_certificates=str(certs.ca),
                                              private_key=str(certs.client_key),
                                              certificate_chain=str(certs.client_cert))  # fmt: skip
    try:
        refused(lambda: client.register_system_shared_memory("stolen", f"/{region}", 1 << 20))
        refused(lambda: client.get_system_shared_memory_status())
        output = grpcclient.InferRequestedOutput("embeddings")
        output.set_shared_memory("stolen", 1 << 20)
        with pytest.raises(InferenceServerException):  # an output into a region that was never registered
            client.infer(TINY_DECODER, [text_input(grpcclient)], outputs=[output])
        assert client.is_server_ready()
        assert client.infer(TINY_DECODER, [text_input(grpcclient)]).as_numpy("embeddings").shape == (1, 64)
    finally:
        client.close()
    assert mutual.process is process and process.poll() is None and stub in stub_models(process.pid)  # not restarted


def test_a_client_with_the_admin_key_uses_shared_memory_in_the_servers_directory(locked, grpc_tls):
    """The trusted path: a region created in the server's shm directory, registered with the admin key, receives
    the output."""
    path = locked.regions.directory / f"client_{os.getpid()}"
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    keys = {**headers(API_KEY, grpc=True), **headers(ADMIN_KEY, grpc=True)}
    try:
        os.ftruncate(fd, 1 << 16)
        refused(lambda: grpc_tls.register_system_shared_memory("mine", f"/{path.name}", 1 << 16))
        grpc_tls.register_system_shared_memory("mine", f"/{path.name}", 1 << 16, headers=keys)
        output = grpcclient.InferRequestedOutput("embeddings")
        output.set_shared_memory("mine", 64 * 4)
        grpc_tls.infer(TINY_DECODER, [text_input(grpcclient)], outputs=[output], headers=keys)
        expected = grpc_tls.infer(TINY_DECODER, [text_input(grpcclient)], headers=keys).as_numpy("embeddings")[0]
        np.testing.assert_allclose(np.frombuffer(os.pread(fd, 64 * 4, 0), dtype=np.float32), expected, atol=1e-6)
    finally:
        grpc_tls.unregister_system_shared_memory("mine", headers=keys)
        os.close(fd)
        path.unlink()


@pytest.mark.skipif(private_shm_unavailable() is not None, reason=f"no private /dev/shm: {private_shm_unavailable()}")
def test_another_local_user_never_opens_a_region(small_repository, tmp_path):
    """uid 65534 tries to open every region it can name, all the time: at start-up, across a stub reload and after
    a restart (the windows in which regions used to be 0644), while requests carry a marker text through them.
    A control region of mode 0644 shows that it would succeed if it could."""
    markers = [f"marker-{i}-{os.getpid()}" for i in range(3)]
    control = SHM_DIR / f"nestrank_control_{os.getpid()}"
    control.write_text("control-text")
    control.chmod(0o644)
    # This launcher's regions and private directories carry its pid (SHM_DIR/nestrank[_-]<pid>_...).
    probe = OtherUserProbe(markers + ["control-text"], (f"nestrank_{os.getpid()}_", f"nestrank-{os.getpid()}_",
                                                        control.name))  # fmt: skip
    server = None
    try:
        server = start(small_repository, tmp_path)  # the default settings
        with EmbedClient(server.config.grpc_url, TINY_DECODER) as client:
            client.embed([markers[0]])
            (stub,) = stub_models(server.process.pid)
            os.kill(stub, signal.SIGKILL)  # a stub reload
            wait_for(lambda: not server.model_ready(TINY_DECODER))
            wait_for(lambda: server.model_ready(TINY_DECODER))
            client.embed([markers[1]])
            first = server.process
            first.send_signal(signal.SIGKILL)  # a restart
            wait_for(lambda: server.process is not first and server.is_ready())
            client.embed([markers[2]])
    finally:
        try:
            if server is not None:
                server.stop()
            result = probe.stop()
        finally:
            control.unlink(missing_ok=True)
    print(f"probe as uid 65534: {result.tries} opens tried, opened {result.opened}")
    assert result.opened == [str(control)] and result.found_in_opened == ["control-text"]
    assert result.tries > 1  # it did try the regions themselves
