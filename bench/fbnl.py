"""Rerank 100 passages of ~256 tokens for one query, in one run, on one tiny-but-proportioned FBNL model:

(a) passages pre-encoded / cached: only the decoder runs at query time (served over gRPC, and in-process);
(b) passages encoded per request through the same ONNX graphs (served: fresh texts miss the cache);
(c) the PyTorch reference, scoring (query, passage) pairs from scratch in batches (no reuse).
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from nestrank.clients.rerank import RerankClient
from nestrank.export.reranker import export_reranker, load_checkpoint
from nestrank.export.tiny_checkpoints import tiny_t5gemma2_reranker
from nestrank.serving.launcher import ServerConfig, TritonServer, free_ports
from nestrank.serving.rerank_config import RerankerConfig
from nestrank.serving.reranker import FBNLReranker, RerankTokenizer, sigmoid
from nestrank.texts import realistic_texts

NAME = "bench-kalm"
QUERY = "which documents explain how to read a file line by line"


@dataclass(frozen=True)
class RerankBenchConfig:
    passages: int = 100
    passage_words: int = 255  # the bench tokenizer is word-level: ~256 tokens with <bos>
    repeats: int = 5
    hidden: int = 256
    layers: int = 6
    heads: int = 4
    ratio: int = 4
    torch_batch: int = 16
    out: Path = Path("bench/out/fbnl.json")


def passages(config: RerankBenchConfig, salt: str = "") -> list[str]:
    words = " ".join(realistic_texts(4 * config.passages, seed=3)).split()
    step = config.passage_words
    return [" ".join([salt, *words[i * step : (i + 1) * step]][:step]) for i in range(config.passages)]


@torch.no_grad()
def torch_pairs(
    model, config: RerankerConfig, tokenizer: RerankTokenizer, documents: list[str], batch: int, ratio: int
):
    """(c): every (query, passage) pair from scratch, batched: encoder → MEP → decoder → yes/no."""
    from transformers.modeling_outputs import BaseModelOutput

    prompt = torch.from_numpy(tokenizer.encode_prompt(QUERY, config.default_instruction))[None]
    margins = []
    for start in range(0, len(documents), batch):
        ids = [torch.from_numpy(x) for x in tokenizer.encode_documents(documents[start : start + batch])]
        input_ids = torch.nn.utils.rnn.pad_sequence(ids, batch_first=True, padding_value=tokenizer.pad_id)
        mask = torch.nn.utils.rnn.pad_sequence([torch.ones_like(x) for x in ids], batch_first=True)
        states = model.get_encoder()(input_ids=input_ids, attention_mask=mask).last_hidden_state
        length = states.shape[1] - states.shape[1] % ratio + (ratio if states.shape[1] % ratio else 0)
        padded = torch.nn.functional.pad(states * mask[..., None], (0, 0, 0, length - states.shape[1]))
        counts = torch.nn.functional.pad(mask, (0, length - mask.shape[1])).view(len(ids), -1, ratio).sum(-1)
        pooled = padded.view(len(ids), -1, ratio, states.shape[-1]).sum(2) / counts.clamp(min=1)[..., None]
        logits = model(decoder_input_ids=prompt.expand(len(ids), -1),
                       encoder_outputs=BaseModelOutput(last_hidden_state=pooled),
                       attention_mask=(counts > 0).long()).logits[:, -1]  # fmt: skip
        margins.append(logits[:, config.yes_token_id] - logits[:, config.no_token_id])
    return torch.cat(margins).numpy()


def timed(fn, repeats: int, label: str) -> list[float]:
    fn(0)  # warm-up
    seconds = []
    for i in tqdm(range(repeats), desc=label, leave=False):
        start = time.perf_counter()
        fn(i + 1)
        seconds.append(time.perf_counter() - start)
    return seconds


def run(config: RerankBenchConfig, log=print) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        checkpoint = tiny_t5gemma2_reranker(tmp / "ckpt", hidden=config.hidden, layers=config.layers,
                                            heads=config.heads, sliding_window=512)  # fmt: skip
        export = export_reranker(
            checkpoint, NAME, tmp / "repo", ratios=(config.ratio,), max_passage_tokens=512, log=log
        )
        reranker = FBNLReranker.from_repository(tmp / "repo", NAME, export.config)
        model, _ = load_checkpoint(checkpoint)
        docs = passages(config)
        tokens = [len(x) for x in reranker.tokenizer.encode_documents(docs)]
        prompt_tokens = len(reranker.tokenizer.encode_prompt(QUERY, export.config.default_instruction))
        rows: dict[str, list[float]] = {}

        pre_encoded = reranker.encoder.encode(docs, config.ratio)
        prompt = reranker.tokenizer.encode_prompt(QUERY, export.config.default_instruction)
        rows["(a) in-process ORT, pre-encoded"] = timed(
            lambda _: reranker.scorer.margins(prompt, pre_encoded), config.repeats, "a in-process"
        )
        # The same scorer with int8 weights (ORT dynamic quantization), on the same pre-encoded states.
        int8 = export_reranker(checkpoint, NAME, tmp / "repo-int8", ratios=(config.ratio,), max_passage_tokens=512,
                               precision="int8", log=log)  # fmt: skip
        scorer8 = FBNLReranker.from_repository(tmp / "repo-int8", NAME, int8.config).scorer
        rows["(a) in-process ORT int8 scorer, pre-encoded"] = timed(
            lambda _: scorer8.margins(prompt, pre_encoded), config.repeats, "a int8"
        )
        drift = np.abs(
            sigmoid(scorer8.margins(prompt, pre_encoded)) - sigmoid(reranker.scorer.margins(prompt, pre_encoded))
        )
        rows["(b) in-process ORT, encoded per request"] = timed(
            lambda _: reranker.margins(QUERY, docs, config.ratio), config.repeats, "b in-process"
        )
        rows["(c) PyTorch reference, pairs from scratch"] = timed(
            lambda _: torch_pairs(model, export.config, reranker.tokenizer, docs, config.torch_batch, config.ratio),
            config.repeats, "c torch",
        )  # fmt: skip

        grpc_port, http_port, metrics_port = free_ports(3)
        server_config = ServerConfig(tmp / "repo", grpc_port=grpc_port, http_port=http_port, metrics_port=metrics_port)
        with TritonServer(server_config), RerankClient(server_config.grpc_url, NAME) as client:
            client.warm(docs, compression_ratio=config.ratio)
            rows["(a) nestrank gRPC, cached passages"] = timed(
                lambda _: client.rerank(QUERY, docs, compression_ratio=config.ratio), config.repeats, "a served"
            )
            rows["(b) nestrank gRPC, encoded per request"] = timed(  # fresh texts each time: all cache misses
                lambda i: client.rerank(QUERY, passages(config, salt=f"run{i}"), compression_ratio=config.ratio),
                config.repeats, "b served",
            )  # fmt: skip

    medians = {k: statistics.median(v) for k, v in rows.items()}
    served_a = medians["(a) nestrank gRPC, cached passages"]
    report = {
        "workload": {"passages": config.passages, "median_passage_tokens": int(np.median(tokens)),
                     "prompt_tokens": prompt_tokens, "ratio": config.ratio, "repeats": config.repeats},
        "model": {"architecture": "t5gemma2", "hidden": config.hidden, "layers_each_side": config.layers,
                  "heads": config.heads},
        "int8_scorer_max_abs_score_diff": float(drift.max()),
        "median_seconds": medians,
        "speedup_of_served_a": {k: v / served_a for k, v in medians.items()},
    }  # fmt: skip
    config.out.parent.mkdir(parents=True, exist_ok=True)
    config.out.write_text(json.dumps(report, indent=2))
    log(f"{'path':<44}{'median ms':>11}{'vs served (a)':>15}")
    for k, v in medians.items():
        log(f"{k:<44}{v * 1e3:>11.1f}{v / served_a:>14.1f}x")
    log(f"int8 scorer: max |Δscore| vs fp32 {drift.max():.4f} on these {config.passages} passages")
    log(f"wrote {config.out}")
    return report
