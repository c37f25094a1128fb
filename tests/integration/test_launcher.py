"""`nestrank serve`'s launcher against the real binary: readable failure when a model cannot load; a model exported
by an older nestrank keeps serving; the configured environment reaches the models; limits and the passage store
set at serve time are in force; nothing outlives a launcher killed with SIGKILL."""

import shutil
import time
from pathlib import Path

import pytest

from nestrank.serving.launcher.server import (
    ServerConfig,
    ServerStartError,
    TritonServer,
    free_ports,
    stub_models,
    stubs_with_prefix,
)
from tests.names import TINY_DECODER

pytestmark = pytest.mark.slow


def test_a_model_that_fails_to_load_stops_the_server_with_its_reason(small_repository, tmp_path):
    broken = tmp_path / "repo"
    shutil.copytree(small_repository / TINY_DECODER, broken / TINY_DECODER)
    (broken / TINY_DECODER / "1" / "model.onnx").write_bytes(b"not an onnx graph")
    config = ServerConfig.on_free_ports(broken)
    with pytest.raises(ServerStartError) as err:
        TritonServer(config).start()
    message = str(err.value)
    assert "tritonserver exited" in message
    assert TINY_DECODER in message and "UNAVAILABLE" in message


def test_serve_command_serves_a_model_an_older_nestrank_exported_until_sigterm(small_repository, tmp_path):
    """An upgrade keeps an exported repository serving: its model.py imports the installed glue; serve warns. Run
    as `nestrank.serve.main(argv, environment=...)` from Python: the variables reach the models' processes, and the
    start-up line names the HTTP address actually bound (--http-host)."""
    import json
    import queue
    import signal
    import subprocess
    import sys
    import threading

    from nestrank.clients.embed import EmbedClient
    from nestrank.export.triton_config import read_config, write_config
    from nestrank.protocol.headers import VERSION_PARAMETER

    repo = tmp_path / "repo"
    shutil.copytree(small_repository / TINY_DECODER, repo / TINY_DECODER)
    config = read_config(repo / TINY_DECODER)
    config.parameters[VERSION_PARAMETER].string_value = json.dumps("0.0.1")
    write_config(config, repo / TINY_DECODER)
    grpc_port, http_port, metrics_port = free_ports(3)
    ports = ["--grpc-port", str(grpc_port), "--http-port", str(http_port), "--metrics-port", str(metrics_port)]
    serve = "import sys; from nestrank.serve import main; sys.exit(main(sys.argv[1:], environment={'NESTRANK_X': 'y'}))"
    addresses = ["--host", "localhost", "--http-host", "127.0.0.1"]
    cmd = [sys.executable, "-c", serve, "--repository", str(repo), "--no-default-models", "--no-api", *addresses,
           *ports]  # fmt: skip
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stdout], daemon=True).start()
    try:
        seen = []
        while not any("nestrank: serving" in line for line in seen):  # printed once Triton is ready
            seen.append(lines.get(timeout=120))
        assert any(f"WARNING: {TINY_DECODER} was exported by nestrank 0.0.1" in line for line in seen)
        assert f"gRPC localhost:{grpc_port}, HTTP 127.0.0.1:{http_port}" in seen[-1]
        with EmbedClient(f"127.0.0.1:{grpc_port}", TINY_DECODER) as client:
            assert client.embed(["still serving"]).shape[0] == 1
        (stub,) = stub_models(process.pid)  # launcher → tritonserver → stub
        assert b"NESTRANK_X=y" in open(f"/proc/{stub}/environ", "rb").read().split(b"\0")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()


def test_limits_set_at_serve_time_are_what_triton_and_info_show(small_repository, tmp_path):
    """Overrides go into the served copy of the config: the real server enforces and reports them (its model-config
    endpoint, the client's info()); a model they do not name serves from a link, as exported; the exported
    repository is left as it was."""
    import tritonclient.grpc as grpcclient

    from nestrank.clients.embed import EmbedClient
    from nestrank.export.triton_config import read_config, write_config
    from nestrank.serving.launcher.served import Override

    repo = tmp_path / "repo"
    for name in (TINY_DECODER, "untouched"):
        shutil.copytree(small_repository / TINY_DECODER, repo / name)
    config = read_config(repo / "untouched")
    config.name = "untouched"
    write_config(config, repo / "untouched")
    exported = (repo / TINY_DECODER / "config.pbtxt").read_bytes()
    overrides = tuple(Override.limit(f"{TINY_DECODER}:{limit}")
                      for limit in ("max_queue_wait_s=7", "max_batch_tokens=4096", "intra_op_threads=1"))  # fmt: skip
    config = ServerConfig.on_free_ports(repo, overrides=overrides)
    with TritonServer(config):
        with EmbedClient(config.grpc_url, TINY_DECODER) as client:
            info = client.info()
            assert (info.max_queue_wait_s, info.max_batch_tokens, info.intra_op_threads) == (7, 4096, 1)
            assert info.limits.max_run_tokens == 8192  # the rest as exported
            assert client.embed(["served with the limits in force"]).shape[0] == 1
        with EmbedClient(config.grpc_url, "untouched") as client:
            assert client.info().limits.max_batch_tokens == 16384 and client.embed(["as exported"]).shape[0] == 1
        triton = grpcclient.InferenceServerClient(config.grpc_url)
        served = triton.get_model_config(TINY_DECODER).config
        triton.close()
        assert served.dynamic_batching.default_queue_policy.default_timeout_microseconds == 7_000_000
    assert (repo / TINY_DECODER / "config.pbtxt").read_bytes() == exported


