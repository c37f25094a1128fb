"""Rerank 100 passages of 256 tokens for one typical query, in one run, on a KaLM-Reranker-V1-shaped model
(`--shape nano|small|large`, random weights, real widths and vocabulary; `--layers` cuts the depth):

(a) passages pre-encoded / cached: only the decoder runs at query time (served over gRPC, and in-process);
(b) passages encoded per request through the same ONNX graphs (served: fresh texts miss the cache);
(c) the official code's semantics in PyTorch, as the project transcribes `KaLMReranker.predict`
    (export/reference.py, the parity gates' reference): length-sorted batches of 32, fp32, chunk_size = ratio,
    full-vocabulary logits at every decoder position. It is not the official package itself.

Each path's FLOPs are counted with torch's FlopCounterMode on one unit of its work (an encoder pass over a
passage, a decoder pass for one candidate with the two-row or the full head), so the measured speed-ups
can be set against the FLOP-bound ones.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from nestrank.bench.results import update_section
from nestrank.export.reference import reference_scores
from nestrank.export.reranker import ScorerGraph, answer_rows_only, export_reranker, load_checkpoint, load_tokenizer
from nestrank.export.tiny_checkpoints import kalm_shaped_reranker
from nestrank.serving.pipeline.reranker import FBNLReranker
from nestrank.texts import realistic_texts

NAME = "bench-kalm"
OFFICIAL = "(c) official semantics in PyTorch (export/reference.py)"
QUERY = "which documents explain how to read a file line by line"


@dataclass(frozen=True)
class RerankBenchConfig:
    shape: str = "nano"
    layers: int | None = None  # None: the shape's full depth
    passages: int = 100
    passage_tokens: int = 256
    repeats: int = 3
    ratio: int = 4
    torch_batch: int = 32  # KaLMReranker's default batch size
    out: Path = Path("bench/out/fbnl.json")


def make_passages(tokenizer, count: int, tokens: int, salt: str = "") -> list[str]:
    """`count` texts whose document template is `tokens` tokens long (cut at token boundaries)."""
    ids = tokenizer(" ".join(realistic_texts(60 * count, seed=3)), add_special_tokens=False)["input_ids"]
    prefix = len(tokenizer("<Document>: " + salt, add_special_tokens=False)["input_ids"])
    body = tokens - prefix
    return [salt + tokenizer.decode(ids[i * body : (i + 1) * body]) for i in range(count)]


def timed(fn, repeats: int, label: str) -> list[float]:
    """Seconds of `fn(docs, run)` over the whole workload, `repeats` times, after one warm-up on 4 passages
    (first-run allocations; a full warm-up of the PyTorch path would cost minutes at the Nano shape)."""
    fn(4, 0)
    seconds = []
    for i in tqdm(range(repeats), desc=label, leave=False):
        start = time.perf_counter()
        fn(None, i + 1)
        seconds.append(time.perf_counter() - start)
    return seconds


@torch.inference_mode()
def count_flops(model, tokenizer, export_config, documents: list[str], ratio: int) -> dict[str, float]:
    """FLOPs of one unit of each kind of work, counted by torch (matmuls and attention)."""
    from torch.utils.flop_counter import FlopCounterMode
    from transformers.modeling_outputs import BaseModelOutput

    from nestrank.export.reference import decoder_text, pool_chunks

    def flops(fn) -> float:
        with FlopCounterMode(display=False) as counter:
            fn()
        return float(counter.get_total_flops())

    passage = tokenizer(export_config.document_template.format(document=documents[0]), add_special_tokens=False,
                        return_tensors="pt")  # fmt: skip
    states = model.get_encoder()(**passage).last_hidden_state
    pooled, mask = pool_chunks(states, passage["attention_mask"], ratio)
    text = decoder_text(tokenizer, export_config, QUERY, export_config.default_instruction)
    prompt = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    padded = tokenizer(text, add_special_tokens=False, padding=True, pad_to_multiple_of=8, return_tensors="pt")
    encoder = flops(lambda: model.get_encoder()(**passage))
    official_decoder = flops(lambda: model(encoder_outputs=BaseModelOutput(last_hidden_state=pooled),
                                           attention_mask=mask, decoder_input_ids=padded["input_ids"],
                                           decoder_attention_mask=padded["attention_mask"]))  # fmt: skip
    with answer_rows_only(model, export_config.yes_token_id, export_config.no_token_id):
        scorer = flops(lambda: ScorerGraph(model)(prompt, pooled, mask))
    return {"encoder_per_passage": encoder, "scorer_per_candidate": scorer,
            "official_decoder_per_candidate": official_decoder, "prompt_tokens": int(prompt.shape[1]),
            "official_decoder_tokens": int(padded["input_ids"].shape[1])}  # fmt: skip


def gemm_gflop_per_s(m: int, k: int, n: int, repeats: int = 5) -> float:
    """This machine's fp32 GEMM rate through ONNX Runtime, as the scorer's sessions run (same session options): one
    MatMul [m, k] x [k, n] at the scorer's shapes (candidates x prompt rows, the model's width and FFN), best of
    `repeats`."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from nestrank.serving.pipeline.runtime import create_session

    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((k, n), dtype=np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "gemm",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])], [weight])  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "gemm.onnx"
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
        session = create_session(path).session
    x = rng.standard_normal((m, k), dtype=np.float32)
    session.run(None, {"x": x})
    best = min(_seconds(lambda: session.run(None, {"x": x})) for _ in range(repeats))
    return 2 * m * k * n / best / 1e9


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run(config: RerankBenchConfig, log=print) -> dict:
    from nestrank.clients.rerank import RerankClient  # here: `nestrank bench gpu` shares this module without them
    from nestrank.clients.transport import NO_RETRIES
    from nestrank.serving.launcher.server import ServerConfig, TritonServer

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        checkpoint = kalm_shaped_reranker(tmp / "ckpt", config.shape, layers=config.layers)
        start = time.perf_counter()
        export = export_reranker(checkpoint, NAME, tmp / "repo", ratios=(config.ratio,), log=log)
        export_s = time.perf_counter() - start
        reranker = FBNLReranker.from_repository(tmp / "repo", NAME, export.config)
        model, _ = load_checkpoint(checkpoint)
        tokenizer = load_tokenizer(checkpoint)
        docs = make_passages(tokenizer, config.passages, config.passage_tokens)
        tokens = [len(x) for x in reranker.tokenizer.encode_documents(docs)]
        rows: dict[str, list[float]] = {}

        pre_encoded = reranker.encoder.encode(docs, config.ratio)
        prompt = reranker.tokenizer.encode_prompt(QUERY, export.config.default_instruction)
        rows["(a) in-process ORT, pre-encoded"] = timed(
            lambda n, _: reranker.scorer.margins(prompt, pre_encoded.subset(range(n or len(docs)))),
            config.repeats,
            "a in-process",
        )
        official = {}

        def official_path(n, _):
            scores = reference_scores(model, tokenizer, export.config, QUERY, docs[:n], (config.ratio,),
                                      batch_size=config.torch_batch)  # fmt: skip
            official["scores"] = scores[config.ratio][0]

        rows[OFFICIAL] = timed(official_path, config.repeats, "c torch")

        # as `nestrank serve` runs it: an LMDB store, one rerank instance; no retries
        server_config = ServerConfig.on_free_ports(tmp / "repo", passage_store=f"lmdb://{tmp / 'passages'}")
        with TritonServer(server_config) as server, RerankClient(server_config.grpc_url, NAME, retry=NO_RETRIES,
                                                                 timeout_s=3600) as client:  # fmt: skip
            client.warm(docs, compression_ratio=config.ratio)
            served = {}

            def cached(n, _):
                served["ranked"] = client.rerank(QUERY, docs[:n], compression_ratio=config.ratio)

            # texts never seen, made before the clock starts: every passage misses the cache and is encoded
            unseen = [make_passages(tokenizer, config.passages, config.passage_tokens, salt=f"run{run} ")
                      for run in range(config.repeats + 1)]  # fmt: skip

            def fresh(n, run):
                client.rerank(QUERY, unseen[run][:n], compression_ratio=config.ratio)

            rows["(a) nestrank gRPC, cached passages"] = timed(cached, config.repeats, "a served")
            rows["(b) nestrank gRPC, encoded per request"] = timed(fresh, config.repeats, "b served")
            memory = server.memory()
        graph_files = sorted(p for p in (tmp / "repo").glob("*/1/*") if p.suffix in (".onnx", ".data"))
        graph_sizes = {p.relative_to(tmp / "repo").as_posix(): p.stat().st_size / 2**20 for p in graph_files}
        served_scores = np.array([r.score for r in sorted(served["ranked"], key=lambda r: r.index)])
        unit = count_flops(model, tokenizer, export.config, docs, config.ratio)
        hidden, ffn = export.config.hidden_size, model.config.decoder.intermediate_size
        gemm = gemm_gflop_per_s(config.passages * unit["prompt_tokens"], hidden, ffn)

    n = config.passages
    flops = {
        "(a)": n * unit["scorer_per_candidate"],
        "(b)": n * (unit["encoder_per_passage"] + unit["scorer_per_candidate"]),
        "(c)": n * (unit["encoder_per_passage"] + unit["official_decoder_per_candidate"]),
    }
    medians = {k: statistics.median(v) for k, v in rows.items()}
    served_a = medians["(a) nestrank gRPC, cached passages"]
    paths = {
        k: {"median_s": v, "vs_served_a": v / served_a, "gflop": flops[k[:3]] / 1e9,
            "gflop_per_s": flops[k[:3]] / v / 1e9, "of_gemm_rate": flops[k[:3]] / v / 1e9 / gemm}
        for k, v in medians.items()
    }  # fmt: skip
    report = {
        "config": {k: str(v) for k, v in asdict(config).items()},
        "model": {"shape": config.shape, "layers_each_side": model.config.decoder.num_hidden_layers,
                  "hidden": export.config.hidden_size, "vocab": model.config.decoder.vocab_size},
        "workload": {"passages": n, "median_passage_tokens": int(np.median(tokens)),
                     "prompt_tokens": unit["prompt_tokens"], "ratio": config.ratio, "repeats": config.repeats},
        "export_s": export_s,
        "graph_mib": graph_sizes,  # embedding.data is one file, hard-linked into both model directories
        "served_memory_mib": {"rss": sum(m["rss_mib"] for m in memory), "pss": sum(m["pss_mib"] for m in memory),
                              "processes": memory},
        "served_vs_official_max_abs_score_diff": float(np.abs(served_scores - official["scores"]).max()),
        "unit_flops": unit,
        "flop_bound_speedup_of_a": {"vs (b)": flops["(b)"] / flops["(a)"], "vs (c)": flops["(c)"] / flops["(a)"]},
        "gemm_gflop_per_s": gemm,
        "served_a_vs_in_process": served_a / medians["(a) in-process ORT, pre-encoded"],
        "paths": paths,
    }  # fmt: skip
    config.out.parent.mkdir(parents=True, exist_ok=True)
    config.out.write_text(json.dumps(report, indent=2))
    log(f"{'path':<48}{'median ms':>11}{'vs served (a)':>15}{'GFLOP':>9}{'GFLOP/s':>9}{'of GEMM':>9}")
    for k, p in paths.items():
        log(f"{k:<48}{p['median_s'] * 1e3:>11.1f}{p['vs_served_a']:>14.2f}x{p['gflop']:>9.1f}{p['gflop_per_s']:>9.1f}"
            f"{p['of_gemm_rate']:>9.0%}")  # fmt: skip
    log(f"fp32 GEMM rate (ONNX Runtime MatMul at the scorer's shapes): {gemm:.1f} GFLOP/s; served (a) vs "
        f"in-process (a): {report['served_a_vs_in_process']:.3f}x")  # fmt: skip
    bound = report["flop_bound_speedup_of_a"]
    log(f"FLOP-bound speed-up of (a): {bound['vs (b)']:.1f}x over (b), {bound['vs (c)']:.1f}x over (c); "
        f"served (a) vs official (c): max |Δscore| {report['served_vs_official_max_abs_score_diff']:.2e}")  # fmt: skip
    mem = report["served_memory_mib"]
    log(
        f"export {export_s:.0f} s; served memory (tritonserver + stubs): RSS {mem['rss']:.0f} MiB, "
        f"PSS {mem['pss']:.0f} MiB"
    )
    update_section("fbnl", results_markdown(report))
    log(f"wrote {config.out} and the fbnl section of bench/RESULTS.md")
    return report


