"""`nestrank bench traffic`: the reranker under production traffic, served as `nestrank serve` serves it (LMDB, one
rerank instance, the default limits, no client retries unless said), on a KaLM-Reranker-V1-shaped model (`--shape
nano`, random weights; `--layers` cuts the depth) or the tests' tiny T5 (`--shape tiny`, for a quick run):

1. interactive reranks (alternately: 20 stored ids, and 8 new documents) idle, then during `nestrank index` of
   `--index-passages` new passages at the client's default concurrency (bulk), four interactive callers at once:
   p50 / p99 of each kind, and how long the index took;
2. reranks by id at 1, 4, 16 and 64 in flight (closed loop): reranks/s, p50 / p99, and requests per `_score`
   execution, from `_score`'s scheduler (requests admitted / executions) and Triton's counters (requests /
   `execute` calls: each `execute` hands its requests to the scheduler at once, so Triton counts those, not the
   executions that ran);
3. a `--warm-documents` warm given up after `--abandon-after` seconds: the time from giving up to the next answer
   of a rerank of 8 new documents, and the passage tokens `_encode` still encoded in the seconds after.

Every timed call is one client call; texts are made before the clock starts.
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from nestrank.bench.prometheus_text import samples
from nestrank.bench.results import update_section

NAME = "bench-traffic"
QUERY = "which documents explain how to read a file line by line"


@dataclass(frozen=True)
class TrafficBenchConfig:
    shape: str = "nano"  # nano, small, large (KaLM-Reranker-V1 shapes), or tiny (the tests' T5)
    layers: int | None = None
    passage_tokens: int = 256
    ids: int = 20  # stored passages an interactive rerank by id scores
    idle_rounds: int = 10
    index_passages: int = 400
    callers: int = 4
    in_flight: tuple[int, ...] = (1, 4, 16, 64)
    sweep_candidates: int = 5  # stored passages per rerank of the in-flight sweep
    warm_documents: int = 3000
    abandon_after: float = 5.0
    out: Path = Path("bench/out/traffic.json")


def _texts(tag: str, count: int, words: int) -> list[str]:
    """`count` distinct passages of about `words` words."""
    from nestrank.texts import realistic_texts

    body = " ".join(realistic_texts(40, seed=11)).split()
    return [f"{tag} {k}: " + " ".join(body[(k * 7) % 50 : (k * 7) % 50 + words]) for k in range(count)]


def _percentiles(seconds: list[float]) -> dict:
    return {"n": len(seconds), "p50_ms": float(np.percentile(seconds, 50) * 1e3),
            "p99_ms": float(np.percentile(seconds, 99) * 1e3)}  # fmt: skip


def _counters(url: str, model: str) -> dict[str, float]:
    wanted = {"nestrank_rerank_score_admitted", "nestrank_rerank_score_batches", "nv_inference_exec_count",
              "nv_inference_request_success", "nestrank_rerank_encode_tokens"}  # fmt: skip
    out = dict.fromkeys(wanted, 0.0)
    for sample in samples(url):
        if sample.name in wanted and sample.labels.get("model", "").startswith(model):
            if sample.name.startswith("nv_") and sample.labels["model"] != f"{model}_score":
                continue
            out[sample.name] += sample.value
    return out


def _checkpoint(config: TrafficBenchConfig, folder: Path) -> tuple[Path, dict]:
    from nestrank.export.tiny_checkpoints import kalm_shaped_reranker, tiny_t5_reranker

    if config.shape == "tiny":
        return tiny_t5_reranker(folder / "ckpt"), {"max_passage_tokens": 256}
    return kalm_shaped_reranker(folder / "ckpt", config.shape, layers=config.layers), {}


def run(config: TrafficBenchConfig, log=print) -> dict:
    from nestrank.clients.rerank import RerankClient
    from nestrank.clients.transport import NO_RETRIES
    from nestrank.export.reranker import export_reranker
    from nestrank.protocol.errors import DeadlineExceededError, NestrankError
    from nestrank.serving.launcher.served import Override
    from nestrank.serving.launcher.server import ServerConfig, TritonServer

    words = max(8, int(config.passage_tokens * 0.7))  # about `passage_tokens` tokens with the template
    report: dict = {"config": {k: str(v) for k, v in asdict(config).items()}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        checkpoint, limits = _checkpoint(config, tmp)
        started = time.perf_counter()
        export_reranker(checkpoint, NAME, tmp / "repo", ratios=(4,), log=log, **limits)
        report["export_s"] = time.perf_counter() - started
        # as `nestrank serve` serves it, with room for the sweep's most reranks in flight (default 32 an instance)
        slots = Override.limit(f"max_requests_in_flight={max(32, *config.in_flight)}")
        server_config = ServerConfig.on_free_ports(tmp / "repo", passage_store=f"lmdb://{tmp / 'passages'}",
                                                   overrides=(slots,))  # fmt: skip
        stored_ids = [f"stored-{k}" for k in range(config.ids)]
        with TritonServer(server_config), RerankClient(server_config.grpc_url, NAME, retry=NO_RETRIES,
                                                          timeout_s=3600) as client:  # fmt: skip
            client.index(_texts("stored", config.ids, words), stored_ids)
            metrics = server_config.metrics_url

            refusals: dict[str, int] = {"alone": 0, "idle": 0, "during_index": 0}

            def interactive(rounds: int, tag: str, phase: str) -> dict[str, list[float]]:
                """Seconds per answered rerank, by kind; a refusal (overload: the server would make it wait past
                its bound) is counted, not retried."""
                fresh = [_texts(f"{tag} {i}", 8, words) for i in range(rounds)]
                seconds: dict[str, list[float]] = {"by id": [], "8 new documents": []}
                for i in range(rounds):
                    kind = "8 new documents" if i % 2 else "by id"
                    begin = time.perf_counter()
                    try:
                        if i % 2:
                            client.rerank(QUERY, fresh[i])
                        else:
                            client.rerank(QUERY, passages=stored_ids)
                    except NestrankError:
                        refusals[phase] += 1
                        continue
                    seconds[kind].append(time.perf_counter() - begin)
                return seconds

            def merged(rounds: list[dict[str, list[float]]]) -> dict[str, list[float]]:
                return {kind: [v for r in rounds for v in r[kind]] for kind in ("by id", "8 new documents")}

            def together(phase: str, tag: str) -> dict[str, list[float]]:
                """`config.callers` callers at once, two reranks each (one of each kind)."""
                results: list[dict[str, list[float]]] = []
                callers = [threading.Thread(target=lambda i=i: results.append(interactive(2, f"{tag}.{i}", phase)))
                           for i in range(config.callers)]  # fmt: skip
                for caller in callers:
                    caller.start()
                for caller in callers:
                    caller.join()
                return merged(results)

            log("interactive reranks, idle: one caller, then callers at once ...")
            alone = interactive(config.idle_rounds, "alone", "alone")
            idle = merged([together("idle", f"idle {k}") for k in range(max(1, config.idle_rounds // 4))])
            corpus = _texts("indexed", config.index_passages, words)
            log(f"interactive reranks during an index of {config.index_passages} passages ...")
            indexed: dict = {}

            def index() -> None:
                with RerankClient(server_config.grpc_url, NAME, timeout_s=36000) as bulk:  # as `nestrank index`
                    begin = time.perf_counter()
                    bulk.index(corpus, [f"indexed-{k}" for k in range(len(corpus))], progress=True)
                    indexed["seconds"] = time.perf_counter() - begin

            indexer = threading.Thread(target=index)
            indexer.start()
            rounds = []
            while indexer.is_alive() and len(rounds) < 50:
                rounds.append(together("during_index", f"busy {len(rounds)}"))
            busy = merged(rounds)
            indexer.join()
            report["interactive"] = {
                "alone": {kind: _percentiles(v) for kind, v in alone.items()},
                "idle": {kind: _percentiles(v) for kind, v in idle.items()},
                "during_index": {kind: _percentiles(v) for kind, v in busy.items() if v},
                "refused": refusals, "index_passages": config.index_passages, "index_s": indexed["seconds"],
                "index_passages_per_s": config.index_passages / indexed["seconds"],
            }  # fmt: skip

            sweep = {}
            for level in config.in_flight:
                requests = 2 * level
                before = _counters(metrics, NAME)
                seconds, lock = [], threading.Lock()
                ids = stored_ids[: config.sweep_candidates]
                pending = list(range(requests))

                def caller() -> None:
                    with RerankClient(server_config.grpc_url, NAME, retry=NO_RETRIES, timeout_s=3600) as own:
                        while True:
                            with lock:
                                if not pending:
                                    return
                                pending.pop()
                            begin = time.perf_counter()
                            try:
                                own.rerank(QUERY, passages=ids)
                            except NestrankError as err:  # counted, not retried
                                with lock:
                                    refused.append(type(err).__name__)
                                continue
                            with lock:
                                seconds.append(time.perf_counter() - begin)

                refused: list[str] = []
                begin = time.perf_counter()
                threads = [threading.Thread(target=caller) for _ in range(level)]
                for thread in threads:
                    thread.start()
                for thread in tqdm(threads, desc=f"{level} in flight", leave=False):
                    thread.join()
                wall = time.perf_counter() - begin
                after = _counters(metrics, NAME)
                delta = {k: after[k] - before[k] for k in after}
                sweep[level] = {
                    **_percentiles(seconds or [float("nan")]), "reranks_per_s": len(seconds) / wall,
                    "refused": len(refused),
                    "requests_per_score_execution": delta["nestrank_rerank_score_admitted"]
                    / max(1.0, delta["nestrank_rerank_score_batches"]),
                    "triton_requests_per_execute": delta["nv_inference_request_success"]
                    / max(1.0, delta["nv_inference_exec_count"]),
                }  # fmt: skip
                log(f"{level:>3} in flight: {sweep[level]['reranks_per_s']:.2f} reranks/s, p50 "
                    f"{sweep[level]['p50_ms']:.0f} ms, {sweep[level]['requests_per_score_execution']:.1f} requests per "
                    "`_score` execution")  # fmt: skip
            report["in_flight"] = sweep

            log(f"a warm of {config.warm_documents} documents given up after {config.abandon_after:g} s ...")
            warm = _texts("abandoned", config.warm_documents, words)
            after_warm = _texts("after the warm", 8, words)
            with RerankClient(server_config.grpc_url, NAME, retry=NO_RETRIES,
                              timeout_s=config.abandon_after) as impatient:  # fmt: skip
                try:
                    impatient.warm(warm)
                except DeadlineExceededError:
                    pass
            gave_up = time.perf_counter()
            tokens = _counters(metrics, NAME)["nestrank_rerank_encode_tokens"]
            client.rerank(QUERY, after_warm)
            answered = time.perf_counter() - gave_up
            time.sleep(5)
            spent = _counters(metrics, NAME)["nestrank_rerank_encode_tokens"] - tokens
            report["abandoned_warm"] = {"documents": config.warm_documents, "gave_up_after_s": config.abandon_after,
                                        "next_answer_s": answered, "tokens_encoded_in_5_s_after": spent,
                                        "of_which_the_next_rerank": 8 * config.passage_tokens}  # fmt: skip
    config.out.parent.mkdir(parents=True, exist_ok=True)
    config.out.write_text(json.dumps(report, indent=2))
    update_section("traffic", results_markdown(report))
    log(f"wrote {config.out} and the traffic section of bench/RESULTS.md")
    return report


def results_markdown(report: dict) -> str:
    c, i, a = report["config"], report["interactive"], report["abandoned_warm"]
    command = f"nestrank bench traffic --shape {c['shape']}" + (f" --layers {c['layers']}" if c["layers"] != "None"
                                                                 else "")  # fmt: skip
    lines = [f"## The reranker under production traffic ({c['shape']} shape)", "",
             f"Regenerated by `{command}`: served as `nestrank serve` serves it (LMDB, one rerank instance, default "
             "limits but `max_requests_in_flight` as high as the most reranks in flight), passages of about "
             f"{c['passage_tokens']} tokens, ratio 4, no client retries.", "",
             f"Interactive reranks, alternately by id and with 8 new documents: one caller alone, then {c['callers']} "
             f"callers at once, idle and during `index` of {i['index_passages']} new passages at the client's default "
             f"concurrency (bulk; it took {i['index_s']:.0f} s, {i['index_passages_per_s']:.2f} passages/s). "
             f"Interactive calls refused at once (alone / idle / during): {i['refused']['alone']} / "
             f"{i['refused']['idle']} / {i['refused']['during_index']}.", "",
             f"| rerank | alone p50 ms | {c['callers']} callers idle p50 / p99 ms | {c['callers']} callers during "
             "index p50 / p99 ms | p99 during vs idle |", "| --- | --- | --- | --- | --- |"]  # fmt: skip
    nothing = {"p50_ms": float("nan"), "p99_ms": float("nan")}
    for kind, idle in i["idle"].items():
        alone, busy = i["alone"].get(kind, nothing), i["during_index"].get(kind, nothing)
        lines.append(f"| {kind} ({c['ids']} stored)" if kind == "by id" else f"| {kind}")
        ratio = busy["p99_ms"] / idle["p99_ms"]
        lines[-1] += (f" | {alone['p50_ms']:.0f} | {idle['p50_ms']:.0f} / {idle['p99_ms']:.0f} | "
                      f"{busy['p50_ms']:.0f} / {busy['p99_ms']:.0f} | {ratio:.2f}x |")  # fmt: skip
    lines += ["", f"Reranks by id ({c['sweep_candidates']} stored passages each), closed loop, twice as many as in "
              "flight:", "", "| in flight | reranks/s | p50 ms | p99 ms | refused | requests per `_score` execution | "
              "Triton: requests per `execute` |", "| --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for level, row in report["in_flight"].items():
        merged, per_execute = row["requests_per_score_execution"], row["triton_requests_per_execute"]
        lines.append(f"| {level} | {row['reranks_per_s']:.2f} | {row['p50_ms']:.0f} | {row['p99_ms']:.0f} | "
                     f"{row['refused']} | {merged:.1f} | {per_execute:.1f} |")  # fmt: skip
    lines += ["", f"- A warm of {a['documents']:,} documents given up after {a['gave_up_after_s']:g} s: the next "
              f"rerank of 8 new documents answered {a['next_answer_s']:.2f} s after; `_encode` encoded "
              f"{a['tokens_encoded_in_5_s_after']:,.0f} passage tokens in the 5 s after (the next rerank's own are "
              f"about {a['of_which_the_next_rerank']:,}).",
              f"- export {report['export_s']:.0f} s."]  # fmt: skip
    return "\n".join(lines)