def test_a_reranker_uses_the_store_and_the_limits_it_was_served_with(tiny_t5_dir, tmp_path):
    """The passage store travels like the limits (the served copy of all three configs): indexed passages land in
    that LMDB, and the served max_candidates is what the client splits by."""
    import numpy as np
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    from nestrank.clients.rerank import RerankClient
    from nestrank.export.reranker import export_reranker
    from nestrank.serving.launcher.served import Override
    from nestrank.serving.pipeline.passage_store import open_store

    repo, store = tmp_path / "repo", f"lmdb://{tmp_path / 'passages'}"
    export_reranker(tiny_t5_dir, "t5", repo, max_passage_tokens=64, log=lambda _: None)
    config = ServerConfig.on_free_ports(
        repo,
        passage_store=store,
        overrides=(Override.limit("t5:max_candidates=2"), Override.limit("intra_op_threads=1")),
    )
    documents = [f"passage number {i} about files" for i in range(5)]
    with TritonServer(config), RerankClient(config.grpc_url, "t5") as client:
        info = client.info()
        assert (info.max_candidates, info.passage_store, info.intra_op_threads) == (2, store, 1)
        client.index(documents, [f"doc-{i}" for i in range(5)])  # the client splits by the served limit
        by_id = client.rerank("read a file", passages=[f"doc-{i}" for i in range(5)])  # three requests of <= 2
        by_text = client.rerank("read a file", documents)
        assert sorted(r.index for r in by_id) == list(range(5))
        assert [round(r.score, 5) for r in by_id] == [round(r.score, 5) for r in by_text]
        triton = grpcclient.InferenceServerClient(config.grpc_url)  # the server enforces it too
        tensor = grpcclient.InferInput("documents", [1, 3], "BYTES")
        tensor.set_data_from_numpy(np.array([[d.encode() for d in documents[:3]]], dtype=object))
        with pytest.raises(InferenceServerException, match="documents: 3 exceed max_candidates 2"):
            triton.infer("t5", [tensor], parameters={"warm": True})
        triton.close()
    assert open_store(store).entries()["pinned"] >= 10  # five passages' states and five ids, kept for good


LAUNCHER = """
import sys
from nestrank.serving.launcher.server import ServerConfig, TritonServer
server = TritonServer(ServerConfig.on_free_ports(sys.argv[1])).start()
print(server.process.pid, server.regions.prefix, server.regions.directory, flush=True)
server.wait()
"""


def test_nothing_outlives_a_launcher_killed_with_sigkill(small_repository, tmp_path):
    """tritonserver gets SIGTERM when its launcher dies and takes its stubs with it; the next launcher's start
    removes the shared memory the dead one could not."""
    import subprocess
    import sys

    from nestrank.serving.launcher.process_tree import running
    from nestrank.serving.launcher.shm import SHM_DIR

    shutil.copytree(small_repository / TINY_DECODER, tmp_path / "repo" / TINY_DECODER)
    launcher = subprocess.Popen([sys.executable, "-c", LAUNCHER, str(tmp_path / "repo")], stdout=subprocess.PIPE,
                                text=True)  # fmt: skip
    try:
        pid, prefix, directory = launcher.stdout.readline().split()
        stubs = stubs_with_prefix(prefix)
        assert stubs and running(int(pid))
        launcher.kill()
        launcher.wait()
        deadline = time.monotonic() + 120
        while any(running(p) for p in [int(pid), *stubs]) or stubs_with_prefix(prefix):
            assert time.monotonic() < deadline, "tritonserver or a stub outlived its launcher"
            time.sleep(0.1)
        left = sorted(Path(directory).glob(f"{prefix}*")) if Path(directory).is_dir() else []
        print(f"launcher SIGKILLed: tritonserver and {len(stubs)} stub(s) gone; left behind: "
              f"{'its directory' if Path(directory).is_dir() and Path(directory) != SHM_DIR else 'nothing'}, "
              f"{len(left)} regions")  # fmt: skip
        TritonServer(ServerConfig.on_free_ports(tmp_path / "repo")).prepare()  # the next launcher
        assert not (Path(directory) != SHM_DIR and Path(directory).exists())
        assert not list(SHM_DIR.glob(f"{prefix}*"))
    finally:
        launcher.kill()