def results_markdown(report: dict) -> str:
    m, w = report["model"], report["workload"]
    bound = report["flop_bound_speedup_of_a"]
    paths = report["paths"]
    served_a = paths["(a) nestrank gRPC, cached passages"]["median_s"]
    lines = [
        f"## FBNL reranking: KaLM-Reranker-V1-{m['shape'].title()} shape, 100 passages, one query",
        "",
        f"Regenerated by `nestrank bench fbnl --shape {m['shape']}` (random weights at the real shape: "
        f"{m['layers_each_side']} + {m['layers_each_side']} layers, hidden {m['hidden']}, vocabulary {m['vocab']}); "
        f"{w['passages']} passages of "
        f"{w['median_passage_tokens']} tokens, a prompt of {w['prompt_tokens']} tokens, ratio {w['ratio']}, medians of "
        f"{w['repeats']}.",
        "",
        "| path | median s | vs (a) served | GFLOP | GFLOP/s | of the GEMM rate |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, p in paths.items():
        lines.append(f"| {name} | {p['median_s']:.1f} | {p['median_s'] / served_a:.2f}x | {p['gflop']:,.0f} | "
                     f"{p['gflop_per_s']:.1f} | {p['of_gemm_rate']:.0%} |")  # fmt: skip
    measured_c = paths[OFFICIAL]["median_s"] / served_a
    measured_b = paths["(b) nestrank gRPC, encoded per request"]["median_s"] / served_a
    mem = report["served_memory_mib"]
    lines += [
        "",
        f"- (a) served vs (a) in-process: {report['served_a_vs_in_process']:.3f}x (the served path: gRPC, the rerank "
        "model reading the passages from its first level or LMDB, the BLS hop to `_score` and its scheduler).",
        f"- this machine's fp32 GEMM rate, ONNX Runtime MatMul at the scorer's shapes "
        f"([{w['passages']} x {w['prompt_tokens']}, {m['hidden']}] x [{m['hidden']}, FFN]): "
        f"{report['gemm_gflop_per_s']:.1f} GFLOP/s; the last column is each path's sustained rate against it.",
        f"- (a) served vs (c) official: {measured_c:.1f}x measured, {bound['vs (c)']:.1f}x FLOP-bound "
        f"({measured_c / bound['vs (c)']:.0%} of it); vs (b): {measured_b:.1f}x measured, "
        f"{bound['vs (b)']:.1f}x FLOP-bound.",
        f"- (c) counts what the official code computes: the full {m['vocab']:,}-wide head at every decoder position "
        f"({report['unit_flops']['official_decoder_tokens']} padded); (a) and (b) only the yes/no rows at the last "
        "one.",
        f"- served scores vs official: max |Δscore| {report['served_vs_official_max_abs_score_diff']:.1e}.",
        f"- export {report['export_s']:.0f} s (ratio {w['ratio']} only); served memory after the run, tritonserver + "
        f"stubs: RSS {mem['rss']:,.0f} MiB, PSS {mem['pss']:,.0f} MiB.",
        "- graphs (MiB): "
        + ", ".join(f"{k} {v:,.0f}" for k, v in report["graph_mib"].items())
        + " (embedding.data is one file, linked into both)",
    ]
    return "\n".join(lines)
