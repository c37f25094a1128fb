"""What operators point at a server, against the session's real Triton: perf_analyzer (Triton's load tester, the
binary `make setup` installs) over gRPC and HTTP with real texts and no key or flag beyond URL and model; the front's
Prometheus metrics; and its traces, received by a real OTLP/HTTP endpoint here that decodes opentelemetry-proto's
ExportTraceServiceRequest (the front runs as its own process: the tracer provider is global to a process)."""

from __future__ import annotations

import csv
import http.server
import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from nestrank.bench.perf_inputs import input_data
from nestrank.texts import realistic_texts
from tests.names import MINILM

pytestmark = pytest.mark.slow
INSTALL = "bash bench/loadtest/install_perf_analyzer.sh .venv (make setup runs it)"


@pytest.fixture(scope="module")
def perf_analyzer() -> str:
    binary = shutil.which("perf_analyzer", path=str(Path(sys.executable).parent)) or shutil.which("perf_analyzer")
    if binary is None:
        pytest.fail(f"perf_analyzer is not installed: {INSTALL}", pytrace=False)
    ran = subprocess.run([binary, "--version"], capture_output=True, text=True)
    if ran.returncode != 0:  # installed, but its libraries are missing on this host
        pytest.skip(f"perf_analyzer cannot run here: {(ran.stderr or ran.stdout).strip()[-300:]}")
    return binary


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_perf_analyzer_measures_a_default_server_with_real_texts(server, perf_analyzer, tmp_path, protocol):
    """Statistics and model config are readable without the admin key, so perf_analyzer runs as documented."""
    texts = tmp_path / "texts.json"
    texts.write_text(json.dumps(input_data(realistic_texts(16))))
    port = server.config.grpc_port if protocol == "grpc" else server.config.http_port
    report = tmp_path / "report.csv"
    command = [perf_analyzer, "-m", MINILM, "-u", f"127.0.0.1:{port}", "-i", protocol, "--input-data", str(texts),
               "--concurrency-range", "2", "--measurement-mode", "count_windows", "--measurement-request-count", "16",
               "--max-trials", "3", "--stability-percentage", "100", "-f", str(report)]  # fmt: skip
    ran = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert ran.returncode == 0, ran.stdout[-2000:] + ran.stderr[-2000:]
    (row,) = list(csv.DictReader(report.open()))
    assert float(row["Inferences/Second"]) > 0 and "restricted" not in ran.stdout + ran.stderr


class Receiver(http.server.ThreadingHTTPServer):
    """An OTLP/HTTP traces endpoint: decodes each ExportTraceServiceRequest and keeps its spans."""

    def __init__(self):
        super().__init__(("127.0.0.1", 0), ReceiverHandler)
        self.spans = []
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class ReceiverHandler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
            ExportTraceServiceResponse,
        )

        request = ExportTraceServiceRequest.FromString(self.rfile.read(int(self.headers["Content-Length"])))
        assert self.path == "/v1/traces" and self.headers["Content-Type"] == "application/x-protobuf"
        for resource_spans in request.resource_spans:
            service = {a.key: a.value.string_value for a in resource_spans.resource.attributes}["service.name"]
            for scope_spans in resource_spans.scope_spans:
                self.server.spans += [(service, span) for span in scope_spans.spans]
        body = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_the_front_continues_a_callers_trace_into_its_grpc_calls_and_exports_it(server, grpc_url, monkeypatch):
    from nestrank.bench.http_front import FrontProcess

    receiver = Receiver()
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")  # export within 0.1 s, not 5 s
    trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    try:
        front = FrontProcess(grpc_url, server.config.model_repository)
        front.command += ["--otlp-endpoint", receiver.url]
        with front:
            response = httpx.post(f"{front.url}/v1/embeddings", json={"model": MINILM, "input": ["traced"] * 3},
                                  headers={"traceparent": f"00-{trace_id}-{parent_id}-01"}, timeout=60)  # fmt: skip
            assert response.status_code == 200
            deadline = time.monotonic() + 30
            while not any(s.name == "nestrank.embed" for _, s in receiver.spans) and time.monotonic() < deadline:
                time.sleep(0.1)
    finally:
        receiver.shutdown()
    spans = [span for service, span in receiver.spans if service == "nestrank-front"]
    assert {span.trace_id.hex() for span in spans} == {trace_id}, [s.name for s in spans]  # the caller's, alone
    (served,) = [s for s in spans if s.name == "POST /v1/embeddings"]
    assert served.parent_span_id.hex() == parent_id and served.kind == served.SPAN_KIND_SERVER
    (embed,) = [s for s in spans if s.name == "nestrank.embed"]
    assert embed.parent_span_id == served.span_id
    infers = [s for s in spans if s.name == "/inference.GRPCInferenceService/ModelInfer"]
    assert infers and all(s.kind == s.SPAN_KIND_CLIENT and s.parent_span_id == embed.span_id for s in infers)


def test_the_fronts_prometheus_metrics(server, grpc_url):
    from nestrank.api.cli import FrontThread
    from nestrank.api.settings import FrontSettings
    from nestrank.bench.prometheus_text import samples

    key = "metrics-test-key-0123456789"
    settings = FrontSettings(triton_urls=(grpc_url,), port=0, api_key=key, repository=server.config.model_repository)
    with FrontThread(settings) as front:
        auth = {"Authorization": f"Bearer {key}"}
        assert httpx.post(f"{front.url}/embed", json={"inputs": ["one two three"]}, headers=auth).status_code == 200
        assert httpx.post(f"{front.url}/embed", json={"inputs": [""]}, headers=auth).status_code == 413
        assert httpx.post(f"{front.url}/embed", json={"inputs": ["x"]}).status_code == 401
        found = {(s.name, tuple(sorted(s.labels.items()))): s.value for s in samples(f"{front.url}/metrics")}  # open

    def value(name, **labels):
        return found[(name, tuple(sorted(labels.items())))]

    for status in ("200", "413", "401"):
        assert value("nestrank_http_requests", route="/embed", method="POST", status=status) == 1
    assert value("nestrank_http_errors", route="/embed", method="POST", status="413") == 1
    assert value("nestrank_http_request_duration_seconds_count", route="/embed", method="POST", status="200") == 1
    assert value("nestrank_http_tokens", model=MINILM) == 5  # [CLS] one two three [SEP]
    assert value("nestrank_http_requests_in_flight") == 1  # the scrape itself
