"""Closed by default, against the real server: every restricted protocol refused without its key and granted
with it, over gRPC (TLS) and HTTP; health open for balancers; gRPC TLS and mutual TLS with certificates made
here; the clients' api_key= and TLS options."""

from __future__ import annotations

import shutil
import time

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from nestrank.clients.embed import EmbedClient
from nestrank.clients.transport import NO_RETRIES
from nestrank.protocol.errors import UnauthenticatedError, UnavailableError
from nestrank.protocol.headers import ADMIN_KEY_HEADER, API_KEY_HEADER, grpc_header
from nestrank.serving.launcher import ServerConfig, TlsConfig, TritonServer
from tests.certificates import make_certificates
from tests.names import TINY_DECODER

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


@pytest.fixture(scope="module")
def locked(repository, tmp_path_factory, certs):
    """API key, admin key, gRPC over TLS."""
    server = start(repository, tmp_path_factory.mktemp("locked"), api_key=API_KEY, admin_key=ADMIN_KEY,
                   tls=TlsConfig(certs.server_cert, certs.server_key))  # fmt: skip
    yield server
    server.stop()


@pytest.fixture(scope="module")
def mutual(repository, tmp_path_factory, certs):
    """Mutual TLS, shared memory opened for same-host clients, no API key."""
    server = start(repository, tmp_path_factory.mktemp("mutual"), allow_shared_memory=True,
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
    "statistics": (ADMIN_KEY, lambda c, h: c.get_inference_statistics(TINY_DECODER, headers=h)),
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
    with EmbedClient(url, TINY_DECODER, ssl=True, root_certificates=ca) as c:
        started = time.monotonic()
        with pytest.raises(UnauthenticatedError, match="restricted"):
            c.embed(["no key"])
        assert time.monotonic() - started < 2  # a refusal is final: not retried as if the endpoint were down


def test_mutual_tls_needs_a_client_certificate(mutual, certs):
    url, ca = mutual.config.grpc_url, str(certs.ca)
    with EmbedClient(url, TINY_DECODER, ssl=True, root_certificates=ca, retry=NO_RETRIES, timeout_s=5) as c:
        with pytest.raises(UnavailableError):
            c.embed(["no client certificate"])
    with EmbedClient(url, TINY_DECODER, ssl=True, root_certificates=ca, private_key=str(certs.client_key),
                     certificate_chain=str(certs.client_cert)) as c:  # fmt: skip
        assert c.embed(["with one"]).shape == (1, 64)


def test_allow_shared_memory_opens_only_shared_memory(mutual, certs):
    client = grpcclient.InferenceServerClient(mutual.config.grpc_url, ssl=True, root_certificates=str(certs.ca),
                                              private_key=str(certs.client_key),
                                              certificate_chain=str(certs.client_cert))  # fmt: skip
    try:
        client.get_system_shared_memory_status()
        refused(lambda: client.get_inference_statistics(TINY_DECODER))
        refused(lambda: client.get_model_repository_index())
    finally:
        client.close()
