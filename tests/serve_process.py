"""`nestrank serve` as a user runs it: a subprocess on free loopback ports, ready once it prints its serving line."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path

from nestrank.bench.prometheus_text import samples
from nestrank.serving.launcher.server import free_ports


class ServeProcess:
    def __init__(self, repository: Path, *args: str):
        self.grpc_port, self.http_port, self.metrics_port, self.api_port = free_ports(4)
        ports = ["--grpc-port", str(self.grpc_port), "--http-port", str(self.http_port),
                 "--metrics-port", str(self.metrics_port), "--api-port", str(self.api_port)]  # fmt: skip
        self.command = [sys.executable, "-m", "nestrank", "serve", "--repository", str(repository),
                        "--no-default-models", *ports, *args]  # fmt: skip
        self.process: subprocess.Popen | None = None
        self.output: list[str] = []

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def api_url(self) -> str:
        """The HTTP front (unless started with --no-api; https with --tls-cert)."""
        scheme = "https" if "--tls-cert" in self.command else "http"
        return f"{scheme}://127.0.0.1:{self.api_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def start(self, timeout_s: float = 300) -> ServeProcess:
        env = {k: v for k, v in os.environ.items() if k != "NESTRANK_PASSAGE_STORE"}  # the flags decide
        self.process = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                        env=env)  # fmt: skip
        lines: queue.Queue = queue.Queue()

        def pump(stream):
            for line in stream:
                self.output.append(line)
                lines.put(line)
            lines.put(None)

        threading.Thread(target=pump, args=(self.process.stdout,), daemon=True).start()
        while True:
            line = lines.get(timeout=timeout_s)
            if line is None:
                raise RuntimeError("nestrank serve exited:\n" + "".join(self.output[-40:]))
            if line.startswith("nestrank: serving"):
                return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=60)

    def __enter__(self) -> ServeProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def metric_values(url: str, name: str, model: str) -> dict[str, float]:
    """{instance: value} of a nestrank counter for `model`, from the Prometheus text."""
    return {s.labels["instance"]: s.value for s in samples(url, 5) if s.name == name and s.labels.get("model") == model}
